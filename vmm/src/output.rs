//! Guest output on its way to the host: a bounded queue per stream, emptied
//! by a writer thread of its own.
//!
//! A device never calls `write(2)` on the host's stdout or stderr itself: a
//! full pipe would hold its vCPU thread in the kernel, where no signal gets
//! it out (the write is retried after EINTR), and `--timeout` could not stop
//! the VM. A device puts bytes into an [`OutputSink`] instead; when the
//! queue is full it waits (back-pressure: the guest goes as fast as the
//! reader), but only until the VM is stopped ([`OutputSink::abort`]). The
//! queue is bounded, so a guest flooding its output costs the host at most
//! [`OutputSink`]'s capacity in memory. A write error ends the sink: the
//! error is kept for the VMM to report ([`OutputSink::failure`]), and what is
//! written after it is dropped, so producers never wait for a dead stream.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The most the writer thread takes from the queue for one `write(2)`.
const CHUNK: usize = 64 * 1024;

/// The queue size the VMM uses for the guest's streams.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// How a stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFailure {
    /// The stream's name, such as `stdout`.
    pub stream: &'static str,
    /// The error's kind; `BrokenPipe` when the reader went away.
    pub kind: io::ErrorKind,
    /// The error, as the OS words it.
    pub message: String,
}

impl OutputFailure {
    /// Whether the reader closed the stream (EPIPE): not an error to
    /// report, as a program in a pipeline ends quietly when its reader does.
    pub fn is_closed_reader(&self) -> bool {
        self.kind == io::ErrorKind::BrokenPipe
    }
}

impl std::fmt::Display for OutputFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot write the program's {}: {}",
            self.stream, self.message
        )
    }
}

/// Why [`OutputSink::drain`] or [`OutputSink::write_until`] returned before
/// everything was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// The deadline passed first.
    Deadline,
    /// The stream failed.
    Failed(OutputFailure),
    /// The sink was aborted.
    Aborted,
}

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// The writer thread holds bytes it took from the queue.
    writing: bool,
    failure: Option<OutputFailure>,
    aborted: bool,
    /// No handle is left: the writer thread ends once the queue is empty.
    closed: bool,
}

struct Shared {
    name: &'static str,
    capacity: usize,
    state: Mutex<State>,
    /// Signalled when bytes arrive, room appears, or the state changes.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on one output stream's queue. Clones share the queue; the writer
/// thread ends when the last handle is dropped and the queue is empty.
pub struct OutputSink {
    shared: Arc<Shared>,
    /// Only the handles (not the writer thread) count towards closing.
    _handle: Arc<HandleToken>,
}

struct HandleToken(Arc<Shared>);

impl Drop for HandleToken {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.changed.notify_all();
    }
}

impl Clone for OutputSink {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _handle: self._handle.clone(),
        }
    }
}

impl OutputSink {
    /// Starts a writer thread named `output-<name>` that copies the queue to
    /// `out`. The queue holds at most `capacity` bytes.
    pub fn spawn(
        name: &'static str,
        out: Box<dyn Write + Send>,
        capacity: usize,
    ) -> io::Result<Self> {
        Self::spawn_filtered(name, out, capacity, None)
    }

    /// [`OutputSink::spawn`], with the writer thread under `filter` (the
    /// output thread's seccomp filter, [`crate::seccomp`]) from its start.
    pub fn spawn_filtered(
        name: &'static str,
        out: Box<dyn Write + Send>,
        capacity: usize,
        filter: Option<seccompiler::BpfProgram>,
    ) -> io::Result<Self> {
        let (sink, pending) = Self::spawn_unconfirmed(name, out, capacity, filter)?;
        pending.confirm()?;
        Ok(sink)
    }

