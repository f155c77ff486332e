//! The guest-init binary, embedded so that the microrun binary is the only
//! file a user installs.
//!
//! `build.rs` builds the `guest-init` package (release, statically linked,
//! freestanding) and this module includes the result. microrun writes it
//! into every initrd it boots at [`crate::runconfig::INIT_PATH`], unless
//! `--no-init`.

/// The guest-init executable: a static x86-64 ELF with no interpreter and
/// no shared libraries.
pub static GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-init"));
