//! Switching to a disk root (`root=erofs /DEV BYTES`): the rootfs as an
//! EROFS image on a virtio-blk disk, mounted read-only, under an overlay
//! whose writable layer is a tmpfs of BYTES bytes, so the program sees a
//! writable `/` whose changes vanish with the VM.
//!
//! After the modules are loaded (the disk's driver, EROFS and overlayfs
//! may be among them), guest-init waits for the device node (at most
//! [`DEVICE_WAIT_MS`]), mounts the image at `/.microrun/lower`, a tmpfs at
//! `/.microrun/upper` (the overlay's upper and work directories inside
//! it), the overlay at `/.microrun/newroot`, moves the kernel file systems
//! it mounted (`/dev`, `/proc`, `/sys`, and `/tmp` where the image has
//! none) into it, and makes it the root as `switch_root` does: `chdir`
//! into it, move it onto `/`, `chroot(".")`. The initramfs (guest-init's
//! own archive, a few KiB) stays underneath, unreachable. Everything after
//! (shares, the user, the program) happens in the new root.
//!
//! The run must not go on without its root (the program would run in the
//! initramfs, which holds no program), so any failure is one line on the
//! console and status 125.

use core::ffi::CStr;

use rustix::fs::{Gid, Mode, Uid};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::channels::GlobalState;
use crate::config::Root;
use crate::console::Line;
use crate::shares::{make_dirs, nul_terminated, PATH_CAPACITY};

/// How long the device node may take to appear after the modules loaded
/// (a built-in driver probes before init runs; a module's during
/// `finit_module`, and devtmpfs makes the node before that returns).
const DEVICE_WAIT_MS: u64 = 5000;
const RETRY_MS: u64 = 10;
const RETRY: rustix::thread::Timespec = rustix::thread::Timespec {
    tv_sec: 0,
    tv_nsec: RETRY_MS as i64 * 1_000_000,
};

const LOWER: &CStr = c"/.microrun/lower";
const UPPER: &CStr = c"/.microrun/upper";
const UPPER_DIR: &CStr = c"/.microrun/upper/upper";
const WORK_DIR: &CStr = c"/.microrun/upper/work";
const NEW_ROOT: &CStr = c"/.microrun/newroot";
const OVERLAY_OPTIONS: &CStr = c"lowerdir=/.microrun/lower,upperdir=/.microrun/upper/upper,\
workdir=/.microrun/upper/work";

/// The kernel file systems guest-init mounted, and where each goes in the
/// new root.
const KERNEL_FS: [(&CStr, &[u8]); 3] = [
    (c"/dev", b"/.microrun/newroot/dev"),
    (c"/proc", b"/.microrun/newroot/proc"),
    (c"/sys", b"/.microrun/newroot/sys"),
];
const TMP: (&CStr, &[u8]) = (c"/tmp", b"/.microrun/newroot/tmp");

/// Makes the disk of `root` the root, when there is one; a failure is
/// reported on the console and returned.
pub fn switch(root: Option<Root>) -> Result<(), Errno> {
    let Some(root) = root else {
        return Ok(());
    };
    switch_to(&root).map_err(|(what, e)| {
        Line::new()
            .text(b"microrun: guest-init: cannot make the disk ")
            .text(root.device)
            .text(b" the root: ")
            .text(what)
            .text(b": ")
            .errno(e)
            .send(GlobalState::console());
        e
    })
}

