//! What a kernel image says about itself, read without booting it: its
//! release (`uname -r`, the name of its `/lib/modules` directory) and its
//! build configuration, so that microrun can tell whether the virtio
//! drivers are built in, modules, or absent.
//!
//! The release comes from the bzImage header's `kernel_version` string, or
//! from an ELF vmlinux's `linux_banner` (`Linux version <release> (...`).
//! The configuration comes from the first of: `config-<release>` beside the
//! kernel, `/boot/config-<release>`, `/lib/modules/<release>/config`,
//! `/lib/modules/<release>/build/.config`, `config` beside the kernel (the
//! layout of `scripts/build-kernel`'s cache), and the configuration an ELF
//! vmlinux embeds with `CONFIG_IKCONFIG`. A bzImage's embedded
//! configuration is not read: it sits inside the compressed payload, and
//! unpacking megabytes on every run is not worth it.
//!
//! Kernel images are untrusted input: every read is bounded, and a release
//! string that could not be a directory name is refused.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Errors reading a kernel's release or configuration.
#[derive(Debug, thiserror::Error)]
pub enum KernelInfoError {
    /// The kernel or configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No release string was found in the kernel image.
    #[error("cannot tell the release of kernel {}: {detail}", path.display())]
    NoRelease {
        /// The kernel image.
        path: PathBuf,
        /// What was looked for.
        detail: String,
    },
    /// A configuration file larger than any real one.
    #[error("{} is {size} bytes, more than a kernel configuration ({MAX_CONFIG_BYTES} at most)", path.display())]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The configuration embedded in a vmlinux (`IKCFG_ST`) is not valid gzip.
    #[error("the configuration embedded in {} (CONFIG_IKCONFIG) is corrupt: {source}", path.display())]
    CorruptEmbeddedConfig {
        /// The kernel image.
        path: PathBuf,
        /// The decompression error.
        source: io::Error,
    },
}

/// Longest release accepted (`uname -r` is at most 64 characters).
pub const MAX_RELEASE_LEN: usize = 64;
/// Largest configuration read (a distribution's `.config` is about 300 KB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// How far into an ELF vmlinux the banner and the embedded configuration are
/// looked for.
const MAX_ELF_SCAN: u64 = 1 << 30;
const BANNER: &[u8] = b"Linux version ";
const IKCONFIG_START: &[u8] = b"IKCFG_ST";

fn read_err(path: &Path) -> impl Fn(io::Error) -> KernelInfoError + '_ {
    move |source| KernelInfoError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `release` can name a `/lib/modules` directory: 1 to
/// [`MAX_RELEASE_LEN`] characters from `[A-Za-z0-9._+~-]`, not starting
/// with a dot.
pub fn is_valid_release(release: &str) -> bool {
    !release.is_empty()
        && release.len() <= MAX_RELEASE_LEN
        && !release.starts_with('.')
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// The release token at the start of `bytes` (up to a space or NUL), if valid.
fn release_token(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|b| *b == b' ' || *b == 0)
        .unwrap_or(bytes.len());
    let token = std::str::from_utf8(&bytes[..end]).ok()?;
    is_valid_release(token).then(|| token.to_string())
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(buf.len());
    file.by_ref()
        .take(buf.len() as u64)
        .read_to_end(&mut bytes)?;
    buf[..bytes.len()].copy_from_slice(&bytes);
    Ok(bytes.len())
}

/// The offset of the first `needle` at or after `from`, looking no further
/// than [`MAX_ELF_SCAN`], reading a chunk at a time.
fn find_in_file(file: &mut File, needle: &[u8], from: u64) -> io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + needle.len()];
    let mut offset = from;
    while offset < MAX_ELF_SCAN {
        let n = read_at(file, offset, &mut buf)?;
        if n < needle.len() {
            return Ok(None);
        }
        if let Some(pos) = buf[..n].windows(needle.len()).position(|w| w == needle) {
            return Ok(Some(offset + pos as u64));
        }
        if n < buf.len() {
            return Ok(None);
        }
        offset += CHUNK as u64;
    }
    Ok(None)
}

