//! A purpose-built KVM microVM: boots a Linux kernel (bzImage, ELF vmlinux
//! or PVH) with three 16550A UARTs (console, stdout, status), an i8042
//! reset port and the virtio devices it is given (a console, 9p shares,
//! a network interface),
//! and returns how the VM ended.
//!
//! ```no_run
//! use std::time::Instant;
//! let virtio = vmm::VirtioOptions {
//!     devices: vec![vmm::DeviceSpec::Console],
//!     acpi: false,
//! };
//! // `run` boots the command line as given: it names the devices itself.
//! let cmdline = format!(
//!     "console=ttyS0 panic=-1 {}",
//!     virtio.cmdline_devices().join(" ")
//! );
//! let outcome = vmm::run(vmm::VmConfig {
//!     kernel: "bzImage".into(),
//!     kernel_cached: false,
//!     initrd: vec![vmm::InitrdPart::File("initrd.cpio".into())],
//!     cmdline,
//!     mem_size: 128 << 20,
//!     vcpus: 1,
//!     timeout: None,
//!     forward_stdin: false,
//!     irqchip: vmm::IrqChip::default(),
//!     console: Box::new(std::io::stderr()),
//!     stdout: Box::new(std::io::stdout()),
//!     process_start: Instant::now(),
//!     seccomp: true,
//!     virtio,
//!     net_backend: None,
//! })?;
//! std::process::exit(outcome.end.exit_code().into());
//! # Ok::<(), vmm::VmmError>(())
//! ```
//!
//! [`run`] is the boot checklist; the work is in private modules, one job
//! each: `kvm_host` (the KVM probe), `builder` (the VM, its memory,
//! devices and vCPUs), `supervisor` (the vCPU threads and the end of the
//! run), `stdin` (the stdin forwarder).
#![deny(missing_docs)]

pub mod acpi;
pub mod devices;
pub mod exit_counts;
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

mod builder;
mod kvm_host;
mod stdin;
mod supervisor;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use builder::BootSpec;
use devices::virtio::p9;
pub use initrd::InitrdPart;
pub use irqchip::IrqChip;
pub use kvm_host::{kvm_host, KvmHost};
use output::OutputFailure;
pub use status::{stdin_reader_after, GuestEvents, StdinReader};
pub use supervisor::deadline_after;
use supervisor::{Guest, Limits, Sinks};

/// Everything needed to boot one VM.
pub struct VmConfig {
    /// The kernel: bzImage, ELF vmlinux, or ELF with a PVH note.
    pub kernel: PathBuf,
    /// The kernel file is a cache entry, never changed in place while a
    /// VM runs: an ELF vmlinux's segments are mapped into guest memory,
    /// copy-on-write, instead of copied (see `memory::load_file`).
    pub kernel_cached: bool,
    /// The initrd parts, concatenated in order, each 4-byte aligned; empty for none.
    pub initrd: Vec<InitrdPart>,
    /// The complete kernel command line, booted exactly as given (with a
    /// virtio device the kernel finds there, its
    /// [`VirtioOptions::cmdline_devices`] included).
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
    /// The network backend of the [`DeviceSpec::Net`] device: a connected
    /// `SOCK_STREAM` socket to passt (`passt -f -1 --fd N`), carrying
    /// Ethernet frames each preceded by its length as 4 bytes, big-endian
    /// (passt's `qemu` framing; no `virtio_net_hdr` on the wire). Required
    /// when the devices hold a `Net` spec, and closed unused when they do
    /// not.
    pub net_backend: Option<std::os::fd::OwnedFd>,
}

/// Which virtio devices the VM has and how its kernel learns of them.
/// Without a console, the UARTs carry the program's streams alone; with
/// one, the UARTs stay (guest-init falls back to them when the console's
/// ports never appear) and both write to the same outputs.
///
/// Each device gets its window and interrupt from the slot allocator
/// ([`layout::virtio_slots`]), in list order: [`VirtioOptions::assigned`]
/// is the one answer the bus, the ACPI tables and the caller's kernel
/// command line (`virtio_mmio.device=`) all read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioOptions {
    /// The devices, in the order the guest probes them.
    pub devices: Vec<DeviceSpec>,
    /// Describe them in ACPI tables ([`acpi`]), for kernels that find
    /// virtio-mmio devices only there.
    pub acpi: bool,
}

