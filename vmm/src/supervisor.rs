//! The run loop's supervisor: starts the vCPU threads, waits for the end
//! (a vCPU's report, the deadline, an output failure), stops and joins the
//! vCPUs, then delivers what the guest wrote to the caller's writers.
//! Everything here runs on the caller's thread, under the supervisor's
//! seccomp filter once the vCPUs have started.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::builder::{Outputs, VmDevices};
use crate::devices::bus::lock;
use crate::exit_counts::ExitCounts;
use crate::memory::GuestMemory;
use crate::output::{self, OutputSink, Undelivered};
use crate::vcpu::{self, VcpuContext, VcpuEnd, VcpuMessage};
use crate::{host_err, seccomp, GuestEvents, StdinReader, Timings, VmEnd, VmmError};

/// The queues between the devices and the caller's writers.
pub(crate) struct Sinks {
    stdout: OutputSink,
    console: OutputSink,
    /// The writer threads' filters, confirmed before the guest runs.
    pending: Vec<seccomp::PendingFilter>,
}

impl Sinks {
    /// Starts a writer thread (under the output filter, if any) for each
    /// of the caller's writers.
    pub(crate) fn spawn(
        stdout: Box<dyn Write + Send>,
        console: Box<dyn Write + Send>,
        filters: Option<&seccomp::Filters>,
    ) -> Result<Self, VmmError> {
        let spawn = |name, out, what| {
            let filter = filters.map(|f| f.output.clone());
            OutputSink::spawn_unconfirmed(name, out, output::DEFAULT_CAPACITY, filter)
                .map_err(host_err(what))
        };
        let (stdout, stdout_filter) = spawn("stdout", stdout, "start the stdout writer thread")?;
        let (console, console_filter) = spawn("stderr", console, "start the stderr writer thread")?;
        Ok(Sinks {
            stdout,
            console,
            pending: vec![stdout_filter, console_filter],
        })
    }

    /// Waits until both writer threads have their filters.
    fn confirm_filters(&mut self) -> Result<(), VmmError> {
        for pending in self.pending.drain(..) {
            pending
                .confirm()
                .map_err(host_err("start an output writer thread"))?;
        }
        Ok(())
    }

    /// Writers into the queues, for one set of devices (the UARTs, or the
    /// virtio-console's ports): every device writes to the same two.
    pub(crate) fn outputs(&self) -> Outputs {
        Outputs {
            console: Box::new(self.console.clone()),
            stdout: Box::new(self.stdout.clone()),
        }
    }

    fn both(&self) -> [&OutputSink; 2] {
        [&self.stdout, &self.console]
    }
}

/// The vCPU kick: a signal whose handler does nothing, so that its only
/// effect is to make a vCPU thread's `KVM_RUN` return (EINTR).
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn vcpu_kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// How often the supervising thread looks at the end slot and the output
/// streams while it waits for a message.
const SUPERVISOR_TICK: Duration = Duration::from_millis(50);

/// What the supervisor makes of the guest's events: the interpreter, and
/// the gate that opens the stdin forwarder (`None` when stdin is not
/// forwarded, or once it is open).
pub(crate) struct Guest {
    pub(crate) events: GuestEvents,
    pub(crate) stdin_gate: Option<mpsc::Sender<StdinReader>>,
}

/// What confines a run: its deadline and its threads' seccomp filters.
pub(crate) struct Limits<'a> {
    pub(crate) deadline: Option<Instant>,
    pub(crate) filters: Option<&'a seccomp::Filters>,
}

/// The vCPU threads, started (each under its seccomp filter) while the VM
/// is being set up, so that their start costs nothing on the way to the
/// first `KVM_RUN`; each waits for its vCPU and context, and ends without
/// running anything when the sender is dropped (a set-up that failed).
pub(crate) struct VcpuThreads {
    starts: Vec<mpsc::SyncSender<(kvm_ioctls::VcpuFd, VcpuContext)>>,
    threads: Vec<JoinHandle<Option<()>>>,
    /// Their filters, confirmed before the guest runs.
    pending: Vec<seccomp::PendingFilter>,
}

