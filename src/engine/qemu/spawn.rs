//! Starting QEMU: the pipes and the socket it writes the guest's streams
//! to, the initrd in a memfd (nothing written to disk), and a child that
//! inherits exactly those descriptors and dies with microrun.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::QemuEngineError;
use crate::boot::BootInitrd;
use crate::engine::confine::Confinement;

/// Starts `cmd`, which inherits the descriptors `inherit` (besides its
/// standard streams), runs under `confinement` when there is one, and is
/// killed when microrun exits.
pub(super) fn spawn(
    mut cmd: Command,
    inherit: Vec<RawFd>,
    confinement: Option<Confinement>,
) -> Result<Child, QemuEngineError> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls prctl, getppid, fcntl and seccomp
    // (through `Confinement::apply`, which allocates nothing), which are
    // async-signal-safe, fcntl on descriptors that stay open in the parent
    // until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            // QEMU must not outlive microrun (killed, or timed out by a CI
            // runner); the check closes the race with a parent that died
            // before the prctl.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                return Err(io::Error::other("microrun exited while starting QEMU"));
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            match &confinement {
                Some(confinement) => confinement.apply(),
                None => Ok(()),
            }
        });
    }
    // The Command (with its duplicates of the child's standard streams) is
    // dropped here: only QEMU holds those write ends now, so its death
    // closes them.
    cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => QemuEngineError::NotInstalled,
        _ => QemuEngineError::Spawn(e),
    })
}

/// A pipe whose write end QEMU inherits.
pub(super) struct Pipe {
    reader: io::PipeReader,
    writer: Option<io::PipeWriter>,
}

impl Pipe {
    pub fn new() -> Result<Self, QemuEngineError> {
        let (reader, writer) = io::pipe().map_err(QemuEngineError::Setup)?;
        Ok(Self {
            reader,
            writer: Some(writer),
        })
    }

    pub fn write_fd(&self) -> RawFd {
        self.writer.as_ref().map_or(-1, |w| w.as_raw_fd())
    }

    pub fn take_writer(&self) -> Result<OwnedFd, QemuEngineError> {
        match &self.writer {
            Some(w) => w.as_fd().try_clone_to_owned(),
            None => Err(io::Error::other("the pipe's write end is gone")),
        }
        .map_err(QemuEngineError::Setup)
    }

    pub fn into_reader(self) -> OwnedFd {
        drop(self.writer);
        OwnedFd::from(self.reader)
    }
}

/// The initrd as QEMU needs it, one file: a memfd holding the rootfs
/// archive and the guest-init archive, so nothing is written to disk.
pub(super) fn initrd_memfd(initrd: &BootInitrd) -> Result<OwnedFd, QemuEngineError> {
    let mut file = crate::engine::memfd(c"microrun-initrd").map_err(QemuEngineError::Setup)?;
    // With the disk root the initrd is guest-init's archive alone.
    if let Some(path) = &initrd.rootfs {
        let initrd_err = |source| QemuEngineError::Initrd {
            path: path.clone(),
            source,
        };
        let mut rootfs = vmm::regular_file::open(path).map_err(initrd_err)?;
        let copied = io::copy(&mut rootfs, &mut file).map_err(initrd_err)?;
        let pad = copied.next_multiple_of(4) - copied;
        file.write_all(&[0u8; 3][..pad as usize])
            .map_err(QemuEngineError::Setup)?;
    }
    if let Some(archive) = &initrd.init_archive {
        file.write_all(archive).map_err(QemuEngineError::Setup)?;
    }
    Ok(OwnedFd::from(file))
}
