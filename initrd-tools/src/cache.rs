//! The content-addressed cache of packed trees, and the rules other caches
//! under the same directory follow ([`touch`], [`evict_entries`],
//! [`crate::write_atomically_with`]).
//!
//! `<cache dir>/initrd/<key>.cpio`, where the key is a SHA-256 over the
//! scanned tree's metadata (see `Tree::cache_key`). A hit refreshes the
//! file's mtime; after each new entry only the [`KEEP`] most recently used
//! archives are kept (and any used in the last minute, which a parallel run
//! may be about to boot), and temporary files older than an hour (left by an
//! interrupted pack) are removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::InitrdError;

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

/// Where the archive with `key` is or goes in `<cache>/initrd/`.
pub(crate) enum Slot {
    /// Cached: its mtime was refreshed.
    Hit(PathBuf),
    /// Not cached: write it at `path`, in `dir` (created).
    Miss { path: PathBuf, dir: PathBuf },
}

/// Looks up the archive `key` of `source` (for the log) in the cache.
pub(crate) fn slot(cache: &Path, key: &str, source: &Path) -> Result<Slot, InitrdError> {
    let dir = cache.join("initrd");
    let path = dir.join(format!("{key}.cpio"));
    if path.is_file() {
        log::debug!("{}: cached as {}", source.display(), path.display());
        touch(&path);
        return Ok(Slot::Hit(path));
    }
    fs::create_dir_all(&dir).map_err(|source| InitrdError::Cache {
        path: dir.clone(),
        source,
    })?;
    Ok(Slot::Miss { path, dir })
}

/// Marks a cached entry as just used, for the eviction order.
pub fn touch(path: &Path) {
    let result = fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = result {
        log::debug!("cannot refresh the mtime of {}: {e}", path.display());
    }
}

/// Removes all but the `keep` most recently used archives in `dir`, and
/// stale temporary files. Failures are logged, never fatal: the cache is an
/// optimisation.
pub(crate) fn evict(dir: &Path, keep: usize) {
    // A run boots its archive a moment after looking it up: one used
    // within the last minute may be about to be opened by a parallel run,
    // so it waits for a later eviction.
    evict_entries(dir, ".cpio", keep, IN_USE);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        evict(dir.path(), 1);
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
        evict(dir.path(), 2);
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
