//! An I/O APIC (the 82093AA register interface) for KVM's split irqchip:
//! the local APICs stay in KVM, this model turns pin edges into MSIs.
//!
//! It is a state machine behind the MMIO bus (`IOREGSEL` at +0x00, `IOWIN`
//! at +0x10) with one input, [`IoApic::pulse`], and one output, an
//! [`MsiSink`]. A pulse on an unmasked pin sends the pin's redirection
//! entry as an MSI; a pulse on a masked pin is dropped, as on the real part.
//! A level-triggered pin also sets its remote IRR when a local APIC took
//! the message, which blocks the pin until the guest's EOI for that vector
//! comes back ([`IoApic::end_of_interrupt`]); KVM reports such EOIs only for
//! vectors of level-triggered routes it knows of, so every change to the
//! level-triggered entries is passed on with [`MsiSink::set_level_routes`].
//! The devices signal events, not levels, so a level-triggered pin sees
//! pulses: one that comes while the pin is masked or waits for its EOI is
//! dropped, as KVM's in-kernel I/O APIC drops an irqfd's pulse then (Linux
//! programs the ISA pins edge-triggered, as the MP table says).

use std::io;

use super::bus::{BusDevice, BusEvent};
use crate::layout;

/// Number of input pins (redirection entries).
pub const NUM_PINS: usize = 24;

/// Register select (index) at this offset.
const IOREGSEL: u64 = 0x00;
/// Data window for the selected register.
const IOWIN: u64 = 0x10;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION_BASE: u32 = 0x10;

/// Version 0x11 (as KVM's in-kernel I/O APIC reports: no EOI register) and
/// the highest redirection entry.
const VERSION: u32 = 0x11 | ((NUM_PINS as u32 - 1) << 16);
/// The writable bits of the ID register (the 4-bit APIC ID in 27:24).
const ID_MASK: u32 = 0x0f00_0000;

const RTE_VECTOR: u64 = 0xff;
const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
const RTE_DELIVERY_MODE: u64 = 0x7 << RTE_DELIVERY_MODE_SHIFT;
const RTE_DEST_LOGICAL: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_DEST_SHIFT: u32 = 56;
/// Bits the guest cannot write: delivery status and remote IRR.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;

const MSI_DEST_SHIFT: u32 = 12;
const MSI_DEST_LOGICAL: u64 = 1 << 2;
const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
const MSI_DATA_LEVEL: u32 = 1 << 15;

/// A message-signalled interrupt, as the I/O APIC sends it to the local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    /// The address (0xfee0_0000 with the destination and its mode).
    pub address: u64,
    /// The data (vector, delivery mode, trigger mode).
    pub data: u32,
}

/// Where the I/O APIC's messages go: KVM in the VMM, a recorder in tests.
pub trait MsiSink: Send {
    /// Delivers one interrupt message; false when no local APIC took it.
    fn send(&self, msi: Msi) -> io::Result<bool>;
    /// The level-triggered entries are now exactly `routes` (pin, message):
    /// the guest's EOIs for their vectors must come back as
    /// [`IoApic::end_of_interrupt`].
    fn set_level_routes(&self, routes: &[(u8, Msi)]) -> io::Result<()>;
}

/// The I/O APIC's registers.
pub struct IoApic {
    id: u32,
    select: u32,
    redirection: [u64; NUM_PINS],
    level_routes: Vec<(u8, Msi)>,
    sink: Box<dyn MsiSink>,
    /// Whether a failure to update the routes was logged already.
    routes_warned: bool,
}

impl IoApic {
    /// An I/O APIC with APIC ID `id` (its low 4 bits: the register's
    /// width), every pin masked (its reset state).
    pub fn new(id: u8, sink: Box<dyn MsiSink>) -> Self {
        Self {
            id: (u32::from(id) << 24) & ID_MASK,
            select: 0,
            redirection: [RTE_MASKED; NUM_PINS],
            level_routes: Vec::new(),
            sink,
            routes_warned: false,
        }
    }

    /// The redirection entry of `pin` (for tests and diagnostics).
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// An interrupt edge on `pin`: the line went up and, because the
    /// devices here signal events rather than hold a level, down again.
    /// An error is the sink's (the message named no local APIC).
    pub fn pulse(&mut self, pin: usize) -> io::Result<()> {
        let Some(entry) = self.redirection.get_mut(pin) else {
            return Ok(());
        };
        if *entry & RTE_MASKED != 0 || *entry & RTE_REMOTE_IRR != 0 {
            return Ok(());
        }
        let accepted = self.sink.send(message(*entry))?;
        if accepted && *entry & RTE_LEVEL != 0 {
            *entry |= RTE_REMOTE_IRR;
        }
        Ok(())
    }

