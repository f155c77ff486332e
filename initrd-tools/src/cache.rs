//! The content-addressed cache of packed trees, and the rules other caches
//! under the same directory follow ([`subdir`], [`open_entry`], [`touch`],
//! [`evict_entries`], [`crate::write_atomically_with`]).
//!
//! `<cache dir>/initrd/<key>.cpio`, where the key is a SHA-256 over the
//! scanned tree's metadata (see `Tree::cache_key`). A hit refreshes the
//! file's mtime; after each new entry only the [`KEEP`] most recently used
//! archives are kept (and any used in the last minute, which a parallel run
//! may be about to boot), and temporary files older than an hour (left by an
//! interrupted pack) are removed.
//!
//! Whoever can write the cache decides what the next run boots (keys are
//! predictable: a public image's manifest digest names its entry). So the
//! cache is used only when it is this user's alone: the cache directory
//! (`<cache dir>`, a symbolic link to a directory followed) and each
//! directory made inside it must be directories owned by the effective
//! user, and each entry a regular file owned by that user (a symbolic link,
//! a FIFO or anything else is refused, and a FIFO never blocks the run).
//! Directories are made 0700 and entries written 0600; an older cache of
//! this user's with laxer modes (0755, 0644, or group-writable under umask
//! 002) is brought to those modes as it is used, silently. Anything owned
//! by another user is refused with an error that names it and the fix.
//! The directories above `<cache dir>` (a home directory, `/tmp`) are not
//! checked.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::regular_file::{self, not_regular_kind, Links};
use crate::InitrdError;

/// Why a cache directory or entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// It belongs to another user.
    #[error(
        "the cache {what} {} belongs to uid {owner}, not to you (uid {uid}): microrun uses a \
         cache only when it is yours alone, since whoever can write it decides what runs; \
         remove it (`rm -r {}`) or set XDG_CACHE_HOME to a directory of your own",
        path.display(),
        path.display()
    )]
    NotOwned {
        /// The directory or entry.
        path: PathBuf,
        /// `directory` or `entry`.
        what: &'static str,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// It is not a directory, or not a regular file.
    #[error(
        "the cache {what} {} is {kind}: microrun makes only directories and regular files \
         there; remove it (`rm -r {}`)",
        path.display(),
        path.display()
    )]
    WrongType {
        /// The directory or entry.
        path: PathBuf,
        /// `directory` or `entry`.
        what: &'static str,
        /// What it is instead: "a FIFO", "a symbolic link", ...
        kind: &'static str,
    },
    /// It could not be created, opened, checked or made private.
    #[error(
        "cannot use the cache {what} {}: {source}; set XDG_CACHE_HOME to a directory of your own",
        path.display()
    )]
    Io {
        /// The directory or entry.
        path: PathBuf,
        /// `directory` or `entry`.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Changes whenever the archive layout changes, so old entries miss.
pub(crate) const FORMAT_VERSION: &str = "microrun-initrd-v1";

/// How many archives the cache keeps.
pub const KEEP: usize = 8;

/// How long after its last use an archive is never evicted.
const IN_USE: Duration = Duration::from_secs(60);

/// Prefix of the temporary files written before the rename.
pub(crate) const TEMP_PREFIX: &str = ".pack-";

const STALE_TEMP: Duration = Duration::from_secs(3600);

/// `$XDG_CACHE_HOME/microrun` (when set to an absolute path), else
/// `$HOME/.cache/microrun`.
pub(crate) fn cache_dir_from(xdg: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    if let Some(xdg) = xdg.filter(|x| x.starts_with('/')) {
        return Some(Path::new(xdg).join("microrun"));
    }
    home.filter(|h| !h.is_empty())
        .map(|h| Path::new(h).join(".cache").join("microrun"))
}

/// The mode of the directories microrun makes in its cache.
const DIR_MODE: u32 = 0o700;

/// The mode of the entries microrun writes in its cache.
pub(crate) const ENTRY_MODE: u32 = 0o600;

/// `<cache dir>/<name>` ([`crate::cache_dir`]), for a cache of its own
/// (`initrd`, `virtio`, ...): both are created when missing (0700, as are
/// missing directories above), and checked as the module comment says.
pub fn subdir(name: &str) -> Result<PathBuf, InitrdError> {
    Ok(prepare(&crate::cache_dir()?, name)?)
}

/// `<cache>/<name>`, created and checked (see [`subdir`]).
pub fn prepare(cache: &Path, name: &str) -> Result<PathBuf, CacheError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            path,
            what: "directory",
            source,
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(cache)
        .map_err(error(cache))?;
    check(cache, Links::Follow)?;
    let dir = cache.join(name);
    match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(error(&dir)(e)),
        _ => {}
    }
    check_dir(&dir)?;
    Ok(dir)
}

