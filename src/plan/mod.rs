//! One run's plan: every decision of a run, made once, before any engine
//! starts. [`make`] turns the command line ([`Request`]) into a [`Plan`]:
//! the kernel, the rootfs as prepared (packed, converted or checked), the
//! virtio devices and the slots they get, the kernel command line,
//! guest-init's run configuration and archive, memory, vCPUs and the
//! deadline; every refusal (bad settings, sizes, combinations an engine
//! cannot run) is one of [`PlanError`]'s. The engines only adapt the plan
//! to their machine (the qemu engine picks QEMU's bus, here through
//! [`crate::engine::qemu::kernel_plan`], and its reboot method and device
//! naming when it starts QEMU).

pub mod cmdline;
pub mod devices;
pub mod memory;
pub mod root;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm::{DeviceKind, IrqChip, KvmHost, VirtioOptions};

use crate::binds::Bind;
use crate::boot::{init_archive, BootError, BootInitrd, PreparedRootfs};
use crate::engine::qemu::{self, Accel};
use crate::guest_kernel::{self, GuestKernelError, KernelPlan, Transport, VirtioSetting, Without};
use crate::kernel::KernelError;
use crate::runconfig::{ModuleLoad, RunConfig};
use crate::spec::{Engine, Request, Rootfs, Verbosity};
use crate::user::{Ids, RootfsFiles, UserError};
pub use cmdline::{KernelCmdline, Reboot};
pub use memory::default_memory;

/// The environment variable that picks the kvm engine's interrupt
/// controllers.
pub const IRQCHIP_VAR: &str = "MICRORUN_IRQCHIP";