/// One virtio device of a VM.
///
/// Adding a kind of device to the VMM takes:
/// - its device model, a [`devices::virtio::VirtioDevice`], in a file of
///   its own under `devices/virtio/`;
/// - its variant here, with the settings it needs, and its
///   [`DeviceKind`] (with the arm of [`DeviceSpec::kind`]);
/// - its arm in `create_devices` (`builder.rs`), which builds the model
///   and registers it in its slot (`VirtioBus::register`);
/// - if it has a thread of its own, that thread's allow-list in
///   [`seccomp`]: a [`seccomp::ThreadKind`], its system calls, and its
///   filter in [`seccomp::Filters`], which the arm hands to the thread.
///
/// The slot, the ACPI description and the `virtio_mmio.device=` argument
/// follow from the list ([`VirtioOptions::assigned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The virtio-console with the program's stdout, stderr and stdin
    /// ports ([`devices::virtio::console`]); host stdin, when forwarded,
    /// goes to its stdin port, with an end of file.
    Console,
    /// A host directory served over virtio-9p ([`devices::virtio::p9`]).
    Share(SharedDir),
    /// A virtio-net interface whose frames go to and come from
    /// [`VmConfig::net_backend`] ([`devices::virtio::net`]); at most one.
    Net(NetSpec),
    /// A disk image served over virtio-blk (the root of a run that boots
    /// from a disk).
    Block(BlockSpec),
}

/// What kind of device a [`DeviceSpec`] is, without its settings: what a
/// kernel must be able to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// [`DeviceSpec::Console`].
    Console,
    /// [`DeviceSpec::Share`].
    Share,
    /// [`DeviceSpec::Net`].
    Net,
    /// [`DeviceSpec::Block`].
    Block,
}

impl DeviceSpec {
    /// The device's kind.
    pub fn kind(&self) -> DeviceKind {
        match self {
            DeviceSpec::Console => DeviceKind::Console,
            DeviceSpec::Share(_) => DeviceKind::Share,
            DeviceSpec::Net(_) => DeviceKind::Net,
            DeviceSpec::Block(_) => DeviceKind::Block,
        }
    }
}

/// The guest's network interface, as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The MAC address the device reports (`VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// The MTU the device pins (`VIRTIO_NET_F_MTU`): the largest frame
    /// payload either way. The host side gives passt the same (`-m`).
    pub mtu: u16,
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
    /// Whom the guest sees the invoking user's files as owned by (0, or
    /// the user the program runs as); what it creates stays the invoking
    /// user's.
    pub guest_uid: u32,
    /// The group the guest sees the invoking user's group as.
    pub guest_gid: u32,
}

/// One disk image the guest sees as a virtio-blk disk (`/dev/vda` for the
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// The image: a regular file, opened once when the VM is built.
    pub path: PathBuf,
    /// Offer the disk read-only (`VIRTIO_BLK_F_RO`) and refuse every
    /// write; the image is then opened read-only too.
    pub read_only: bool,
}

impl VirtioOptions {
    /// Each device with its slot, in list order; an error when there are
    /// more devices than slots.
    pub fn assigned(&self) -> Result<Vec<(layout::VirtioMmioSlot, &DeviceSpec)>, VmmError> {
        let slots = layout::virtio_slots(self.devices.len()).ok_or(VmmError::TooManyDevices {
            count: self.devices.len(),
            max: layout::VIRTIO_MMIO_SLOTS.len(),
        })?;
        Ok(slots.iter().copied().zip(&self.devices).collect())
    }

    /// The slots of the devices, in list order (as many as fit).
    pub fn slots(&self) -> Vec<layout::VirtioMmioSlot> {
        layout::VIRTIO_MMIO_SLOTS
            .iter()
            .copied()
            .take(self.devices.len())
            .collect()
    }

    /// Whether the VM has the virtio-console.
    pub fn has_console(&self) -> bool {
        self.devices.contains(&DeviceSpec::Console)
    }

    /// The `virtio_mmio.device=<len>K@<addr>:<gsi>` arguments that name
    /// the devices to a kernel with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`,
    /// in list order. The caller puts them on the command line (before any
    /// `--`, which would hand them to init): [`run`] boots
    /// [`VmConfig::cmdline`] exactly as given.
    pub fn cmdline_devices(&self) -> Vec<String> {
        self.slots()
            .iter()
            .map(|slot| format!("virtio_mmio.device={}", slot.cmdline_device()))
            .collect()
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
    /// How long reading the kernel into guest memory took (a part of the
    /// set-up before `vm_ready`).
    pub kernel_load: Option<Duration>,
    /// How long copying the initrd into guest memory took (likewise).
    pub initrd_load: Option<Duration>,
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
    /// The VM exits of the run, by reason and address.
    pub exits: exit_counts::ExitCounts,
}

/// What kind of KVM this host offers.
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
    /// More virtio devices than the VM has slots for.
    #[error("{count} virtio devices do not fit in the VM: it has slots for {max}")]
    TooManyDevices {
        /// Devices asked for.
        count: usize,
        /// Slots available.
        max: usize,
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
    /// The network interface cannot be made.
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    /// The devices hold a network interface but no backend was given.
    #[error(
        "the VM has a virtio-net device but no network backend: set VmConfig::net_backend \
         to a socket connected to passt, or leave DeviceSpec::Net out"
    )]
    NetBackendMissing,
    /// More than one network interface.
    #[error(
        "the VM has {count} virtio-net devices, but it has one network backend: \
         give DeviceSpec::Net once"
    )]
    TooManyNetDevices {
        /// Net devices asked for.
        count: usize,
    },
    /// A disk of the device list was not opened before the set-up (a bug).
    #[error("a virtio-blk disk of the device list was not opened before the VM's set-up: a bug in microrun")]
    DiskNotOpened,
    /// A disk cannot be served.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
    /// An event fd or thread could not be created.
    #[error("cannot {what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// At most one network interface, and a backend for it.
