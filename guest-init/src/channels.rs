//! The three channels to the host: ttyS0 (the console: guest-init's
//! messages and, without the virtio-console's ports, the command's
//! stderr), ttyS1 (the command's stdout, and its stdin when forwarded) and
//! ttyS2 (status: the `@` events and the exit status line). Opening them,
//! setting up their terminals, and the descriptors every stage reports
//! through (also from the panic handler).

use core::ffi::CStr;
use core::sync::atomic::{AtomicI32, Ordering};

use rustix::fd::{BorrowedFd, IntoRawFd, RawFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::termios::{ControlModes, OptionalActions, OutputModes};

use crate::console::{self, Line};
use crate::end::{finish, CANNOT_EXECUTE};

/// The open channels' descriptors, for every stage, the panic handler and
/// `finish`.
pub struct GlobalState;

static CONSOLE_FD: AtomicI32 = AtomicI32::new(-1);
static STDOUT_FD: AtomicI32 = AtomicI32::new(-1);
static STATUS_FD: AtomicI32 = AtomicI32::new(-1);

impl GlobalState {
    /// The descriptor in `slot`, once one has been stored there.
    pub fn fd(slot: &AtomicI32) -> Option<BorrowedFd<'static>> {
        let raw = slot.load(Ordering::Relaxed);
        // SAFETY: only open descriptors are ever stored, and guest-init never
        // closes them (they live as long as the process).
        (raw >= 0).then(|| unsafe { BorrowedFd::borrow_raw(raw) })
    }

    /// ttyS0: messages for the user, the command's stderr.
    pub fn console() -> Option<BorrowedFd<'static>> {
        Self::fd(&CONSOLE_FD)
    }

    /// ttyS1: the command's stdout (and stdin).
    pub fn stdout() -> Option<BorrowedFd<'static>> {
        Self::fd(&STDOUT_FD)
    }

    /// ttyS2: events and the status line.
    pub fn status() -> Option<BorrowedFd<'static>> {
        Self::fd(&STATUS_FD)
    }
}

/// Where one of the three channels goes.
#[derive(Clone, Copy)]
pub enum Channel {
    Path(&'static CStr),
    Fd(RawFd),
}

impl Channel {
    /// A knob's value: `fd:N` for an inherited descriptor, else a path.
    pub fn parse(value: &'static CStr) -> Self {
        let Some(digits) = value.to_bytes().strip_prefix(b"fd:") else {
            return Channel::Path(value);
        };
        let mut fd: RawFd = 0;
        for &d in digits {
            if !d.is_ascii_digit() || fd > 1 << 20 {
                // Not a descriptor number; opening it as a path will fail
                // with a message naming it.
                return Channel::Path(value);
            }
            fd = fd * 10 + RawFd::from(d - b'0');
        }
        if digits.is_empty() {
            return Channel::Path(value);
        }
        Channel::Fd(fd)
    }

    /// Opens the channel and sets up its terminal (if it is one): `CLOCAL`
    /// so no open ever waits for a modem carrier, and no output processing
    /// so bytes pass unchanged; `raw` also turns off input processing and
    /// echo. Returns the descriptor and a terminal setup error, if any.
    fn open(self, raw: bool) -> Result<(RawFd, Option<Errno>), Errno> {
        let fd = match self {
            Channel::Fd(fd) => {
                // SAFETY: `fd` was parsed from digits, so it is not -1. If it
                // is not open, fcntl fails with EBADF and it is not used; if it
                // is, guest-init never closes it.
                let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
                // Keep inherited descriptors away from the command.
                rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
                fd
            }
            Channel::Path(path) => {
                // O_NONBLOCK: a serial port without CLOCAL would otherwise
                // block the open until carrier detect.
                let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let fd = rustix::fs::open(path, flags, Mode::empty())?;
                let fl = rustix::fs::fcntl_getfl(&fd)?;
                rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)?;
                fd.into_raw_fd()
            }
        };
        // SAFETY: `fd` is open and is never closed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok((fd, setup_terminal(borrowed, raw).err()))
    }

