//! The children. They run after fork() in a copy of microrun, never return,
//! and report on the report pipe with one line per message; the pipe is
//! close-on-exec, so it closes when guest-init starts and when the helper
//! exits.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::netns::{allow_low_ports, bring_up_loopback};
use super::root::build_root;
use super::userns::{enter_user_namespace, lock_mounts, take_root, unshare_namespaces};
use super::{pipe, Job};
use crate::runconfig::{CONFIG_PATH as RUN_CONFIG_PATH, INIT_PATH};

/// Writes one report line (short lines are atomic on a pipe).
pub(super) fn report(fd: RawFd, word: &str, message: &str) {
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

pub(super) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends the forked process without running the parent's
    // atexit handlers or flushing its copied stdio buffers.
    unsafe { libc::_exit(code) }
}

/// The pipes through which the helper and the supervisor agree on when
/// the supervisor writes the id maps (`-u`), and then when it has
/// connected the network namespace (`--net`): one handshake each.
pub(super) struct MapSync {
    /// The helper writes a byte once it has made the namespace (and again
    /// once it is ready for pasta).
    pub(super) unshared: OwnedFd,
    /// The supervisor writes a byte once the maps are written (and again
    /// once pasta is ready).
    pub(super) mapped: OwnedFd,
}

/// The helper: enters the new namespaces, forks PID 1 and waits for it.
pub(super) fn namespace_helper(job: &Job, status_fd: RawFd, report_fd: RawFd, sync: MapSync) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid only returns the parent's pid.
    if unsafe { libc::getppid() } != job.supervisor_pid {
        exit_child(125);
    }
    let entered = match &job.maps {
        None => enter_user_namespace(job),
        Some(_) => unshare_namespaces()
            .and_then(|()| wait_for_maps(&sync))
            .and_then(|()| take_root()),
    };
    if let Err(message) = entered {
        report(report_fd, "userns", &message);
        exit_child(125);
    }
    let connected = bring_up_loopback()
        .and_then(|()| allow_low_ports())
        .and_then(|()| match &job.net {
            Some(_) => wait_for_network(&sync),
            None => Ok(()),
        });
    drop(sync);
    if let Err(message) = connected {
        report(report_fd, "fail", &message);
        exit_child(125);
    }
    // Changing ids (take_root) clears the parent-death signal: armed
    // again, and the parent checked again, so the namespace never outlives
    // microrun (a kill -9, or the terminal's escape ending it at once).
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid only returns the parent's pid.
    if unsafe { libc::getppid() } != job.supervisor_pid {
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

/// Tells the supervisor the namespace is there and waits until it has
/// written the maps.
fn wait_for_maps(sync: &MapSync) -> Result<(), String> {
    handshake(sync, "the id maps were not written")
}

/// Tells the supervisor the namespaces are ready for pasta and waits
/// until pasta has connected them.
fn wait_for_network(sync: &MapSync) -> Result<(), String> {
    handshake(sync, "pasta did not connect the network namespace")
}

/// One byte to the supervisor, then one back; `missing`: what it means
/// when none comes back.
fn handshake(sync: &MapSync, missing: &str) -> Result<(), String> {
    // SAFETY: a valid one-byte buffer.
    unsafe { libc::write(sync.unshared.as_raw_fd(), b"s".as_ptr().cast(), 1) };
    let mut byte = [0u8; 1];
    match crate::engine::read_retrying(sync.mapped.as_raw_fd(), &mut byte) {
        Ok(1) => Ok(()),
        _ => Err(format!("{missing} (see the error above)")),
    }
}

/// PID 1 of the new PID namespace: builds the root and execs guest-init.
fn namespace_init(job: &Job, status_fd: RawFd, report_fd: RawFd, alive: OwnedFd) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // guest-init and the program start with no signal blocked, whatever
    // microrun's thread blocked (with -it, SIGINT, SIGTERM and others wait
    // for its terminal session): a blocked mask survives exec.
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset fills it and
    // sigprocmask only reads it.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Rust's runtime ignores SIGPIPE, and exec keeps an ignored
        // signal ignored: the program gets the default back, as in a VM
        // (`yes | head -1` ends quietly).
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
        .and_then(|status| lock_mounts(job.maps.as_ref().map(|m| m.nested())).map(|()| status))
        .and_then(|status| confine(job).map(|()| status))
        .and_then(|status| exec_guest_init(status, report_fd));
    if let Err(message) = result {
        report(report_fd, "fail", &message);
    }
    exit_child(125);
}

/// The job's confinement, if it has one, for guest-init and the program.
fn confine(job: &Job) -> Result<(), String> {
    match &job.confinement {
        Some(confinement) => confinement
            .apply()
            .map_err(|e| format!("confining the program to the shares' rules: {e}")),
        None => Ok(()),
    }
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
