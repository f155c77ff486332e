//! The `chroot` engine: the rootfs and command run without a VM, in new
//! user, mount and PID namespaces with the rootfs as `/`, rootless, like the
//! cookbook's `unshare -r chroot`.
//!
//! The process tree of one run:
//!
//! ```text
//! microrun (supervisor: reads the status pipe, enforces --timeout)
//!  └─ helper: unshare(user, mount, PID), uid/gid map, waits for PID 1
//!      └─ PID 1 of the new PID namespace: builds the root, pivot_root,
//!         execs guest-init (/.microrun/init), which runs the command
//! ```
//!
//! The new root is assembled in a tmpfs mounted over `/tmp` inside the
//! private mount namespace, so nothing is written into the user's rootfs
//! directory or anywhere else on the host, and everything disappears with
//! the namespace: a rootfs directory becomes the lower layer of an overlayfs
//! whose upper layer is in that tmpfs (copied into it when overlayfs is
//! refused); a cpio archive is extracted into it. guest-init runs exactly as
//! in a VM, told by its `MICRORUN_INIT_*` environment to use inherited file
//! descriptors instead of serial ports: the program's stdout is microrun's
//! own fd 1 (byte for byte, no copy), its stderr microrun's fd 2, and the
//! status channel a pipe read here with the same [`StatusParser`] as the VM
//! engines use.
//!
//! This is isolation for convenience, not a security boundary: when
//! microrun runs as root, root in the namespace is root on the host's
//! files that are visible there (`/sys`, the few device nodes).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm::status::{StatusLine, StatusParser};

mod archive;
use archive::Archive;

use crate::binds::Bind;
use crate::boot::run_config;
use crate::embedded::GUEST_INIT;
use crate::runconfig::{CONFIG_PATH as RUN_CONFIG_PATH, INIT_PATH};
use crate::spec::{PhaseTimes, Rootfs, RunOutcome, RunSpec};

/// Where the new root is assembled. The tmpfs mounted here exists only in
/// the run's private mount namespace; the host's `/tmp` is untouched.
const STAGING: &str = "/tmp";
/// The run configuration guest-init reads, in the new root.
/// How long guest-init may take to exit after it reported the status
/// before the namespace is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Device nodes bind-mounted from the host into the namespace's `/dev`.
/// Only these: binding the whole host `/dev` would let a root caller's
/// program remove or write the host's disks.
const DEVICE_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
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

