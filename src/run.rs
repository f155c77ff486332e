//! One run, start to finish: pick the engine, prepare what it boots, run
//! it, and report timings.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::boot::{kernel_cmdline, prepare_initrd};
use crate::engine::{chroot, kvm, qemu};
use crate::guest_kernel::{self, Transport, VirtioPlan};
use crate::spec::{PhaseTimes, RunOutcome, RunSpec};

/// The least guest memory besides the initrd that microrun accepts: a
/// minimal kernel boots in 32 MiB (kernels/README.md), of which the
/// initrd's unpacked copy takes its share.
const MIN_MEM_BESIDES_INITRD: u64 = 16 << 20;

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// microrun's own KVM microVM.
    #[default]
    Kvm,
    /// No VM: user, mount and PID namespaces with the rootfs as root.
    Chroot,
    /// QEMU (`-M pc`), with KVM where usable and TCG otherwise.
    Qemu,
}

/// The VM-only settings of a run (the chroot engine ignores them).
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// `--kernel` or `MICRORUN_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// `--mem`, in bytes.
    pub mem: Option<u64>,
    /// `--cpus`.
    pub cpus: u8,
    /// `--cmdline`.
    pub cmdline: Option<String>,
    /// `--accel`, for the qemu engine.
    pub accel: qemu::Accel,
}

/// Runs `spec` with `engine` and returns how it ended.
pub fn run(spec: &RunSpec, engine: Engine, vm: &VmOptions) -> anyhow::Result<RunOutcome> {
    if engine == Engine::Chroot {
        return Ok(chroot::run(spec)?);
    }
    if vm.cpus == 0 {
        bail!("--cpus 0: a VM needs at least one vCPU");
    }
    let kernel = crate::kernel::discover(vm.kernel.as_deref())?;
    log::info!("kernel: {}", kernel.display());
    let virtio = virtio_plan(spec, engine, &kernel)?;
    for note in &virtio.notes {
        log::info!("virtio: {note}");
    }
    let initrd = prepare_initrd(spec, &virtio).context("cannot prepare the initrd")?;
    // The initrd must lie below the 32-bit MMIO gap beside the kernel,
    // however much memory there is above it.
    let never_fits = initrd.len().saturating_add(MIN_MEM_BESIDES_INITRD);
    if never_fits > vmm::layout::MMIO_GAP_START {
        bail!(
            "the initrd is {} bytes ({} MiB, guest-init included): it must fit below {} MiB \
             (the 32-bit MMIO gap) together with the kernel, whatever --mem is; make it smaller: \
             leave files out of the rootfs, or give a compressed archive as ROOTFS (for example \
             `microrun pack DIR -o /dev/stdout | gzip > rootfs.cpio.gz`)",
            initrd.len(),
            initrd.len() >> 20,
            vmm::layout::MMIO_GAP_START >> 20
        );
    }
    // A kernel that cannot be inspected is reported by the engine that
    // boots it (the kvm engine names the problem; QEMU has its own words).
    let image = vmm::kernel::inspect(&kernel).ok();
    let (default_mem, why) = default_memory(image.as_ref().map(|i| i.load_end), initrd.len());
    let mem_size = match vm.mem {
        Some(mem) => mem,
        None => {
            log::info!("memory: {why}");
            default_mem
        }
    };
    // Checked here so both VM engines refuse alike (QEMU alone would take
    // `-m 0` as its default, or fail as a guest that never reported).
    if mem_size < initrd.len() + MIN_MEM_BESIDES_INITRD {
        bail!(
            "--mem {mem_size} bytes is too small: the initrd alone is {} bytes and the kernel \
             needs room beside it; raise --mem (the default for this initrd is {} MiB)",
            initrd.len(),
            default_mem >> 20
        );
    }
    let cmdline = kernel_cmdline(spec, vm.cmdline.as_deref());
    log::info!(
        "initrd: {} ({} bytes with guest-init), memory {} MiB, {} vCPU(s), cmdline: {cmdline}",
        initrd.rootfs.display(),
        initrd.len(),
        mem_size >> 20,
        vm.cpus
    );
    let mut outcome = match engine {
        Engine::Kvm => kvm::run(
            spec,
            kvm::KvmBoot {
                kernel,
                initrd,
                cmdline,
                mem_size,
                vcpus: vm.cpus,
                virtio: virtio.devices(&spec.binds),
            },
        )?,
        Engine::Qemu => qemu::run(
            spec,
            qemu::QemuBoot {
                kernel,
                initrd,
                cmdline,
                mem_size,
                vcpus: vm.cpus,
                accel: vm.accel,
                virtio: virtio.devices(&spec.binds),
                transport: virtio.transport,
            },
        )?,
        Engine::Chroot => unreachable!("handled above"),
    };
    if outcome.exit_code == 125 && outcome.times.init.is_none() && !spec.no_init {
        if let Some(reason) = outcome.reason.as_mut() {
            reason.push_str(&stopped_before_the_program(mem_size, spec.verbosity));
        }
    }
    Ok(outcome)
}

