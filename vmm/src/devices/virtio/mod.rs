//! virtio devices: the [`VirtioDevice`] trait each device model implements,
//! the interrupt it raises, and the virtio-mmio transport ([`mmio`]) that
//! puts a device behind the MMIO bus.
//!
//! The split follows Cloud Hypervisor's: the transport owns the register
//! state (features, the queues' sizes and addresses, the status) and hands
//! the device its live queues only when the driver sets DRIVER_OK, after it
//! has checked them against guest memory. A device never sees a queue the
//! driver could still change. Queues are rust-vmm's `virtio-queue`.

pub mod console;
pub mod mmio;
pub mod p9;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_superio::Trigger;

use crate::memory::GuestMemory;

pub use mmio::MmioTransport;

/// Errors of the virtio layer: a device that declares an impossible queue,
/// or an activation the driver's queue set-up makes impossible.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A device declares a queue size virtio does not allow.
    #[error(
        "virtio device type {device_type}: queue {index} has a maximum size of {size}, \
         but a virtqueue holds a power of two between 1 and 32768 entries: fix the device model"
    )]
    QueueMaxSize {
        /// The device's virtio type.
        device_type: u32,
        /// The queue.
        index: usize,
        /// The size it declares.
        size: u16,
    },
    /// The driver set a queue size virtio or the device does not allow.
    #[error(
        "virtio queue {index}: the driver set size {size}, but the queue takes a power of \
         two between 1 and {max}: the guest's driver is broken or hostile"
    )]
    QueueSize {
        /// The queue.
        index: usize,
        /// The size the driver wrote to QueueNum.
        size: u32,
        /// QueueNumMax.
        max: u16,
    },
    /// The driver placed one of a queue's areas where virtio-queue refuses it.
    #[error(
        "virtio queue {index}: the driver's {area} at {addr:#x} (for {size} entries) \
         is not aligned as virtio requires: the guest's driver is broken or hostile"
    )]
    QueueMisaligned {
        /// The queue.
        index: usize,
        /// "descriptor table", "driver area" or "device area".
        area: &'static str,
        /// The address the driver wrote.
        addr: u64,
        /// The queue size it set.
        size: u16,
    },
    /// One of a queue's areas lies outside guest memory.
    #[error(
        "virtio queue {index}: the driver's {area} at {addr:#x} ({len} bytes for {size} \
         entries) lies outside guest memory: the guest's driver is broken or hostile"
    )]
    QueueOutsideMemory {
        /// The queue.
        index: usize,
        /// "descriptor table", "driver area" or "device area".
        area: &'static str,
        /// The address the driver wrote.
        addr: u64,
        /// The area's length in bytes.
        len: u64,
        /// The queue size it set.
        size: u16,
    },
    /// The device needs a queue the driver did not make ready.
    #[error(
        "virtio device type {device_type}: queue {index} is not ready at DRIVER_OK, \
         and the device needs it: the guest's driver did not set it up"
    )]
    QueueNotReady {
        /// The device's virtio type.
        device_type: u32,
        /// The queue.
        index: usize,
    },
    /// One of a queue's areas starts in the first page of guest memory.
    #[error(
        "virtio queue {index}: the driver's {area} at {addr:#x} is in the first page of \
         guest memory, where no x86 Linux puts a queue (0 is the register's value until \
         the driver writes it): the guest's driver did not set the queue up"
    )]
    QueueInFirstPage {
        /// The queue.
        index: usize,
        /// "descriptor table", "driver area" or "device area".
        area: &'static str,
        /// The address the driver wrote (or left).
        addr: u64,
    },
    /// The device could not start (its worker, its host files).
    #[error("virtio device type {device_type} could not start: {source}")]
    Activate {
        /// The device's virtio type.
        device_type: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What raises a virtio-mmio device's interrupt: one edge per call. The
/// UARTs' [`IrqTrigger`](crate::devices::serial::IrqTrigger) is one (an
/// edge on an I/O APIC pin, an irqfd, or a pulse on a `KVM_IRQ_LINE`).
pub type InterruptLine = dyn Trigger<E = io::Error> + Send + Sync;

/// A device's interrupt: the transport's InterruptStatus register and the
/// line behind it. Clones share both, so a device's worker thread can
/// signal while the vCPU thread reads and acknowledges.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Arc<InterruptLine>,
}