/// Why a run cannot be planned (microrun exits 125 with the message).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--cpus 0` for a VM.
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    /// Shares without guest-init, which mounts them.
    #[error("--bind and --bind-ro need guest-init, which mounts the shares: drop --no-init")]
    SharesNeedInit,
    /// `-u` without guest-init, which switches to the user.
    #[error("-u needs guest-init, which switches to the user: drop --no-init or -u")]
    UserNeedsInit,
    /// `--no-init` asks for the rootfs's own `/init` reporting on ttyS2,
    /// which only exists in a VM.
    #[error(
        "--no-init needs a VM engine: the chroot engine has no serial port for the rootfs's own \
         /init to report its status on; drop --no-init or use --engine qemu or kvm"
    )]
    NoInitWithoutVm,
    /// The working directory is not a plain absolute path.
    #[error(
        "{origin} {dir:?}: the working directory must be an absolute path without `..` \
         components; give -w with one (for example -w /src)"
    )]
    Workdir {
        /// The directory.
        dir: String,
        /// Where it came from: `-w` or the image's configuration.
        origin: &'static str,
    },
    /// No `--engine`, and neither VM engine can run a Linux guest here.
    #[error(
        "no engine can run a Linux guest here: {kvm}; and QEMU is not installed \
         ({qemu} not on PATH). Fix either: install QEMU (sudo apt-get install \
         qemu-system-x86) for the qemu engine, or make KVM usable as said; \
         --engine chroot runs without a VM"
    )]
    NoEngine {
        /// Why the kvm engine cannot run Linux, and its fix.
        kvm: String,
        /// QEMU's binary.
        qemu: &'static str,
    },
    /// `-t` without a terminal on stdin (docker's rule).
    #[error(
        "-t/--tty: stdin is not a terminal, so there is none to give the program; run microrun \
         from a terminal, or drop -t (-i alone forwards stdin as a pipe)"
    )]
    TtyWithoutTerminal,
    /// `-t` in a VM without the virtio-console.
    #[error(
        "-t/--tty is unavailable: it needs the virtio-console, which carries the terminal and its \
         window size, and this run has none ({why}); drop -t, or {fix}"
    )]
    TtyNeedsConsole {
        /// Why there is no console.
        why: String,
        /// What to change.
        fix: &'static str,
    },
    /// `MICRORUN_VIRTIO` means nothing.
    #[error(transparent)]
    Virtio(#[from] GuestKernelError),
    /// `MICRORUN_IRQCHIP` names no interrupt controller model.
    #[error(
        "{IRQCHIP_VAR}={0:?} is not an interrupt controller model: use `split` (the default) or \
         `kernel` (KVM's PIC, I/O APIC and PIT, for guest kernels without kvm-clock)"
    )]
    IrqChip(String),
    /// No kernel to boot.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// This host cannot run the chroot engine.
    #[error(transparent)]
    Chroot(#[from] crate::engine::chroot::ChrootError),
    /// `--net` without guest-init, which configures the interface.
    #[error("--net needs guest-init, which configures the network interface: drop --no-init")]
    NetNeedsInit,
    /// `--net` cannot be set up as asked.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// `-u` (or the image's `User`) is malformed, or names no user or
    /// group of the rootfs.
    #[error(transparent)]
    User(#[from] UserError),
    /// The kernel cannot drive a device that has nothing to fall back to.
    #[error("{why}; so {options} cannot work here: {fix}")]
    Refused {
        /// Why the kernel cannot drive it.
        why: String,
        /// The options that asked for it.
        options: &'static str,
        /// How to get a kernel that can.
        fix: &'static str,
    },
    /// `--root disk` where the disk root cannot work.
    #[error("--root disk: {0}")]
    RootDisk(&'static str),
    /// The rootfs could not be packed, converted or read for a VM.
    #[error("cannot prepare the initrd: {0}")]
    Initrd(BootError),
    /// The rootfs could not be prepared for the chroot engine.
    #[error(transparent)]
    Rootfs(BootError),
    /// The initrd cannot fit below the 32-bit MMIO gap, whatever `--mem`.
    #[error(
        "the initrd is {len} bytes ({} MiB, guest-init included): it must fit below {} MiB (the \
         32-bit MMIO gap) together with the kernel, whatever --mem is; make it smaller: leave \
         files out of the rootfs, or give a compressed archive as ROOTFS (for example `microrun \
         pack DIR -o /dev/stdout | gzip > rootfs.cpio.gz`)",
        len >> 20,
        vmm::layout::MMIO_GAP_START >> 20
    )]
    InitrdTooLarge {
        /// The initrd's size in bytes.
        len: u64,
    },
    /// `--mem` leaves the kernel no room beside the initrd.
    #[error(
        "--mem {mem} bytes is too small: the initrd alone is {initrd} bytes and the kernel needs \
         room beside it; raise --mem (the default for this initrd is {} MiB)",
        default >> 20
    )]
    MemoryTooSmall {
        /// `--mem`.
        mem: u64,
        /// The initrd's size.
        initrd: u64,
        /// The default memory for this initrd and kernel.
        default: u64,
    },
}

/// A run, planned: what every engine takes.
#[derive(Debug)]
pub struct Plan {
    /// How chatty microrun is.
    pub verbosity: Verbosity,
    /// When microrun started, the origin of every timing and of the
    /// deadline.
    pub started: Instant,
    /// When the plan was made: the end of the `plan` step of `--timings`.
    pub planned: Instant,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// Forward microrun's stdin to the program.
    pub forward_stdin: bool,
    /// `-it`: microrun's terminal goes into raw mode for the run, and its
    /// input reaches the program's terminal with control frames (window
    /// sizes) in it (`crate::terminal`).
    pub terminal: bool,
    /// What guest-init runs, and how (also in its archive).
    pub run_config: RunConfig,
    /// The engine, with what it boots.
    pub target: Target,
    /// Why the engine is not the one a user would expect, when microrun
    /// chose it ([`choose_engine`]): said once on stderr unless `-q`.
    pub engine_note: Option<String>,
}

