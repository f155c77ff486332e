//! The qemu engine: the same kernel, initrd and command line as the kvm
//! engine, run by `qemu-system-x86_64` with KVM where it can run a Linux
//! guest and TCG (software emulation) otherwise.
//!
//! The machine is `-M pc` with the three UARTs, or, when the run has
//! virtio devices (the console's ports, shares), `-M microvm,acpi=off`:
//! the same UARTs (the second and third as ISA devices), a
//! `virtio-serial-device` with the ports `microrun.stdout`,
//! `microrun.stderr` and `microrun.stdin`, and one `virtio-9p-device` per
//! share; QEMU names the virtio-mmio devices on the kernel command line
//! itself. A kernel that cannot take that (`src/run.rs` decides) gets the
//! same devices on PCI under `-M pc` (`virtio-serial-pci`,
//! `virtio-9p-pci`).
//!
//! Every output is a pipe read here: ttyS0 (the console), the stdout and
//! stderr ports (a pipe each) and the status channel (ttyS2); ttyS1 is a
//! socket, so that stdin can go in through it too. Forwarded stdin goes,
//! from the guest event that says where the program reads
//! ([`vmm::stdin_reader_after`]), into that socket or into QEMU's own
//! stdin, the stdin port's chardev, whose end of file the guest sees as
//! the port's. ttyS2 goes through the same [`StatusParser`] as the kvm
//! engine.
//!
//! The end keeps the contract's order (everything written before the
//! status reaches microrun's streams first). A UART's output is emulated
//! on the vCPU's thread and the guest waits for its transmitter to drain,
//! so those bytes are in the pipes when the status line is. A port's are
//! not: QEMU writes them to the pipe without blocking and keeps what does
//! not fit, while the guest's `write` has returned. So guest-init relays
//! the program's output to the ports itself and reports the bytes each
//! took (`@sent OUT ERR`, just before the status), and the pump reads the
//! ports' pipes until that many have come out. Then QEMU is killed and
//! every pipe is read to its end.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use vmm::output::{self, FdWriter, OutputFailure, OutputSink, Undelivered};
use vmm::status::{StatusLine, StatusParser};
use vmm::KvmHost;

use crate::boot::BootInitrd;
use crate::guest_kernel::Transport;
use crate::spec::{PhaseTimes, RunOutcome, RunSpec, Verbosity};

/// What microrun says when `--timeout` ends a run, whatever the engine.
pub const TIMEOUT_REASON: &str =
    "--timeout expired; the guest was stopped (raise --timeout if the program needs longer)";

/// The QEMU binary microrun runs.
const QEMU: &str = "qemu-system-x86_64";

/// Which QEMU accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Accel {
    /// KVM when this machine's KVM can run a Linux guest, TCG otherwise.
    #[default]
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slow, but works anywhere.
    Tcg,
}

/// Why the qemu engine could not run the guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuEngineError {
    /// QEMU is not installed.
    #[error("{QEMU} not found: install QEMU (Debian/Ubuntu: `apt-get install qemu-system-x86`)")]
    NotInstalled,
    /// Starting QEMU failed for another reason.
    #[error("cannot start {QEMU}: {0}")]
    Spawn(io::Error),
    /// Setting up the pipes or the in-memory initrd failed.
    #[error("cannot set up QEMU's serial ports and initrd: {0}")]
    Setup(io::Error),
    /// Copying the initrd into memory for QEMU failed.
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        /// The rootfs archive.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// What the qemu engine boots, decided by the caller.
pub struct QemuBoot {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initrd parts.
    pub initrd: BootInitrd,
    /// The complete kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The accelerator asked for.
    pub accel: Accel,
    /// The virtio devices (the discovery flags are QEMU's business).
    pub virtio: vmm::VirtioOptions,
    /// Their bus: with a console or a share on virtio-mmio, the machine is
    /// `microvm` (QEMU announces the devices on the command line); else
    /// `pc`, with the devices (if any) on PCI.
    pub transport: Transport,
}

impl QemuBoot {
    /// Whether the guest gets virtio-mmio devices (`-M microvm`).
    fn microvm(&self) -> bool {
        let any = self.virtio.console || !self.virtio.shares.is_empty();
        any && self.transport == Transport::Mmio
    }

    /// `device` on this machine's virtio bus: `virtio-9p-device` or
    /// `virtio-9p-pci`, for example.
    fn virtio_device(&self, device: &str) -> String {
        match self.transport {
            Transport::Mmio => format!("{device}-device"),
            Transport::Pci => format!("{device}-pci"),
        }
    }
}

