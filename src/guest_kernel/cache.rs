//! The cache of kernel plans: one file per key in `<cache dir>/virtio/`,
//! named by a hash of the key and holding the key itself, so that a
//! collision is a miss. Everything read back is checked; any surprise is a
//! miss, and any failure to write is only logged: the cache is an
//! optimisation.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use initrd_tools::cache::stamp;
use initrd_tools::kernel_info::{self, KernelConfig, KernelInfoError};
use initrd_tools::modules::INDEX_FILES;
use initrd_tools::InitrdError;
use vmm::DeviceKind;

use super::host_modules::ModuleSource;
use super::{GuestModule, KernelPlan, Transport};

/// Changes whenever the decision or this format changes.
const FORMAT: &str = "microrun-virtio-plan-v4";
/// How many plans the cache keeps.
const KEEP: usize = 16;
/// Largest entry read back (a few modules of a few hundred KiB each).
const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// `path` and its metadata, or why there is none, on one line.
pub(super) fn stat_line(path: &Path) -> String {
    stamp(path, Stamp::Metadata)
}

/// What identifies a file's contents for [`by_metadata`].
pub(crate) use initrd_tools::cache::Stamp;

/// What a plan for `kernel` depends on besides its modules: the kernel,
/// the places its configuration may be, its module indexes, the devices
/// asked for and the transport.
pub(super) fn key(
    root: &Path,
    kernel: &Path,
    release: Option<&str>,
    wanted: &[DeviceKind],
    transport: Transport,
) -> Key {
    let mut text = format!(
        "{FORMAT} {}\nroot {}\n{}\n",
        env!("CARGO_PKG_VERSION"),
        root.display(),
        stat_line(kernel)
    );
    let release = release.unwrap_or("");
    for candidate in KernelConfig::candidates(root, kernel, release) {
        text.push_str(&stat_line(&candidate));
        text.push('\n');
    }
    if !release.is_empty() {
        let dir = root.join("lib/modules").join(release);
        text.push_str(&stat_line(&dir));
        text.push('\n');
        for index in INDEX_FILES {
            text.push_str(&stat_line(&dir.join(index)));
            text.push('\n');
        }
    }
    text.push_str(&format!("devices {wanted:?} transport {transport:?}\n"));
    Key {
        text,
        wanted: wanted.to_vec(),
    }
}

/// A plan's cache key: its text, and the device kinds asked for (a cached
/// plan names only kinds among them).
pub(super) struct Key {
    text: String,
    wanted: Vec<DeviceKind>,
}

fn entry_path(dir: &Path, key: &Key) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    key.text.hash(&mut hasher);
    dir.join(format!("{:016x}.plan", hasher.finish()))
}

/// The cached plan for `key` whose modules are unchanged, if any.
pub(super) fn load(dir: &Path, key: &Key) -> Option<KernelPlan> {
    let path = entry_path(dir, key);
    // A regular file of the user's alone, opened without blocking: a FIFO
    // or another user's file is refused, not waited on or trusted.
    let file = match initrd_tools::cache::open_entry(&path) {
        Ok(file) => file?,
        Err(e) => {
            log::warn!("{e}; deciding the virtio plan afresh");
            return None;
        }
    };
    if file.metadata().ok()?.len() > MAX_ENTRY_BYTES {
        return None;
    }
    // From the file just measured, bounded all the same (it may grow).
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return None;
    }
    let plan = decode(&bytes, key)?;
    log::debug!("virtio: plan from the cache, {}", path.display());
    initrd_tools::cache::touch(&path);
    Some(plan)
}

/// Caches `plan` (made from modules with `sources`) under `key`, the way
/// the initrd cache writes and evicts its archives.
pub(super) fn store(dir: &Path, key: &Key, plan: &KernelPlan, sources: &[ModuleSource]) {
    let path = entry_path(dir, key);
    let write = || -> Result<(), InitrdError> {
        make_dir(dir)?;
        initrd_tools::write_atomically_with(&path, dir, |mut file, _| {
            file.write_all(&encode(key, plan, sources))
                .map_err(|source| InitrdError::Write {
                    path: path.clone(),
                    source,
                })
        })
    };
    match write() {
        Ok(()) => initrd_tools::cache::evict_entries(dir, ".plan", KEEP, Duration::ZERO),
        Err(e) => log::debug!("virtio: cannot cache the plan in {}: {e}", dir.display()),
    }
}