/// The engine of a plan, with its part of the plan.
#[derive(Debug)]
pub enum Target {
    /// microrun's own VMM.
    Kvm {
        /// What the VM boots.
        vm: VmPlan,
        /// The interrupt controller model (`MICRORUN_IRQCHIP`).
        irqchip: IrqChip,
        /// Every VMM thread under its seccomp filter (off only for
        /// debugging: `MICRORUN_SECCOMP=off`).
        seccomp: bool,
    },
    /// QEMU.
    Qemu {
        /// What the VM boots.
        vm: VmPlan,
        /// The accelerator: `--accel`, with `auto` resolved (KVM where it
        /// can run a Linux guest, else TCG).
        accel: Accel,
        /// Why that accelerator.
        accel_why: String,
    },
    /// Namespaces, no VM.
    Chroot(ChrootPlan),
}

/// What a VM engine boots.
#[derive(Debug)]
pub struct VmPlan {
    /// How long finding the rootfs archive and building guest-init's took.
    pub prepared: Prepared,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The rootfs archive and guest-init's.
    pub initrd: BootInitrd,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// What the memory was sized from, for the message when the kernel
    /// could not unpack the initrd.
    pub sizing: memory::Sizing,
    /// vCPUs.
    pub cpus: u8,
    /// The virtio devices, in slot order, and whether ACPI announces them.
    pub devices: VirtioOptions,
    /// Their bus.
    pub transport: Transport,
    /// The kernel command line.
    pub cmdline: KernelCmdline,
    /// `--net`: passt, connected to the virtio-net device.
    pub net: Option<NetPlan>,
}

/// How long two of the plan's steps took, for `--timings`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prepared {
    /// Finding (or making) the rootfs archive.
    pub rootfs: Duration,
    /// Building guest-init's archive.
    pub init_archive: Duration,
}

/// What the chroot engine builds its root from.
#[derive(Debug)]
pub struct ChrootPlan {
    /// The rootfs: a directory used in place, or a newc archive to extract.
    pub rootfs: PreparedRootfs,
    /// guest-init and its run configuration, as a newc archive.
    pub init_archive: Vec<u8>,
    /// The shares, bind-mounted.
    pub binds: Vec<Bind>,
    /// The ids `-u` names in the rootfs: the id maps give the namespace
    /// a range of ids, and the shares show the invoking user's files as
    /// this user's. `None`: the program runs as root, only the caller's
    /// ids are mapped.
    pub user: Option<Ids>,
    /// `--net`: pasta connects the namespace.
    pub net: Option<NetPlan>,
}

/// `--net`, as an engine carries it out: what the guest gets, and the
/// program (passt for a VM, pasta for the chroot engine) that connects it.
#[derive(Debug, Clone)]
pub struct NetPlan {
    /// What the request asks of the network.
    pub network: crate::net::Network,
    /// passt or pasta, found on `PATH`.
    pub program: PathBuf,
}

/// The network plan of `request` for an engine that connects it with
/// `program`: `None` without `--net`; an error when the program is missing
/// or a published host port cannot be listened on.
fn net_plan(request: &Request, program: &'static str) -> Result<Option<NetPlan>, PlanError> {
    let Some(network) = &request.net else {
        return Ok(None);
    };
    let program = crate::net::find_program(program)?;
    network.check_ports()?;
    Ok(Some(NetPlan {
        network: network.clone(),
        program,
    }))
}

impl Plan {
    /// The engine.
    pub fn engine(&self) -> Engine {
        match self.target {
            Target::Kvm { .. } => Engine::Kvm,
            Target::Qemu { .. } => Engine::Qemu,
            Target::Chroot(_) => Engine::Chroot,
        }
    }

    /// When the run must end: `--timeout` after microrun started.
    pub fn deadline(&self) -> Option<Instant> {
        vmm::deadline_after(self.started, self.timeout)
    }

    /// What the VM boots, for the VM engines.
    pub fn vm(&self) -> Option<&VmPlan> {
        match &self.target {
            Target::Kvm { vm, .. } | Target::Qemu { vm, .. } => Some(vm),
            Target::Chroot(_) => None,
        }
    }
}