fn check_net(virtio: &VirtioOptions, has_backend: bool) -> Result<(), VmmError> {
    let count = virtio
        .devices
        .iter()
        .filter(|d| d.kind() == DeviceKind::Net)
        .count();
    match count {
        0 => Ok(()),
        1 if has_backend => Ok(()),
        1 => Err(VmmError::NetBackendMissing),
        count => Err(VmmError::TooManyNetDevices { count }),
    }
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
/// controllers), then, in `builder`, kernel, command line, initrd, zero
/// page or PVH info, MP table, boot page tables, devices, vCPUs, the
/// memory slot, and last the run loop, in `supervisor`.
pub fn run(config: VmConfig) -> Result<Outcome, VmmError> {
    let VmConfig {
        kernel: kernel_path,
        kernel_cached,
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
        net_backend,
    } = config;
    check_net(&virtio, net_backend.is_some())?;
    let mut timings = Timings {
        process_start,
        vm_ready: None,
        kernel_load: None,
        initrd_load: None,
        first_run: None,
        init_event: None,
        status: None,
        exit: None,
    };

    let kvm = kvm_host::open_kvm()?;
    let max_vcpus = kvm.get_max_vcpus().min(usize::from(mptable::MAX_CPUS));
    if vcpus == 0 || usize::from(vcpus) > max_vcpus {
        return Err(VmmError::VcpuCount {
            requested: vcpus,
            max: max_vcpus,
        });
    }

    // The disks are opened first: the filters name their descriptors and
    // the network socket's. Compiled before anything starts, installed by
    // each thread on itself.
    let backends = builder::Backends::open(&virtio, net_backend)?;
    let filters = seccomp_wanted
        .then(|| seccomp::Filters::compile(&backends.descriptors()))
        .transpose()?;
    let mem = memory::create_guest_memory(mem_size)?;
    let mut sinks = Sinks::spawn(stdout, console, filters.as_ref())?;
    let vm = Arc::new(builder::create_vm(&kvm)?);
    let model = irqchip::create(&kvm, &vm, wanted_irqchip)?;
    let spec = BootSpec {
        kernel: &kernel_path,
        kernel_cached,
        initrd: &initrd_parts,
        cmdline: &cmdline,
        mem_size,
        vcpus,
        irqchip: model,
        virtio,
        filters: filters.as_ref(),
    };
    // The UARTs and the virtio-console's ports write to the same outputs.
    let console_ports = spec.virtio.has_console().then(|| sinks.outputs());
    // Started now, so that their start and filters overlap the set-up.
    let vcpu_threads = supervisor::VcpuThreads::spawn(vcpus, filters.as_ref())?;
    let (devices, vcpu_fds, steps) = builder::with_pit_switch(&kvm, &vm, model, || {
        builder::set_up_guest(
            &kvm,
            &vm,
            &mem,
            &spec,
            sinks.outputs(),
            console_ports,
            backends,
        )
    })?;
    timings.vm_ready = Some(Instant::now());
    timings.kernel_load = Some(steps.kernel_load);
    timings.initrd_load = Some(steps.initrd_load);

    let events = GuestEvents::new(devices.console_input.is_some(), forward_stdin);
    let stdin_gate = forward_stdin
        .then(|| stdin::forward_stdin(&devices, filters.as_ref()))
        .transpose()?;
    // The limit counts from the process's start, as in every engine: the
    // whole run, not only the guest, stays within it.
    let deadline = deadline_after(process_start, timeout);
    let (end, exits) = supervisor::run_vcpus(
        vcpu_threads,
        vcpu_fds,
        &devices,
        &mut sinks,
        &mem,
        Limits {
            deadline,
            filters: filters.as_ref(),
        },
        Guest { events, stdin_gate },
        &mut timings,
    )?;
    drop(devices);
    let end = supervisor::deliver_output(end, &sinks, deadline);
    timings.exit = Some(Instant::now());
    Ok(Outcome {
        end,
        timings,
        irqchip: model,
        exits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_network_interface_needs_its_backend_and_comes_once() {
        let net = DeviceSpec::Net(NetSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 65520,
        });
        let options = |devices: Vec<DeviceSpec>| VirtioOptions {
            devices,
            acpi: false,
        };
        assert_eq!(net.kind(), DeviceKind::Net);
        assert!(check_net(&options(vec![DeviceSpec::Console]), false).is_ok());
        assert!(check_net(&options(vec![net.clone()]), true).is_ok());
        assert!(matches!(
            check_net(&options(vec![net.clone()]), false),
            Err(VmmError::NetBackendMissing)
        ));
        assert!(matches!(
            check_net(&options(vec![net.clone(), net]), true),
            Err(VmmError::TooManyNetDevices { count: 2 })
        ));
    }
}
