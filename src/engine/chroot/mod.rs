//! The `chroot` engine: the rootfs and command run without a VM, in new
//! user, mount, PID and IPC namespaces with the rootfs as `/`, rootless, like the
//! cookbook's `unshare -r chroot`.
//!
//! The process tree of one run:
//!
//! ```text
//! microrun (supervisor: reads the status pipe, enforces --timeout)
//!  └─ helper: unshare(user, mount, PID, IPC), uid/gid map, waits for PID 1
//!      └─ PID 1 of the new PID namespace: builds the root, pivot_root,
//!         locks the mounts (a nested user and mount namespace), execs
//!         guest-init (/.microrun/init), which runs the command
//! ```
//!
//! The new root is assembled in a tmpfs mounted over `/tmp` inside the
//! private mount namespace, so nothing is written into the user's rootfs
//! directory or anywhere else on the host, and everything disappears with
//! the namespace: a rootfs directory becomes the lower layer of an overlayfs
//! whose upper layer is in that tmpfs (copied into it when overlayfs is
//! refused); a cpio archive is extracted into it. guest-init's archive (the
//! plan's, the one a VM gets) is extracted into it the same way, so the root
//! holds `/.microrun/init` and `/.microrun/run` as in a VM. guest-init runs exactly as
//! in a VM, told by its `MICRORUN_INIT_*` environment to use inherited file
//! descriptors instead of serial ports: the program's stdout is microrun's
//! own fd 1 (byte for byte, no copy), its stderr microrun's fd 2, and the
//! status channel a pipe read here with the same parser and guest-event
//! interpreter as the VM engines use.
//!
//! The modules: `supervisor` (the status and report pipes, `--timeout`),
//! `userns` (user namespaces: the sysctls that disable them, the id maps),
//! `child` (the two forked processes), `root` (building the new root).
//!
//! This is isolation for convenience, not a security boundary: when
//! microrun runs as root, root in the namespace is root on the host's
//! files that are visible there (`/sys`, the few device nodes).

mod child;
mod idmap;
mod netns;
mod root;
mod supervisor;
mod userns;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use initrd_tools::extract::{Archive, ArchiveError};

use crate::binds::Bind;
use crate::boot::PreparedRootfs;
use crate::engine::confine::{Confinement, Writer};
use crate::plan::{ChrootPlan, NetPlan, Plan};
use crate::spec::RunOutcome;
use supervisor::Supervisor;

/// Why the chroot engine could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// The user namespace cannot be created.
    #[error("cannot create a user namespace ({detail}): user namespaces are disabled on this host; enable them with {advice}, or use --engine qemu")]
    UserNamespaces {
        /// What failed, with the system error.
        detail: String,
        /// The sysctls to change.
        advice: String,
    },
    /// The rootfs directory cannot be opened.
    #[error("cannot open rootfs directory {path}: {source}")]
    OpenRootfs {
        /// The ROOTFS path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The cpio archive cannot be read or is malformed.
    #[error(
        "cannot read cpio archive {path}: {source}; pass a directory or a `microrun pack` output"
    )]
    ReadArchive {
        /// The ROOTFS path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The archive is compressed; only the kernel can unpack those.
    #[error("{path} is a {format}-compressed initrd, which the chroot engine cannot unpack: decompress it first (the result must be a newc cpio archive) or pass the rootfs directory")]
    CompressedArchive {
        /// The ROOTFS path.
        path: PathBuf,
        /// The compression format.
        format: &'static str,
    },
    /// Building the namespace's root filesystem failed (the message names
    /// the step and the path).
    #[error("cannot set up the chroot namespace: {0}")]
    Setup(String),
    /// `-u` as an ordinary user, who has no subordinate ids.
    #[error(
        "-u (or an image's User) needs a range of subordinate ids in the chroot engine (the \
         namespace must have other ids than yours), and {file} has none for {user}; add one \
         with `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`, \
         or run as root, or use a VM engine (--engine kvm or qemu)"
    )]
    NoSubordinateIds {
        /// The caller's name.
        user: String,
        /// `/etc/subuid` or `/etc/subgid`.
        file: &'static str,
    },
    /// The guest's id lies past the caller's subordinate range.
    #[error(
        "-u: the {kind} {id} is past your range of {count} subordinate ids (/etc/subuid, \
         /etc/subgid); use an id up to {count}, or add a larger range with usermod"
    )]
    OutsideRange {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The id.
        id: u32,
        /// The range's size.
        count: u32,
    },
    /// `newuidmap` or `newgidmap` failed or is missing.
    #[error(
        "{helper} could not map your subordinate ids for -u: {detail} (install the package \
         `uidmap`, which has newuidmap and newgidmap)"
    )]
    MapHelper {
        /// The program.
        helper: &'static str,
        /// What it said.
        detail: String,
    },
    /// pasta could not connect the network namespace (`--net`).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A system call of the supervising process failed.
    #[error("chroot engine: {call} failed: {source}")]
    Sys {
        /// The system call.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl From<ArchiveError> for ChrootError {
    fn from(error: ArchiveError) -> Self {
        match error {
            ArchiveError::Read { path, source } => ChrootError::ReadArchive { path, source },
            ArchiveError::Compressed { path, format } => {
                ChrootError::CompressedArchive { path, format }
            }
            ArchiveError::Extract { .. } => ChrootError::Setup(error.to_string()),
        }
    }
}

