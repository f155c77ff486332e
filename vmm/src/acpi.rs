//! ACPI tables, for kernels that find their devices only through ACPI
//! (Debian's, whose `virtio_mmio` module has no command-line devices).
//!
//! [`write_acpi_tables`] writes, with the rust-vmm `acpi_tables` crate:
//!
//! - an **RSDP** (revision 2) at [`layout::ACPI_RSDP_START`], pointing to
//! - an **XSDT** listing the FADT and the MADT;
//! - a hardware-reduced **FADT** (revision 6.5): `HW_REDUCED_ACPI`, power
//!   and sleep buttons as control-method devices (there are none), IA-PC
//!   boot flags "legacy devices", "8042" (so Linux keeps its i8042 driver;
//!   microrun's reset port lives there), "no VGA" and "no CMOS RTC", and
//!   `X_DSDT`. Linux honours `HW_REDUCED_ACPI` whatever the revision: it
//!   then sets up no PIC, no PIT/HPET timer and no SCI, which matches
//!   microrun's split irqchip;
//! - a **MADT**: the local APIC address, one enabled local APIC per vCPU
//!   (processor UID = APIC ID = index) and the I/O APIC (ID = vCPU count,
//!   GSI base 0), the same IDs as the MP table. There is no interrupt
//!   source override: without one Linux maps ISA IRQ n to GSI n, edge and
//!   active high, as the MP table does. The usual PC override IRQ0 -> GSI2
//!   is left out on purpose: it exists for a PIT wired to pin 2, and a
//!   hardware-reduced guest uses no PIT;
//! - a **DSDT** whose `\_SB_` scope holds one `LNRO0005` device per
//!   virtio-mmio slot (`Vnnn`, `_UID` n, `_CCA` 1, a fixed 32-bit memory
//!   window and an edge, active-high interrupt), the three UARTs (`COM1`-
//!   `COM3`, `PNP0501`) and the i8042 (`PS2K`, `PNP0303`). Linux's
//!   `8250_pnp` registers the UARTs before the legacy ports and takes the
//!   line whose I/O port matches, so ttyS0-ttyS2 keep their ports.
//!
//! The tables live in `[ACPI_TABLES_START, ACPI_RSDP_START)`, after the MP
//! table (which stays, for kernels without ACPI); [`AcpiInfo`] says which
//! range to reserve in the e820 map and where the RSDP is.

use std::ops::Range;

use acpi_tables::aml::{self, Device, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::ioapic::NUM_PINS;
use crate::layout::{self, VirtioMmioSlot};
use crate::memory::GuestMemory;
use crate::mptable;

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count cannot be described (the MP table's limit holds here too).
    #[error("{0} vCPUs cannot be described in the ACPI MADT: use 1 to {max}", max = mptable::MAX_CPUS)]
    CpuCount(u8),
    /// More virtio-mmio slots than the DSDT has device names for.
    #[error("{count} virtio-mmio devices do not fit in the DSDT: at most {MAX_VIRTIO_SLOTS}")]
    TooManyDevices {
        /// How many were given.
        count: usize,
    },
    /// A slot that a 32-bit fixed memory descriptor cannot describe.
    #[error(
        "virtio-mmio device {index} at {addr:#x} (length {len:#x}) is not a non-empty window \
         below 4 GiB: place it in the 32-bit MMIO gap"
    )]
    SlotOutside32Bit {
        /// Position in the slot list.
        index: usize,
        /// Its base.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Two slots overlap.
    #[error("virtio-mmio devices {first} and {second} overlap: give each its own window")]
    SlotsOverlap {
        /// The earlier slot in the list.
        first: usize,
        /// The later one.
        second: usize,
    },
    /// A slot's GSI is not a pin of the I/O APIC.
    #[error(
        "virtio-mmio device {index} uses GSI {gsi}, but the I/O APIC has pins 0 to {}: \
         pick a free pin below {NUM_PINS}",
        NUM_PINS - 1
    )]
    GsiOutOfRange {
        /// Position in the slot list.
        index: usize,
        /// The GSI asked for.
        gsi: u32,
    },
    /// The tables are larger than their area.
    #[error(
        "the ACPI tables need {needed} bytes but their area at {start:#x} holds {available}: \
         use fewer devices"
    )]
    TooLarge {
        /// Bytes the tables take, alignment included.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// Start of the area.
        start: u64,
    },
    /// Writing guest memory failed.
    #[error("cannot write the ACPI {table} into guest memory at {addr:#x}: {source}")]
    GuestMemory {
        /// Which table.
        table: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Most virtio-mmio slots the DSDT names (`V000` to `V999`).
pub const MAX_VIRTIO_SLOTS: usize = 1000;

/// What the boot code needs once the tables are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiInfo {
    /// Guest-physical address of the RSDP: `boot_params.acpi_rsdp_addr`
    /// (Linux boot protocol) or `hvm_start_info.rsdp_paddr` (PVH).
    pub rsdp_addr: u64,
    /// The range to mark reserved in the e820 map (tables, RSDP and the rest
    /// of the BIOS area up to 1 MiB), half-open.
    pub reserved: Range<u64>,
}