/// Plans the run `request` asks for; an image's configuration gives the
/// command, environment and directory the request leaves unset
/// ([`crate::image::apply_image_defaults`], `docker run`'s rules).
pub fn make(mut request: Request) -> Result<Plan, PlanError> {
    // The KVM probe, made at most once: the engine choice and the qemu
    // engine's accelerator both ask.
    let kvm_probe = std::cell::OnceCell::new();
    let kvm_host = || kvm_probe.get_or_init(vmm::kvm_host).clone();
    let (engine, engine_note) = choose_engine(request.engine, kvm_host, qemu::installed)?;
    request.engine = engine;
    let workdir_given = request.workdir.is_some();
    crate::image::apply_image_defaults(&mut request)?;
    if let Some(dir) = &request.workdir {
        check_workdir(dir, workdir_given)?;
    }
    if request.tty && request.stdin_terminal.is_none() {
        return Err(PlanError::TtyWithoutTerminal);
    }
    let vm_engine = request.engine != Engine::Chroot;
    let root = root::choose(
        request.root,
        &request.rootfs,
        vm_engine,
        request.no_init,
        || root::unpacked_estimate(&request.rootfs),
    )?;
    let request = &request;
    let (run_config, target) = match request.engine {
        Engine::Chroot => chroot(request)?,
        Engine::Kvm | Engine::Auto => {
            let irqchip = parse_irqchip(std::env::var(IRQCHIP_VAR).ok().as_deref())?;
            let (run_config, vm) = vm(request, root)?;
            let seccomp = vmm::seccomp::wanted();
            (
                run_config,
                Target::Kvm {
                    vm,
                    irqchip,
                    seccomp,
                },
            )
        }
        Engine::Qemu => {
            let (run_config, vm) = vm(request, root)?;
            let (accel, accel_why) = qemu::resolve_accel(request.accel, kvm_host);
            (
                run_config,
                Target::Qemu {
                    vm,
                    accel,
                    accel_why,
                },
            )
        }
    };
    Ok(Plan {
        verbosity: request.verbosity,
        started: request.started,
        planned: Instant::now(),
        timeout: request.timeout,
        forward_stdin: request.forward_stdin,
        terminal: request.tty && request.forward_stdin,
        run_config,
        target,
        engine_note,
    })
}

/// The engine for `requested`: as given, or for [`Engine::Auto`] the kvm
/// engine where `kvm_host` says KVM can run a Linux guest, else the qemu
/// engine (TCG) when `qemu_installed`, with the note that says why; with
/// neither, [`PlanError::NoEngine`] naming both fixes. The probes are only
/// called for `Auto`.
pub fn choose_engine(
    requested: Engine,
    kvm_host: impl FnOnce() -> KvmHost,
    qemu_installed: impl FnOnce() -> bool,
) -> Result<(Engine, Option<String>), PlanError> {
    if requested != Engine::Auto {
        return Ok((requested, None));
    }
    let why = match kvm_host() {
        KvmHost::Hardware => return Ok((Engine::Kvm, None)),
        KvmHost::Emulated(why) => format!("{why}, too slow to run Linux"),
        KvmHost::Unavailable(why) => why,
    };
    if !qemu_installed() {
        return Err(PlanError::NoEngine {
            kvm: why,
            qemu: qemu::QEMU,
        });
    }
    Ok((
        Engine::Qemu,
        Some(format!(
            "using the qemu engine: {why}; --engine picks one, -q silences this"
        )),
    ))
}

/// Refuses a working directory that is not absolute or has a `..`
/// component (`given`: from `-w`, else from the image's `WorkingDir`):
/// guest-init would fail to enter it, or enter somewhere else than it says.
pub fn check_workdir(dir: &str, given: bool) -> Result<(), PlanError> {
    let dotdot = dir.split('/').any(|component| component == "..");
    if dir.starts_with('/') && !dotdot {
        return Ok(());
    }
    Err(PlanError::Workdir {
        dir: dir.to_string(),
        origin: if given {
            "-w"
        } else {
            "the image's WorkingDir"
        },
    })
}

