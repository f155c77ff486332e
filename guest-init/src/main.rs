//! guest-init: microrun's PID 1 inside the guest.
//!
//! The kernel starts it with `rdinit=/.microrun/init`. It mounts `/dev`,
//! `/proc`, `/sys` (and `/tmp` when the rootfs has none), opens the three
//! serial ports, announces itself with `@init` on ttyS2, reads the run
//! configuration `/.microrun/run`, loads the kernel modules it lists, and,
//! when it says `ports=virtio`, waits (up to 2 s) for the virtio-console's
//! ports `microrun.stdout`, `microrun.stderr` and `microrun.stdin`. It runs
//! the command with stdout and stderr on those ports (on ttyS1 and ttyS0
//! without them; with `ports=virtio-relay`, on pipes it copies to the ports
//! itself, counting the bytes: see `relay.rs`), stdin on the stdin port
//! (ttyS1) when forwarded, reaps every process, and writes the command's
//! exit status as one line on ttyS2 once ttyS1 has drained (after the
//! relay's `@sent OUT ERR`). Then it powers the machine off (with the
//! relay, it waits for the host to end it). Its own messages always go to
//! ttyS0.
//!
//! It is a freestanding static executable (`no_std`, raw system calls via
//! rustix, no libc), so it runs on any rootfs, even one without a libc.
//! PID 1 must never exit (the kernel would panic), so every failure ends in
//! a status line and a power-off, never in a return from `main`.
//!
//! Knobs for tests and the chroot engine, read from guest-init's own
//! environment (the kernel passes none of them) and never passed on to the
//! command:
//!
//! - `MICRORUN_INIT_CONSOLE`, `MICRORUN_INIT_STDOUT`, `MICRORUN_INIT_STATUS`:
//!   a device path (defaults `/dev/ttyS0`, `/dev/ttyS1`, `/dev/ttyS2`) or
//!   `fd:N` for an inherited open file descriptor;
//! - `MICRORUN_INIT_CONFIG`: the run configuration (default `/.microrun/run`);
//! - `MICRORUN_INIT_SKIP_MOUNTS=1`: mount nothing;
//! - `MICRORUN_INIT_STDIN=fd:N`: the forwarded stdin, when it is not the
//!   stdout channel (the chroot engine passes microrun's own stdin);
//! - `MICRORUN_INIT_NO_POWEROFF=1`: exit after the status line instead of
//!   powering off;
//! - `MICRORUN_INIT_PORTS_SYSFS`, `MICRORUN_INIT_PORTS_DEV`: where the
//!   virtio-console's ports are looked for (defaults
//!   `/sys/class/virtio-ports`, `/dev`);
//! - `MICRORUN_INIT_PORTS_WAIT_MS`: how long to wait for them (default 2000).

#![no_std]
#![no_main]

mod config;
mod console;
mod modules;
mod ports;
mod relay;
mod rt;
mod shares;
mod sys;

use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use rustix::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::mount::MountFlags;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use rustix::termios::{ControlModes, OptionalActions, OutputModes};

use config::ConfigError;
use console::Line;
use relay::{Relay, Writers};

/// Status for "the command exists but cannot be executed", and for every
/// failure of guest-init before the command starts.
const CANNOT_EXECUTE: u8 = 126;
/// Status for "the command was not found".
const NOT_FOUND: u8 = 127;
/// Status for a run microrun itself could not set up (a share that cannot
/// be mounted), as the contract's exit codes have it.
const MICRORUN_FAILED: u8 = 125;

/// How long leftover processes get between SIGTERM and SIGKILL.
const TERM_GRACE_MS: u32 = 100;
/// How long to wait for SIGKILLed processes before reporting anyway.
const KILL_WAIT_MS: u32 = 5000;

/// The file descriptors and flags the panic handler and `finish` need.
pub struct GlobalState;

static CONSOLE_FD: AtomicI32 = AtomicI32::new(-1);
static STDOUT_FD: AtomicI32 = AtomicI32::new(-1);
static STATUS_FD: AtomicI32 = AtomicI32::new(-1);
static STATUS_SENT: AtomicBool = AtomicBool::new(false);
static NO_POWEROFF: AtomicBool = AtomicBool::new(false);
static FINISHING: AtomicBool = AtomicBool::new(false);
/// The virtio-console's ports, when in use (see [`use_virtio_ports`]).
static PORT_STDOUT_FD: AtomicI32 = AtomicI32::new(-1);
static PORT_STDERR_FD: AtomicI32 = AtomicI32::new(-1);
static PORT_STDIN_FD: AtomicI32 = AtomicI32::new(-1);

