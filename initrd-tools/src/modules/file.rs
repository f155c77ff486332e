//! One module file: its compression, and its bytes, decompressed and
//! checked against the kernel's release.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use super::ModulesError;

/// Largest module accepted, compressed or not (the largest Debian module,
/// amdgpu, is about 15 MB).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Memory the xz decoder may use (kernel modules use a 1 MiB dictionary).
const XZ_MEMLIMIT: u64 = 256 << 20;
/// Largest zstd window accepted, as a power of two (zstd's default limit).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// How a module file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.ko`
    None,
    /// `.ko.xz`
    Xz,
    /// `.ko.zst`
    Zstd,
    /// `.ko.gz`
    Gzip,
}

impl Compression {
    pub(super) fn of(file_name: &str) -> Option<(Compression, &str)> {
        [
            (".ko", Compression::None),
            (".ko.xz", Compression::Xz),
            (".ko.zst", Compression::Zstd),
            (".ko.gz", Compression::Gzip),
        ]
        .into_iter()
        .find_map(|(ext, c)| file_name.strip_suffix(ext).map(|stem| (c, stem)))
    }
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Module name, `_` for `-` (`kvm_amd`).
    pub name: String,
    /// The file on the host.
    pub path: PathBuf,
    /// How the file is compressed.
    pub compression: Compression,
    /// The kernel release its `vermagic` must start with, when known.
    pub(super) release: Option<String>,
}

impl ModuleFile {
    /// The uncompressed file name, `<name>.ko`.
    pub fn file_name(&self) -> String {
        format!("{}.ko", self.name)
    }

    /// The module's ELF bytes, decompressed, at most [`MAX_MODULE_BYTES`];
    /// when the tree was opened for a release, its `vermagic` must name it.
    pub fn read(&self) -> Result<Vec<u8>, ModulesError> {
        self.read_at_most(MAX_MODULE_BYTES)
    }

    pub(super) fn read_at_most(&self, max: u64) -> Result<Vec<u8>, ModulesError> {
        let path = &self.path;
        let read_err = |source| ModulesError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        if size > max {
            return Err(ModulesError::TooLarge {
                path: path.clone(),
                size,
                max,
            });
        }
        let corrupt = |detail: String| ModulesError::Corrupt {
            path: path.clone(),
            detail,
        };
        let mut input = BufReader::new(file);
        let mut magic = Vec::with_capacity(6);
        input
            .by_ref()
            .take(6)
            .read_to_end(&mut magic)
            .map_err(read_err)?;
        let chained = io::Cursor::new(magic.clone()).chain(input);
        let expected: &[u8] = match self.compression {
            Compression::None => b"\x7fELF",
            Compression::Xz => b"\xfd7zXZ\x00",
            Compression::Zstd => b"\x28\xb5\x2f\xfd",
            Compression::Gzip => b"\x1f\x8b",
        };
        if !magic.starts_with(expected) {
            return Err(corrupt(format!(
                "it does not start with the {:?} magic its name promises",
                self.compression
            )));
        }
        let reader: Box<dyn Read + '_> = match self.compression {
            Compression::None => Box::new(chained),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                    .map_err(|e| corrupt(format!("xz decoder: {e}")))?;
                Box::new(liblzma::read::XzDecoder::new_stream(chained, stream))
            }
            Compression::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::new(chained)
                    .map_err(|e| corrupt(format!("zstd decoder: {e}")))?;
                decoder
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| corrupt(format!("zstd decoder: {e}")))?;
                Box::new(decoder)
            }
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(chained)),
        };
        let mut bytes = Vec::new();
        reader
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| match self.compression {
                Compression::None => read_err(e),
                c => corrupt(format!("{c:?} data does not decompress: {e}")),
            })?;
        if bytes.len() as u64 > max {
            return Err(ModulesError::TooLarge {
                path: path.clone(),
                size: bytes.len() as u64,
                max,
            });
        }
        if !bytes.starts_with(b"\x7fELF") {
            return Err(corrupt("it does not hold an ELF object".to_string()));
        }
        if let Some(release) = &self.release {
            let found = vermagic_release(&bytes).ok_or_else(|| {
                corrupt("it has no readable .modinfo section with a vermagic= entry".to_string())
            })?;
            if &found != release {
                return Err(ModulesError::VersionMismatch {
                    path: path.clone(),
                    found,
                    expected: release.clone(),
                });
            }
        }
        Ok(bytes)
    }
}

/// The release in a module's `.modinfo` `vermagic=` entry (its first word),
/// from the section headers of a 64-bit little-endian ELF object.
pub(super) fn vermagic_release(elf: &[u8]) -> Option<String> {
    let field = |off: usize, len: usize| elf.get(off..off.checked_add(len)?);
    let u16_at = |off| Some(u16::from_le_bytes(field(off, 2)?.try_into().ok()?));
    let u32_at = |off| Some(u32::from_le_bytes(field(off, 4)?.try_into().ok()?));
    let u64_at = |off| usize::try_from(u64::from_le_bytes(field(off, 8)?.try_into().ok()?)).ok();
    if elf.get(4..6)? != [2, 1] {
        return None; // not ELFCLASS64, ELFDATA2LSB
    }
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 0x28 {
        return None;
    }
    let header = |i: usize| -> Option<(usize, &[u8])> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(base)? as usize;
        let offset = u64_at(base.checked_add(0x18)?)?;
        let size = u64_at(base.checked_add(0x20)?)?;
        Some((name, field(offset, size)?))
    };
    let (_, names) = header(shstrndx)?;
    let modinfo = (0..shnum).find_map(|i| {
        let (name, data) = header(i)?;
        let name = names.get(name..)?;
        name.starts_with(b".modinfo\0").then_some(data)
    })?;
    modinfo
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"vermagic="))
        .and_then(|v| v.split(|b| *b == b' ').next())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