/// How the guest gets its virtio-console and shares
/// ([`guest_kernel::plan`], and [`qemu_plan`] for QEMU's buses). Without
/// guest-init nothing opens the ports or loads the modules: the UARTs.
/// `MICRORUN_VIRTIO` is checked for every VM engine alike.
fn virtio_plan(
    spec: &RunSpec,
    engine: Engine,
    kernel: &std::path::Path,
) -> anyhow::Result<VirtioPlan> {
    guest_kernel::setting_from_env()?;
    if !spec.binds.is_empty() && spec.no_init {
        bail!("--bind and --bind-ro need guest-init, which mounts the shares: drop --no-init");
    }
    if spec.no_init {
        return Ok(VirtioPlan::uarts(
            "--no-init: no guest-init to open the virtio-console's ports: the UARTs only"
                .to_string(),
        ));
    }
    let started = Instant::now();
    let shares = spec.binds.len();
    let mut plan = guest_kernel::plan(kernel, shares, Transport::Mmio)?;
    if engine == Engine::Qemu {
        plan = qemu_plan(plan, || guest_kernel::plan(kernel, shares, Transport::Pci))?;
    }
    log::debug!(
        "virtio: planned in {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    if let (false, Some(why)) = (spec.binds.is_empty(), &plan.share_problem) {
        bail!(
            "{why}; so --bind/--bind-ro cannot work here: boot a kernel with 9p over virtio \
             (the project kernel from scripts/build-kernel has it built in), or use another \
             --engine (chroot needs no kernel)"
        );
    }
    Ok(plan)
}

/// The qemu engine's part of a plan (`mmio`, made for virtio-mmio). QEMU's
/// virtio-mmio devices exist only on `-M microvm` with `acpi=off`, where
/// QEMU names them on the command line itself, at addresses of its own: so
/// the kernel must take `virtio_mmio.device=` with `virtio_mmio` built in
/// (as a module it would need those addresses as its parameters). Any
/// other kernel gets its devices on PCI (`-M pc`), when it has virtio-pci
/// ([`Transport::Pci`], the plan `pci` makes); otherwise the UARTs, and no
/// shares.
///
/// QEMU's virtio-serial ports can still hold output when the status line
/// arrives, so guest-init relays the program's output and reports the byte
/// counts, which the engine waits for ([`VirtioPlan::relay_output`]).
fn qemu_plan(
    mmio: VirtioPlan,
    pci: impl FnOnce() -> Result<VirtioPlan, guest_kernel::GuestKernelError>,
) -> anyhow::Result<VirtioPlan> {
    let mut plan = qemu_bus(mmio, pci)?;
    plan.relay_output = plan.console;
    Ok(plan)
}

/// The bus of [`qemu_plan`].
fn qemu_bus(
    mut mmio: VirtioPlan,
    pci: impl FnOnce() -> Result<VirtioPlan, guest_kernel::GuestKernelError>,
) -> anyhow::Result<VirtioPlan> {
    if !mmio.console && mmio.shares == 0 && mmio.share_problem.is_none() {
        return Ok(mmio);
    }
    let mmio_module = mmio.modules.iter().any(|m| m.file_name == "virtio_mmio.ko");
    if mmio.cmdline_discovery && !mmio_module {
        mmio.acpi_discovery = false;
        return Ok(mmio);
    }
    let mut plan = pci()?;
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
    Ok(plan)
}

