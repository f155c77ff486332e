//! microrun's own terminal during a run with `-it`: in raw mode while the
//! program runs, so that every key (Ctrl-C, Ctrl-Z, Ctrl-\ included)
//! reaches the program's terminal in the guest, and restored on every way
//! out.
//!
//! [`Session::start`] keeps the terminal on a descriptor of its own and
//! puts a pipe on descriptor 0 instead, so that every engine forwards
//! stdin as it always does (the kvm engine's stdin thread, the qemu
//! engine's pump, the chroot engine's inherited descriptor 0) while the
//! session's thread writes into that pipe what the program should get:
//! the typed keys, every 0xFF doubled, and a window-size frame at the
//! start and at each `SIGWINCH` ([`keys`]; guest-init decodes them).
//!
//! The restoration runs on that thread, which no seccomp filter confines
//! (the kvm engine's own threads may not change a terminal's settings):
//!
//! - when the [`Session`] is dropped (the run ended: a status, a timeout,
//!   a guest that crashed, an error returned);
//! - on `SIGINT`, `SIGTERM`, `SIGHUP`, `SIGQUIT`: every thread blocks
//!   them (the mask is inherited by the threads started later), and the
//!   session's thread reads them from a signalfd, restores the terminal,
//!   and lets the signal end microrun as it would have;
//! - on a panic (a hook asks the thread and waits for it);
//! - on the escape, Ctrl-] typed three times within a second: the
//!   terminal is restored, microrun says so and exits 125 at once, which
//!   ends the VM (QEMU and the chroot engine's namespace die with
//!   microrun, through `PR_SET_PDEATHSIG`).

pub mod keys;
mod raw;

/// Runs `spawn` (which starts a thread) with the session's signals blocked
/// in the calling thread, so that the new thread inherits them blocked:
/// for a thread that may start before a session does (microrun's
/// messages), which must never take a signal the session restores the
/// terminal on.
pub fn spawn_without_session_signals<T>(spawn: impl FnOnce() -> T) -> T {
    let old = raw::thread_mask(libc::SIG_BLOCK, &raw::signal_set()).ok();
    let spawned = spawn();
    if let Some(old) = old {
        let _ = raw::thread_mask(libc::SIG_SETMASK, &old);
    }
    spawned
}

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use keys::EscapeWatch;

/// What microrun says when the escape stops the VM.
pub const ESCAPE_MESSAGE: &str = "\r\nmicrorun: Ctrl-] pressed three times: the VM was stopped\r\n";

/// microrun's exit status after the escape: 125, the contract's code for
/// a VM that ended without reporting a status (130 would read as the
/// program's own death by SIGINT).
pub const ESCAPE_STATUS: i32 = 125;

