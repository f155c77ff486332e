//! The virtio-mmio transport, version 2 (virtio 1.x, modern only): a
//! 4 KiB register window on the MMIO bus in front of one [`VirtioDevice`].
//!
//! The guest is not trusted. Registers below the configuration space
//! answer only aligned 32-bit accesses (anything else reads 0 and is
//! ignored); the status moves only forward through ACKNOWLEDGE, DRIVER,
//! FEATURES_OK, DRIVER_OK (writing 0 resets); features are accepted only
//! if the device offered them and include `VIRTIO_F_VERSION_1`; queue
//! registers are writable only between FEATURES_OK and DRIVER_OK; a queue
//! size that is 0, not a power of two or above QueueNumMax, and queue
//! areas in the first page, misaligned or outside guest memory (checked
//! at DRIVER_OK), set DEVICE_NEEDS_RESET, after which only a reset is
//! obeyed. Descriptor chains are split and direct only: a device that
//! offers indirect descriptors or packed queues is refused, so a driver
//! can never negotiate them (the devices' [`pop_chain`](super::pop_chain)
//! refuses indirect tables).
//!
//! QueueNotify is handled here, as a plain MMIO exit, rather than through
//! a KVM ioeventfd per queue (what Firecracker does): each ioeventfd is a
//! KVM I/O-bus registration, the set-up cost the split irqchip removed.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{Activation, Interrupt, InterruptLine, VirtioDevice, VirtioError};
use crate::devices::bus::{BusDevice, BusEvent};
use crate::memory::GuestMemory;
use std::sync::Arc;

/// Bytes of one virtio-mmio window: the registers, then the device's
/// configuration space from [`CONFIG_SPACE_OFFSET`].
pub const MMIO_WINDOW_LEN: u64 = 0x1000;
/// Where the device's configuration space starts in the window.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;
/// MagicValue: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version: 2, the modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// VendorID: none in particular, as Firecracker answers.
pub const VENDOR_ID: u32 = 0;

/// Transport features no device may offer: chains are read by
/// [`pop_chain`](super::pop_chain), which takes split rings and direct
/// descriptors only.
const UNSUPPORTED_FEATURES: [u32; 2] = [VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED];

/// Queue areas start at or above this address. Every area register reads
/// 0 until the driver writes it (virtio-queue, too, takes a driver area at
/// 0 for an unset one and serves nothing from it), and x86 Linux never
/// hands out the first page: it always reserves at least 4 KiB of low
/// memory (`CONFIG_X86_RESERVE_LOW`, 4 to 640 KiB, 64 by default; the
/// whole first MiB since Linux 5.13). The VMM's boot GDT and IDT are there
/// too. An area in it is a queue the driver never set up, or garbage.
const FIRST_QUEUE_ADDRESS: u64 = 0x1000;

const PROGRESS_MASK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;
/// The driver's progress, which must be one of these: it sets
/// ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK in that order.
const PROGRESS_STEPS: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    PROGRESS_MASK,
];