/// What to add when a VM ended before guest-init reported `@init`: the
/// kernel never got as far as the program, and the usual reasons.
fn stopped_before_the_program(mem_size: u64, verbosity: crate::spec::Verbosity) -> String {
    let log = if verbosity == crate::spec::Verbosity::Verbose {
        "the kernel log above says why"
    } else {
        "run with -v to see the kernel log"
    };
    format!(
        "\nmicrorun: the kernel stopped before the program started (guest-init never \
         reported): it may need more memory than {} MiB (--mem), or a command line that \
         suits it (--cmdline); {log}",
        mem_size >> 20
    )
}

/// Room for the running system beside the kernel image and the initrd,
/// the same 64 MiB the 3 × initrd rule gives it.
const RUNNING_ROOM: u64 = 64 << 20;

/// The default guest memory and how it was chosen: 3 × the initrd + 64
/// MiB (`initrd_tools::guest_memory_for_initrd`), or, when the kernel needs
/// more, the memory its image needs before it reads the memory map
/// (`kernel_end`, see `vmm::kernel::KernelImage::load_end`) + the initrd +
/// 64 MiB. A distribution kernel decompresses from 16 MiB and needs 64 MiB
/// there (Debian 6.1: up to 79.6 MiB), so the 3 × rule alone leaves it none.
pub fn default_memory(kernel_end: Option<u64>, initrd_len: u64) -> (u64, String) {
    const MIB: f64 = (1 << 20) as f64;
    let by_initrd = initrd_tools::guest_memory_for_initrd(initrd_len);
    let rule = format!(
        "3 x initrd ({:.1} MiB) + 64 MiB = {} MiB",
        initrd_len as f64 / MIB,
        by_initrd >> 20
    );
    let Some(kernel_end) = kernel_end else {
        return (by_initrd, format!("{} MiB: {rule}", by_initrd >> 20));
    };
    let by_kernel = kernel_end
        .saturating_add(initrd_len)
        .saturating_add(RUNNING_ROOM)
        .div_ceil(2 << 20)
        .checked_mul(2 << 20)
        .unwrap_or(!((2 << 20) - 1));
    if by_kernel <= by_initrd {
        return (
            by_initrd,
            format!(
                "{} MiB: {rule} (the kernel needs memory up to {:.1} MiB)",
                by_initrd >> 20,
                kernel_end as f64 / MIB
            ),
        );
    }
    (
        by_kernel,
        format!(
            "{} MiB: the kernel needs memory up to {:.1} MiB to decompress and start, then the \
             initrd ({:.1} MiB) and 64 MiB to run ({rule} would be too little)",
            by_kernel >> 20,
            kernel_end as f64 / MIB,
            initrd_len as f64 / MIB
        ),
    )
}

