//! A purpose-built KVM microVM: boots a Linux kernel (bzImage, ELF vmlinux
//! or PVH) with three 16550A UARTs (console, stdout, status) and an i8042
//! reset port, and returns how the VM ended.
//!
//! ```no_run
//! use std::time::Instant;
//! let outcome = vmm::run(vmm::VmConfig {
//!     kernel: "bzImage".into(),
//!     initrd: vec![vmm::InitrdPart::File("initrd.cpio".into())],
//!     cmdline: "console=ttyS0 panic=-1".into(),
//!     mem_size: 128 << 20,
//!     vcpus: 1,
//!     timeout: None,
//!     forward_stdin: false,
//!     irqchip: vmm::IrqChip::default(),
//!     console: Box::new(std::io::stderr()),
//!     stdout: Box::new(std::io::stdout()),
//!     process_start: Instant::now(),
//!     seccomp: true,
//!     virtio: vmm::VirtioOptions::default(),
//! })?;
//! std::process::exit(outcome.end.exit_code().into());
//! # Ok::<(), vmm::VmmError>(())
//! ```
#![deny(missing_docs)]

pub mod acpi;
pub mod devices;
pub mod initrd;
pub mod irqchip;
pub mod kernel;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod output;
pub mod regular_file;
pub mod seccomp;
pub mod status;
pub mod vcpu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use devices::i8042::I8042;
use devices::ioapic::IoApic;
use devices::serial::{IrqTrigger, SerialDevice, StatusOutput};
use devices::virtio::console::{Console, ConsoleInput, ConsoleOutputs};
use devices::virtio::{p9, MmioTransport};
use devices::{bus::lock, Bus, Devices};
pub use initrd::InitrdPart;
pub use irqchip::IrqChip;
use irqchip::KvmMsiSink;
use kernel::BootProtocol;
use memory::GuestMemory;
use output::{OutputFailure, OutputSink, Undelivered};
use vcpu::{VcpuContext, VcpuEnd, VcpuMessage};

/// Everything needed to boot one VM.
pub struct VmConfig {
    /// The kernel: bzImage, ELF vmlinux, or ELF with a PVH note.
    pub kernel: PathBuf,
    /// The initrd parts, concatenated in order, each 4-byte aligned; empty for none.
    pub initrd: Vec<InitrdPart>,
    /// The complete kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Stop the VM (exit code 124) this long after `process_start`.
    pub timeout: Option<Duration>,
    /// Feed host stdin to ttyS1's receive side.
    pub forward_stdin: bool,
    /// Which interrupt controllers KVM provides (see [`IrqChip`]).
    pub irqchip: IrqChip,
    /// ttyS0 output (the caller's stderr). Written from a thread of its
    /// own ([`output`]), so a writer that blocks never holds a vCPU.
    pub console: Box<dyn Write + Send>,
    /// ttyS1 output, byte for byte, likewise; everything the guest wrote
    /// has reached it before `run` returns (unless the deadline passed or
    /// it failed).
    pub stdout: Box<dyn Write + Send>,
    /// Origin of the timings.
    pub process_start: Instant,
    /// Run every VMM thread under its seccomp filter ([`seccomp`]). The
    /// calling thread is one of them: it stays under the supervisor's
    /// filter after `run` returns, so it can report the outcome and exit,
    /// not open files or start threads (start any thread before `run`).
    pub seccomp: bool,
    /// The virtio devices, and how the kernel finds them.
    pub virtio: VirtioOptions,
}

/// Which virtio devices the VM has and how its kernel learns of them.
/// Without a console, the UARTs carry the program's streams alone; with
/// one, the UARTs stay (guest-init falls back to them when the console's
/// ports never appear) and both write to the same outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioOptions {
    /// A virtio-console with the program's stdout, stderr and stdin ports
    /// ([`devices::virtio::console`]); host stdin, when forwarded, goes to
    /// its stdin port, with an end of file.
    pub console: bool,
    /// Host directories served to the guest, one virtio-9p device each
    /// ([`devices::virtio::p9`]), in [`layout::VIRTIO_SHARE_SLOTS`] order.
    pub shares: Vec<SharedDir>,
    /// Name the devices on the kernel command line (`virtio_mmio.device=`,
    /// for kernels with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
    pub cmdline: bool,
    /// Describe them in ACPI tables ([`acpi`]), for kernels that find
    /// virtio-mmio devices only there.
    pub acpi: bool,
}

