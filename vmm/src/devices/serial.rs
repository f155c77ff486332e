//! 16550A UARTs (vm-superio) on the bus: the console, stdout and status ports.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice, BusEvent};
use super::ioapic::IoApic;
use crate::status::{StatusLine, StatusParser};

/// How a UART raises its interrupt.
pub enum IrqTrigger {
    /// By signalling an irqfd: KVM's in-kernel irqchip delivers it.
    Fd(EventFd),
    /// By an edge on a pin of the VMM's I/O APIC (split irqchip).
    Pin(Arc<Mutex<IoApic>>, usize),
    /// By raising and lowering an ISA line of KVM's in-kernel irqchip
    /// (`KVM_IRQ_LINE`), in the calling thread.
    Line(Arc<kvm_ioctls::VmFd>, u32),
}

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        match self {
            IrqTrigger::Fd(fd) => fd.write(1),
            IrqTrigger::Line(vm, irq) => vm
                .set_irq_line(*irq, true)
                .and_then(|()| vm.set_irq_line(*irq, false))
                .map_err(|e| io::Error::from_raw_os_error(e.errno())),
            IrqTrigger::Pin(ioapic, pin) => {
                // A message that reaches no local APIC is the guest's doing
                // (its APICs are off or the entry names none): the
                // interrupt is lost, as on hardware, and the UART goes on.
                if let Err(e) = lock(ioapic).pulse(*pin) {
                    log::debug!("I/O APIC pin {pin}: interrupt not delivered: {e}");
                }
                Ok(())
            }
        }
    }
}

/// Where a UART's transmitted bytes go, and whether they mean anything to the VMM.
pub trait SerialOutput: Write + Send {
    /// An event completed by the bytes written so far, if any.
    fn take_event(&mut self) -> Option<BusEvent> {
        None
    }
}

impl SerialOutput for Box<dyn Write + Send> {}

/// The status channel's receiver: parses lines into [`BusEvent`]s.
#[derive(Debug, Default)]
pub struct StatusOutput {
    parser: StatusParser,
    pending: Option<BusEvent>,
}

impl Write for StatusOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &byte in buf {
            match self.parser.push(byte) {
                Some(StatusLine::Exit(code)) => self.pending = Some(BusEvent::Status(code)),
                Some(StatusLine::Event(name)) => self.pending = Some(BusEvent::Event(name)),
                Some(StatusLine::Other(line)) => log::debug!("status channel: {line}"),
                None => {}
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SerialOutput for StatusOutput {
    fn take_event(&mut self) -> Option<BusEvent> {
        self.pending.take()
    }
}

/// A 16550A on the bus.
pub struct SerialDevice<W: SerialOutput> {
    serial: Serial<IrqTrigger, NoEvents, W>,
}

impl<W: SerialOutput> SerialDevice<W> {
    /// A UART whose interrupt is `irq` and whose output goes to `out`.
    pub fn new(irq: IrqTrigger, out: W) -> Self {
        Self {
            serial: Serial::new(irq, out),
        }
    }

    /// Room left in the receive FIFO.
    pub fn rx_room(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues bytes for the guest to receive; returns how many fit.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        if bytes.is_empty() || room == 0 {
            return 0;
        }
        // An error here is the interrupt's, raised after the bytes were
        // queued: count what the FIFO took, so none is sent twice.
        if let Err(e) = self.serial.enqueue_raw_bytes(bytes) {
            log::debug!("serial receive: {e:?}");
        }
        room - self.serial.fifo_capacity()
    }

    /// The interrupt-related registers, for a guest that hangs. Reading IIR
    /// acknowledges what it shows, so this is for a VM that is over.
    pub fn describe(&mut self) -> String {
        let ier = self.serial.read(1);
        let lsr = self.serial.read(5);
        let iir = self.serial.read(2);
        format!("IER {ier:#04x} IIR {iir:#04x} LSR {lsr:#04x}")
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.serial.writer_mut().flush()
    }
}

impl<W: SerialOutput> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.serial.read(o));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return None;
        };
        // An output error (say, a closed stdout) must not stop the guest:
        // the byte is dropped, as a UART with nothing attached would.
        if let Err(e) = self.serial.write(offset, value) {
            log::debug!("serial write at offset {offset}: {e:?}");
        }
        self.serial.writer_mut().take_event()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn evt() -> IrqTrigger {
        IrqTrigger::Fd(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn transmitted_bytes_reach_the_writer_in_order() {
        let out = Shared::default();
        let mut dev = SerialDevice::new(evt(), Box::new(out.clone()) as Box<dyn Write + Send>);
        for b in b"hi\x00\xff" {
            assert_eq!(dev.write(0, &[*b]), None);
        }
        assert_eq!(*out.0.lock().unwrap(), b"hi\x00\xff");
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn status_port_reports_events_and_status() {
        let mut dev = SerialDevice::new(evt(), StatusOutput::default());
        let mut events = Vec::new();
        for b in b"@init\nnoise\n42\n" {
            events.extend(dev.write(0, &[*b]));
        }
        assert_eq!(
            events,
            vec![BusEvent::Event("init".into()), BusEvent::Status(42)]
        );
    }

    #[test]
    fn received_bytes_are_counted_even_when_the_interrupt_fails() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // A full eventfd counter makes the next write fail (EAGAIN).
        irq.write(u64::MAX - 1).unwrap();
        let mut dev = SerialDevice::new(
            IrqTrigger::Fd(irq.try_clone().unwrap()),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        dev.write(1, &[1]);
        assert_eq!(dev.receive(b"abc"), 3);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'a']);
    }

    #[test]
    fn received_bytes_respect_the_fifo_and_raise_the_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            IrqTrigger::Fd(irq.try_clone().unwrap()),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        // Enable the received-data interrupt (IER bit 0).
        dev.write(1, &[1]);
        let room = dev.rx_room();
        let big = vec![b'x'; room + 10];
        assert_eq!(dev.receive(&big), room);
        assert_eq!(dev.receive(b"y"), 0);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'x']);
        assert_eq!(dev.rx_room(), 1);
    }
}