/// The interrupt controller model named by `value` (of [`IRQCHIP_VAR`]).
pub fn parse_irqchip(value: Option<&str>) -> Result<IrqChip, PlanError> {
    match value {
        None | Some("") | Some("split") => Ok(IrqChip::Split),
        Some("kernel") => Ok(IrqChip::Kernel),
        Some(other) => Err(PlanError::IrqChip(other.to_string())),
    }
}

/// What guest-init runs, from the request alone: no devices, no modules.
pub fn base_run_config(request: &Request) -> RunConfig {
    RunConfig {
        argv: request.command.clone(),
        env: request.env.clone(),
        workdir: request.workdir.clone(),
        forward_stdin: request.forward_stdin,
        user: request.user.as_ref().map(ToString::to_string),
        tty: request.stdin_terminal.filter(|_| request.tty),
        ..RunConfig::default()
    }
}

fn chroot(request: &Request) -> Result<(RunConfig, Target), PlanError> {
    if request.no_init {
        return Err(PlanError::NoInitWithoutVm);
    }
    crate::engine::chroot::check_host()?;
    // The shares are bind mounts here, not devices: no records for them.
    let run_config = base_run_config(request);
    let rootfs = crate::boot::chroot_rootfs(&request.rootfs).map_err(PlanError::Rootfs)?;
    let user = match (&request.user, &rootfs) {
        (None, _) => None,
        (Some(spec), PreparedRootfs::Dir(dir)) => Some(spec.resolve_in(&RootfsFiles::Dir(dir))?),
        (Some(spec), PreparedRootfs::Archive(path)) => {
            Some(spec.resolve_in(&RootfsFiles::Archive(path))?)
        }
    };
    let net = net_plan(request, "pasta")?;
    let network = net.as_ref().map(|n| &n.network);
    let plan = ChrootPlan {
        rootfs,
        init_archive: init_archive(&run_config, &[], network).map_err(PlanError::Rootfs)?,
        binds: request.binds.clone(),
        user,
        net,
    };
    Ok((run_config, Target::Chroot(plan)))
}

/// The disk root's overlay takes writes into a tmpfs of 1/this of the
/// guest memory (the kernel's own default for a tmpfs is half).
pub const OVERLAY_SHARE: u64 = 2;

