//! Build initrds for microrun: pack a directory tree into a reproducible
//! newc cpio archive, cache packed trees, and assemble a rootfs directory
//! from ELF binaries and the libraries they need; read a kernel image's
//! release and configuration ([`kernel_info`]) and find the modules of the
//! host's kernel that a guest needs, decompressed ([`modules`]); index and
//! extract a newc archive into a directory ([`extract`]).
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub mod cache;
pub mod erofs;
pub mod extract;
pub mod image;
pub mod kernel_info;
pub mod modules;
pub mod newc;
mod pack;
mod regular_file;
pub mod rootfs;
mod tree;
pub mod unpacked;

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
    /// The output names something that is neither a file to replace nor a
    /// stream to write to.
    #[error(
        "cannot write the archive to {}: it is {kind}; give a regular file, a new name, a FIFO \
         or a character device (such as /dev/stdout)",
        path.display()
    )]
    OutputType {
        /// The output path (after following symbolic links).
        path: PathBuf,
        /// What it is.
        kind: &'static str,
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
    /// A cache directory or entry is not this user's alone, or not what
    /// microrun makes there.
    #[error(transparent)]
    CacheCheck(#[from] cache::CacheError),
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

/// Packs the tree at `dir` into `out`.
///
/// Symbolic links are followed. A new name or a regular file is written to
/// a temporary file in its directory and renamed over it at the end, so it
/// is either the old file or the complete new one; `out` inside `dir` is
/// refused. A FIFO, a character device, or a file of `/proc` (such as
/// `/dev/stdout`, `/dev/fd/N`) is written to as a stream, in place; a
/// descriptor of this process (`/dev/stdout` and the like) is written
/// through, keeping its offset and append mode. Nothing else (a directory,
/// a block device, a socket) is written, and nothing but a regular file is
/// ever renamed over.
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<PackStats, InitrdError> {
    let canonical_dir = fs::canonicalize(dir).map_err(|e| InitrdError::read(dir, e))?;
    match output_target(out)? {
        Output::Replace { path, dir: out_dir } => {
            if out_dir.starts_with(&canonical_dir) {
                return Err(InitrdError::OutputInsideTree {
                    out: out.to_path_buf(),
                    dir: dir.to_path_buf(),
                });
            }
            let tree = Tree::scan(dir)?;
            write_atomically(&tree, &path, &out_dir, opts, OUTPUT_MODE)
        }
        Output::Stream(stream) => {
            let tree = Tree::scan(dir)?;
            let file = open_stream(&stream).map_err(|source| InitrdError::Write {
                path: out.to_path_buf(),
                source,
            })?;
            pack::write_tree(&tree, &file, None, out, opts)
        }
    }
}

/// How [`pack_dir`] writes its output.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    /// A new name or a regular file at `path` (canonical directory `dir`):
    /// through a temporary file in `dir` and a rename.
    Replace { path: PathBuf, dir: PathBuf },
    /// A FIFO, a character device or a file of /proc: written in place.
    Stream(PathBuf),
}

/// Symbolic links followed before giving up, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// `PROC_SUPER_MAGIC`, the `f_type` of a procfs mount.
const PROC_SUPER_MAGIC: libc::c_long = 0x9fa0;

/// Where `out` leads, following symbolic links one at a time (a link under
/// /proc, such as /proc/self/fd/1, is not a path to follow but a stream).
fn output_target(out: &Path) -> Result<Output, InitrdError> {
    let write_error = |source| InitrdError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut path = out.to_path_buf();
    for _ in 0..=MAX_SYMLINKS {
        let name = path
            .file_name()
            .ok_or_else(|| {
                write_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a file name",
                ))
            })?
            .to_os_string();
        let dir = output_dir(&path)?;
        let canonical_dir = fs::canonicalize(&dir).map_err(write_error)?;
        if is_procfs(&canonical_dir) {
            return Ok(Output::Stream(path));
        }
        let full = canonical_dir.join(&name);
        let file_type = match fs::symlink_metadata(&full) {
            Ok(meta) => meta.file_type(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Output::Replace {
                    path: full,
                    dir: canonical_dir,
                })
            }
            Err(e) => return Err(write_error(e)),
        };
        if file_type.is_symlink() {
            path = canonical_dir.join(fs::read_link(&full).map_err(write_error)?);
        } else if file_type.is_file() {
            return Ok(Output::Replace {
                path: full,
                dir: canonical_dir,
            });
        } else if file_type.is_fifo() || file_type.is_char_device() {
            return Ok(Output::Stream(full));
        } else {
            return Err(InitrdError::OutputType {
                path: full,
                kind: describe_type(file_type),
            });
        }
    }
    Err(write_error(io::Error::from_raw_os_error(libc::ELOOP)))
}