impl VcpuThreads {
    /// Starts `count` vCPU threads, without waiting for their filters
    /// (which [`run_vcpus`] does, before the guest runs).
    pub(crate) fn spawn(count: u8, filters: Option<&seccomp::Filters>) -> Result<Self, VmmError> {
        let mut starts = Vec::with_capacity(usize::from(count));
        let mut threads = Vec::with_capacity(usize::from(count));
        let mut pending = Vec::with_capacity(usize::from(count));
        for id in 0..count {
            let (start, wait_for_start) =
                mpsc::sync_channel::<(kvm_ioctls::VcpuFd, VcpuContext)>(1);
            // On an error, dropping `starts` ends the threads started so far.
            let (handle, filter) = seccomp::spawn_unconfirmed(
                format!("vcpu{id}"),
                seccomp::ThreadKind::Vcpu,
                filters.map(|f| f.vcpu.clone()),
                move || {
                    if let Ok((fd, ctx)) = wait_for_start.recv() {
                        vcpu::run_vcpu(fd, id, ctx);
                    }
                },
            )
            .map_err(host_err("start a vCPU thread"))?;
            starts.push(start);
            threads.push(handle);
            pending.push(filter);
        }
        Ok(VcpuThreads {
            starts,
            threads,
            pending,
        })
    }
}

/// Runs the vCPUs on their threads and supervises them until the VM ends:
/// a vCPU reports the end, the deadline passes, or an output stream fails.
/// This thread never writes to the caller's streams itself (the guest's
/// output goes through [`Sinks`], the log through the caller's logger), so
/// a stream nobody reads cannot keep it from enforcing the deadline.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_vcpus(
    vcpu_threads: VcpuThreads,
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    devices: &VmDevices,
    sinks: &mut Sinks,
    mem: &GuestMemory,
    limits: Limits<'_>,
    guest: Guest,
    timings: &mut Timings,
) -> Result<(VmEnd, ExitCounts), VmmError> {
    let Limits { deadline, filters } = limits;
    let Guest {
        mut events,
        mut stdin_gate,
    } = guest;
    let VcpuThreads {
        starts,
        threads,
        pending,
    } = vcpu_threads;
    static HANDLER: Once = Once::new();
    let mut handler_result = Ok(());
    HANDLER
        .call_once(|| handler_result = register_signal_handler(vcpu_kick_signal(), kick_handler));
    handler_result.map_err(|e| host_err("install the vCPU kick signal handler")(e.into()))?;
    // Every thread's filter is in place before the guest runs.
    let confirmed = sinks.confirm_filters().and_then(|()| {
        pending
            .into_iter()
            .try_for_each(|p| p.confirm().map_err(host_err("start a vCPU thread")))
    });
    if let Err(e) = confirmed {
        drop(starts);
        stop_vcpus(&AtomicBool::new(true), sinks, threads, None);
        return Err(e);
    }

    // Bounded: a guest that floods events only loses events, never grows
    // the VMM's memory. The end itself has a slot of its own.
    let (tx, rx) = mpsc::sync_channel(64);
    let ended = Arc::new(Mutex::new(None::<VcpuEnd>));
    let stop = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let exits = Arc::new(Mutex::new(ExitCounts::default()));
    // No vCPU runs the guest before every thread's filter is in place:
    // each has installed its own, and waits for its start, which never
    // comes (the sender is dropped) if the supervisor's fails.
    let mut gos = Vec::new();
    for (fd, start) in vcpu_fds.into_iter().zip(starts) {
        let ctx = VcpuContext {
            devices: devices.map.clone(),
            stop: stop.clone(),
            events: tx.clone(),
            ended: ended.clone(),
            timed_out: timed_out.clone(),
            mem: mem.clone(),
            exits: exits.clone(),
        };
        gos.push((start, fd, ctx));
    }
    drop(tx);
    if let Some(filters) = filters {
        if let Err(e) = seccomp::install(seccomp::ThreadKind::Supervisor, &filters.supervisor) {
            drop(gos);
            stop_vcpus(&stop, sinks, threads, None);
            return Err(e.into());
        }
    }
    for (start, fd, ctx) in gos {
        let _ = start.send((fd, ctx));
    }

    let mut ended_by = None;
    let end = loop {
        if let Some(end) = lock(&ended).take() {
            if matches!(end.end, VmEnd::Status(_)) {
                timings.status = Some(end.at);
            }
            ended_by = Some(usize::from(end.vcpu));
            break end.end;
        }
        if let Some(failure) = sinks.both().iter().find_map(|s| s.failure()) {
            break VmEnd::OutputFailed(failure);
        }
        let mut wait = SUPERVISOR_TICK;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break VmEnd::Timeout;
            }
            wait = wait.min(left);
        }
        match rx.recv_timeout(wait) {
            Ok(message) => {
                if let Some(reader) = take_message(message, &mut events, timings) {
                    if let Some(gate) = stdin_gate.take() {
                        let _ = gate.send(reader);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(end) = lock(&ended).take() {
                    ended_by = Some(usize::from(end.vcpu));
                    break end.end;
                }
                break VmEnd::GuestError("every vCPU thread stopped without a result".into());
            }
        }
    };
    timed_out.store(end == VmEnd::Timeout, Ordering::Release);
    stop_vcpus(&stop, sinks, threads, ended_by);
    // What the vCPUs sent before the end but this loop had not read yet
    // (the end has a slot of its own and can overtake them): the first run
    // and `@init` still count for the timings.
    while let Ok(message) = rx.try_recv() {
        let _ = take_message(message, &mut events, timings);
    }
    if end == VmEnd::Timeout && log::log_enabled!(log::Level::Debug) {
        log::debug!("at the timeout, {}", devices.describe_interrupts());
    }
    let exits = lock(&exits).clone();
    Ok((end, exits))
}

