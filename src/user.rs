//! `-u/--user USER[:GROUP]` (docker's and systemd-nspawn's `-u`), and an
//! image's `User`, on the host side: the spec checked before anything
//! starts, and, where an engine must know the ids before the guest runs
//! (the kvm engine's shares, the chroot engine's id maps), the ids it
//! names, looked up in the rootfs's own `/etc/passwd` and `/etc/group`,
//! never the host's.
//!
//! guest-init makes the switch itself (the `user=` record): it looks the
//! names up again in the same files, inside the guest, and its answer is
//! the one the program runs with. The rules are the same on both sides:
//!
//! - `USER` is a name from `/etc/passwd`, or a number taken as it is (a
//!   number without an entry is fine: group 0, `HOME=/`);
//! - `GROUP` is a name from `/etc/group`, or a number; without it, the
//!   user's primary group from `/etc/passwd`.
//!
//! ```
//! use microrun::user::UserSpec;
//!
//! let spec = UserSpec::parse("builder:staff", "-u").unwrap();
//! assert_eq!(spec.user, "builder");
//! assert_eq!(spec.group.as_deref(), Some("staff"));
//! assert_eq!(spec.to_string(), "builder:staff");
//! ```

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use initrd_tools::extract::Archive;

/// guest-init's `/etc/passwd` and `/etc/group` resolution, compiled here
/// as well: one parser for both sides.
#[path = "../guest-init/src/passwd.rs"]
#[allow(dead_code)]
mod guest_passwd;

/// The largest `/etc/passwd` or `/etc/group` read on the host.
const MAX_FILE: u64 = 16 << 20;

/// Why a user spec is refused, or names no user of the rootfs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// Not `USER[:GROUP]` with two plain, non-empty parts.
    #[error(
        "{origin} {spec:?}: {why}; give USER or USER:GROUP, each a name from the rootfs's \
         /etc/passwd and /etc/group or a number (for example -u 1000:1000)"
    )]
    Malformed {
        /// The spec as given.
        spec: String,
        /// `-u` or the image's `User`.
        origin: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A name that the rootfs's file does not have.
    #[error(
        "{origin} {spec}: unknown {kind} {name:?}: the rootfs's {file} has no such entry; add \
         it to the rootfs, or give a number"
    )]
    Unknown {
        /// The spec as given.
        spec: String,
        /// `-u` or the image's `User`.
        origin: &'static str,
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
    },
    /// The rootfs's file could not be read.
    #[error("reading {file} in the rootfs {rootfs}: {source}")]
    Read {
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
        /// The rootfs.
        rootfs: PathBuf,
        /// Why.
        #[source]
        source: IoError,
    },
}

/// An `io::Error` that compares by its text (for [`UserError`]'s tests).
#[derive(Debug)]
pub struct IoError(pub io::Error);

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}
impl Eq for IoError {}
impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for IoError {}