/// Picks the concrete accelerator for `Auto`, with the reason.
pub fn resolve_accel(accel: Accel) -> (Accel, String) {
    match (accel, vmm::kvm_host()) {
        (Accel::Auto, KvmHost::Hardware) => (Accel::Kvm, "hardware KVM found".into()),
        (Accel::Auto, KvmHost::Emulated(why)) | (Accel::Auto, KvmHost::Unavailable(why)) => {
            (Accel::Tcg, why)
        }
        (other, _) => (other, "as asked".into()),
    }
}

/// Boots `boot` under QEMU for `spec` and reports how the run ended.
pub fn run(spec: &RunSpec, boot: QemuBoot) -> Result<RunOutcome, QemuEngineError> {
    let (accel, why) = resolve_accel(boot.accel);
    if spec.verbosity == Verbosity::Verbose {
        crate::say(format_args!("qemu engine: accel {accel:?} ({why})"));
    }
    let initrd = initrd_memfd(&boot.initrd)?;
    let console = Pipe::new()?;
    let (ttys1, ttys1_qemu) = UnixStream::pair().map_err(QemuEngineError::Setup)?;
    let status = Pipe::new()?;
    let qemu_err = Pipe::new()?;
    // The stdout and stderr ports get pipes of their own, so that the bytes
    // from each can be counted against guest-init's `@sent`.
    let ports = if boot.virtio.console {
        Some([Pipe::new()?, Pipe::new()?])
    } else {
        None
    };

    // microvm has no keyboard controller to reset through (reboot=k would
    // boot the kernel again): a triple fault ends it. The first reboot= is
    // microrun's own; the user's --cmdline comes after it.
    let microvm = boot.microvm();
    let append = if microvm {
        boot.cmdline.replacen("reboot=k", "reboot=t", 1)
    } else {
        boot.cmdline.clone()
    };
    if microvm {
        log::info!(
            "kernel command line for -M microvm (QEMU appends its virtio-mmio devices): {append}"
        );
    }
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // microvm: virtio-mmio devices, which QEMU names on the command line
    // itself (acpi=off: with ACPI it would describe them only there).
    cmd.args(["-M", if microvm { "microvm,acpi=off" } else { "pc" }]);
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.arg("-m")
        .arg(format!("{}M", boot.mem_size.div_ceil(1 << 20)))
        // One socket per vCPU: QEMU's BIOS lists only each socket's first
        // CPU in the MP table, which is all a kernel without ACPI reads.
        .arg("-smp")
        .arg(format!("{0},sockets={0}", boot.vcpus))
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(format!("/proc/self/fd/{}", initrd.as_raw_fd()))
        .arg("-append")
        .arg(&append);
    // ttyS0, ttyS1, ttyS2 in this order: 0x3f8/IRQ4, 0x2f8/IRQ3, 0x3e8/IRQ4.
    // microvm creates only the first -serial; the others are ISA devices.
    let uart = |n: u8| -> [String; 2] {
        match (n, microvm) {
            (0, _) | (_, false) => ["-serial".into(), format!("chardev:ttyS{n}")],
            (_, true) => {
                let (port, irq) = if n == 1 { ("0x2f8", 3) } else { ("0x3e8", 4) };
                [
                    "-device".into(),
                    format!("isa-serial,chardev=ttyS{n},iobase={port},irq={irq}"),
                ]
            }
        }
    };
    cmd.arg("-chardev")
        .arg(format!(
            "file,id=ttyS0,path=/proc/self/fd/{}",
            console.write_fd()
        ))
        .args(uart(0))
        .arg("-chardev")
        .arg(format!(
            "socket,id=ttyS1,fd={},server=off",
            ttys1_qemu.as_raw_fd()
        ))
        .args(uart(1))
        .arg("-chardev")
        .arg(format!(
            "file,id=ttyS2,path=/proc/self/fd/{}",
            status.write_fd()
        ))
        .args(uart(2));
    if let Some([port_out, port_err]) = &ports {
        let [out, err, inp] = vmm::layout::VIRTIO_CONSOLE_PORTS;
        let serial = format!("{},max_ports=4", boot.virtio_device("virtio-serial"));
        cmd.args(["-device", &serial])
            .arg("-chardev")
            .arg(format!(
                "file,id=port0,path=/proc/self/fd/{}",
                port_out.write_fd()
            ))
            .args([
                "-device",
                &format!("virtserialport,chardev=port0,name={out}"),
            ])
            .arg("-chardev")
            .arg(format!(
                "file,id=port1,path=/proc/self/fd/{}",
                port_err.write_fd()
            ))
            .args([
                "-device",
                &format!("virtserialport,chardev=port1,name={err}"),
            ])
            .args([
                "-chardev",
                if spec.forward_stdin {
                    "stdio,id=port2,signal=off"
                } else {
                    "null,id=port2"
                },
            ])
            .args([
                "-device",
                &format!("virtserialport,chardev=port2,name={inp}"),
            ]);
    }
    for (index, share) in boot.virtio.shares.iter().enumerate() {
        let mut fsdev = std::ffi::OsString::from(format!(
            "local,id=share{index},security_model=none,{}path=",
            if share.read_only { "readonly=on," } else { "" }
        ));
        fsdev.push(qemu_option_value(&share.source));
        cmd.arg("-fsdev").arg(fsdev).arg("-device").arg(format!(
            "{},fsdev=share{index},mount_tag={}",
            boot.virtio_device("virtio-9p"),
            share.tag
        ));
    }
    // Stdin is fed only from the guest event that says where the program
    // reads: the guest's serial driver clears its FIFO when it opens ttyS1,
    // so earlier bytes would be lost. With the virtio-console, QEMU's own
    // stdin is the stdin port's; ttyS1's way in is its socket.
    let mut stdin = StdinFeeds {
        port: None,
        uart: None,
        console: boot.virtio.console,
    };
    if spec.forward_stdin {
        stdin.uart = Some(ttys1.try_clone().map_err(QemuEngineError::Setup)?);
    }
    if spec.forward_stdin && boot.virtio.console {
        let (reader, writer) = io::pipe().map_err(QemuEngineError::Setup)?;
        cmd.stdin(Stdio::from(reader));
        stdin.port = Some(writer);
    } else {
        cmd.stdin(Stdio::null());
    }
    // QEMU writes nothing of the guest's to its own stdout.
    cmd.stdout(Stdio::from(qemu_err.take_writer()?));
    cmd.stderr(Stdio::from(qemu_err.take_writer()?));
    let mut inherit = vec![
        initrd.as_raw_fd(),
        console.write_fd(),
        status.write_fd(),
        ttys1_qemu.as_raw_fd(),
    ];
    inherit.extend(ports.iter().flatten().map(Pipe::write_fd));
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls prctl, getppid and fcntl, which are
    // async-signal-safe, the latter on descriptors that stay open in the
    // parent until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            // QEMU must not outlive microrun (killed, or timed out by a CI
            // runner); the check closes the race with a parent that died
            // before the prctl.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                return Err(io::Error::other("microrun exited while starting QEMU"));
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut times = PhaseTimes {
        ready: Some(Instant::now()),
        ..PhaseTimes::default()
    };
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => QemuEngineError::NotInstalled,
        _ => QemuEngineError::Spawn(e),
    })?;
    // Only QEMU may hold the write ends now, so its death closes them (the
    // Command holds duplicates of its stdout and stderr pipes).
    drop(cmd);
    drop(initrd);
    drop(ttys1_qemu);
    let console = console.into_reader();
    let status = status.into_reader();
    let ttys1 = OwnedFd::from(ttys1);
    let qemu_err = qemu_err.into_reader();
    let [port_out, port_err] = match ports {
        Some([out, err]) => [Some(out.into_reader()), Some(err.into_reader())],
        None => [None, None],
    };

    let sink = |name, fd| {
        OutputSink::spawn(name, Box::new(FdWriter(fd)), output::DEFAULT_CAPACITY)
            .map_err(QemuEngineError::Setup)
    };
    let deadline = vmm::deadline_after(spec.started, spec.timeout);
    let mut pump = Pump {
        pipes: [
            Some(status),
            Some(ttys1),
            Some(console),
            Some(qemu_err),
            port_out,
            port_err,
        ],
        from_ports: [0; 2],
        sent: None,
        to_stdout: sink("stdout", 1)?,
        to_stderr: sink("stderr", 2)?,
        deadline,
        parser: StatusParser::new(),
        qemu_stderr: Vec::new(),
        verbose: spec.verbosity == Verbosity::Verbose,
        stdin,
    };
    let mut end = pump.until_status(&mut times);
    let _ = child.kill();
    let wait = child.wait();
    if let Err(undelivered) = pump.drain_outputs(&end) {
        end = match undelivered {
            Undelivered::Failed(failure) => PumpEnd::OutputFailed(failure),
            Undelivered::Deadline | Undelivered::Aborted => PumpEnd::Timeout,
        };
    }
    times.end = Some(Instant::now());
    Ok(outcome(end, wait, &pump.qemu_stderr, times))
}

