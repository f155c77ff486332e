//! Running the command: its working directory, the fork, the child's stdio
//! and exec (searching PATH like `execvp`), and, when the exec fails, the
//! child's report over a pipe and the diagnosis on the console (127 for a
//! command not found, 126 for one that cannot be executed).

use core::ffi::CStr;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::WaitOptions;

use crate::channels::{self, GlobalState};
use crate::config::RunConfig;
use crate::console::{self, Line};
use crate::end::{self, finish, CANNOT_EXECUTE, MICRORUN_FAILED, NOT_FOUND};
use crate::relay::Writers;
use crate::user::{self, Switch};
use crate::{streams, sys, tty};

/// What the child sends back when it cannot start the command: the stage,
/// the errno, and the path that failed (NUL-terminated).
const STAGE_SETUP: u8 = 1;
const STAGE_EXEC: u8 = 2;
const STAGE_USER: u8 = 3;
/// Stage byte, four errno bytes, and a path of up to PATH_MAX bytes.
const REPORT_CAPACITY: usize = 1 + 4 + PATH_CAPACITY;
const PATH_CAPACITY: usize = 4096;

/// Changes to the command's working directory; the run ends with 126 when
/// that fails.
// Called once, from `main`: inlined there, as before the split, which
// keeps the binary some 100 bytes smaller.
#[inline(always)]
pub fn enter_cwd(cwd: &CStr) {
    // The command's relative paths resolve from here, and so do the checks
    // that explain an exec failure.
    if let Err(e) = rustix::process::chdir(cwd) {
        channels::report(
            b"microrun: cannot change to the working directory ",
            cwd.to_bytes(),
            e,
        );
        finish(CANNOT_EXECUTE);
    }
}

/// Starts the command (as `user`, when given), waits for it, cleans up
/// after it; returns its status.
pub fn run(config: &RunConfig, user: Option<&Switch>) -> u8 {
    let pid1 = rustix::process::getpid().is_init();
    if !pid1 {
        // Outside a PID namespace (a debugging run), orphans come back to us
        // all the same, so they can be reaped.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    }
    let (report_rx, report_tx) = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return fail_start(b"cannot create a pipe: ", e),
    };
    if let Some((rows, cols)) = config.tty {
        // Said on the console by `tty::open`.
        if tty::open(rows, cols).is_err() {
            return CANNOT_EXECUTE;
        }
    }
    // With a terminal, its relay copies the output (and counts it).
    let relay = match streams::output_relay(config) {
        Ok(relay) if !tty::active() => relay,
        Ok(_) => None,
        Err(e) => return fail_start(b"cannot create a pipe: ", e),
    };
    // SAFETY: guest-init is single-threaded.
    let child = match unsafe { sys::fork() } {
        Ok(Some(pid)) => pid,
        Ok(None) => child(
            config,
            user,
            report_tx,
            relay.as_ref().map(|(_, writers)| writers),
        ),
        Err(e) => return fail_start(b"cannot start a process: ", e),
    };
    drop(report_tx);
    // Only the command may hold the pipes' write ends, so that they end
    // when its processes do.
    let mut relay = relay.map(|(relay, _)| relay);
    let mut terminal = streams::terminal_relay(config);

    // The pipe closes on a successful exec (CLOEXEC) or carries a report.
    let mut report = [0u8; REPORT_CAPACITY];
    let (len, _) = console::read_full(report_rx.as_fd(), &mut report);
    drop(report_rx);

    let ended = || end::reap_command(child, WaitOptions::NOHANG);
    let mut status = match (terminal.as_mut(), relay.as_mut()) {
        (Some(terminal), _) => terminal.copy_until(child, ended),
        (None, Some(relay)) => relay.copy_until(child, ended),
        (None, None) => end::wait_for(child),
    };
    if len >= 5 {
        status = explain_failure(config, &report[..len]);
    }
    end::clean_up(pid1, child);
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    if let Some(relay) = relay {
        relay.finish();
    }
    status
}

/// Says on the console what went wrong (`microrun: WHAT` and the error)
/// and returns 126.
pub fn fail_start(what: &[u8], e: Errno) -> u8 {
    Line::new()
        .text(b"microrun: ")
        .text(what)
        .errno(e)
        .send(GlobalState::console());
    CANNOT_EXECUTE
}

/// The child: stdio, the user, then exec. Never returns.
fn child(config: &RunConfig, user: Option<&Switch>, report: OwnedFd, relay: Option<&Writers>) -> ! {
    // Its own session, so job-control shells and `kill 0` stay within it.
    let _ = rustix::process::setsid();
    if let Err(e) = streams::setup_stdio(config, relay) {
        send_report(&report, STAGE_SETUP, e, b"");
        sys::exit_group(i32::from(CANNOT_EXECUTE));
    }
    if let Some(Err(e)) = user.map(user::switch) {
        send_report(&report, STAGE_USER, e, b"");
        sys::exit_group(i32::from(MICRORUN_FAILED));
    }
    let mut path = [0u8; PATH_CAPACITY];
    let (errno, len) = exec_command(config, &mut path);
    send_report(&report, STAGE_EXEC, errno, &path[..len]);
    let code = if errno == Errno::NOENT {
        NOT_FOUND
    } else {
        CANNOT_EXECUTE
    };
    sys::exit_group(i32::from(code))
}

