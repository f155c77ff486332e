//! The kernel loader on arbitrary bytes: the header checks
//! (`vmm::kernel::inspect_kernel`: bzImage setup header, ELF and PVH
//! program headers), then, for what passes them, the load into guest memory
//! from a memfd of its own (every other input as a cached kernel, whose ELF
//! segments are mapped from 64 KiB on: inputs are smaller, so what runs is
//! the segment walk, the note walk and the reads at either end) and the
//! boot information written for it, as `vmm::run` does. Nothing may panic,
//! and nothing may be written past the memory.

#![no_main]

use std::fs::File;
use std::io::{Cursor, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::kernel::{self, BootProtocol};
use vmm::memory::{self, GuestMemory};

/// Guest memory, mapped once (MAP_NORESERVE: only touched pages cost).
const MEM_SIZE: u64 = 64 << 20;

fn guest_memory() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| memory::create_guest_memory(MEM_SIZE).expect("map guest memory"))
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-kernel");
    let Ok(image) = kernel::inspect_kernel(path, &mut Cursor::new(data)) else {
        return;
    };
    assert!(image.load_end >= vmm::layout::HIMEM_START, "{image:?}");
    let mem = guest_memory();
    // A fresh memfd per input: a mapping of the last one stays valid
    // (never truncated) until this load replaces it.
    // SAFETY: memfd_create takes a NUL-terminated name; the descriptor it
    // returns (checked) is owned by the File alone.
    let mut file = unsafe {
        let fd = libc::memfd_create(c"fuzz-kernel".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create failed");
        File::from_raw_fd(fd)
    };
    file.write_all(data).expect("write the memfd");
    let cached = data.len() % 2 == 1;
    let Ok(loaded) = kernel::load_kernel_from(mem, path, &mut file, MEM_SIZE, cached) else {
        return;
    };
    assert!(loaded.end <= MEM_SIZE, "kernel ends at {:#x}", loaded.end);
    let _ = kernel::load_cmdline(mem, "console=ttyS0", loaded.image.cmdline_max);
    let result = match loaded.protocol {
        BootProtocol::Linux64 => {
            kernel::configure_zero_page(mem, &loaded, 13, None, MEM_SIZE, None)
        }
        BootProtocol::Pvh => kernel::configure_pvh(mem, None, MEM_SIZE, None),
    };
    result.expect("boot information fits in guest memory");
});
