//! Every x86 address and constant the VMM relies on, in one place.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel goes at
//! 1 MiB; the initrd goes as high as the kernel and memory allow. Guest RAM
//! that would fall into the 32-bit MMIO gap is placed above 4 GiB instead.

/// Global descriptor table (four entries: null, code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty interrupt descriptor table: any exception before the kernel
/// loads its own IDT is a triple fault, which ends the VM.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6100;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6200;
/// The Linux zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the identity map used for the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// Level-3 page table (one entry: the first GiB).
pub const PDPTE_START: u64 = 0xa000;
/// Level-2 page table: 512 entries of 2 MiB, identity-mapping the first GiB.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted for an ELF kernel (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE_ELF: usize = 2048;
/// Start of the last KiB of base memory, where Linux looks for an MP table.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of usable base memory (the legacy VGA/BIOS hole follows).
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// Where the kernel is loaded ("high memory": 1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap (nothing is mapped there; RAM that would
/// fall in it is placed at [`HIGH_MEMORY_START`]).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// RAM continues here when the guest has more than [`MMIO_GAP_START`] bytes.
pub const HIGH_MEMORY_START: u64 = 0x1_0000_0000;
/// The KVM TSS (three pages) sits just below the BIOS area, inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The KVM identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// First serial port: the kernel console and the program's stderr.
pub const SERIAL_CONSOLE_PORT: u16 = 0x3f8;
/// Second serial port: the program's stdout (and stdin).
pub const SERIAL_STDOUT_PORT: u16 = 0x2f8;
/// Third serial port: the status channel.
pub const SERIAL_STATUS_PORT: u16 = 0x3e8;
/// Number of I/O ports of a 16550A.
pub const SERIAL_PORT_LEN: u16 = 8;
/// IRQ of ttyS0 and ttyS2 (legacy PC wiring: COM1 and COM3 share it).
pub const SERIAL_CONSOLE_IRQ: u32 = 4;
/// IRQ of ttyS1.
pub const SERIAL_STDOUT_IRQ: u32 = 3;
/// IRQ of ttyS2.
pub const SERIAL_STATUS_IRQ: u32 = 4;
/// i8042 data port; the controller spans 0x60..=0x64.
pub const I8042_PORT: u16 = 0x60;
/// Ports spanned by the i8042 (data at offset 0, command/status at offset 4).
pub const I8042_PORT_LEN: u16 = 5;
/// The POST diagnostic port, written by some kernels as an I/O delay.
pub const POST_CODE_PORT: u16 = 0x80;

/// Local APIC base (in the MP table header).
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// I/O APIC base (in the MP table).
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// The MMIO range the VMM's I/O APIC claims (split irqchip): one page.
pub const IO_APIC_MMIO_LEN: u64 = 0x1000;

/// e820 entry type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type for reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `boot_params.hdr.type_of_loader`: "undefined" boot loader.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `boot_params.hdr.boot_flag` magic.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `boot_params.hdr.header` magic ("HdrS").
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// Default `kernel_alignment` for an ELF kernel's zero page.
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// The 64-bit entry point is this far past the start of the protected-mode code.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// The page size used for initrd alignment.
pub const PAGE_SIZE: u64 = 0x1000;

/// ACPI tables (DSDT, FADT, MADT, XSDT) start here, right after the MP
/// table's KiB, in the legacy VGA/ROM window (`[0xa0000, 1 MiB)`) that
/// Linux never uses as RAM. The area ends at [`ACPI_RSDP_START`].
pub const ACPI_TABLES_START: u64 = BASE_MEMORY_END;
/// The RSDP: at the start of the BIOS range Linux scans (`0xe0000-0xfffff`,
/// 16-byte aligned) when the boot protocol does not hand it the address.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// Bytes available to the ACPI tables: `[ACPI_TABLES_START, ACPI_RSDP_START)`.
pub const ACPI_TABLES_SIZE: u64 = ACPI_RSDP_START - ACPI_TABLES_START;
/// End (exclusive) of the low range held by firmware-style tables (MP table,
/// ACPI tables, RSDP): the BIOS area ends at 1 MiB.
pub const SYSTEM_TABLES_END: u64 = HIMEM_START;

