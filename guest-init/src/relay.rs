//! The output relay (`ports=virtio-relay`, which the qemu engine asks for):
//! the command's stdout and stderr are pipes that guest-init copies to the
//! virtio-console's ports, counting what each port took. Before the status
//! line, `finish` reports the counts on ttyS2 as `@sent OUT ERR`, and the
//! host waits until that many bytes have come out of each port before it
//! ends the VM.
//!
//! Why the count: QEMU's virtio-serial writes a port's data to its chardev
//! without blocking, keeps what the host's pipe does not take at once, and
//! hands the guest its buffers back only once written; Linux's driver
//! returns from `write` on a port without waiting for that. So the status
//! line, on another device, can arrive while output is still held in QEMU.
//! (microrun's own VMM copies a port's data out before the guest's write
//! returns, so its runs need no relay.)
//!
//! Everything is bounded: one chunk of [`CHUNK`] bytes on the stack, and
//! the copying ends when the command does; what is still in the pipes then
//! is copied once the leftover processes are gone, without waiting for
//! more.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use rustix::process::{Pid, PidfdFlags};
use rustix::thread::Timespec;

/// The most bytes read from a pipe at once; a port takes at most 32 KiB
/// per write.
const CHUNK: usize = 32 * 1024;
/// The pipes' capacity, asked for (the kernel's default is 64 KiB): fewer
/// wake-ups for a command that writes a lot. Failing to get it is fine.
const PIPE_SIZE: usize = 256 * 1024;
/// guest-init's nice value while it relays (set after the fork, so the
/// command keeps 0).
const RELAY_NICE: i32 = 19;
/// How often orphans are reaped while the command runs (it ending wakes
/// the relay at once through its pidfd).
const REAP_INTERVAL: Timespec = Timespec {
    tv_sec: 1,
    tv_nsec: 0,
};
/// Without a pidfd (a kernel older than 5.3), how often to look whether
/// the command has ended.
const NO_PIDFD_INTERVAL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 10_000_000,
};

/// The command a relay copies for: its pidfd where the kernel has them (its
/// end wakes the relay at once), and how long a poll may wait before the
/// relay looks at the command again. Shared with the terminal's relay.
pub struct Watch {
    pidfd: Option<OwnedFd>,
    interval: Timespec,
}

