//! virtio devices: the [`VirtioDevice`] trait each device model implements,
//! the interrupt it raises, and the virtio-mmio transport ([`mmio`]) that
//! puts a device behind the MMIO bus.
//!
//! The split follows Cloud Hypervisor's: the transport owns the register
//! state (features, the queues' sizes and addresses, the status) and hands
//! the device its live queues only when the driver sets DRIVER_OK, after it
//! has checked them against guest memory. A device never sees a queue the
//! driver could still change. Queues are rust-vmm's `virtio-queue`; a
//! device reads each descriptor chain through [`pop_chain`], not through
//! `virtio-queue`'s own chain iterator, which follows indirect tables even
//! where they were not negotiated.

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
pub mod p9;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, WriteVolatile};
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
    /// A device offers a feature of the transport that microrun does not
    /// implement.
    #[error(
        "virtio device type {device_type} offers feature bit {bit}, which the virtio-mmio \
         transport does not implement (descriptor chains are split and direct only): \
         fix the device model"
    )]
    UnsupportedFeature {
        /// The device's virtio type.
        device_type: u32,
        /// The feature bit.
        bit: u32,
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

/// Whether the driver wants an interrupt for the chains just put in
/// `queue`'s used ring: with `VIRTIO_F_EVENT_IDX`, what its used event
/// says (virtio-queue's `needs_notification`); without it, unless the
/// avail ring's flags hold `VRING_AVAIL_F_NO_INTERRUPT` (virtio 1.2
/// §2.7.10), which Linux sets while it polls a ring (NAPI) and which
/// virtio-queue does not read.
pub fn interrupt_wanted(queue: &mut Queue, mem: &GuestMemory) -> bool {
    // Also orders the used ring's writes before the flags' read.
    let wanted = queue.needs_notification(mem).unwrap_or(true);
    if queue.event_idx_enabled() {
        return wanted;
    }
    // The flags are the avail ring's first field; DRIVER_OK checked the
    // ring lies in guest memory (unreadable: interrupt, to be safe).
    let flags: u16 = mem.read_obj(GuestAddress(queue.avail_ring())).unwrap_or(0);
    wanted && flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
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

    /// Tells the driver the device put buffers in `queue`'s used ring,
    /// unless it asked not to be told ([`interrupt_wanted`]).
    pub fn notify_used(&self, queue: &mut Queue, mem: &GuestMemory) -> io::Result<()> {
        if interrupt_wanted(queue, mem) {
            self.signal_used_queue()?;
        }
        Ok(())
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
    /// `VIRTIO_F_VERSION_1`). Never `VIRTIO_RING_F_INDIRECT_DESC` or
    /// `VIRTIO_F_RING_PACKED`: chains are read with [`pop_chain`], which
    /// takes neither, and [`MmioTransport::new`] refuses such a device.
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

/// Why a descriptor chain is returned unused. The driver broke a rule of
/// virtio 1.2 §2.7.5 (The Virtqueue Descriptor Table); the device carries
/// on with the next chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor refers to an indirect table. No device offers
    /// `VIRTIO_RING_F_INDIRECT_DESC` ([`MmioTransport::new`] refuses one
    /// that does), so the driver may not use them (§2.7.5.3.1); following
    /// the table anyway would let one chain cost 65,535 descriptors.
    #[error(
        "descriptor {index} refers to an indirect table, but VIRTIO_RING_F_INDIRECT_DESC \
         was not negotiated"
    )]
    Indirect {
        /// The descriptor's index in the table.
        index: u16,
    },
    /// A head or `next` index past the end of the table.
    #[error("descriptor index {index} is past the table of {size}")]
    OutOfTable {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// More descriptors than the queue holds: the chain loops (§2.7.5.2).
    #[error("the chain goes on past {size} descriptors, the queue size: it loops")]
    Loop {
        /// The queue size.
        size: u16,
    },
    /// A buffer outside guest memory.
    #[error("descriptor {index}'s buffer at {addr:#x} ({len} bytes) is not in guest memory")]
    OutsideMemory {
        /// The descriptor's index in the table.
        index: u16,
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// More than 4 GiB in all (§2.7.5.2).
    #[error("the chain's buffers add up to more than 4 GiB")]
    TooLong,
    /// The descriptor table could not be read (it was checked at
    /// DRIVER_OK, so this is a bug).
    #[error("descriptor {index} could not be read")]
    Unreadable {
        /// The descriptor's index in the table.
        index: u16,
    },
}

/// One descriptor chain the driver made available: each of its
/// descriptors read once from the descriptor table and checked, so what
/// the device then reads or writes cannot change under it (the driver may
/// rewrite the table from another vCPU meanwhile).
#[derive(Debug)]
pub struct Chain {
    descriptors: Vec<Descriptor>,
}

impl Chain {
    /// The chain's device-readable buffers, as one stream.
    pub fn reader<'a>(&self, mem: &'a GuestMemory) -> ChainReader<'a> {
        ChainReader(Buffers::new(mem, &self.descriptors, false))
    }

    /// The chain's device-writable buffers, as one stream.
    pub fn writer<'a>(&self, mem: &'a GuestMemory) -> ChainWriter<'a> {
        ChainWriter(Buffers::new(mem, &self.descriptors, true))
    }
}