/// Checks the directory `dir` of the cache (a symbolic link is refused):
/// owned by this process's effective user; a mode that lets the group or
/// others in is brought to 0700.
pub fn check_dir(dir: &Path) -> Result<(), CacheError> {
    check(dir, Links::Refuse)
}

fn check(dir: &Path, links: Links) -> Result<(), CacheError> {
    let io_error = |source| CacheError::Io {
        path: dir.to_path_buf(),
        what: "directory",
        source,
    };
    let mut flags = libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(dir);
    let opened = match opened {
        Ok(file) => file,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            let meta = match links {
                Links::Follow => fs::metadata(dir),
                Links::Refuse => fs::symlink_metadata(dir),
            };
            let kind = match meta {
                Ok(meta) if meta.file_type().is_symlink() => "a symbolic link",
                Ok(meta) if meta.is_file() => "a regular file",
                Ok(meta) if !meta.is_dir() => crate::describe_type(meta.file_type()),
                _ => "not a directory",
            };
            return Err(CacheError::WrongType {
                path: dir.to_path_buf(),
                what: "directory",
                kind,
            });
        }
        Err(e) => return Err(io_error(e)),
    };
    make_private(&opened, dir, "directory", DIR_MODE)
}

/// Checks that the open `file` (at `path`) is this user's, and takes the
/// group's and others' permissions away when it has any.
fn make_private(file: &File, path: &Path, what: &'static str, mode: u32) -> Result<(), CacheError> {
    let io_error = |source| CacheError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let meta = file.metadata().map_err(io_error)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(CacheError::NotOwned {
            path: path.to_path_buf(),
            what,
            owner: meta.uid(),
            uid,
        });
    }
    let current = meta.mode() & 0o7777;
    if current & 0o077 != 0 {
        let private = current & mode & 0o700;
        log::debug!(
            "making {} private: mode {current:04o} -> {private:04o}",
            path.display()
        );
        file.set_permissions(fs::Permissions::from_mode(private))
            .map_err(io_error)?;
    }
    Ok(())
}

/// Opens the cache entry `path` for reading: `None` when there is none.
/// It must be a regular file (a FIFO is refused without blocking on it, a
/// symbolic link is refused) owned by this process's effective user; a
/// mode that lets the group or others in is brought to 0600. Check the
/// directory it is in first ([`subdir`], [`check_dir`]).
pub fn open_entry(path: &Path) -> Result<Option<File>, CacheError> {
    let file = match regular_file::open(path, Links::Refuse) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(match not_regular_kind(&e) {
                Some(kind) => CacheError::WrongType {
                    path: path.to_path_buf(),
                    what: "entry",
                    kind,
                },
                None => CacheError::Io {
                    path: path.to_path_buf(),
                    what: "entry",
                    source: e,
                },
            })
        }
    };
    make_private(&file, path, "entry", ENTRY_MODE)?;
    Ok(Some(file))
}

/// Where the archive with `key` is or goes in `<cache>/initrd/`.
pub(crate) enum Slot {
    /// Cached: its mtime was refreshed.
    Hit(PathBuf),
    /// Not cached: write it at `path`, in `dir` (created).
    Miss { path: PathBuf, dir: PathBuf },
}

