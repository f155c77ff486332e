//! What a share's worker thread does to itself before it serves the guest,
//! so that it reaches nothing outside its share even if the server's code
//! is wrong, and holds no privilege the invoking user's own files do not
//! need.
//!
//! 1. **Capabilities**: every capability leaves the thread's effective,
//!    permitted and inheritable sets (`capset` on the thread itself:
//!    capabilities are per thread on Linux, so the vCPUs keep theirs).
//!    When microrun runs as root this makes the server an ordinary owner:
//!    other users' files in the share are served by their mode bits
//!    (no `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`),
//!    nothing is given to another owner (`CAP_CHOWN`), and the kernel
//!    clears setuid and setgid bits on write and chown (`CAP_FSETID`).
//!    Switching the thread's fsuid instead would make what the guest
//!    creates belong to someone other than the invoking user.
//! 2. **Landlock** (Linux 5.13+, rootless): the thread may open, create,
//!    remove, rename and link only beneath the share's root descriptor
//!    (only read beneath it, for `--bind-ro`), make no symlink, device,
//!    FIFO or socket, and on kernels that know them bind or connect no
//!    TCP socket and signal no other process. It is best effort: a kernel
//!    without Landlock is logged at debug level and the seccomp filter
//!    and the server's own checks remain. Landlock does not cover
//!    `chmod`, `chown` or `utimes` (up to its ABI 7); those stay with the
//!    capabilities dropped above and the seccomp filter.
//!
//! Raw system calls rather than the `landlock` crate: one rule on one
//! descriptor needs three calls and two structures, and the table of
//! rights per ABI is a few lines; the crate would bring two more (a
//! procedural macro among them) for the same.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Why a worker could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `capset` failed.
    #[error(
        "cannot drop the capabilities of the 9p thread: {0} \
         (a bug in microrun: dropping capabilities needs none)"
    )]
    Capabilities(io::Error),
    /// A Landlock call failed on a kernel that has Landlock.
    #[error(
        "cannot restrict the 9p thread to its share with Landlock ({step}): {source} \
         (a bug in microrun: report it with `uname -r`)"
    )]
    Landlock {
        /// The call that failed.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// What a worker did to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// The Landlock ABI that restricts the thread, or `None` where the
    /// kernel has no Landlock.
    pub landlock_abi: Option<u32>,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    /// 0: the calling thread.
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the calling thread's capability sets (the ambient set follows
/// the permitted one). Lowering them needs no privilege.
pub fn drop_capabilities() -> Result<(), ConfineError> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data words from
    // these live structures; it changes only this thread's credentials.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(ConfineError::Capabilities(io::Error::last_os_error()));
    }
    Ok(())
}

// <linux/landlock.h>
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_uint = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_REMOVE_DIR: u64 = 1 << 4;
const FS_REMOVE_FILE: u64 = 1 << 5;
const FS_MAKE_DIR: u64 = 1 << 7;
const FS_MAKE_REG: u64 = 1 << 8;
/// The rights of ABI 1: EXECUTE to MAKE_SYM.
const FS_ABI_1: u64 = (1 << 13) - 1;
/// ABI 2: renaming and linking across directories.
const FS_REFER: u64 = 1 << 13;
/// ABI 3.
const FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5.
const FS_IOCTL_DEV: u64 = 1 << 15;
/// ABI 4: TCP bind and connect.
const NET_TCP: u64 = 0b11;
/// ABI 6: abstract UNIX sockets and signals outside the domain.
const SCOPE_ALL: u64 = 0b11;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI of the running kernel, `None` without Landlock.
pub fn landlock_abi() -> Option<u32> {
    // SAFETY: with the VERSION flag the call takes no attribute and only
    // returns a number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(abi).ok().filter(|&abi| abi > 0)
}

