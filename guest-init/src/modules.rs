//! Loading the kernel modules that the run configuration lists (`module=`
//! records), in order, before anything needs their devices.
//!
//! A module that fails to load is reported on the console and skipped: the
//! command may not need it, and if it does, its own error says more than a
//! refusal to start would.

use core::ffi::CStr;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::channels::GlobalState;
use crate::config::{Module, Modules};
use crate::console::Line;

/// The longest module path, with its NUL terminator (PATH_MAX).
const PATH_CAPACITY: usize = 4096;

/// Loads every module, in order; failures are reported on the console.
pub fn load_all(modules: Modules) {
    for module in modules.iter() {
        if let Err(e) = load(&module) {
            let mut line = Line::new();
            line.text(b"microrun: guest-init: cannot load module ")
                .text(module.path)
                .text(b": ");
            match e {
                // Line::errno's wording for this one is about executables.
                Errno::NOEXEC => line.text(b"not a kernel module, or one built for another kernel"),
                Errno::NOSYS => line.text(
                    b"function not implemented (no module support in this kernel or sandbox)",
                ),
                Errno::PERM => line.text(
                    b"operation not permitted (no CAP_SYS_MODULE, or module loading is disabled)",
                ),
                _ => line.errno(e),
            };
            line.send(GlobalState::console());
        }
    }
}

/// Loads one module with `finit_module`; one that is already loaded counts
/// as loaded.
fn load(module: &Module) -> Result<(), Errno> {
    let mut path = [0u8; PATH_CAPACITY];
    let len = module.path.len();
    if len >= PATH_CAPACITY {
        return Err(Errno::NAMETOOLONG);
    }
    path[..len].copy_from_slice(module.path);
    // The path comes from a NUL-terminated record, so it holds no NUL.
    let path = CStr::from_bytes_with_nul(&path[..=len]).map_err(|_| Errno::INVAL)?;
    let file = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    loop {
        match rustix::system::finit_module(&file, module.params, 0) {
            Ok(()) | Err(Errno::EXIST) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}
