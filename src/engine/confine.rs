//! What microrun takes from a process it starts that writes a guest's
//! files into the host's shares (QEMU's 9p server, the chroot engine's
//! program), so that a guest can plant nothing dangerous there: a seccomp
//! filter that refuses (`EPERM`) every set-user-ID or set-group-ID mode
//! bit on a file (`chmod` and its kin, and creating a file with them) and,
//! for a process among the host's ([`Writer::Host`]), every change of
//! owner and, when microrun runs as root, the capabilities that would let
//! it ignore the permissions of other users' files. microrun's own VMM serves its shares under the same
//! rules, in its 9p server (`vmm/src/devices/virtio/p9/`).
//!
//! Everything is compiled before the process forks; [`Confinement::apply`]
//! only makes system calls, so it may run between `fork` and `exec`.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// `fchmodat2` (Linux 6.6); the `libc` crate may not name it yet.
const SYS_FCHMODAT2: i64 = 452;
/// The mode bits no guest may set on a host file.
const SET_ID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];
/// `open` flags that create a file (`O_TMPFILE` without `O_DIRECTORY`).
const CREATE_FLAGS: [u64; 2] = [libc::O_CREAT as u64, 0o20_000_000];
/// Capabilities that override file permissions or ownership rules: a root
/// QEMU without them honours other users' permissions in a share, as the
/// guest's own kernel would expect, and cannot give files away.
const FILE_OVERRIDE_CAPS: [libc::c_int; 5] = [
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    2, // CAP_DAC_READ_SEARCH
    3, // CAP_FOWNER
    4, // CAP_FSETID
];

/// Why a confinement cannot be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The seccomp filter could not be built (a bug).
    #[error("cannot build the share filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The seccomp filter could not be compiled (a bug).
    #[error("cannot compile the share filter: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// What to take from a process that writes into shares.
pub struct Confinement {
    filter: BpfProgram,
    drop_caps: bool,
}

/// Where the process runs, which decides what else it loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Among the host's processes, with the invoking user's powers (QEMU):
    /// changes of owner are refused too, and as root it loses the
    /// capabilities that override other users' permissions.
    Host,
    /// In a user namespace that maps only the invoking user (the chroot
    /// engine's program): the kernel already keeps it to that user's files
    /// and owner, and its capabilities apply to nothing else.
    UserNamespace,
}

impl Confinement {
    /// The confinement for a process that writes shares as `writer`.
    pub fn for_shares(writer: Writer) -> Result<Confinement, ConfineError> {
        let filter = SeccompFilter::new(
            rules(writer)?,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )?;
        Ok(Confinement {
            filter: filter.try_into()?,
            // SAFETY: geteuid only returns the caller's id.
            drop_caps: writer == Writer::Host && unsafe { libc::geteuid() } == 0,
        })
    }