/// The file-system rights that `abi` knows (all handled: what the rule
/// does not grant is denied).
fn handled_fs(abi: u32) -> u64 {
    let mut rights = FS_ABI_1;
    if abi >= 2 {
        rights |= FS_REFER;
    }
    if abi >= 3 {
        rights |= FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= FS_IOCTL_DEV;
    }
    rights
}

/// What the server may do beneath its share's root: read files and list
/// directories, and for a writable share also write, truncate, create and
/// remove files and directories, and rename or link them within it. Never
/// execute, make a symlink, a device node, a FIFO or a socket, nor use a
/// device's ioctls (the server does none of these).
fn granted_fs(abi: u32, read_only: bool) -> u64 {
    let read = FS_READ_FILE | FS_READ_DIR;
    let write = FS_WRITE_FILE
        | FS_REMOVE_DIR
        | FS_REMOVE_FILE
        | FS_MAKE_DIR
        | FS_MAKE_REG
        | FS_REFER
        | FS_TRUNCATE;
    let granted = if read_only { read } else { read | write };
    granted & handled_fs(abi) & !FS_EXECUTE
}

/// Restricts the calling thread (and any thread it starts) to `root`, as
/// above; `Ok(None)` where the kernel has no Landlock.
pub fn landlock(root: BorrowedFd<'_>, read_only: bool) -> Result<Option<u32>, ConfineError> {
    let Some(abi) = landlock_abi() else {
        log::debug!(
            "9p: the kernel has no Landlock (Linux 5.13+, `landlock` in `lsm=`); \
             the share's thread is confined by its seccomp filter and the server's checks only"
        );
        return Ok(None);
    };
    let fail = |step| {
        let source = io::Error::last_os_error();
        ConfineError::Landlock { step, source }
    };
    let attr = RulesetAttr {
        handled_access_fs: handled_fs(abi),
        handled_access_net: if abi >= 4 { NET_TCP } else { 0 },
        scoped: if abi >= 6 { SCOPE_ALL } else { 0 },
    };
    // A kernel reads as much of the attribute as its ABI defines (and
    // refuses non-zero fields it does not know).
    let attr_len = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: the attribute is a live `landlock_ruleset_attr` of at least
    // `attr_len` bytes; the call returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            attr_len,
            0 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(fail("landlock_create_ruleset"));
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let rule = PathBeneathAttr {
        allowed_access: granted_fs(abi, read_only),
        parent_fd: root.as_raw_fd(),
    };
    // SAFETY: a live packed `landlock_path_beneath_attr` naming an open
    // descriptor; the call only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &rule,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(fail("landlock_add_rule"));
    }
    // SAFETY: prctl with integer arguments; no_new_privs is per thread
    // and is what Landlock asks of a process without CAP_SYS_ADMIN.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_NO_NEW_PRIVS"));
    }
    // SAFETY: restricts only the calling thread, with the ruleset above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd(),
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(fail("landlock_restrict_self"));
    }
    Ok(Some(abi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_follow_the_abi_and_the_share_mode() {
        assert_eq!(handled_fs(1), 0x1fff);
        assert_eq!(handled_fs(2), 0x3fff);
        assert_eq!(handled_fs(4), 0x7fff);
        assert_eq!(handled_fs(7), 0xffff);
        for abi in 1..=7 {
            let ro = granted_fs(abi, true);
            assert_eq!(ro, FS_READ_FILE | FS_READ_DIR);
            let rw = granted_fs(abi, false);
            assert_eq!(rw & !handled_fs(abi), 0, "only rights the ABI knows");
            assert_eq!(rw & FS_EXECUTE, 0);
            // No symlink, device, FIFO or socket: bits 6, 9 to 12.
            assert_eq!(rw & (1 << 6 | 0b1111 << 9), 0);
            assert_eq!(rw & FS_IOCTL_DEV, 0);
        }
        assert_eq!(granted_fs(1, false) & FS_REFER, 0);
        assert_ne!(granted_fs(2, false) & FS_REFER, 0);
    }
}