/// One host directory the guest mounts over 9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    /// The directory, absolute; nothing outside it is reachable.
    pub source: PathBuf,
    /// The mount tag the guest names it by (at most
    /// [`devices::virtio::p9::MAX_TAG_LEN`] bytes).
    pub tag: String,
    /// Refuse every change with EROFS.
    pub read_only: bool,
}

impl VirtioOptions {
    /// The slots of the devices present, in the order the guest sees them:
    /// the console's, then one per share.
    pub fn slots(&self) -> Vec<layout::VirtioMmioSlot> {
        layout::virtio_slots(self.console, self.shares.len())
    }

    /// `cmdline` with the `virtio_mmio.device=` arguments in front (before
    /// any `--` in it, which would hand them to init), when asked for.
    pub fn kernel_cmdline(&self, cmdline: &str) -> String {
        let slots = self.slots();
        if !self.cmdline || slots.is_empty() {
            return cmdline.to_string();
        }
        let mut out: Vec<String> = slots
            .iter()
            .map(|s| format!("virtio_mmio.device={}", s.cmdline_device()))
            .collect();
        out.push(cmdline.to_string());
        out.join(" ")
    }
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest reported this exit status on the status channel.
    Status(u8),
    /// The timeout expired and the VM was stopped.
    Timeout,
    /// The guest reset the machine without reporting a status.
    Reset,
    /// The guest shut down (triple fault) without reporting a status.
    Shutdown,
    /// KVM could not run the guest (internal error, failed entry).
    GuestError(String),
    /// Writing the guest's output failed (a full disk, a closed pipe); the
    /// VM was stopped.
    OutputFailed(OutputFailure),
}

impl VmEnd {
    /// microrun's exit code: the status, 124 for a timeout, 141 (128 +
    /// SIGPIPE, as for a program whose reader went away) when the reader of
    /// its output closed it, else 125.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmEnd::Status(n) => *n,
            VmEnd::Timeout => 124,
            VmEnd::OutputFailed(f) if f.is_closed_reader() => 128 + libc::SIGPIPE as u8,
            _ => 125,
        }
    }

    /// One line for stderr.
    pub fn describe(&self) -> String {
        match self {
            VmEnd::Status(n) => format!("the guest reported exit status {n}"),
            VmEnd::Timeout => "the timeout expired; the VM was stopped".into(),
            VmEnd::Reset => {
                "the VM reset without reporting an exit status (kernel panic or reboot?)".into()
            }
            VmEnd::Shutdown => {
                "the VM shut down (triple fault) without reporting an exit status".into()
            }
            VmEnd::GuestError(msg) => format!("KVM could not run the guest: {msg}"),
            VmEnd::OutputFailed(failure) => format!("{failure}; the VM was stopped"),
        }
    }
}

/// When each stage was reached.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Origin (the caller's process start).
    pub process_start: Instant,
    /// The VM is built and loaded; vCPU threads are about to start.
    pub vm_ready: Option<Instant>,
    /// vCPU 0's first `KVM_RUN`.
    pub first_run: Option<Instant>,
    /// The `@init` event on the status channel.
    pub init_event: Option<Instant>,
    /// The exit-status line.
    pub status: Option<Instant>,
    /// All vCPUs stopped and outputs flushed.
    pub exit: Option<Instant>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How the VM ended.
    pub end: VmEnd,
    /// When each stage was reached.
    pub timings: Timings,
    /// The interrupt controller model the VM had (the one asked for, or
    /// [`IrqChip::Kernel`] where KVM has no split irqchip).
    pub irqchip: IrqChip,
}

/// What kind of KVM this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// Hardware virtualization.
    Hardware,
    /// KVM that emulates guest kernel code (e.g. `kvm_pvm`); the text says why.
    Emulated(String),
    /// No usable `/dev/kvm`; the text says why and what to do.
    Unavailable(String),
}

const KVM_DEVICE: &str = "/dev/kvm";

/// Probes `/dev/kvm` and the loaded KVM module.
pub fn kvm_host() -> KvmHost {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
    {
        return KvmHost::Unavailable(kvm_open_advice(
            e.raw_os_error().unwrap_or(0),
            &e.to_string(),
        ));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return KvmHost::Emulated(
            "KVM here is kvm_pvm, a software emulator (/sys/module/kvm_pvm exists): guest kernel code runs at about 1 MIPS".into(),
        );
    }
    KvmHost::Hardware
}

