//! The kernel loader on arbitrary bytes: the header checks
//! (`vmm::kernel::inspect_kernel`: bzImage setup header, ELF and PVH
//! program headers), then, for what passes them, linux-loader's load into
//! guest memory and the boot information written for it, as `vmm::run`
//! does. Nothing may panic, and nothing may be written past the memory.

#![no_main]

use std::io::Cursor;
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
    let Ok(loaded) = kernel::load_kernel_from(mem, path, &mut Cursor::new(data), MEM_SIZE) else {
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
