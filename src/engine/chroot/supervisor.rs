//! The supervisor: reads the status pipe (guest-init's ttyS2) through the
//! same parser and guest-event interpreter as the VM engines, and the
//! children's report pipe; enforces `--timeout` by killing the namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vmm::status::{StatusLine, StatusParser};
use vmm::GuestEvents;

use super::userns::{advice, UsernsSysctls};
use super::{read_fd, ChrootError};
use crate::spec::{PhaseTimes, RunOutcome, TIMEOUT_REASON};

/// The run configuration guest-init reads, in the new root.
/// How long guest-init may take to exit after it reported the status
/// before the namespace is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Turns the status and report pipes into a [`RunOutcome`].
pub(super) struct Supervisor {
    helper: libc::pid_t,
    helper_reaped: bool,
    /// The namespace's PID 1, in microrun's PID namespace.
    namespace_init: Option<libc::pid_t>,
    parser: StatusParser,
    events: GuestEvents,
    exit_status: Option<u8>,
    times: PhaseTimes,
    report: Vec<u8>,
    failure: Option<(FailureKind, String)>,
    init_wait_status: Option<i32>,
}

/// What the children report on the report pipe, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// Creating or mapping the user namespace failed.
    UserNamespace,
    /// Any later step failed.
    Setup,
}

impl Supervisor {
    pub(super) fn new(helper: libc::pid_t) -> Self {
        Self {
            helper,
            helper_reaped: false,
            namespace_init: None,
            parser: StatusParser::new(),
            events: GuestEvents::new(false, false),
            exit_status: None,
            times: PhaseTimes::default(),
            report: Vec::new(),
            failure: None,
            init_wait_status: None,
        }
    }

    pub(super) fn supervise(
        &mut self,
        status: OwnedFd,
        report: OwnedFd,
        deadline: Option<Instant>,
    ) -> Result<RunOutcome, ChrootError> {
        let mut status = Some(status);
        let mut report = Some(report);
        let mut grace_deadline = None;
        // The report pipe closes when the helper has exited, which it does
        // only after the whole PID namespace is gone.
        while let Some(report_fd) = report.as_ref() {
            let wait_until = grace_deadline.or(deadline);
            let mut fds = vec![libc::pollfd {
                fd: report_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(fd) = status.as_ref() {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let timeout_ms = match wait_until {
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ChrootError::Sys {
                    call: "poll",
                    source: error,
                });
            }
            if ready == 0 && wait_until.is_some_and(|t| Instant::now() >= t) {
                self.kill_namespace();
                if self.exit_status.is_some() {
                    break;
                }
                return Ok(self.outcome(124, Some(TIMEOUT_REASON.to_string())));
            }
            if fds.get(1).is_some_and(|p| p.revents != 0) && !self.read_status(&mut status)? {
                status = None;
            }
            if fds[0].revents != 0 && !self.read_report(report_fd)? {
                report = None;
            }
            if self.exit_status.is_some() && grace_deadline.is_none() {
                grace_deadline = Some(Instant::now() + EXIT_GRACE);
            }
        }
        // Whatever guest-init wrote before the namespace ended.
        if self.exit_status.is_none() {
            while status.is_some() {
                if !self.read_status(&mut status)? {
                    break;
                }
            }
        }
        self.finish()
    }

    /// Reads what the status pipe has; false at end of file.
    fn read_status(&mut self, status: &mut Option<OwnedFd>) -> Result<bool, ChrootError> {
        let Some(fd) = status.as_ref() else {
            return Ok(false);
        };
        let mut buf = [0u8; 512];
        let n = read_fd(fd.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        if self.exit_status.is_some() {
            return Ok(true);
        }
        let now = Instant::now();
        let (times, events) = (&mut self.times, &mut self.events);
        self.exit_status = self.parser.feed(&buf[..n], |line| {
            // Stdin is inherited here, never forwarded through events.
            let _ = events.line(line, now);
            if let StatusLine::Exit(_) = line {
                times.status = Some(now);
            }
        });
        self.times.init = self.events.init();
        Ok(true)
    }

    /// Reads what the report pipe has; false at end of file.
    fn read_report(&mut self, fd: &OwnedFd) -> Result<bool, ChrootError> {
        let mut buf = [0u8; 1024];
        let n = read_fd(fd.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.report.extend_from_slice(&buf[..n]);
        while let Some(end) = self.report.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.report.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            self.handle_report(&line);
        }
        Ok(true)
    }

    fn handle_report(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "pid" => self.namespace_init = rest.parse().ok(),
            "ready" => self.times.ready = Some(Instant::now()),
            "exit" => self.init_wait_status = rest.parse().ok(),
            "note" => log::info!("chroot engine: {rest}"),
            "userns" => self.failure = Some((FailureKind::UserNamespace, rest.to_string())),
            "fail" => self.failure = Some((FailureKind::Setup, rest.to_string())),
            _ => log::debug!("chroot engine: unexpected report {line:?}"),
        }
    }

    fn finish(&mut self) -> Result<RunOutcome, ChrootError> {
        if let Some(code) = self.exit_status {
            return Ok(self.outcome(code, None));
        }
        match self.failure.take() {
            Some((FailureKind::UserNamespace, detail)) => Err(ChrootError::UserNamespaces {
                detail,
                advice: advice(&UsernsSysctls::read()),
            }),
            Some((FailureKind::Setup, message)) => Err(ChrootError::Setup(message)),
            None => {
                let how = match self.init_wait_status {
                    Some(status) => describe_wait_status(status),
                    None => "its helper process died".to_string(),
                };
                let reason =
                    format!("the namespace ended without reporting a status: guest-init {how}");
                Ok(self.outcome(125, Some(reason)))
            }
        }
    }

    fn outcome(&self, exit_code: u8, reason: Option<String>) -> RunOutcome {
        RunOutcome {
            exit_code,
            reason,
            times: self.times,
            unpack_failure: None,
        }
    }

    /// Kills the namespace's PID 1, after which the kernel kills every
    /// other process in the namespace and the helper, having reaped PID 1
    /// once the namespace is empty, exits: reaping the helper then means
    /// nothing is left. Before PID 1's pid is known, kills the helper,
    /// whose death kills PID 1 through `PR_SET_PDEATHSIG`.
    fn kill_namespace(&mut self) {
        if let Some(pid) = self.namespace_init.take() {
            // SAFETY: kill has no memory effects. The pid is our
            // grandchild's; it could only name another process if the
            // helper had reaped it and the kernel had handed the same pid
            // out again in the microseconds before this call.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else if !self.helper_reaped {
            // SAFETY: kill has no memory effects; the helper is our
            // unreaped child, so its pid cannot have been reused.
            unsafe { libc::kill(self.helper, libc::SIGKILL) };
        }
    }

    /// Waits for the helper, which exits once the namespace is gone.
    pub(super) fn reap(&mut self) {
        if self.helper_reaped {
            return;
        }
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; the pid is our child.
            let r = unsafe { libc::waitpid(self.helper, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.helper_reaped = true;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.helper_reaped {
            self.kill_namespace();
            self.reap();
        }
    }
}

pub(super) fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_are_described() {
        assert_eq!(describe_wait_status(3 << 8), "exited with status 3");
        assert_eq!(describe_wait_status(9), "was killed by signal 9");
    }
}
