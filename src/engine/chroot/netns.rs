//! The run's network namespace: every chroot run gets its own (made with
//! the user namespace, so the program never shares the host's network),
//! with `lo` up; with `--net`, pasta joins it and makes `eth0` there
//! (`crate::net`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Lets the namespace's root bind ports below 1024 (a guest server on
/// port 80 published with `-p 8080:80`), as docker does in its
/// containers: the program runs in the nested user namespace that locks
/// the mounts, which has no `CAP_NET_BIND_SERVICE` over this network
/// namespace. Only this namespace's setting changes.
pub(super) fn allow_low_ports() -> Result<(), String> {
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", b"0")
        .map_err(|e| format!("allowing ports below 1024 in the new network namespace: {e}"))
}

/// Sets `lo` up in this process's network namespace (a new one starts
/// with it down), as guest-init does in a VM: the helper does it here,
/// since guest-init runs in the nested user namespace that locks the
/// mounts, which has no say over this network namespace.
pub(super) fn bring_up_loopback() -> Result<(), String> {
    let fail = |what: &str| {
        format!(
            "setting lo up in the new network namespace: {what}: {}",
            io::Error::last_os_error()
        )
    };
    // SAFETY: socket() takes integers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data, valid when zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the
    // `ifreq` the pointer points at, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(fail("SIOCGIFFLAGS"));
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS only reads the `ifreq`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(fail("SIOCSIFFLAGS"));
    }
    Ok(())
}
