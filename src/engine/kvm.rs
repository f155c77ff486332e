//! The kvm engine: microrun's own VMM (the `vmm` crate), booting the plan
//! as it is.

use std::sync::{Arc, Mutex};

use vmm::output::FdWriter;
use vmm::{InitrdPart, IrqChip, KvmHost, VmConfig, VmEnd};

use crate::console_watch::{ConsoleWatch, Watched};
use crate::plan::{Plan, VmPlan};
use crate::spec::{PhaseTimes, RunOutcome, SetupSteps, Verbosity, TIMEOUT_REASON};

/// Why the kvm engine could not run the plan.
#[derive(Debug, thiserror::Error)]
pub enum KvmEngineError {
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// passt could not be started (`--net`).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// Boots `vm` with the interrupt controllers `irqchip` (and the threads'
/// seccomp filters, unless `seccomp` is false) and reports how the run of
/// `plan` ended.
pub fn run(
    plan: &Plan,
    vm: &VmPlan,
    irqchip: IrqChip,
    seccomp: bool,
) -> Result<RunOutcome, KvmEngineError> {
    if let KvmHost::Emulated(why) = vmm::kvm_host() {
        if plan.verbosity != Verbosity::Quiet {
            crate::say(format_args!(
                "warning: {why}: a Linux guest will be very slow or fail here; --engine qemu works"
            ));
        }
    }
    // With the disk root the initrd is guest-init's archive alone.
    let mut initrd: Vec<InitrdPart> = vm
        .initrd
        .rootfs
        .iter()
        .cloned()
        .map(InitrdPart::File)
        .collect();
    if let Some(archive) = &vm.initrd.init_archive {
        initrd.push(InitrdPart::Bytes(archive.clone()));
    }
    // With --net: passt on one end of a socket pair, the device on the
    // other.
    let (passt, net_backend) = match &vm.net {
        Some(net) => {
            let (passt, backend) = crate::net::helper::start_passt(net)?;
            (Some(passt), Some(backend))
        }
        None => (None, None),
    };
    let console_watch = Arc::new(Mutex::new(ConsoleWatch::default()));
    let config = VmConfig {
        kernel: vm.kernel.clone(),
        // Files in microrun's cache (the project kernel) are renamed into
        // place, never changed in place: the VMM maps a cached vmlinux's
        // pages into guest memory instead of copying them.
        kernel_cached: initrd_tools::cache_dir().is_ok_and(|c| vm.kernel.starts_with(c)),
        initrd,
        // Exactly what the plan logged at -v: the VMM never edits it.
        cmdline: vm.cmdline.to_string(),
        mem_size: vm.mem_size,
        vcpus: vm.cpus,
        timeout: plan.timeout,
        forward_stdin: plan.forward_stdin,
        irqchip,
        // Unbuffered and past std's locks: the VMM writes them from threads
        // of its own, and nothing may be left in std's buffers at exit.
        console: Box::new(Watched {
            inner: FdWriter(2),
            watch: console_watch.clone(),
        }),
        stdout: Box::new(FdWriter(1)),
        process_start: plan.started,
        seccomp,
        virtio: vm.devices.clone(),
        net_backend,
    };
    crate::start_messages();
    let outcome = vmm::run(config);
    // This thread may now be under the VMM's supervisor filter, which has
    // no kill or wait4; the VM's end of passt's socket is closed, so passt
    // ends by itself.
    if let Some(passt) = passt {
        passt.release();
    }
    let outcome = outcome?;
    if plan.verbosity == Verbosity::Verbose {
        log::info!("VM exits, by reason and address:\n{}", outcome.exits);
    }
    let t = outcome.timings;
    let exit_code = outcome.end.exit_code();
    Ok(RunOutcome {
        exit_code,
        reason: match &outcome.end {
            // A closed stdout ends the run quietly, as it ends a program in
            // a pipeline (exit 141).
            VmEnd::Status(_) => None,
            VmEnd::OutputFailed(failure) if failure.is_closed_reader() => None,
            VmEnd::Timeout => Some(TIMEOUT_REASON.to_string()),
            other => Some(other.describe()),
        },
        times: PhaseTimes {
            ready: t.first_run.or(t.vm_ready),
            init: t.init_event,
            status: t.status,
            end: t.exit,
            setup_steps: setup_steps(plan, vm, &t),
        },
        unpack_failure: console_watch
            .lock()
            .ok()
            .and_then(|watch| watch.unpack_failure()),
    })
}

/// The host-side set-up, step by step: the plan's steps, the VMM's kernel
/// and initrd copies, and the rest up to vCPU 0's first `KVM_RUN`.
fn setup_steps(plan: &Plan, vm: &VmPlan, t: &vmm::Timings) -> SetupSteps {
    let planning = plan.planned.saturating_duration_since(plan.started);
    let prepared = vm.prepared.rootfs + vm.prepared.init_archive;
    let initrd = t.initrd_load.map(|load| load + vm.prepared.init_archive);
    let until_run = t
        .first_run
        .map(|run| run.saturating_duration_since(plan.started));
    // The plan's span holds its own steps; the VMM's follow it.
    let counted = planning + t.kernel_load.unwrap_or_default() + t.initrd_load.unwrap_or_default();
    SetupSteps {
        plan: Some(planning.saturating_sub(prepared)),
        rootfs: Some(vm.prepared.rootfs),
        kernel_load: t.kernel_load,
        initrd,
        memory_and_devices: until_run.map(|d| d.saturating_sub(counted)),
    }
}
