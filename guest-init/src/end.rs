//! The end of the run: reaping the command and whatever it left behind
//! (SIGTERM, a grace, SIGKILL), the exit status as the contract reports
//! it, the status line on ttyS2 once stdout has drained, and the
//! power-off. PID 1 must never exit, so [`finish`] never returns.

use core::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use crate::channels::{drain, GlobalState};
use crate::command::fail_start;
use crate::console::Line;
use crate::{relay, sys};

/// Status for "the command exists but cannot be executed", and for every
/// failure of guest-init before the command starts.
pub const CANNOT_EXECUTE: u8 = 126;
/// Status for "the command was not found".
pub const NOT_FOUND: u8 = 127;
/// Status for a run microrun itself could not set up (a share that cannot
/// be mounted), as the contract's exit codes have it.
pub const MICRORUN_FAILED: u8 = 125;

/// How long leftover processes get between SIGTERM and SIGKILL.
const TERM_GRACE_MS: u32 = 100;
/// How long to wait for SIGKILLed processes before reporting anyway.
const KILL_WAIT_MS: u32 = 5000;

/// Whether the status line went out, `MICRORUN_INIT_NO_POWEROFF=1`, and
/// whether [`finish`] has begun (a panic inside it must not start over).
static STATUS_SENT: AtomicBool = AtomicBool::new(false);
static NO_POWEROFF: AtomicBool = AtomicBool::new(false);
static FINISHING: AtomicBool = AtomicBool::new(false);

/// With `MICRORUN_INIT_NO_POWEROFF=1`, [`finish`] exits instead of
/// powering off.
pub fn set_no_poweroff(no_poweroff: bool) {
    NO_POWEROFF.store(no_poweroff, Ordering::Relaxed);
}

/// Reaps children (waiting for them unless `options` has `NOHANG`) until
/// the command itself is among them, and returns its status; `None` when,
/// with `NOHANG`, no more have ended for now.
pub fn reap_command(child: i32, options: WaitOptions) -> Option<u8> {
    loop {
        match rustix::process::wait(options) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == child => {
                return Some(status_code(status));
            }
            // An orphan that ended: reaped, nothing else to do.
            Ok(Some(_)) | Err(Errno::INTR) => {}
            Ok(None) => return None,
            Err(e) => return Some(fail_start(b"lost track of the command: ", e)),
        }
    }
}

/// Reaps children until the command itself ends; returns its status.
pub fn wait_for(child: i32) -> u8 {
    loop {
        if let Some(status) = reap_command(child, WaitOptions::empty()) {
            return status;
        }
    }
}

/// The exit status as the contract reports it: the exit code, or 128+N for
/// death by signal N.
fn status_code(status: WaitStatus) -> u8 {
    if let Some(code) = status.exit_status() {
        (code & 0xff) as u8
    } else if let Some(signal) = status.terminating_signal() {
        (128 + (signal & 0x7f)) as u8
    } else {
        CANNOT_EXECUTE
    }
}

/// Ends whatever the command left behind: SIGTERM, a short grace, SIGKILL,
/// and reaps it all.
pub fn clean_up(pid1: bool, child: i32) {
    let signal_rest = |signal: Signal| {
        if pid1 {
            // PID 1's kill(-1) reaches every other process of the machine (or
            // PID namespace) and never PID 1 itself.
            let _ = sys::kill_all(signal.as_raw());
        } else if let Some(group) = Pid::from_raw(child) {
            // Anywhere else kill(-1) would hit the host: only the command's
            // session (its process group) is ours to end.
            let _ = rustix::process::kill_process_group(group, signal);
        }
    };
    if reap_for(0) {
        return;
    }
    signal_rest(Signal::TERM);
    if reap_for(TERM_GRACE_MS) {
        return;
    }
    signal_rest(Signal::KILL);
    reap_for(KILL_WAIT_MS);
}

/// Reaps exited children for up to `ms` milliseconds; true once none are
/// left.
fn reap_for(ms: u32) -> bool {
    let mut waited = 0;
    loop {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(_)) | Err(Errno::INTR) => {}
                Ok(None) => break,
                // ECHILD: no children at all.
                Err(_) => return true,
            }
        }
        if waited >= ms {
            return false;
        }
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        });
        waited += 1;
    }
}

/// Writes the status line (once) after stdout has drained, then powers off.
/// Never returns; with `MICRORUN_INIT_NO_POWEROFF=1` it exits instead.
pub fn finish(status: u8) -> ! {
    if FINISHING.swap(true, Ordering::Relaxed) {
        // A panic while finishing: nothing sensible is left to try.
        halt();
    }
    drain(GlobalState::stdout());
    drain(GlobalState::console());
    let mut sent = STATUS_SENT.load(Ordering::Relaxed);
    if !sent {
        if let Some(fd) = GlobalState::status() {
            if let Some((stdout, stderr)) = relay::sent() {
                // What the host must have read from the ports before it
                // ends the VM (see relay.rs).
                Line::new()
                    .text(b"@sent ")
                    .num(stdout)
                    .text(b" ")
                    .num(stderr)
                    .send(Some(fd));
            }
            Line::new().num(u64::from(status)).send(Some(fd));
            drain(Some(fd));
            STATUS_SENT.store(true, Ordering::Relaxed);
            sent = true;
        }
    }
    if NO_POWEROFF.load(Ordering::Relaxed) {
        sys::exit_group(if sent { 0 } else { 1 });
    }
    if sent && relay::sent().is_some() {
        // The host ends the VM once the ports have delivered what `@sent`
        // counts, however long its reader takes; powering off before that
        // would lose what QEMU still holds.
        halt();
    }
    if sent {
        // The host stops the VM at the status line; powering off at once
        // would race with it and can print the kernel's "reboot: System
        // halted" on the console (the program's stderr). So wait a moment:
        // this is only the fallback for a host that does not stop.
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
    }
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    halt()
}

/// Sleeps forever: PID 1 must never exit.
fn halt() -> ! {
    if NO_POWEROFF.load(Ordering::Relaxed) {
        sys::exit_group(1);
    }
    loop {
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: 3600,
            tv_nsec: 0,
        });
    }
}
