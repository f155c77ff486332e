//! The command's terminal (`tty=ROWS COLS`, microrun's `-t`): a
//! pseudo-terminal whose slave is the command's stdin, stdout and stderr
//! (merged, as docker does) and its controlling terminal, and whose master
//! guest-init relays: what the command writes goes to the stdout channel
//! (the stdout port, or ttyS1), and the stdin channel, when forwarded,
//! comes in through [`crate::frames::Decoder`]: its data is typed on the
//! terminal, its window sizes set the terminal's (which sends `SIGWINCH`
//! to the command's foreground process group).
//!
//! devpts is mounted on `/dev/pts` when `/dev/pts/ptmx` cannot be opened
//! (a VM's devtmpfs has no devpts); the chroot engine mounts its own.

use core::sync::atomic::{AtomicI32, Ordering};

use rustix::event::PollFlags;
use rustix::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::channels::GlobalState;
use crate::console::Line;
use crate::frames::Decoder;
use crate::relay;

/// The terminal's master, kept by PID 1, and its slave, given to the
/// command (closed in PID 1 after the fork).
static MASTER_FD: AtomicI32 = AtomicI32::new(-1);
static SLAVE_FD: AtomicI32 = AtomicI32::new(-1);

/// How much is moved at once in either direction.
const CHUNK: usize = 4096;

/// Opens the command's terminal, `rows` by `cols`; says on the console
/// why when it cannot (the run then ends with 126, as any failure to set
/// up the command's streams).
pub fn open(rows: u16, cols: u16) -> Result<(), Errno> {
    let (master, slave) = open_pair(rows, cols)
        .inspect_err(|&(what, e)| {
            Line::new()
                .text(b"microrun: guest-init: cannot open a terminal for the command (-t): ")
                .text(what)
                .text(b": ")
                .errno(e)
                .send(GlobalState::console());
        })
        .map_err(|(_, e)| e)?;
    MASTER_FD.store(master.into_raw_fd(), Ordering::Relaxed);
    SLAVE_FD.store(slave.into_raw_fd(), Ordering::Relaxed);
    Ok(())
}

/// The master and slave of a new pseudo-terminal of that size, or the step
/// that failed.
fn open_pair(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), (&'static [u8], Errno)> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
    let master = match rustix::fs::open(c"/dev/pts/ptmx", flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(_) => {
            match rustix::fs::mkdir(c"/dev/pts", Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err((b"mkdir /dev/pts", e)),
            }
            match rustix::mount::mount(
                c"devpts",
                c"/dev/pts",
                c"devpts",
                MountFlags::NOSUID | MountFlags::NOEXEC,
                c"ptmxmode=0666,mode=0620",
            ) {
                Ok(()) | Err(Errno::BUSY) => {}
                Err(e) => return Err((b"mount devpts on /dev/pts", e)),
            }
            rustix::fs::open(c"/dev/pts/ptmx", flags, Mode::empty())
                .or_else(|_| rustix::fs::open(c"/dev/ptmx", flags, Mode::empty()))
                .map_err(|e| (&b"open /dev/pts/ptmx"[..], e))?
        }
    };
    rustix::pty::unlockpt(&master).map_err(|e| (&b"unlock the pseudo-terminal"[..], e))?;
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )
    .map_err(|e| (&b"open the pseudo-terminal's slave"[..], e))?;
    set_window(master.as_fd(), rows, cols);
    Ok((master, slave))
}

/// Sets the terminal's size; the kernel tells the foreground process group
/// with `SIGWINCH`.
fn set_window(master: BorrowedFd<'_>, rows: u16, cols: u16) {
    let _ = rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    );
}

/// In the command's process, after `setsid`: the terminal on descriptors
/// 0, 1 and 2, and as the controlling terminal. `None` without a terminal.
pub fn setup_stdio() -> Option<Result<(), Errno>> {
    let slave = GlobalState::fd(&SLAVE_FD)?;
    Some((|| {
        rustix::process::ioctl_tiocsctty(slave)?;
        let slave = rustix::io::fcntl_dupfd_cloexec(slave, 3)?;
        rustix::stdio::dup2_stdin(&slave)?;
        rustix::stdio::dup2_stdout(&slave)?;
        rustix::stdio::dup2_stderr(&slave)?;
        Ok(())
    })())
}

/// Whether the command gets a terminal.
pub fn active() -> bool {
    MASTER_FD.load(Ordering::Relaxed) >= 0
}

/// The relay between the terminal's master and the host's channels.
pub struct Relay {
    master: BorrowedFd<'static>,
    output: BorrowedFd<'static>,
    /// The stdin channel, until it ends.
    input: Option<BorrowedFd<'static>>,
    /// Whether the bytes written to `output` are counted for `@sent`.
    count: bool,
    decoder: Decoder,
    /// Input decoded but not yet taken by the terminal.
    pending: [u8; CHUNK],
    pending_at: usize,
    pending_len: usize,
    /// Until every slave is closed (reads give `EIO`).
    master_open: bool,
}

