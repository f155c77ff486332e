//! The 16550A model (`vmm::devices::serial::SerialDevice`) driven by a
//! byte string decoded into register reads and writes at any offset and
//! bytes pushed into its receive FIFO, with its interrupt wired to an I/O
//! APIC pin as with the split irqchip, and its output going to a writer
//! that may fail or to the status-channel parser. No panic, and the FIFO
//! never takes more than it has room for.

#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmm::devices::ioapic::{IoApic, Msi, MsiSink};
use vmm::devices::serial::{IrqTrigger, SerialDevice, SerialOutput, StatusOutput};
use vmm::devices::BusDevice;

/// Takes every message.
struct Accept;

impl MsiSink for Accept {
    fn send(&self, _msi: Msi) -> io::Result<bool> {
        Ok(true)
    }

    fn set_level_routes(&self, _routes: &[(u8, Msi)]) -> io::Result<()> {
        Ok(())
    }
}

/// Counts bytes; fails while `failing` is set.
#[derive(Clone, Default)]
struct Output {
    written: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(io::Error::other("output failure"));
        }
        self.written.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn drive<W: SerialOutput>(uart: &mut SerialDevice<W>, ops: &[u8], output: &Output) {
    let mut bytes = ops.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 5 {
            0 => {
                let mut value = [0u8; 4];
                let len = usize::from(op >> 3) % 4 + 1;
                uart.read(u64::from(arg % 16), &mut value[..len]);
            }
            1 => {
                let value = bytes.next().unwrap_or(0);
                uart.write(u64::from(arg % 16), &[value]);
            }
            2 => {
                let input: Vec<u8> = bytes.by_ref().take(usize::from(arg)).collect();
                let room = uart.rx_room();
                let taken = uart.receive(&input);
                assert!(
                    taken <= room && taken <= input.len(),
                    "{taken} of {}",
                    input.len()
                );
                assert_eq!(uart.rx_room(), room - taken);
            }
            3 => output.failing.store(arg & 1 == 1, Ordering::Relaxed),
            _ => {
                let _ = uart.flush();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, ops)) = data.split_first() else {
        return;
    };
    let ioapic = Arc::new(Mutex::new(IoApic::new(0, Box::new(Accept))));
    let irq = IrqTrigger::Pin(ioapic, usize::from(setup >> 1) % 24);
    let output = Output::default();
    if setup & 1 == 0 {
        let writer: Box<dyn Write + Send> = Box::new(output.clone());
        drive(&mut SerialDevice::new(irq, writer), ops, &output);
    } else {
        drive(
            &mut SerialDevice::new(irq, StatusOutput::default()),
            ops,
            &output,
        );
    }
});
