//! Guest memory: anonymous, lazily backed mappings laid out around the MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout;

/// The guest's RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size cannot hold even the boot structures and a kernel.
    #[error(
        "guest memory of {size} bytes is too small: at least {min} bytes are needed (raise --mem)"
    )]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Smallest accepted size.
        min: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest memory: {source} (lower --mem or free host memory)")]
    Map {
        /// Requested size.
        size: u64,
        /// What the mapping failed with.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The smallest memory size accepted: room for the boot structures and 1 MiB of kernel.
pub const MIN_MEM_SIZE: u64 = 2 << 20;

/// The RAM ranges (start, length) for `mem_size` bytes: below the MMIO gap,
/// and the remainder above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= layout::MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, layout::MMIO_GAP_START),
            (layout::HIGH_MEMORY_START, mem_size - layout::MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below 4 GiB: the limit for the kernel and initrd.
pub fn low_memory_end(mem_size: u64) -> u64 {
    mem_size.min(layout::MMIO_GAP_START)
}

/// The e820 map handed to the guest: base memory (up to the MP table),
/// the MP table reserved, then everything from 1 MiB on.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::MPTABLE_START, layout::E820_RAM),
        (
            layout::MPTABLE_START,
            layout::BASE_MEMORY_END - layout::MPTABLE_START,
            layout::E820_RESERVED,
        ),
    ];
    for (start, len) in ram_ranges(mem_size) {
        let (start, len) = if start == 0 {
            (layout::HIMEM_START, len - layout::HIMEM_START)
        } else {
            (start, len)
        };
        map.push((start, len, layout::E820_RAM));
    }
    map
}

/// Maps `mem_size` bytes of guest RAM. The mappings are private, anonymous
/// and `MAP_NORESERVE`, so only pages the guest touches cost host memory.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall {
            size: mem_size,
            min: MIN_MEM_SIZE,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size: mem_size,
        source,
    })
}

/// Below this, a copy into guest memory is not worth a huge-page hint.
const HUGE_PAGE: u64 = 2 << 20;

/// Asks the host for transparent huge pages behind `[start, start + len)`
/// of guest memory (`madvise(MADV_HUGEPAGE)`, only the 2 MiB pages wholly
/// inside it), before a large image is copied there: one fault per 2 MiB
/// instead of 512, which is most of the copy's cost on a fresh mapping.
/// Small ranges are left alone, so a guest that touches little memory (the
/// null VM) still costs little. Only a hint: errors (no THP, `never`) are
/// ignored, and nothing changes but how the pages are backed.
pub fn advise_huge_pages(mem: &GuestMemory, start: u64, len: u64) {
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start.saturating_add(len)) & !(HUGE_PAGE - 1);
    if end <= first || end - first < HUGE_PAGE {
        return;
    }
    let Ok(host) = mem.get_host_address(GuestAddress(first)) else {
        return;
    };
    // The range must lie in one region (below the MMIO gap for a kernel or
    // initrd); checked on its last byte.
    let Ok(last) = mem.get_host_address(GuestAddress(end - 1)) else {
        return;
    };
    if last as usize - host as usize != (end - 1 - first) as usize {
        return;
    }
    // SAFETY: `[host, host + end - first)` lies inside one live mapping
    // owned by `mem` (both ends translated above, contiguous); the advice
    // changes how its pages are backed, never their contents.
    unsafe {
        libc::madvise(
            host.cast::<libc::c_void>(),
            (end - first) as usize,
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_gap_moves_past_4g() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 0xc000_0000), (0x1_0000_0000, 1 << 30)]
        );
    }

    #[test]
    fn e820_covers_all_ram_but_the_low_hole() {
        let mem = 5u64 << 30;
        let ram: u64 = e820_map(mem)
            .iter()
            .filter(|e| e.2 == layout::E820_RAM)
            .map(|e| e.1)
            .sum();
        assert_eq!(ram, mem - (layout::HIMEM_START - layout::MPTABLE_START));
    }

    #[test]
    fn too_small_memory_is_an_error() {
        assert!(matches!(
            create_guest_memory(4096),
            Err(MemoryError::TooSmall { .. })
        ));
    }
}