/// One queue's registers as the driver wrote them. They become a
/// `virtio_queue::Queue` only at DRIVER_OK, after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    driver_area: u64,
    device_area: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            driver_area: 0,
            device_area: 0,
        }
    }

    /// The live queue for the device: every area checked against the
    /// first page, for alignment (by virtio-queue) and against guest
    /// memory.
    fn build(
        &self,
        index: usize,
        device_type: u32,
        mem: &GuestMemory,
        event_idx: bool,
    ) -> Result<Queue, VirtioError> {
        let misaligned = |area, addr| VirtioError::QueueMisaligned {
            index,
            area,
            addr,
            size: self.size,
        };
        // Both sizes were checked already (by `MmioTransport::new`, and as
        // the driver wrote QueueNum); these are virtio-queue's own checks.
        let mut queue = Queue::new(self.max_size).map_err(|_| VirtioError::QueueMaxSize {
            device_type,
            index,
            size: self.max_size,
        })?;
        if !self.ready {
            return Ok(queue);
        }
        for (area, addr) in [
            ("descriptor table", self.desc_table),
            ("driver area", self.driver_area),
            ("device area", self.device_area),
        ] {
            if addr < FIRST_QUEUE_ADDRESS {
                return Err(VirtioError::QueueInFirstPage { index, area, addr });
            }
        }
        queue
            .try_set_size(self.size)
            .map_err(|_| VirtioError::QueueSize {
                index,
                size: self.size.into(),
                max: self.max_size,
            })?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|_| misaligned("descriptor table", self.desc_table))?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver_area))
            .map_err(|_| misaligned("driver area", self.driver_area))?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device_area))
            .map_err(|_| misaligned("device area", self.device_area))?;
        let n = u64::from(self.size);
        // Split-ring sizes (virtio 1.2 §2.7): 16-byte descriptors; flags,
        // idx, a u16 per entry and used_event; flags, idx, an 8-byte
        // element per entry and avail_event.
        for (area, addr, len) in [
            ("descriptor table", self.desc_table, 16 * n),
            ("driver area", self.driver_area, 6 + 2 * n),
            ("device area", self.device_area, 6 + 8 * n),
        ] {
            let inside = addr.checked_add(len).is_some()
                && mem.check_range(GuestAddress(addr), len as usize);
            if !inside {
                return Err(VirtioError::QueueOutsideMemory {
                    index,
                    area,
                    addr,
                    len,
                    size: self.size,
                });
            }
        }
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(queue)
    }
}