/// The kernel's release (`6.1.0-57-amd64`), looked up by the kernel's
/// metadata in `dir` ([`by_metadata`]), else read from the kernel (for an
/// ELF vmlinux that is a scan of the whole file, tens of milliseconds for
/// the project's 17 MB one) and cached.
pub(super) fn release(dir: &Path, kernel: &Path) -> Result<String, KernelInfoError> {
    by_metadata(dir, kernel, Stamp::Metadata, "release", || {
        kernel_info::kernel_release(kernel)
    })
}

/// A fact about `file` alone (one word: a kernel's release, an archive's
/// unpacked size), looked up by the file's metadata (path, device, inode,
/// size, and for any file but microrun's own cache entries mtime and
/// ctime: [`Stamp`]) in `dir` (entries `<hash>.<suffix>`), else computed
/// and stored, so that a file whose metadata has not changed is never
/// read again for it. An entry that is not the user's regular file is a
/// miss with a warning, as every entry of the cache; a file changed since
/// is a miss by its key.
pub(crate) fn by_metadata<E>(
    dir: &Path,
    file: &Path,
    kind: Stamp,
    suffix: &str,
    compute: impl FnOnce() -> Result<String, E>,
) -> Result<String, E> {
    let stat = stamp(file, kind);
    let mut hasher = DefaultHasher::new();
    (FORMAT, suffix, &stat).hash(&mut hasher);
    let path = dir.join(format!("{:016x}.{suffix}", hasher.finish()));
    if let Some(value) = load_value(&path, &stat) {
        return Ok(value);
    }
    let value = compute()?;
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Ok(value);
    }
    // Computed from the file as it was when its metadata was taken: a file
    // replaced meanwhile has other metadata, so the entry is never used.
    let stored =
        initrd_tools::cache::store_fact(dir, &path, &stat, &value, &format!(".{suffix}"), KEEP);
    if let Err(e) = stored {
        log::debug!("cannot cache {suffix} of {}: {e}", file.display());
    }
    Ok(value)
}

/// The value in the entry at `path` if its key is `stat`: one word.
fn load_value(path: &Path, stat: &str) -> Option<String> {
    initrd_tools::cache::load_fact(path, stat, MAX_RELEASE_ENTRY)
        .filter(|value| !value.contains(char::is_whitespace))
}

/// Largest release entry read back (a path, its metadata and a release).
const MAX_RELEASE_ENTRY: u64 = 8 << 10;

/// `plan` passes a directory already made and checked
/// (`initrd_tools::cache::subdir`); a caller's own is made here, 0700.
fn make_dir(dir: &Path) -> Result<(), InitrdError> {
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|source| InitrdError::Cache {
            path: dir.to_path_buf(),
            source,
        })
}

/// Appends `bytes`, prefixed with their length (8 bytes, little-endian).
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    put(out, &(count as u64).to_le_bytes());
}

fn encode(key: &Key, plan: &KernelPlan, sources: &[ModuleSource]) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, key.text.as_bytes());
    out.extend([
        u8::from(plan.cmdline_discovery),
        u8::from(plan.acpi_discovery),
        u8::from(plan.transport == Transport::Pci),
        u8::from(plan.pci),
    ]);
    put_count(&mut out, plan.kinds.len());
    for kind in &plan.kinds {
        put(&mut out, format!("{kind:?}").as_bytes());
    }
    put_count(&mut out, plan.refused.len());
    for (kind, why) in &plan.refused {
        put(&mut out, format!("{kind:?}").as_bytes());
        put(&mut out, why.as_bytes());
    }
    put_count(&mut out, plan.notes.len());
    for note in &plan.notes {
        put(&mut out, note.as_bytes());
    }
    put_count(&mut out, plan.modules.len());
    for (module, source) in plan.modules.iter().zip(sources) {
        put(&mut out, module.file_name.as_bytes());
        put(&mut out, module.params.as_bytes());
        put(&mut out, source.path.as_os_str().as_encoded_bytes());
        put(&mut out, source.stat.as_bytes());
        put(&mut out, &module.bytes);
    }
    out
}

/// Reads an entry back field by field; `None` on anything unexpected.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = u64::from_le_bytes(self.bytes(8)?.try_into().ok()?);
        self.bytes(usize::try_from(len).ok()?)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.field()?.to_vec()).ok()
    }

    fn count(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.field()?.try_into().ok()?))
    }

    fn flag(&mut self) -> Option<bool> {
        match self.bytes(1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }

    /// A device kind, by name, among those the key asked for.
    fn kind(&mut self, wanted: &[DeviceKind]) -> Option<DeviceKind> {
        let name = self.text()?;
        wanted
            .iter()
            .copied()
            .find(|kind| format!("{kind:?}") == name)
    }
}

