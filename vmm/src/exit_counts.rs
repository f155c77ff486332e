//! A debug counter of a run's VM exits, by reason and, for port and MMIO
//! exits, by address: what the guest made the VMM do during a boot. Each
//! vCPU thread counts its own exits (no sharing in the run loop) and adds
//! them to the run's total when it stops; `-v` prints the total.

use std::collections::BTreeMap;
use std::fmt;

use kvm_ioctls::VcpuExit;

use crate::layout;

/// At most this many distinct (reason, address) pairs are kept: a guest
/// touching ever new ports or addresses only grows the `other` row.
const MAX_KEYS: usize = 256;

/// Why a vCPU left `KVM_RUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitReason {
    /// A port read (`in`), at the port.
    PortIn,
    /// A port write (`out`), at the port.
    PortOut,
    /// An MMIO read, at the address.
    MmioRead,
    /// An MMIO write, at the address.
    MmioWrite,
    /// An end of interrupt for the VMM's I/O APIC (split irqchip).
    IoapicEoi,
    /// `hlt` reached user space (no in-kernel local APIC to wait in).
    Hlt,
    /// `KVM_RUN` returned for a signal (EINTR) or an interrupt window.
    Interrupted,
    /// Anything else (shutdown, system event, errors).
    Other,
}

/// The counts of one vCPU or of a whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitCounts {
    counts: BTreeMap<(ExitReason, u64), u64>,
    /// Exits whose (reason, address) came after [`MAX_KEYS`] others.
    overflow: u64,
}

impl ExitCounts {
    /// Counts one exit.
    pub fn record(&mut self, reason: ExitReason, addr: u64) {
        self.bump((reason, addr), 1);
    }

    fn bump(&mut self, key: (ExitReason, u64), n: u64) {
        if let Some(count) = self.counts.get_mut(&key) {
            *count += n;
        } else if self.counts.len() < MAX_KEYS {
            self.counts.insert(key, n);
        } else {
            self.overflow += n;
        }
    }

    /// Counts the exit `exit` (before the run loop handles it).
    pub fn record_exit(&mut self, exit: &VcpuExit<'_>) {
        let (reason, addr) = match exit {
            VcpuExit::IoIn(port, _) => (ExitReason::PortIn, u64::from(*port)),
            VcpuExit::IoOut(port, _) => (ExitReason::PortOut, u64::from(*port)),
            VcpuExit::MmioRead(addr, _) => (ExitReason::MmioRead, *addr),
            VcpuExit::MmioWrite(addr, _) => (ExitReason::MmioWrite, *addr),
            VcpuExit::IoapicEoi(_) => (ExitReason::IoapicEoi, 0),
            VcpuExit::Hlt => (ExitReason::Hlt, 0),
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => (ExitReason::Interrupted, 0),
            _ => (ExitReason::Other, 0),
        };
        self.record(reason, addr);
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ExitCounts) {
        for (&key, &n) in &other.counts {
            self.bump(key, n);
        }
        self.overflow += other.overflow;
    }

