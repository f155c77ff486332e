//! Runs the unit tests of `src/passwd.rs`, which resolves `user=` records
//! against the rootfs's `/etc/passwd` and `/etc/group` (see
//! `tests/config.rs` for why a std crate includes the file).

#[allow(dead_code)]
#[path = "../src/passwd.rs"]
mod passwd;
