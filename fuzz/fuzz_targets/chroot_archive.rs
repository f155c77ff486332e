//! The chroot engine's reader of ROOTFS archives (newc, possibly several
//! concatenated; `initrd_tools::extract`) on arbitrary bytes: no panic, and
//! every member path it would extract stays inside the new root.

#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(paths) = initrd_tools::extract::member_paths(data) else {
        return;
    };
    for path in paths {
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "member path {path:?} is not plainly relative"
        );
    }
});