/// Why the chroot engine could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// `--no-init` asks for the rootfs's own `/init` reporting on ttyS2,
    /// which only exists in a VM.
    #[error("--no-init needs a VM engine: the chroot engine has no serial port for the rootfs's own /init to report its status on; drop --no-init or use --engine qemu or kvm")]
    NoInit,
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
    /// Converting the rootfs image failed.
    #[error(transparent)]
    Image(#[from] initrd_tools::image::ImageError),
    /// The archive is compressed; only the kernel can unpack those.
    #[error("{path} is a {format}-compressed initrd, which the chroot engine cannot unpack: decompress it first (the result must be a newc cpio archive) or pass the rootfs directory")]
    CompressedArchive {
        /// The ROOTFS path.
        path: PathBuf,
        /// The compression format.
        format: &'static str,
    },
    /// The run configuration cannot be encoded.
    #[error(transparent)]
    RunConfig(#[from] crate::runconfig::RunConfigError),
    /// Building the namespace's root filesystem failed (the message names
    /// the step and the path).
    #[error("cannot set up the chroot namespace: {0}")]
    Setup(String),
    /// A system call of the supervising process failed.
    #[error("chroot engine: {call} failed: {source}")]
    Sys {
        /// The system call.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Runs `spec` in new namespaces and reports how it ended.
///
/// Must be called from the thread that stays alive for the whole run (the
/// namespace is killed when that thread exits, through `PR_SET_PDEATHSIG`).
/// What this engine makes of a ROOTFS archive, without writing anything:
/// where each member of the newc archive `archive` (or several
/// concatenated) would be extracted, relative to the new root and in
/// order. Members that would leave the root are not there. For tests and
/// fuzzing.
pub fn archive_member_paths(archive: &[u8]) -> io::Result<Vec<PathBuf>> {
    archive::member_paths(archive)
}

/// Runs `spec` in new namespaces and reports how it ended.
pub fn run(spec: &RunSpec) -> Result<RunOutcome, ChrootError> {
    if spec.no_init {
        return Err(ChrootError::NoInit);
    }
    check_userns_sysctls()?;
    let job = prepare(spec)?;
    let (status_read, status_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    // A timeout too long for the clock is no limit (vmm::deadline_after).
    let deadline = vmm::deadline_after(spec.started, spec.timeout);

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
        namespace_helper(&job, status_write.as_raw_fd(), report_write.as_raw_fd());
    }
    drop(status_write);
    drop(report_write);

    let mut supervisor = Supervisor::new(helper);
    let result = supervisor.supervise(status_read, report_read, deadline);
    supervisor.reap();
    let mut outcome = result?;
    outcome.times.end = Some(Instant::now());
    Ok(outcome)
}

/// Everything the children need, made before the fork so that the
/// children do as little as possible besides system calls.
struct Job {
    source: RootSource,
    /// The shares (`--bind`, `--bind-ro`).
    binds: Vec<Bind>,
    run_config: Vec<u8>,
    forward_stdin: bool,
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

fn prepare(spec: &RunSpec) -> Result<Job, ChrootError> {
    let source = match &spec.rootfs {
        Rootfs::Dir(dir) => RootSource::Dir(open_rootfs_dir(dir)?),
        Rootfs::Cpio(path) => RootSource::Archive(Archive::open(path)?),
        Rootfs::Image(image) => RootSource::Archive(Archive::open(&image.cached_convert()?)?),
    };
    if let RootSource::Archive(archive) = &source {
        if let Some(losses) = archive.losses() {
            log::info!("chroot engine: {losses}");
        }
    }
    Ok(Job {
        source,
        binds: spec.binds.clone(),
        run_config: run_config(spec).encode()?,
        forward_stdin: spec.forward_stdin,
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

/// Turns the status and report pipes into a [`RunOutcome`].
struct Supervisor {
    helper: libc::pid_t,
    helper_reaped: bool,
    /// The namespace's PID 1, in microrun's PID namespace.
    namespace_init: Option<libc::pid_t>,
    parser: StatusParser,
    exit_status: Option<u8>,
    times: PhaseTimes,
    report: Vec<u8>,
    failure: Option<(FailureKind, String)>,
    init_wait_status: Option<i32>,
}

/// What the children report on the report pipe, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// Creating or mapping the user namespace failed.
    UserNamespace,
    /// Any later step failed.
    Setup,
}

impl Supervisor {
    fn new(helper: libc::pid_t) -> Self {
        Self {
            helper,
            helper_reaped: false,
            namespace_init: None,
            parser: StatusParser::new(),
            exit_status: None,
            times: PhaseTimes::default(),
            report: Vec::new(),
            failure: None,
            init_wait_status: None,
        }
    }

    fn supervise(
        &mut self,
        status: OwnedFd,
        report: OwnedFd,
        deadline: Option<Instant>,
    ) -> Result<RunOutcome, ChrootError> {
        let mut status = Some(status);
        let mut report = Some(report);
        let mut grace_deadline = None;
        // The report pipe closes when the helper has exited, which it does
        // only after the whole PID namespace is gone.
        while let Some(report_fd) = report.as_ref() {
            let wait_until = grace_deadline.or(deadline);
            let mut fds = vec![libc::pollfd {
                fd: report_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(fd) = status.as_ref() {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let timeout_ms = match wait_until {
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ChrootError::Sys {
                    call: "poll",
                    source: error,
                });
            }
            if ready == 0 && wait_until.is_some_and(|t| Instant::now() >= t) {
                self.kill_namespace();
                if self.exit_status.is_some() {
                    break;
                }
                return Ok(self.outcome(124, Some(crate::engine::qemu::TIMEOUT_REASON.to_string())));
            }
            if fds.get(1).is_some_and(|p| p.revents != 0) && !self.read_status(&mut status)? {
                status = None;
            }
            if fds[0].revents != 0 && !self.read_report(report_fd)? {
                report = None;
            }
            if self.exit_status.is_some() && grace_deadline.is_none() {
                grace_deadline = Some(Instant::now() + EXIT_GRACE);
            }
        }
        // Whatever guest-init wrote before the namespace ended.
        if self.exit_status.is_none() {
            while status.is_some() {
                if !self.read_status(&mut status)? {
                    break;
                }
            }
        }
        self.finish()
    }

    /// Reads what the status pipe has; false at end of file.
    fn read_status(&mut self, status: &mut Option<OwnedFd>) -> Result<bool, ChrootError> {
        let Some(fd) = status.as_ref() else {
            return Ok(false);
        };
        let mut buf = [0u8; 512];
        let n = read_fd(fd.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        if self.exit_status.is_some() {
            return Ok(true);
        }
        let now = Instant::now();
        let times = &mut self.times;
        self.exit_status = self.parser.feed(&buf[..n], |line| match line {
            StatusLine::Event(event) => {
                log::debug!("status channel event @{event}");
                if event == "init" && times.init.is_none() {
                    times.init = Some(now);
                }
            }
            StatusLine::Exit(_) => times.status = Some(now),
            StatusLine::Other(text) => log::debug!("status channel: {text}"),
        });
        Ok(true)
    }

    /// Reads what the report pipe has; false at end of file.
    fn read_report(&mut self, fd: &OwnedFd) -> Result<bool, ChrootError> {
        let mut buf = [0u8; 1024];
        let n = read_fd(fd.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.report.extend_from_slice(&buf[..n]);
        while let Some(end) = self.report.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.report.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            self.handle_report(&line);
        }
        Ok(true)
    }

    fn handle_report(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "pid" => self.namespace_init = rest.parse().ok(),
            "ready" => self.times.ready = Some(Instant::now()),
            "exit" => self.init_wait_status = rest.parse().ok(),
            "note" => log::info!("chroot engine: {rest}"),
            "userns" => self.failure = Some((FailureKind::UserNamespace, rest.to_string())),
            "fail" => self.failure = Some((FailureKind::Setup, rest.to_string())),
            _ => log::debug!("chroot engine: unexpected report {line:?}"),
        }
    }

    fn finish(&mut self) -> Result<RunOutcome, ChrootError> {
        if let Some(code) = self.exit_status {
            return Ok(self.outcome(code, None));
        }
        match self.failure.take() {
            Some((FailureKind::UserNamespace, detail)) => Err(ChrootError::UserNamespaces {
                detail,
                advice: userns_advice(&UsernsSysctls::read()),
            }),
            Some((FailureKind::Setup, message)) => Err(ChrootError::Setup(message)),
            None => {
                let how = match self.init_wait_status {
                    Some(status) => describe_wait_status(status),
                    None => "its helper process died".to_string(),
                };
                let reason =
                    format!("the namespace ended without reporting a status: guest-init {how}");
                Ok(self.outcome(125, Some(reason)))
            }
        }
    }

    fn outcome(&self, exit_code: u8, reason: Option<String>) -> RunOutcome {
        RunOutcome {
            exit_code,
            reason,
            times: self.times,
        }
    }

    /// Kills the namespace's PID 1, after which the kernel kills every
    /// other process in the namespace and the helper, having reaped PID 1
    /// once the namespace is empty, exits: reaping the helper then means
    /// nothing is left. Before PID 1's pid is known, kills the helper,
    /// whose death kills PID 1 through `PR_SET_PDEATHSIG`.
    fn kill_namespace(&mut self) {
        if let Some(pid) = self.namespace_init.take() {
            // SAFETY: kill has no memory effects. The pid is our
            // grandchild's; it could only name another process if the
            // helper had reaped it and the kernel had handed the same pid
            // out again in the microseconds before this call.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else if !self.helper_reaped {
            // SAFETY: kill has no memory effects; the helper is our
            // unreaped child, so its pid cannot have been reused.
            unsafe { libc::kill(self.helper, libc::SIGKILL) };
        }
    }

    /// Waits for the helper, which exits once the namespace is gone.
    fn reap(&mut self) {
        if self.helper_reaped {
            return;
        }
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; the pid is our child.
            let r = unsafe { libc::waitpid(self.helper, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.helper_reaped = true;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.helper_reaped {
            self.kill_namespace();
            self.reap();
        }
    }
}

fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}

/// The values of the sysctls that can disable user namespaces, where the
/// kernel has them.
#[derive(Debug, Default, Clone, Copy)]
struct UsernsSysctls {
    max_user_namespaces: Option<i64>,
    unprivileged_userns_clone: Option<i64>,
    apparmor_restrict: Option<i64>,
}

impl UsernsSysctls {
    fn read() -> Self {
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
fn userns_advice(sysctls: &UsernsSysctls) -> String {
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
fn check_userns_sysctls() -> Result<(), ChrootError> {
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
        advice: userns_advice(&sysctls),
    })
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
    super::read_retrying(fd, buf).map_err(|source| ChrootError::Sys {
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

// ---------------------------------------------------------------------------
// The children. They run after fork() in a copy of microrun, never return,
// and report on the report pipe with one line per message; the pipe is
// close-on-exec, so it closes when guest-init starts and when the helper
// exits.

/// Writes one report line (short lines are atomic on a pipe).
fn report(fd: RawFd, word: &str, message: &str) {
    let mut line = format!("{word} {message}").replace('\n', " ");
    line.truncate(2000);
    line.push('\n');
    let mut bytes = line.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends the forked process without running the parent's
    // atexit handlers or flushing its copied stdio buffers.
    unsafe { libc::_exit(code) }
}

/// The helper: enters the new namespaces, forks PID 1 and waits for it.
fn namespace_helper(job: &Job, status_fd: RawFd, report_fd: RawFd) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid only returns the parent's pid.
    if unsafe { libc::getppid() } != job.supervisor_pid {
        exit_child(125);
    }
    if let Err(message) = enter_user_namespace(job) {
        report(report_fd, "userns", &message);
        exit_child(125);
    }
    let (alive_read, alive_write) = match pipe() {
        Ok(pair) => pair,
        Err(e) => {
            report(report_fd, "fail", &e.to_string());
            exit_child(125);
        }
    };
    // SAFETY: as for the first fork; the child runs `namespace_init`, which
    // never returns.
    let init = unsafe { libc::fork() };
    if init == 0 {
        drop(alive_write);
        namespace_init(job, status_fd, report_fd, alive_read);
    }
    if init < 0 {
        let error = io::Error::last_os_error();
        report(
            report_fd,
            "fail",
            &format!("fork in the new PID namespace: {error}"),
        );
        exit_child(125);
    }
    drop(alive_read);
    report(report_fd, "pid", &init.to_string());
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `init` is our child.
        let r = unsafe { libc::waitpid(init, &mut status, 0) };
        if r == init {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            exit_child(125);
        }
    }
    report(report_fd, "exit", &status.to_string());
    drop(alive_write);
    exit_child(0);
}

/// unshare(user, mount, PID), then maps the caller's uid and gid to 0.
fn enter_user_namespace(job: &Job) -> Result<(), String> {
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    // SAFETY: unshare only changes this (single-threaded) process's
    // namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        let error = io::Error::last_os_error();
        return Err(format!(
            "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID): {error}"
        ));
    }
    let write = |file: &str, contents: String| {
        fs::write(file, contents).map_err(|e| format!("writing {file}: {e}"))
    };
    // Required before an unprivileged gid_map write; absent before 3.19.
    if Path::new("/proc/self/setgroups").exists() {
        write("/proc/self/setgroups", "deny".to_string())?;
    }
    write("/proc/self/uid_map", format!("0 {} 1", job.uid))?;
    write("/proc/self/gid_map", format!("0 {} 1", job.gid))?;
    Ok(())
}

/// PID 1 of the new PID namespace: builds the root and execs guest-init.
fn namespace_init(job: &Job, status_fd: RawFd, report_fd: RawFd, alive: OwnedFd) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The helper may have died before the flag was set: then the pipe's
    // write end is closed.
    let mut poll = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd.
    if unsafe { libc::poll(&mut poll, 1, 0) } != 0 {
        exit_child(125);
    }
    drop(alive);
    let result = set_up_stdio(job, status_fd)
        .and_then(|status| build_root(job, report_fd).map(|()| status))
        .and_then(|status| exec_guest_init(status, report_fd));
    if let Err(message) = result {
        report(report_fd, "fail", &message);
    }
    exit_child(125);
}

/// Stdin from /dev/null unless forwarded; the status pipe inheritable on a
/// descriptor above 2. Returns the status descriptor.
fn set_up_stdio(job: &Job, status_fd: RawFd) -> Result<RawFd, String> {
    if !job.forward_stdin {
        let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
        // SAFETY: both descriptors are open; dup2 replaces fd 0.
        if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
            return Err(format!(
                "dup2 /dev/null to stdin: {}",
                io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: F_DUPFD returns a new descriptor (without close-on-exec, so
    // guest-init inherits it) numbered 3 or above.
    let fd = unsafe { libc::fcntl(status_fd, libc::F_DUPFD, 3) };
    if fd < 0 {
        return Err(format!(
            "duplicating the status pipe: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

fn build_root(job: &Job, report_fd: RawFd) -> Result<(), String> {
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
                copy_tree(Path::new(&lower), &root)?;
            }
        }
        RootSource::Archive(archive) => {
            mount_tmpfs(&root, "mode=0755")?;
            // Chrooted, like the kernel's unpacker: a member's path that
            // runs through an earlier member's symlink stays inside.
            in_chroot(&root, || archive.extract(Path::new("/")))?;
        }
    }
    in_chroot(&root, || {
        install_guest_init(Path::new("/"), &job.run_config)
    })?;
    mount_kernel_filesystems(&root, report_fd)?;
    mount_binds(&root, &binds)?;
    enter_root(&root)
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
fn mount_binds(root: &Path, binds: &[(OwnedFd, &Bind)]) -> Result<(), String> {
    for (fd, bind) in binds {
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
        mount(
            Some(&source),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
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
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let error = |path: &Path, e: io::Error| format!("copying {}: {e}", path.display());
    for entry in fs::read_dir(from).map_err(|e| error(from, e))? {
        let entry = entry.map_err(|e| error(from, e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let metadata = fs::symlink_metadata(&source).map_err(|e| error(&source, e))?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            fs::create_dir(&target).map_err(|e| error(&source, e))?;
            copy_tree(&source, &target)?;
            fs::set_permissions(&target, metadata.permissions()).map_err(|e| error(&source, e))?;
        } else if file_type.is_symlink() {
            let link = fs::read_link(&source).map_err(|e| error(&source, e))?;
            std::os::unix::fs::symlink(link, &target).map_err(|e| error(&source, e))?;
        } else if file_type.is_file() {
            fs::copy(&source, &target).map_err(|e| error(&source, e))?;
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

/// `/.microrun/init` and `/.microrun/run`, as the VM engines add them. A
/// `.microrun` of the rootfs's own that is not a directory is replaced.
fn install_guest_init(root: &Path, run_config: &[u8]) -> Result<(), String> {
    let dir = root.join(".microrun");
    match fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            fs::remove_file(&dir).map_err(|e| format!("replacing {}: {e}", dir.display()))?;
            make_dir(&dir, 0o755)?;
        }
        Err(_) => make_dir(&dir, 0o755)?,
    }
    let write = |relative: &str, contents: &[u8], mode: u32| {
        let path = root.join(relative.trim_start_matches('/'));
        let error = |e: io::Error| format!("writing {}: {e}", path.display());
        // A rootfs-provided file of the same name may be read-only.
        let _ = fs::remove_file(&path);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| io::Write::write_all(&mut f, contents))
            .map_err(error)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(error)
    };
    write(INIT_PATH, GUEST_INIT, 0o755)?;
    write(RUN_CONFIG_PATH, run_config, 0o644)
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

fn make_read_only_recursively(target: &str) -> Result<(), String> {
    let path = CString::new(target).map_err(|e| e.to_string())?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a valid
    // mount_attr of the size passed; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(format!("mount_setattr: {}", io::Error::last_os_error()));
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

/// Replaces this process with guest-init, which reads its ports from its
/// environment (and nothing else of microrun's environment leaks in).
fn exec_guest_init(status_fd: RawFd, report_fd: RawFd) -> Result<(), String> {
    let to_c = |s: String| CString::new(s).map_err(|e| e.to_string());
    let program = to_c(INIT_PATH.to_string())?;
    let env = [
        "MICRORUN_INIT_CONSOLE=fd:2".to_string(),
        "MICRORUN_INIT_STDOUT=fd:1".to_string(),
        // Forwarded stdin is microrun's own stdin, not the stdout channel
        // (in a VM both are ttyS1).
        "MICRORUN_INIT_STDIN=fd:0".to_string(),
        format!("MICRORUN_INIT_STATUS=fd:{status_fd}"),
        format!("MICRORUN_INIT_CONFIG={RUN_CONFIG_PATH}"),
        "MICRORUN_INIT_SKIP_MOUNTS=1".to_string(),
        "MICRORUN_INIT_NO_POWEROFF=1".to_string(),
    ];
    let env: Vec<CString> = env.into_iter().map(to_c).collect::<Result<_, _>>()?;
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let argv = [program.as_ptr(), std::ptr::null()];
    report(report_fd, "ready", "");
    // SAFETY: `program` and every element of `argv` and `envp` are
    // NUL-terminated strings that outlive the call; both arrays end with a
    // null pointer.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!(
        "executing guest-init {INIT_PATH}: {}",
        io::Error::last_os_error()
    ))
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
        let advice = userns_advice(&debian);
        assert!(advice.contains("kernel.unprivileged_userns_clone=1"));
        assert!(!advice.contains("max_user_namespaces"));
        let all = userns_advice(&UsernsSysctls::default());
        for (name, _, _) in USERNS_SYSCTLS {
            assert!(all.contains(name), "{all}");
        }
    }

    #[test]
    fn wait_statuses_are_described() {
        assert_eq!(describe_wait_status(3 << 8), "exited with status 3");
        assert_eq!(describe_wait_status(9), "was killed by signal 9");
    }
}