/// The release of the kernel at `path` (a bzImage or an ELF vmlinux), as
/// `uname -r` would print it once booted.
///
/// ```no_run
/// let release = initrd_tools::kernel_info::kernel_release("/boot/vmlinuz-6.1.0-57-amd64".as_ref())?;
/// assert_eq!(release, "6.1.0-57-amd64");
/// # Ok::<(), initrd_tools::kernel_info::KernelInfoError>(())
/// ```
pub fn kernel_release(path: &Path) -> Result<String, KernelInfoError> {
    let mut file = File::open(path).map_err(read_err(path))?;
    let mut head = [0u8; 0x210];
    let n = read_at(&mut file, 0, &mut head).map_err(read_err(path))?;
    let no_release = |detail: &str| KernelInfoError::NoRelease {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    if n >= 4 && head.starts_with(b"\x7fELF") {
        return elf_release(&mut file, path);
    }
    if n < 0x210 || &head[0x202..0x206] != b"HdrS" {
        return Err(no_release(
            "neither a bzImage (\"HdrS\" at 0x202) nor an ELF vmlinux",
        ));
    }
    let version = u16::from_le_bytes([head[0x206], head[0x207]]);
    let string_offset = u16::from_le_bytes([head[0x20e], head[0x20f]]);
    if version < 0x200 || string_offset == 0 {
        return Err(no_release(
            "its setup header has no kernel_version string (boot protocol before 2.00)",
        ));
    }
    let mut text = [0u8; MAX_RELEASE_LEN + 1];
    let n =
        read_at(&mut file, u64::from(string_offset) + 0x200, &mut text).map_err(read_err(path))?;
    release_token(&text[..n]).ok_or_else(|| {
        no_release("the setup header's kernel_version string does not start with a release")
    })
}

fn elf_release(file: &mut File, path: &Path) -> Result<String, KernelInfoError> {
    let mut from = 0;
    while let Some(at) = find_in_file(file, BANNER, from).map_err(read_err(path))? {
        let mut text = [0u8; BANNER.len() + MAX_RELEASE_LEN + 2];
        let n = read_at(file, at, &mut text).map_err(read_err(path))?;
        let rest = &text[BANNER.len()..n];
        if let Some(release) = release_token(rest) {
            // linux_banner is "Linux version <release> (<user>@<host>) ...".
            if rest[release.len()..].starts_with(b" (") {
                return Ok(release);
            }
        }
        from = at + 1;
    }
    Err(KernelInfoError::NoRelease {
        path: path.to_path_buf(),
        detail: "no \"Linux version <release> (\" banner in the ELF file".to_string(),
    })
}

/// A tristate configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tristate {
    /// `=y`: built into the kernel.
    Yes,
    /// `=m`: built as a loadable module.
    Module,
    /// `# CONFIG_... is not set` (or `=n`).
    No,
}

/// A kernel's build configuration (a `.config` file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Option name without `CONFIG_` -> raw value (quotes kept); "is not set"
    /// is stored as `n`.
    options: HashMap<String, String>,
    /// Where it was read from.
    source: PathBuf,
}

