//! The engines that run a [`crate::plan::Plan`]: `kvm` (microrun's own
//! VMM), `chroot` (namespaces, no VM) and `qemu`. Each takes the plan as it
//! is and only adapts it to its machine.

pub mod chroot;
pub mod confine;
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

/// A memfd (close-on-exec) named `name` holding `bytes`, read from its
/// start: a file that never touches a disk.
pub(crate) fn memfd_with(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let mut file = memfd(name)?;
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

/// An empty memfd (close-on-exec) named `name`.
pub(crate) fn memfd(name: &std::ffi::CStr) -> io::Result<std::fs::File> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd
    // is checked and owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(std::fs::File::from(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}
