//! Mounting the kernel's filesystems: `/dev`, `/proc`, `/sys`, and `/tmp`
//! when the rootfs has none. The console is not open yet when they are
//! mounted (`/dev` holds it), so failures are kept and reported once it is.

use core::ffi::CStr;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::channels;

/// The mount points that failed, with why; at most one per mount.
pub type Failures = [Option<(&'static CStr, Errno)>; 4];

/// One mount guest-init makes.
struct MountSpec {
    fstype: &'static CStr,
    target: &'static CStr,
    flags: MountFlags,
    data: &'static CStr,
}

/// Mounts the kernel's filesystems, unless `skip`
/// (`MICRORUN_INIT_SKIP_MOUNTS=1`); returns the failures, to be reported
/// with [`warn`] once the console is open.
pub fn mount_all(skip: bool) -> Failures {
    if skip {
        [None; 4]
    } else {
        mount_filesystems()
    }
}

/// Mounts `/dev`, `/proc`, `/sys`, and `/tmp` when the rootfs has none;
/// returns the failures.
fn mount_filesystems() -> Failures {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let mut mounts = [
        Some(MountSpec {
            fstype: c"devtmpfs",
            target: c"/dev",
            flags: MountFlags::NOSUID,
            data: c"mode=0755",
        }),
        Some(MountSpec {
            fstype: c"proc",
            target: c"/proc",
            flags: hardened,
            data: c"",
        }),
        Some(MountSpec {
            fstype: c"sysfs",
            target: c"/sys",
            flags: hardened,
            data: c"",
        }),
        None,
    ];
    if matches!(rustix::fs::lstat(c"/tmp"), Err(Errno::NOENT)) {
        mounts[3] = Some(MountSpec {
            fstype: c"tmpfs",
            target: c"/tmp",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: c"mode=1777",
        });
    }
    let mut failures = [None; 4];
    for (spec, failure) in mounts.iter().zip(failures.iter_mut()) {
        let Some(spec) = spec else { continue };
        let result = match rustix::fs::mkdir(spec.target, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {
                rustix::mount::mount(spec.fstype, spec.target, spec.fstype, spec.flags, spec.data)
            }
            Err(e) => Err(e),
        };
        match result {
            // EBUSY: already mounted there, which is just as good.
            Ok(()) | Err(Errno::BUSY) => {}
            Err(e) => *failure = Some((spec.target, e)),
        }
    }
    failures
}

/// Reports each failed mount on the console, as a warning: the run goes on.
pub fn warn(failures: Failures) {
    for (target, errno) in failures.into_iter().flatten() {
        channels::report(
            b"microrun: warning: cannot mount ",
            target.to_bytes(),
            errno,
        );
    }
}
