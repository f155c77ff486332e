//! The engines that run a [`crate::spec::RunSpec`]: `kvm` (microrun's own
//! VMM), `chroot` (namespaces, no VM) and `qemu`.

pub mod chroot;
pub mod kvm;
pub mod qemu;
