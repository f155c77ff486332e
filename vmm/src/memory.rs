//! Guest memory: anonymous, lazily backed mappings laid out around the MMIO
//! gap, and files read into it (or mapped over it, copy-on-write).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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
    /// A file to load cannot be read.
    #[error("{0}")]
    Read(std::io::Error),
    /// A file to load ended early.
    #[error("it ended after {read} of its {len} bytes")]
    Shrank {
        /// Bytes read before the end.
        read: u64,
        /// Bytes to load.
        len: u64,
    },
    /// The bytes do not fit where they go.
    #[error("{0}")]
    Copy(vm_memory::GuestMemoryError),
    /// A mapping over guest memory failed, and so did putting anonymous
    /// memory back: the range is gone, so the VM cannot run.
    #[error("cannot restore guest memory after a failed file mapping: {0}")]
    Restore(std::io::Error),
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
    // The range must lie in one region (below the MMIO gap for a kernel or
    // initrd).
    let Some(host) = host_range(mem, first, end - first) else {
        return;
    };
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

/// The host address of the guest range `[start, start + len)` (`len` > 0)
/// where it lies inside one of `mem`'s mappings: both ends translated, and
/// contiguous between them.
fn host_range(mem: &GuestMemory, start: u64, len: u64) -> Option<*mut u8> {
    let host = mem.get_host_address(GuestAddress(start)).ok()?;
    let last = mem
        .get_host_address(GuestAddress(start.checked_add(len - 1)?))
        .ok()?;
    let contiguous = (last as usize).checked_sub(host as usize) == usize::try_from(len - 1).ok();
    contiguous.then_some(host)
}

/// Files are mapped over guest memory only from this many bytes on: below
/// it, one more mapping saves little.
const MAP_FILE_MIN: u64 = 64 << 10;

/// Loads `len` bytes of `file`, from `offset`, into guest memory at
/// `addr`, and returns how many of them were mapped rather than copied.
///
/// With `map`, the pages wholly inside the range, where the file's offsets
/// and the guest's addresses agree within a page, are the file's own pages
/// mapped private and copy-on-write (`mmap(MAP_PRIVATE | MAP_FIXED)`): the
/// host neither zeroes nor copies them, reading them shares the page cache
/// (across VMs too), and the guest's first write to one copies that page
/// alone. Only for a file that is never changed in place while the VM runs
/// (a cache entry, written under another name and renamed into place): a
/// private mapping still shows later writes to pages not yet copied, and a
/// truncated file would leave pages that fault. The rest (a head and tail
/// that do not fill a page, or everything when mapping does not apply) is
/// read. Guest memory must not be registered with KVM yet, and must be
/// fresh: what is not loaded stays as it was.
///
/// Worth it for what the guest mostly reads and keeps (a kernel's text);
/// not for what it frees and reuses (an initrd), where every reuse of a
/// mapped page is a copy-on-write fault (docs/vmm.md, step 6).
pub fn load_file(
    mem: &GuestMemory,
    file: &mut File,
    offset: u64,
    addr: u64,
    len: u64,
    map: bool,
) -> Result<u64, MemoryError> {
    let page = layout::PAGE_SIZE;
    let head = addr.next_multiple_of(page) - addr;
    let body = len.saturating_sub(head) & !(page - 1);
    let mapped = map
        && (addr ^ offset) & (page - 1) == 0
        && body >= MAP_FILE_MIN
        && file
            .metadata()
            .is_ok_and(|m| m.len() >= offset + head + body)
        && map_file_pages(mem, file, offset + head, addr + head, body)?;
    if !mapped {
        read_file(mem, file, offset, addr, len)?;
        return Ok(0);
    }
    read_file(mem, file, offset, addr, head)?;
    let tail = head + body;
    read_file(mem, file, offset + tail, addr + tail, len - tail)?;
    Ok(body)
}

/// Reads `len` bytes of `file` from `offset` into guest memory at `addr`.
/// One `read(2)` moves at most 0x7fff_f000 bytes, so this loops.
fn read_file(
    mem: &GuestMemory,
    file: &mut File,
    offset: u64,
    addr: u64,
    len: u64,
) -> Result<(), MemoryError> {
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(MemoryError::Read)?;
    let mut done = 0u64;
    while done < len {
        let chunk = usize::try_from(len - done).unwrap_or(usize::MAX);
        let read = mem
            .read_volatile_from(GuestAddress(addr + done), file, chunk)
            .map_err(MemoryError::Copy)?;
        if read == 0 {
            return Err(MemoryError::Shrank { read: done, len });
        }
        done += read as u64;
    }
    Ok(())
}

