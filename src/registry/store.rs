//! The pulled images' store: one OCI image layout in the cache
//! (`<cache>/oci/`: `oci-layout`, `blobs/sha256/<hex>`), content-addressed
//! and shared by every image, which the image conversion reads as it reads
//! any OCI layout; and one record per name (`refs/<hash>.json`: the name,
//! the digest it resolved to, the linux/amd64 manifest), whose mtime is
//! when the name was last used.
//!
//! A blob is written to a temporary file beside the blobs and renamed into
//! place only after its digest has been checked, so a blob under its name
//! is complete; two runs pulling the same blob each write their own
//! temporary file and the second rename replaces the first with the same
//! bytes. Pulls and runs hold a shared lock on `lock`, `--prune` an
//! exclusive one, so a prune never removes a blob a pull is about to name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::client::hex;
use super::RegistryError;

/// The largest record accepted.
const MAX_RECORD: u64 = 64 << 10;

/// One name's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `registry/repository:tag` or `registry/repository@sha256:...`.
    pub name: String,
    /// What the name resolved to: an index or a manifest.
    pub digest: String,
    /// The linux/amd64 manifest.
    pub manifest: String,
    /// When the name was last used.
    pub used: Option<SystemTime>,
}

/// The store, opened (its directories made).
pub struct BlobStore {
    root: PathBuf,
}