/// Refuses, with the sysctl to change, a host whose user namespaces are
/// visibly disabled (the plan's check, before anything is prepared).
pub fn check_host() -> Result<(), ChrootError> {
    userns::check_sysctls()
}

/// Runs the plan's command in new namespaces built from `root`, and
/// reports how it ended.
///
/// Must be called from the thread that stays alive for the whole run (the
/// namespace is killed when that thread exits, through `PR_SET_PDEATHSIG`).
pub fn run(plan: &Plan, root: &ChrootPlan) -> Result<RunOutcome, ChrootError> {
    let job = prepare(plan, root)?;
    let (status_read, status_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    // With maps to write: the helper says when its namespace is there,
    // and waits until they are.
    let (unshared_read, unshared_write) = pipe()?;
    let (mapped_read, mapped_write) = pipe()?;

    // SAFETY: fork has no memory-safety preconditions. The child only runs
    // `namespace_helper`, which never returns, and uses data prepared
    // before the fork.
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(sys_error("fork"));
    }
    if helper == 0 {
        drop(status_read);
        drop(report_read);
        drop(unshared_read);
        drop(mapped_write);
        let sync = child::MapSync {
            unshared: unshared_write,
            mapped: mapped_read,
        };
        child::namespace_helper(
            &job,
            status_write.as_raw_fd(),
            report_write.as_raw_fd(),
            sync,
        );
    }
    drop(status_write);
    drop(report_write);
    drop(unshared_write);
    drop(mapped_read);
    if let Some(maps) = &job.maps {
        // EOF instead of the byte: the helper failed, and says why on the
        // report pipe.
        let mut byte = [0u8; 1];
        if read_fd(unshared_read.as_raw_fd(), &mut byte)? == 1 {
            if let Err(e) = maps.write(helper) {
                // SAFETY: the helper is our child; killing it ends the run.
                unsafe { libc::kill(helper, libc::SIGKILL) };
                let mut status = 0;
                // SAFETY: as above; `status` is a valid out-pointer.
                unsafe { libc::waitpid(helper, &mut status, 0) };
                return Err(e);
            }
            // SAFETY: a valid one-byte buffer; a helper that died meanwhile
            // is reported on the report pipe.
            unsafe { libc::write(mapped_write.as_raw_fd(), b"m".as_ptr().cast(), 1) };
        }
    }
    // With --net: pasta joins the helper's namespaces once it has made
    // them (and taken its ids), before PID 1 starts; it serves until the
    // run has ended.
    let _pasta = match &job.net {
        Some(net) => Some(connect_network(net, helper, &unshared_read, &mapped_write)?),
        None => None,
    };
    drop(mapped_write);

    let mut supervisor = Supervisor::new(helper);
    // A timeout too long for the clock is no limit (vmm::deadline_after).
    let result = supervisor.supervise(status_read, report_read, plan.deadline());
    supervisor.reap();
    let mut outcome = result?;
    outcome.times.end = Some(Instant::now());
    Ok(outcome)
}