/// Why the terminal cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// Stdin is not a terminal.
    #[error("-t/--tty: stdin is not a terminal")]
    NotATerminal,
    /// A system call failed.
    #[error("cannot set up the terminal for -t: {call} failed: {source}")]
    Sys {
        /// What failed.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Asked of the session's thread: restore the terminal and stop.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by the session's thread once the terminal is restored.
static RESTORED: AtomicBool = AtomicBool::new(true);
/// The terminal's descriptor and its settings before the session, for a
/// panic on the session's own thread.
static SAVED: OnceLock<(RawFd, libc::termios)> = OnceLock::new();
/// The session thread's id (`gettid`), so that a panic on that thread
/// restores the terminal itself instead of waiting for it.
static THREAD_TID: AtomicI32 = AtomicI32::new(0);

/// How long the session's thread sleeps in `poll` at most: how soon it sees
/// [`STOP`] when nothing could wake it (a panic on a confined thread).
const POLL_TICK_MS: i32 = 100;
/// How long the end of the session waits for the restoration.
const RESTORE_WAIT: Duration = Duration::from_secs(2);
/// How much typed input waits for the engine at most before the session
/// stops reading the keyboard.
const PENDING_LIMIT: usize = 64 * 1024;

/// The size of the terminal on stdin, as (rows, columns); `None` when stdin
/// is not a terminal.
pub fn stdin_size() -> Option<(u16, u16)> {
    if !raw::is_terminal(0) {
        return None;
    }
    Some(raw::window_size(0).unwrap_or((0, 0)))
}

/// A run's terminal session: raw mode and the input thread, until dropped.
pub struct Session {
    /// Written to wake the session's thread at the end.
    wake: OwnedFd,
    /// The signal mask the calling thread had before.
    old_mask: libc::sigset_t,
}

impl Session {
    /// Puts the terminal on stdin in raw mode and starts forwarding its
    /// keys (and window sizes) through the pipe it puts on descriptor 0.
    pub fn start() -> Result<Session, TerminalError> {
        if !raw::is_terminal(0) {
            return Err(TerminalError::NotATerminal);
        }
        let sys = |call| move |source| TerminalError::Sys { call, source };
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let tty = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
        if tty < 0 {
            return Err(sys("dup stdin")(io::Error::last_os_error()));
        }
        // SAFETY: `tty` is a new descriptor owned by nobody else.
        let tty = unsafe { OwnedFd::from_raw_fd(tty) };
        let saved = raw::get(tty.as_raw_fd()).map_err(sys("tcgetattr"))?;
        let (to_guest_r, to_guest_w) = pipe(libc::O_CLOEXEC).map_err(sys("pipe"))?;
        let (wake_r, wake_w) = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(sys("pipe"))?;
        set_nonblocking(to_guest_w.as_raw_fd()).map_err(sys("fcntl"))?;

        // From here on, in this thread and every thread it starts, the
        // signals wait for the session's thread.
        let old_mask =
            raw::thread_mask(libc::SIG_BLOCK, &raw::signal_set()).map_err(sys("sigprocmask"))?;
        let undo_mask = |e| {
            let _ = raw::thread_mask(libc::SIG_SETMASK, &old_mask);
            e
        };
        let signals = raw::signal_fd()
            .map_err(sys("signalfd"))
            .map_err(undo_mask)?;
        // SAFETY: a new descriptor owned by nobody else.
        let signals = unsafe { OwnedFd::from_raw_fd(signals) };
        // SAFETY: both descriptors are open; dup2 replaces descriptor 0
        // (without close-on-exec: the chroot engine's PID 1 inherits it).
        if unsafe { libc::dup2(to_guest_r.as_raw_fd(), 0) } < 0 {
            return Err(undo_mask(sys("dup2")(io::Error::last_os_error())));
        }
        drop(to_guest_r);
        let _ = SAVED.set((tty.as_raw_fd(), saved));
        STOP.store(false, Ordering::SeqCst);
        RESTORED.store(false, Ordering::SeqCst);
        install_panic_hook();
        let thread = Thread {
            tty,
            saved,
            to_guest: to_guest_w,
            signals,
            wake: wake_r,
            pending: Vec::new(),
            escape: EscapeWatch::default(),
        };
        let spawned = std::thread::Builder::new()
            .name("terminal".into())
            .spawn(move || thread.run());
        if let Err(e) = spawned {
            // Raw mode never began: the thread sets it.
            RESTORED.store(true, Ordering::SeqCst);
            return Err(undo_mask(sys("spawn the terminal thread")(e)));
        }
        Ok(Session {
            wake: wake_w,
            old_mask,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        request_restore();
        // SAFETY: writes one byte from a live buffer.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        wait_restored();
        let _ = raw::thread_mask(libc::SIG_SETMASK, &self.old_mask);
    }
}

/// Asks the session's thread to restore the terminal.
fn request_restore() {
    STOP.store(true, Ordering::SeqCst);
}

/// Waits (with plain sleeps: the kvm engine's filters allow them on every
/// thread) until the terminal is restored, for [`RESTORE_WAIT`] at most.
fn wait_restored() {
    let start = Instant::now();
    while !RESTORED.load(Ordering::SeqCst) && start.elapsed() < RESTORE_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// On a panic during the session: the terminal is restored before the
/// message (and, with `panic = "abort"`, the end).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !RESTORED.load(Ordering::SeqCst) {
                // SAFETY: gettid has no preconditions.
                let me = unsafe { libc::gettid() };
                request_restore();
                if me == THREAD_TID.load(Ordering::SeqCst) {
                    // The session's own thread: it cannot be waited for.
                    if let Some((tty, saved)) = SAVED.get() {
                        let _ = raw::set(*tty, saved);
                    }
                    RESTORED.store(true, Ordering::SeqCst);
                } else {
                    wait_restored();
                }
            }
            previous(info);
        }));
    });
}