fn kvm_open_advice(errno: i32, error: &str) -> String {
    match errno {
        libc::ENOENT => format!(
            "{KVM_DEVICE} does not exist: load kvm_intel or kvm_amd (with virtualization enabled), or use --engine qemu"
        ),
        libc::EACCES | libc::EPERM => format!(
            "no access to {KVM_DEVICE}: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again)"
        ),
        _ => format!("cannot open {KVM_DEVICE}: {error}"),
    }
}

/// Errors building or starting the VM (exit code 125).
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` cannot be used.
    #[error("{0}")]
    KvmUnavailable(String),
    /// A KVM VM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The vCPU count is out of range.
    #[error("cannot run {requested} vCPUs: between 1 and {max} are supported here")]
    VcpuCount {
        /// Requested count.
        requested: u8,
        /// The limit (KVM's and the MP table's).
        max: usize,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The kernel.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The initrd.
    #[error(transparent)]
    Initrd(#[from] initrd::InitrdError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// The interrupt controllers.
    #[error(transparent)]
    IrqChip(#[from] irqchip::IrqChipError),
    /// The device bus.
    #[error(transparent)]
    Bus(#[from] devices::BusError),
    /// A seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A virtio device.
    #[error(transparent)]
    Virtio(#[from] devices::virtio::VirtioError),
    /// A share cannot be served.
    #[error(transparent)]
    Share(#[from] p9::P9Error),
    /// An event fd or thread could not be created.
    #[error("cannot {what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Host { what, source }
}

/// Boots the VM described by `config` and runs it until it ends.
///
/// The steps follow the boot checklist: KVM, guest memory, VM (interrupt
/// controllers), kernel, command line, initrd, zero page or PVH info, MP
/// table, boot page tables, devices, vCPUs, the memory slot, then the run
/// loop.
pub fn run(config: VmConfig) -> Result<Outcome, VmmError> {
    let VmConfig {
        kernel: kernel_path,
        initrd: initrd_parts,
        cmdline,
        mem_size,
        vcpus,
        timeout,
        forward_stdin,
        irqchip: wanted_irqchip,
        console,
        stdout,
        process_start,
        seccomp: seccomp_wanted,
        virtio,
    } = config;
    let given = cmdline;
    let cmdline = virtio.kernel_cmdline(&given);
    if cmdline != given {
        log::info!("kernel command line, with the devices in front: {cmdline}");
    }
    let mut timings = Timings {
        process_start,
        vm_ready: None,
        first_run: None,
        init_event: None,
        status: None,
        exit: None,
    };

    let kvm = Kvm::new()
        .map_err(|e| VmmError::KvmUnavailable(kvm_open_advice(e.errno(), &e.to_string())))?;
    let max_vcpus = kvm.get_max_vcpus().min(usize::from(mptable::MAX_CPUS));
    if vcpus == 0 || usize::from(vcpus) > max_vcpus {
        return Err(VmmError::VcpuCount {
            requested: vcpus,
            max: max_vcpus,
        });
    }

    // Compiled before anything starts, installed by each thread on itself.
    let filters = seccomp_wanted.then(seccomp::Filters::compile).transpose()?;
    let mem = memory::create_guest_memory(mem_size)?;
    let output_filter = || filters.as_ref().map(|f| f.output.clone());
    let sinks = Sinks {
        stdout: OutputSink::spawn_filtered(
            "stdout",
            stdout,
            output::DEFAULT_CAPACITY,
            output_filter(),
        )
        .map_err(host_err("start the stdout writer thread"))?,
        console: OutputSink::spawn_filtered(
            "stderr",
            console,
            output::DEFAULT_CAPACITY,
            output_filter(),
        )
        .map_err(host_err("start the stderr writer thread"))?,
    };
    let outputs = || -> Outputs {
        Outputs {
            console: Box::new(sinks.console.clone()),
            stdout: Box::new(sinks.stdout.clone()),
        }
    };
    let (uarts, console_ports) = (outputs(), virtio.console.then(outputs));
    let vm = Arc::new(create_vm(&kvm)?);
    let model = irqchip::create(&kvm, &vm, wanted_irqchip)?;
    let spec = BootSpec {
        kernel: &kernel_path,
        initrd: &initrd_parts,
        cmdline: &cmdline,
        mem_size,
        vcpus,
        irqchip: model,
        virtio,
        fs_filter: filters.as_ref().map(|f| f.fs.clone()),
    };
    let (devices, vcpu_fds) = match model {
        IrqChip::Split => set_up_guest(&kvm, &vm, &mem, &spec, uarts, console_ports)?,
        IrqChip::Kernel => std::thread::scope(|scope| {
            // Switching off PIT re-injection sometimes waits 12-20 ms for an
            // SRCU grace period (see the function); on its own thread that
            // wait overlaps the rest of the setup, which waits for another.
            let pit = std::thread::Builder::new()
                .name("pit".into())
                .spawn_scoped(scope, || irqchip::switch_off_pit_reinjection(&kvm, &vm));
            let built = set_up_guest(&kvm, &vm, &mem, &spec, uarts, console_ports);
            let pit = match pit {
                Ok(thread) => thread
                    .join()
                    .unwrap_or(Err(irqchip::IrqChipError::PitThreadPanicked)),
                Err(_) => irqchip::switch_off_pit_reinjection(&kvm, &vm),
            };
            let built = built?;
            pit.map(|()| built).map_err(VmmError::from)
        })?,
    };
    timings.vm_ready = Some(Instant::now());

    let stdin_gate = if forward_stdin {
        let (open, gate) = mpsc::channel();
        let targets = StdinTargets {
            uart: Arc::downgrade(&devices.stdout),
            console: devices.console_input.clone(),
        };
        spawn_stdin_forwarder(targets, gate, filters.as_ref().map(|f| f.stdin.clone()))?;
        Some(StdinGate {
            open,
            console: devices.console_input.is_some(),
        })
    } else {
        None
    };
    // The limit counts from the process's start, as in every engine: the
    // whole run, not only the guest, stays within it.
    let deadline = deadline_after(process_start, timeout);
    let end = run_vcpus(
        vcpu_fds,
        &devices,
        &sinks,
        &mem,
        Limits {
            deadline,
            filters: filters.as_ref(),
        },
        stdin_gate,
        &mut timings,
    )?;
    drop(devices);
    let end = deliver_output(end, &sinks, deadline);
    timings.exit = Some(Instant::now());
    Ok(Outcome {
        end,
        timings,
        irqchip: model,
    })
}

/// The queues between the devices and the caller's writers.
struct Sinks {
    stdout: OutputSink,
    console: OutputSink,
}

impl Sinks {
    fn both(&self) -> [&OutputSink; 2] {
        [&self.stdout, &self.console]
    }
}

/// How long the output may take to drain after a timeout (the VM is
/// already stopped), so that microrun exits within a second of the limit.
const TIMEOUT_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Waits until everything the guest wrote has reached the caller's writers
/// (before the caller acts on the status), within the deadline; returns
/// how the run ended once its output is accounted for.
fn deliver_output(end: VmEnd, sinks: &Sinks, deadline: Option<Instant>) -> VmEnd {
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

/// What the guest boots, borrowed from [`VmConfig`].
struct BootSpec<'a> {
    kernel: &'a Path,
    initrd: &'a [InitrdPart],
    cmdline: &'a str,
    mem_size: u64,
    vcpus: u8,
    irqchip: IrqChip,
    /// The virtio devices and how the kernel learns of them (the command
    /// line above already names them when it should).
    virtio: VirtioOptions,
    /// The filter each share's worker installs on itself.
    fs_filter: Option<seccompiler::BpfProgram>,
}

/// Where the guest's console (ttyS0, the stderr port) and stdout (ttyS1,
/// the stdout port) go.
struct Outputs {
    console: Box<dyn Write + Send>,
    stdout: Box<dyn Write + Send>,
}

/// Everything between creating the VM and running it: loads the kernel,
/// initrd and boot structures, creates the devices and vCPUs, then
/// registers guest memory.
fn set_up_guest(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    spec: &BootSpec,
    uarts: Outputs,
    console_ports: Option<Outputs>,
) -> Result<(VmDevices, Vec<kvm_ioctls::VcpuFd>), VmmError> {
    let kernel = kernel::load_kernel(mem, spec.kernel, spec.mem_size)?;
    kernel::load_cmdline(mem, spec.cmdline, kernel.image.cmdline_max)?;
    let initrd = initrd::load_initrd(
        mem,
        spec.initrd,
        kernel.end,
        kernel.image.initrd_addr_max,
        spec.mem_size,
    )?;
    // The MP table stays for kernels without ACPI; one with ACPI reads
    // the MADT instead.
    mptable::setup_mptable(mem, spec.vcpus)?;
    let acpi = spec
        .virtio
        .acpi
        .then(|| acpi::write_acpi_tables(mem, spec.vcpus, &spec.virtio.slots()))
        .transpose()?;
    match kernel.protocol {
        BootProtocol::Linux64 => kernel::configure_zero_page(
            mem,
            &kernel,
            spec.cmdline.len(),
            initrd,
            spec.mem_size,
            acpi.as_ref(),
        )?,
        BootProtocol::Pvh => kernel::configure_pvh(mem, initrd, spec.mem_size, acpi.as_ref())?,
    }
    vcpu::setup_boot_tables(mem, kernel.protocol)?;

    let devices = create_devices(vm, mem, spec, uarts, console_ports)?;

    let mut supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get the supported CPUID"))?;
    // KVM emulates the TSC-deadline timer but cannot know whether the VMM's
    // LAPIC model has it, so it leaves the bit to the VMM. Linux needs it to
    // run without a PIT (the split model has none).
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        vcpu::advertise_tsc_deadline(&mut supported_cpuid);
    }
    let mut vcpu_fds = Vec::with_capacity(usize::from(spec.vcpus));
    for id in 0..spec.vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create a vCPU"))?;
        vcpu::configure_vcpu(
            &fd,
            id,
            spec.vcpus,
            &supported_cpuid,
            kernel.entry,
            kernel.protocol,
        )?;
        vcpu_fds.push(fd);
    }
    // Last, because of how long KVM takes here: see `map_guest_memory`.
    map_guest_memory(vm, mem)?;
    Ok((devices, vcpu_fds))
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("set the identity map address"))?;
    Ok(vm)
}

/// Registers guest memory with KVM, one slot per region.
///
/// This is the last step before the vCPUs run, and that order is deliberate:
/// with the in-kernel irqchip, KVM frees the I/O bus replaced by each
/// in-kernel device (PIC, I/O APIC, PIT) after an SRCU grace period that is
/// not expedited, and a memory slot change waits for that grace period to
/// end (one to two timer ticks, 4-8 ms at HZ=250). Everything done before
/// it overlaps with that wait. (The split irqchip has no such wait.)
fn map_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by `mem`, which outlives the VM's use of it: every vCPU
        // thread is joined before `run` returns and drops `mem`.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

type ConsoleUart = SerialDevice<Box<dyn Write + Send>>;

/// The devices, and the UART that stdin feeds.
struct VmDevices {
    map: Arc<Devices>,
    console: Arc<Mutex<ConsoleUart>>,
    stdout: Arc<Mutex<ConsoleUart>>,
    /// The virtio-console's stdin port, when there is one.
    console_input: Option<ConsoleInput>,
    vm: Arc<VmFd>,
}

impl VmDevices {
    /// The interrupt state of the UARTs and their I/O APIC pins, for a
    /// guest that hangs (say, waiting for an interrupt that never came).
    fn describe_interrupts(&self) -> String {
        let pin = |irq: u32| -> String {
            let entry = match &self.map.ioapic {
                Some(ioapic) => lock(ioapic).redirection_entry(irq as usize),
                None => {
                    let mut chip = kvm_bindings::kvm_irqchip {
                        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
                        ..Default::default()
                    };
                    self.vm.get_irqchip(&mut chip).ok().map(|()| {
                        // SAFETY: for KVM_IRQCHIP_IOAPIC, KVM fills the
                        // `ioapic` member of the union.
                        unsafe { chip.chip.ioapic.redirtbl[irq as usize].bits }
                    })
                }
            };
            entry.map_or("unknown".into(), |e| format!("{e:#x}"))
        };
        format!(
            "ttyS0 {} (I/O APIC pin 4 {}); ttyS1 {} (pin 3 {})",
            lock(&self.console).describe(),
            pin(layout::SERIAL_CONSOLE_IRQ),
            lock(&self.stdout).describe(),
            pin(layout::SERIAL_STDOUT_IRQ)
        )
    }
}

/// The interrupt line of ISA IRQ `irq`: an irqfd for KVM's in-kernel
/// irqchip, or the matching pin of the VMM's I/O APIC (the MP table routes
/// ISA IRQ n to pin n).
fn irq_line(
    vm: &Arc<VmFd>,
    ioapic: Option<&Arc<Mutex<IoApic>>>,
    irq: u32,
) -> Result<IrqTrigger, VmmError> {
    if let Some(ioapic) = ioapic {
        return Ok(IrqTrigger::Pin(ioapic.clone(), irq as usize));
    }
    Ok(IrqTrigger::Line(vm.clone(), irq))
}

fn create_devices(
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    spec: &BootSpec,
    uarts: Outputs,
    console_ports: Option<Outputs>,
) -> Result<VmDevices, VmmError> {
    let Outputs { console, stdout } = uarts;
    let ioapic = (spec.irqchip == IrqChip::Split).then(|| {
        // The I/O APIC's ID follows the vCPUs' APIC IDs, as in the MP table.
        let sink = Box::new(KvmMsiSink(vm.clone()));
        Arc::new(Mutex::new(IoApic::new(spec.vcpus, sink)))
    });
    let irq4 = irq_line(vm, ioapic.as_ref(), layout::SERIAL_CONSOLE_IRQ)?;
    let irq3 = irq_line(vm, ioapic.as_ref(), layout::SERIAL_STDOUT_IRQ)?;
    // ttyS0 and ttyS2 share IRQ 4, so they share its line.
    let irq4_status = match &irq4 {
        IrqTrigger::Fd(fd) => {
            IrqTrigger::Fd(fd.try_clone().map_err(host_err("clone an event fd"))?)
        }
        IrqTrigger::Pin(ioapic, pin) => IrqTrigger::Pin(ioapic.clone(), *pin),
        IrqTrigger::Line(vm, irq) => IrqTrigger::Line(vm.clone(), *irq),
    };
    let console = Arc::new(Mutex::new(SerialDevice::new(irq4, console)));
    let stdout = Arc::new(Mutex::new(SerialDevice::new(irq3, stdout)));
    let status = Arc::new(Mutex::new(SerialDevice::new(
        irq4_status,
        StatusOutput::default(),
    )));
    let mut pio = Bus::new();
    let uart_len = u64::from(layout::SERIAL_PORT_LEN);
    pio.insert(
        console.clone(),
        layout::SERIAL_CONSOLE_PORT.into(),
        uart_len,
    )?;
    pio.insert(stdout.clone(), layout::SERIAL_STDOUT_PORT.into(), uart_len)?;
    pio.insert(status, layout::SERIAL_STATUS_PORT.into(), uart_len)?;
    pio.insert(
        Arc::new(Mutex::new(I8042)),
        layout::I8042_PORT.into(),
        layout::I8042_PORT_LEN.into(),
    )?;
    // Port 0x80 (POST codes, used as an I/O delay) needs no device: the bus
    // ignores writes to empty ports.
    let mut mmio = Bus::new();
    if let Some(ioapic) = &ioapic {
        mmio.insert(
            ioapic.clone(),
            layout::IO_APIC_DEFAULT_PHYS_BASE.into(),
            layout::IO_APIC_MMIO_LEN,
        )?;
    }
    // SAFETY: these calls only return the caller's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    for (share, slot) in spec.virtio.shares.iter().zip(layout::VIRTIO_SHARE_SLOTS) {
        let policy = p9::policy::Policy {
            read_only: share.read_only,
            uid,
            gid,
        };
        let device = p9::NineP::new(&share.source, &share.tag, policy, spec.fs_filter.clone())?;
        let line = Arc::new(irq_line(vm, ioapic.as_ref(), slot.gsi)?);
        let transport = MmioTransport::new(device, mem.clone(), line)?;
        mmio.insert(Arc::new(Mutex::new(transport)), slot.addr, slot.len)?;
    }
    let console_input = match console_ports {
        Some(outputs) => {
            let slot = layout::VIRTIO_CONSOLE_SLOT;
            let device = Console::new(ConsoleOutputs {
                stdout: outputs.stdout,
                stderr: outputs.console,
            });
            let input = device.input();
            let line = Arc::new(irq_line(vm, ioapic.as_ref(), slot.gsi)?);
            let transport = MmioTransport::new(device, mem.clone(), line)?;
            mmio.insert(Arc::new(Mutex::new(transport)), slot.addr, slot.len)?;
            Some(input)
        }
        None => None,
    };
    Ok(VmDevices {
        map: Arc::new(Devices { pio, mmio, ioapic }),
        console,
        stdout,
        console_input,
        vm: vm.clone(),
    })
}

/// Where host stdin goes.
enum StdinTarget {
    /// ttyS1's receive FIFO: no end of file.
    Uart(std::sync::Weak<Mutex<ConsoleUart>>),
    /// The virtio-console's stdin port, which ends when stdin does.
    Virtio(ConsoleInput),
}

impl StdinTarget {
    /// Hands over as much of `data` as there is room for; `None` once the
    /// device is gone.
    fn send(&self, data: &[u8]) -> Option<usize> {
        match self {
            // Upgraded per attempt: between attempts (and while blocked
            // in `read`) only the weak reference is held.
            StdinTarget::Uart(uart) => {
                let uart = uart.upgrade()?;
                let sent = lock(&uart).receive(data);
                Some(sent)
            }
            StdinTarget::Virtio(input) => input.push(data),
        }
    }

    fn end(&self) {
        if let StdinTarget::Virtio(input) = self {
            input.close();
        }
    }
}

/// Where host stdin may go; the gate says which.
struct StdinTargets {
    uart: std::sync::Weak<Mutex<ConsoleUart>>,
    console: Option<ConsoleInput>,
}

/// Where the program in the guest reads its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinReader {
    /// ttyS1.
    Uart,
    /// The virtio-console's `microrun.stdin` port.
    ConsolePort,
}

/// Where the program reads stdin, if guest event `name` (without its `@`)
/// says: without a virtio-console (`console` false) the first event, such
/// as guest-init's `@init`, means ttyS1; with one, guest-init's `@ports`
/// (it uses the console's ports) means the stdin port and `@uarts` (it
/// fell back to the serial ports) ttyS1. Both engines forward stdin only
/// from then on, and only there.
pub fn stdin_reader_after(name: &str, console: bool) -> Option<StdinReader> {
    match (console, name) {
        (false, _) | (true, "uarts") => Some(StdinReader::Uart),
        (true, "ports") => Some(StdinReader::ConsolePort),
        (true, _) => None,
    }
}

/// Opens the stdin forwarder, once, on the event [`stdin_reader_after`]
/// takes as the answer.
struct StdinGate {
    /// Sends the answer.
    open: mpsc::Sender<StdinReader>,
    /// The VM has a virtio-console.
    console: bool,
}

/// Feeds host stdin to the target the gate names, never more than fits,
/// once the gate opens: the guest's serial driver clears the FIFO when it
/// opens the port, and the console's driver drops input for a port nobody
/// opened, so bytes sent earlier would be lost. The thread is detached: it
/// may be blocked in `read` when the VM ends. It holds the devices weakly,
/// so that the VM can be torn down meanwhile.
fn spawn_stdin_forwarder(
    targets: StdinTargets,
    gate: mpsc::Receiver<StdinReader>,
    filter: Option<seccompiler::BpfProgram>,
) -> Result<(), VmmError> {
    seccomp::spawn(
        "stdin".into(),
        seccomp::ThreadKind::Stdin,
        filter,
        move || {
            let target = match (gate.recv(), targets.console) {
                (Ok(StdinReader::ConsolePort), Some(console)) => StdinTarget::Virtio(console),
                (Ok(_), _) => StdinTarget::Uart(targets.uart),
                (Err(_), _) => return,
            };
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => return target.end(),
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let Some(sent) = target.send(rest) else {
                        return;
                    };
                    rest = &rest[sent..];
                    if sent == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        },
    )
    .map(drop)
    .map_err(host_err("start the stdin thread"))
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn vcpu_kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// How often the supervising thread looks at the end slot and the output
/// streams while it waits for a message.
const SUPERVISOR_TICK: Duration = Duration::from_millis(50);

/// Guest events logged at `-v` before the rest are only counted: a guest
/// can write `@` lines without end.
const EVENTS_LOGGED: usize = 32;

/// What confines a run: its deadline and its threads' seccomp filters.
struct Limits<'a> {
    deadline: Option<Instant>,
    filters: Option<&'a seccomp::Filters>,
}

/// Starts the vCPU threads and supervises them until the VM ends: a vCPU
/// reports the end, the deadline passes, or an output stream fails. This
/// thread never writes to the caller's streams itself (the guest's output
/// goes through [`Sinks`], the log through the caller's logger), so a
/// stream nobody reads cannot keep it from enforcing the deadline.
fn run_vcpus(
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    devices: &VmDevices,
    sinks: &Sinks,
    mem: &GuestMemory,
    limits: Limits<'_>,
    mut stdin_gate: Option<StdinGate>,
    timings: &mut Timings,
) -> Result<VmEnd, VmmError> {
    let Limits { deadline, filters } = limits;
    static HANDLER: Once = Once::new();
    let mut handler_result = Ok(());
    HANDLER
        .call_once(|| handler_result = register_signal_handler(vcpu_kick_signal(), kick_handler));
    handler_result.map_err(|e| host_err("install the vCPU kick signal handler")(e.into()))?;

    // Bounded: a guest that floods events only loses events, never grows
    // the VMM's memory. The end itself has a slot of its own.
    let (tx, rx) = mpsc::sync_channel(64);
    let ended = Arc::new(Mutex::new(None::<VcpuEnd>));
    let stop = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<Option<()>>> = Vec::new();
    // No vCPU runs the guest before every thread's filter is in place:
    // each waits for its go, which never comes (the sender is dropped) if
    // the start fails.
    let mut gos = Vec::new();
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        let ctx = VcpuContext {
            devices: devices.map.clone(),
            stop: stop.clone(),
            events: tx.clone(),
            ended: ended.clone(),
            timed_out: timed_out.clone(),
            mem: mem.clone(),
        };
        let (go, wait_for_go) = mpsc::sync_channel::<()>(1);
        gos.push(go);
        let spawned = seccomp::spawn(
            format!("vcpu{id}"),
            seccomp::ThreadKind::Vcpu,
            filters.map(|f| f.vcpu.clone()),
            move || {
                if wait_for_go.recv().is_ok() {
                    vcpu::run_vcpu(fd, id as u8, ctx);
                }
            },
        );
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                drop(gos);
                stop_vcpus(&stop, sinks, threads, None);
                return Err(host_err("start a vCPU thread")(e));
            }
        }
    }
    drop(tx);
    if let Some(filters) = filters {
        if let Err(e) = seccomp::install(seccomp::ThreadKind::Supervisor, &filters.supervisor) {
            drop(gos);
            stop_vcpus(&stop, sinks, threads, None);
            return Err(e.into());
        }
    }
    for go in gos {
        let _ = go.send(());
    }

    let mut events_seen = 0usize;
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
            Ok(VcpuMessage::FirstRun(at)) => timings.first_run = Some(at),
            Ok(VcpuMessage::Event(name, at)) => {
                events_seen += 1;
                if events_seen <= EVENTS_LOGGED {
                    log::debug!("guest event @{name}");
                } else if events_seen == EVENTS_LOGGED + 1 {
                    log::debug!("the guest sends more events; they are no longer logged");
                }
                if let Some(reader) = stdin_gate
                    .as_ref()
                    .and_then(|g| stdin_reader_after(&name, g.console))
                {
                    if let Some(gate) = stdin_gate.take() {
                        let _ = gate.open.send(reader);
                    }
                }
                if name == "init" {
                    timings.init_event.get_or_insert(at);
                }
            }
            Ok(VcpuMessage::Ended) | Err(RecvTimeoutError::Timeout) => {}
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
    if end == VmEnd::Timeout && log::log_enabled!(log::Level::Debug) {
        log::debug!("at the timeout, {}", devices.describe_interrupts());
    }
    Ok(end)
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

    #[test]
    fn exit_codes() {
        assert_eq!(VmEnd::Status(0).exit_code(), 0);
        assert_eq!(VmEnd::Status(255).exit_code(), 255);
        assert_eq!(VmEnd::Timeout.exit_code(), 124);
        assert_eq!(VmEnd::Reset.exit_code(), 125);
        assert_eq!(VmEnd::Shutdown.exit_code(), 125);
        assert_eq!(VmEnd::GuestError("x".into()).exit_code(), 125);
    }

    #[test]
    fn stdin_goes_where_guest_init_says_it_reads() {
        assert_eq!(stdin_reader_after("init", false), Some(StdinReader::Uart));
        assert_eq!(stdin_reader_after("init", true), None);
        assert_eq!(
            stdin_reader_after("ports", true),
            Some(StdinReader::ConsolePort)
        );
        assert_eq!(stdin_reader_after("uarts", true), Some(StdinReader::Uart));
    }

    #[test]
    fn kvm_advice_names_the_kvm_group() {
        assert!(kvm_open_advice(libc::EACCES, "").contains("kvm group"));
        assert!(kvm_open_advice(libc::ENOENT, "").contains("does not exist"));
    }
}