#[cfg(test)]
thread_local! {
    /// Descriptors [`pop_chain`] read on this thread: how tests measure work.
    pub(crate) static DESCRIPTORS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The next chain the driver made available in `queue`: its head index
/// (for the used ring) and its buffers, or why it is unusable; `None`
/// when there is none (or the queue is unusable: an avail index more
/// than the queue size ahead). Reads at most the queue size of
/// descriptors, and stops at the first that refers to an indirect table.
pub fn pop_chain(queue: &mut Queue, mem: &GuestMemory) -> Option<(u16, Result<Chain, ChainError>)> {
    // Only the head index is taken from virtio-queue's chain: iterating it
    // would follow an indirect table.
    let head = queue.pop_descriptor_chain(mem)?.head_index();
    let table = GuestAddress(queue.desc_table());
    Some((head, read_chain(mem, table, queue.size(), head)))
}

fn read_chain(
    mem: &GuestMemory,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Chain, ChainError> {
    let mut descriptors = Vec::new();
    let mut total = 0u32;
    let mut index = head;
    loop {
        if index >= size {
            return Err(ChainError::OutOfTable { index, size });
        }
        if descriptors.len() == usize::from(size) {
            return Err(ChainError::Loop { size });
        }
        // In the table, which DRIVER_OK checked lies in guest memory.
        let at = table.0 + 16 * u64::from(index);
        #[cfg(test)]
        DESCRIPTORS_READ.with(|n| n.set(n.get() + 1));
        let desc: Descriptor = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| ChainError::Unreadable { index })?;
        if desc.refers_to_indirect_table() {
            return Err(ChainError::Indirect { index });
        }
        total = total.checked_add(desc.len()).ok_or(ChainError::TooLong)?;
        let inside = desc.addr().0.checked_add(desc.len().into()).is_some()
            && mem.check_range(desc.addr(), desc.len() as usize);
        if !inside {
            return Err(ChainError::OutsideMemory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        descriptors.push(desc);
        if !desc.has_next() {
            return Ok(Chain { descriptors });
        }
        index = desc.next();
    }
}

/// One direction of a chain's buffers, used front to back.
struct Buffers<'a> {
    mem: &'a GuestMemory,
    left: VecDeque<(GuestAddress, usize)>,
    used: usize,
}

impl<'a> Buffers<'a> {
    fn new(mem: &'a GuestMemory, descriptors: &[Descriptor], writable: bool) -> Self {
        let left = descriptors
            .iter()
            .filter(|d| d.is_write_only() == writable && d.len() != 0)
            .map(|d| (d.addr(), d.len() as usize))
            .collect();
        Self { mem, left, used: 0 }
    }

    fn available(&self) -> usize {
        self.left.iter().map(|&(_, len)| len).sum()
    }

    /// Moves up to `len` bytes, front first: `copy(offset, n, addr)`
    /// moves `n` bytes between the caller's buffer at `offset` and guest
    /// memory at `addr`.
    fn transfer(
        &mut self,
        len: usize,
        mut copy: impl FnMut(usize, usize, GuestAddress) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> io::Result<usize> {
        let mut done = 0;
        while done < len {
            let Some(front) = self.left.front_mut() else {
                break;
            };
            let n = front.1.min(len - done);
            copy(done, n, front.0).map_err(io::Error::other)?;
            done += n;
            // In guest memory: `read_chain` checked the whole buffer.
            front.0 = GuestAddress(front.0 .0 + n as u64);
            front.1 -= n;
            if front.1 == 0 {
                self.left.pop_front();
            }
        }
        self.used += done;
        Ok(done)
    }
}

/// The readable part of a [`Chain`].
pub struct ChainReader<'a>(Buffers<'a>);

impl ChainReader<'_> {
    /// Bytes left to read.
    pub fn available_bytes(&self) -> usize {
        self.0.available()
    }

    /// Writes the next `len` bytes to `dst` straight from guest memory
    /// (a short write is an error), and returns how many bytes there
    /// were (fewer than `len` when the chain ends first).
    pub fn write_to(&mut self, dst: &mut impl WriteVolatile, len: usize) -> io::Result<usize> {
        let mem = self.0.mem;
        self.0
            .transfer(len, |_, n, addr| mem.write_all_volatile_to(addr, dst, n))
    }
}

impl Read for ChainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mem = self.0.mem;
        self.0.transfer(buf.len(), |at, n, addr| {
            mem.read_slice(&mut buf[at..at + n], addr)
        })
    }
}