/// `USER[:GROUP]`, checked: two non-empty parts without `:`, NUL, newline
/// or whitespace (none can be in a passwd name), numbers below 2^32 − 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// A user name or a uid.
    pub user: String,
    /// A group name or a gid.
    pub group: Option<String>,
    /// `-u`, or the image's `User`, for messages.
    pub origin: &'static str,
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(group) => write!(f, "{}:{group}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

impl UserSpec {
    /// Parses `spec`; `origin` (`-u`, the image's `User`) names it in
    /// errors.
    pub fn parse(spec: &str, origin: &'static str) -> Result<UserSpec, UserError> {
        let malformed = |why| UserError::Malformed {
            spec: spec.to_string(),
            origin,
            why,
        };
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        for part in std::iter::once(user).chain(group) {
            if part.is_empty() {
                return Err(malformed("a user or group is empty"));
            }
            if part.contains(':') {
                return Err(malformed("more than one `:`"));
            }
            if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(malformed(
                    "a name holds a space or a control character, which /etc/passwd names cannot",
                ));
            }
            if part.bytes().all(|b| b.is_ascii_digit()) && parse_id(part).is_none() {
                return Err(malformed("a number is too large: ids go up to 4294967294"));
            }
        }
        Ok(UserSpec {
            user: user.to_string(),
            group: group.map(str::to_string),
            origin,
        })
    }

    /// The uid and gid this spec names, given the rootfs's `/etc/passwd`
    /// and `/etc/group` (`None`: the file does not exist).
    pub fn resolve(&self, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, UserError> {
        // guest-init's own resolution (the same file, compiled here too), so
        // that the ids the host plans with (id maps, the 9p owner) are the
        // ids the program gets.
        let spec = self.to_string();
        let resolved = guest_passwd::resolve(
            spec.as_bytes(),
            passwd.unwrap_or("").as_bytes(),
            group.unwrap_or("").as_bytes(),
        );
        match resolved {
            Ok(resolved) => Ok(Ids {
                uid: resolved.uid,
                gid: resolved.gid,
            }),
            Err(guest_passwd::Unknown::User(_)) => {
                Err(self.unknown("user", &self.user, "/etc/passwd"))
            }
            Err(guest_passwd::Unknown::Group(_)) => {
                Err(self.unknown("group", self.group.as_deref().unwrap_or(""), "/etc/group"))
            }
        }
    }

    fn unknown(&self, kind: &'static str, name: &str, file: &'static str) -> UserError {
        UserError::Unknown {
            spec: self.to_string(),
            origin: self.origin,
            kind,
            name: name.to_string(),
            file,
        }
    }

    /// [`UserSpec::resolve`] against the files of `rootfs`.
    pub fn resolve_in(&self, rootfs: &RootfsFiles) -> Result<Ids, UserError> {
        let [passwd, group] = rootfs.read(["/etc/passwd", "/etc/group"])?;
        self.resolve(passwd.as_deref(), group.as_deref())
    }
}

/// The uid and gid a spec names in a rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The user.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// A decimal id below `u32::MAX` (which means "no id" to the kernel).
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

/// Where a rootfs's files are read from on the host.
#[derive(Debug, Clone, Copy)]
pub enum RootfsFiles<'a> {
    /// A directory: files are opened beneath it (`RESOLVE_IN_ROOT`, so an
    /// absolute symlink such as `etc/passwd -> /etc/passwd` stays in it).
    Dir(&'a Path),
    /// A newc archive (a cpio rootfs, or an image converted into one).
    Archive(&'a Path),
}

impl RootfsFiles<'_> {
    fn path(&self) -> &Path {
        match self {
            RootfsFiles::Dir(path) | RootfsFiles::Archive(path) => path,
        }
    }

    /// The text of each of `files` (absolute, in the rootfs), `None` for
    /// one that does not exist. An archive is indexed once for all.
    pub fn read<const N: usize>(
        &self,
        files: [&'static str; N],
    ) -> Result<[Option<String>; N], UserError> {
        let error = |file, source| UserError::Read {
            file,
            rootfs: self.path().to_path_buf(),
            source: IoError(source),
        };
        let archive = match self {
            RootfsFiles::Dir(_) => None,
            RootfsFiles::Archive(path) => Some(
                Archive::open(path)
                    .map_err(|e| error(files[0], io::Error::other(e.to_string())))?,
            ),
        };
        let mut out = [const { None }; N];
        for (slot, file) in out.iter_mut().zip(files) {
            let bytes = match (self, &archive) {
                (RootfsFiles::Dir(dir), _) => read_beneath(dir, file),
                (_, Some(archive)) => archive.read_file(Path::new(file), MAX_FILE),
                (_, None) => Ok(None),
            }
            .map_err(|source| error(file, source))?;
            *slot = bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        }
        Ok(out)
    }
}

/// Reads `file` beneath `dir` as if `dir` were `/` (`openat2` with
/// `RESOLVE_IN_ROOT`): at most [`MAX_FILE`] bytes; `None` when it does not
/// exist.
fn read_beneath(dir: &Path, file: &str) -> io::Result<Option<Vec<u8>>> {
    let root = File::open(dir)?;
    let name = CString::new(Path::new(file).as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data, valid when zeroed.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a NUL-terminated name, an open directory descriptor and a
    // valid open_how of the size given; the call returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&root),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: the descriptor was just opened and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                          broken\n\
                          builder:x:1000:100:Builder:/home/builder:/bin/sh\n\
                          again:x:1000:5::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nstaff:x:50:builder,other\n";

    fn ids(spec: &str) -> Result<Ids, UserError> {
        UserSpec::parse(spec, "-u")
            .unwrap()
            .resolve(Some(PASSWD), Some(GROUP))
    }

    /// The host reads the files as guest-init does: an entry short of its
    /// home field is no entry on either side (the host once took it and
    /// planned ids the program never got).
    #[test]
    fn the_host_and_guest_init_agree_on_short_entries() {
        let short = "app:x:1000:1000\n";
        let spec = UserSpec::parse("app", "-u").unwrap();
        assert!(matches!(
            spec.resolve(Some(short), None),
            Err(UserError::Unknown { kind: "user", .. })
        ));
        let by_number = UserSpec::parse("1000", "-u").unwrap();
        assert_eq!(
            by_number.resolve(Some(short), None).unwrap(),
            Ids { uid: 1000, gid: 0 }
        );
    }

    #[test]
    fn specs_parse_into_a_user_and_an_optional_group() {
        let spec = UserSpec::parse("1000", "-u").unwrap();
        assert_eq!((spec.user.as_str(), spec.group), ("1000", None));
        let spec = UserSpec::parse("app:staff", "the image's User").unwrap();
        assert_eq!(spec.group.as_deref(), Some("staff"));
        assert_eq!(spec.to_string(), "app:staff");
        // 4294967294 is the largest id; 4294967295 is "no id".
        assert!(UserSpec::parse("4294967294:0", "-u").is_ok());
    }

    #[test]
    fn malformed_specs_are_refused_with_the_spec_and_its_origin() {
        for spec in [
            "",
            ":",
            "a:",
            ":b",
            "a:b:c",
            "a b",
            "a\nb",
            "a\0",
            "4294967295",
            "1:99999999999",
        ] {
            let err = UserSpec::parse(spec, "-u").unwrap_err();
            assert!(matches!(err, UserError::Malformed { .. }), "{spec:?}");
            let text = err.to_string();
            assert!(text.starts_with("-u "), "{text}");
            assert!(text.contains(&format!("{spec:?}")), "{text}");
        }
    }

    #[test]
    fn names_come_from_passwd_and_group_numbers_as_they_are() {
        assert_eq!(
            ids("builder"),
            Ok(Ids {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(ids("root"), Ok(Ids { uid: 0, gid: 0 }));
        assert_eq!(ids("builder:staff"), Ok(Ids { uid: 1000, gid: 50 }));
        assert_eq!(ids("builder:7"), Ok(Ids { uid: 1000, gid: 7 }));
        // A number takes its entry's primary group (the first entry with
        // that uid), or group 0 without one.
        assert_eq!(
            ids("1000"),
            Ok(Ids {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(ids("4242"), Ok(Ids { uid: 4242, gid: 0 }));
        assert_eq!(ids("4242:staff"), Ok(Ids { uid: 4242, gid: 50 }));
        // Without the files, only numbers.
        let spec = UserSpec::parse("12:34", "-u").unwrap();
        assert_eq!(spec.resolve(None, None), Ok(Ids { uid: 12, gid: 34 }));
    }

    #[test]
    fn unknown_names_say_which_file_was_looked_in() {
        let err = ids("nobody-here").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"nobody-here\""), "{text}");
        assert!(text.contains("/etc/passwd"), "{text}");
        let err = ids("builder:wheel").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"wheel\"") && text.contains("/etc/group"),
            "{text}"
        );
        // A line without its fields never matches; a missing file knows
        // no names.
        assert!(matches!(ids("broken"), Err(UserError::Unknown { .. })));
        let spec = UserSpec::parse("builder", "-u").unwrap();
        assert!(matches!(
            spec.resolve(None, None),
            Err(UserError::Unknown {
                file: "/etc/passwd",
                ..
            })
        ));
    }

    #[test]
    fn a_directory_rootfs_is_read_beneath_its_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/group"), GROUP).unwrap();
        // An absolute link resolves in the rootfs, not on the host.
        std::os::unix::fs::symlink("/etc/group", root.path().join("etc/passwd")).unwrap();
        let files = RootfsFiles::Dir(root.path());
        let [passwd] = files.read(["/etc/passwd"]).unwrap();
        assert_eq!(passwd.as_deref(), Some(GROUP));
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        assert_eq!(files.read(["/etc/passwd"]).unwrap(), [None]);
        std::fs::write(root.path().join("etc/passwd"), PASSWD).unwrap();
        let spec = UserSpec::parse("builder:staff", "-u").unwrap();
        assert_eq!(spec.resolve_in(&files), Ok(Ids { uid: 1000, gid: 50 }));
    }
}