/// What failed, and why.
type Failure = (&'static [u8], Errno);

fn switch_to(root: &Root) -> Result<(), Failure> {
    let mut device = [0u8; PATH_CAPACITY];
    let device = nul_terminated(&mut device, root.device).map_err(|e| (&b"its path"[..], e))?;
    wait_for_device(device)?;
    for dir in [LOWER, UPPER, NEW_ROOT] {
        make_dirs(dir.to_bytes()).map_err(|e| (&b"creating /.microrun's directories"[..], e))?;
    }
    rustix::mount::mount(device, LOWER, c"erofs", MountFlags::RDONLY, None)
        .map_err(|e| (&b"mounting it read-only as EROFS"[..], e))?;
    let mut options = Line::new();
    options.text(b"size=").num(root.tmpfs_bytes);
    rustix::mount::mount(
        c"tmpfs",
        UPPER,
        c"tmpfs",
        MountFlags::empty(),
        options.as_c_str(),
    )
    .map_err(|e| (&b"mounting the tmpfs that takes the writes"[..], e))?;
    for dir in [UPPER_DIR, WORK_DIR] {
        make_dirs(dir.to_bytes()).map_err(|e| (&b"creating the overlay's directories"[..], e))?;
    }
    // The merged root shows the upper directory's owner and mode.
    let lower = rustix::fs::stat(LOWER).map_err(|e| (&b"reading the image's root"[..], e))?;
    rustix::fs::chown(
        UPPER_DIR,
        Some(Uid::from_raw(lower.st_uid)),
        Some(Gid::from_raw(lower.st_gid)),
    )
    .and_then(|()| rustix::fs::chmod(UPPER_DIR, Mode::from_raw_mode(lower.st_mode & 0o7777)))
    .map_err(|e| {
        (
            &b"giving the overlay the image root's owner and mode"[..],
            e,
        )
    })?;
    rustix::mount::mount(
        c"overlay",
        NEW_ROOT,
        c"overlay",
        MountFlags::empty(),
        OVERLAY_OPTIONS,
    )
    .map_err(|e| (&b"mounting the overlay"[..], e))?;
    for (from, to) in KERNEL_FS {
        move_mount(from, to)?;
    }
    // The image's own /tmp stays (writable in the overlay); only where it
    // has none does guest-init's tmpfs move there.
    let mut path = [0u8; PATH_CAPACITY];
    let tmp = nul_terminated(&mut path, TMP.1).map_err(|e| (&b"/tmp"[..], e))?;
    if matches!(rustix::fs::lstat(tmp), Err(Errno::NOENT)) {
        move_mount(TMP.0, TMP.1)?;
    }
    rustix::process::chdir(NEW_ROOT)
        .and_then(|()| rustix::mount::mount_move(c".", c"/"))
        .and_then(|()| rustix::process::chroot(c"."))
        .and_then(|()| rustix::process::chdir(c"/"))
        .map_err(|e| (&b"switching the root to the overlay"[..], e))
}

/// Waits until `device` exists; it must then be a block device.
fn wait_for_device(device: &CStr) -> Result<(), Failure> {
    let mut waited = 0;
    loop {
        match rustix::fs::stat(device) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_block_device() => {
                return Ok(())
            }
            Ok(_) => return Err((b"it is not a block device", Errno::NOTBLK)),
            Err(Errno::NOENT) if waited < DEVICE_WAIT_MS => {
                let _ = rustix::thread::nanosleep(&RETRY);
                waited += RETRY_MS;
            }
            Err(e) => return Err((b"waiting 5 s for the device node", e)),
        }
    }
}

/// Moves the mount at `from` to `to` in the new root (creating `to`, never
/// through a symlink of the image), when guest-init mounted something
/// there: a directory on the initramfs itself stays.
fn move_mount(from: &'static CStr, to: &'static [u8]) -> Result<(), Failure> {
    let (Ok(dir), Ok(initramfs)) = (rustix::fs::stat(from), rustix::fs::stat(c"/")) else {
        return Ok(());
    };
    if dir.st_dev == initramfs.st_dev {
        return Ok(());
    }
    make_dirs(to).map_err(|e| (to, e))?;
    let mut path = [0u8; PATH_CAPACITY];
    let target = nul_terminated(&mut path, to).map_err(|e| (to, e))?;
    rustix::mount::mount_move(from, target).map_err(|e| (from.to_bytes(), e))
}