pub(crate) fn describe_type(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Whether `dir` is on a procfs mount.
fn is_procfs(dir: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain data, valid when zeroed.
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `fs_info` a valid out-pointer.
    let found = unsafe { libc::statfs(name.as_ptr(), &mut fs_info) } == 0;
    found && fs_info.f_type as libc::c_long == PROC_SUPER_MAGIC
}

/// Opens the stream `path` for writing. One of this process's own
/// descriptors (`/proc/self/fd/N`, what /dev/stdout leads to) is
/// duplicated rather than opened again, so the archive goes exactly where
/// that descriptor writes (a reopened file would start at offset 0 and
/// lose `O_APPEND`).
fn open_stream(path: &Path) -> io::Result<File> {
    if let Some(fd) = own_descriptor(path) {
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; a closed one fails.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `copy` is a new descriptor that nothing else owns.
        return Ok(File::from(unsafe { OwnedFd::from_raw_fd(copy) }));
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// `N` when `path` is `/proc/self/fd/N` (or `/proc/thread-self/fd/N`, or
/// this process's PID instead of `self`).
fn own_descriptor(path: &Path) -> Option<libc::c_int> {
    let fd: libc::c_int = path.file_name()?.to_str()?.parse().ok()?;
    let dir = fs::canonicalize(path.parent()?).ok()?;
    let own = ["/proc/self/fd", "/proc/thread-self/fd"]
        .iter()
        .any(|d| fs::canonicalize(d).is_ok_and(|d| d == dir));
    own.then_some(fd)
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

/// The mode of an archive written to a path the caller names (not the
/// cache's, which are [`cache::ENTRY_MODE`]).
const OUTPUT_MODE: u32 = 0o644;

fn write_atomically(
    tree: &Tree,
    out: &Path,
    out_dir: &Path,
    opts: &PackOptions,
    mode: u32,
) -> Result<PackStats, InitrdError> {
    write_replacing(out, out_dir, mode, |file, temp_path| {
        pack::write_tree(tree, file, Some(file.as_raw_fd()), temp_path, opts)
    })
}

/// Writes a cache entry: runs `write` on a temporary file in `out_dir`
/// (named with the cache's temporary prefix, so a killed run's leftover is
/// evicted) and renames it over `out` when it succeeds, mode 0600 (see
/// [`cache`]); on failure the temporary file is removed. Directory packs,
/// image conversions and microrun's other cache entries all write this
/// way. Make `out_dir` with [`cache::subdir`], which checks it.
pub fn write_atomically_with<T, E: From<InitrdError>>(
    out: &Path,
    out_dir: &Path,
    write: impl FnOnce(&File, &Path) -> Result<T, E>,
) -> Result<T, E> {
    write_replacing(out, out_dir, cache::ENTRY_MODE, write)
}

/// [`write_atomically_with`], the file made `mode` (0644 for an output
/// the caller names, 0600 for a cache entry).
pub(crate) fn write_replacing<T, E: From<InitrdError>>(
    out: &Path,
    out_dir: &Path,
    mode: u32,
    write: impl FnOnce(&File, &Path) -> Result<T, E>,
) -> Result<T, E> {
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
    file.set_permissions(fs::Permissions::from_mode(mode))
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
    let (path, initrd_dir) = match cache::slot(&cache, &tree.cache_key(opts), dir, ".cpio")? {
        cache::Slot::Hit(path) => return Ok(path),
        cache::Slot::Miss { path, dir } => (path, dir),
    };
    let stats = write_atomically(&tree, &path, &initrd_dir, opts, cache::ENTRY_MODE)?;
    log::debug!(
        "{}: packed {} entries, {} bytes, into {}",
        dir.display(),
        stats.entries,
        stats.bytes,
        path.display()
    );
    cache::evict(&initrd_dir, ".cpio", cache::KEEP);
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

    #[test]
    fn cache_entries_are_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("entry.plan");
        write_atomically_with(&out, dir.path(), |mut file, _| {
            file.write_all(b"plan")
                .map_err(|source| InitrdError::Write {
                    path: out.clone(),
                    source,
                })
        })
        .unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"plan");
        let mode = fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