/// The `--timings` report: one line per phase and the total, on stderr.
pub fn timings_report(engine: Engine, started: Instant, t: &PhaseTimes) -> String {
    let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(a), Some(b)) => format!(
            "{:9.2} ms",
            b.saturating_duration_since(a).as_secs_f64() * 1e3
        ),
        _ => format!("{:>12}", "-"),
    };
    let setup_label = match engine {
        Engine::Chroot => "namespace set-up",
        _ => "VMM set-up",
    };
    let boot_label = match engine {
        Engine::Chroot => "until guest-init starts",
        _ => "kernel until guest-init starts",
    };
    let mut out = format!("microrun: timings ({engine:?} engine)\n").to_lowercase();
    let rows = [
        (setup_label, Some(started), t.ready),
        (boot_label, t.ready, t.init),
        ("program", t.init, t.status),
        ("teardown", t.status, t.end),
        ("total, boot to exit", Some(started), t.end),
    ];
    for (label, from, to) in rows {
        out.push_str(&format!("microrun:   {:<32}{}\n", label, span(from, to)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_qemu_engine_takes_virtio_mmio_only_where_qemu_can_announce_it() {
        let wanted = VirtioPlan {
            console: true,
            shares: 1,
            cmdline_discovery: true,
            acpi_discovery: true,
            ..VirtioPlan::default()
        };
        let pci = VirtioPlan {
            transport: Transport::Pci,
            ..wanted.clone()
        };
        let never = || -> Result<VirtioPlan, guest_kernel::GuestKernelError> {
            panic!("no PCI plan needed")
        };
        let plan = qemu_plan(wanted.clone(), never).unwrap();
        assert!(plan.console && plan.shares == 1 && !plan.acpi_discovery);
        assert!(plan.relay_output, "QEMU's ports need the relay");
        assert_eq!(plan.transport, Transport::Mmio);
        // ACPI only (Debian): virtio-pci instead.
        let acpi_only = VirtioPlan {
            cmdline_discovery: false,
            ..wanted.clone()
        };
        let plan = qemu_plan(acpi_only, || Ok(pci.clone())).unwrap();
        assert_eq!(plan.transport, Transport::Pci);
        assert!(plan.notes[0].contains("virtio-pci"), "{:?}", plan.notes);
        // virtio_mmio as a module would need QEMU's addresses as parameters.
        let mut module = wanted.clone();
        module.modules.push(guest_kernel::GuestModule {
            file_name: "virtio_mmio.ko".into(),
            bytes: Vec::new(),
            params: String::new(),
        });
        assert_eq!(
            qemu_plan(module, || Ok(pci.clone())).unwrap().transport,
            Transport::Pci
        );
        // Nothing virtio wanted: nothing to change.
        let uarts = VirtioPlan::uarts("off".into());
        assert_eq!(qemu_plan(uarts.clone(), never).unwrap(), uarts);
    }

    #[test]
    fn default_memory_makes_room_for_the_kernel_when_the_initrd_rule_does_not() {
        const MIB: u64 = 1 << 20;
        // No kernel information: the 3 x initrd + 64 MiB rule.
        assert_eq!(default_memory(None, 4 * MIB).0, 76 * MIB);
        // The project kernel (16 MiB + 13.7 MiB) with the libs example.
        let (mem, why) = default_memory(Some(0x100_0000 + 0xdb_8000), 4 * MIB);
        assert_eq!(mem, 98 * MIB, "{why}");
        // Debian's kernel: up to 79.6 MiB before it reads the memory map.
        let (mem, why) = default_memory(Some(0x100_0000 + 0x3f9_8000), 4 * MIB);
        assert_eq!(mem, 148 * MIB);
        assert!(
            why.contains("79.6 MiB") && why.contains("too little"),
            "{why}"
        );
        // A large initrd: the 3 x rule is the larger one and stays.
        let (mem, why) = default_memory(Some(80 * MIB), 346 * MIB);
        assert_eq!(mem, (3 * 346 + 64) * MIB);
        assert!(why.starts_with("1102 MiB: 3 x initrd"), "{why}");
        assert_eq!(default_memory(Some(u64::MAX), u64::MAX).0 % (2 * MIB), 0);
    }

    #[test]
    fn timings_have_one_line_per_phase_and_a_total() {
        let s = Instant::now();
        let t = PhaseTimes {
            ready: Some(s + Duration::from_millis(2)),
            init: Some(s + Duration::from_millis(12)),
            status: Some(s + Duration::from_millis(13)),
            end: Some(s + Duration::from_millis(14)),
        };
        let r = timings_report(Engine::Kvm, s, &t);
        assert_eq!(r.lines().count(), 6, "{r}");
        assert!(r.contains("VMM set-up") && r.contains("2.00 ms"), "{r}");
        assert!(r.contains("kernel until guest-init starts") && r.contains("10.00 ms"));
        assert!(r.contains("total, boot to exit") && r.contains("14.00 ms"));
        let partial = timings_report(Engine::Qemu, s, &PhaseTimes::default());
        assert!(partial.contains(" -\n"), "{partial}");
    }
}
