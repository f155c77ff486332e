//! `microrun rootfs`'s reading of one ELF object
//! (`initrd_tools::rootfs::read_elf_needs`: goblin's parse, PT_INTERP and
//! the dynamic section) on arbitrary bytes: an error or a result, never a
//! panic, and an interpreter path never holds a NUL.

#![no_main]

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(needs) = initrd_tools::rootfs::read_elf_needs(Path::new("fuzz-elf"), data) else {
        return;
    };
    if let Some(interpreter) = &needs.interpreter {
        let bytes = interpreter.as_os_str().as_bytes();
        assert!(!bytes.is_empty() && !bytes.contains(&0), "{interpreter:?}");
    }
    assert!(needs.needed.iter().all(|name| !name.is_empty()));
});
