//! Choosing the command's stdin, stdout and stderr: the virtio-console's
//! ports when the run configuration asks for them and they appear (their
//! output optionally relayed and counted by guest-init, see `relay.rs`),
//! else the serial ports (ttyS1 and ttyS0); the host learns the choice
//! from `@ports` or `@uarts`. In the child, [`setup_stdio`] puts the
//! chosen streams on descriptors 0, 1 and 2.

use core::sync::atomic::{AtomicI32, Ordering};

use rustix::fd::{AsFd, BorrowedFd, IntoRawFd, RawFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;

use crate::channels::{send_event, GlobalState};
use crate::config::RunConfig;
use crate::console::Line;
use crate::ports;
use crate::relay::{Relay, Writers};

/// The virtio-console's ports, when in use (see [`use_virtio_ports`]).
static PORT_STDOUT_FD: AtomicI32 = AtomicI32::new(-1);
static PORT_STDERR_FD: AtomicI32 = AtomicI32::new(-1);
static PORT_STDIN_FD: AtomicI32 = AtomicI32::new(-1);

/// With `MICRORUN_INIT_STDIN=fd:N` (the chroot engine), the forwarded stdin
/// is that inherited descriptor instead of the stdout channel (which, in a
/// VM, is ttyS1: one device for both directions).
static STDIN_FD: AtomicI32 = AtomicI32::new(-1);

/// Picks the command's streams: the virtio-console's ports when the run
/// configuration asks for them, and `stdin` (the `MICRORUN_INIT_STDIN`
/// knob) as the forwarded stdin when given.
// Called once, from `main`: inlined there, as before the split, which
// keeps the binary some 180 bytes smaller.
#[inline(always)]
pub fn choose(config: &RunConfig, settings: ports::Settings, stdin: Option<RawFd>) {
    if let Some(fd) = stdin {
        STDIN_FD.store(fd, Ordering::Relaxed);
    }
    if config.virtio_ports {
        use_virtio_ports(settings, config.forward_stdin);
    }
}

/// Waits for the virtio-console's ports and keeps them for the command's
/// stdio; when they cannot be had, says so on the console and leaves the
/// serial ports in place.
fn use_virtio_ports(settings: ports::Settings, forward_stdin: bool) {
    // The choice goes to the host as an event (`@ports` or `@uarts`), so
    // that it forwards stdin to where the command will read it.
    let event: &[u8] = match ports::wait_and_open(settings, forward_stdin) {
        Ok(ports) => {
            PORT_STDOUT_FD.store(ports.stdout.into_raw_fd(), Ordering::Relaxed);
            PORT_STDERR_FD.store(ports.stderr.into_raw_fd(), Ordering::Relaxed);
            if let Some(stdin) = ports.stdin {
                PORT_STDIN_FD.store(stdin.into_raw_fd(), Ordering::Relaxed);
            }
            b"@ports\n"
        }
        Err(error) => {
            let mut line = Line::new();
            line.text(b"microrun: guest-init: ");
            match error {
                ports::PortsError::NoDriver => line
                    .text(b"the kernel has no virtio console driver (")
                    .text(settings.sysfs.to_bytes())
                    .text(b" does not exist)"),
                ports::PortsError::Timeout => {
                    line.text(b"the virtio console's ports did not appear within ");
                    if settings.wait_ms.is_multiple_of(1000) {
                        line.num(u64::from(settings.wait_ms / 1000)).text(b" s")
                    } else {
                        line.num(u64::from(settings.wait_ms)).text(b" ms")
                    }
                }
                ports::PortsError::OpenDev(e) => line
                    .text(b"cannot open the device directory ")
                    .text(settings.dev.to_bytes())
                    .text(b": ")
                    .errno(e),
                ports::PortsError::Open(port, device, e) => line
                    .text(b"cannot open the virtio console's port ")
                    .text(settings.dev.to_bytes())
                    .text(b"/")
                    .text(device.as_bytes())
                    .text(b" (")
                    .text(port.name())
                    .text(b"): ")
                    .errno(e),
            };
            line.text(b"; using the serial ports")
                .send(GlobalState::console());
            b"@uarts\n"
        }
    };
    send_event(event);
}

/// The ports for the command's stdout and stderr, when in use.
fn output_ports() -> Option<(BorrowedFd<'static>, BorrowedFd<'static>)> {
    Some((
        GlobalState::fd(&PORT_STDOUT_FD)?,
        GlobalState::fd(&PORT_STDERR_FD)?,
    ))
}

/// With `ports=virtio-relay` and the ports open: the relay, and the pipes
/// the command writes to.
pub fn output_relay(config: &RunConfig) -> Result<Option<(Relay, Writers)>, Errno> {
    match (config.relay_output, output_ports()) {
        (true, Some((stdout, stderr))) => Relay::new(stdout, stderr).map(Some),
        _ => Ok(None),
    }
}

/// With a terminal (`tty=`), its relay: the terminal's output goes to the
/// stdout port (or ttyS1), counted for `@sent` with `ports=virtio-relay`;
/// the stdin channel, when forwarded, comes in.
pub fn terminal_relay(config: &RunConfig) -> Option<crate::tty::Relay> {
    let ports = output_ports();
    let output = match ports {
        Some((stdout, _)) => stdout,
        None => GlobalState::stdout()?,
    };
    let stdin_fd = STDIN_FD.load(Ordering::Relaxed);
    let input = if !config.forward_stdin {
        None
    } else if let Some(port) = GlobalState::fd(&PORT_STDIN_FD) {
        Some(port)
    } else if stdin_fd >= 0 {
        // SAFETY: the fd was inherited from the parent and stays open for
        // guest-init's lifetime.
        Some(unsafe { BorrowedFd::borrow_raw(stdin_fd) })
    } else {
        GlobalState::stdout()
    };
    crate::tty::Relay::new(output, input, config.relay_output && ports.is_some())
}

/// Puts stdin, stdout and stderr on descriptors 0, 1 and 2: the terminal
/// (`tty.rs`) when the command has one; else the relay's
/// pipes or the virtio-console's ports when in use, else ttyS1 and ttyS0;
/// stdin is the stdin port (or ttyS1) when forwarded, else /dev/null.
pub fn setup_stdio(config: &RunConfig, relay: Option<&Writers>) -> Result<(), Errno> {
    if let Some(terminal) = crate::tty::setup_stdio() {
        return terminal;
    }
    let (Some(serial_stdout), Some(console)) = (GlobalState::stdout(), GlobalState::console())
    else {
        return Err(Errno::BADF);
    };
    let (stdout, stderr) = match (relay, output_ports()) {
        (Some(relay), _) => (relay.stdout.as_fd(), relay.stderr.as_fd()),
        (None, Some((stdout, stderr))) => (stdout, stderr),
        _ => (serial_stdout, console),
    };
    let stdin_fd = STDIN_FD.load(Ordering::Relaxed);
    let stdin = if let (true, Some(port)) = (config.forward_stdin, GlobalState::fd(&PORT_STDIN_FD))
    {
        rustix::io::fcntl_dupfd_cloexec(port, 3)?
    } else if config.forward_stdin && stdin_fd >= 0 {
        // SAFETY: the fd was inherited from the parent and stays open for
        // guest-init's lifetime; it is only borrowed to duplicate it.
        let inherited = unsafe { BorrowedFd::borrow_raw(stdin_fd) };
        rustix::io::fcntl_dupfd_cloexec(inherited, 3)?
    } else if config.forward_stdin {
        rustix::io::fcntl_dupfd_cloexec(serial_stdout, 3)?
    } else {
        match rustix::fs::open(
            c"/dev/null",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // No /dev/null (mounts skipped, bare rootfs): an empty pipe reads
            // as end of file just the same.
            Err(_) => rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?.0,
        }
    };
    // Lift every source above 2 first, so that placing one on 0-2 never
    // overwrites another that is still needed.
    let stdin = rustix::io::fcntl_dupfd_cloexec(&stdin, 3)?;
    let stdout = rustix::io::fcntl_dupfd_cloexec(stdout, 3)?;
    let stderr = rustix::io::fcntl_dupfd_cloexec(stderr, 3)?;
    rustix::stdio::dup2_stdin(&stdin)?;
    rustix::stdio::dup2_stdout(&stdout)?;
    rustix::stdio::dup2_stderr(&stderr)?;
    Ok(())
}