/// Takes one vCPU message into the timings and the event interpreter;
/// returns the stdin reader an event opens, if one does.
fn take_message(
    message: VcpuMessage,
    events: &mut GuestEvents,
    timings: &mut Timings,
) -> Option<StdinReader> {
    match message {
        VcpuMessage::FirstRun(at) => {
            timings.first_run = Some(at);
            None
        }
        VcpuMessage::Event(name, at) => {
            let reader = events.event(&name, at);
            timings.init_event = events.init();
            reader
        }
        VcpuMessage::Ended => None,
    }
}

/// How long stopping the vCPUs may take before the VMM stops waiting for
/// them (a thread stuck in the host kernel is left behind; the caller is
/// about to exit, and exiting tears the VM down). A kicked vCPU leaves
/// KVM_RUN within microseconds on hardware; this bounds how far past
/// `--timeout` a stuck one can delay the exit.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// Stops and joins every vCPU thread: releases any that waits for room in
/// an output queue, sets `stop`, then signals each thread until it has left
/// `KVM_RUN` (a signal that lands just before the ioctl is retried). The
/// thread that reported the end, `ended_by`, is already returning and is
/// joined without polling.
fn stop_vcpus(
    stop: &AtomicBool,
    sinks: &Sinks,
    threads: Vec<JoinHandle<Option<()>>>,
    ended_by: Option<usize>,
) {
    stop.store(true, Ordering::Release);
    for sink in sinks.both() {
        sink.abort();
    }
    let give_up = Instant::now() + STOP_WAIT;
    for (id, thread) in threads.into_iter().enumerate() {
        while !thread.is_finished() {
            if Instant::now() >= give_up {
                log::warn!("vCPU {id} does not stop; leaving it behind");
                break;
            }
            if Some(id) != ended_by {
                let _ = thread.kill(vcpu_kick_signal());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// How long the output may take to drain after a timeout (the VM is
/// already stopped), so that microrun exits within a second of the limit.
const TIMEOUT_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Waits until everything the guest wrote has reached the caller's writers
/// (before the caller acts on the status), within the deadline; returns
/// how the run ended once its output is accounted for.
pub(crate) fn deliver_output(end: VmEnd, sinks: &Sinks, deadline: Option<Instant>) -> VmEnd {
    match end {
        VmEnd::OutputFailed(_) => return end,
        VmEnd::Timeout => {
            // Whatever can still be written in a moment is; the run is over.
            let grace = Instant::now() + TIMEOUT_DRAIN_GRACE;
            let _ = output::drain_all(&sinks.both(), Some(grace));
            return end;
        }
        _ => {}
    }
    match output::drain_all(&sinks.both(), deadline) {
        Ok(()) => end,
        Err(Undelivered::Failed(failure)) => VmEnd::OutputFailed(failure),
        // The guest is done, but its output is stuck (nobody reads the
        // pipe) past the limit: the run timed out all the same.
        Err(Undelivered::Deadline | Undelivered::Aborted) => VmEnd::Timeout,
    }
}

/// When a run that started at `start` with `timeout` must end: `None` for
/// no limit, and also for a timeout so long that the clock cannot
/// represent its end (the run then has no limit, rather than panicking).
/// Every engine counts from the process's start, so the whole run, set-up
/// included, stays within the limit.
pub fn deadline_after(start: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| start.checked_add(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrepresentable_deadlines_mean_no_limit() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, None), None);
        assert_eq!(deadline_after(now, Some(Duration::MAX)), None);
        let soon = deadline_after(now, Some(Duration::from_secs(1))).unwrap();
        assert!(soon > Instant::now());
    }
}
