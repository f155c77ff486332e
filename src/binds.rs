//! Host directories in the guest: `--bind SRC[:DST]` and `--bind-ro
//! SRC[:DST]` (systemd-nspawn's names), parsed and checked before any
//! engine starts.
//!
//! `SRC` must be an existing directory; it is resolved once, here, to an
//! absolute path without symlinks, and every engine serves that directory.
//! `DST` defaults to `SRC` as written (made absolute), must be absolute,
//! must not be `/`, and is normalised (`.` and repeated `/` dropped; `..`
//! refused); two shares cannot have the same `DST`. guest-init creates a
//! missing `DST` before it mounts the share there.
//!
//! ```
//! use microrun::binds::{parse_bind, Access};
//!
//! let dir = std::env::temp_dir();
//! let bind = parse_bind(&format!("{}:/src", dir.display()), Access::ReadOnly).unwrap();
//! assert_eq!(bind.dest, "/src");
//! assert!(bind.read_only);
//! ```

use std::path::{Component, Path, PathBuf};

/// The most shares one run takes: one virtio-mmio slot (and interrupt)
/// each, beside the console's (see `vmm::layout::VIRTIO_MMIO_SLOTS`).
pub const MAX_BINDS: usize = vmm::layout::VIRTIO_MMIO_SLOTS.len() - 1;

/// One host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host directory, absolute and without symlinks.
    pub source: PathBuf,
    /// Where the guest sees it: absolute, normalised, not `/`.
    pub dest: String,
    /// `--bind-ro`: every write is refused (EROFS).
    pub read_only: bool,
}

/// Which option a share came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `--bind`.
    ReadWrite,
    /// `--bind-ro`.
    ReadOnly,
}

impl Access {
    fn option(self) -> &'static str {
        match self {
            Access::ReadWrite => "--bind",
            Access::ReadOnly => "--bind-ro",
        }
    }
}

/// Why a share cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    /// The argument is empty or its SRC part is.
    #[error("{option} {arg:?}: give a host directory, as {option} SRC or {option} SRC:DST")]
    Empty {
        /// `--bind` or `--bind-ro`.
        option: &'static str,
        /// The argument as given.
        arg: String,
    },
    /// SRC does not exist or cannot be resolved.
    #[error("{option} {arg:?}: the host directory {source_path} cannot be used: {reason}")]
    Source {
        /// `--bind` or `--bind-ro`.
        option: &'static str,
        /// The argument as given.
        arg: String,
        /// SRC.
        source_path: String,
        /// Why.
        reason: String,
    },
    /// DST is not an absolute guest path, is `/`, or climbs with `..`.
    #[error("{option} {arg:?}: the guest path {dest:?} {reason}")]
    Dest {
        /// `--bind` or `--bind-ro`.
        option: &'static str,
        /// The argument as given.
        arg: String,
        /// DST.
        dest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two shares on one DST.
    #[error("{first} and {second} both put a share at {dest} in the guest; give each its own DST")]
    SameDest {
        /// The first share's option and argument.
        first: String,
        /// The second's.
        second: String,
        /// The guest path.
        dest: String,
    },
    /// More shares than the VM has slots for.
    #[error("{count} shares given; microrun takes at most {MAX_BINDS} --bind/--bind-ro options")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// Parses and checks one `SRC[:DST]` argument of `access`'s option.
pub fn parse_bind(arg: &str, access: Access) -> Result<Bind, BindError> {
    let option = access.option();
    // The last ':' separates DST, which must be absolute: `a:b:/dst` is
    // SRC `a:b`. Without an absolute part after it, the whole is SRC.
    let (source_text, dest_text) = match arg.rsplit_once(':') {
        Some((src, dst)) if dst.starts_with('/') || dst.is_empty() => (src, Some(dst)),
        Some((src, dst)) if !src.is_empty() => {
            return Err(BindError::Dest {
                option,
                arg: arg.to_string(),
                dest: dst.to_string(),
                reason: "is not absolute: write it from the guest's root, as /DIR",
            });
        }
        _ => (arg, None),
    };
    if source_text.is_empty() {
        return Err(BindError::Empty {
            option,
            arg: arg.to_string(),
        });
    }
    let source_err = |reason: String| BindError::Source {
        option,
        arg: arg.to_string(),
        source_path: source_text.to_string(),
        reason,
    };
    let source = std::fs::canonicalize(source_text).map_err(|e| source_err(e.to_string()))?;
    let meta = std::fs::metadata(&source).map_err(|e| source_err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(source_err(
            "it is not a directory (only directories can be shared)".to_string(),
        ));
    }
    let dest_raw = match dest_text {
        Some("") => {
            return Err(BindError::Dest {
                option,
                arg: arg.to_string(),
                dest: String::new(),
                reason: "is empty: leave out the ':' to use SRC's own path",
            })
        }
        Some(dst) => dst.to_string(),
        // SRC as written, made absolute the way the user means it.
        None => match Path::new(source_text).is_absolute() {
            true => source_text.to_string(),
            false => source.display().to_string(),
        },
    };
    let dest = normalise_dest(&dest_raw).map_err(|reason| BindError::Dest {
        option,
        arg: arg.to_string(),
        dest: dest_raw.clone(),
        reason,
    })?;
    Ok(Bind {
        source,
        dest,
        read_only: access == Access::ReadOnly,
    })
}

/// `dest` without `.` components or repeated slashes; an error for a
/// relative path, `..`, `/` itself, or a byte guest-init cannot pass on.
fn normalise_dest(dest: &str) -> Result<String, &'static str> {
    if !dest.starts_with('/') {
        return Err("is not absolute: write it from the guest's root, as /DIR");
    }
    if dest.contains('\0') || dest.contains(' ') || dest.contains('\n') {
        return Err("contains a NUL byte, a space or a newline, which guest-init cannot take");
    }
    let mut out = String::new();
    for component in Path::new(dest).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("contains '..': write the path without it"),
            Component::Normal(name) => {
                out.push('/');
                out.push_str(&name.to_string_lossy());
            }
            Component::Prefix(_) => return Err("is not a guest path"),
        }
    }
    if out.is_empty() {
        return Err("is the guest's root, which holds the rootfs: pick a directory below it");
    }
    Ok(out)
}

