//! Mounting the host directories the run shares with the guest (`mount=`
//! records): 9P2000.L over virtio, one device per share, named by its
//! mount tag.
//!
//! Each share's directory is created when missing, parent by parent, and
//! never through a symlink of the rootfs. The program must not run
//! without its shares (it would write its artifacts into the initramfs,
//! where nobody sees them), so a share that cannot be mounted fails the
//! run with 125.

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::channels::GlobalState;
use crate::config::{Mount, Mounts};
use crate::console::Line;

/// The longest tag or path taken, with its NUL (PATH_MAX).
pub(crate) const PATH_CAPACITY: usize = 4096;
/// The mount options: the largest message microrun's server takes (64 KiB
/// of payload and its header), permissions checked by the guest kernel
/// against the modes and owners the server reports.
const OPTIONS: &core::ffi::CStr = c"trans=virtio,version=9p2000.L,msize=65560,access=client";
/// How long a share's device may take to appear after its driver loaded
/// (a device found through ACPI or the command line is probed at once; a
/// driver loaded as a module binds during `finit_module`).
const DEVICE_WAIT_MS: u64 = 2000;
const RETRY_MS: u64 = 10;
const RETRY: rustix::thread::Timespec = rustix::thread::Timespec {
    tv_sec: 0,
    tv_nsec: RETRY_MS as i64 * 1_000_000,
};

/// Mounts every share in order; the first failure is reported on the
/// console and returned.
pub fn mount_all(mounts: Mounts) -> Result<(), Errno> {
    for mount in mounts.iter() {
        if let Err((what, e)) = mount_one(&mount) {
            Line::new()
                .text(b"microrun: guest-init: cannot mount the share ")
                .text(mount.tag)
                .text(b" at ")
                .text(mount.dest.to_bytes())
                .text(b": ")
                .text(what)
                .text(b": ")
                .errno(e)
                .send(GlobalState::console());
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(mount: &Mount) -> Result<(), (&'static [u8], Errno)> {
    let mut tag = [0u8; PATH_CAPACITY];
    let tag = nul_terminated(&mut tag, mount.tag).map_err(|e| (&b"the tag"[..], e))?;
    make_dirs(mount.dest.to_bytes()).map_err(|e| (&b"creating the directory"[..], e))?;
    let mut flags = MountFlags::NODEV;
    if mount.read_only {
        flags |= MountFlags::RDONLY;
    }
    let mut waited = 0;
    loop {
        match rustix::mount::mount(tag, mount.dest, c"9p", flags, OPTIONS) {
            Ok(()) => return Ok(()),
            // The 9p transport finds no channel with this tag yet.
            Err(Errno::NOENT) if waited < DEVICE_WAIT_MS => {
                let _ = rustix::thread::nanosleep(&RETRY);
                waited += RETRY_MS;
            }
            Err(e) => return Err((b"mount", e)),
        }
    }
}

/// Creates `path` and its missing parents (mode 0755); an existing
/// component must be a directory, not a symlink to one.
pub(crate) fn make_dirs(path: &[u8]) -> Result<(), Errno> {
    let mut buf = [0u8; PATH_CAPACITY];
    if path.len() >= PATH_CAPACITY {
        return Err(Errno::NAMETOOLONG);
    }
    for (end, _) in path
        .iter()
        .enumerate()
        .filter(|&(i, &b)| i > 0 && b == b'/')
    {
        make_dir(&mut buf, &path[..end])?;
    }
    make_dir(&mut buf, path)
}

fn make_dir(buf: &mut [u8; PATH_CAPACITY], path: &[u8]) -> Result<(), Errno> {
    let path = nul_terminated(buf, path)?;
    match rustix::fs::lstat(path) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => Ok(()),
        Ok(_) => Err(Errno::NOTDIR),
        Err(Errno::NOENT) => match rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// `bytes` and a NUL in `buf`, as a C string.
pub(crate) fn nul_terminated<'a>(
    buf: &'a mut [u8; PATH_CAPACITY],
    bytes: &[u8],
) -> Result<&'a core::ffi::CStr, Errno> {
    if bytes.len() >= PATH_CAPACITY {
        return Err(Errno::NAMETOOLONG);
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    core::ffi::CStr::from_bytes_with_nul(&buf[..=bytes.len()]).map_err(|_| Errno::INVAL)
}
