//! Link guest-init as a freestanding static executable.
//!
//! The flags go to the binary only (`rustc-link-arg-bins`), never to build
//! scripts or to other packages, so a plain `cargo build` of the workspace
//! still links every host tool normally.

fn main() {
    for arg in [
        // Our own `_start` (src/rt.rs) replaces the C runtime's.
        "-nostartfiles",
        // No libc, no libgcc: every symbol comes from Rust code.
        "-nostdlib",
        // No PT_INTERP and no DT_NEEDED: the kernel runs it directly.
        "-static",
        // A fixed-address executable: nothing would apply PIE relocations.
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        // Symbols and debug info are no use inside the guest and double the size.
        "-Wl,--strip-all",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
