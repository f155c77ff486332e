//! The pump: copies what QEMU writes (the UARTs, the console's ports,
//! its own messages) to microrun's streams, reads the status channel
//! through the same parser and guest-event interpreter as every engine,
//! and starts stdin forwarding where the guest says the program reads.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use vmm::output::{self, OutputFailure, OutputSink, Undelivered};
use vmm::status::StatusParser;
use vmm::GuestEvents;

use crate::console_watch::ConsoleWatch;
use crate::spec::{PhaseTimes, RunOutcome, TIMEOUT_REASON};

/// How the pump loop stopped.
pub(super) enum PumpEnd {
    Status(u8),
    Timeout,
    Closed,
    /// Writing the guest's output to microrun's stdout or stderr failed.
    OutputFailed(OutputFailure),
    /// The status came, but not all the output guest-init's `@sent` says
    /// the ports took: QEMU ended first, or stopped writing.
    Short {
        code: u8,
        missing: [u64; 2],
    },
}

/// After a timeout, how long what QEMU already wrote may take to reach
/// microrun's streams (so that microrun exits within a second of the limit).
const TIMEOUT_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// After the status line, how long the pump waits for the next bytes from
/// the ports while `@sent` says more are due: QEMU writes a port's data as
/// soon as the pipe has room, so a wait this long means they will not come.
const PORT_STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The pump's pipes, in this order in [`Pump::pipes`].
pub(super) const STATUS: usize = 0;
/// ttyS1's socket.
pub(super) const STDOUT: usize = 1;
/// ttyS0: the kernel's console, guest-init's messages.
pub(super) const CONSOLE: usize = 2;
pub(super) const QEMU_ERR: usize = 3;
/// The virtio-console's stdout and stderr ports.
pub(super) const PORT_OUT: usize = 4;
pub(super) const PORT_ERR: usize = 5;

pub(super) struct Pump {
    /// The read ends, by the indices above (the ports' only with the
    /// virtio-console).
    pub pipes: [Option<OwnedFd>; 6],
    /// Bytes read from the stdout and stderr ports so far.
    pub from_ports: [u64; 2],
    /// The interpreter of guest events: `@init`, the stdin gate, and
    /// guest-init's `@sent OUT ERR` (the bytes the ports took in the
    /// guest).
    pub events: GuestEvents,
    /// The queues to microrun's own stdout and stderr: the pump never blocks
    /// in a write to a stream nobody reads, so the deadline holds.
    pub to_stdout: OutputSink,
    pub to_stderr: OutputSink,
    pub deadline: Option<Instant>,
    pub parser: StatusParser,
    pub qemu_stderr: Vec<u8>,
    pub verbose: bool,
    /// The kernel's console, watched for a failed initrd unpack.
    pub console_watch: ConsoleWatch,
    /// Where forwarded stdin may go.
    pub stdin: StdinFeeds,
}

/// The two ways into the guest for forwarded stdin (`None` where there is
/// none, or once the forwarder has started).
pub(super) struct StdinFeeds {
    /// QEMU's stdin: the virtio-console's stdin port.
    pub port: Option<io::PipeWriter>,
    /// ttyS1's socket.
    pub uart: Option<UnixStream>,
}

impl Pump {
    /// Where a pipe's bytes go: microrun's stdout for ttyS1 and the stdout
    /// port, its stderr for the others that carry guest output.
    fn sink(&self, pipe: usize) -> &OutputSink {
        match pipe {
            STDOUT | PORT_OUT => &self.to_stdout,
            _ => &self.to_stderr,
        }
    }

    /// The bytes `@sent` says are still due from each port.
    fn missing(&self) -> [u64; 2] {
        let sent = self.events.sent().unwrap_or_default();
        [0, 1].map(|i| sent[i].saturating_sub(self.from_ports[i]))
    }