impl AcpiInfo {
    /// Marks [`AcpiInfo::reserved`] reserved in an e820 map of `(start,
    /// length, type)` entries such as [`crate::memory::e820_map`] returns:
    /// whatever the range overlaps is cut out, the range is added as
    /// [`layout::E820_RESERVED`], and touching entries of one type merge.
    /// With today's map, `[0x9fc00, 0xa0000)` (the MP table) and this range
    /// become one reserved entry `[0x9fc00, 1 MiB)`.
    pub fn reserve_in_e820(&self, map: &mut Vec<(u64, u64, u32)>) {
        let (start, end) = (self.reserved.start, self.reserved.end);
        let mut out: Vec<(u64, u64, u32)> = Vec::with_capacity(map.len() + 2);
        for &(addr, len, kind) in map.iter() {
            let entry_end = addr.saturating_add(len);
            if entry_end <= start || addr >= end {
                out.push((addr, len, kind));
                continue;
            }
            if addr < start {
                out.push((addr, start - addr, kind));
            }
            if entry_end > end {
                out.push((end, entry_end - end, kind));
            }
        }
        out.push((start, end - start, layout::E820_RESERVED));
        out.sort_by_key(|e| e.0);
        let mut merged: Vec<(u64, u64, u32)> = Vec::with_capacity(out.len());
        for entry in out {
            match merged.last_mut() {
                Some(last) if last.2 == entry.2 && last.0 + last.1 == entry.0 => last.1 += entry.1,
                _ => merged.push(entry),
            }
        }
        *map = merged;
    }
}

const OEM_ID: [u8; 6] = *b"MICRUN";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;
/// Tables start on this boundary inside the area.
const TABLE_ALIGN: u64 = 16;

/// IA-PC boot architecture flags of the FADT (ACPI 6.5, table 5.10).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The keyboard IRQ of a PC's i8042 (microrun's stub never raises it).
const I8042_KBD_IRQ: u32 = 1;