fn decode(bytes: &[u8], key: &Key) -> Option<KernelPlan> {
    let mut r = Reader(bytes);
    if r.field()? != key.text.as_bytes() {
        return None;
    }
    let mut plan = KernelPlan {
        cmdline_discovery: r.flag()?,
        acpi_discovery: r.flag()?,
        transport: if r.flag()? {
            Transport::Pci
        } else {
            Transport::Mmio
        },
        pci: r.flag()?,
        ..KernelPlan::default()
    };
    for _ in 0..r.count()? {
        plan.kinds.push(r.kind(&key.wanted)?);
    }
    for _ in 0..r.count()? {
        let kind = r.kind(&key.wanted)?;
        plan.refused.push((kind, r.text()?));
    }
    for _ in 0..r.count()? {
        plan.notes.push(r.text()?);
    }
    for _ in 0..r.count()? {
        let file_name = r.text()?;
        let params = r.text()?;
        let path = PathBuf::from(r.text()?);
        let stat = r.text()?;
        if stat_line(&path) != stat {
            return None;
        }
        plan.modules.push(GuestModule {
            file_name,
            params,
            bytes: r.field()?.to_vec(),
        });
    }
    r.0.is_empty().then_some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Key {
        Key {
            text: text.into(),
            wanted: vec![DeviceKind::Console, DeviceKind::Share],
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.ko");
        fs::write(&module, b"\x7fELF").unwrap();
        let plan = KernelPlan {
            kinds: vec![DeviceKind::Console],
            refused: vec![(DeviceKind::Share, "no 9p".into())],
            acpi_discovery: true,
            pci: true,
            modules: vec![GuestModule {
                file_name: "m.ko".into(),
                bytes: b"\x7fELF".to_vec(),
                params: "a=1".into(),
            }],
            notes: vec!["one".into(), "two".into()],
            ..KernelPlan::default()
        };
        let sources = [ModuleSource {
            path: module.clone(),
            stat: stat_line(&module),
        }];
        let bytes = encode(&key("k"), &plan, &sources);
        assert_eq!(decode(&bytes, &key("k")).as_ref(), Some(&plan));
        assert_eq!(decode(&bytes, &key("other")), None);
        // A kind the key did not ask for is a miss.
        let console_only = Key {
            wanted: vec![DeviceKind::Console],
            ..key("k")
        };
        assert_eq!(decode(&bytes, &console_only), None);
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len], &key("k")), None, "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer, &key("k")), None);
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x80;
            let _ = decode(&flipped, &key("k"));
        }
        // A module changed since: a miss.
        fs::write(&module, b"\x7fELF changed").unwrap();
        assert_eq!(decode(&bytes, &key("k")), None);

        let cache = dir.path().join("cache");
        store(&cache, &key("k"), &plan, &sources);
        assert_eq!(load(&cache, &key("k")), None, "the module changed");
        let sources = [ModuleSource {
            path: module.clone(),
            stat: stat_line(&module),
        }];
        store(&cache, &key("k"), &plan, &sources);
        assert_eq!(load(&cache, &key("k")).as_ref(), Some(&plan));
        for n in 0..KEEP + 4 {
            store(&cache, &key(&format!("k{n}")), &plan, &sources);
        }
        let count = fs::read_dir(&cache).unwrap().count();
        assert_eq!(count, KEEP);
    }

    #[test]
    fn the_release_is_looked_up_by_the_kernels_metadata() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let kernel = dir.path().join("bzImage");
        let bz = |release: &str| {
            let mut image = vec![0u8; 0x400];
            image[0x202..0x206].copy_from_slice(b"HdrS");
            image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
            image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
            image[0x300..0x300 + release.len()].copy_from_slice(release.as_bytes());
            image
        };
        fs::write(&kernel, bz("6.1.1 (x@y) #1")).unwrap();
        assert_eq!(release(&cache, &kernel).unwrap(), "6.1.1");
        let entries = || -> Vec<PathBuf> {
            fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        };
        let [entry] = entries().try_into().unwrap();
        assert_eq!(fs::metadata(&entry).unwrap().mode() & 0o777, 0o600);
        // A hit is answered from the entry, not the kernel: an entry made
        // to say otherwise is believed while the kernel's metadata holds.
        let stat = stat_line(&kernel);
        fs::write(&entry, format!("{stat}\n9.9.9\n")).unwrap();
        assert_eq!(release(&cache, &kernel).unwrap(), "9.9.9");
        // A changed size is a miss: the kernel is read again.
        fs::write(&kernel, bz("6.1.22 (x@y) #1")).unwrap();
        assert_eq!(release(&cache, &kernel).unwrap(), "6.1.22");
        // So is a changed mtime, the contents and size the same.
        for entry in entries() {
            fs::write(&entry, format!("{}\n9.9.9\n", stat_line(&kernel))).unwrap();
        }
        assert_eq!(release(&cache, &kernel).unwrap(), "9.9.9");
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let file = fs::File::options().write(true).open(&kernel).unwrap();
        file.set_modified(when).unwrap();
        drop(file);
        assert_eq!(release(&cache, &kernel).unwrap(), "6.1.22");
        // A FIFO in an entry's place is a miss, at once.
        for entry in entries() {
            fs::remove_file(entry).unwrap();
        }
        assert_eq!(release(&cache, &kernel).unwrap(), "6.1.22");
        let [entry] = entries().try_into().unwrap();
        fs::remove_file(&entry).unwrap();
        let c_path = std::ffi::CString::new(entry.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a NUL-terminated string the call only reads.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert_eq!(load_value(&entry, &stat_line(&kernel)), None);
        assert_eq!(release(&cache, &kernel).unwrap(), "6.1.22");
        // Another user's entry is not trusted (root can make one).
        fs::remove_file(&entry).unwrap();
        fs::write(&entry, format!("{}\n9.9.9\n", stat_line(&kernel))).unwrap();
        assert_eq!(
            load_value(&entry, &stat_line(&kernel)).as_deref(),
            Some("9.9.9")
        );
        // SAFETY: geteuid only returns the caller's id.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&entry, Some(4321), None).unwrap();
            assert_eq!(load_value(&entry, &stat_line(&kernel)), None);
        }
    }

    #[test]
    fn a_cache_entrys_fact_outlives_its_mtime_and_a_replaced_entry_is_counted_again() {
        let dir = tempfile::tempdir().unwrap();
        let facts = dir.path().join("facts");
        let entry = dir.path().join("entry.cpio");
        fs::write(&entry, b"0123").unwrap();
        let computed = std::cell::Cell::new(0);
        let fact = |kind| {
            by_metadata(&facts, &entry, kind, "pages", || {
                computed.set(computed.get() + 1);
                Ok::<_, std::io::Error>(fs::metadata(&entry)?.len().to_string())
            })
            .unwrap()
        };
        let touch = |secs| {
            let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let file = fs::File::options().write(true).open(&entry).unwrap();
            file.set_modified(when).unwrap();
        };
        assert_eq!(fact(Stamp::CacheEntry), "4");
        // Marked used (what every run does to the archive it boots): the
        // entry's fact still holds, a user's file's does not.
        touch(1);
        assert_eq!(fact(Stamp::CacheEntry), "4");
        assert_eq!(computed.get(), 1);
        assert_eq!(fact(Stamp::Metadata), "4");
        touch(2);
        assert_eq!(fact(Stamp::Metadata), "4");
        assert_eq!(computed.get(), 3);
        // An entry written anew is renamed into place: another inode.
        let new = dir.path().join(".pack-new");
        fs::write(&new, b"012345").unwrap();
        fs::rename(&new, &entry).unwrap();
        assert_eq!(fact(Stamp::CacheEntry), "6");
        assert_eq!(computed.get(), 4);
    }

    #[test]
    fn an_entry_that_is_not_the_users_regular_file_is_a_miss_without_waiting() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let plan = KernelPlan::none("none".into());
        store(dir.path(), &key("k"), &plan, &[]);
        let path = entry_path(dir.path(), &key("k"));
        assert_eq!(load(dir.path(), &key("k")).as_ref(), Some(&plan));
        // Written for its owner only.
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A FIFO in its place: a miss at once (a plain open would block).
        fs::remove_file(&path).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a NUL-terminated string the call only reads.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert_eq!(load(dir.path(), &key("k")), None);
        // Another user's entry is not trusted (root can make one).
        fs::remove_file(&path).unwrap();
        store(dir.path(), &key("k"), &plan, &[]);
        // SAFETY: geteuid only returns the caller's id.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(4321), None).unwrap();
            assert_eq!(load(dir.path(), &key("k")), None);
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
            assert_eq!(load(dir.path(), &key("k")).as_ref(), Some(&plan));
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        }
    }
}
