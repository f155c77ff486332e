//! The new root, built by the namespace's PID 1: a tmpfs over `/tmp` in
//! the private mount namespace, the rootfs (an overlay over the directory,
//! or the archive extracted), guest-init's archive extracted on top, the
//! kernel filesystems, the shares, then `pivot_root`.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::child::{exit_child, report};
use super::supervisor::describe_wait_status;
use super::{pipe, Job, RootSource};
use crate::binds::Bind;

/// Where the new root is assembled. The tmpfs mounted here exists only in
/// the run's private mount namespace; the host's `/tmp` is untouched.
const STAGING: &str = "/tmp";
/// Device nodes bind-mounted from the host into the namespace's `/dev`.
/// Only these: binding the whole host `/dev` would let a root caller's
/// program remove or write the host's disks.
const DEVICE_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
pub(super) fn build_root(job: &Job, report_fd: RawFd) -> Result<(), String> {
    // Nothing mounted from here on may propagate to the host.
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // Opened in this mount namespace (a bind's source must be one of its
    // mounts) and before the staging tmpfs hides /tmp, where sources often
    // are.
    let binds = job
        .binds
        .iter()
        .map(|bind| Ok((open_bind_source(bind)?, bind)))
        .collect::<Result<Vec<_>, String>>()?;
    mount(
        Some("microrun"),
        STAGING,
        Some("tmpfs"),
        0,
        Some("mode=0755"),
    )?;
    let root = Path::new(STAGING).join("root");
    make_dir(&root, 0o755)?;
    match &job.source {
        RootSource::Dir(dir) => {
            let lower = format!("/proc/self/fd/{}", dir.as_raw_fd());
            if let Err(overlay_error) = mount_overlay(&lower, &root) {
                report(
                    report_fd,
                    "note",
                    &format!("overlayfs refused ({overlay_error}); copying the rootfs into a tmpfs instead"),
                );
                mount_tmpfs(&root, "mode=0755")?;
                copy_tree(Path::new(&lower), &root, job.maps.is_some())?;
            }
        }
        RootSource::Archive(archive) => {
            mount_tmpfs(&root, "mode=0755")?;
            // Chrooted, like the kernel's unpacker: a member's path that
            // runs through an earlier member's symlink stays inside.
            in_chroot(&root, || {
                // With -u, the namespace has the archive's owners too.
                archive
                    .extract_owned(Path::new("/"), job.maps.is_some())
                    .map_err(|e| e.to_string())
            })?;
        }
    }
    // guest-init and its run configuration, as the kernel unpacks them
    // after the rootfs in a VM.
    in_chroot(&root, || {
        job.init.extract(Path::new("/")).map_err(|e| e.to_string())
    })?;
    mount_kernel_filesystems(&root, report_fd)?;
    mount_binds(&root, &binds, &job.idmapped)?;
    if job.net.is_some() {
        in_chroot(&root, mount_net_files)?;
    }
    enter_root(&root)
}

/// With `--net`: the guest's `/etc/resolv.conf` and `/etc/hosts` (made by
/// the plan, in guest-init's archive) mounted over the rootfs's, so that
/// the rootfs's own files, which may be the user's directory, are never
/// written. Run chrooted: the rootfs's symlinks resolve inside it. A file
/// that is missing, or a symlink (often dangling, such as systemd's
/// resolv.conf), is replaced by an empty file in the writable layer first.
fn mount_net_files() -> Result<(), String> {
    ensure_dir(Path::new("/etc"))?;
    for name in ["resolv.conf", "hosts"] {
        let target = format!("/etc/{name}");
        let regular = fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_file());
        if !regular {
            let _ = fs::remove_file(&target);
            fs::write(&target, b"").map_err(|e| format!("creating {target}: {e}"))?;
        }
        let source = format!("{}/{name}", crate::boot::NET_FILES_DIR);
        mount(Some(&source), &target, None, libc::MS_BIND, None)?;
    }
    Ok(())
}

/// A share's host directory as an `O_PATH` descriptor.
fn open_bind_source(bind: &Bind) -> Result<OwnedFd, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&bind.source)
        .map_err(|e| {
            format!(
                "opening the shared directory {}: {e}",
                bind.source.display()
            )
        })?;
    Ok(file.into())
}