    /// Applies it to the calling thread and what it execs (for a child
    /// between `fork` and `exec`: system calls only, no allocation).
    pub fn apply(&self) -> std::io::Result<()> {
        if self.drop_caps {
            for cap in FILE_OVERRIDE_CAPS {
                // SAFETY: PR_CAPBSET_DROP only changes this process's
                // bounding set; exec then leaves the capability out of
                // root's permitted and effective sets.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        seccompiler::apply_filter(&self.filter).map_err(std::io::Error::other)
    }
}

/// `syscall` is refused when argument `index` has any of `bits` set (and,
/// with `flags`, argument `flags.0` has any of `flags.1` set).
fn any_bit(
    index: u8,
    bits: &[u64],
    flags: Option<(u8, &[u64])>,
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let has = |index: u8, bit: u64| {
        SeccompCondition::new(
            index,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bit),
            bit,
        )
    };
    let mut rules = Vec::new();
    for &bit in bits {
        match flags {
            None => rules.push(SeccompRule::new(vec![has(index, bit)?])?),
            Some((flag_index, flag_bits)) => {
                for &flag in flag_bits {
                    rules.push(SeccompRule::new(vec![
                        has(index, bit)?,
                        has(flag_index, flag)?,
                    ])?);
                }
            }
        }
    }
    Ok(rules)
}

/// The refused calls: system call number to the rules of which one must
/// match (an empty list refuses every call).
fn rules(writer: Writer) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map = BTreeMap::new();
    map.insert(libc::SYS_chmod, any_bit(1, &SET_ID_BITS, None)?);
    map.insert(libc::SYS_fchmod, any_bit(1, &SET_ID_BITS, None)?);
    map.insert(libc::SYS_fchmodat, any_bit(2, &SET_ID_BITS, None)?);
    map.insert(SYS_FCHMODAT2, any_bit(2, &SET_ID_BITS, None)?);
    map.insert(libc::SYS_creat, any_bit(1, &SET_ID_BITS, None)?);
    map.insert(
        libc::SYS_open,
        any_bit(2, &SET_ID_BITS, Some((1, &CREATE_FLAGS)))?,
    );
    map.insert(
        libc::SYS_openat,
        any_bit(3, &SET_ID_BITS, Some((2, &CREATE_FLAGS)))?,
    );
    map.insert(libc::SYS_mknod, any_bit(1, &SET_ID_BITS, None)?);
    map.insert(libc::SYS_mknodat, any_bit(2, &SET_ID_BITS, None)?);
    // openat2's mode is in a structure a filter cannot read, and io_uring
    // opens and changes files past seccomp: both refused outright (callers
    // fall back to openat and to plain system calls).
    map.insert(libc::SYS_openat2, Vec::new());
    map.insert(libc::SYS_io_uring_setup, Vec::new());
    if writer == Writer::Host {
        for call in [
            libc::SYS_chown,
            libc::SYS_fchown,
            libc::SYS_lchown,
            libc::SYS_fchownat,
        ] {
            map.insert(call, Vec::new());
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Runs `work` in a forked child under the confinement; its exit code.
    fn in_child(confinement: &Confinement, work: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only applies the filter, makes system calls and
        // exits without returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match confinement.apply() {
                Ok(()) => work(),
                Err(_) => 100,
            };
            // SAFETY: ends the child without running the harness's
            // destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn set_id_bits_and_owner_changes_are_refused_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let plain = CString::new(dir.path().join("plain").to_str().unwrap()).unwrap();
        let setuid = CString::new(dir.path().join("setuid").to_str().unwrap()).unwrap();
        let confinement = Confinement::for_shares(Writer::Host).unwrap();
        let code = in_child(&confinement, || {
            // SAFETY: the paths are NUL-terminated strings that outlive
            // each call.
            unsafe {
                let fd = libc::open(plain.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o755);
                if fd < 0 {
                    return 1;
                }
                if libc::fchmod(fd, 0o700) != 0 || libc::chmod(plain.as_ptr(), 0o750) != 0 {
                    return 2;
                }
                if libc::chmod(plain.as_ptr(), 0o4755) == 0 || errno() != libc::EPERM {
                    return 3;
                }
                if libc::fchmod(fd, 0o2755) == 0 || libc::fchown(fd, 0, 0) == 0 {
                    return 4;
                }
                let created = libc::openat(
                    libc::AT_FDCWD,
                    setuid.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o4755,
                );
                if created >= 0 || errno() != libc::EPERM {
                    return 5;
                }
                0
            }
        });
        assert_eq!(code, 0);
        let meta = std::fs::metadata(dir.path().join("plain")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        // SAFETY: geteuid only returns the caller's id.
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
        assert!(!dir.path().join("setuid").exists());
        // In a namespace that maps one user, owners are left to the kernel.
        let allowed = Confinement::for_shares(Writer::UserNamespace).unwrap();
        let path = CString::new(dir.path().join("plain").to_str().unwrap()).unwrap();
        let code = in_child(&allowed, || {
            // SAFETY: as above.
            let uid = unsafe { libc::geteuid() };
            // SAFETY: as above.
            let gid = unsafe { libc::getegid() };
            // SAFETY: as above.
            if unsafe { libc::chown(path.as_ptr(), uid, gid) } == 0 {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0);
    }
}
