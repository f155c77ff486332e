//! vmm: placeholder, being written.
pub mod status;