/// Bind-mounts each share at its DST in the new root (created when
/// missing, without following a symlink of the rootfs out of it), a
/// `--bind-ro` one read-only down its whole tree. A share that cannot be
/// made read-only fails the run rather than stay writable.
///
/// `idmapped`: each share as an idmapped mount the supervisor made
/// (`-u` as root), moved into place instead of bound; empty: none.
fn mount_binds(
    root: &Path,
    binds: &[(OwnedFd, &Bind)],
    idmapped: &[OwnedFd],
) -> Result<(), String> {
    for (index, (fd, bind)) in binds.iter().enumerate() {
        let mut target = root.to_path_buf();
        for name in bind.dest.split('/').filter(|n| !n.is_empty()) {
            target.push(name);
            ensure_dir(&target)?;
        }
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| "staging path is not UTF-8".to_string())?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match idmapped.get(index) {
            Some(tree) => move_mount(tree, &target),
            None => mount(
                Some(&source),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
        }
        .map_err(|e| format!("sharing {} at {}: {e}", bind.source.display(), bind.dest))?;
        if bind.read_only {
            make_read_only_recursively(&target).map_err(|e| {
                format!(
                    "making the share of {} at {} read-only: {e}",
                    bind.source.display(),
                    bind.dest
                )
            })?;
        }
    }
    Ok(())
}

/// The rootfs directory as read-only lower layer; writes go to the tmpfs.
/// `userxattr` lets overlayfs record whiteouts in a user namespace (Linux
/// 5.11+); without it, removing a lower file fails.
fn mount_overlay(lower: &str, root: &Path) -> Result<(), String> {
    let upper = Path::new(STAGING).join("upper");
    let work = Path::new(STAGING).join("work");
    make_dir(&upper, 0o755)?;
    make_dir(&work, 0o755)?;
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let root = root.to_str().ok_or("staging path is not UTF-8")?;
    mount(
        Some("microrun"),
        root,
        Some("overlay"),
        0,
        Some(&format!("userxattr,{options}")),
    )
    .or_else(|_| mount(Some("microrun"), root, Some("overlay"), 0, Some(&options)))
}

fn mount_tmpfs(target: &Path, options: &str) -> Result<(), String> {
    let target = target.to_str().ok_or("staging path is not UTF-8")?;
    mount(Some("microrun"), target, Some("tmpfs"), 0, Some(options))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {}: {e}", path.display()))
}

/// The fallback when overlayfs is refused: a copy of the rootfs in the
/// tmpfs. Device nodes, fifos and sockets are skipped (/dev is mounted).
/// With `owners` (`-u`: the namespace has a range of ids), each copy gets
/// its original's owner and group where they are mapped.
fn copy_tree(from: &Path, to: &Path, owners: bool) -> Result<(), String> {
    let own = |target: &Path, metadata: &fs::Metadata| -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if !owners {
            return Ok(());
        }
        match std::os::unix::fs::lchown(target, Some(metadata.uid()), Some(metadata.gid())) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                Err(format!("giving {} its owner: {e}", target.display()))
            }
            _ => Ok(()),
        }
    };
    let error = |path: &Path, e: io::Error| format!("copying {}: {e}", path.display());
    for entry in fs::read_dir(from).map_err(|e| error(from, e))? {
        let entry = entry.map_err(|e| error(from, e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let metadata = fs::symlink_metadata(&source).map_err(|e| error(&source, e))?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            fs::create_dir(&target).map_err(|e| error(&source, e))?;
            copy_tree(&source, &target, owners)?;
            own(&target, &metadata)?;
            fs::set_permissions(&target, metadata.permissions()).map_err(|e| error(&source, e))?;
        } else if file_type.is_symlink() {
            let link = fs::read_link(&source).map_err(|e| error(&source, e))?;
            std::os::unix::fs::symlink(link, &target).map_err(|e| error(&source, e))?;
            own(&target, &metadata)?;
        } else if file_type.is_file() {
            fs::copy(&source, &target).map_err(|e| error(&source, e))?;
            own(&target, &metadata)?;
            fs::set_permissions(&target, metadata.permissions()).map_err(|e| error(&source, e))?;
        }
    }
    Ok(())
}

/// Runs `work` in a child process chrooted to `root`, so that every path it
/// writes, symlinks included, resolves inside `root` and never on the host.
fn in_chroot(root: &Path, work: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let (read_end, write_end) = pipe().map_err(|e| e.to_string())?;
    // SAFETY: this process is single-threaded (a namespace's freshly forked
    // PID 1), so the child may run ordinary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(read_end);
        // SAFETY: `root_c` and "/" are NUL-terminated strings.
        let entered =
            unsafe { libc::chroot(root_c.as_ptr()) == 0 && libc::chdir(c"/".as_ptr()) == 0 };
        let result = if entered {
            work()
        } else {
            Err(format!(
                "chroot {}: {}",
                root.display(),
                io::Error::last_os_error()
            ))
        };
        let code = match result {
            Ok(()) => 0,
            Err(message) => {
                let _ = io::Write::write_all(&mut File::from(write_end), message.as_bytes());
                1
            }
        };
        exit_child(code);
    }
    drop(write_end);
    let mut message = String::new();
    let _ = File::from(read_end).read_to_string(&mut message);
    let mut status = 0;
    // SAFETY: `pid` is the child just forked; `status` is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(format!("waitpid: {}", io::Error::last_os_error()));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if message.is_empty() {
        Err(format!(
            "preparing the root: {}",
            describe_wait_status(status)
        ))
    } else {
        Err(message)
    }
}

