//! The interrupt controllers: which ones KVM provides and which the VMM does.
//!
//! Two models, chosen by [`IrqChip`]:
//! - **split** (the default): the local APICs in KVM, the I/O APIC in the
//!   VMM ([`crate::devices::ioapic`]), no PIC and no PIT. The guest's timer
//!   is the local APIC's TSC-deadline timer, its clock kvm-clock.
//! - **kernel**: KVM's PIC, I/O APIC and PIT (what Firecracker uses), for
//!   kernels that need a PIT.
//!
//! Why split is the default: on the hosts measured, each in-kernel device
//! that KVM puts on its I/O buses leaves an SRCU grace period pending, and
//! the memory slot or the VM's teardown must wait for it (4-25 ms per VM;
//! docs/bench-null-vm.md). The split model registers nothing there.

use std::io;
use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_pit_config, kvm_reinject_control,
    KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::devices::ioapic::{Msi, MsiSink, NUM_PINS};

/// How the guest's interrupts are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqChip {
    /// Local APICs in KVM, the I/O APIC in the VMM, no PIC, no PIT (KVM's
    /// split irqchip). Quickest to create and tear down. The guest kernel
    /// must not need a PIT: kvm-clock (`CONFIG_KVM_GUEST`, in every
    /// distribution kernel) gives it the TSC frequency, and the local APIC
    /// timer runs in TSC-deadline mode. Falls back to [`IrqChip::Kernel`]
    /// where KVM lacks `KVM_CAP_SPLIT_IRQCHIP`.
    #[default]
    Split,
    /// KVM's PIC, I/O APIC and PIT.
    Kernel,
}

/// Errors creating the interrupt controllers.
#[derive(Debug, thiserror::Error)]
pub enum IrqChipError {
    /// A KVM VM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The thread that switches off PIT re-injection panicked.
    #[error("the thread switching off PIT tick re-injection panicked")]
    PitThreadPanicked,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> IrqChipError {
    move |source| IrqChipError::Kvm { what, source }
}

/// Creates the controllers `wanted` asks for, or the in-kernel ones where
/// KVM has no split irqchip; returns the model in use. Must run before any
/// vCPU is created.
pub fn create(kvm: &Kvm, vm: &VmFd, wanted: IrqChip) -> Result<IrqChip, IrqChipError> {
    let model = match wanted {
        IrqChip::Split if kvm.check_extension(Cap::SplitIrqchip) => IrqChip::Split,
        IrqChip::Split => {
            log::info!("KVM has no split irqchip; using its in-kernel PIC, I/O APIC and PIT");
            IrqChip::Kernel
        }
        IrqChip::Kernel => IrqChip::Kernel,
    };
    log::debug!("interrupt controllers: {model:?}");
    match model {
        IrqChip::Split => {
            // The argument is the number of GSIs reserved for I/O APIC pins:
            // KVM reports EOIs for the level-triggered routes among them.
            let cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                args: [NUM_PINS as u64, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(kvm_err("enable the split irqchip"))?;
        }
        IrqChip::Kernel => {
            vm.create_irq_chip()
                .map_err(kvm_err("create the in-kernel irqchip"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        }
    }
    Ok(model)
}

/// VM ioctls that kvm-ioctls does not wrap.
mod raw_ioctls {
    use kvm_bindings::KVMIO;
    use vmm_sys_util::ioctl_io_nr;

    ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);
}

/// Stops KVM from re-injecting PIT ticks the guest missed (in-kernel model).
pub fn switch_off_pit_reinjection(kvm: &Kvm, vm: &VmFd) -> Result<(), IrqChipError> {
    // KVM re-injects PIT ticks the guest has not acknowledged unless told
    // not to; a real PIT drops them, and Linux keeps time by its clocksource,
    // not by counting ticks. Switching it off here rather than leaving it to
    // VM teardown is for speed: switching it off waits for SRCU grace
    // periods, which at teardown are never expedited (13-25 ms measured
    // there) and here often are (see docs/bench-null-vm.md). With
    // re-injection off, AMD's AVIC also stays usable.
    if kvm.check_extension(Cap::ReinjectControl) {
        let control = kvm_reinject_control::default();
        // SAFETY: KVM_REINJECT_CONTROL reads a `kvm_reinject_control`, which
        // `control` is, and writes nothing; the VM fd is valid.
        let ret = unsafe { ioctl_with_ref(vm, raw_ioctls::KVM_REINJECT_CONTROL(), &control) };
        if ret != 0 {
            return Err(IrqChipError::Kvm {
                what: "switch off PIT tick re-injection",
                source: kvm_ioctls::Error::last(),
            });
        }
    }
    Ok(())
}

/// Sends the VMM I/O APIC's messages through KVM (`KVM_SIGNAL_MSI`), and
/// gives KVM the level-triggered routes whose EOIs it must report.
pub struct KvmMsiSink(pub Arc<VmFd>);

impl MsiSink for KvmMsiSink {
    fn send(&self, msi: Msi) -> io::Result<bool> {
        let message = kvm_msi {
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            ..Default::default()
        };
        // KVM returns the number of local APICs that took it: 0 when none
        // would (say, all disabled); an error (EPERM) when the message
        // names no APIC at all. Either way nobody listens; the guest
        // caused it.
        self.0
            .signal_msi(message)
            .map(|accepted| accepted > 0)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn set_level_routes(&self, routes: &[(u8, Msi)]) -> io::Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .map(|&(pin, msi)| {
                let mut entry = kvm_irq_routing_entry {
                    gsi: u32::from(pin),
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                entry.u.msi.address_lo = msi.address as u32;
                entry.u.msi.address_hi = (msi.address >> 32) as u32;
                entry.u.msi.data = msi.data;
                entry
            })
            .collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.0
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}
