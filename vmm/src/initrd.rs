//! The initrd: its parts concatenated (each 4-byte aligned) as high in guest
//! memory as the kernel allows, read from files straight into guest memory.

use std::fs::File;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestMemory;

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
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|source| InitrdError::Read {
                    path: path.clone(),
                    source,
                })
        }
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
    let start = place(size, kernel_end, addr_max, low_mem_end).ok_or(InitrdError::TooLarge {
        size,
        mem_size,
        kernel_end,
        limit: addr_max.saturating_add(1).min(low_mem_end),
    })?;
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
            InitrdPart::File(path) => {
                let mut file = File::open(path).map_err(|source| InitrdError::Read {
                    path: path.clone(),
                    source,
                })?;
                mem.read_exact_volatile_from(addr, &mut file, len as usize)
                    .map_err(|source| InitrdError::GuestMemory {
                        what: path.display().to_string(),
                        source,
                    })?;
            }
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
}
