//! microrun: run a program in a KVM microVM as easily as `chroot` runs it
//! in a directory. The binary (`src/main.rs`) is a thin clap front end over
//! this library.

pub mod engine;
pub mod spec;
