//! The Intel MultiProcessor table, so that a kernel without ACPI finds every vCPU.

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestMemory;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than fit in the reserved area.
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// Writing guest memory failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
}

/// Most processors that fit in the 1 KiB area with the fixed entries.
pub const MAX_CPUS: u8 = 32;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const ISA_IRQS: u8 = 16;
const APIC_VERSION: u8 = 0x14;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP table bytes (floating pointer, then configuration table) for
/// `cpus` processors with APIC IDs 0..cpus, one ISA bus, one I/O APIC with
/// ID `cpus`, ISA IRQs routed 1:1, LINT0 ExtINT and LINT1 NMI.
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table_addr = layout::MPTABLE_START as u32 + FLOATING_POINTER_LEN as u32;
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        let flags = if id == 0 { 0x3 } else { 0x1 }; // enabled, BSP
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = cpus;
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&layout::IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // I/O interrupt: INT, conforming polarity/trigger, bus 0, IRQ -> I/O APIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1, for all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"MICRORUN");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&layout::APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    debug_assert!(fp.len() <= (layout::BASE_MEMORY_END - layout::MPTABLE_START) as usize);
    Ok(fp)
}

/// Writes the MP table at [`layout::MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(layout::MPTABLE_START))
        .map_err(MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESSOR_ENTRY_LEN: usize = 20;

    #[test]
    fn checksums_and_counts() {
        let t = build(4).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(checksum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(checksum(&t[16..16 + len]), 0);
        let first = 16 + HEADER_LEN;
        for id in 0..4 {
            let e = &t[first + id * PROCESSOR_ENTRY_LEN..];
            assert_eq!((e[0], e[1]), (0, id as u8));
        }
        assert_eq!(
            u16::from_le_bytes([t[16 + 34], t[16 + 35]]),
            4 + 1 + 1 + 16 + 2
        );
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS).unwrap().len() <= 1024);
    }
}