/// The session's thread and what it owns.
struct Thread {
    tty: OwnedFd,
    saved: libc::termios,
    /// The write end of the pipe on descriptor 0 (non-blocking).
    to_guest: OwnedFd,
    signals: OwnedFd,
    wake: OwnedFd,
    /// Encoded input the pipe did not take yet.
    pending: Vec<u8>,
    escape: EscapeWatch,
}

impl Thread {
    fn run(mut self) {
        // SAFETY: gettid has no preconditions.
        THREAD_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        if let Err(e) = raw::set(self.tty.as_raw_fd(), &raw::raw(&self.saved)) {
            log::warn!("-t: cannot put the terminal in raw mode: {e}");
        }
        self.send_window();
        let mut tty_open = true;
        let mut buf = [0u8; 4096];
        loop {
            if STOP.load(Ordering::SeqCst) {
                return self.restore();
            }
            let read_tty = tty_open && self.pending.len() < PENDING_LIMIT;
            let mut fds = [
                pollfd(self.wake.as_raw_fd(), libc::POLLIN),
                pollfd(self.signals.as_raw_fd(), libc::POLLIN),
                pollfd(
                    if read_tty { self.tty.as_raw_fd() } else { -1 },
                    libc::POLLIN,
                ),
                pollfd(
                    if self.pending.is_empty() {
                        -1
                    } else {
                        self.to_guest.as_raw_fd()
                    },
                    libc::POLLOUT,
                ),
            ];
            // SAFETY: `fds` is a valid array of its length for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, POLL_TICK_MS) };
            if ready <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                return self.restore();
            }
            if fds[1].revents != 0 {
                for signal in raw::read_signals(self.signals.as_raw_fd()) {
                    if signal == libc::SIGWINCH {
                        self.send_window();
                    } else {
                        self.restore();
                        raw::die_by(signal);
                    }
                }
            }
            if fds[2].revents != 0 {
                // SAFETY: reads at most `buf.len()` bytes into `buf`.
                let n =
                    unsafe { libc::read(self.tty.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                match n {
                    n if n > 0 => {
                        let keys = &buf[..n as usize];
                        let stop = self.escape.keys(keys, Instant::now());
                        keys::encode_input(keys, &mut self.pending);
                        if stop {
                            self.escape_now();
                        }
                    }
                    n if n < 0
                        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                    n if n < 0
                        && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {}
                    // The terminal hung up (SIGHUP follows, usually).
                    _ => tty_open = false,
                }
            }
            self.flush();
        }
    }

    /// Queues the terminal's current size as a frame.
    fn send_window(&mut self) {
        if let Some((rows, cols)) = raw::window_size(self.tty.as_raw_fd()) {
            if rows > 0 && cols > 0 {
                self.pending
                    .extend_from_slice(&keys::window_frame(rows, cols));
            }
        }
        self.flush();
    }

    /// Gives the pipe what it takes of the pending input now.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            // SAFETY: writes at most `pending.len()` bytes from `pending`.
            let n = unsafe {
                libc::write(
                    self.to_guest.as_raw_fd(),
                    self.pending.as_ptr().cast(),
                    self.pending.len(),
                )
            };
            if n > 0 {
                self.pending.drain(..n as usize);
                continue;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return,
                // Nobody reads any more: the input has nowhere to go.
                _ => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Puts the terminal back as it was.
    fn restore(&self) {
        let _ = raw::set(self.tty.as_raw_fd(), &self.saved);
        RESTORED.store(true, Ordering::SeqCst);
    }

    /// The escape: the terminal restored, a message, and the exit that
    /// ends the VM.
    fn escape_now(&self) -> ! {
        self.restore();
        let message = ESCAPE_MESSAGE.as_bytes();
        // SAFETY: writes the message from a live buffer; `_exit` ends the
        // process without running anything of the other threads'.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(ESCAPE_STATUS)
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// A pipe with `flags` on both ends.
fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL only change the descriptor's flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