/// A virtio-mmio register window in front of `device`: a [`BusDevice`].
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<QueueConfig>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    /// The driver wrote a feature bit in a page past the 64 bits.
    driver_features_unknown: bool,
    queue_select: u32,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device`, whose queues live in `mem`, interrupting
    /// through `line`. Fails if the device declares an impossible queue or
    /// offers a transport feature the transport does not implement.
    pub fn new(device: D, mem: GuestMemory, line: Arc<InterruptLine>) -> Result<Self, VirtioError> {
        if let Some(&bit) = UNSUPPORTED_FEATURES
            .iter()
            .find(|&&bit| device.features() & (1 << bit) != 0)
        {
            return Err(VirtioError::UnsupportedFeature {
                device_type: device.device_type(),
                bit,
            });
        }
        let mut queues = Vec::with_capacity(device.queue_max_sizes().len());
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            Queue::new(size).map_err(|_| VirtioError::QueueMaxSize {
                device_type: device.device_type(),
                index,
                size,
            })?;
            queues.push(QueueConfig::new(size));
        }
        Ok(Self {
            device,
            mem,
            interrupt: Interrupt::new(line),
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_unknown: false,
            queue_select: 0,
            activated: false,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Whether the device is running (DRIVER_OK was accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// What the device offers: its own features and `VIRTIO_F_VERSION_1`.
    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    fn broken(&self) -> bool {
        self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) != 0
    }

    /// Queue registers may change between FEATURES_OK and DRIVER_OK only.
    fn queues_writable(&self) -> bool {
        self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
            == VIRTIO_CONFIG_S_FEATURES_OK
            && !self.broken()
    }

    /// Driver features may change after DRIVER and before FEATURES_OK.
    fn features_writable(&self) -> bool {
        self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
            == VIRTIO_CONFIG_S_DRIVER
            && !self.broken()
    }

    /// The device cannot go on until the driver resets it. Past DRIVER_OK
    /// the driver learns it from a configuration interrupt (virtio 1.2
    /// §2.1.2); before, from the status it reads back.
    fn needs_reset(&mut self, why: &dyn std::fmt::Display) {
        log::debug!(
            "virtio-mmio device type {}: needs reset: {why}",
            self.device.device_type()
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.signal_config_change() {
                log::debug!("virtio-mmio: configuration interrupt not delivered: {e}");
            }
        }
    }

    /// Status 0: back to the state `new` left, the device included.
    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.queue_select = 0;
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        self.interrupt.clear();
    }

    fn features_acceptable(&self) -> bool {
        !self.driver_features_unknown
            && self.driver_features & !self.offered_features() == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let added = value & !old;
        let refuse = |why: &str| {
            log::debug!("virtio-mmio: status {value:#x} refused (now {old:#x}): {why}");
        };
        if value & old != old {
            return refuse("a driver clears status bits only by writing 0");
        }
        if added & !(PROGRESS_MASK | VIRTIO_CONFIG_S_FAILED) != 0 {
            return refuse("DEVICE_NEEDS_RESET and reserved bits are not the driver's");
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up; nothing else it asks for counts until a reset.
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if self.broken() {
            return refuse("the device needs a reset first");
        }
        let progress = value & PROGRESS_MASK;
        if !PROGRESS_STEPS.contains(&progress) {
            return refuse("ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK come in that order");
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            return refuse(&format!(
                "features {:#x} are not a subset of the offered {:#x} with VIRTIO_F_VERSION_1",
                self.driver_features,
                self.offered_features()
            ));
        }
        self.status = value;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                self.needs_reset(&e);
            }
        }
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let device_type = self.device.device_type();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, config)| config.build(index, device_type, &self.mem, event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        self.device.activate(Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            features: self.driver_features,
        })?;
        self.activated = true;
        // A driver may fill and notify a queue before DRIVER_OK (Linux
        // drivers that call virtio_device_ready late do): those
        // notifications were dropped, so each ready queue gets one now.
        for index in 0..self.queues.len() {
            if self.queues[index].ready {
                self.device.queue_notify(index as u16);
            }
        }
        Ok(())
    }

    fn queue_notify(&mut self, value: u32) {
        let ready = usize::try_from(value)
            .ok()
            .and_then(|i| self.queues.get(i))
            .is_some_and(|q| q.ready);
        if self.activated && ready {
            self.device.queue_notify(value as u16);
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones says so.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            // No device here changes its configuration once the driver
            // runs, so the generation never moves.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            // Write-only, legacy-only and unknown registers.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES if self.features_writable() => {
                match self.driver_features_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => self.driver_features_unknown |= value != 0,
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM if self.queues_writable() => {
                let index = self.queue_select as usize;
                let Some(queue) = self.selected_queue() else {
                    return;
                };
                let max = queue.max_size;
                match u16::try_from(value) {
                    Ok(size) if size != 0 && size.is_power_of_two() && size <= max => {
                        queue.size = size
                    }
                    _ => self.needs_reset(&VirtioError::QueueSize {
                        index,
                        size: value,
                        max,
                    }),
                }
            }
            VIRTIO_MMIO_QUEUE_READY if self.queues_writable() => {
                if let (Some(queue), 0 | 1) = (self.selected_queue(), value) {
                    queue.ready = value == 1;
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if self.queues_writable() =>
            {
                let Some(queue) = self.selected_queue() else {
                    return;
                };
                let (field, high) = match offset {
                    VIRTIO_MMIO_QUEUE_DESC_LOW => (&mut queue.desc_table, false),
                    VIRTIO_MMIO_QUEUE_DESC_HIGH => (&mut queue.desc_table, true),
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW => (&mut queue.driver_area, false),
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH => (&mut queue.driver_area, true),
                    VIRTIO_MMIO_QUEUE_USED_LOW => (&mut queue.device_area, false),
                    _ => (&mut queue.device_area, true),
                };
                *field = if high {
                    (*field & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (*field & !0xffff_ffff) | u64::from(value)
                };
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.queue_notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            // Read-only, legacy-only and unknown registers, and writes the
            // status does not allow now.
            _ => {}
        }
    }
}

/// A register access: aligned and 32 bits wide, else nothing.
fn register(offset: u64, len: usize) -> Option<u32> {
    let offset = u32::try_from(offset).ok()?;
    (len == 4 && offset % 4 == 0).then_some(offset)
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= MMIO_WINDOW_LEN {
            return;
        }
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match register(offset, data.len()) {
            Some(reg) => data.copy_from_slice(&self.read_register(reg).to_le_bytes()),
            None => log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored: registers are 32-bit",
                data.len()
            ),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        if offset >= MMIO_WINDOW_LEN {
            return None;
        }
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0 && !self.broken() {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return None;
        }
        match (register(offset, data.len()), <[u8; 4]>::try_from(data)) {
            (Some(reg), Ok(bytes)) => self.write_register(reg, u32::from_le_bytes(bytes)),
            _ => log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored: registers are 32-bit",
                data.len()
            ),
        }
        None
    }
}

#[cfg(test)]
mod tests;