/// Waits until the helper is ready for pasta, starts pasta on its
/// namespaces, and lets the helper go on once pasta is ready; on failure
/// the helper is killed and reaped.
fn connect_network(
    net: &NetPlan,
    helper: libc::pid_t,
    ready_read: &OwnedFd,
    go_write: &OwnedFd,
) -> Result<Option<crate::net::helper::Helper>, ChrootError> {
    let stop_helper = || {
        // SAFETY: the helper is our unreaped child; killing it ends the run.
        unsafe { libc::kill(helper, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: as above; `status` is a valid out-pointer.
        unsafe { libc::waitpid(helper, &mut status, 0) };
    };
    let mut byte = [0u8; 1];
    // EOF instead of the byte: the helper failed, and says why on the
    // report pipe.
    if read_fd(ready_read.as_raw_fd(), &mut byte)? != 1 {
        return Ok(None);
    }
    // SAFETY: geteuid only returns the caller's id.
    let as_root = unsafe { libc::geteuid() } == 0;
    let started = crate::net::helper::PrivateDir::new().and_then(|dir| {
        let ready = crate::net::helper::Helper::ready_path(&dir);
        let args = crate::net::pasta_args(&net.network, helper, &ready, as_root);
        crate::net::helper::Helper::start(&net.program, args, None, dir, None)
    });
    match started {
        Ok(pasta) => {
            // SAFETY: a valid one-byte buffer; a helper that died meanwhile
            // is reported on the report pipe.
            unsafe { libc::write(go_write.as_raw_fd(), b"p".as_ptr().cast(), 1) };
            Ok(Some(pasta))
        }
        Err(e) => {
            stop_helper();
            Err(e.into())
        }
    }
}

/// Everything the children need, made before the fork so that the
/// children do as little as possible besides system calls.
struct Job {
    source: RootSource,
    /// guest-init and its run configuration, indexed from a memfd.
    init: Archive,
    /// The shares (`--bind`, `--bind-ro`).
    binds: Vec<Bind>,
    /// With a read-write share: no set-user-ID or set-group-ID mode bits
    /// for the program (engine/confine.rs), since it could plant such a
    /// file on the host. A run without one keeps them (`dpkg` sets them
    /// in the rootfs).
    confinement: Option<Confinement>,
    forward_stdin: bool,
    /// With `-u`: the id maps, written by the supervisor once the helper
    /// has made the namespace (it then takes uid and gid 0).
    maps: Option<idmap::IdMaps>,
    /// With `-u` as root: each share as an idmapped mount, in the order
    /// of `binds` (empty: plain bind mounts).
    idmapped: Vec<OwnedFd>,
    /// `--net`: pasta connects the network namespace.
    net: Option<NetPlan>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    supervisor_pid: libc::pid_t,
}

/// Where the new root's files come from.
enum RootSource {
    /// The rootfs directory, opened before any mount can hide its path.
    Dir(OwnedFd),
    /// A cpio archive (the user's, or a converted image), indexed.
    Archive(Archive),
}

fn prepare(plan: &Plan, root: &ChrootPlan) -> Result<Job, ChrootError> {
    let source = match &root.rootfs {
        PreparedRootfs::Dir(dir) => RootSource::Dir(open_rootfs_dir(dir)?),
        PreparedRootfs::Archive(path) => RootSource::Archive(Archive::open(path)?),
    };
    if let RootSource::Archive(archive) = &source {
        if let Some(losses) = archive.losses() {
            log::info!("chroot engine: {losses}");
        }
    }
    let memfd =
        crate::engine::memfd_with(c"microrun-init", &root.init_archive).map_err(|source| {
            ChrootError::Sys {
                call: "memfd_create",
                source,
            }
        })?;
    let init = Archive::from_file(memfd, Path::new("guest-init's archive"))?;
    let maps = root.user.map(idmap::IdMaps::for_caller).transpose()?;
    let idmapped = match root.user {
        Some(guest) => {
            let sources: Vec<&Path> = root.binds.iter().map(|b| b.source.as_path()).collect();
            idmap::idmapped_shares(&sources, guest)?
        }
        None => Vec::new(),
    };
    let writable_share = root.binds.iter().any(|bind| !bind.read_only);
    let confinement = writable_share
        .then(|| Confinement::for_shares(Writer::UserNamespace))
        .transpose()
        .map_err(|e| ChrootError::Setup(e.to_string()))?;
    Ok(Job {
        source,
        init,
        binds: root.binds.clone(),
        confinement,
        forward_stdin: plan.forward_stdin,
        maps,
        idmapped,
        net: root.net.clone(),
        // SAFETY: these calls only return the caller's ids.
        uid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getegid() },
        // SAFETY: as above.
        supervisor_pid: unsafe { libc::getpid() },
    })
}

fn open_rootfs_dir(dir: &Path) -> Result<OwnedFd, ChrootError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| ChrootError::OpenRootfs {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(file.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ChrootError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys_error("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> Result<usize, ChrootError> {
    crate::engine::read_retrying(fd, buf).map_err(|source| ChrootError::Sys {
        call: "read",
        source,
    })
}

fn sys_error(call: &'static str) -> ChrootError {
    ChrootError::Sys {
        call,
        source: io::Error::last_os_error(),
    }
}