impl Interrupt {
    /// An interrupt with no cause pending, raised through `line`.
    pub fn new(line: Arc<InterruptLine>) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            line,
        }
    }

    /// Tells the driver the device put buffers in a used ring.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver the device's configuration (or its status, for
    /// DEVICE_NEEDS_RESET) changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// The InterruptStatus register: which causes are pending.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The bit is set before the edge, so a driver woken by it reads it.
    fn raise(&self, cause: u32) -> io::Result<()> {
        self.status.fetch_or(cause, Ordering::AcqRel);
        self.line.trigger()
    }

    /// InterruptACK: clears the causes the driver has handled.
    fn acknowledge(&self, causes: u32) {
        self.status.fetch_and(!causes, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, where the queues and their buffers live.
    pub mem: GuestMemory,
    /// The device's interrupt.
    pub interrupt: Interrupt,
    /// One queue per [`VirtioDevice::queue_max_sizes`] entry, in order. A
    /// ready queue's size and areas have been checked against guest
    /// memory; a queue the driver left unready is not ready here either.
    pub queues: Vec<Queue>,
    /// The features the driver accepted (a subset of the device's, with
    /// `VIRTIO_F_VERSION_1`).
    pub features: u64,
}

/// A virtio device model, without its transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (`virtio_bindings::virtio_ids`): 3 for a
    /// console, 9 for 9p.
    fn device_type(&self) -> u32;

    /// The maximum size of each queue, one entry per queue; each a power
    /// of two, at most 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device-specific features it offers (the transport adds
    /// `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;

    /// Fills `data` from the configuration space at `offset`; `data`
    /// arrives zeroed, and bytes past the space stay zero
    /// ([`read_config_from`] does this for a byte array).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver's write to the configuration space at `offset`; bytes past
    /// the space, or fields the driver may not write, are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK: start using the queues. An error leaves
    /// the device inactive and tells the driver it needs a reset.
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;

    /// The driver notified queue `index` (always a ready queue of an
    /// activated device). Called on a vCPU thread: hand the work to the
    /// device's worker rather than doing it here.
    fn queue_notify(&mut self, index: u16);

    /// The driver reset the device: drop the queues and stop using guest
    /// memory, so it can be activated again.
    fn reset(&mut self);
}

/// Copies the part of `config` that `offset..offset + data.len()` covers
/// into `data`; the rest of `data` is left as it is. Any offset is safe.
pub fn read_config_from(config: &[u8], offset: u64, data: &mut [u8]) {
    let Some(start) = usize::try_from(offset).ok().filter(|&s| s < config.len()) else {
        return;
    };
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// Copies `data` into the part of `config` that `offset..` covers; bytes
/// past the end are dropped. Any offset is safe.
pub fn write_config_into(config: &mut [u8], offset: u64, data: &[u8]) {
    let Some(start) = usize::try_from(offset).ok().filter(|&s| s < config.len()) else {
        return;
    };
    let n = data.len().min(config.len() - start);
    config[start..start + n].copy_from_slice(&data[..n]);
}

/// What the virtio tests share: an interrupt line that counts, and a
/// seeded generator for their random drivers.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_superio::Trigger;

    /// An interrupt line that counts its edges.
    #[derive(Default)]
    pub(crate) struct Counter(pub(crate) AtomicUsize);

    impl Counter {
        /// The edges so far.
        pub(crate) fn edges(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Trigger for Counter {
        type E = io::Error;
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// xorshift64: the same sequence for the same seed, run after run.
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::Counter;
    use super::*;
    use crate::devices::serial::IrqTrigger;

    #[test]
    fn the_uarts_irq_trigger_is_an_interrupt_line() {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let line: Arc<InterruptLine> = Arc::new(IrqTrigger::Fd(fd.try_clone().unwrap()));
        let irq = Interrupt::new(line);
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(fd.read().unwrap(), 2);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn causes_are_shared_by_clones_and_acknowledged_bit_by_bit() {
        let counter = Arc::new(Counter::default());
        let irq = Interrupt::new(counter.clone());
        let worker = irq.clone();
        worker.signal_used_queue().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.signal_config_change().unwrap();
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(worker.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.clear();
        assert_eq!(worker.status(), 0);
        assert_eq!(counter.edges(), 2);
    }

    #[test]
    fn config_helpers_take_any_offset() {
        let mut config = [1u8, 2, 3, 4];
        let mut data = [0u8; 4];
        read_config_from(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        let mut data = [9u8; 2];
        read_config_from(&config, 4, &mut data);
        read_config_from(&config, u64::MAX, &mut data);
        assert_eq!(data, [9, 9]);
        write_config_into(&mut config, 3, &[7, 8, 9]);
        write_config_into(&mut config, u64::MAX, &[0]);
        assert_eq!(config, [1, 2, 3, 7]);
    }
}