/// `path` as a QEMU option value: a comma is written twice.
fn qemu_option_value(path: &std::path::Path) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// How the pump loop stopped.
enum PumpEnd {
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
const STATUS: usize = 0;
/// ttyS1's socket.
const STDOUT: usize = 1;
/// ttyS0: the kernel's console, guest-init's messages.
const CONSOLE: usize = 2;
const QEMU_ERR: usize = 3;
/// The virtio-console's stdout and stderr ports.
const PORT_OUT: usize = 4;
const PORT_ERR: usize = 5;

struct Pump {
    /// The read ends, by the indices above (the ports' only with the
    /// virtio-console).
    pipes: [Option<OwnedFd>; 6],
    /// Bytes read from the stdout and stderr ports so far.
    from_ports: [u64; 2],
    /// guest-init's `@sent OUT ERR`: the bytes the ports took in the guest.
    sent: Option<[u64; 2]>,
    /// The queues to microrun's own stdout and stderr: the pump never blocks
    /// in a write to a stream nobody reads, so the deadline holds.
    to_stdout: OutputSink,
    to_stderr: OutputSink,
    deadline: Option<Instant>,
    parser: StatusParser,
    qemu_stderr: Vec<u8>,
    verbose: bool,
    /// Where forwarded stdin may go.
    stdin: StdinFeeds,
}

/// The two ways into the guest for forwarded stdin (`None` where there is
/// none, or once the forwarder has started).
struct StdinFeeds {
    /// QEMU's stdin: the virtio-console's stdin port.
    port: Option<io::PipeWriter>,
    /// ttyS1's socket.
    uart: Option<UnixStream>,
    /// The VM has a virtio-console.
    console: bool,
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
        let sent = self.sent.unwrap_or_default();
        [0, 1].map(|i| sent[i].saturating_sub(self.from_ports[i]))
    }

