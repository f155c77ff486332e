//! Build initrds for microrun: pack a directory tree into a reproducible
//! newc cpio archive, cache packed trees, and assemble a rootfs directory
//! from ELF binaries and the libraries they need.
//!
//! The archive holds the whole tree: regular files, directories, symlinks,
//! hard links (data stored once), device nodes and FIFOs (sockets are
//! skipped with a warning). Entries are owned by root unless
//! [`PackOptions::keep_owner`] is set, all mtimes are
//! [`PackOptions::mtime`], entries come depth first with names sorted
//! bytewise, and inode numbers are assigned in that order, so packing the
//! same tree twice gives the same bytes. `dev/console` and `dev/null` are
//! added when the tree lacks them, so the kernel can open a console.
//!
//! ```no_run
//! use std::path::Path;
//! use initrd_tools::{guest_memory_for_initrd, pack_dir, PackOptions};
//!
//! let opts = PackOptions::from_env()?;
//! let stats = pack_dir(Path::new("rootfs"), Path::new("rootfs.cpio"), &opts)?;
//! println!("{} entries, guest memory {} bytes", stats.entries, guest_memory_for_initrd(stats.bytes));
//! # Ok::<(), initrd_tools::InitrdError>(())
//! ```

#![deny(missing_docs)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod cache;
pub mod image;
pub mod newc;
mod pack;
pub mod rootfs;
mod tree;

pub use cache::KEEP as CACHE_KEEP;

use tree::Tree;

/// Errors of packing and caching initrds.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A file or directory of the tree could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The tree to pack is not a directory.
    #[error("{} is not a directory: give the root directory of the tree to pack", .0.display())]
    NotADirectory(PathBuf),
    /// The output file would be inside the tree being packed.
    #[error(
        "output {} is inside the tree being packed ({}): write it outside that directory",
        out.display(),
        dir.display()
    )]
    OutputInsideTree {
        /// The output path.
        out: PathBuf,
        /// The tree.
        dir: PathBuf,
    },
    /// The archive could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output (or the temporary file next to it).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A regular file too large for the newc format's 32-bit size field.
    #[error("{} is {size} bytes: newc archives hold only files below 4 GiB; leave it out of the tree", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A file shrank between the scan and the copy.
    #[error("{} changed while it was being packed: run again once the tree is stable", .0.display())]
    FileChanged(PathBuf),
    /// A path inside the tree is too long to be stored.
    #[error("path {0:?} is too long for a cpio entry")]
    NameTooLong(String),
    /// `SOURCE_DATE_EPOCH` is set but is not a timestamp.
    #[error(
        "SOURCE_DATE_EPOCH={0:?} is not a number of seconds between 0 and 4294967295: set it to a Unix timestamp or unset it"
    )]
    BadSourceDateEpoch(String),
    /// Neither `XDG_CACHE_HOME` nor `HOME` names a usable directory.
    #[error("no cache directory: set XDG_CACHE_HOME (an absolute path) or HOME")]
    NoCacheDir,
    /// The cache directory lies inside the tree to pack.
    #[error(
        "the cache directory {} is inside the tree being packed ({}): set XDG_CACHE_HOME to a directory outside it",
        cache.display(),
        tree.display()
    )]
    CacheInsideTree {
        /// The cache directory.
        cache: PathBuf,
        /// The tree.
        tree: PathBuf,
    },
    /// The cache directory could not be created.
    #[error("cannot create the cache directory {}: {source}; set XDG_CACHE_HOME to a writable directory", path.display())]
    Cache {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl InitrdError {
    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        InitrdError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How to pack a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Keep the files' owners; by default every entry is owned by root
    /// (uid and gid 0), as `fakeroot` would make them.
    pub keep_owner: bool,
    /// The mtime of every entry, in seconds since the epoch.
    pub mtime: u32,
}

impl PackOptions {
    /// Options with the mtime taken from `SOURCE_DATE_EPOCH` (0 when unset
    /// or empty), owners not kept.
    pub fn from_env() -> Result<Self, InitrdError> {
        let value = std::env::var_os("SOURCE_DATE_EPOCH");
        let value = value.as_ref().map(|v| v.to_string_lossy());
        Ok(PackOptions {
            keep_owner: false,
            mtime: parse_source_date_epoch(value.as_deref())?,
        })
    }
}

fn parse_source_date_epoch(value: Option<&str>) -> Result<u32, InitrdError> {
    match value.map(str::trim) {
        None | Some("") => Ok(0),
        Some(text) => text
            .parse::<u32>()
            .map_err(|_| InitrdError::BadSourceDateEpoch(text.to_string())),
    }
}

/// What a pack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Entries in the archive, not counting the trailer.
    pub entries: u64,
    /// Size of the archive in bytes.
    pub bytes: u64,
}