    /// Copies guest output until the status line (and, with `@sent`, until
    /// the ports have delivered what it counts), the deadline, a failed
    /// output stream, or until every pipe is closed (QEMU has exited).
    pub fn until_status(&mut self, times: &mut PhaseTimes) -> PumpEnd {
        let mut open = self.pipes.each_ref().map(Option::is_some);
        let mut exit: Option<u8> = None;
        // With the status in: when the ports last delivered (or the pump
        // last finished passing their bytes on).
        let mut last_port_data = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(code) = exit {
                let missing = self.missing();
                if missing == [0, 0] {
                    return PumpEnd::Status(code);
                }
                if last_port_data.elapsed() >= PORT_STALL_LIMIT || !open.iter().any(|&o| o) {
                    return PumpEnd::Short { code, missing };
                }
            } else if !open.iter().any(|&o| o) {
                return PumpEnd::Closed;
            }
            let mut wait = match self.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return PumpEnd::Timeout;
                    }
                    Some(left)
                }
                None => None,
            };
            if exit.is_some() {
                let stall_left = PORT_STALL_LIMIT.saturating_sub(last_port_data.elapsed());
                wait = Some(wait.map_or(stall_left, |w| w.min(stall_left)));
            }
            let wait_ms = wait.map_or(-1, |w| w.as_millis().min(i32::MAX as u128) as i32 + 1);
            let fds: [RawFd; 6] = std::array::from_fn(|i| match (&self.pipes[i], open[i]) {
                (Some(fd), true) => fd.as_raw_fd(),
                _ => -1,
            });
            let mut pollfds = fds.map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries
            // that lives across the call.
            let ready = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as _, wait_ms) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return PumpEnd::Closed;
            }
            for (i, pfd) in pollfds.iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                let n = read_some(fds[i], &mut buf);
                if n == 0 {
                    open[i] = false;
                    continue;
                }
                let data = &buf[..n];
                let sink = match i {
                    STATUS => {
                        let now = Instant::now();
                        let mut reader = None;
                        let events = &mut self.events;
                        let code = self.parser.feed(data, |line| {
                            reader = reader.or(events.line(line, now));
                        });
                        times.init = events.init();
                        if let Some(reader) = reader {
                            self.start_stdin(reader);
                        }
                        if let Some(c) = code {
                            times.status = Some(Instant::now());
                            let [out, err] = self.missing();
                            if out + err > 0 {
                                log::debug!(
                                    "status {c} in; {out} bytes of stdout and {err} of stderr \
                                     still due from the ports"
                                );
                            }
                            exit = Some(c);
                            last_port_data = Instant::now();
                            // Nothing after the status line matters.
                            open[STATUS] = false;
                        }
                        continue;
                    }
                    QEMU_ERR => {
                        if self.verbose {
                            let _ = self.to_stderr.write_until(data, self.deadline);
                        }
                        if self.qemu_stderr.len() < 64 * 1024 {
                            self.qemu_stderr.extend_from_slice(data);
                        }
                        continue;
                    }
                    CONSOLE => {
                        self.console_watch.feed(data);
                        &self.to_stderr
                    }
                    _ => self.sink(i),
                };
                match sink.write_until(data, self.deadline) {
                    Ok(()) => {}
                    Err(Undelivered::Failed(failure)) => return PumpEnd::OutputFailed(failure),
                    Err(Undelivered::Deadline | Undelivered::Aborted) => return PumpEnd::Timeout,
                }
                if i == PORT_OUT || i == PORT_ERR {
                    self.from_ports[i - PORT_OUT] += n as u64;
                    last_port_data = Instant::now();
                }
            }
        }
    }

    /// Starts copying microrun's stdin to where the program reads it
    /// (once; the other way in is closed). The thread is detached: it may
    /// be blocked reading stdin when the run ends.
    fn start_stdin(&mut self, reader: vmm::StdinReader) {
        let port = self.stdin.port.take();
        let uart = self.stdin.uart.take();
        let feed: Option<Box<dyn Write + Send>> = match reader {
            vmm::StdinReader::ConsolePort => port.map(|p| Box::new(p) as _),
            vmm::StdinReader::Uart => uart.map(|u| Box::new(u) as _),
        };
        if let Some(mut feed) = feed {
            let spawned = std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    let _ = io::copy(&mut io::stdin().lock(), &mut feed);
                });
            if let Err(e) = spawned {
                log::warn!("cannot forward stdin: {e}");
            }
        }
    }

    /// After QEMU is gone: everything it wrote to the UARTs and the ports
    /// before the end is still in the pipes, and goes on to microrun's
    /// streams within the deadline (after a timeout, within a short grace).
    pub fn drain_outputs(&mut self, end: &PumpEnd) -> Result<(), Undelivered> {
        let deadline = match end {
            PumpEnd::Timeout => Some(Instant::now() + TIMEOUT_DRAIN_GRACE),
            PumpEnd::OutputFailed(failure) => return Err(Undelivered::Failed(failure.clone())),
            _ => self.deadline,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for index in [STDOUT, PORT_OUT, CONSOLE, PORT_ERR] {
            let Some(fd) = &self.pipes[index] else {
                continue;
            };
            let sink = self.sink(index);
            loop {
                let n = read_some(fd.as_raw_fd(), &mut buf);
                if n == 0 {
                    break;
                }
                if let Err(e) = sink.write_until(&buf[..n], deadline) {
                    result = result.and(Err(e));
                    break;
                }
            }
        }
        result = result.and(output::drain_all(
            &[&self.to_stdout, &self.to_stderr],
            deadline,
        ));
        if let Some(qemu_err) = &self.pipes[QEMU_ERR] {
            loop {
                let n = read_some(qemu_err.as_raw_fd(), &mut buf);
                if n == 0 || self.qemu_stderr.len() >= 64 * 1024 {
                    break;
                }
                self.qemu_stderr.extend_from_slice(&buf[..n]);
            }
        }
        match end {
            // The run had already timed out: it stays a timeout.
            PumpEnd::Timeout => Ok(()),
            _ => result,
        }
    }
}