/// `/dev`, `/proc`, `/sys` and (when missing) `/tmp`, which guest-init
/// mounts itself in a VM (it is told not to here, since most of them come
/// from the host).
fn mount_kernel_filesystems(root: &Path, report_fd: RawFd) -> Result<(), String> {
    let path = |name: &str| -> Result<String, String> {
        let path = root.join(name);
        ensure_dir(&path)?;
        path.into_os_string()
            .into_string()
            .map_err(|_| "staging path is not UTF-8".to_string())
    };
    let dev = path("dev")?;
    mount(
        Some("microrun"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    for node in DEVICE_NODES {
        let host = format!("/dev/{node}");
        if !Path::new(&host).exists() {
            continue;
        }
        let target = format!("{dev}/{node}");
        File::create(&target).map_err(|e| format!("creating {target}: {e}"))?;
        mount(Some(&host), &target, None, libc::MS_BIND, None)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let link = format!("{dev}/{link}");
        std::os::unix::fs::symlink(target, &link).map_err(|e| format!("creating {link}: {e}"))?;
    }
    let pts = path("dev/pts")?;
    if let Err(e) = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ) {
        report(report_fd, "note", &format!("no /dev/pts: {e}"));
    }
    mount_tmpfs(Path::new(&path("dev/shm")?), "mode=1777")?;

    // A fresh proc shows the namespace's own processes. The kernel refuses
    // it when the host's /proc is partly hidden (as in some containers);
    // the host's /proc then still lets programs work.
    let proc = path("proc")?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), &proc, Some("proc"), flags, None) {
        report(
            report_fd,
            "note",
            &format!("binding the host's /proc instead: {e}"),
        );
        mount(
            Some("/proc"),
            &proc,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
    }
    let sys = path("sys")?;
    mount(Some("/sys"), &sys, None, libc::MS_BIND | libc::MS_REC, None)?;
    if let Err(e) = make_read_only_recursively(&sys) {
        report(report_fd, "note", &format!("/sys stays writable: {e}"));
    }
    // As guest-init does in a VM: a tmpfs /tmp only where the rootfs has
    // none, so that files the rootfs keeps under /tmp stay visible.
    let tmp = root.join("tmp");
    if fs::symlink_metadata(&tmp).is_err() {
        make_dir(&tmp, 0o1777)?;
        mount_tmpfs(&tmp, "mode=1777")?;
    }
    Ok(())
}

fn ensure_dir(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{} in the rootfs is not a directory; it must be one (or absent) for the chroot engine",
            path.display()
        )),
        Err(_) => make_dir(path, 0o755),
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The `MOUNT_ATTR_RDONLY` flag of mount_setattr(2).
const MOUNT_ATTR_RDONLY: u64 = 1;

/// mount_setattr(2): sets the attributes `attr_set` on the mount at `path`
/// beneath `dirfd` (`AT_FDCWD`, or a mount descriptor with an empty path
/// and `AT_EMPTY_PATH` in `flags`); `userns_fd` is the user namespace of
/// `MOUNT_ATTR_IDMAP` (0 otherwise).
pub(super) fn mount_setattr(
    dirfd: RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    attr_set: u64,
    userns_fd: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a valid
    // mount_attr of the size passed; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn make_read_only_recursively(target: &str) -> Result<(), String> {
    let path = CString::new(target).map_err(|e| e.to_string())?;
    mount_setattr(
        libc::AT_FDCWD,
        &path,
        libc::AT_RECURSIVE,
        MOUNT_ATTR_RDONLY,
        0,
    )
    .map_err(|e| format!("mount_setattr: {e}"))
}

/// Attaches the detached mount `tree` at `target` (move_mount(2)).
fn move_mount(tree: &OwnedFd, target: &str) -> Result<(), String> {
    let target_c = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: an open mount descriptor with an empty NUL-terminated path,
    // and a NUL-terminated target; the kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(format!(
            "moving the idmapped share onto {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Makes `root` the namespace's `/` and detaches the host's tree.
fn enter_root(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    let dot = c".";
    // SAFETY: both arguments are NUL-terminated strings. pivot_root(".",
    // ".") stacks the old root on top of the new one (see pivot_root(2)).
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(format!(
            "pivot_root {}: {}",
            root.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `dot` is NUL-terminated; this detaches the old root stacked
    // on ".".
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!(
            "detaching the host's root: {}",
            io::Error::last_os_error()
        ));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// mount(2) with Rust strings; the error names the target.
fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| format!("mount {target}: {e}"));
    let source = source.map(c).transpose()?;
    let target_c = c(target)?;
    let fstype_c = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives
    // the call; the kernel only reads them.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype_c),
            flags,
            ptr(&data).cast(),
        )
    };
    if r != 0 {
        let what = fstype.unwrap_or("bind");
        return Err(format!(
            "mounting {what} on {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}