/// Looks up the archive `key` of `source` (for the log) in the cache:
/// `<key><suffix>`, `.cpio` for newc archives, `.erofs` for EROFS images
/// (which must also pass [`crate::erofs`]'s check of their superblock and
/// length, else they are written again).
pub(crate) fn slot(
    cache: &Path,
    key: &str,
    source: &Path,
    suffix: &str,
) -> Result<Slot, InitrdError> {
    let dir = prepare(cache, "initrd")?;
    let path = dir.join(format!("{key}{suffix}"));
    if let Some(file) = open_entry(&path)? {
        if suffix == crate::erofs::CACHE_SUFFIX && !crate::erofs::cached_image_ok(&file) {
            log::warn!(
                "{}: the cached image {} is damaged (short, or not this version's): writing it again",
                source.display(),
                path.display()
            );
            return Ok(Slot::Miss { path, dir });
        }
        log::debug!("{}: cached as {}", source.display(), path.display());
        mark_used(&file, &path);
        return Ok(Slot::Hit(path));
    }
    Ok(Slot::Miss { path, dir })
}

/// Marks a cached entry as just used, for the eviction order. Only a
/// regular file of this user's is touched (opened as [`open_entry`] does,
/// so never blocking); failures are logged, never fatal.
pub fn touch(path: &Path) {
    match open_entry(path) {
        Ok(Some(file)) => mark_used(&file, path),
        Ok(None) => log::debug!("cannot refresh the mtime of {}: it is gone", path.display()),
        Err(e) => log::debug!("cannot refresh the mtime of {}: {e}", path.display()),
    }
}

/// Sets the mtime of the open entry `file` (at `path`) to now. The owner
/// may, whatever the descriptor's access mode.
fn mark_used(file: &File, path: &Path) {
    if let Err(e) = file.set_modified(SystemTime::now()) {
        log::debug!("cannot refresh the mtime of {}: {e}", path.display());
    }
}

/// Removes all but the `keep` most recently used archives in `dir`, and
/// stale temporary files. Failures are logged, never fatal: the cache is an
/// optimisation.
pub(crate) fn evict(dir: &Path, suffix: &str, keep: usize) {
    // A run boots its archive a moment after looking it up: one used
    // within the last minute may be about to be opened by a parallel run,
    // so it waits for a later eviction.
    evict_entries(dir, suffix, keep, IN_USE);
}

/// Removes all but the `keep` most recently used (by mtime, see [`touch`])
/// entries whose names end in `suffix` in `dir`, sparing any used less than
/// `in_use` ago, and temporary files of [`crate::write_atomically_with`]
/// older than an hour (left by an interrupted run). Failures are logged,
/// never fatal: a cache is an optimisation.
pub fn evict_entries(dir: &Path, suffix: &str, keep: usize, in_use: Duration) {
    let Ok(read_dir) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    let mut archives = Vec::new();
    for entry in read_dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                remove(&entry.path());
            }
        } else if name.ends_with(suffix) {
            archives.push((modified, entry.path()));
        }
    }
    archives.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (modified, path) in archives.into_iter().skip(keep) {
        if in_use.is_zero() || now.duration_since(modified).unwrap_or_default() > in_use {
            remove(&path);
        }
    }
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => log::debug!("removed {} from the cache", path.display()),
        Err(e) => log::debug!("cannot remove {}: {e}", path.display()),
    }
}

/// Fails when the cache lies inside the tree being packed: every pack would
/// then change the tree and miss the cache.
pub(crate) fn check_outside(cache: &Path, tree: &Path) -> Result<(), InitrdError> {
    let tree = fs::canonicalize(tree).map_err(|e| InitrdError::read(tree, e))?;
    // The cache may not exist yet: check its nearest existing ancestor.
    let mut probe = cache;
    loop {
        if let Ok(canonical) = fs::canonicalize(probe) {
            if canonical.starts_with(&tree) {
                return Err(InitrdError::CacheInsideTree {
                    cache: cache.to_path_buf(),
                    tree,
                });
            }
            return Ok(());
        }
        match probe.parent() {
            Some(parent) => probe = parent,
            None => return Ok(()),
        }
    }
}

/// The directory of facts about files looked up by their metadata
/// (`<cache dir>/facts`): a kernel's release, an archive's unpacked size,
/// an opened image.
pub const FACTS_DIR: &str = "facts";

/// What identifies a file's contents for a fact looked up by its metadata
/// ([`stamp`], [`load_fact`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A file of anyone's: path, device, inode, size, mtime and ctime.
    Metadata,
    /// An entry of microrun's own cache: written under a temporary name
    /// and renamed into place, never changed in place, so path, device,
    /// inode and size name its contents. Its mtime marks its last use
    /// ([`touch`]), which changes it on every run.
    CacheEntry,
}

