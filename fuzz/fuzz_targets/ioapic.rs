//! The I/O APIC register model (`vmm::devices::ioapic::IoApic`) driven by
//! a byte string decoded into MMIO reads and writes of any width and
//! offset, pin pulses (in range or not), EOIs, and a message sink that
//! accepts, refuses or fails. No panic, and a masked pin or one waiting for
//! its EOI never sends a message.

#![no_main]

use std::io;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm::devices::ioapic::{IoApic, Msi, MsiSink, NUM_PINS};
use vmm::devices::BusDevice;

/// Redirection entry bits the check below needs.
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_MASKED: u64 = 1 << 16;

/// Counts messages; answers as `mode` says (0 accept, 1 refuse, 2 fail).
#[derive(Clone, Default)]
struct Sink {
    sent: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
}

impl Sink {
    fn answer<T>(&self, ok: T) -> io::Result<T> {
        match self.mode.load(Ordering::Relaxed) {
            2 => Err(io::Error::other("sink failure")),
            _ => Ok(ok),
        }
    }
}

impl MsiSink for Sink {
    fn send(&self, _msi: Msi) -> io::Result<bool> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let accepted = self.mode.load(Ordering::Relaxed) == 0;
        self.answer(accepted)
    }

    fn set_level_routes(&self, routes: &[(u8, Msi)]) -> io::Result<()> {
        assert!(routes.len() <= NUM_PINS);
        self.answer(())
    }
}

fuzz_target!(|data: &[u8]| {
    let sink = Sink::default();
    let mut ioapic = IoApic::new(data.first().copied().unwrap_or(0), Box::new(sink.clone()));
    let mut bytes = data.iter().copied().skip(1);
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 5 {
            0 => {
                let mut buf = [0u8; 8];
                let len = usize::from(op >> 3) % 8 + 1;
                ioapic.read(u64::from(arg), &mut buf[..len]);
            }
            1 => {
                let len = usize::from(op >> 3) % 8 + 1;
                let value: Vec<u8> = bytes.by_ref().take(len).collect();
                ioapic.write(u64::from(arg), &value);
            }
            2 => {
                let pin = usize::from(arg) % (NUM_PINS + 8);
                let entry = ioapic.redirection_entry(pin);
                let before = sink.sent.load(Ordering::Relaxed);
                let _ = ioapic.pulse(pin);
                let sent = sink.sent.load(Ordering::Relaxed) - before;
                match entry {
                    Some(e) if e & (RTE_MASKED | RTE_REMOTE_IRR) == 0 => assert_eq!(sent, 1),
                    _ => assert_eq!(sent, 0, "pin {pin}, entry {entry:x?}"),
                }
            }
            3 => ioapic.end_of_interrupt(arg),
            _ => sink.mode.store(arg % 3, Ordering::Relaxed),
        }
    }
});