    /// Copies guest output until the status line (and, with `@sent`, until
    /// the ports have delivered what it counts), the deadline, a failed
    /// output stream, or until every pipe is closed (QEMU has exited).
    fn until_status(&mut self, times: &mut PhaseTimes) -> PumpEnd {
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
                        let mut reader = None;
                        let mut sent = None;
                        let console = self.stdin.console;
                        let code = self.parser.feed(data, |line| match line {
                            StatusLine::Event(name) => {
                                reader = reader.or(vmm::stdin_reader_after(name, console));
                                if name == "init" && times.init.is_none() {
                                    times.init = Some(Instant::now());
                                }
                                if let Some(counts) = vmm::status::sent_counts(name) {
                                    sent = Some(counts);
                                }
                            }
                            StatusLine::Other(text) => log::debug!("status channel: {text}"),
                            StatusLine::Exit(_) => {}
                        });
                        if let Some(reader) = reader {
                            self.start_stdin(reader);
                        }
                        if sent.is_some() {
                            self.sent = sent;
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
    fn drain_outputs(&mut self, end: &PumpEnd) -> Result<(), Undelivered> {
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

fn outcome(
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
    }
}

/// Reads what is there from `fd`, one of the pump's own open pipes; 0 at
/// end of file or on error.
fn read_some(fd: RawFd, buf: &mut [u8]) -> usize {
    super::read_retrying(fd, buf).unwrap_or(0)
}

/// A pipe whose write end QEMU inherits.
struct Pipe {
    reader: io::PipeReader,
    writer: Option<io::PipeWriter>,
}

impl Pipe {
    fn new() -> Result<Self, QemuEngineError> {
        let (reader, writer) = io::pipe().map_err(QemuEngineError::Setup)?;
        Ok(Self {
            reader,
            writer: Some(writer),
        })
    }

    fn write_fd(&self) -> RawFd {
        self.writer.as_ref().map_or(-1, |w| w.as_raw_fd())
    }

    fn take_writer(&self) -> Result<OwnedFd, QemuEngineError> {
        match &self.writer {
            Some(w) => w.as_fd().try_clone_to_owned(),
            None => Err(io::Error::other("the pipe's write end is gone")),
        }
        .map_err(QemuEngineError::Setup)
    }

    fn into_reader(self) -> OwnedFd {
        drop(self.writer);
        OwnedFd::from(self.reader)
    }
}

/// The initrd as QEMU needs it, one file: a memfd holding the rootfs
/// archive and the guest-init archive, so nothing is written to disk.
fn initrd_memfd(initrd: &BootInitrd) -> Result<OwnedFd, QemuEngineError> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd
    // is checked and owned below.
    let fd = unsafe { libc::memfd_create(c"microrun-initrd".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(QemuEngineError::Setup(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    let initrd_err = |source| QemuEngineError::Initrd {
        path: initrd.rootfs.clone(),
        source,
    };
    let mut rootfs = vmm::regular_file::open(&initrd.rootfs).map_err(initrd_err)?;
    let copied = io::copy(&mut rootfs, &mut file).map_err(initrd_err)?;
    let pad = copied.next_multiple_of(4) - copied;
    file.write_all(&[0u8; 3][..pad as usize])
        .map_err(QemuEngineError::Setup)?;
    if let Some(archive) = &initrd.init_archive {
        file.write_all(archive).map_err(QemuEngineError::Setup)?;
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_accelerators_are_kept() {
        assert_eq!(resolve_accel(Accel::Tcg).0, Accel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm).0, Accel::Kvm);
        assert_ne!(resolve_accel(Accel::Auto).0, Accel::Auto);
    }

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
