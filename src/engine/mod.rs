//! The engines that run a [`crate::spec::RunSpec`]: `kvm` (microrun's own
//! VMM), `chroot` (namespaces, no VM) and `qemu`.

pub mod chroot;
pub mod kvm;
pub mod qemu;

use std::io;
use std::os::fd::RawFd;

/// `read(2)` on a descriptor the caller owns, retried on `EINTR`.
pub(crate) fn read_retrying(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the caller
        // keeps `fd` open for the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}
