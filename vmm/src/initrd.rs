//! The initrd: its parts concatenated (each 4-byte aligned) as high in guest
//! memory as the kernel allows, read from files straight into guest memory.
//! (Never mapped, unlike a cached kernel: see `memory::load_file`.)

use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::{GuestMemory, MemoryError};

/// One part of the initrd.
#[derive(Debug, Clone)]
pub enum InitrdPart {
    /// A file, read straight into guest memory.
    File(PathBuf),
    /// Bytes held by the caller.
    Bytes(Vec<u8>),
}

/// Errors placing or loading the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// An initrd file cannot be opened or read.
    #[error("cannot read initrd {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An initrd part names a FIFO, a directory, a device...
    #[error("initrd {path} is {kind}: an initrd must be a regular file (a cpio archive)")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// An initrd file ended before the size it had when the initrd was placed.
    #[error(
        "initrd {path} ended after {read} of its {len} bytes: it changed while it was being \
         read; run again once it is stable"
    )]
    Shrank {
        /// The file.
        path: PathBuf,
        /// Bytes read before the end.
        read: u64,
        /// Its size when placed.
        len: u64,
    },
    /// The initrd cannot fit whatever the memory size: below the kernel's
    /// `initrd_addr_max` or the 32-bit MMIO gap there is not room enough
    /// after the kernel.
    #[error(
        "the initrd ({size} bytes) can never fit: it must lie between the kernel's end at \
         {kernel_end:#x} and {limit:#x} (the lower of the kernel's initrd_addr_max and the \
         32-bit MMIO gap), whatever --mem is; make it smaller (leave files out, or compress it \
         with gzip, xz or zstd if the kernel unpacks that)"
    )]
    NeverFits {
        /// Total initrd size.
        size: u64,
        /// First address past the kernel.
        kernel_end: u64,
        /// The highest end address any memory size allows.
        limit: u64,
    },
    /// The initrd does not fit between the kernel and the end of usable memory.
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory ({mem_size} bytes): the kernel \
         ends at {kernel_end:#x} and the initrd must end below {limit:#x}; raise --mem"
    )]
    TooLarge {
        /// Total initrd size.
        size: u64,
        /// Configured memory size.
        mem_size: u64,
        /// First address past the kernel.
        kernel_end: u64,
        /// The highest end address allowed.
        limit: u64,
    },
    /// Guest memory failed otherwise.
    #[error(transparent)]
    Memory(MemoryError),
    /// Copying into guest memory failed.
    #[error("cannot copy initrd {what} into guest memory: {source}")]
    GuestMemory {
        /// Which part.
        what: String,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

fn part_len(part: &InitrdPart) -> Result<u64, InitrdError> {
    match part {
        InitrdPart::Bytes(b) => Ok(b.len() as u64),
        InitrdPart::File(path) => {
            let meta = std::fs::metadata(path).map_err(|source| InitrdError::Read {
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(InitrdError::NotRegular {
                    path: path.clone(),
                    kind: crate::regular_file::describe(meta.file_type()),
                });
            }
            Ok(meta.len())
        }
    }
}

/// Reads the `len` bytes of the file `path` into guest memory at `addr`.
fn load_file(
    mem: &GuestMemory,
    path: &Path,
    addr: GuestAddress,
    len: u64,
) -> Result<(), InitrdError> {
    let mut file = crate::regular_file::open(path).map_err(|source| {
        match crate::regular_file::not_regular_kind(&source) {
            Some(kind) => InitrdError::NotRegular {
                path: path.to_path_buf(),
                kind,
            },
            None => InitrdError::Read {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    let path = path.to_path_buf();
    match crate::memory::load_file(mem, &mut file, 0, addr.0, len, false) {
        Ok(_) => Ok(()),
        Err(MemoryError::Shrank { read, len }) => Err(InitrdError::Shrank { path, read, len }),
        Err(MemoryError::Copy(source)) => Err(InitrdError::GuestMemory {
            what: path.display().to_string(),
            source,
        }),
        Err(MemoryError::Read(source)) => Err(InitrdError::Read { path, source }),
        Err(other) => Err(InitrdError::Memory(other)),
    }
}

/// Where the parts start relative to the initrd's start, and its total size.
pub fn part_offsets(lens: &[u64]) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(lens.len());
    let mut end = 0u64;
    for len in lens {
        let start = end.next_multiple_of(4);
        offsets.push(start);
        end = start + len;
    }
    (offsets, end)
}

/// The page-aligned address for an initrd of `size` bytes: as high as both
/// `addr_max` (inclusive, from the kernel header) and `low_mem_end` allow,
/// but not below `kernel_end`.
pub fn place(size: u64, kernel_end: u64, addr_max: u64, low_mem_end: u64) -> Option<u64> {
    let limit = addr_max.saturating_add(1).min(low_mem_end);
    let start = limit.checked_sub(size)? & !(layout::PAGE_SIZE - 1);
    (start >= kernel_end.next_multiple_of(layout::PAGE_SIZE)).then_some(start)
}

/// Loads `parts`; returns the initrd's (address, size), or `None` when empty.
pub fn load_initrd(
    mem: &GuestMemory,
    parts: &[InitrdPart],
    kernel_end: u64,
    addr_max: u64,
    mem_size: u64,
) -> Result<Option<(u64, u64)>, InitrdError> {
    if parts.is_empty() {
        return Ok(None);
    }
    let lens = parts.iter().map(part_len).collect::<Result<Vec<_>, _>>()?;
    let (offsets, size) = part_offsets(&lens);
    let low_mem_end = crate::memory::low_memory_end(mem_size);
    let Some(start) = place(size, kernel_end, addr_max, low_mem_end) else {
        // Advice to raise --mem only where more memory would help.
        let best_end = crate::memory::low_memory_end(u64::MAX);
        if place(size, kernel_end, addr_max, best_end).is_none() {
            return Err(InitrdError::NeverFits {
                size,
                kernel_end,
                limit: addr_max.saturating_add(1).min(best_end),
            });
        }
        return Err(InitrdError::TooLarge {
            size,
            mem_size,
            kernel_end,
            limit: addr_max.saturating_add(1).min(low_mem_end),
        });
    };
    crate::memory::advise_huge_pages(mem, start, size);
    for ((part, offset), len) in parts.iter().zip(offsets).zip(lens) {
        let addr = GuestAddress(start + offset);
        match part {
            InitrdPart::Bytes(bytes) => {
                mem.write_slice(bytes, addr)
                    .map_err(|source| InitrdError::GuestMemory {
                        what: format!("part of {len} bytes"),
                        source,
                    })?
            }
            InitrdPart::File(path) => load_file(mem, path, addr, len)?,
        }
    }
    Ok(Some((start, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_4_byte_aligned() {
        assert_eq!(part_offsets(&[3, 4, 1]), (vec![0, 4, 8], 9));
        assert_eq!(part_offsets(&[]), (vec![], 0));
    }

    #[test]
    fn placement_is_high_page_aligned_and_above_the_kernel() {
        assert_eq!(
            place(0x1800, 0x20_0000, u64::MAX, 0x100_0000),
            Some(0xffe000)
        );
        assert_eq!(
            place(0x1000, 0x20_0000, 0x7f_ffff, 0x100_0000),
            Some(0x7f_f000)
        );
        assert_eq!(place(0xf0_0000, 0x20_0000, u64::MAX, 0x100_0000), None);
        assert_eq!(place(u64::MAX, 0, u64::MAX, 0x100_0000), None);
    }

    fn file_part(dir: &tempfile::TempDir, name: &str, len: u64) -> InitrdPart {
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        InitrdPart::File(path)
    }

    #[test]
    fn more_memory_is_advised_only_where_it_would_help() {
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let small = [file_part(&dir, "small", 100 << 20)];
        let err = load_initrd(&mem, &small, 0x20_0000, u64::MAX, 64 << 20).unwrap_err();
        assert!(matches!(err, InitrdError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("raise --mem"), "{err}");
        // Larger than the memory below the 32-bit gap: no --mem helps.
        let huge = [file_part(&dir, "huge", 3 << 30)];
        let err = load_initrd(&mem, &huge, 0x20_0000, u64::MAX, 64 << 20).unwrap_err();
        assert!(matches!(err, InitrdError::NeverFits { .. }), "{err}");
        let text = err.to_string();
        assert!(
            !text.contains("raise --mem") && text.contains("smaller"),
            "{text}"
        );
        // Above what the kernel's initrd_addr_max allows, likewise.
        let gig = [file_part(&dir, "gig", 1 << 30)];
        let err = load_initrd(&mem, &gig, 0x20_0000, 0x37ff_ffff, 8 << 30).unwrap_err();
        assert!(matches!(err, InitrdError::NeverFits { .. }), "{err}");
        // Or after a kernel that leaves too little room below the gap.
        let err = load_initrd(&mem, &small, 0xbc00_0000, u64::MAX, 8 << 30).unwrap_err();
        assert!(matches!(err, InitrdError::NeverFits { .. }), "{err}");
    }

    #[test]
    fn a_fifo_part_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = crate::regular_file::testing::make_fifo(dir.path());
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let err = load_initrd(
            &mem,
            &[InitrdPart::File(fifo)],
            0x20_0000,
            u64::MAX,
            64 << 20,
        )
        .unwrap_err();
        assert!(
            matches!(err, InitrdError::NotRegular { kind: "a FIFO", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("fifo"), "{err}");
    }

    /// MemAvailable from /proc/meminfo, in bytes.
    fn available_memory() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib << 10)
    }

    #[test]
    fn a_part_larger_than_one_read_is_loaded_whole() {
        // One read(2) moves at most 0x7fff_f000 bytes; this part needs two.
        // Reading it fills 2 GiB of guest pages with the file's zeros.
        const LEN: u64 = 0x8000_0000 + 0x3000;
        if available_memory().is_none_or(|m| m < LEN + (2 << 30)) {
            eprintln!("skipped: less than 4 GiB of host memory available");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let part = file_part(&dir, "big", LEN);
        let InitrdPart::File(path) = &part else {
            unreachable!()
        };
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            for (offset, mark) in [(0, b"head"), (0x7fff_f000, b"mid!"), (LEN - 4, b"tail")] {
                file.seek(SeekFrom::Start(offset)).unwrap();
                file.write_all(mark).unwrap();
            }
        }
        let mem_size = 3 << 30;
        let mem = crate::memory::create_guest_memory(mem_size).unwrap();
        let (start, size) = load_initrd(&mem, &[part], 0x20_0000, u64::MAX, mem_size)
            .unwrap()
            .unwrap();
        assert_eq!(size, LEN);
        let mut mark = [0u8; 4];
        for (offset, expected) in [(0, b"head"), (0x7fff_f000, b"mid!"), (LEN - 4, b"tail")] {
            mem.read_slice(&mut mark, GuestAddress(start + offset))
                .unwrap();
            assert_eq!(&mark, expected, "at offset {offset:#x}");
        }
    }
}