impl Watch {
    /// Watches the process `command`.
    pub fn command(command: i32) -> Watch {
        let pidfd = Pid::from_raw(command)
            .and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok());
        let interval = if pidfd.is_some() {
            REAP_INTERVAL
        } else {
            NO_PIDFD_INTERVAL
        };
        Watch { pidfd, interval }
    }

    /// Polls the descriptors in `slots` (with their events) and the
    /// command's pidfd, for at most the interval; returns each slot's ready
    /// events (none for an empty slot), or `None` when there is nothing to
    /// act on: the wait ended empty (the interval, a signal), poll failed,
    /// or there was nothing to poll (both after a short pause).
    pub fn poll<'a>(
        &'a self,
        slots: [Option<(BorrowedFd<'a>, PollFlags)>; 2],
    ) -> Option<[PollFlags; 2]> {
        // The slots in use, then the pidfd, each with its slot (2: the
        // pidfd).
        let mut watched: [Option<(BorrowedFd<'a>, PollFlags, usize)>; 3] = [None; 3];
        let mut n = 0;
        for (slot, entry) in slots.into_iter().enumerate() {
            if let Some((fd, flags)) = entry {
                watched[n] = Some((fd, flags, slot));
                n += 1;
            }
        }
        if let Some(pidfd) = &self.pidfd {
            watched[n] = Some((pidfd.as_fd(), PollFlags::IN, 2));
            n += 1;
        }
        let Some(first) = watched[0] else {
            // Nothing to watch: only the command's end is left to see.
            let _ = rustix::thread::nanosleep(&NO_PIDFD_INTERVAL);
            return None;
        };
        // Entries past `n` repeat the first; they are never passed.
        let mut polled: [PollFd<'a>; 3] = core::array::from_fn(|i| {
            let (fd, flags, _) = watched[i].unwrap_or(first);
            PollFd::from_borrowed_fd(fd, flags)
        });
        match rustix::event::poll(&mut polled[..n], Some(&self.interval)) {
            Ok(0) | Err(Errno::INTR) => return None,
            Ok(_) => {}
            Err(_) => {
                let _ = rustix::thread::nanosleep(&NO_PIDFD_INTERVAL);
                return None;
            }
        }
        let mut ready = [PollFlags::empty(); 2];
        for (entry, fd) in watched.iter().zip(&polled).take(n) {
            if let Some((_, _, slot)) = *entry {
                if slot < 2 {
                    ready[slot] = fd.revents();
                }
            }
        }
        Some(ready)
    }
}

/// Whether a relay was set up, and the bytes each port took: what `@sent`
/// reports (kept here, so that a panic's `finish` reports them too).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static SENT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The byte counts for `@sent` (stdout, stderr), if output was relayed.
pub fn sent() -> Option<(u64, u64)> {
    ACTIVE.load(Ordering::Relaxed).then(|| {
        (
            SENT[0].load(Ordering::Relaxed),
            SENT[1].load(Ordering::Relaxed),
        )
    })
}

/// Counts `n` more bytes taken by the stdout port (the terminal's relay,
/// `tty.rs`, which writes there itself), and turns `@sent` on.
pub fn count_stdout(n: u64) {
    ACTIVE.store(true, Ordering::Relaxed);
    SENT[0].fetch_add(n, Ordering::Relaxed);
}

/// The command's ends of the pipes, close-on-exec like every descriptor
/// of guest-init (the command gets them as its stdout and stderr).
pub struct Writers {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// One stream: the pipe's read end and the port it goes to.
struct Stream {
    pipe: OwnedFd,
    port: BorrowedFd<'static>,
    /// Until the pipe ends (every writer gone) or cannot be read.
    open: bool,
    /// The port refused a write: the rest is read and dropped, so the
    /// command never blocks on a full pipe.
    failed: bool,
    /// Index into [`SENT`].
    slot: usize,
    /// Whether to try `splice` first.
    splice: bool,
}

impl Stream {
    /// Copies one chunk, if the pipe has one: spliced (the whole pipe's
    /// contents become one buffer chain, one notification to the host),
    /// else read and written. False once there is nothing to copy now: the
    /// pipe is empty (`EAGAIN`, when non-blocking), ended, or unreadable.
    fn copy_once(&mut self, buf: &mut [u8; CHUNK]) -> bool {
        if !self.failed && self.splice {
            match rustix::pipe::splice(
                &self.pipe,
                None,
                self.port,
                None,
                PIPE_SIZE,
                SpliceFlags::empty(),
            ) {
                Ok(0) => {}
                Ok(n) => {
                    SENT[self.slot].fetch_add(n as u64, Ordering::Relaxed);
                    return true;
                }
                Err(Errno::INTR) => return true,
                // Not for this device or kernel: plain copies from now on.
                Err(Errno::INVAL | Errno::NOSYS) => self.splice = false,
                Err(_) => {
                    self.failed = true;
                }
            }
            // 0: the pipe was empty (the port's splice does not wait), so
            // the read below tells an end from a race.
        }
        match rustix::io::read(&self.pipe, &mut buf[..]) {
            Ok(0) => self.open = false,
            Ok(n) => {
                self.forward(&buf[..n]);
                return true;
            }
            Err(Errno::INTR) => return true,
            Err(Errno::AGAIN) => {}
            Err(_) => self.open = false,
        }
        false
    }

    /// Writes `bytes` to the port, counting what it takes.
    fn forward(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.failed {
            match rustix::io::write(self.port, bytes) {
                Ok(0) => self.failed = true,
                Ok(n) => {
                    SENT[self.slot].fetch_add(n as u64, Ordering::Relaxed);
                    bytes = &bytes[n..];
                }
                Err(Errno::INTR) => {}
                Err(_) => self.failed = true,
            }
        }
    }
}

/// The relay of both streams.
pub struct Relay {
    streams: [Stream; 2],
}

impl Relay {
    /// Creates the two pipes towards the ports `stdout` and `stderr`.
    pub fn new(
        stdout: BorrowedFd<'static>,
        stderr: BorrowedFd<'static>,
    ) -> Result<(Relay, Writers), Errno> {
        let (out_rx, out_tx) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (err_rx, err_tx) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        for pipe in [&out_tx, &err_tx] {
            let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE);
        }
        let stream = |pipe, port, slot| Stream {
            pipe,
            port,
            open: true,
            failed: false,
            slot,
            splice: true,
        };
        ACTIVE.store(true, Ordering::Relaxed);
        Ok((
            Relay {
                streams: [stream(out_rx, stdout, 0), stream(err_rx, stderr, 1)],
            },
            Writers {
                stdout: out_tx,
                stderr: err_tx,
            },
        ))
    }

    /// Copies the command's output until `ended` (which reaps children
    /// without waiting) returns the command's status.
    pub fn copy_until(&mut self, command: i32, mut ended: impl FnMut() -> Option<u8>) -> u8 {
        let watch = Watch::command(command);
        // Below the command's priority: woken at its every write, the relay
        // would move a few KiB at a time; yielding, it finds the pipe
        // fuller and splices more per notification (64 MiB in 4 KiB
        // writes under TCG: 8.7-9.0 s instead of 13.8-18.0). Output still
        // moves whenever the command blocks or the pipe fills.
        let _ = rustix::process::setpriority_process(None, RELAY_NICE);
        let mut buf = [0u8; CHUNK];
        loop {
            if let Some(status) = ended() {
                return status;
            }
            let slots = core::array::from_fn(|i| {
                let stream = &self.streams[i];
                stream.open.then(|| (stream.pipe.as_fd(), PollFlags::IN))
            });
            let Some(ready) = watch.poll(slots) else {
                continue;
            };
            for (stream, events) in self.streams.iter_mut().zip(ready) {
                if !events.is_empty() {
                    let _ = stream.copy_once(&mut buf);
                }
            }
        }
    }

    /// Once the command and its leftovers are gone: copies what is still
    /// in the pipes, without waiting for more (a process that could not be
    /// ended may still hold a pipe open).
    pub fn finish(mut self) {
        let mut buf = [0u8; CHUNK];
        for stream in &mut self.streams {
            if rustix::fs::fcntl_setfl(&stream.pipe, OFlags::NONBLOCK).is_err() {
                continue;
            }
            while stream.open && stream.copy_once(&mut buf) {}
        }
    }
}