/// The plan of a VM engine booting the rootfs as `root`, and guest-init's
/// run configuration.
fn vm(request: &Request, root: root::RootKind) -> Result<(RunConfig, VmPlan), PlanError> {
    if request.cpus == 0 {
        return Err(PlanError::NoVcpus);
    }
    if request.no_init && request.net.is_some() {
        return Err(PlanError::NetNeedsInit);
    }
    let net = net_plan(request, "passt")?;
    if request.no_init && !request.binds.is_empty() {
        return Err(PlanError::SharesNeedInit);
    }
    if let (true, Some(user)) = (request.no_init, &request.user) {
        if user.origin != crate::image::IMAGE_USER {
            return Err(PlanError::UserNeedsInit);
        }
        log::info!(
            "--no-init: the image's User ({user}) is not applied; the initrd's init runs as root"
        );
    }
    let setting = guest_kernel::setting_from_env()?;
    let kernel = crate::kernel::discover(request.kernel.as_deref())?;
    log::info!("kernel: {}", kernel.display());

    // The devices asked for, and what this kernel (on the engine's bus)
    // makes of them. Without guest-init nothing opens the console's ports
    // or loads the modules: the UARTs.
    let rootfs_started = Instant::now();
    let disk = match root {
        root::RootKind::Disk => {
            Some(crate::boot::disk_image(&request.rootfs).map_err(PlanError::Initrd)?)
        }
        root::RootKind::Initrd => None,
    };
    let disk_prepared = rootfs_started.elapsed();
    let started = Instant::now();
    let console = !request.no_init && setting == VirtioSetting::On;
    let share_owner = share_owner(request)?;
    let wanted = devices::wanted(request, console, disk.as_deref(), share_owner);
    let mut kernel_plan = kernel_plan(request, &kernel, &wanted, setting);
    if request.root.is_none() && !kernel_plan.drives(DeviceKind::Block) && disk.is_some() {
        // Chosen by size, not asked for: a kernel without the disk's
        // drivers boots the initrd as before.
        log::info!("root: this kernel cannot mount the disk root; booting an initrd");
        return vm(request, root::RootKind::Initrd);
    }
    if disk.is_some() {
        kernel_plan.notes.push(format!(
            "root: the rootfs boots from a disk ({}): more than {} MiB unpacked, or --root disk",
            disk.as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            root::DISK_THRESHOLD >> 20
        ));
    }
    log::debug!(
        "virtio: planned in {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for note in &kernel_plan.notes {
        log::info!("virtio: {note}");
    }
    for (kind, why) in &kernel_plan.refused {
        if let Without::Fail { options, fix } = guest_kernel::requirement(*kind).without {
            return Err(PlanError::Refused {
                why: why.clone(),
                options,
                fix,
            });
        }
    }

    if request.tty && !kernel_plan.drives(DeviceKind::Console) {
        return Err(tty_needs_console(request, setting, &kernel_plan));
    }

    // The devices the guest gets, and guest-init's records for them.
    let mut run_config = base_run_config(request);
    let mut specs = Vec::new();
    for device in wanted {
        if kernel_plan.drives(device.spec.kind()) {
            specs.push(device.spec);
            devices::record(&mut run_config, device.record);
        }
    }
    let devices = VirtioOptions {
        acpi: kernel_plan.acpi_discovery && !specs.is_empty(),
        devices: specs,
    };
    // QEMU's virtio-serial ports can still hold output when the status
    // line arrives: guest-init relays the program's output and reports the
    // byte counts, which the qemu engine waits for.
    run_config.relay_output = request.engine == Engine::Qemu && devices.has_console();
    run_config.modules = kernel_plan
        .modules
        .iter()
        .enumerate()
        .map(|(index, module)| ModuleLoad {
            path: crate::boot::module_path(index, module),
            params: module.params.clone(),
        })
        .collect();

    let rootfs_started = Instant::now();
    let (rootfs, rootfs_len) = match disk {
        Some(_) => (None, 0),
        None => {
            let (path, len) =
                crate::boot::initrd_archive(&request.rootfs).map_err(PlanError::Initrd)?;
            (Some(path), len)
        }
    };
    let init_started = Instant::now();
    let disk_sizing = match &mut run_config.root {
        Some(root) => {
            // The memory decides the overlay's size, which the archive
            // holds: sized with the longest number the record can have.
            root.tmpfs_bytes = u64::MAX;
            let network = net.as_ref().map(|n| &n.network);
            let longest = init_archive(&run_config, &kernel_plan.modules, network)
                .map_err(PlanError::Initrd)?
                .len() as u64;
            let sizing = memory::disk_root_memory(request, &kernel, longest)?;
            if let Some(root) = &mut run_config.root {
                root.tmpfs_bytes = sizing.mem / OVERLAY_SHARE;
            }
            Some(sizing)
        }
        None => None,
    };
    let initrd = BootInitrd {
        rootfs,
        rootfs_len,
        init_archive: (!request.no_init)
            .then(|| {
                let network = net.as_ref().map(|n| &n.network);
                init_archive(&run_config, &kernel_plan.modules, network)
            })
            .transpose()
            .map_err(PlanError::Initrd)?,
    };
    let prepared = Prepared {
        rootfs: init_started - rootfs_started + disk_prepared,
        init_archive: init_started.elapsed(),
    };
    let sizing = match disk_sizing {
        Some(sizing) => sizing,
        None => memory::memory(request, &kernel, &initrd)?,
    };
    let mem_size = sizing.mem;
    let cmdline = KernelCmdline {
        devices: if kernel_plan.cmdline_discovery {
            devices.cmdline_devices()
        } else {
            Vec::new()
        },
        reboot: Reboot::Keyboard,
        quiet: request.verbosity != Verbosity::Verbose,
        guest_init: !request.no_init,
        // microrun's VMM has no PCI bus; QEMU's machines have one.
        pci_off: request.engine == Engine::Kvm && kernel_plan.pci,
        user: request
            .cmdline
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
    };
    log::info!(
        "initrd: {} ({} bytes with guest-init), memory {} MiB, {} vCPU(s), cmdline: {cmdline}",
        initrd
            .rootfs
            .as_deref()
            .or(disk.as_deref())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        initrd.len(),
        mem_size >> 20,
        request.cpus
    );
    let plan = VmPlan {
        prepared,
        kernel,
        initrd,
        mem_size,
        sizing,
        cpus: request.cpus,
        devices,
        transport: kernel_plan.transport,
        cmdline,
        net,
    };
    Ok((run_config, plan))
}