impl GlobalState {
    fn fd(slot: &AtomicI32) -> Option<BorrowedFd<'static>> {
        let raw = slot.load(Ordering::Relaxed);
        // SAFETY: only open descriptors are ever stored, and guest-init never
        // closes them (they live as long as the process).
        (raw >= 0).then(|| unsafe { BorrowedFd::borrow_raw(raw) })
    }

    /// ttyS0: messages for the user, the command's stderr.
    pub fn console() -> Option<BorrowedFd<'static>> {
        Self::fd(&CONSOLE_FD)
    }

    fn stdout() -> Option<BorrowedFd<'static>> {
        Self::fd(&STDOUT_FD)
    }

    fn status() -> Option<BorrowedFd<'static>> {
        Self::fd(&STATUS_FD)
    }
}

/// With `MICRORUN_INIT_STDIN=fd:N` (the chroot engine), the forwarded stdin
/// is that inherited descriptor instead of the stdout channel (which, in a
/// VM, is ttyS1: one device for both directions).
static STDIN_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

/// Where one of the three channels goes.
#[derive(Clone, Copy)]
enum Channel {
    Path(&'static CStr),
    Fd(RawFd),
}

/// guest-init's own settings, from its environment.
struct Knobs {
    console: Channel,
    stdout: Channel,
    status: Channel,
    config: &'static CStr,
    skip_mounts: bool,
    no_poweroff: bool,
    ports: ports::Settings,
}

/// How long to wait for the virtio-console's ports by default.
const PORTS_WAIT_MS: u32 = 2000;

impl Knobs {
    fn from_env(envp: *const *const u8) -> Self {
        let mut knobs = Knobs {
            console: Channel::Path(c"/dev/ttyS0"),
            stdout: Channel::Path(c"/dev/ttyS1"),
            status: Channel::Path(c"/dev/ttyS2"),
            config: c"/.microrun/run",
            skip_mounts: false,
            no_poweroff: false,
            ports: ports::Settings {
                sysfs: c"/sys/class/virtio-ports",
                dev: c"/dev",
                wait_ms: PORTS_WAIT_MS,
            },
        };
        let mut entry = envp;
        loop {
            // SAFETY: the environment array from the kernel is NULL-terminated,
            // and this loop stops at the NULL.
            let ptr = unsafe { *entry };
            if ptr.is_null() {
                break;
            }
            // SAFETY: each entry is a NUL-terminated string on the initial
            // stack, which lives as long as the process.
            let var: &'static CStr = unsafe { CStr::from_ptr(ptr.cast()) };
            knobs.apply(var);
            // SAFETY: the current entry was not the terminating NULL.
            entry = unsafe { entry.add(1) };
        }
        knobs
    }

