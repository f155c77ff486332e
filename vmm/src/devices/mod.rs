//! The guest's devices: three UARTs and an i8042 stub behind a port bus,
//! and, with the split irqchip, an I/O APIC behind an MMIO bus; the
//! virtio-mmio transport and its devices (`virtio`), not yet on a bus.

pub mod bus;
pub mod i8042;
pub mod ioapic;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, BusEvent};

use std::sync::{Arc, Mutex};

use ioapic::IoApic;

/// Everything a vCPU exit can reach.
pub struct Devices {
    /// The port-I/O bus.
    pub pio: Bus,
    /// The MMIO bus (the I/O APIC, with the split irqchip).
    pub mmio: Bus,
    /// The I/O APIC that takes the guest's EOIs, with the split irqchip.
    pub ioapic: Option<Arc<Mutex<IoApic>>>,
}