/// Packs the tree at `dir` into the file `out`.
///
/// The archive is written to a temporary file next to `out` and renamed over
/// it at the end, so `out` is either the old file or the complete new one.
/// Refuses an `out` inside `dir`.
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<PackStats, InitrdError> {
    let canonical_dir = fs::canonicalize(dir).map_err(|e| InitrdError::read(dir, e))?;
    let out_dir = output_dir(out)?;
    let canonical_out_dir = fs::canonicalize(&out_dir).map_err(|source| InitrdError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    if canonical_out_dir.starts_with(&canonical_dir) {
        return Err(InitrdError::OutputInsideTree {
            out: out.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    let tree = Tree::scan(dir)?;
    write_atomically(&tree, out, &out_dir, opts)
}

/// The directory `out` will be created in.
fn output_dir(out: &Path) -> Result<PathBuf, InitrdError> {
    if out.file_name().is_none() {
        return Err(InitrdError::Write {
            path: out.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        });
    }
    Ok(match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

fn write_atomically(
    tree: &Tree,
    out: &Path,
    out_dir: &Path,
    opts: &PackOptions,
) -> Result<PackStats, InitrdError> {
    write_atomically_with(out, out_dir, |file, temp_path| {
        pack::write_tree(tree, file, Some(file.as_raw_fd()), temp_path, opts)
    })
}

/// Runs `write` on a temporary file in `out_dir` (named with the cache's
/// temporary prefix, so a killed run's leftover is evicted) and renames it
/// over `out` when it succeeds, mode 0644; on failure the temporary file is
/// removed. Directory packs and image conversions both write this way.
pub(crate) fn write_atomically_with<E: From<InitrdError>>(
    out: &Path,
    out_dir: &Path,
    write: impl FnOnce(&File, &Path) -> Result<PackStats, E>,
) -> Result<PackStats, E> {
    let write_error = |source| InitrdError::Write {
        path: out.to_path_buf(),
        source,
    };
    let temp = tempfile::Builder::new()
        .prefix(cache::TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .map_err(write_error)?;
    let file: &File = temp.as_file();
    let stats = write(file, temp.path())?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(write_error)?;
    temp.persist(out).map_err(|e| write_error(e.error))?;
    Ok(stats)
}

/// Packs the tree at `dir` into `out` (for example a `Vec<u8>` or a pipe).
///
/// Packing to a file with [`pack_dir`] is faster: it copies large files
/// inside the kernel.
pub fn pack_dir_to<W: Write>(
    dir: &Path,
    out: W,
    opts: &PackOptions,
) -> Result<PackStats, InitrdError> {
    let tree = Tree::scan(dir)?;
    pack::write_tree(&tree, out, None, Path::new("<output stream>"), opts)
}

/// The cache directory shared by microrun's tools:
/// `$XDG_CACHE_HOME/microrun` when `XDG_CACHE_HOME` is an absolute path,
/// else `$HOME/.cache/microrun`. It is not created here.
pub fn cache_dir() -> Result<PathBuf, InitrdError> {
    let xdg = std::env::var("XDG_CACHE_HOME").ok();
    let home = std::env::var("HOME").ok();
    cache::cache_dir_from(xdg.as_deref(), home.as_deref()).ok_or(InitrdError::NoCacheDir)
}

/// The path of a cached archive of the tree at `dir`, packing it only when
/// no archive of this exact tree state is cached.
///
/// Archives live in `<cache_dir>/initrd/<key>.cpio`, where the key is a
/// SHA-256 over each entry's path, type, mode, size, mtime and ctime (to
/// the nanosecond), inode, device, link target and, with `keep_owner`, owner,
/// plus the options and a format version. The [`CACHE_KEEP`] most recently
/// used archives are kept; older ones are removed after each new pack.
pub fn cached_pack(dir: &Path, opts: &PackOptions) -> Result<PathBuf, InitrdError> {
    let cache = cache_dir()?;
    cache::check_outside(&cache, dir)?;
    let tree = Tree::scan(dir)?;
    let (path, initrd_dir) = match cache::slot(&cache, &tree.cache_key(opts), dir)? {
        cache::Slot::Hit(path) => return Ok(path),
        cache::Slot::Miss { path, dir } => (path, dir),
    };
    let stats = write_atomically(&tree, &path, &initrd_dir, opts)?;
    log::debug!(
        "{}: packed {} entries, {} bytes, into {}",
        dir.display(),
        stats.entries,
        stats.bytes,
        path.display()
    );
    cache::evict(&initrd_dir, cache::KEEP);
    Ok(path)
}

/// Guest memory for an initrd of `initrd_bytes`: three times its size (the
/// kernel keeps the archive while unpacking it, and the unpacked files take
/// about as much again) plus 64 MiB for the kernel, rounded up to 2 MiB.
pub fn guest_memory_for_initrd(initrd_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let wanted = initrd_bytes.saturating_mul(3).saturating_add(64 * MIB);
    wanted
        .div_ceil(2 * MIB)
        .checked_mul(2 * MIB)
        .unwrap_or(!(2 * MIB - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memory_rule() {
        const MIB: u64 = 1 << 20;
        assert_eq!(guest_memory_for_initrd(0), 64 * MIB);
        assert_eq!(guest_memory_for_initrd(1), 66 * MIB);
        assert_eq!(guest_memory_for_initrd(2 * MIB), 70 * MIB);
        assert_eq!(guest_memory_for_initrd(3 * MIB), 74 * MIB);
        assert_eq!(guest_memory_for_initrd(3 * MIB + 1), 74 * MIB);
        assert_eq!(guest_memory_for_initrd(u64::MAX) % (2 * MIB), 0);
    }

    #[test]
    fn source_date_epoch_parsing() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), 0);
        assert_eq!(parse_source_date_epoch(Some("")).unwrap(), 0);
        assert_eq!(
            parse_source_date_epoch(Some("1700000000")).unwrap(),
            1_700_000_000
        );
        for bad in ["-1", "abc", "1e9", "4294967296"] {
            let err = parse_source_date_epoch(Some(bad)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn output_inside_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let out = dir.path().join("sub/out.cpio");
        let err = pack_dir(dir.path(), &out, &PackOptions::default()).unwrap_err();
        assert!(matches!(err, InitrdError::OutputInsideTree { .. }), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn missing_tree_is_named_and_nothing_written() {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.cpio");
        let err = pack_dir(
            Path::new("/nonexistent/tree"),
            &out,
            &PackOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tree"), "{err}");
        assert_eq!(fs::read_dir(out_dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pack_dir_matches_pack_dir_to() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("small"), b"hello").unwrap();
        // Larger than SMALL_FILE: goes through copy_file_range.
        let big: Vec<u8> = (0..600_001u32).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("big"), &big).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("a.cpio");
        let opts = PackOptions::default();
        let stats = pack_dir(dir.path(), &out, &opts).unwrap();
        let mut in_memory = Vec::new();
        let stats_to = pack_dir_to(dir.path(), &mut in_memory, &opts).unwrap();
        let on_disk = fs::read(&out).unwrap();
        assert_eq!(stats, stats_to);
        assert_eq!(stats.bytes, on_disk.len() as u64);
        assert_eq!(on_disk, in_memory);
        assert_eq!(stats.entries, 6); // ., big, dev, dev/console, dev/null, small
        assert_eq!(on_disk.len() % 4, 0);
        let mode = fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