    fn describe(self, line: &mut Line) -> &mut Line {
        match self {
            Channel::Path(path) => line.text(path.to_bytes()),
            Channel::Fd(fd) => line.text(b"fd:").num(fd as u64),
        }
    }
}

/// See [`Channel::open`]; a descriptor that is not a terminal is fine.
fn setup_terminal(fd: BorrowedFd<'_>, raw: bool) -> Result<(), Errno> {
    let mut termios = match rustix::termios::tcgetattr(fd) {
        Ok(termios) => termios,
        Err(Errno::NOTTY) => return Ok(()),
        Err(e) => return Err(e),
    };
    if raw {
        termios.make_raw();
    } else {
        termios.output_modes.remove(OutputModes::OPOST);
    }
    termios.control_modes.insert(ControlModes::CLOCAL);
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &termios)
}

/// Waits until everything written to `fd` has been sent, if it is a terminal.
pub fn drain(fd: Option<BorrowedFd<'_>>) {
    if let Some(fd) = fd {
        // ENOTTY for pipes and files, which need no draining.
        let _ = rustix::termios::tcdrain(fd);
    }
}

/// Opens the console (output processing off, input left cooked); when it
/// cannot be opened, says so on the kernel's `/dev/console` (fd 2), if the
/// rootfs provided one.
pub fn open_console(channel: Channel) {
    match channel.open(false) {
        Ok((fd, _)) => CONSOLE_FD.store(fd, Ordering::Relaxed),
        Err(e) => {
            // The kernel's /dev/console on fd 2, if the rootfs provided it,
            // is the only place left to say so.
            if let Ok((fd, _)) = Channel::Fd(2).open(false) {
                CONSOLE_FD.store(fd, Ordering::Relaxed);
            }
            let mut line = Line::new();
            line.text(b"microrun: cannot open the console ");
            channel.describe(&mut line).text(b": ").errno(e);
            line.send(GlobalState::console());
        }
    }
}

/// Opens the stdout and status channels and announces guest-init with
/// `@init` (the host times the boot by it, and gates stdin on it when the
/// VM has no virtio-console). Without both channels the run ends with 126.
pub fn open_stdout_and_status(stdout: Channel, status: Channel) {
    let stdout = open_channel(stdout, &STDOUT_FD);
    let status = open_channel(status, &STATUS_FD);
    send_event(b"@init\n");
    if status.is_none() || stdout.is_none() {
        finish(CANNOT_EXECUTE);
    }
}

/// Writes an event (`@` and a word, with its newline) on the status
/// channel, if it is open.
pub fn send_event(event: &[u8]) {
    if let Some(fd) = GlobalState::status() {
        console::write_all(fd, event);
    }
}

/// Says `WHAT SUBJECT: ERROR` on the console, `what` starting with
/// `microrun: `.
pub fn report(what: &[u8], subject: &[u8], e: Errno) {
    Line::new()
        .text(what)
        .text(subject)
        .text(b": ")
        .errno(e)
        .send(GlobalState::console());
}

/// Opens a channel read-write in raw mode and records it in `slot`;
/// failures are reported on the console.
fn open_channel(channel: Channel, slot: &AtomicI32) -> Option<RawFd> {
    match channel.open(true) {
        Ok((fd, tty_error)) => {
            slot.store(fd, Ordering::Relaxed);
            if let Some(e) = tty_error {
                let mut line = Line::new();
                line.text(b"microrun: warning: cannot set raw mode on ");
                channel.describe(&mut line).text(b": ").errno(e);
                line.send(GlobalState::console());
            }
            Some(fd)
        }
        Err(e) => {
            let mut line = Line::new();
            line.text(b"microrun: cannot open ");
            channel.describe(&mut line).text(b": ").errno(e);
            line.send(GlobalState::console());
            None
        }
    }
}