    /// [`OutputSink::spawn_filtered`], without waiting for the writer
    /// thread's filter (see [`crate::seccomp::spawn_unconfirmed`]).
    pub fn spawn_unconfirmed(
        name: &'static str,
        mut out: Box<dyn Write + Send>,
        capacity: usize,
        filter: Option<seccompiler::BpfProgram>,
    ) -> io::Result<(Self, crate::seccomp::PendingFilter)> {
        let shared = Arc::new(Shared {
            name,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let (_, pending) = crate::seccomp::spawn_unconfirmed(
            format!("output-{name}"),
            crate::seccomp::ThreadKind::Output,
            filter,
            move || writer_loop(&thread_shared, &mut *out),
        )?;
        let sink = Self {
            _handle: Arc::new(HandleToken(shared.clone())),
            shared,
        };
        Ok((sink, pending))
    }

    /// Queues all of `bytes`, waiting for room as long as it takes, until
    /// `deadline` passes or the sink is aborted or fails. Bytes that cannot
    /// be delivered are dropped.
    pub fn write_until(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), Undelivered> {
        let mut rest = bytes;
        let mut state = self.shared.lock();
        while !rest.is_empty() {
            if let Some(failure) = &state.failure {
                return Err(Undelivered::Failed(failure.clone()));
            }
            if state.aborted {
                return Err(Undelivered::Aborted);
            }
            let room = self.shared.capacity.saturating_sub(state.queue.len());
            if room > 0 {
                let n = room.min(rest.len());
                state.queue.extend(&rest[..n]);
                rest = &rest[n..];
                self.shared.changed.notify_all();
                continue;
            }
            state = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Undelivered::Deadline);
                    }
                    self.shared
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        Ok(())
    }

    /// Queues `bytes` only if they all fit now; never waits.
    pub fn try_write(&self, bytes: &[u8]) -> bool {
        let mut state = self.shared.lock();
        if state.failure.is_some()
            || state.aborted
            || state.queue.len() + bytes.len() > self.shared.capacity
        {
            return false;
        }
        state.queue.extend(bytes);
        self.shared.changed.notify_all();
        true
    }

    /// Waits until everything queued has been written, the stream failed,
    /// or `deadline` passed.
    pub fn drain(&self, deadline: Option<Instant>) -> Result<(), Undelivered> {
        let mut state = self.shared.lock();
        loop {
            if let Some(failure) = &state.failure {
                return Err(Undelivered::Failed(failure.clone()));
            }
            if state.queue.is_empty() && !state.writing {
                return Ok(());
            }
            state = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Undelivered::Deadline);
                    }
                    self.shared
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Stops producers from waiting: writes now return at once, and what
    /// does not fit is dropped. What is queued is still written.
    pub fn abort(&self) {
        self.shared.lock().aborted = true;
        self.shared.changed.notify_all();
    }

    /// The stream's failure, if it failed.
    pub fn failure(&self) -> Option<OutputFailure> {
        self.shared.lock().failure.clone()
    }

    /// Bytes waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// The stream's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }
}

/// Devices write through `std::io::Write`. `flush` does not wait for the
/// writer thread: [`OutputSink::drain`] does, where the VMM decides to.
impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.write_until(buf, None) {
            // Dropped after an abort or a failure: the VM is ending, and
            // the failure is reported by the VMM, not by each device.
            Ok(()) | Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn writer_loop(shared: &Shared, out: &mut dyn Write) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        {
            let mut state = shared.lock();
            state.writing = false;
            shared.changed.notify_all();
            while state.queue.is_empty() {
                if state.closed {
                    return;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            let n = state.queue.len().min(CHUNK);
            chunk.clear();
            chunk.extend(state.queue.drain(..n));
            state.writing = true;
            // Room appeared.
            shared.changed.notify_all();
        }
        if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
            let mut state = shared.lock();
            state.writing = false;
            state.queue.clear();
            state.failure = Some(OutputFailure {
                stream: shared.name,
                kind: e.kind(),
                message: e.to_string(),
            });
            shared.changed.notify_all();
            // Nothing more is written; producers see the failure and drop
            // their bytes. The thread ends when the handles are gone.
            while !state.closed {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            return;
        }
    }
}

/// Drains `sinks` in turn within `deadline`; the first stream that cannot
/// deliver decides the result.
pub fn drain_all(sinks: &[&OutputSink], deadline: Option<Instant>) -> Result<(), Undelivered> {
    sinks.iter().try_for_each(|sink| sink.drain(deadline))
}

/// An unbuffered writer on a file descriptor the process keeps open (such
/// as 1 or 2), bypassing `std::io::Stdout`'s lock and buffer: at exit, std
/// flushes its own buffer, which must never hold guest bytes that a full
/// pipe would make it wait for.
#[derive(Debug, Clone, Copy)]
pub struct FdWriter(pub std::os::fd::RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes; the
            // descriptor is one the process keeps open for its lifetime.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);
    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that blocks until told to go on, like a full pipe.
    struct Stuck(mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Failing(io::ErrorKind);
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_arrive_in_order_and_drain_waits_for_them() {
        let out = Collect::default();
        let mut sink = OutputSink::spawn("t", Box::new(out.clone()), 7).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        for piece in data.chunks(3) {
            sink.write_all(piece).unwrap();
        }
        sink.drain(None).unwrap();
        assert_eq!(*out.0.lock().unwrap(), data);
    }

    #[test]
    fn a_full_queue_holds_the_producer_until_abort() {
        let (_go, stuck) = mpsc::channel();
        let sink = OutputSink::spawn("t", Box::new(Stuck(stuck)), 16).unwrap();
        let producer = sink.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || producer.write_until(&[0u8; 4096], None));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!thread.is_finished(), "the producer must wait for room");
        // Room never comes (the writer is stuck), but abort frees it.
        sink.abort();
        assert_eq!(thread.join().unwrap(), Err(Undelivered::Aborted));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The memory held is the queue's capacity, not what was offered.
        assert!(sink.queued() <= 16);
        assert_eq!(
            sink.drain(Some(Instant::now() + Duration::from_millis(20))),
            Err(Undelivered::Deadline)
        );
    }

    #[test]
    fn write_until_gives_up_at_its_deadline() {
        let (_go, stuck) = mpsc::channel();
        let sink = OutputSink::spawn("t", Box::new(Stuck(stuck)), 8).unwrap();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            sink.write_until(&[1u8; 100], Some(deadline)),
            Err(Undelivered::Deadline)
        );
        assert!(!sink.try_write(&[1u8; 9]));
    }

    #[test]
    fn a_write_error_is_kept_and_later_bytes_are_dropped() {
        let mut sink =
            OutputSink::spawn("stdout", Box::new(Failing(io::ErrorKind::StorageFull)), 64).unwrap();
        sink.write_all(b"lost").unwrap();
        let Err(Undelivered::Failed(failure)) = sink.drain(None) else {
            panic!("the failure must be reported");
        };
        assert_eq!(failure.stream, "stdout");
        assert!(!failure.is_closed_reader());
        assert!(failure
            .to_string()
            .starts_with("cannot write the program's stdout: "));
        // Producers never wait on a dead stream.
        sink.write_all(&[0u8; 1000]).unwrap();
        assert_eq!(sink.failure(), Some(failure));
        let closed =
            OutputSink::spawn("x", Box::new(Failing(io::ErrorKind::BrokenPipe)), 8).unwrap();
        assert!(closed.try_write(b"a"));
        assert!(matches!(closed.drain(None), Err(Undelivered::Failed(f)) if f.is_closed_reader()));
    }
}