/// One virtio-mmio device window and its interrupt, as the guest learns it
/// from the DSDT or from `virtio_mmio.device=<len>@<addr>:<gsi>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of the register window.
    pub addr: u64,
    /// Length of the window in bytes (4 KiB for virtio-mmio).
    pub len: u64,
    /// The I/O APIC pin (GSI) the device interrupts on, edge-triggered.
    pub gsi: u32,
}

impl VirtioMmioSlot {
    /// The slot as `virtio_mmio.device=` takes it: `<len>K@<addr>:<gsi>`.
    pub fn cmdline_device(&self) -> String {
        format!("{}K@{:#x}:{}", self.len >> 10, self.addr, self.gsi)
    }
}

/// The virtio-mmio device windows and their interrupts, in the order the
/// slot allocator ([`virtio_slots`]) hands them out: 4 KiB each, from 256
/// MiB into the 32-bit MMIO gap (well clear of the I/O APIC at
/// `0xfec0_0000` and the LAPIC), each on an ISA IRQ nothing else here uses.
/// The UARTs have 3 and 4; 8, 9, 12 and 13 are left to the RTC, the ACPI
/// SCI, the i8042's mouse and the FPU, which some kernels probe for. The MP
/// table routes ISA IRQs 0-15 1:1 to I/O APIC pins, edge-triggered and
/// active-high.
pub const VIRTIO_MMIO_SLOTS: [VirtioMmioSlot; 7] = {
    const BASE: u64 = 0xd000_0000;
    const LEN: u64 = 0x1000;
    const GSIS: [u32; 7] = [5, 6, 7, 10, 11, 14, 15];
    let mut slots = [VirtioMmioSlot {
        addr: BASE,
        len: LEN,
        gsi: GSIS[0],
    }; 7];
    let mut i = 0;
    while i < slots.len() {
        slots[i] = VirtioMmioSlot {
            addr: BASE + i as u64 * LEN,
            len: LEN,
            gsi: GSIS[i],
        };
        i += 1;
    }
    slots
};

/// The slot allocator: the slots of `count` virtio-mmio devices, device
/// `i` of a VM's list in slot `i`; `None` when there are more devices than
/// slots. The VMM's bus, the ACPI tables, the kernel command line and the
/// `virtio_mmio` module's parameters all read their slots from here.
pub fn virtio_slots(count: usize) -> Option<&'static [VirtioMmioSlot]> {
    VIRTIO_MMIO_SLOTS.get(..count)
}

/// The port names of the virtio-console, in port order (port 0 first): the
/// program's stdout, its stderr, and its stdin. guest-init finds each in
/// `/sys/class/virtio-ports/*/name`.
pub const VIRTIO_CONSOLE_PORTS: [&str; 3] =
    ["microrun.stdout", "microrun.stderr", "microrun.stdin"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_hands_out_distinct_slots_in_order_and_no_more() {
        let all = virtio_slots(VIRTIO_MMIO_SLOTS.len()).unwrap();
        for (i, slot) in all.iter().enumerate() {
            assert_eq!(slot.len, 0x1000);
            assert!(slot.addr >= MMIO_GAP_START && slot.addr + slot.len <= 0xfec0_0000);
            assert!(![3, 4, 8, 9, 12, 13].contains(&slot.gsi), "{slot:?}");
            for other in &all[..i] {
                assert!(other.addr + other.len <= slot.addr, "{other:?} {slot:?}");
                assert_ne!(other.gsi, slot.gsi);
            }
        }
        assert_eq!(virtio_slots(0), Some(&[][..]));
        assert_eq!(virtio_slots(2).unwrap(), &all[..2]);
        assert_eq!(virtio_slots(all.len() + 1), None);
        assert_eq!(all[0].cmdline_device(), "4K@0xd0000000:5");
    }
}
