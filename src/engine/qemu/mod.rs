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
//! itself. A kernel that cannot take that ([`kernel_plan`], which the plan
//! calls before guest-init's archive is made) gets the same devices on PCI
//! under `-M pc` (`virtio-serial-pci`, `virtio-9p-pci`). The arguments are
//! [`args::args`], a pure function of the plan.
//!
//! Every output is a pipe read here: ttyS0 (the console), the stdout and
//! stderr ports (a pipe each) and the status channel (ttyS2); ttyS1 is a
//! socket, so that stdin can go in through it too. Forwarded stdin goes,
//! from the guest event that says where the program reads
//! ([`vmm::GuestEvents`]), into that socket or into QEMU's own
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

mod args;
mod pump;
mod spawn;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use vmm::output::{self, FdWriter, OutputSink, Undelivered};
use vmm::status::StatusParser;
use vmm::{DeviceKind, GuestEvents, KvmHost};

use crate::console_watch::ConsoleWatch;
use crate::engine::confine::{ConfineError, Confinement, Writer};
use crate::guest_kernel::KernelPlan;
use crate::plan::{Plan, VmPlan};
use crate::spec::{PhaseTimes, RunOutcome, Verbosity};
use pump::{Pump, PumpEnd, StdinFeeds};
use spawn::{initrd_memfd, Pipe};

/// The QEMU binary microrun runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Whether QEMU's binary is on `PATH`, as an executable file.
pub fn installed() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(QEMU))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

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
    /// passt could not be started (`--net`).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The filter for QEMU's share server cannot be built.
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

/// Picks the concrete accelerator for `Auto` from what `kvm_host` (the
/// KVM probe, called only for `Auto`) finds, with the reason.
pub fn resolve_accel(accel: Accel, kvm_host: impl FnOnce() -> KvmHost) -> (Accel, String) {
    if accel != Accel::Auto {
        return (accel, "as asked".into());
    }
    match kvm_host() {
        KvmHost::Hardware => (Accel::Kvm, "hardware KVM found".into()),
        KvmHost::Emulated(why) | KvmHost::Unavailable(why) => (Accel::Tcg, why),
    }
}

/// The qemu engine's bus for the devices of a plan, from `mmio` (the
/// kernel's plan on virtio-mmio, as for microrun's VMM). QEMU's
/// virtio-mmio devices exist only on `-M microvm` with `acpi=off`, where
/// QEMU names them on the command line itself, at addresses of its own: so
/// the kernel must take `virtio_mmio.device=` with `virtio_mmio` built in
/// (as a module it would need those addresses as its parameters). Any
/// other kernel gets its devices on PCI (`-M pc`), in the plan `pci`
/// makes, when it has virtio-pci; otherwise the UARTs, and no shares.
pub fn kernel_plan(mut mmio: KernelPlan, pci: impl FnOnce() -> KernelPlan) -> KernelPlan {
    if mmio.kinds.is_empty() && mmio.refused.is_empty() {
        return mmio;
    }
    let mmio_module = mmio.modules.iter().any(|m| m.file_name == "virtio_mmio.ko");
    if mmio.cmdline_discovery && !mmio_module {
        mmio.acpi_discovery = false;
        return mmio;
    }
    let mut plan = pci();
    plan.notes.insert(
        0,
        if !mmio.cmdline_discovery {
            "the qemu engine: this kernel does not read virtio-mmio devices from the command \
             line (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES); trying virtio-pci (-M pc)"
        } else {
            "the qemu engine: this kernel's virtio_mmio is a module, which cannot read the \
             devices QEMU names on the command line; trying virtio-pci (-M pc)"
        }
        .to_string(),
    );
    plan
}