    /// All exits counted.
    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.overflow
    }

    /// The count for one reason at one address.
    pub fn get(&self, reason: ExitReason, addr: u64) -> u64 {
        self.counts.get(&(reason, addr)).copied().unwrap_or(0)
    }

    /// The count for one reason, every address.
    pub fn of_reason(&self, reason: ExitReason) -> u64 {
        self.counts
            .iter()
            .filter(|((r, _), _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }
}

/// What the device at a port or MMIO address is, for the report.
pub fn place_name(reason: ExitReason, addr: u64) -> String {
    let in_range = |base: u16, len: u16| u64::from(base)..u64::from(base) + u64::from(len);
    match reason {
        ExitReason::PortIn | ExitReason::PortOut => {
            let uarts = [
                ("ttyS0", layout::SERIAL_CONSOLE_PORT),
                ("ttyS1", layout::SERIAL_STDOUT_PORT),
                ("ttyS2", layout::SERIAL_STATUS_PORT),
            ];
            for (name, base) in uarts {
                if in_range(base, layout::SERIAL_PORT_LEN).contains(&addr) {
                    return format!("{name}+{}", addr - u64::from(base));
                }
            }
            let known = match addr {
                0x60 | 0x64 => "i8042",
                0x61 => "PC speaker/NMI status",
                0x70 | 0x71 => "CMOS/RTC",
                0x80 => "POST code (I/O delay)",
                0x20 | 0x21 | 0xa0 | 0xa1 => "PIC",
                0x40..=0x43 => "PIT",
                0x2e8..=0x2ef => "ttyS3 (absent)",
                0xcf8..=0xcff => "PCI configuration",
                _ => "",
            };
            format!("port {addr:#x} {known}").trim_end().to_string()
        }
        ExitReason::MmioRead | ExitReason::MmioWrite => {
            let ioapic = u64::from(layout::IO_APIC_DEFAULT_PHYS_BASE);
            if (ioapic..ioapic + layout::IO_APIC_MMIO_LEN).contains(&addr) {
                return format!("I/O APIC +{:#x}", addr - ioapic);
            }
            for (i, slot) in layout::VIRTIO_MMIO_SLOTS.iter().enumerate() {
                if (slot.addr..slot.addr + slot.len).contains(&addr) {
                    return format!("virtio slot {i} +{:#x}", addr - slot.addr);
                }
            }
            format!("{addr:#x}")
        }
        _ => String::new(),
    }
}

impl fmt::Display for ExitCounts {
    /// One line per (reason, address), most frequent first, then the total.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows: Vec<_> = self.counts.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (&(reason, addr), n) in rows {
            writeln!(f, "{n:>9}  {reason:?} {}", place_name(reason, addr))?;
        }
        if self.overflow > 0 {
            writeln!(f, "{:>9}  other addresses", self.overflow)?;
        }
        write!(f, "{:>9}  in all", self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_reason_and_address() {
        let mut c = ExitCounts::default();
        let mut byte = [0u8; 1];
        for _ in 0..3 {
            c.record_exit(&VcpuExit::IoOut(0x3f8, b"x"));
        }
        c.record_exit(&VcpuExit::IoIn(0x64, &mut byte));
        c.record_exit(&VcpuExit::MmioWrite(0xd000_0050, &[1, 0, 0, 0]));
        c.record_exit(&VcpuExit::Hlt);
        c.record_exit(&VcpuExit::Shutdown);
        assert_eq!(c.get(ExitReason::PortOut, 0x3f8), 3);
        assert_eq!(c.get(ExitReason::PortIn, 0x64), 1);
        assert_eq!(c.of_reason(ExitReason::MmioWrite), 1);
        assert_eq!(c.of_reason(ExitReason::Other), 1);
        assert_eq!(c.total(), 7);
        let text = c.to_string();
        let first = text.lines().next().unwrap();
        assert!(first.contains("PortOut ttyS0+0"), "{text}");
        assert!(text.contains("i8042") && text.contains("virtio slot 0 +0x50"));
        assert!(text.ends_with("7  in all"), "{text}");
    }

    #[test]
    fn totals_add_up_across_vcpus_and_the_keys_are_bounded() {
        let mut a = ExitCounts::default();
        let mut b = ExitCounts::default();
        for port in 0..(MAX_KEYS as u64 + 10) {
            a.record(ExitReason::PortOut, port);
        }
        assert_eq!(a.total(), MAX_KEYS as u64 + 10);
        assert_eq!(a.counts.len(), MAX_KEYS);
        b.record(ExitReason::PortOut, 0);
        b.record(ExitReason::PortOut, 0);
        b.record(ExitReason::Hlt, 0);
        let mut sum = ExitCounts::default();
        sum.add(&a);
        sum.add(&b);
        assert_eq!(sum.total(), a.total() + b.total());
        assert_eq!(sum.get(ExitReason::PortOut, 0), 3);
        assert!(sum.to_string().contains("other addresses"));
    }
}