/// `path` and the metadata `kind` names, on one line, or why it has none:
/// the key of a fact about the file.
pub fn stamp(path: &Path, kind: Stamp) -> String {
    match fs::metadata(path) {
        Ok(meta) => stamp_of(path, &meta, kind),
        Err(e) => format!("{} {:?}", path.display(), e.kind()),
    }
}

/// [`stamp`] from the metadata `m` of `path`, already taken.
pub fn stamp_of(path: &Path, m: &fs::Metadata, kind: Stamp) -> String {
    match kind {
        Stamp::CacheEntry => format!("{} {}:{} {}", path.display(), m.dev(), m.ino(), m.len()),
        Stamp::Metadata => format!(
            "{} {}:{} {} {}.{} {}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
    }
}

/// The value of the fact entry `entry` when its key is `key`: the entry is
/// `KEY\nVALUE\n`, VALUE one line and not empty, the whole at most `max`
/// bytes. Anything else is `None`: no entry, another key, a longer entry,
/// or one that is not this user's regular file (with a warning, as for
/// every entry of the cache).
pub fn load_fact(entry: &Path, key: &str, max: u64) -> Option<String> {
    let file = match open_entry(entry) {
        Ok(file) => file?,
        Err(e) => {
            log::warn!("{e}; computing it again");
            return None;
        }
    };
    // Entries are a line or two: one read takes them whole.
    let mut text = String::with_capacity(8 << 10);
    io::Read::read_to_string(&mut io::Read::take(file, max.saturating_add(1)), &mut text).ok()?;
    if text.len() as u64 > max {
        return None;
    }
    let (found, value) = text.strip_suffix('\n')?.rsplit_once('\n')?;
    (found == key && !value.is_empty()).then(|| value.to_string())
}

/// Writes the fact entry `entry` in `dir` (made 0700 when missing):
/// `key`, then `value` (one line), replacing any entry there; then keeps
/// the `keep` most recently written entries whose names end in `suffix`.
pub fn store_fact(
    dir: &Path,
    entry: &Path,
    key: &str,
    value: &str,
    suffix: &str,
    keep: usize,
) -> Result<(), InitrdError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| InitrdError::Cache {
            path: dir.to_path_buf(),
            source,
        })?;
    crate::write_atomically_with(entry, dir, |mut out, _| {
        io::Write::write_all(&mut out, format!("{key}\n{value}\n").as_bytes()).map_err(|source| {
            InitrdError::Write {
                path: entry.to_path_buf(),
                source,
            }
        })
    })?;
    evict_entries(dir, suffix, keep, Duration::ZERO);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// What a [`CacheError::WrongType`] says the file is.
    fn wrong_type(err: &CacheError) -> Option<&'static str> {
        match err {
            CacheError::WrongType { kind, .. } => Some(kind),
            _ => None,
        }
    }

    fn mkfifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    /// A directory and a file owned by another user than this process's
    /// (made so with chown as root, else ones of root's).
    fn foreign() -> (Option<tempfile::TempDir>, PathBuf, PathBuf) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return (None, PathBuf::from("/"), PathBuf::from("/etc/passwd"));
        }
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("dir");
        fs::create_dir(&dir).unwrap();
        let file = dir.join("file");
        fs::write(&file, b"planted").unwrap();
        for path in [&dir, &file] {
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
        }
        (Some(temp), dir, file)
    }

    #[test]
    fn cache_directories_are_made_private_and_old_modes_repaired() {
        let home = tempfile::tempdir().unwrap();
        let cache = home.path().join(".cache/microrun");
        let dir = prepare(&cache, "initrd").unwrap();
        assert_eq!(dir, cache.join("initrd"));
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&dir), 0o700);
        // A cache of an older version (or of umask 002): made private.
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o775)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        prepare(&cache, "initrd").unwrap();
        assert_eq!((mode(&cache), mode(&dir)), (0o700, 0o700));
        // The cache directory may be a link to a directory of one's own;
        // a directory inside it may not be a link.
        let elsewhere = home.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let link = home.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        prepare(&link, "virtio").unwrap();
        assert!(elsewhere.join("virtio").is_dir());
        std::os::unix::fs::symlink(&elsewhere, cache.join("virtio")).unwrap();
        let err = prepare(&cache, "virtio").unwrap_err();
        assert_eq!(wrong_type(&err), Some("a symbolic link"), "{err}");
        fs::write(cache.join("plan"), b"").unwrap();
        let err = prepare(&cache, "plan").unwrap_err();
        assert!(err.to_string().contains("is a regular file"), "{err}");
        let err = prepare(&cache.join("plan"), "x").unwrap_err();
        assert!(matches!(err, CacheError::Io { .. }), "{err}");
    }

    #[test]
    fn entries_must_be_regular_files_and_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.cpio");
        assert!(open_entry(&missing).unwrap().is_none());
        let old = dir.path().join("old.cpio");
        fs::write(&old, b"archive").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open_entry(&old).unwrap().is_some());
        assert_eq!(mode(&old), 0o600);
        // A FIFO is refused at once: a plain open would wait for a writer.
        let fifo = dir.path().join("fifo.plan");
        mkfifo(&fifo);
        let err = open_entry(&fifo).unwrap_err();
        assert_eq!(wrong_type(&err), Some("a FIFO"), "{err}");
        assert!(err.to_string().contains("fifo.plan"), "{err}");
        touch(&fifo);
        let link = dir.path().join("link.cpio");
        std::os::unix::fs::symlink(&old, &link).unwrap();
        let err = open_entry(&link).unwrap_err();
        assert_eq!(wrong_type(&err), Some("a symbolic link"), "{err}");
        let err = open_entry(dir.path()).unwrap_err();
        assert_eq!(wrong_type(&err), Some("a directory"), "{err}");
        // The initrd cache: a FIFO in place of an archive is an error, not
        // a hang.
        let cache = dir.path().join("cache");
        let initrd = prepare(&cache, "initrd").unwrap();
        mkfifo(&initrd.join("key.cpio"));
        assert!(slot(&cache, "key", dir.path(), ".cpio").is_err());
    }

    #[test]
    fn caches_of_other_users_are_refused() {
        let (_temp, dir, file) = foreign();
        let err = check_dir(&dir).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CacheError::NotOwned { .. }), "{text}");
        assert!(
            text.contains(&*dir.to_string_lossy()) && text.contains("XDG_CACHE_HOME"),
            "{text}"
        );
        let before = mode(&file);
        let err = open_entry(&file).unwrap_err();
        assert!(
            matches!(err, CacheError::NotOwned { what: "entry", .. }),
            "{err}"
        );
        assert_eq!(mode(&file), before, "a refused entry is left as it is");
    }

    #[test]
    fn cache_dir_prefers_absolute_xdg() {
        assert_eq!(
            cache_dir_from(Some("/x/cache"), Some("/home/u")),
            Some(PathBuf::from("/x/cache/microrun"))
        );
        // The XDG spec says to ignore relative paths.
        assert_eq!(
            cache_dir_from(Some("rel"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/microrun"))
        );
        assert_eq!(
            cache_dir_from(Some(""), Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/microrun"))
        );
        assert_eq!(cache_dir_from(None, None), None);
    }

    #[test]
    fn evict_spares_archives_used_in_the_last_minute() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            fs::File::create(dir.path().join(format!("{i}.cpio"))).unwrap();
        }
        evict(dir.path(), ".cpio", 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn evict_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::now() - Duration::from_secs(100);
        for i in 0..5u64 {
            let path = dir.path().join(format!("{i}.cpio"));
            let file = fs::File::create(&path).unwrap();
            file.set_modified(base + Duration::from_secs(i)).unwrap();
        }
        let temp = dir.path().join(format!("{TEMP_PREFIX}old"));
        fs::File::create(&temp)
            .unwrap()
            .set_modified(base - STALE_TEMP)
            .unwrap();
        let fresh_temp = dir.path().join(format!("{TEMP_PREFIX}new"));
        fs::File::create(&fresh_temp).unwrap();
        touch(&dir.path().join("0.cpio"));
        evict(dir.path(), ".cpio", 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".pack-new", "0.cpio", "4.cpio"]);
    }

    #[test]
    fn cache_inside_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("home/.cache/microrun");
        assert!(check_outside(&cache, dir.path()).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(check_outside(&cache, other.path()).is_ok());
    }
}