/// The tables as bytes, with the address each goes to.
struct Tables {
    /// `(address, bytes, name)` in address order.
    blobs: Vec<(u64, Vec<u8>, &'static str)>,
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn check_slots(devices: &[VirtioMmioSlot]) -> Result<(), AcpiError> {
    if devices.len() > MAX_VIRTIO_SLOTS {
        return Err(AcpiError::TooManyDevices {
            count: devices.len(),
        });
    }
    for (index, slot) in devices.iter().enumerate() {
        let end = slot.addr.checked_add(slot.len);
        if slot.len == 0 || end.is_none_or(|end| end > 1 << 32) {
            return Err(AcpiError::SlotOutside32Bit {
                index,
                addr: slot.addr,
                len: slot.len,
            });
        }
        if slot.gsi as usize >= NUM_PINS {
            return Err(AcpiError::GsiOutOfRange {
                index,
                gsi: slot.gsi,
            });
        }
        for (first, other) in devices[..index].iter().enumerate() {
            if slot.addr < other.addr + other.len && other.addr < slot.addr + slot.len {
                return Err(AcpiError::SlotsOverlap {
                    first,
                    second: index,
                });
            }
        }
    }
    Ok(())
}

/// The AML of one UART: `Device (COMn)` with its I/O ports and ISA IRQ.
fn uart_aml(name: &str, uid: u32, port: u16, irq: u32, shared: bool) -> Vec<u8> {
    let io = aml::IO::new(port, port, 1, layout::SERIAL_PORT_LEN as u8);
    let int = Interrupt::new(true, true, false, shared, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    to_bytes(&Device::new(
        Path::new(name),
        vec![
            &Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The AML body of the DSDT: `Scope (\_SB_)` with every device.
fn dsdt_aml(devices: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut children: Vec<u8> = Vec::new();
    for (index, slot) in devices.iter().enumerate() {
        // check_slots: the window lies below 4 GiB, so both fit in 32 bits.
        let mem = Memory32Fixed::new(true, slot.addr as u32, slot.len as u32);
        let int = Interrupt::new(true, true, false, false, slot.gsi);
        let crs = ResourceTemplate::new(vec![&mem, &int]);
        let uid = index as u32;
        children.extend(to_bytes(&Device::new(
            Path::new(&format!("V{index:03}")),
            vec![
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CCA".into(), &aml::ONE),
                &Name::new("_CRS".into(), &crs),
            ],
        )));
    }
    // COM1 and COM3 share IRQ 4, as on a PC: say so, so that 8250_pnp sets
    // UPF_SHARE_IRQ on both.
    children.extend(uart_aml(
        "COM1",
        1,
        layout::SERIAL_CONSOLE_PORT,
        layout::SERIAL_CONSOLE_IRQ,
        true,
    ));
    children.extend(uart_aml(
        "COM2",
        2,
        layout::SERIAL_STDOUT_PORT,
        layout::SERIAL_STDOUT_IRQ,
        false,
    ));
    children.extend(uart_aml(
        "COM3",
        3,
        layout::SERIAL_STATUS_PORT,
        layout::SERIAL_STATUS_IRQ,
        true,
    ));
    let data = aml::IO::new(layout::I8042_PORT, layout::I8042_PORT, 1, 1);
    let command_port = layout::I8042_PORT + layout::I8042_PORT_LEN - 1;
    let command = aml::IO::new(command_port, command_port, 1, 1);
    let kbd_irq = Interrupt::new(true, true, false, false, I8042_KBD_IRQ);
    let crs = ResourceTemplate::new(vec![&data, &command, &kbd_irq]);
    children.extend(to_bytes(&Device::new(
        Path::new("PS2K"),
        vec![
            &Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &Name::new("_CRS".into(), &crs),
        ],
    )));
    aml::Scope::raw("\\_SB_".into(), children)
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds every table for tables placed from `area_start` on (at most
/// `area_size` bytes) and the RSDP at `rsdp_addr`.
fn build(
    vcpus: u8,
    devices: &[VirtioMmioSlot],
    area_start: u64,
    area_size: u64,
    rsdp_addr: u64,
) -> Result<Tables, AcpiError> {
    if vcpus == 0 || vcpus > mptable::MAX_CPUS {
        return Err(AcpiError::CpuCount(vcpus));
    }
    check_slots(devices)?;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(devices));
    let dsdt = dsdt.as_slice().to_vec();
    let dsdt_addr = area_start;

    let fadt_addr = align_up(dsdt_addr + dsdt.len() as u64);
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch =
        (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    let fadt = to_bytes(&fadt.finalize());

    let madt_addr = align_up(fadt_addr + fadt.len() as u64);
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_DEFAULT_PHYS_BASE),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, layout::IO_APIC_DEFAULT_PHYS_BASE, 0));
    let madt = to_bytes(&madt);

    let xsdt_addr = align_up(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);

    let end = xsdt_addr + xsdt.len() as u64;
    if end - area_start > area_size {
        return Err(AcpiError::TooLarge {
            needed: end - area_start,
            available: area_size,
            start: area_start,
        });
    }
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(Tables {
        blobs: vec![
            (dsdt_addr, dsdt, "DSDT"),
            (fadt_addr, fadt, "FADT"),
            (madt_addr, madt, "MADT"),
            (xsdt_addr, xsdt, "XSDT"),
            (rsdp_addr, rsdp, "RSDP"),
        ],
    })
}

/// Writes the RSDP, XSDT, FADT, MADT and DSDT for `vcpus` vCPUs and the
/// virtio-mmio `devices` (in the order given: the guest probes them in that
/// order) into `mem`, and says where the RSDP is and what to reserve.
///
/// ```
/// use vmm::layout::VirtioMmioSlot;
/// let mem = vmm::memory::create_guest_memory(64 << 20)?;
/// let slot = VirtioMmioSlot { addr: 0xd000_0000, len: 0x1000, gsi: 5 };
/// let info = vmm::acpi::write_acpi_tables(&mem, 2, &[slot])?;
/// assert_eq!(info.rsdp_addr, vmm::layout::ACPI_RSDP_START);
/// let mut e820 = vmm::memory::e820_map(64 << 20);
/// info.reserve_in_e820(&mut e820);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_acpi_tables(
    mem: &GuestMemory,
    vcpus: u8,
    devices: &[VirtioMmioSlot],
) -> Result<AcpiInfo, AcpiError> {
    let tables = build(
        vcpus,
        devices,
        layout::ACPI_TABLES_START,
        layout::ACPI_TABLES_SIZE,
        layout::ACPI_RSDP_START,
    )?;
    for (addr, bytes, table) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| AcpiError::GuestMemory {
                table,
                addr: *addr,
                source,
            })?;
    }
    Ok(AcpiInfo {
        rsdp_addr: layout::ACPI_RSDP_START,
        reserved: layout::ACPI_TABLES_START..layout::SYSTEM_TABLES_END,
    })
}

#[cfg(test)]
mod tests;