/// Whom the kvm engine's 9p server shows the invoking user's files as
/// owned by: the ids `-u` names, looked up in the rootfs on the host (the
/// server is made before the guest runs), so that the user can write to
/// its shares. Root without `-u` or shares; QEMU's 9p server has no id
/// map (docs/shares.md).
fn share_owner(request: &Request) -> Result<Ids, PlanError> {
    let root = Ids { uid: 0, gid: 0 };
    let Some(spec) = &request.user else {
        return Ok(root);
    };
    if request.engine != Engine::Kvm || request.binds.is_empty() {
        return Ok(root);
    }
    let ids = match &request.rootfs {
        Rootfs::Dir(dir) => spec.resolve_in(&RootfsFiles::Dir(dir))?,
        Rootfs::Cpio(path) => spec.resolve_in(&RootfsFiles::Archive(path))?,
        Rootfs::Image(image) => {
            let archive = image
                .cached_convert()
                .map_err(|e| PlanError::Initrd(e.into()))?;
            spec.resolve_in(&RootfsFiles::Archive(&archive))?
        }
    };
    Ok(ids)
}

/// Why a VM run with `-t` has no virtio-console, and what to change.
fn tty_needs_console(
    request: &Request,
    setting: VirtioSetting,
    kernel_plan: &KernelPlan,
) -> PlanError {
    let (why, fix) = if request.no_init {
        (
            "--no-init: no guest-init to open a terminal for the program".to_string(),
            "drop --no-init",
        )
    } else if setting == VirtioSetting::Off {
        (
            format!("{}=off", guest_kernel::VIRTIO_VAR),
            "unset that variable",
        )
    } else {
        let why = kernel_plan
            .refusal(DeviceKind::Console)
            .or(kernel_plan.notes.first().map(String::as_str))
            .unwrap_or("the kernel cannot drive it");
        (
            why.to_string(),
            "boot a kernel with CONFIG_VIRTIO_CONSOLE (the project's: scripts/build-kernel)",
        )
    };
    PlanError::TtyNeedsConsole { why, fix }
}

/// What `kernel` makes of the devices `wanted`, on the bus of the
/// request's engine.
fn kernel_plan(
    request: &Request,
    kernel: &std::path::Path,
    wanted: &[devices::Wanted],
    setting: VirtioSetting,
) -> KernelPlan {
    if wanted.is_empty() {
        // No devices: only whether the kernel has PCI (from the cache).
        let pci = guest_kernel::plan(kernel, &[], Transport::Mmio).pci;
        return KernelPlan {
            pci,
            ..KernelPlan::none(if request.no_init {
                "--no-init: no guest-init to open the virtio-console's ports: the UARTs only".into()
            } else {
                format!(
                    "{}=off: the program's streams go over the UARTs",
                    guest_kernel::VIRTIO_VAR
                )
            })
        };
    }
    let kinds = devices::kinds(wanted);
    let mut plan = guest_kernel::plan(kernel, &kinds, Transport::Mmio);
    if request.engine == Engine::Qemu {
        plan = qemu::kernel_plan(plan, || guest_kernel::plan(kernel, &kinds, Transport::Pci));
    }
    if setting == VirtioSetting::Off {
        plan.notes.insert(
            0,
            format!(
                "{}=off: the program's streams go over the UARTs",
                guest_kernel::VIRTIO_VAR
            ),
        );
    }
    plan
}

#[cfg(test)]
mod tests;