/// A lock on the store, released when dropped.
pub struct StoreLock(#[allow(dead_code)] File);

impl BlobStore {
    /// The store under `cache` (`<cache>/oci`).
    ///
    /// Its directories are the user's own, 0700, as the rest of the cache
    /// (`initrd_tools::cache`); files are written 0600.
    pub fn open(cache: &Path) -> Result<BlobStore, RegistryError> {
        let root =
            initrd_tools::cache::prepare(cache, "oci").map_err(initrd_tools::InitrdError::from)?;
        let store = |what: &str, source| RegistryError::Store {
            what: format!("{what} in {}", root.display()),
            source,
        };
        for dir in ["blobs", "blobs/sha256", "refs"] {
            let path = root.join(dir);
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(store(dir, e));
                }
                _ => {}
            }
            initrd_tools::cache::check_dir(&path).map_err(initrd_tools::InitrdError::from)?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&root, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| store("oci-layout", e))?;
        }
        Ok(BlobStore { root })
    }

    /// The layout directory, for the image conversion.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store's lock: shared for pulls and runs, exclusive for a
    /// prune.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, RegistryError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| RegistryError::Store {
                what: path.display().to_string(),
                source,
            })?;
        // A prune does not wait for pulls (which may take minutes): it
        // fails at once. A pull waits only for a prune, which is short.
        let op = if exclusive {
            libc::LOCK_EX | libc::LOCK_NB
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor this function owns; no memory is
        // passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::WouldBlock {
                return Err(RegistryError::Busy {
                    store: self.root.clone(),
                });
            }
            return Err(RegistryError::Store {
                what: format!("the lock {}", path.display()),
                source,
            });
        }
        Ok(StoreLock(file))
    }

    /// Where the blob `digest` (`sha256:<hex>`) is, or would be.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// Whether the blob is there with this digest and size: hashed, never
    /// trusted. A blob whose bytes do not match its digest is removed (and
    /// so fetched again). A blob that matches its digest but not `size`
    /// is intact and the descriptor is wrong: that is refused, naming
    /// `image` (whose manifest gave the size), and the store is left alone,
    /// so one image's bad manifest cannot remove another's good layer.
    pub fn has_verified(
        &self,
        digest: &str,
        size: u64,
        image: &str,
    ) -> Result<bool, RegistryError> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(RegistryError::Store {
                    what: path.display().to_string(),
                    source,
                })
            }
        };
        if hash_reader(&mut file).ok().as_deref() != Some(digest) {
            log::warn!(
                "{}: the cached blob {digest} does not match its digest; removed, fetched again",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return Ok(false);
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len != size {
            return Err(RegistryError::WrongDescriptorSize {
                image: image.to_string(),
                digest: digest.to_string(),
                expected: size,
                actual: len,
            });
        }
        Ok(true)
    }

    /// The blob's bytes, when it is there, at most `limit` bytes long and
    /// matches its digest (otherwise it is removed).
    pub fn read_verified(&self, digest: &str, limit: u64) -> Option<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).ok()?;
        let hash = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if bytes.len() as u64 > limit || hash != digest {
            log::warn!("{}: does not match its digest; removed", path.display());
            let _ = fs::remove_file(&path);
            return None;
        }
        Some(bytes)
    }

    /// Stores `bytes`, already checked to have `digest`.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = self.blob_path(digest);
        write_atomically(&self.root.join("blobs/sha256"), &path, bytes).map_err(|source| {
            RegistryError::Store {
                what: path.display().to_string(),
                source,
            }
        })
    }

    /// Writes the blob `digest` through `fill` into a temporary file,
    /// renamed into place when `fill` succeeds (it checks the digest);
    /// removed otherwise.
    pub fn write_blob(
        &self,
        digest: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let dir = self.root.join("blobs/sha256");
        let store_error = |source| RegistryError::Store {
            what: format!("blob {digest} in {}", dir.display()),
            source,
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&dir)
            .map_err(store_error)?;
        {
            let mut out = io::BufWriter::with_capacity(256 << 10, temp.as_file_mut());
            fill(&mut out)?;
            out.flush().map_err(store_error)?;
        }
        temp.persist(self.blob_path(digest))
            .map_err(|e| store_error(e.error))?;
        Ok(())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        let key = hex(&Sha256::digest(name.as_bytes()));
        self.root.join("refs").join(format!("{key}.json"))
    }

    /// The record of `name`, if there is a valid one.
    pub fn record(&self, name: &str) -> Option<Record> {
        let record = read_record(&self.record_path(name))?;
        (record.name == name).then_some(record)
    }

    /// Writes (or replaces) a name's record.
    pub fn save(&self, record: &Record) -> Result<(), RegistryError> {
        let path = self.record_path(&record.name);
        let text = json!({
            "name": record.name,
            "digest": record.digest,
            "manifest": record.manifest,
        })
        .to_string();
        write_atomically(&self.root.join("refs"), &path, text.as_bytes()).map_err(|source| {
            RegistryError::Store {
                what: path.display().to_string(),
                source,
            }
        })
    }

    /// Marks `name` as used now (for `images`).
    pub fn touch(&self, name: &str) {
        let path = self.record_path(name);
        if let Ok(file) = File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Every valid record, by name.
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = fs::read_dir(self.root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| read_record(&entry.path()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The blobs a record keeps (what it resolved to, its manifest, the
    /// manifest's config and layers), with their sizes where the manifest
    /// names them; those not in the store are left out.
    pub fn blobs_of(&self, record: &Record) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for digest in [&record.digest, &record.manifest] {
            if let Ok(meta) = fs::metadata(self.blob_path(digest)) {
                if !out.iter().any(|(d, _)| d == digest) {
                    out.push((digest.clone(), meta.len()));
                }
            }
        }
        let Some(bytes) = self.read_verified(&record.manifest, super::client::MAX_MANIFEST) else {
            return out;
        };
        let Ok(manifest) = serde_json::from_slice::<Value>(&bytes) else {
            return out;
        };
        let config = manifest.get("config").into_iter();
        let layers = manifest
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for descriptor in config.chain(layers) {
            let digest = descriptor.get("digest").and_then(Value::as_str);
            if let Some(digest) = digest.filter(|d| super::is_digest(d)) {
                if let Ok(meta) = fs::metadata(self.blob_path(digest)) {
                    if !out.iter().any(|(d, _)| d == digest) {
                        out.push((digest.to_string(), meta.len()));
                    }
                }
            }
        }
        out
    }

    /// Removes every blob no record keeps, and temporary files a pull left
    /// (under the exclusive lock, so no pull is writing one). Returns how
    /// many blobs and bytes went.
    pub fn prune(&self) -> Result<(usize, u64), RegistryError> {
        let _lock = self.lock(true)?;
        let kept: std::collections::BTreeSet<String> = self
            .records()
            .iter()
            .flat_map(|r| self.blobs_of(r))
            .map(|(digest, _)| digest.trim_start_matches("sha256:").to_string())
            .collect();
        let dir = self.root.join("blobs/sha256");
        let (mut count, mut bytes) = (0, 0);
        let entries = fs::read_dir(&dir).map_err(|source| RegistryError::Store {
            what: dir.display().to_string(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if kept.contains(&name) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(entry.path()).is_ok() {
                count += 1;
                bytes += size;
            }
        }
        Ok((count, bytes))
    }
}

fn read_record(path: &Path) -> Option<Record> {
    let file = File::open(path).ok()?;
    let used = file.metadata().and_then(|m| m.modified()).ok();
    let mut text = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut text).ok()?;
    let json: Value = serde_json::from_slice(&text).ok()?;
    let field = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_string);
    let record = Record {
        name: field("name")?,
        digest: field("digest").filter(|d| super::is_digest(d))?,
        manifest: field("manifest").filter(|d| super::is_digest(d))?,
        used,
    };
    Some(record)
}

/// `sha256:<hex>` of everything `reader` gives.
fn hash_reader(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// Writes `bytes` to `path` through a temporary file in `dir`.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(bytes)))
    }

    #[test]
    fn blobs_are_checked_in_the_store_and_a_bad_one_is_removed() {
        let cache = tempfile::tempdir().unwrap();
        let store = BlobStore::open(cache.path()).unwrap();
        let digest = digest_of(b"layer");
        store
            .write_blob(&digest, |out: &mut dyn Write| {
                out.write_all(b"layer")
                    .map_err(|source| RegistryError::Store {
                        what: "test".into(),
                        source,
                    })
            })
            .unwrap();
        assert!(store.has_verified(&digest, 5, "test").unwrap());
        assert_eq!(
            store.read_verified(&digest, 10).as_deref(),
            Some(&b"layer"[..])
        );
        fs::write(store.blob_path(&digest), b"LAYER").unwrap();
        assert!(!store.has_verified(&digest, 5, "test").unwrap());
        assert!(
            !store.blob_path(&digest).exists(),
            "a tampered blob is removed"
        );
        // A fill that fails leaves nothing behind, not even its temporary file.
        let failed = store.write_blob(&digest, |_out: &mut dyn Write| {
            Err(RegistryError::Store {
                what: "test".into(),
                source: io::Error::other("stop"),
            })
        });
        assert!(failed.is_err());
        let left: Vec<_> = fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_descriptor_with_a_wrong_size_is_refused_and_the_blob_kept() {
        let cache = tempfile::tempdir().unwrap();
        let store = BlobStore::open(cache.path()).unwrap();
        let digest = digest_of(b"image A's layer");
        store.put(&digest, b"image A's layer").unwrap();
        // Image B's manifest names A's layer with another size.
        let err = store
            .has_verified(&digest, 3, "example.com/b:1")
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::WrongDescriptorSize {
                    expected: 3,
                    actual: 15,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("example.com/b:1") && text.contains(&digest),
            "{text}"
        );
        assert!(
            store.blob_path(&digest).exists(),
            "A's verified layer is kept"
        );
        assert!(store.has_verified(&digest, 15, "example.com/a:1").unwrap());
    }

    #[test]
    fn a_prune_does_not_wait_for_a_pull() {
        let cache = tempfile::tempdir().unwrap();
        let store = BlobStore::open(cache.path()).unwrap();
        let pulling = store.lock(false).unwrap();
        let err = store.prune().unwrap_err();
        assert!(matches!(err, RegistryError::Busy { .. }), "{err}");
        drop(pulling);
        assert_eq!(store.prune().unwrap(), (0, 0));
    }

    #[test]
    fn records_keep_their_blobs_through_a_prune() {
        let cache = tempfile::tempdir().unwrap();
        let store = BlobStore::open(cache.path()).unwrap();
        let layer = digest_of(b"kept layer");
        let config = digest_of(b"{}");
        let manifest = json!({
            "schemaVersion": 2,
            "config": {"digest": config, "size": 2},
            "layers": [{"digest": layer, "size": 10}],
        })
        .to_string();
        let manifest_digest = digest_of(manifest.as_bytes());
        let orphan = digest_of(b"orphan");
        for (digest, bytes) in [
            (&layer, &b"kept layer"[..]),
            (&config, b"{}"),
            (&manifest_digest, manifest.as_bytes()),
            (&orphan, b"orphan"),
        ] {
            store.put(digest, bytes).unwrap();
        }
        let record = Record {
            name: "example.com/app:1".into(),
            digest: manifest_digest.clone(),
            manifest: manifest_digest.clone(),
            used: None,
        };
        store.save(&record).unwrap();
        let read = store.record("example.com/app:1").unwrap();
        assert_eq!(
            (read.digest, read.manifest),
            (manifest_digest.clone(), manifest_digest)
        );
        assert!(store.record("example.com/app:2").is_none());
        assert_eq!(store.blobs_of(&record).len(), 3);
        assert_eq!(store.prune().unwrap(), (1, 6));
        assert!(!store.blob_path(&orphan).exists());
        assert!(store.blob_path(&layer).exists());
    }
}