impl KernelConfig {
    /// Parses `.config` text. Lines other than `CONFIG_X=value` and
    /// `# CONFIG_X is not set` are ignored.
    pub fn parse(text: &str, source: &Path) -> KernelConfig {
        let mut options = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    options.insert(name.to_string(), "n".to_string());
                }
            } else if let Some(rest) = line.strip_prefix("CONFIG_") {
                if let Some((name, value)) = rest.split_once('=') {
                    options.insert(name.to_string(), value.to_string());
                }
            }
        }
        KernelConfig {
            options,
            source: source.to_path_buf(),
        }
    }

    /// Reads and parses the configuration file at `path`.
    pub fn read(path: &Path) -> Result<KernelConfig, KernelInfoError> {
        let file = File::open(path).map_err(read_err(path))?;
        let size = file.metadata().map_err(read_err(path))?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(KernelInfoError::ConfigTooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_CONFIG_BYTES)
            .read_to_end(&mut bytes)
            .map_err(read_err(path))?;
        Ok(KernelConfig::parse(&String::from_utf8_lossy(&bytes), path))
    }

    /// The configuration of the kernel at `kernel` whose release is
    /// `release`, from the places listed in the [module docs](self), or
    /// `None` when there is none.
    pub fn find(kernel: &Path, release: &str) -> Result<Option<KernelConfig>, KernelInfoError> {
        Self::find_under(Path::new("/"), kernel, release)
    }

    /// [`KernelConfig::find`] with `/boot` and `/lib/modules` taken under `root`.
    pub fn find_under(
        root: &Path,
        kernel: &Path,
        release: &str,
    ) -> Result<Option<KernelConfig>, KernelInfoError> {
        for candidate in Self::candidates(root, kernel, release) {
            match Self::read(&candidate) {
                Ok(config) => return Ok(Some(config)),
                Err(KernelInfoError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Self::embedded(kernel)
    }

    /// The files [`KernelConfig::find_under`] tries, in order, before the
    /// configuration embedded in the kernel (so that a cache of what was
    /// found can tell when it is stale).
    pub fn candidates(root: &Path, kernel: &Path, release: &str) -> Vec<PathBuf> {
        let beside = kernel.parent().unwrap_or(Path::new("."));
        let mut candidates = Vec::new();
        if is_valid_release(release) {
            let modules = root.join("lib/modules").join(release);
            candidates.push(beside.join(format!("config-{release}")));
            candidates.push(root.join("boot").join(format!("config-{release}")));
            candidates.push(modules.join("config"));
            candidates.push(modules.join("build/.config"));
        }
        candidates.push(beside.join("config"));
        candidates
    }

    /// The configuration an ELF vmlinux built with `CONFIG_IKCONFIG` carries
    /// (gzip data after `IKCFG_ST`), or `None` (also for a bzImage).
    pub fn embedded(kernel: &Path) -> Result<Option<KernelConfig>, KernelInfoError> {
        let mut file = File::open(kernel).map_err(read_err(kernel))?;
        let mut magic = [0u8; 4];
        if read_at(&mut file, 0, &mut magic).map_err(read_err(kernel))? < 4 || &magic != b"\x7fELF"
        {
            return Ok(None);
        }
        let Some(at) = find_in_file(&mut file, IKCONFIG_START, 0).map_err(read_err(kernel))? else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(at + IKCONFIG_START.len() as u64))
            .map_err(read_err(kernel))?;
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(io::BufReader::new(file))
            .take(MAX_CONFIG_BYTES)
            .read_to_end(&mut text)
            .map_err(|source| KernelInfoError::CorruptEmbeddedConfig {
                path: kernel.to_path_buf(),
                source,
            })?;
        Ok(Some(KernelConfig::parse(
            &String::from_utf8_lossy(&text),
            kernel,
        )))
    }

    /// The tristate value of option `name` (with or without `CONFIG_`):
    /// `None` when the configuration does not mention it (its dependencies
    /// are off, or the kernel has no such option) or its value is not a
    /// tristate.
    pub fn option(&self, name: &str) -> Option<Tristate> {
        match self.value(name)? {
            "y" => Some(Tristate::Yes),
            "m" => Some(Tristate::Module),
            "n" => Some(Tristate::No),
            _ => None,
        }
    }

    /// The raw value of option `name` (strings keep their quotes).
    pub fn value(&self, name: &str) -> Option<&str> {
        let name = name.strip_prefix("CONFIG_").unwrap_or(name);
        self.options.get(name).map(String::as_str)
    }

    /// The file this configuration was read from (the kernel image itself
    /// for an embedded one).
    pub fn source(&self) -> &Path {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DEBIAN_RELEASE: &str = "6.1.0-57-amd64";

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A bzImage head: setup header with `kernel_version` pointing at `text`.
    fn bzimage(text: &[u8], version: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        let at = 0x600usize;
        b[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        b[at..at + text.len()].copy_from_slice(text);
        b
    }

    /// An ELF file with `text` at `offset`.
    fn elf_with(offset: usize, text: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; offset + text.len() + 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[offset..offset + text.len()].copy_from_slice(text);
        b
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn release_from_a_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(
            dir.path(),
            "bz",
            &bzimage(
                b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0",
                0x20f,
            ),
        );
        assert_eq!(kernel_release(&k).unwrap(), DEBIAN_RELEASE);
        for (text, version) in [
            (&b"6.1.0-57-amd64 (x)\0"[..], 0x1ff), // no kernel_version field
            (&b"../../etc (x)\0"[..], 0x20f),      // not a directory name
            (&b".hidden (x)\0"[..], 0x20f),        // starts with a dot
            (&b"\0"[..], 0x20f),                   // empty
            (&[b'7'; MAX_RELEASE_LEN + 1][..], 0x20f), // too long
        ] {
            let k = write(dir.path(), "bad", &bzimage(text, version));
            let err = kernel_release(&k).unwrap_err();
            assert!(matches!(err, KernelInfoError::NoRelease { .. }), "{err}");
            assert!(err.to_string().contains("bad"), "{err}");
        }
        let short = write(dir.path(), "short", b"MZ");
        assert!(matches!(
            kernel_release(&short),
            Err(KernelInfoError::NoRelease { .. })
        ));
        assert!(matches!(
            kernel_release(&dir.path().join("missing")),
            Err(KernelInfoError::Read { .. })
        ));
    }

    #[test]
    fn release_from_an_elf_banner_even_across_a_read_chunk() {
        let dir = tempfile::tempdir().unwrap();
        // A decoy first ("Linux version %s" is not a banner), then the banner
        // straddling the 1 MiB chunk boundary.
        let mut b = elf_with(
            (1 << 20) - 6,
            b"Linux version 6.1.192 (microrun@microrun) (gcc)",
        );
        b[100..118].copy_from_slice(b"Linux version %s\n\0");
        let k = write(dir.path(), "vmlinux", &b);
        assert_eq!(kernel_release(&k).unwrap(), "6.1.192");
        let k = write(dir.path(), "none", &elf_with(200, b"Linux version %s"));
        assert!(matches!(
            kernel_release(&k),
            Err(KernelInfoError::NoRelease { .. })
        ));
    }

    #[test]
    fn config_options_and_values() {
        let c = KernelConfig::parse(
            "#\n# Linux/x86 6.1.0 Kernel Configuration\nCONFIG_VIRTIO=m\nCONFIG_VIRTIO_MMIO=y\n\
             # CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_LOCALVERSION=\"-x\"\n\
             CONFIG_NR_CPUS=64\n",
            Path::new("config"),
        );
        assert_eq!(c.option("VIRTIO"), Some(Tristate::Module));
        assert_eq!(c.option("CONFIG_VIRTIO_MMIO"), Some(Tristate::Yes));
        assert_eq!(c.option("VIRTIO_MMIO_CMDLINE_DEVICES"), Some(Tristate::No));
        assert_eq!(c.option("VIRTIO_CONSOLE"), None);
        assert_eq!(c.option("LOCALVERSION"), None);
        assert_eq!(c.value("LOCALVERSION"), Some("\"-x\""));
        assert_eq!(c.value("CONFIG_NR_CPUS"), Some("64"));
        assert_eq!(c.source(), Path::new("config"));
    }

    #[test]
    fn config_is_found_in_the_usual_places_in_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let kdir = r.join("kernels");
        std::fs::create_dir_all(kdir.join("sub")).unwrap();
        std::fs::create_dir_all(r.join("boot")).unwrap();
        std::fs::create_dir_all(r.join("lib/modules/9.9-x/build")).unwrap();
        let kernel = write(&kdir, "vmlinuz-9.9-x", &bzimage(b"9.9-x (a@b)\0", 0x20f));
        let find = || {
            KernelConfig::find_under(r, &kernel, "9.9-x")
                .unwrap()
                .map(|c| c.source().to_path_buf())
        };
        assert_eq!(find(), None);
        let places = [
            kdir.join("config"),
            r.join("lib/modules/9.9-x/build/.config"),
            r.join("lib/modules/9.9-x/config"),
            r.join("boot/config-9.9-x"),
            kdir.join("config-9.9-x"),
        ];
        for place in places {
            std::fs::write(&place, "CONFIG_ACPI=y\n").unwrap();
            assert_eq!(find(), Some(place));
        }
        // A release that is no directory name only allows the file beside.
        let found = KernelConfig::find_under(r, &kernel, "../..").unwrap();
        assert_eq!(found.unwrap().source(), kdir.join("config"));
    }

    #[test]
    fn config_embedded_in_an_elf_vmlinux() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = b"IKCFG_ST".to_vec();
        data.extend(gzip(b"CONFIG_IKCONFIG=y\nCONFIG_VIRTIO_MMIO=m\n"));
        data.extend(b"IKCFG_ED");
        let k = write(dir.path(), "vmlinux", &elf_with(5000, &data));
        let c = KernelConfig::find_under(dir.path(), &k, "1.0")
            .unwrap()
            .unwrap();
        assert_eq!(c.option("VIRTIO_MMIO"), Some(Tristate::Module));
        assert_eq!(c.source(), k);
        let broken = write(dir.path(), "broken", &elf_with(5000, b"IKCFG_STnot gzip"));
        assert!(matches!(
            KernelConfig::embedded(&broken),
            Err(KernelInfoError::CorruptEmbeddedConfig { .. })
        ));
        let bz = write(dir.path(), "bz", &bzimage(b"1.0 (a@b)\0", 0x20f));
        assert_eq!(KernelConfig::embedded(&bz).unwrap(), None);
    }

    #[test]
    fn debian_kernel_release_and_config() {
        let kernel = Path::new("/boot/vmlinuz-6.1.0-57-amd64");
        if !kernel.exists() {
            println!(
                "skipped: {} not installed (linux-image-amd64)",
                kernel.display()
            );
            return;
        }
        assert_eq!(kernel_release(kernel).unwrap(), DEBIAN_RELEASE);
        let config = KernelConfig::find(kernel, DEBIAN_RELEASE).unwrap().unwrap();
        assert_eq!(config.source(), Path::new("/boot/config-6.1.0-57-amd64"));
        assert_eq!(config.option("ACPI"), Some(Tristate::Yes));
        assert_eq!(config.option("VIRTIO_MMIO"), Some(Tristate::Module));
        assert_eq!(config.option("VIRTIO_CONSOLE"), Some(Tristate::Module));
        assert_ne!(
            config.option("VIRTIO_MMIO_CMDLINE_DEVICES"),
            Some(Tristate::Yes)
        );
    }

    #[test]
    fn project_kernel_release_is_the_same_in_bzimage_and_vmlinux() {
        let Some(home) = std::env::var_os("HOME") else {
            println!("skipped: HOME is not set");
            return;
        };
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&home).join(".cache"));
        let dir = cache.join("microrun/kernels/default");
        let (bz, elf) = (dir.join("bzImage"), dir.join("vmlinux"));
        if !bz.exists() || !elf.exists() {
            println!(
                "skipped: no project kernel in {} (scripts/build-kernel)",
                dir.display()
            );
            return;
        }
        let release = kernel_release(&bz).unwrap();
        assert!(is_valid_release(&release), "{release}");
        assert_eq!(kernel_release(&elf).unwrap(), release);
        if let Some(config) = KernelConfig::find(&bz, &release).unwrap() {
            // The project kernel has no modules: everything it has is built in.
            assert_ne!(config.option("MODULES"), Some(Tristate::Yes));
        }
    }
}