    /// The guest's local APIC acknowledged `vector`: clears the remote IRR of
    /// the level-triggered pins that use it.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for entry in &mut self.redirection {
            if *entry & RTE_VECTOR == u64::from(vector) {
                *entry &= !RTE_REMOTE_IRR;
            }
        }
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => self.id,
            REG_VERSION => VERSION,
            reg => match redirection_half(reg) {
                Some((pin, false)) => self.redirection[pin] as u32,
                Some((pin, true)) => (self.redirection[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    fn write_register(&mut self, value: u32) -> io::Result<()> {
        match self.select {
            REG_ID => self.id = value & ID_MASK,
            reg => {
                let Some((pin, high)) = redirection_half(reg) else {
                    return Ok(());
                };
                let entry = &mut self.redirection[pin];
                *entry = if high {
                    (*entry & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (*entry & !0xffff_ffff)
                        | (*entry & RTE_READ_ONLY)
                        | (u64::from(value) & !RTE_READ_ONLY)
                };
                // An edge-triggered pin has no remote IRR (Linux switches a
                // pin to edge and back to clear it).
                if *entry & RTE_LEVEL == 0 {
                    *entry &= !RTE_REMOTE_IRR;
                }
                self.update_level_routes()?;
            }
        }
        Ok(())
    }

    fn update_level_routes(&mut self) -> io::Result<()> {
        let routes: Vec<(u8, Msi)> = (0u8..)
            .zip(self.redirection)
            .filter(|(_, entry)| entry & RTE_LEVEL != 0)
            .map(|(pin, entry)| (pin, message(entry)))
            .collect();
        if routes != self.level_routes {
            self.sink.set_level_routes(&routes)?;
            self.level_routes = routes;
        }
        Ok(())
    }
}

/// The pin and half (high = true) of a redirection register index.
fn redirection_half(reg: u32) -> Option<(usize, bool)> {
    let index = reg.checked_sub(REG_REDIRECTION_BASE)? as usize;
    (index < 2 * NUM_PINS).then_some((index / 2, index % 2 == 1))
}

/// The MSI a redirection entry stands for (Intel SDM, "Message Signalled
/// Interrupts": destination in address bits 19:12, vector, delivery mode and
/// trigger mode in the data).
fn message(entry: u64) -> Msi {
    let dest = entry >> RTE_DEST_SHIFT;
    let mut address = u64::from(layout::APIC_DEFAULT_PHYS_BASE) | (dest << MSI_DEST_SHIFT);
    if entry & RTE_DEST_LOGICAL != 0 {
        address |= MSI_DEST_LOGICAL;
    }
    let mut data = (entry & (RTE_VECTOR | RTE_DELIVERY_MODE)) as u32;
    if entry & RTE_LEVEL != 0 {
        data |= MSI_DATA_LEVEL | MSI_DATA_LEVEL_ASSERT;
    }
    Msi { address, data }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_register(),
            _ => 0,
        };
        data.fill(0);
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        // The registers are 32 bits wide and written as such; a shorter
        // write fills the low bytes (Linux only ever writes 32 bits).
        let mut bytes = [0u8; 4];
        for (dst, src) in bytes.iter_mut().zip(data) {
            *dst = *src;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => {
                if let Err(e) = self.write_register(value) {
                    // Once: the guest may write entries again and again.
                    if !std::mem::replace(&mut self.routes_warned, true) {
                        log::warn!("I/O APIC: cannot update the level-triggered routes: {e}");
                    }
                }
            }
            _ => {}
        }
        None
    }
}

/// Test doubles shared with the other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// One `set_level_routes` call's table.
    pub type Routes = Vec<(u8, Msi)>;

    /// Records what the I/O APIC sends.
    #[derive(Clone, Default)]
    pub struct Recorder {
        pub sent: Arc<Mutex<Vec<Msi>>>,
        pub routes: Arc<Mutex<Vec<Routes>>>,
        /// Answer that no local APIC took the messages.
        pub refuse: Arc<Mutex<bool>>,
    }

    impl MsiSink for Recorder {
        fn send(&self, msi: Msi) -> io::Result<bool> {
            self.sent.lock().unwrap().push(msi);
            Ok(!*self.refuse.lock().unwrap())
        }
        fn set_level_routes(&self, routes: &[(u8, Msi)]) -> io::Result<()> {
            self.routes.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
    }

    /// Writes `value` to register `reg` through the MMIO window at `base`.
    pub fn write_reg(ioapic: &mut dyn BusDevice, base: u64, reg: u32, value: u32) {
        ioapic.write(base + IOREGSEL, &reg.to_le_bytes());
        ioapic.write(base + IOWIN, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Recorder;
    use super::*;

    fn ioapic() -> (IoApic, Recorder) {
        let rec = Recorder::default();
        (IoApic::new(1, Box::new(rec.clone())), rec)
    }

    fn write_reg(ioapic: &mut IoApic, reg: u32, value: u32) {
        super::testing::write_reg(ioapic, 0, reg, value);
    }

    fn read_reg(ioapic: &mut IoApic, reg: u32) -> u32 {
        ioapic.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        ioapic.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identification_registers() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, REG_ID), 1 << 24);
        // An 8-byte read gets the register and zeros.
        let mut wide = [0xaau8; 8];
        io.read(IOWIN, &mut wide);
        assert_eq!(wide, [0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            IoApic::new(0x21, Box::new(Recorder::default())).id,
            1 << 24,
            "4-bit ID"
        );
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        write_reg(&mut io, REG_ID, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0f00_0000);
        // Registers past the table read as 0.
        assert_eq!(read_reg(&mut io, 0x10 + 2 * NUM_PINS as u32), 0);
        let mut sel = [0u8; 4];
        io.read(IOREGSEL, &mut sel);
        assert_eq!(u32::from_le_bytes(sel), 0x40);
    }

    #[test]
    fn pins_start_masked_and_masked_edges_are_dropped() {
        let (mut io, rec) = ioapic();
        for pin in 0..NUM_PINS as u32 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), 1 << 16);
        }
        io.pulse(4).unwrap();
        io.pulse(NUM_PINS).unwrap(); // no such pin: ignored
        assert!(rec.sent.lock().unwrap().is_empty());
    }

    #[test]
    fn edge_pin_sends_its_entry_as_an_msi_each_time() {
        let (mut io, rec) = ioapic();
        // Pin 4: vector 0x34, fixed, physical destination APIC 2.
        write_reg(&mut io, 0x10 + 2 * 4 + 1, 2 << 24);
        write_reg(&mut io, 0x10 + 2 * 4, 0x34);
        io.pulse(4).unwrap();
        io.pulse(4).unwrap();
        let want = Msi {
            address: 0xfee0_2000,
            data: 0x34,
        };
        assert_eq!(*rec.sent.lock().unwrap(), vec![want, want]);
        assert!(rec.routes.lock().unwrap().is_empty());
        // Logical destination, lowest-priority delivery.
        write_reg(&mut io, 0x10 + 2 * 3, 0x34 | (1 << 8) | (1 << 11));
        io.pulse(3).unwrap();
        assert_eq!(
            rec.sent.lock().unwrap().last(),
            Some(&Msi {
                address: 0xfee0_0004,
                data: 0x134
            })
        );
    }

    #[test]
    fn level_pin_waits_for_the_eoi() {
        let (mut io, rec) = ioapic();
        write_reg(&mut io, 0x10 + 2 * 3, 0x41 | (1 << 15));
        let level = Msi {
            address: 0xfee0_0000,
            data: 0x41 | (1 << 15) | (1 << 14),
        };
        assert_eq!(*rec.routes.lock().unwrap(), vec![vec![(3, level)]]);
        io.pulse(3).unwrap();
        assert_ne!(read_reg(&mut io, 0x10 + 2 * 3) & (1 << 14), 0, "remote IRR");
        io.pulse(3).unwrap(); // blocked by remote IRR
        assert_eq!(rec.sent.lock().unwrap().len(), 1);
        io.end_of_interrupt(0x40); // another vector
        io.pulse(3).unwrap();
        assert_eq!(rec.sent.lock().unwrap().len(), 1);
        io.end_of_interrupt(0x41);
        io.pulse(3).unwrap();
        assert_eq!(*rec.sent.lock().unwrap(), vec![level, level]);
        // A message no local APIC takes leaves remote IRR clear.
        io.end_of_interrupt(0x41);
        *rec.refuse.lock().unwrap() = true;
        io.pulse(3).unwrap();
        assert_eq!(read_reg(&mut io, 0x10 + 2 * 3) & (1 << 14), 0);
        *rec.refuse.lock().unwrap() = false;
        io.pulse(3).unwrap();
        // The guest cannot write remote IRR; switching to edge clears it.
        write_reg(&mut io, 0x10 + 2 * 3, 0x41 | (1 << 15));
        assert_ne!(read_reg(&mut io, 0x10 + 2 * 3) & (1 << 14), 0);
        write_reg(&mut io, 0x10 + 2 * 3, 0x41);
        assert_eq!(read_reg(&mut io, 0x10 + 2 * 3), 0x41);
        // ... and the level-triggered routes are now empty.
        assert_eq!(rec.routes.lock().unwrap().last(), Some(&vec![]));
        assert_eq!(rec.routes.lock().unwrap().len(), 2);
    }
}