impl Relay {
    /// In PID 1, after the fork: closes its copy of the slave (so that the
    /// master ends when the command's processes are gone), and relays the
    /// master to `output` (counting the bytes for `@sent` when `count`)
    /// and `input`, when there is one, to the master.
    pub fn new(
        output: BorrowedFd<'static>,
        input: Option<BorrowedFd<'static>>,
        count: bool,
    ) -> Option<Relay> {
        let master = GlobalState::fd(&MASTER_FD)?;
        let slave = SLAVE_FD.swap(-1, Ordering::Relaxed);
        if slave >= 0 {
            // SAFETY: the slot held the only copy of this descriptor, taken
            // out of it above, so nothing uses it after this.
            drop(unsafe { <OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(slave) });
        }
        // Input waits in `pending` while the terminal is full, so the
        // relay never blocks on it while the command writes.
        if let Ok(flags) = rustix::fs::fcntl_getfl(master) {
            let _ = rustix::fs::fcntl_setfl(master, flags | OFlags::NONBLOCK);
        }
        if count {
            relay::count_stdout(0);
        }
        Some(Relay {
            master,
            output,
            input,
            count,
            decoder: Decoder::new(),
            pending: [0; CHUNK],
            pending_at: 0,
            pending_len: 0,
            master_open: true,
        })
    }

    /// Relays until `ended` (which reaps children without waiting) returns
    /// the command's status.
    pub fn copy_until(&mut self, command: i32, mut ended: impl FnMut() -> Option<u8>) -> u8 {
        let watch = relay::Watch::command(command);
        let mut buf = [0u8; CHUNK];
        loop {
            if let Some(status) = ended() {
                return status;
            }
            let has_pending = self.pending_at < self.pending_len;
            // What to watch: the master (for output, and for room when input
            // waits) until every slave is closed, and the stdin channel
            // unless input waits.
            let master = self.master_open.then(|| {
                let flags = if has_pending {
                    PollFlags::IN | PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                (self.master, flags)
            });
            let input = self
                .input
                .filter(|_| !has_pending)
                .map(|fd| (fd, PollFlags::IN));
            let Some([master_ready, input_ready]) = watch.poll([master, input]) else {
                continue;
            };
            if master_ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                self.output_once(&mut buf);
            }
            if master_ready.contains(PollFlags::OUT) {
                self.write_pending();
            }
            if !input_ready.is_empty() {
                self.input_once();
            }
        }
    }

    /// Copies one chunk of the command's output, if there is one; false
    /// when there is none now.
    fn output_once(&mut self, buf: &mut [u8; CHUNK]) -> bool {
        match rustix::io::read(self.master, &mut buf[..]) {
            Ok(0) | Err(Errno::IO) => self.master_open = false,
            Ok(n) => {
                self.forward(&buf[..n]);
                return true;
            }
            Err(Errno::INTR) => return true,
            Err(Errno::AGAIN) => {}
            Err(_) => self.master_open = false,
        }
        false
    }

    /// Writes the command's output to the stdout channel, counting what
    /// it takes when `@sent` is due.
    fn forward(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match rustix::io::write(self.output, bytes) {
                Ok(0) => return,
                Ok(n) => {
                    if self.count {
                        relay::count_stdout(n as u64);
                    }
                    bytes = &bytes[n..];
                }
                Err(Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Reads one chunk of the stdin channel: its window sizes are set, its
    /// data is typed on the terminal.
    fn input_once(&mut self) {
        let Some(input) = self.input else {
            return;
        };
        match rustix::io::read(input, &mut self.pending[..]) {
            Ok(0) => self.input = None,
            Ok(n) => {
                let decoded = self.decoder.decode(&mut self.pending[..n]);
                if let Some((rows, cols)) = decoded.window {
                    set_window(self.master, rows, cols);
                }
                self.pending_at = 0;
                self.pending_len = decoded.data;
                self.write_pending();
            }
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(_) => self.input = None,
        }
    }

    /// Gives the terminal as much pending input as it takes now.
    fn write_pending(&mut self) {
        while self.pending_at < self.pending_len {
            match rustix::io::write(
                self.master,
                &self.pending[self.pending_at..self.pending_len],
            ) {
                Ok(n) => self.pending_at += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return,
                Err(_) => {
                    // The terminal is gone: the input has nowhere to go.
                    self.pending_at = self.pending_len;
                    self.input = None;
                }
            }
        }
    }

    /// Once the command and its leftovers are gone: copies what the
    /// terminal still holds.
    pub fn finish(mut self) {
        let mut buf = [0u8; CHUNK];
        while self.master_open && self.output_once(&mut buf) {}
    }
}