/// Boots `vm` under QEMU with `accel` (resolved, for the reason `why`) and
/// reports how the run of `plan` ended.
pub fn run(
    plan: &Plan,
    vm: &VmPlan,
    accel: Accel,
    why: &str,
) -> Result<RunOutcome, QemuEngineError> {
    if plan.verbosity == Verbosity::Verbose {
        crate::say(format_args!("qemu engine: accel {accel:?} ({why})"));
    }
    let initrd = initrd_memfd(&vm.initrd)?;
    let console = Pipe::new()?;
    let (ttys1, ttys1_qemu) = UnixStream::pair().map_err(QemuEngineError::Setup)?;
    let status = Pipe::new()?;
    let qemu_err = Pipe::new()?;
    let has_console = vm.devices.has_console();
    // The stdout and stderr ports get pipes of their own, so that the bytes
    // from each can be counted against guest-init's `@sent`.
    let ports = if has_console {
        Some([Pipe::new()?, Pipe::new()?])
    } else {
        None
    };
    if args::microvm(vm) {
        log::info!(
            "kernel command line for -M microvm (QEMU appends its virtio-mmio devices): {}",
            args::cmdline(vm)
        );
    }
    // With --net: passt on one end of a socket pair, QEMU on the other;
    // passt serves until it is dropped after the run.
    let (_passt, net_socket) = match &vm.net {
        Some(net) => {
            let (passt, socket) = crate::net::helper::start_passt(net)?;
            (Some(passt), Some(socket))
        }
        None => (None, None),
    };
    let fds = args::Fds {
        initrd: initrd.as_raw_fd(),
        console: console.write_fd(),
        ttys1: ttys1_qemu.as_raw_fd(),
        status: status.write_fd(),
        ports: ports
            .as_ref()
            .map(|[out, err]| [out.write_fd(), err.write_fd()]),
        net: net_socket.as_ref().map(AsRawFd::as_raw_fd),
    };
    let stdin_port = plan.forward_stdin && has_console;
    let mut cmd = Command::new(QEMU);
    cmd.args(args::args(vm, accel, fds, stdin_port));
    // Stdin is fed only from the guest event that says where the program
    // reads: the guest's serial driver clears its FIFO when it opens ttyS1,
    // so earlier bytes would be lost. With the virtio-console, QEMU's own
    // stdin is the stdin port's; ttyS1's way in is its socket.
    let mut stdin = StdinFeeds {
        port: None,
        uart: None,
    };
    if plan.forward_stdin {
        stdin.uart = Some(ttys1.try_clone().map_err(QemuEngineError::Setup)?);
    }
    if stdin_port {
        let (reader, writer) = io::pipe().map_err(QemuEngineError::Setup)?;
        cmd.stdin(Stdio::from(reader));
        stdin.port = Some(writer);
    } else {
        cmd.stdin(Stdio::null());
    }
    // QEMU writes nothing of the guest's to its own stdout.
    cmd.stdout(Stdio::from(qemu_err.take_writer()?));
    cmd.stderr(Stdio::from(qemu_err.take_writer()?));
    let mut inherit = vec![fds.initrd, fds.console, fds.status, fds.ttys1];
    inherit.extend(fds.ports.iter().flatten());
    inherit.extend(fds.net);
    let mut times = PhaseTimes {
        ready: Some(Instant::now()),
        ..PhaseTimes::default()
    };
    // QEMU's 9p server writes the guest's files into the shares: it may
    // make no set-user-ID or set-group-ID file, give no file away, and, as
    // root, must honour other users' permissions (engine/confine.rs).
    let shares = vm
        .devices
        .devices
        .iter()
        .any(|d| d.kind() == DeviceKind::Share);
    let confinement = shares
        .then(|| Confinement::for_shares(Writer::Host))
        .transpose()?;
    let mut child = spawn::spawn(cmd, inherit, confinement)?;
    // Only QEMU may hold the write ends now, so its death closes them.
    drop(initrd);
    drop(ttys1_qemu);
    drop(net_socket);
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
    let mut pipes: [Option<OwnedFd>; 6] = Default::default();
    pipes[pump::STATUS] = Some(status);
    pipes[pump::STDOUT] = Some(ttys1);
    pipes[pump::CONSOLE] = Some(console);
    pipes[pump::QEMU_ERR] = Some(qemu_err);
    pipes[pump::PORT_OUT] = port_out;
    pipes[pump::PORT_ERR] = port_err;
    let mut pump = Pump {
        pipes,
        from_ports: [0; 2],
        events: GuestEvents::new(has_console, plan.forward_stdin),
        to_stdout: sink("stdout", 1)?,
        to_stderr: sink("stderr", 2)?,
        deadline: plan.deadline(),
        parser: StatusParser::new(),
        qemu_stderr: Vec::new(),
        verbose: plan.verbosity == Verbosity::Verbose,
        console_watch: ConsoleWatch::default(),
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
    let mut outcome = pump::outcome(end, wait, &pump.qemu_stderr, times);
    outcome.unpack_failure = pump.console_watch.unpack_failure();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_kernel::{GuestModule, Transport};
    use vmm::DeviceKind::{Console, Share};

    #[test]
    fn explicit_accelerators_are_kept() {
        let unprobed = || panic!("probed KVM for an accelerator given");
        assert_eq!(resolve_accel(Accel::Tcg, unprobed).0, Accel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm, unprobed).0, Accel::Kvm);
        assert_ne!(resolve_accel(Accel::Auto, vmm::kvm_host).0, Accel::Auto);
    }

    #[test]
    fn the_qemu_engine_takes_virtio_mmio_only_where_qemu_can_announce_it() {
        let wanted = KernelPlan {
            kinds: vec![Console, Share],
            cmdline_discovery: true,
            acpi_discovery: true,
            ..KernelPlan::default()
        };
        let pci = KernelPlan {
            transport: Transport::Pci,
            ..wanted.clone()
        };
        let never = || -> KernelPlan { panic!("no PCI plan needed") };
        let plan = kernel_plan(wanted.clone(), never);
        assert!(plan.drives(Share) && !plan.acpi_discovery);
        assert_eq!(plan.transport, Transport::Mmio);
        // ACPI only (Debian): virtio-pci instead.
        let acpi_only = KernelPlan {
            cmdline_discovery: false,
            ..wanted.clone()
        };
        let plan = kernel_plan(acpi_only, || pci.clone());
        assert_eq!(plan.transport, Transport::Pci);
        assert!(plan.notes[0].contains("virtio-pci"), "{:?}", plan.notes);
        // virtio_mmio as a module would need QEMU's addresses as parameters.
        let mut module = wanted.clone();
        module.modules.push(GuestModule {
            file_name: "virtio_mmio.ko".into(),
            bytes: Vec::new(),
            params: String::new(),
        });
        assert_eq!(
            kernel_plan(module, || pci.clone()).transport,
            Transport::Pci
        );
        // Nothing virtio wanted: nothing to change.
        let uarts = KernelPlan::none("off".into());
        assert_eq!(kernel_plan(uarts.clone(), never), uarts);
    }
}