fn send_report(report: &OwnedFd, stage: u8, errno: Errno, path: &[u8]) {
    let mut buf = [0u8; REPORT_CAPACITY];
    buf[0] = stage;
    buf[1..5].copy_from_slice(&errno.raw_os_error().to_le_bytes());
    let n = path.len().min(PATH_CAPACITY - 1);
    buf[5..5 + n].copy_from_slice(&path[..n]);
    // buf[5 + n] is already the NUL terminator.
    console::write_all(report.as_fd(), &buf[..5 + n + 1]);
}
/// Execs the command, searching PATH like `execvp` when the name has no
/// `/`; returns the decisive error, with the path it concerns in `failed`
/// (its length is returned).
fn exec_command(config: &RunConfig, failed: &mut [u8; PATH_CAPACITY]) -> (Errno, usize) {
    let command = config.command();
    let name = command.to_bytes();
    let keep = |failed: &mut [u8; PATH_CAPACITY], path: &[u8]| {
        let n = path.len().min(PATH_CAPACITY - 1);
        failed[..n].copy_from_slice(&path[..n]);
        n
    };
    if name.is_empty() {
        return (Errno::NOENT, 0);
    }
    if name.contains(&b'/') {
        // SAFETY: the arrays are NULL-terminated arrays of C strings.
        let errno = unsafe {
            sys::execve(
                command.as_ptr().cast(),
                config.argv.as_ptr(),
                config.envp.as_ptr(),
            )
        };
        return (errno, keep(failed, name));
    }

    let mut candidate = [0u8; PATH_CAPACITY];
    let mut decisive: Option<(Errno, usize)> = None;
    let path_var = config
        .path_var()
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(|&b| b == b':') {
        // An empty entry means the current directory, as in execvp.
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let len = dir.len() + 1 + name.len();
        if len >= PATH_CAPACITY {
            continue;
        }
        candidate[..dir.len()].copy_from_slice(dir);
        candidate[dir.len()] = b'/';
        candidate[dir.len() + 1..len].copy_from_slice(name);
        candidate[len] = 0;
        // SAFETY: candidate is NUL-terminated; the arrays are NULL-terminated
        // arrays of C strings.
        let errno = unsafe {
            sys::execve(
                candidate.as_ptr(),
                config.argv.as_ptr(),
                config.envp.as_ptr(),
            )
        };
        let remember = match errno {
            // Like execvp: a file that is there but cannot run is remembered
            // and the search goes on.
            Errno::ACCESS => true,
            // ENOENT for a file that exists: its interpreter is missing.
            Errno::NOENT => CStr::from_bytes_with_nul(&candidate[..=len])
                .is_ok_and(|c| rustix::fs::stat(c).is_ok()),
            Errno::NOTDIR | Errno::NAMETOOLONG | Errno::LOOP => false,
            _ => return (errno, keep(failed, &candidate[..len])),
        };
        if remember && decisive.is_none() {
            decisive = Some((errno, keep(failed, &candidate[..len])));
        }
    }
    decisive.unwrap_or_else(|| (Errno::NOENT, keep(failed, name)))
}

/// Prints why the command could not start and returns the status for it.
fn explain_failure(config: &RunConfig, report: &[u8]) -> u8 {
    let stage = report[0];
    let errno = Errno::from_raw_os_error(i32::from_le_bytes([
        report[1], report[2], report[3], report[4],
    ]));
    let mut line = Line::new();
    line.text(b"microrun: ");
    if stage == STAGE_USER {
        line.text(b"guest-init: cannot run ")
            .text(config.command().to_bytes())
            .text(b" as ")
            .text(config.user.map_or(&b""[..], CStr::to_bytes))
            .text(b": ")
            .errno(errno)
            .text(b" (setgroups, setgid or setuid)");
        line.send(GlobalState::console());
        return MICRORUN_FAILED;
    }
    if stage != STAGE_EXEC {
        line.text(b"cannot set up stdin, stdout and stderr for ")
            .text(config.command().to_bytes())
            .text(b": ")
            .errno(errno);
        line.send(GlobalState::console());
        return CANNOT_EXECUTE;
    }
    let path = CStr::from_bytes_until_nul(&report[5..]).unwrap_or(c"?");
    line.text(path.to_bytes()).text(b": ");
    let status = match errno {
        Errno::NOENT => {
            match (rustix::fs::lstat(path), rustix::fs::stat(path)) {
                (_, Ok(_)) => line.text(
                    b"cannot execute: its interpreter (ELF loader or #! program) was not found",
                ),
                (Ok(st), Err(_)) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    line.text(b"command not found (dangling symbolic link)")
                }
                _ => line.text(b"command not found"),
            };
            NOT_FOUND
        }
        Errno::ACCESS => {
            match rustix::fs::stat(path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    line.text(b"cannot execute: is a directory")
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                    line.text(b"cannot execute: not a regular file")
                }
                _ => line
                    .text(b"cannot execute: permission denied (no execute bit, or a noexec mount)"),
            };
            CANNOT_EXECUTE
        }
        _ => {
            line.text(b"cannot execute: ").errno(errno);
            CANNOT_EXECUTE
        }
    };
    line.send(GlobalState::console());
    status
}
