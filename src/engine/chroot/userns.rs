//! User namespaces: the sysctls that can disable them (with the command
//! that enables them again), and entering one with the caller's ids mapped
//! to root.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::idmap::NestedMaps;
use super::{ChrootError, Job};

/// Sysctls that disable user namespaces, with the value that enables them
/// and the systems that have them.
const USERNS_SYSCTLS: [(&str, &str, &str); 3] = [
    ("user.max_user_namespaces", "15000", "all Linux kernels"),
    ("kernel.unprivileged_userns_clone", "1", "Debian"),
    (
        "kernel.apparmor_restrict_unprivileged_userns",
        "0",
        "Ubuntu",
    ),
];

/// The values of the sysctls that can disable user namespaces, where the
/// kernel has them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UsernsSysctls {
    max_user_namespaces: Option<i64>,
    unprivileged_userns_clone: Option<i64>,
    apparmor_restrict: Option<i64>,
}

impl UsernsSysctls {
    pub(super) fn read() -> Self {
        let read = |name: &str| -> Option<i64> {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        Self {
            max_user_namespaces: read(USERNS_SYSCTLS[0].0),
            unprivileged_userns_clone: read(USERNS_SYSCTLS[1].0),
            apparmor_restrict: read(USERNS_SYSCTLS[2].0),
        }
    }

    /// The sysctls whose value blocks user namespaces.
    fn blocking(&self) -> Vec<usize> {
        let values = [
            self.max_user_namespaces == Some(0),
            self.unprivileged_userns_clone == Some(0),
            self.apparmor_restrict == Some(1),
        ];
        (0..3).filter(|&i| values[i]).collect()
    }
}

/// Which sysctl commands would enable user namespaces: the ones whose
/// current value blocks them, or all three when none visibly does.
pub(super) fn advice(sysctls: &UsernsSysctls) -> String {
    let mut which = sysctls.blocking();
    if which.is_empty() {
        which = vec![0, 1, 2];
    }
    let commands: Vec<String> = which
        .into_iter()
        .map(|i| {
            let (name, value, systems) = USERNS_SYSCTLS[i];
            format!("`sysctl -w {name}={value}` ({systems})")
        })
        .collect();
    commands.join(", ")
}

/// Fails early, with the sysctl to change, when user namespaces are
/// visibly disabled.
pub(super) fn check_sysctls() -> Result<(), ChrootError> {
    let sysctls = UsernsSysctls::read();
    // SAFETY: geteuid only returns the caller's id.
    let root = unsafe { libc::geteuid() } == 0;
    let detail = if sysctls.max_user_namespaces == Some(0) {
        "user.max_user_namespaces is 0"
    } else if !root && sysctls.unprivileged_userns_clone == Some(0) {
        "kernel.unprivileged_userns_clone is 0"
    } else {
        return Ok(());
    };
    Err(ChrootError::UserNamespaces {
        detail: detail.to_string(),
        advice: advice(&sysctls),
    })
}

/// Locks every mount of the new root in place: a second user namespace,
/// owned by the first, with a mount namespace of its own. The kernel copies
/// the mounts into it locked (`MNT_LOCKED` and the `MNT_LOCK_*` flags), as
/// it does for any mount namespace made by a less privileged user
/// namespace: the program, root in there with every capability, can mount
/// things of its own but cannot make a read-only share writable again
/// (`remount,rw` of it or of a fresh bind of it is refused), unmount it,
/// or reveal what is under a mount. bubblewrap locks its binds the same
/// way. Root in the new namespace is root of the first (the caller).
///
/// `nested`: with `-u`, the maps that give the second namespace all the
/// ids of the first as themselves, which only a process that stays in the
/// first may write: a child forked before the unshare does, then exits.
pub(super) fn lock_mounts(nested: Option<NestedMaps>) -> Result<(), String> {
    let Some(maps) = nested else {
        unshare_locking()?;
        return map_root_to(0, 0);
    };
    let (go_read, go_write) = super::pipe().map_err(|e| e.to_string())?;
    // SAFETY: getpid only returns this process's id.
    let parent = unsafe { libc::getpid() };
    // SAFETY: single-threaded; the child only reads a pipe, writes two
    // files and exits.
    let mapper = unsafe { libc::fork() };
    if mapper < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if mapper == 0 {
        drop(go_write);
        let mut byte = [0u8; 1];
        if !matches!(
            crate::engine::read_retrying(go_read.as_raw_fd(), &mut byte),
            Ok(1)
        ) {
            super::child::exit_child(255);
        }
        for (file, text) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
            let written = fs::write(format!("/proc/{parent}/{file}"), text);
            if let Err(e) = written {
                // The errno, for the message below.
                super::child::exit_child(e.raw_os_error().unwrap_or(255).min(255));
            }
        }
        super::child::exit_child(0);
    }
    drop(go_read);
    let unshared = unshare_locking();
    if unshared.is_ok() {
        // SAFETY: a valid one-byte buffer.
        unsafe { libc::write(go_write.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    }
    drop(go_write);
    let mut status = 0;
    // SAFETY: `mapper` is our child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(mapper, &mut status, 0) };
    unshared?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let why = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(errno @ 1..=254) => io::Error::from_raw_os_error(errno).to_string(),
            _ => format!("wait status {status}"),
        };
        return Err(format!(
            "mapping the ids into the namespace that locks the mounts: {why}"
        ));
    }
    Ok(())
}