    fn apply(&mut self, var: &'static CStr) {
        let bytes = var.to_bytes();
        let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
            return;
        };
        let (name, value) = (&bytes[..eq], &bytes[eq + 1..]);
        // SAFETY: `value` is the tail of `var`, so it ends at var's NUL.
        let value_cstr: &'static CStr = unsafe { CStr::from_ptr(value.as_ptr().cast()) };
        match name {
            b"MICRORUN_INIT_CONSOLE" => self.console = Channel::parse(value_cstr),
            b"MICRORUN_INIT_STDOUT" => self.stdout = Channel::parse(value_cstr),
            b"MICRORUN_INIT_STATUS" => self.status = Channel::parse(value_cstr),
            b"MICRORUN_INIT_CONFIG" => self.config = value_cstr,
            b"MICRORUN_INIT_SKIP_MOUNTS" => self.skip_mounts = value == b"1",
            b"MICRORUN_INIT_NO_POWEROFF" => self.no_poweroff = value == b"1",
            b"MICRORUN_INIT_PORTS_SYSFS" => self.ports.sysfs = value_cstr,
            b"MICRORUN_INIT_PORTS_DEV" => self.ports.dev = value_cstr,
            b"MICRORUN_INIT_PORTS_WAIT_MS" => {
                if let Some(ms) = parse_ms(value) {
                    self.ports.wait_ms = ms;
                }
            }
            b"MICRORUN_INIT_STDIN" => {
                if let Channel::Fd(fd) = Channel::parse(value_cstr) {
                    STDIN_FD.store(fd, core::sync::atomic::Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// A decimal number of milliseconds, at most ten minutes; `None` for
/// anything else.
fn parse_ms(digits: &[u8]) -> Option<u32> {
    const MAX_MS: u32 = 600_000;
    if digits.is_empty() {
        return None;
    }
    let mut ms: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        ms = ms.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
        if ms > MAX_MS {
            return None;
        }
    }
    Some(ms)
}

impl Channel {
    fn parse(value: &'static CStr) -> Self {
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
fn drain(fd: Option<BorrowedFd<'_>>) {
    if let Some(fd) = fd {
        // ENOTTY for pipes and files, which need no draining.
        let _ = rustix::termios::tcdrain(fd);
    }
}

/// One mount guest-init makes.
struct MountSpec {
    fstype: &'static CStr,
    target: &'static CStr,
    flags: MountFlags,
    data: &'static CStr,
}

/// Mounts `/dev`, `/proc`, `/sys`, and `/tmp` when the rootfs has none;
/// returns the failures, to be reported once the console is open.
fn mount_filesystems() -> [Option<(&'static CStr, Errno)>; 4] {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let mut mounts = [
        Some(MountSpec {
            fstype: c"devtmpfs",
            target: c"/dev",
            flags: MountFlags::NOSUID,
            data: c"mode=0755",
        }),
        Some(MountSpec {
            fstype: c"proc",
            target: c"/proc",
            flags: hardened,
            data: c"",
        }),
        Some(MountSpec {
            fstype: c"sysfs",
            target: c"/sys",
            flags: hardened,
            data: c"",
        }),
        None,
    ];
    if matches!(rustix::fs::lstat(c"/tmp"), Err(Errno::NOENT)) {
        mounts[3] = Some(MountSpec {
            fstype: c"tmpfs",
            target: c"/tmp",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: c"mode=1777",
        });
    }
    let mut failures = [None; 4];
    for (spec, failure) in mounts.iter().zip(failures.iter_mut()) {
        let Some(spec) = spec else { continue };
        let result = match rustix::fs::mkdir(spec.target, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {
                rustix::mount::mount(spec.fstype, spec.target, spec.fstype, spec.flags, spec.data)
            }
            Err(e) => Err(e),
        };
        match result {
            // EBUSY: already mounted there, which is just as good.
            Ok(()) | Err(Errno::BUSY) => {}
            Err(e) => *failure = Some((spec.target, e)),
        }
    }
    failures
}

/// The program: everything between the kernel and the status line.
pub fn main(envp: *const *const u8) -> ! {
    let knobs = Knobs::from_env(envp);
    NO_POWEROFF.store(knobs.no_poweroff, Ordering::Relaxed);
    let mount_failures = if knobs.skip_mounts {
        [None; 4]
    } else {
        mount_filesystems()
    };

    match knobs.console.open(false) {
        Ok((fd, _)) => CONSOLE_FD.store(fd, Ordering::Relaxed),
        Err(e) => {
            // The kernel's /dev/console on fd 2, if the rootfs provided it,
            // is the only place left to say so.
            if let Ok((fd, _)) = Channel::Fd(2).open(false) {
                CONSOLE_FD.store(fd, Ordering::Relaxed);
            }
            let mut line = Line::new();
            line.text(b"microrun: cannot open the console ");
            knobs.console.describe(&mut line).text(b": ").errno(e);
            line.send(GlobalState::console());
        }
    }
    for (target, errno) in mount_failures.into_iter().flatten() {
        Line::new()
            .text(b"microrun: warning: cannot mount ")
            .text(target.to_bytes())
            .text(b": ")
            .errno(errno)
            .send(GlobalState::console());
    }

    let stdout = open_channel(knobs.stdout, &STDOUT_FD);
    let status = open_channel(knobs.status, &STATUS_FD);
    if let Some(fd) = GlobalState::status() {
        console::write_all(fd, b"@init\n");
    }
    if status.is_none() || stdout.is_none() {
        finish(CANNOT_EXECUTE);
    }

    let config = match config::load(knobs.config) {
        Ok(config) => config,
        Err(e) => {
            report_config_error(knobs.config, e);
            finish(CANNOT_EXECUTE)
        }
    };
    modules::load_all(config.modules);
    if shares::mount_all(config.mounts).is_err() {
        finish(MICRORUN_FAILED);
    }
    if config.virtio_ports {
        use_virtio_ports(knobs.ports, config.forward_stdin);
    }
    // The command's relative paths resolve from here, and so do the checks
    // that explain an exec failure.
    if let Err(e) = rustix::process::chdir(config.cwd) {
        Line::new()
            .text(b"microrun: cannot change to the working directory ")
            .text(config.cwd.to_bytes())
            .text(b": ")
            .errno(e)
            .send(GlobalState::console());
        finish(CANNOT_EXECUTE);
    }

    let pid1 = rustix::process::getpid().is_init();
    if !pid1 {
        // Outside a PID namespace (a debugging run), orphans come back to us
        // all the same, so they can be reaped.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    }
    let status = run(&config, pid1);
    finish(status)
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
    if let Some(fd) = GlobalState::status() {
        console::write_all(fd, event);
    }
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

fn report_config_error(path: &CStr, error: ConfigError) {
    let mut line = Line::new();
    line.text(b"microrun: ");
    match error {
        ConfigError::Read(e) => {
            line.text(b"cannot read the run configuration ")
                .text(path.to_bytes())
                .text(b": ")
                .errno(e);
        }
        _ => {
            line.text(b"malformed run configuration ")
                .text(path.to_bytes())
                .text(b": ");
            match error {
                ConfigError::Unterminated => line.text(b"the last record has no NUL terminator"),
                ConfigError::NoEquals(n) => {
                    line.text(b"record ").num(n as u64).text(b" has no '='")
                }
                ConfigError::UnknownKey(n, key) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" has the unknown key '")
                    .text(key)
                    .text(b"' (expected arg, env, cwd, stdin, ports, module or mount)"),
                ConfigError::BadEnv(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not env=NAME=value"),
                ConfigError::BadModule(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not module=/PATH or module=/PATH PARAMS"),
                ConfigError::BadMount(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not mount=TAG rw /DEST or mount=TAG ro /DEST"),
                ConfigError::Duplicate(n, key) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" repeats the key '")
                    .text(key)
                    .text(b"'"),
                ConfigError::Read(_) => &mut line,
            };
        }
    }
    line.send(GlobalState::console());
}

/// What the child sends back when it cannot start the command: the stage,
/// the errno, and the path that failed (NUL-terminated).
const STAGE_SETUP: u8 = 1;
const STAGE_EXEC: u8 = 2;
/// Stage byte, four errno bytes, and a path of up to PATH_MAX bytes.
const REPORT_CAPACITY: usize = 1 + 4 + PATH_CAPACITY;
const PATH_CAPACITY: usize = 4096;

/// Starts the command, waits for it, cleans up after it; returns its status.
fn run(config: &config::RunConfig, pid1: bool) -> u8 {
    let (report_rx, report_tx) = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return fail_start(b"cannot create a pipe: ", e),
    };
    let relay = match output_relay(config) {
        Ok(relay) => relay,
        Err(e) => return fail_start(b"cannot create a pipe: ", e),
    };
    // SAFETY: guest-init is single-threaded.
    let child = match unsafe { sys::fork() } {
        Ok(Some(pid)) => pid,
        Ok(None) => child(
            config,
            report_tx,
            relay.as_ref().map(|(_, writers)| writers),
        ),
        Err(e) => return fail_start(b"cannot start a process: ", e),
    };
    drop(report_tx);
    // Only the command may hold the pipes' write ends, so that they end
    // when its processes do.
    let mut relay = relay.map(|(relay, _)| relay);

    // The pipe closes on a successful exec (CLOEXEC) or carries a report.
    let mut report = [0u8; REPORT_CAPACITY];
    let (len, _) = console::read_full(report_rx.as_fd(), &mut report);
    drop(report_rx);

    let mut status = match relay.as_mut() {
        Some(relay) => relay.copy_until(child, || reap_command(child, WaitOptions::NOHANG)),
        None => wait_for(child),
    };
    if len >= 5 {
        status = explain_failure(config, &report[..len]);
    }
    clean_up(pid1, child);
    if let Some(relay) = relay {
        relay.finish();
    }
    status
}

/// With `ports=virtio-relay` and the ports open: the relay, and the pipes
/// the command writes to.
fn output_relay(config: &config::RunConfig) -> Result<Option<(Relay, Writers)>, Errno> {
    match (
        config.relay_output,
        GlobalState::fd(&PORT_STDOUT_FD),
        GlobalState::fd(&PORT_STDERR_FD),
    ) {
        (true, Some(stdout), Some(stderr)) => Relay::new(stdout, stderr).map(Some),
        _ => Ok(None),
    }
}

fn fail_start(what: &[u8], e: Errno) -> u8 {
    Line::new()
        .text(b"microrun: ")
        .text(what)
        .errno(e)
        .send(GlobalState::console());
    CANNOT_EXECUTE
}

/// The child: stdio, then exec. Never returns.
fn child(config: &config::RunConfig, report: OwnedFd, relay: Option<&Writers>) -> ! {
    // Its own session, so job-control shells and `kill 0` stay within it.
    let _ = rustix::process::setsid();
    if let Err(e) = setup_stdio(config, relay) {
        send_report(&report, STAGE_SETUP, e, b"");
        sys::exit_group(i32::from(CANNOT_EXECUTE));
    }
    let mut path = [0u8; PATH_CAPACITY];
    let (errno, len) = exec_command(config, &mut path);
    send_report(&report, STAGE_EXEC, errno, &path[..len]);
    let code = if errno == Errno::NOENT {
        NOT_FOUND
    } else {
        CANNOT_EXECUTE
    };
    sys::exit_group(i32::from(code))
}

fn send_report(report: &OwnedFd, stage: u8, errno: Errno, path: &[u8]) {
    let mut buf = [0u8; REPORT_CAPACITY];
    buf[0] = stage;
    buf[1..5].copy_from_slice(&errno.raw_os_error().to_le_bytes());
    let n = path.len().min(PATH_CAPACITY - 1);
    buf[5..5 + n].copy_from_slice(&path[..n]);
    // buf[5 + n] is already the NUL terminator.
    console::write_all(report.as_fd(), &buf[..5 + n + 1]);
}

/// Puts stdin, stdout and stderr on descriptors 0, 1 and 2: the relay's
/// pipes or the virtio-console's ports when in use, else ttyS1 and ttyS0;
/// stdin is the stdin port (or ttyS1) when forwarded, else /dev/null.
fn setup_stdio(config: &config::RunConfig, relay: Option<&Writers>) -> Result<(), Errno> {
    let (Some(serial_stdout), Some(console)) = (GlobalState::stdout(), GlobalState::console())
    else {
        return Err(Errno::BADF);
    };
    let (stdout, stderr) = match (
        relay,
        GlobalState::fd(&PORT_STDOUT_FD),
        GlobalState::fd(&PORT_STDERR_FD),
    ) {
        (Some(relay), _, _) => (relay.stdout.as_fd(), relay.stderr.as_fd()),
        (None, Some(stdout), Some(stderr)) => (stdout, stderr),
        _ => (serial_stdout, console),
    };
    let stdin_fd = STDIN_FD.load(core::sync::atomic::Ordering::Relaxed);
    let stdin = if let (true, Some(port)) = (config.forward_stdin, GlobalState::fd(&PORT_STDIN_FD))
    {
        rustix::io::fcntl_dupfd_cloexec(port, 3)?
    } else if config.forward_stdin && stdin_fd >= 0 {
        // SAFETY: the fd was inherited from the parent and stays open for
        // guest-init's lifetime; it is only borrowed to duplicate it.
        let inherited = unsafe { rustix::fd::BorrowedFd::borrow_raw(stdin_fd) };
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

/// Execs the command, searching PATH like `execvp` when the name has no
/// `/`; returns the decisive error, with the path it concerns in `failed`
/// (its length is returned).
fn exec_command(config: &config::RunConfig, failed: &mut [u8; PATH_CAPACITY]) -> (Errno, usize) {
    let command = config.command();
    let name = command.to_bytes();
    let keep = |failed: &mut [u8; PATH_CAPACITY], path: &[u8]| {
        let n = path.len().min(PATH_CAPACITY - 1);
        failed[..n].copy_from_slice(&path[..n]);
        n
    };
    if name.is_empty() {
        return (Errno::NOENT, 0);
    }
    if name.contains(&b'/') {
        // SAFETY: the arrays are NULL-terminated arrays of C strings.
        let errno = unsafe {
            sys::execve(
                command.as_ptr().cast(),
                config.argv.as_ptr(),
                config.envp.as_ptr(),
            )
        };
        return (errno, keep(failed, name));
    }

    let mut candidate = [0u8; PATH_CAPACITY];
    let mut decisive: Option<(Errno, usize)> = None;
    let path_var = config
        .path_var()
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(|&b| b == b':') {
        // An empty entry means the current directory, as in execvp.
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let len = dir.len() + 1 + name.len();
        if len >= PATH_CAPACITY {
            continue;
        }
        candidate[..dir.len()].copy_from_slice(dir);
        candidate[dir.len()] = b'/';
        candidate[dir.len() + 1..len].copy_from_slice(name);
        candidate[len] = 0;
        // SAFETY: candidate is NUL-terminated; the arrays are NULL-terminated
        // arrays of C strings.
        let errno = unsafe {
            sys::execve(
                candidate.as_ptr(),
                config.argv.as_ptr(),
                config.envp.as_ptr(),
            )
        };
        let remember = match errno {
            // Like execvp: a file that is there but cannot run is remembered
            // and the search goes on.
            Errno::ACCESS => true,
            // ENOENT for a file that exists: its interpreter is missing.
            Errno::NOENT => CStr::from_bytes_with_nul(&candidate[..=len])
                .is_ok_and(|c| rustix::fs::stat(c).is_ok()),
            Errno::NOTDIR | Errno::NAMETOOLONG | Errno::LOOP => false,
            _ => return (errno, keep(failed, &candidate[..len])),
        };
        if remember && decisive.is_none() {
            decisive = Some((errno, keep(failed, &candidate[..len])));
        }
    }
    decisive.unwrap_or_else(|| (Errno::NOENT, keep(failed, name)))
}

/// Prints why the command could not start and returns the status for it.
fn explain_failure(config: &config::RunConfig, report: &[u8]) -> u8 {
    let stage = report[0];
    let errno = Errno::from_raw_os_error(i32::from_le_bytes([
        report[1], report[2], report[3], report[4],
    ]));
    let mut line = Line::new();
    line.text(b"microrun: ");
    if stage != STAGE_EXEC {
        line.text(b"cannot set up stdin, stdout and stderr for ")
            .text(config.command().to_bytes())
            .text(b": ")
            .errno(errno);
        line.send(GlobalState::console());
        return CANNOT_EXECUTE;
    }
    let path = CStr::from_bytes_until_nul(&report[5..]).unwrap_or(c"?");
    line.text(path.to_bytes()).text(b": ");
    let status = match errno {
        Errno::NOENT => {
            match (rustix::fs::lstat(path), rustix::fs::stat(path)) {
                (_, Ok(_)) => line.text(
                    b"cannot execute: its interpreter (ELF loader or #! program) was not found",
                ),
                (Ok(st), Err(_)) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    line.text(b"command not found (dangling symbolic link)")
                }
                _ => line.text(b"command not found"),
            };
            NOT_FOUND
        }
        Errno::ACCESS => {
            match rustix::fs::stat(path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    line.text(b"cannot execute: is a directory")
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                    line.text(b"cannot execute: not a regular file")
                }
                _ => line
                    .text(b"cannot execute: permission denied (no execute bit, or a noexec mount)"),
            };
            CANNOT_EXECUTE
        }
        _ => {
            line.text(b"cannot execute: ").errno(errno);
            CANNOT_EXECUTE
        }
    };
    line.send(GlobalState::console());
    status
}

/// Reaps children (waiting for them unless `options` has `NOHANG`) until
/// the command itself is among them, and returns its status; `None` when,
/// with `NOHANG`, no more have ended for now.
fn reap_command(child: i32, options: WaitOptions) -> Option<u8> {
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
fn wait_for(child: i32) -> u8 {
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
fn clean_up(pid1: bool, child: i32) {
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