/// Maps `len` bytes of `file` from `offset` (both page-aligned) over guest
/// memory at `addr`, private; false where the range is not inside one of
/// `mem`'s mappings or the host refuses (nothing changed then).
fn map_file_pages(
    mem: &GuestMemory,
    file: &File,
    offset: u64,
    addr: u64,
    len: u64,
) -> Result<bool, MemoryError> {
    let (Some(host), Ok(size), Ok(file_offset)) = (
        host_range(mem, addr, len),
        usize::try_from(len),
        libc::off_t::try_from(offset),
    ) else {
        return Ok(false);
    };
    let host = host.cast::<libc::c_void>();
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: `[host, host + size)` lies inside one live mapping owned by
    // `mem` (both ends translated above, contiguous), which stays mapped
    // until `mem` is dropped; MAP_FIXED replaces those pages with the
    // file's, same protections, so every address `mem` hands out stays
    // valid, and only what the pages hold changes (nothing else holds a
    // reference into guest memory yet: it is not registered with KVM).
    // The file is at least `offset + len` bytes long (checked by the
    // caller) and, by `load_file`'s contract, is not truncated meanwhile.
    let mapped = unsafe {
        libc::mmap(
            host,
            size,
            prot,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if mapped != libc::MAP_FAILED {
        return Ok(true);
    }
    // A failed MAP_FIXED may already have unmapped the range: put back
    // what `create_guest_memory` made there.
    // SAFETY: the same range of `mem`'s own mapping as above, given fresh
    // anonymous pages as when it was created.
    let restored = unsafe {
        libc::mmap(
            host,
            size,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if restored == libc::MAP_FAILED {
        return Err(MemoryError::Restore(std::io::Error::last_os_error()));
    }
    Ok(false)
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

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn a_file_loads_the_same_mapped_or_copied_and_writes_stay_private() {
        let bytes = pattern(300 << 10);
        let (tmp, mut file) = file_of(&bytes);
        // Offsets that agree within a page (mapped), and ones that do not
        // (copied), with a head and tail that do not fill a page.
        for (offset, addr, len, maps) in [
            (0x1000u64, 0x20_0000u64, 200u64 << 10, true),
            (0x1234, 0x20_0234, (200 << 10) + 99, true),
            (0x1234, 0x20_0000, 200 << 10, false),
            (0x1000, 0x20_0000, 16 << 10, false),
        ] {
            let mem = create_guest_memory(8 << 20).unwrap();
            mem.write_slice(&[0xee; 16], GuestAddress(addr + len))
                .unwrap();
            let mapped = load_file(&mem, &mut file, offset, addr, len, true).unwrap();
            assert_eq!(mapped > 0, maps, "{offset:#x} at {addr:#x}");
            let mut back = vec![0u8; len as usize];
            mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
            let want = &bytes[offset as usize..(offset + len) as usize];
            assert!(back == want, "{offset:#x} at {addr:#x}");
            // Nothing past the range changed: the tail was read, not mapped.
            let mut after = [0u8; 16];
            mem.read_slice(&mut after, GuestAddress(addr + len))
                .unwrap();
            assert_eq!(after, [0xee; 16]);
            // The guest's writes are its own: the file is unchanged.
            mem.write_slice(&[0x55; 8192], GuestAddress(addr + 0x3000))
                .unwrap();
            assert_eq!(std::fs::read(tmp.path()).unwrap(), bytes);
        }
    }

    #[test]
    fn a_file_that_ended_early_is_an_error_not_a_mapping_past_its_end() {
        let (_tmp, mut file) = file_of(&pattern(100 << 10));
        let mem = create_guest_memory(8 << 20).unwrap();
        let err = load_file(&mem, &mut file, 0, 0x20_0000, 200 << 10, true).unwrap_err();
        assert!(
            matches!(err, MemoryError::Shrank { read, .. } if read == 100 << 10),
            "{err}"
        );
    }
}