fn unshare_locking() -> Result<(), String> {
    // SAFETY: unshare only changes this (single-threaded) process's
    // namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        let error = io::Error::last_os_error();
        return Err(format!(
            "unshare(CLONE_NEWUSER|CLONE_NEWNS) to lock the mounts: {error}"
        ));
    }
    Ok(())
}

/// Maps root of this process's new user namespace to `uid` and `gid` of
/// the one above (writing the maps of one's own namespace is allowed for
/// one's own ids: no privilege needed).
fn map_root_to(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    let write = |file: &str, contents: String| {
        fs::write(file, contents).map_err(|e| format!("writing {file}: {e}"))
    };
    // Required before an unprivileged gid_map write; absent before 3.19.
    if Path::new("/proc/self/setgroups").exists() {
        write("/proc/self/setgroups", "deny".to_string())?;
    }
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))
}

/// unshare(user, mount, PID, IPC, network), then maps the caller's uid and gid to 0.
pub(super) fn enter_user_namespace(job: &Job) -> Result<(), String> {
    unshare_namespaces()?;
    map_root_to(job.uid, job.gid)
}

/// unshare(user, mount, PID, IPC, network), without maps (the supervisor
/// writes them, for `-u`). The network namespace: the program reaches
/// nothing of the host's network, only its own loopback, and with `--net`
/// what pasta connects. The IPC namespace: with a range mapped the program's
/// ids are host ids (as root, the very ids `-u` names), which must not
/// reach the host's SysV shared memory, semaphores and message queues of
/// the user who has them.
pub(super) fn unshare_namespaces() -> Result<(), String> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    // SAFETY: unshare only changes this (single-threaded) process's
    // namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        let error = io::Error::last_os_error();
        return Err(format!(
            "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWIPC|CLONE_NEWNET): {error}"
        ));
    }
    Ok(())
}

/// Once the supervisor has written a range's maps: uid and gid 0 of the
/// namespace, no supplementary groups (the caller may not be the
/// namespace's root, and a process that is not root loses its
/// capabilities when it execs).
pub(super) fn take_root() -> Result<(), String> {
    // SAFETY: these calls change only this process's credentials; the
    // ids are mapped (the supervisor wrote the maps).
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(0, 0, 0) != 0
            || libc::setresuid(0, 0, 0) != 0
    };
    if failed {
        return Err(format!(
            "becoming root of the namespace: {}",
            io::Error::last_os_error()
        ));
    }
    // Changing ids made the process undumpable, which gives its /proc
    // files to the host's root: PID 1's child could not write PID 1's
    // maps when it locks the mounts (`lock_mounts`).
    // SAFETY: prctl(PR_SET_DUMPABLE) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_blocking_sysctl_or_all() {
        let debian = UsernsSysctls {
            max_user_namespaces: Some(100),
            unprivileged_userns_clone: Some(0),
            apparmor_restrict: None,
        };
        let debian = advice(&debian);
        assert!(debian.contains("kernel.unprivileged_userns_clone=1"));
        assert!(!debian.contains("max_user_namespaces"));
        let all = advice(&UsernsSysctls::default());
        for (name, _, _) in USERNS_SYSCTLS {
            assert!(all.contains(name), "{all}");
        }
    }
}
