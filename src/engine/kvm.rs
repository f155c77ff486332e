//! The kvm engine: microrun's own VMM (the `vmm` crate).

use std::path::PathBuf;

use vmm::output::FdWriter;
use vmm::{InitrdPart, IrqChip, KvmHost, VmConfig, VmEnd};

use crate::boot::BootInitrd;
use crate::spec::{PhaseTimes, RunOutcome, RunSpec, Verbosity};

/// Why the kvm engine could not run the guest.
#[derive(Debug, thiserror::Error)]
pub enum KvmEngineError {
    /// The VMM refused the configuration or failed.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// `MICRORUN_IRQCHIP` names no interrupt controller model.
    #[error("{IRQCHIP_VAR}={0:?} is not an interrupt controller model: use `split` (the default) or `kernel` (KVM's PIC, I/O APIC and PIT, for guest kernels without kvm-clock)")]
    IrqChip(String),
}

/// The environment variable that picks the interrupt controllers.
pub const IRQCHIP_VAR: &str = "MICRORUN_IRQCHIP";

/// The interrupt controller model named by `value` (of [`IRQCHIP_VAR`]).
pub fn parse_irqchip(value: Option<&str>) -> Result<IrqChip, KvmEngineError> {
    match value {
        None | Some("") | Some("split") => Ok(IrqChip::Split),
        Some("kernel") => Ok(IrqChip::Kernel),
        Some(other) => Err(KvmEngineError::IrqChip(other.to_string())),
    }
}

/// What the kvm engine boots, decided by the caller.
pub struct KvmBoot {
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
    /// Whether to offer the virtio-console and how to announce it
    /// (`virtio_mmio.device=` on the command line, ACPI, or both); any
    /// modules it needs are already in the initrd.
    pub virtio: vmm::VirtioOptions,
}

/// Boots `boot` for `spec` and reports how the run ended.
pub fn run(spec: &RunSpec, boot: KvmBoot) -> Result<RunOutcome, KvmEngineError> {
    if let KvmHost::Emulated(why) = vmm::kvm_host() {
        if spec.verbosity != Verbosity::Quiet {
            crate::say(format_args!(
                "warning: {why}: a Linux guest will be very slow or fail here; --engine qemu works"
            ));
        }
    }
    let irqchip = parse_irqchip(std::env::var(IRQCHIP_VAR).ok().as_deref())?;
    let mut initrd = vec![InitrdPart::File(boot.initrd.rootfs)];
    if let Some(archive) = boot.initrd.init_archive {
        initrd.push(InitrdPart::Bytes(archive));
    }
    let config = VmConfig {
        kernel: boot.kernel,
        initrd,
        cmdline: boot.cmdline,
        mem_size: boot.mem_size,
        vcpus: boot.vcpus,
        timeout: spec.timeout,
        forward_stdin: spec.forward_stdin,
        irqchip,
        // Unbuffered and past std's locks: the VMM writes them from threads
        // of its own, and nothing may be left in std's buffers at exit.
        console: Box::new(FdWriter(2)),
        stdout: Box::new(FdWriter(1)),
        process_start: spec.started,
        // Off only for debugging: MICRORUN_SECCOMP=off.
        seccomp: vmm::seccomp::wanted(),
        virtio: boot.virtio,
    };
    crate::start_messages();
    let outcome = vmm::run(config)?;
    let t = outcome.timings;
    let exit_code = outcome.end.exit_code();
    Ok(RunOutcome {
        exit_code,
        reason: match &outcome.end {
            // A closed stdout ends the run quietly, as it ends a program in
            // a pipeline (exit 141).
            VmEnd::Status(_) => None,
            VmEnd::OutputFailed(failure) if failure.is_closed_reader() => None,
            VmEnd::Timeout => Some(crate::engine::qemu::TIMEOUT_REASON.to_string()),
            other => Some(other.describe()),
        },
        times: PhaseTimes {
            ready: t.first_run.or(t.vm_ready),
            init: t.init_event,
            status: t.status,
            end: t.exit,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqchip_names() {
        assert_eq!(parse_irqchip(None).unwrap(), IrqChip::Split);
        assert_eq!(parse_irqchip(Some("split")).unwrap(), IrqChip::Split);
        assert_eq!(parse_irqchip(Some("kernel")).unwrap(), IrqChip::Kernel);
        let e = parse_irqchip(Some("pic")).unwrap_err().to_string();
        assert!(
            e.contains("MICRORUN_IRQCHIP") && e.contains("kernel"),
            "{e}"
        );
    }
}