/// The writable part of a [`Chain`].
pub struct ChainWriter<'a>(Buffers<'a>);

impl ChainWriter<'_> {
    /// Room left.
    pub fn available_bytes(&self) -> usize {
        self.0.available()
    }

    /// Bytes written so far: the length for the used ring.
    pub fn bytes_written(&self) -> usize {
        self.0.used
    }

    /// Fills the next `len` bytes from `src` straight into guest memory
    /// (a short read is an error), and returns how many bytes there were
    /// room for (fewer than `len` when the chain ends first).
    pub fn read_from(&mut self, src: &mut impl ReadVolatile, len: usize) -> io::Result<usize> {
        let mem = self.0.mem;
        self.0
            .transfer(len, |_, n, addr| mem.read_exact_volatile_from(addr, src, n))
    }

    /// Passes over the next `len` bytes, leaving them as they are (they
    /// count as written).
    pub fn skip(&mut self, len: usize) -> usize {
        // The copy does nothing, so it cannot fail.
        self.0.transfer(len, |_, _, _| Ok(())).unwrap_or(0)
    }
}

impl Write for ChainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mem = self.0.mem;
        self.0.transfer(buf.len(), |at, n, addr| {
            mem.write_slice(&buf[at..at + n], addr)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

/// What the virtio tests share: an interrupt line that counts, a seeded
/// generator for their random drivers, and a minimal driver that lays out
/// split rings in guest memory as Linux's would.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Address, Bytes, GuestAddress};
    use vm_superio::Trigger;

    use crate::memory::GuestMemory;

    /// Each queue's rings live in pages of their own from here.
    pub(crate) const RINGS: u64 = 0x1000;
    /// The driver's buffers from here on.
    pub(crate) const BUFFERS: u64 = 0x4_0000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    /// Bytes between two queues' rings, for queues of `size` entries.
    fn ring_stride(size: u16) -> u64 {
        let size = u64::from(size);
        (16 * size + (6 + 2 * size).next_multiple_of(512) + 6 + 8 * size).next_multiple_of(0x1000)
    }

    /// Queue `q`'s descriptor table.
    pub(crate) fn desc_table(q: usize, size: u16) -> u64 {
        RINGS + q as u64 * ring_stride(size)
    }

    /// Queue `q`'s available ring.
    pub(crate) fn avail_ring(q: usize, size: u16) -> u64 {
        desc_table(q, size) + 16 * u64::from(size)
    }

    /// Queue `q`'s used ring.
    pub(crate) fn used_ring(q: usize, size: u16) -> u64 {
        avail_ring(q, size) + (6 + 2 * u64::from(size)).next_multiple_of(512)
    }

    /// A minimal split-ring driver: descriptors, avail and used rings of
    /// every queue in guest memory, buffers handed out front to back.
    pub(crate) struct Driver {
        pub(crate) mem: GuestMemory,
        size: u16,
        pub(crate) next_desc: Vec<u16>,
        pub(crate) avail_idx: Vec<u16>,
        used_seen: Vec<u16>,
        next_buf: u64,
    }

    impl Driver {
        /// `queues` queues of `size` entries in `mem_size` bytes of memory.
        pub(crate) fn new(mem_size: u64, queues: usize, size: u16) -> Self {
            assert!(
                desc_table(queues, size) <= BUFFERS,
                "the rings overlap the buffers"
            );
            Self {
                mem: crate::memory::create_guest_memory(mem_size).unwrap(),
                size,
                next_desc: vec![0; queues],
                avail_idx: vec![0; queues],
                used_seen: vec![0; queues],
                next_buf: BUFFERS,
            }
        }

        /// The queues, ready, as the transport would hand them over.
        pub(crate) fn queues(&self) -> Vec<Queue> {
            (0..self.next_desc.len())
                .map(|q| {
                    let mut queue = Queue::new(self.size).unwrap();
                    queue.set_size(self.size);
                    queue.set_desc_table_address(Some(desc_table(q, self.size) as u32), Some(0));
                    queue.set_avail_ring_address(Some(avail_ring(q, self.size) as u32), Some(0));
                    queue.set_used_ring_address(Some(used_ring(q, self.size) as u32), Some(0));
                    queue.set_ready(true);
                    queue
                })
                .collect()
        }

        /// A buffer of `len` bytes that starts with `data`.
        pub(crate) fn alloc(&mut self, data: &[u8], len: u32) -> u64 {
            let addr = self.next_buf;
            self.next_buf += u64::from(len).next_multiple_of(16);
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
            addr
        }

        /// Writes descriptor `index` of queue `q` as given: (address,
        /// length, flags, next).
        pub(crate) fn write_desc(&self, q: usize, index: u16, desc: (u64, u32, u16, u16)) {
            let (addr, len, flags, next) = desc;
            let at = GuestAddress(desc_table(q, self.size) + 16 * u64::from(index));
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
        }

        /// Makes the chain at `head` available on queue `q`.
        pub(crate) fn publish(&mut self, q: usize, head: u16) {
            let size = self.size;
            let slot = u64::from(self.avail_idx[q] % size);
            self.mem
                .write_obj(head, GuestAddress(avail_ring(q, size) + 4 + 2 * slot))
                .unwrap();
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx[q], GuestAddress(avail_ring(q, size) + 2))
                .unwrap();
        }

        /// Makes a chain of `(addr, len, flags)` available on queue `q`;
        /// returns its head.
        pub(crate) fn add_raw(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
            let size = self.size;
            let head = self.next_desc[q];
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = (head + i as u16) % size;
                let next = (index + 1) % size;
                let flags = if i + 1 < descs.len() {
                    flags | NEXT
                } else {
                    flags
                };
                self.write_desc(q, index, (addr, len, flags, next));
            }
            self.next_desc[q] = (head + descs.len() as u16) % size;
            self.publish(q, head);
            head
        }

        /// Makes `data` available on queue `q`, in one readable buffer.
        pub(crate) fn send(&mut self, q: usize, data: &[u8]) {
            let addr = self.alloc(data, data.len() as u32);
            self.add_raw(q, &[(addr, data.len() as u32, 0)]);
        }

        /// Makes a writable buffer of `len` zeroes available on queue `q`.
        pub(crate) fn post_buffer(&mut self, q: usize, len: u32) -> u64 {
            let addr = self.alloc(&vec![0; len as usize], len);
            self.add_raw(q, &[(addr, len, WRITE)]);
            addr
        }

        /// The used entries of queue `q` since the last call: (descriptor
        /// id, length).
        pub(crate) fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
            let ring = used_ring(q, self.size);
            let idx: u16 = self.mem.read_obj(GuestAddress(ring + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen[q] != idx {
                let slot = u64::from(self.used_seen[q] % self.size);
                let at = GuestAddress(ring + 4 + 8 * slot);
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                out.push((id, len));
                self.used_seen[q] = self.used_seen[q].wrapping_add(1);
            }
            out
        }
    }

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
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const SIZE: u16 = 16;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    /// Two contiguous regions, then one past a hole: [0, 2 MiB), [3, 4 MiB).
    fn memory() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
            (GuestAddress(0x30_0000), 0x10_0000),
        ])
        .unwrap()
    }

    /// A ready queue of `SIZE` entries whose table holds `descs` (index,
    /// address, length, flags, next) and whose driver made `heads`
    /// available.
    fn queue(mem: &GuestMemory, descs: &[(u16, u64, u32, u16, u16)], heads: &[u16]) -> Queue {
        for &(index, addr, len, flags, next) in descs {
            let at = GuestAddress(TABLE + 16 * u64::from(index));
            mem.write_obj(Descriptor::new(addr, len, flags, next), at)
                .unwrap();
        }
        for (slot, &head) in heads.iter().enumerate() {
            let at = GuestAddress(AVAIL + 4 + 2 * slot as u64);
            mem.write_obj(head, at).unwrap();
        }
        mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
            .unwrap();
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_desc_table_address(Some(TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        queue
    }

    /// A popped chain: its head, and its length or why it was refused.
    type Popped = (u16, Result<usize, ChainError>);

    /// Pops every chain, and counts the descriptors read to get them.
    fn pop_all(queue: &mut Queue, mem: &GuestMemory) -> (Vec<Popped>, usize) {
        let before = DESCRIPTORS_READ.with(|n| n.get());
        let mut chains = Vec::new();
        while let Some((head, chain)) = pop_chain(queue, mem) {
            chains.push((head, chain.map(|c| c.descriptors.len())));
        }
        (chains, DESCRIPTORS_READ.with(|n| n.get()) - before)
    }

    #[test]
    fn a_chain_is_read_once_into_its_readable_and_writable_parts() {
        let mem = memory();
        mem.write_slice(b"hello", GuestAddress(0x4000)).unwrap();
        // Across the two contiguous regions.
        mem.write_slice(b" world", GuestAddress(0xf_fffd)).unwrap();
        let descs = [
            (3, 0x4000, 5, NEXT, 7),
            (7, 0xf_fffd, 6, NEXT, 0),
            (0, 0x5000, 0, NEXT | WRITE, 1),
            (1, 0x30_0000, 8, WRITE, 0),
        ];
        let mut q = queue(&mem, &descs, &[3]);
        let (head, chain) = pop_chain(&mut q, &mem).unwrap();
        let chain = chain.unwrap();
        assert_eq!((head, chain.descriptors.len()), (3, 4));
        // The driver rewrites the table: the chain was read already.
        mem.write_obj(
            Descriptor::new(0x30_0000, 4096, INDIRECT, 0),
            GuestAddress(TABLE + 3 * 16),
        )
        .unwrap();
        let mut reader = chain.reader(&mem);
        assert_eq!(reader.available_bytes(), 11);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello world");
        let mut writer = chain.writer(&mem);
        assert_eq!(writer.available_bytes(), 8);
        assert_eq!(writer.write(b"0123456789").unwrap(), 8);
        assert_eq!(writer.write(b"more").unwrap(), 0);
        assert_eq!((writer.bytes_written(), writer.available_bytes()), (8, 0));
        let mut got = [0; 8];
        mem.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(&got, b"01234567");
        assert!(pop_chain(&mut q, &mem).is_none());
    }

    #[test]
    fn indirect_descriptors_are_refused_where_they_stand() {
        let mem = memory();
        // An indirect table of 65,535 descriptors, one chain through them
        // all, that virtio-queue's own iterator would follow for each head.
        let table = 0x10_0000u64;
        for i in 0..u16::MAX {
            let flags = if i + 1 < u16::MAX { NEXT } else { 0 };
            let at = GuestAddress(table + 16 * u64::from(i));
            mem.write_obj(Descriptor::new(0x4000, 1, flags, i + 1), at)
                .unwrap();
        }
        let descs: Vec<_> = (0..SIZE)
            .map(|i| (i, table, 16 * u32::from(u16::MAX), INDIRECT, 0))
            .collect();
        let heads: Vec<u16> = (0..SIZE).collect();
        let mut q = queue(&mem, &descs, &heads);
        let (chains, read) = pop_all(&mut q, &mem);
        let want: Vec<_> = (0..SIZE)
            .map(|index| (index, Err(ChainError::Indirect { index })))
            .collect();
        assert_eq!(chains, want);
        // One descriptor read per chain: its first.
        assert_eq!(read, usize::from(SIZE));

        // After plain descriptors, with NEXT or WRITE, the chain stops there.
        let descs = [
            (0, 0x4000, 4, NEXT, 1),
            (1, 0x4000, 4, NEXT, 2),
            (2, table, 16, INDIRECT | NEXT | WRITE, 3),
            (3, 0x4000, 4, 0, 0),
        ];
        let mut q = queue(&mem, &descs, &[0]);
        let (chains, read) = pop_all(&mut q, &mem);
        assert_eq!(chains, [(0, Err(ChainError::Indirect { index: 2 }))]);
        assert_eq!(read, 3);
    }

    #[test]
    fn broken_chains_are_refused_within_the_queue_size() {
        let mem = memory();
        let descs = [
            (0, 0x4000, 4, NEXT, SIZE),  // next past the table
            (1, 0x4000, 4, NEXT, 1),     // loops on itself
            (2, 0x20_0000 - 4, 8, 0, 0), // runs into the hole
            (3, u64::MAX - 1, 4, 0, 0),  // wraps
            (4, 0x40_0000, 1, WRITE, 0), // past the end
            (5, u64::MAX, 0, NEXT, 6),   // empty: anywhere is fine
            (6, 0x4000, 4, 0, 0),
        ];
        let mut q = queue(&mem, &descs, &[SIZE + 3, 0, 1, 2, 3, 4, 5]);
        let (chains, read) = pop_all(&mut q, &mem);
        assert_eq!(
            chains,
            [
                (
                    SIZE + 3,
                    Err(ChainError::OutOfTable {
                        index: SIZE + 3,
                        size: SIZE
                    })
                ),
                (
                    0,
                    Err(ChainError::OutOfTable {
                        index: SIZE,
                        size: SIZE
                    })
                ),
                (1, Err(ChainError::Loop { size: SIZE })),
                (
                    2,
                    Err(ChainError::OutsideMemory {
                        index: 2,
                        addr: 0x20_0000 - 4,
                        len: 8
                    })
                ),
                (
                    3,
                    Err(ChainError::OutsideMemory {
                        index: 3,
                        addr: u64::MAX - 1,
                        len: 4
                    })
                ),
                (
                    4,
                    Err(ChainError::OutsideMemory {
                        index: 4,
                        addr: 0x40_0000,
                        len: 1
                    })
                ),
                (5, Ok(2)),
            ]
        );
        // The loop cost the queue size, the others what they hold.
        assert_eq!(read, 1 + usize::from(SIZE) + 1 + 1 + 1 + 2);
    }

    #[test]
    fn a_chain_over_4_gib_is_refused() {
        // 3 GiB, reserved but never touched.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 3 << 30)]).unwrap();
        let descs = [(0, 0x4000, 1 << 31, NEXT, 1), (1, 0x4000, 1 << 31, 0, 0)];
        let mut q = queue(&mem, &descs, &[0]);
        assert_eq!(pop_all(&mut q, &mem).0, [(0, Err(ChainError::TooLong))]);
    }

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
    fn no_interrupt_flag_suppresses_used_interrupts_without_event_idx() {
        let counter = Arc::new(Counter::default());
        let irq = Interrupt::new(counter.clone());
        let driver = super::test_util::Driver::new(16 << 20, 1, SIZE);
        let mut queue = driver.queues().remove(0);
        let flags = GuestAddress(super::test_util::avail_ring(0, SIZE));
        for (set, edges) in [(1u16, 0), (0, 1), (1, 1), (0, 2)] {
            driver.mem.write_obj(set, flags).unwrap();
            assert_eq!(interrupt_wanted(&mut queue, &driver.mem), set == 0);
            irq.notify_used(&mut queue, &driver.mem).unwrap();
            assert_eq!(counter.edges(), edges, "flags {set}");
        }
        // With the event index the flag means nothing (virtio 1.2 §2.7.10).
        queue.set_event_idx(true);
        driver.mem.write_obj(1u16, flags).unwrap();
        queue
            .add_used(&driver.mem, 0, 0)
            .expect("a used entry for the event index to pass");
        assert!(interrupt_wanted(&mut queue, &driver.mem));
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