/// Parses every share, `--bind` ones first, and checks them together.
pub fn parse_binds(read_write: &[String], read_only: &[String]) -> Result<Vec<Bind>, BindError> {
    let args: Vec<(&String, Access)> = read_write
        .iter()
        .map(|a| (a, Access::ReadWrite))
        .chain(read_only.iter().map(|a| (a, Access::ReadOnly)))
        .collect();
    if args.len() > MAX_BINDS {
        return Err(BindError::TooMany { count: args.len() });
    }
    let mut binds: Vec<Bind> = Vec::with_capacity(args.len());
    for (i, &(arg, access)) in args.iter().enumerate() {
        let bind = parse_bind(arg, access)?;
        if let Some(j) = binds.iter().position(|b| b.dest == bind.dest) {
            let (first, first_access) = args[j];
            return Err(BindError::SameDest {
                first: format!("{} {first}", first_access.option()),
                second: format!("{} {}", access.option(), args[i].0),
                dest: bind.dest,
            });
        }
        binds.push(bind);
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn dest_defaults_to_src_and_is_normalised() {
        let d = dir();
        let src = d.path().display().to_string();
        let bind = parse_bind(&src, Access::ReadWrite).unwrap();
        assert_eq!(
            bind.dest,
            std::fs::canonicalize(d.path())
                .unwrap()
                .display()
                .to_string()
        );
        assert!(!bind.read_only);
        let bind = parse_bind(&format!("{src}://out/./x/"), Access::ReadOnly).unwrap();
        assert_eq!(bind.dest, "/out/x");
        assert!(bind.read_only);
    }

    #[test]
    fn a_colon_in_src_is_kept_when_no_absolute_dst_follows() {
        let d = dir();
        let odd = d.path().join("a:b");
        std::fs::create_dir(&odd).unwrap();
        let bind = parse_bind(&format!("{}:/x", odd.display()), Access::ReadWrite).unwrap();
        assert_eq!(bind.source, std::fs::canonicalize(&odd).unwrap());
        let err = parse_bind(&format!("{}:rel", d.path().display()), Access::ReadWrite);
        assert!(
            matches!(err, Err(BindError::Dest { .. })),
            "a relative DST: {err:?}"
        );
    }

    #[test]
    fn bad_shares_are_refused_with_the_reason() {
        let d = dir();
        let src = d.path().display().to_string();
        let file = d.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let cases = [
            (format!("{src}/missing:/x"), "No such file"),
            (format!("{}:/x", file.display()), "not a directory"),
            (format!("{src}:/"), "root"),
            (format!("{src}://."), "root"),
            (format!("{src}:/a/../b"), "'..'"),
            (format!("{src}:"), "empty"),
            (":/x".to_string(), "give a host directory"),
            (String::new(), "give a host directory"),
            (format!("{src}:/a b"), "space"),
        ];
        for (arg, want) in cases {
            let err = parse_bind(&arg, Access::ReadWrite).unwrap_err().to_string();
            assert!(err.contains(want), "{arg:?}: {err}");
            assert!(err.starts_with("--bind "), "{err}");
        }
    }

    #[test]
    fn two_shares_cannot_share_a_dst_and_the_count_is_bounded() {
        let d = dir();
        let src = d.path().display().to_string();
        let err = parse_binds(&[format!("{src}:/x")], &[format!("{src}:/x/")]).unwrap_err();
        assert!(err.to_string().contains("both put a share at /x"), "{err}");
        let many: Vec<String> = (0..=MAX_BINDS).map(|i| format!("{src}:/d{i}")).collect();
        assert!(matches!(
            parse_binds(&many, &[]),
            Err(BindError::TooMany { .. })
        ));
        let ok = parse_binds(&many[..MAX_BINDS - 1], &many[MAX_BINDS - 1..MAX_BINDS]).unwrap();
        assert_eq!(ok.len(), MAX_BINDS);
        assert!(ok.last().unwrap().read_only);
    }
}