pub(super) fn outcome(
    end: PumpEnd,
    wait: io::Result<std::process::ExitStatus>,
    qemu_stderr: &[u8],
    times: PhaseTimes,
) -> RunOutcome {
    let (exit_code, reason) = match end {
        PumpEnd::Status(code) => (code, None),
        PumpEnd::Timeout => (124, Some(TIMEOUT_REASON.to_string())),
        // Quiet, with 128 + SIGPIPE, as a program in a pipeline ends.
        PumpEnd::OutputFailed(f) if f.is_closed_reader() => (128 + libc::SIGPIPE as u8, None),
        PumpEnd::OutputFailed(f) => (125, Some(format!("{f}; QEMU was stopped"))),
        PumpEnd::Short { code, missing } => (
            125,
            Some(format!(
                "the program ended with status {code}, but {} bytes of its stdout and {} of \
                 its stderr never came out of QEMU's virtio-serial ports",
                missing[0], missing[1]
            )),
        ),
        PumpEnd::Closed => {
            let how = match wait {
                Ok(s) if s.signal().is_some() => {
                    format!("QEMU was killed by signal {}", s.signal().unwrap_or(0))
                }
                Ok(s) => format!(
                    "the VM ended without reporting a status (QEMU exited with {}: guest reset, power-off or kernel panic)",
                    s.code().unwrap_or(-1)
                ),
                Err(e) => format!("cannot wait for QEMU: {e}"),
            };
            let text = String::from_utf8_lossy(qemu_stderr);
            let text = text.trim();
            let reason = if text.is_empty() {
                how
            } else {
                format!("{how}; QEMU said:\n{text}")
            };
            (125, Some(reason))
        }
    };
    RunOutcome {
        exit_code,
        reason,
        times,
        unpack_failure: None,
    }
}

/// Reads what is there from `fd`, one of the pump's own open pipes; 0 at
/// end of file or on error.
fn read_some(fd: RawFd, buf: &mut [u8]) -> usize {
    crate::engine::read_retrying(fd, buf).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_that_closes_without_status_is_125_with_qemus_words() {
        let o = outcome(
            PumpEnd::Closed,
            Ok(std::process::ExitStatus::from_raw(1 << 8)),
            b"qemu: could not load kernel\n",
            PhaseTimes::default(),
        );
        assert_eq!(o.exit_code, 125);
        let r = o.reason.unwrap();
        assert!(
            r.contains("without reporting a status") && r.contains("could not load kernel"),
            "{r}"
        );
        let killed = outcome(
            PumpEnd::Closed,
            Ok(std::process::ExitStatus::from_raw(9)),
            b"",
            PhaseTimes::default(),
        );
        assert!(killed.reason.unwrap().contains("signal 9"));
        assert_eq!(
            outcome(
                PumpEnd::Timeout,
                Ok(std::process::ExitStatus::from_raw(9)),
                b"",
                PhaseTimes::default()
            )
            .exit_code,
            124
        );
        assert_eq!(
            outcome(
                PumpEnd::Status(3),
                Ok(std::process::ExitStatus::from_raw(9)),
                b"",
                PhaseTimes::default()
            )
            .exit_code,
            3
        );
    }
}
