//! The virtio-mmio window driven as Linux's `virtio_mmio` driver does,
//! against a fake device and a `GuestMemoryMmap`, without KVM: the
//! handshake, every refusal a hostile driver gets, reset, and 5000 random
//! accesses.

use super::*;
use crate::devices::virtio::test_util::{Counter, XorShift};
use std::io::{Read, Write};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x10000;
const FAKE_TYPE: u32 = 3;
/// Two device-specific features, as a console's F_SIZE and F_MULTIPORT.
const FAKE_FEATURES: u64 = 0b11;
const QUEUE_MAX: u16 = 16;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// A queue as the device received it: ready, size, the three areas.
type QueueSummary = (bool, u16, u64, u64, u64);

/// Two queues (a console's port 0), an 8-byte configuration space of
/// which the driver may write the last 4 bytes; needs queue 0.
struct FakeDevice {
    config: [u8; 8],
    activations: Vec<(u64, Vec<QueueSummary>)>,
    live: Option<(GuestMemory, Vec<Queue>, Interrupt)>,
    notified: Vec<u16>,
    resets: usize,
}

impl FakeDevice {
    fn new() -> Self {
        Self {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            activations: Vec::new(),
            live: None,
            notified: Vec::new(),
            resets: 0,
        }
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        FAKE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn features(&self) -> u64 {
        FAKE_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_from(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset >= 4 {
            super::super::write_config_into(&mut self.config[4..], offset - 4, data);
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        if !a.queues[0].ready() {
            return Err(VirtioError::QueueNotReady {
                device_type: FAKE_TYPE,
                index: 0,
            });
        }
        let summary = a
            .queues
            .iter()
            .map(|q| {
                (
                    q.ready(),
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                )
            })
            .collect();
        self.activations.push((a.features, summary));
        self.live = Some((a.mem, a.queues, a.interrupt));
        Ok(())
    }
    /// Consumes whatever the driver's ring holds, garbage included, as
    /// a device worker would: every chain, a byte of each part.
    fn queue_notify(&mut self, index: u16) {
        self.notified.push(index);
        let Some((mem, queues, interrupt)) = &mut self.live else {
            panic!("notify before activation");
        };
        let queue = &mut queues[usize::from(index)];
        assert!(queue.ready(), "notify on an unready queue");
        for _ in 0..queue.size() {
            let Some((head, chain)) = super::super::pop_chain(queue, mem) else {
                break;
            };
            if let Ok(chain) = chain {
                let _ = chain.reader(mem).read(&mut [0]);
                let _ = chain.writer(mem).write(&[0]);
            }
            let _ = queue.add_used(&*mem, head, 0);
        }
        let _ = interrupt.signal_used_queue();
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.live = None;
    }
}

fn guest_memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn transport() -> (MmioTransport<FakeDevice>, Arc<Counter>) {
    let line = Arc::new(Counter::default());
    let t = MmioTransport::new(FakeDevice::new(), guest_memory(), line.clone()).unwrap();
    (t, line)
}

fn read(t: &mut MmioTransport<FakeDevice>, offset: u32) -> u32 {
    let mut data = [0xaa; 4];
    t.read(offset.into(), &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport<FakeDevice>, offset: u32, value: u32) {
    assert_eq!(t.write(offset.into(), &value.to_le_bytes()), None);
}

/// Status as Linux's virtio core sets it: read, OR in a bit, write.
fn add_status(t: &mut MmioTransport<FakeDevice>, bit: u32) {
    let status = read(t, VIRTIO_MMIO_STATUS);
    write(t, VIRTIO_MMIO_STATUS, status | bit);
}

/// Areas of queue `index`: one page each, away from address 0 (which
/// virtio-queue takes for an unset ring).
fn areas(index: u32) -> (u64, u64, u64) {
    let base = 0x1000 + u64::from(index) * 0x1000;
    (base, base + 0x400, base + 0x800)
}

fn write64(t: &mut MmioTransport<FakeDevice>, low: u32, value: u64) {
    write(t, low, value as u32);
    write(t, low + 4, (value >> 32) as u32);
}

/// Linux's `vm_setup_vq`.
fn setup_queue(t: &mut MmioTransport<FakeDevice>, index: u32, size: u32, at: (u64, u64, u64)) {
    write(t, VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(
        read(t, VIRTIO_MMIO_QUEUE_READY),
        0,
        "queue {index} already set up"
    );
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    write(t, VIRTIO_MMIO_QUEUE_NUM, size);
    write64(t, VIRTIO_MMIO_QUEUE_DESC_LOW, at.0);
    write64(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, at.1);
    write64(t, VIRTIO_MMIO_QUEUE_USED_LOW, at.2);
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Linux's probe up to FEATURES_OK, accepting `features`; returns
/// what the device offered.
fn negotiate(t: &mut MmioTransport<FakeDevice>, features: u64) -> u64 {
    write(t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    add_status(t, ACK);
    add_status(t, DRIVER);
    write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let mut offered = u64::from(read(t, VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
    write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    offered |= u64::from(read(t, VIRTIO_MMIO_DEVICE_FEATURES));
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    add_status(t, FEATURES_OK);
    offered
}

/// The whole probe: both queues of 8 entries, then DRIVER_OK.
fn bring_up(t: &mut MmioTransport<FakeDevice>) {
    negotiate(t, VERSION_1 | 1);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), ACK | DRIVER | FEATURES_OK);
    setup_queue(t, 0, 8, areas(0));
    setup_queue(t, 1, 8, areas(1));
    add_status(t, DRIVER_OK);
    assert!(t.is_activated());
}

/// Every register and the configuration space, as the driver sees them.
fn snapshot(t: &mut MmioTransport<FakeDevice>) -> Vec<u32> {
    let mut all: Vec<u32> = (0..0x110).step_by(4).map(|o| read(t, o)).collect();
    for q in 0..3 {
        write(t, VIRTIO_MMIO_QUEUE_SEL, q);
        all.push(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX));
        all.push(read(t, VIRTIO_MMIO_QUEUE_READY));
    }
    write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    all
}

#[test]
fn identity_registers_and_offered_features() {
    let (mut t, _) = transport();
    assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(
        &read(&mut t, VIRTIO_MMIO_MAGIC_VALUE).to_le_bytes(),
        b"virt"
    );
    assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), FAKE_TYPE);
    assert_eq!(read(&mut t, VIRTIO_MMIO_VENDOR_ID), 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(read(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    for (page, want) in [(0, FAKE_FEATURES as u32), (1, 1), (2, 0), (u32::MAX, 0)] {
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, page);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            want,
            "page {page}"
        );
    }
    for (queue, max) in [(0, 16), (1, 16), (2, 0), (u32::MAX, 0)] {
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, queue);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
            max,
            "queue {queue}"
        );
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }
    // Write-only registers read 0.
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_DRIVER_FEATURES), 0);
}

#[test]
fn linux_handshake_activates_the_device_with_its_queues() {
    let (mut t, line) = transport();
    let offered = negotiate(&mut t, VERSION_1 | 1);
    assert_eq!(offered, VERSION_1 | FAKE_FEATURES);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER | FEATURES_OK);
    setup_queue(&mut t, 0, 8, areas(0));
    setup_queue(&mut t, 1, 16, (0x3000, 0x3100, 0x3200));
    assert!(t.device().activations.is_empty());
    add_status(&mut t, DRIVER_OK);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert!(t.is_activated());
    let (a0, a1) = (areas(0), (0x3000, 0x3100, 0x3200));
    assert_eq!(
        t.device().activations,
        vec![(
            VERSION_1 | 1,
            vec![(true, 8, a0.0, a0.1, a0.2), (true, 16, a1.0, a1.1, a1.2)]
        )]
    );
    // Each ready queue is kicked once at activation, for notifications
    // the driver sent before DRIVER_OK; the rings are empty.
    assert_eq!(t.device().notified, vec![0, 1]);
    write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(t.device().notified, vec![0, 1, 1]);
    assert_eq!(line.edges(), 3);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let unoffered = [
        VERSION_1 | 1 << 5,
        VERSION_1 | 1 << 40,
        FAKE_FEATURES, // no VERSION_1: a legacy driver
        0,
    ];
    for features in unoffered {
        let (mut t, _) = transport();
        negotiate(&mut t, features);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            ACK | DRIVER,
            "{features:#x}"
        );
        // The driver goes on regardless: DRIVER_OK is refused too.
        add_status(&mut t, FEATURES_OK | DRIVER_OK);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);
        assert!(!t.is_activated());
    }
    // A bit in a page past the 64 features.
    let (mut t, _) = transport();
    add_status(&mut t, ACK);
    add_status(&mut t, DRIVER);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    add_status(&mut t, FEATURES_OK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Features written after FEATURES_OK do not count.
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
    setup_queue(&mut t, 0, 8, areas(0));
    add_status(&mut t, DRIVER_OK);
    assert_eq!(t.device().activations[0].0, VERSION_1);
}

#[test]
fn status_bits_out_of_order_are_refused() {
    let (mut t, _) = transport();
    for bad in [
        DRIVER,
        FEATURES_OK,
        DRIVER_OK,
        ACK | FEATURES_OK,
        NEEDS_RESET,
        0x10,
        0x20,
    ] {
        write(&mut t, VIRTIO_MMIO_STATUS, bad);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0, "{bad:#x}");
    }
    add_status(&mut t, ACK);
    add_status(&mut t, DRIVER);
    // DRIVER_OK without FEATURES_OK, as a driver that skips it.
    add_status(&mut t, DRIVER_OK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Clearing a bit is only done by a reset.
    write(&mut t, VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // FAILED is the driver giving up: kept, and nothing else counts.
    add_status(&mut t, FAILED);
    add_status(&mut t, FEATURES_OK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER | FAILED);
    assert!(!t.is_activated());
    // Several steps at once are fine, in order.
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRIVER);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);
    assert!(t.device().activations.is_empty());
}

#[test]
fn queue_sizes_outside_one_to_max_or_not_powers_of_two_need_reset() {
    for size in [0, 3, 12, 32, 0x1_0010, u32::MAX] {
        let (mut t, line) = transport();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, size, areas(0));
        let status = read(&mut t, VIRTIO_MMIO_STATUS);
        assert_eq!(
            status,
            ACK | DRIVER | FEATURES_OK | NEEDS_RESET,
            "size {size}"
        );
        // Before DRIVER_OK the driver reads it back; no interrupt.
        assert_eq!(line.edges(), 0);
        add_status(&mut t, DRIVER_OK);
        assert!(!t.is_activated(), "size {size}");
        // A reset clears it and the next probe works.
        bring_up(&mut t);
    }
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 1, areas(0));
    setup_queue(&mut t, 1, 16, areas(1));
    add_status(&mut t, DRIVER_OK);
    let queues = &t.device().activations[0].1;
    assert_eq!((queues[0].1, queues[1].1), (1, 16));
}

#[test]
fn queue_areas_outside_memory_or_misaligned_fail_activation() {
    let a = areas(0);
    let bad = [
        (MEM_SIZE - 16 * 4, a.1, a.2), // table runs past the end
        (a.0, MEM_SIZE, a.2),          // driver area outside
        (a.0, a.1, MEM_SIZE - 8),      // device area runs past the end
        (a.0 | 1 << 32, a.1, a.2),     // a high half outside
        (a.0, a.1, u64::MAX - 3),      // the end overflows
        (a.0 + 8, a.1, a.2),           // descriptors 16-byte aligned
        (a.0, a.1 + 1, a.2),           // driver area 2-byte aligned
        (a.0, a.1, a.2 + 2),           // device area 4-byte aligned
    ];
    for at in bad {
        refused_at_driver_ok(at);
    }
}

/// Queue 0 placed `at` makes DRIVER_OK fail: the device is not
/// activated, and the driver learns it needs a reset.
fn refused_at_driver_ok(at: (u64, u64, u64)) {
    let (mut t, line) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 8, at);
    add_status(&mut t, DRIVER_OK);
    assert!(!t.is_activated(), "{at:x?}");
    assert!(t.device().activations.is_empty());
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
    );
    // Past DRIVER_OK the driver is told by a configuration interrupt.
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(line.edges(), 1);
    // Nothing reaches the device until a reset.
    write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    add_status(&mut t, DRIVER_OK);
    assert!(t.device().notified.is_empty());
    bring_up(&mut t);
}

#[test]
fn queue_areas_in_the_first_page_fail_activation() {
    // Address 0 is each area's value until the driver writes it:
    // virtio-queue would take such a queue for unset and never serve it.
    let a = areas(0);
    for at in [
        (0, 0, 0), // a driver that made the queue ready and nothing more
        (0, a.1, a.2),
        (a.0, 0, a.2),
        (a.0, a.1, 0),
        (0xff0, a.1, a.2), // the rest of the first page, too
        (a.0, 0x800, a.2),
        (a.0, a.1, 0xffc),
    ] {
        refused_at_driver_ok(at);
    }
    // The page after it is the driver's to use.
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 8, (0x1000, 0x1100, 0x1200));
    add_status(&mut t, DRIVER_OK);
    assert!(t.is_activated());
    // The reason names the queue and the area.
    let err = QueueConfig {
        max_size: 8,
        size: 8,
        ready: true,
        desc_table: a.0,
        driver_area: 0,
        device_area: a.2,
    }
    .build(1, FAKE_TYPE, &guest_memory(), false)
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("virtio queue 1: the driver's driver area at 0x0 is in the first page"),
        "{err}"
    );
}

#[test]
fn a_device_that_cannot_activate_asks_for_a_reset() {
    let (mut t, line) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 1, 8, areas(1));
    add_status(&mut t, DRIVER_OK);
    assert!(!t.is_activated());
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, NEEDS_RESET);
    assert_eq!(line.edges(), 1);
}

#[test]
fn queue_registers_change_only_between_features_ok_and_driver_ok() {
    let (mut t, _) = transport();
    add_status(&mut t, ACK);
    add_status(&mut t, DRIVER);
    write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRIVER);

    let (mut t, _) = transport();
    bring_up(&mut t);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3);
    write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
    // Only 0 and 1 are values of QueueReady.
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    write(&mut t, VIRTIO_MMIO_QUEUE_READY, 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn notify_on_an_unready_or_absent_queue_is_ignored() {
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 8, areas(0));
    write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0); // before DRIVER_OK
    add_status(&mut t, DRIVER_OK);
    assert!(t.is_activated());
    assert!(
        !t.device().activations[0].1[1].0,
        "queue 1 was left unready"
    );
    assert_eq!(t.device().notified, vec![0]); // the kick at activation
    for absent in [1, 2, 0x1_0000, u32::MAX] {
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, absent);
    }
    write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(t.device().notified, vec![0, 0]);
}

#[test]
fn interrupt_ack_clears_interrupt_status_bits() {
    let (mut t, line) = transport();
    bring_up(&mut t);
    let irq = t.device().live.as_ref().unwrap().2.clone();
    irq.signal_config_change().unwrap();
    let status = read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS);
    assert_eq!(status, VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
    write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX);
    assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // Two queue kicks at activation and the configuration change.
    assert_eq!(line.edges(), 3);
}

#[test]
fn reset_returns_everything_to_its_initial_state() {
    let (mut fresh, _) = transport();
    let initial = snapshot(&mut fresh);
    let (mut t, _) = transport();
    bring_up(&mut t);
    write(&mut t, 0x104, 0xdead_beef);
    write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_ne!(snapshot(&mut t), initial);
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(t.device().resets, 2); // the probe's and this one
    assert!(t.device().live.is_none());
    // The configuration space is the device's: it keeps the write.
    write(&mut fresh, VIRTIO_MMIO_STATUS, ACK | DRIVER);
    write(&mut fresh, 0x104, 0xdead_beef);
    write(&mut fresh, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(snapshot(&mut t), snapshot(&mut fresh));
    // And the driver can start over.
    bring_up(&mut t);
    assert_eq!(t.device().activations.len(), 2);
}

#[test]
fn configuration_space_any_size_writable_after_driver() {
    let (mut t, _) = transport();
    let mut two = [0u8; 2];
    t.read(0x103, &mut two);
    assert_eq!(two, [4, 5]);
    let mut eight = [0xffu8; 8];
    t.read(0x104, &mut eight);
    assert_eq!(eight, [5, 6, 7, 8, 0, 0, 0, 0]);
    t.write(0x104, &[9]);
    assert_eq!(t.device().config[4], 5, "written before DRIVER");
    add_status(&mut t, ACK);
    add_status(&mut t, DRIVER);
    t.write(0x106, &[9, 9, 9, 9]);
    t.write(0x100, &[0, 0]); // read-only part
    assert_eq!(t.device().config, [1, 2, 3, 4, 5, 6, 9, 9]);
}

#[test]
fn odd_sizes_and_offsets_are_ignored() {
    let (mut t, _) = transport();
    let offsets = [
        0,
        1,
        2,
        3,
        0x70,
        0x71,
        0xfc,
        0xfe,
        0xffc,
        0xfff,
        0x1000,
        u64::MAX - 3,
    ];
    for offset in offsets.into_iter().chain([u64::MAX]) {
        for len in [0, 1, 2, 3, 4, 5, 8, 16, 4096] {
            let mut data = vec![0xaau8; len];
            t.read(offset, &mut data);
            if len != 4 || offset % 4 != 0 || offset >= 0x100 {
                assert!(
                    (0x100..0x108).contains(&offset) || data.iter().all(|&b| b == 0),
                    "read {len} at {offset:#x}: {data:x?}"
                );
            }
            let mut value = vec![0u8; len];
            if let Some(first) = value.first_mut() {
                *first = ACK as u8;
            }
            assert_eq!(t.write(offset, &value), None);
        }
    }
    // Of all those writes only the aligned 4-byte one at 0x70 counted.
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK);
    let (mut t, _) = transport();
    let mut one = [0u8; 1];
    t.read(VIRTIO_MMIO_MAGIC_VALUE.into(), &mut one);
    assert_eq!(one, [0]);
    t.write(VIRTIO_MMIO_STATUS.into(), &[ACK as u8, 0]);
    t.write(VIRTIO_MMIO_STATUS.into(), &[ACK as u8, 0, 0, 0, 0, 0, 0, 0]);
    t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[ACK as u8, 0, 0, 0]);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn a_device_declaring_an_impossible_queue_or_transport_feature_is_refused() {
    struct Bad(Vec<u16>, u64);
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            9
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.0
        }
        fn features(&self) -> u64 {
            self.1
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: Activation) -> Result<(), VirtioError> {
            Ok(())
        }
        fn queue_notify(&mut self, _: u16) {}
        fn reset(&mut self) {}
    }
    for sizes in [vec![0], vec![128, 3], vec![u16::MAX]] {
        let line = Arc::new(Counter::default());
        let err = MmioTransport::new(Bad(sizes.clone(), 0), guest_memory(), line)
            .err()
            .unwrap();
        assert!(matches!(
            err,
            VirtioError::QueueMaxSize { device_type: 9, .. }
        ));
        assert!(err.to_string().contains("power of two"), "{err}");
    }
    // Indirect descriptors and packed rings: the devices' chains are
    // split and direct, so no driver may be offered either.
    for bit in [VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED] {
        let line = Arc::new(Counter::default());
        let err = MmioTransport::new(Bad(vec![8], 1 << bit), guest_memory(), line)
            .err()
            .unwrap();
        assert!(
            matches!(err, VirtioError::UnsupportedFeature { device_type: 9, bit: b } if b == bit),
            "{err}"
        );
    }
    let line = Arc::new(Counter::default());
    let features = 1 << VIRTIO_RING_F_EVENT_IDX | 1;
    assert!(MmioTransport::new(Bad(vec![32768, 1], features), guest_memory(), line).is_ok());
}

/// A hostile driver: thousands of random accesses, mostly at real
/// registers with small values (so the status machine is reached),
/// sometimes a proper bring-up with rings somewhere in guest memory
/// full of garbage, which the fake device then consumes.
#[test]
fn random_accesses_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut t, _) = transport();
    let mut garbage = vec![0u8; MEM_SIZE as usize];
    garbage.iter_mut().for_each(|b| *b = rng.next() as u8);
    t.mem.write_slice(&garbage, GuestAddress(0)).unwrap();
    let registers: Vec<u32> = (0..0x110).step_by(4).collect();
    let mut activations = 0;
    for _ in 0..5000 {
        if rng.below(50) == 0 {
            negotiate(&mut t, VERSION_1 | rng.below(4));
            for q in 0..2 {
                let at = |rng: &mut XorShift| rng.below(MEM_SIZE + 0x100) & !0xf;
                let area = (at(&mut rng), at(&mut rng), at(&mut rng));
                setup_queue(&mut t, q, 1 << rng.below(6), area);
            }
            add_status(&mut t, DRIVER_OK);
            activations += usize::from(t.is_activated());
            continue;
        }
        let offset = match rng.below(10) {
            0 => rng.next(),
            1 => rng.below(0x1100),
            _ => registers[rng.below(registers.len() as u64) as usize].into(),
        };
        let len = [0, 1, 2, 3, 4, 4, 4, 4, 8][rng.below(9) as usize];
        let value = match rng.below(4) {
            0 => rng.next(),
            1 => rng.below(0x10000),
            _ => rng.below(0x100),
        };
        let mut data = value.to_le_bytes().to_vec();
        data.resize(len, 0);
        if rng.below(2) == 0 {
            t.read(offset, &mut data);
        } else {
            assert_eq!(t.write(offset, &data), None);
        }
        let status = read(&mut t, VIRTIO_MMIO_STATUS);
        if t.is_activated() {
            assert_eq!(status & (FEATURES_OK | DRIVER_OK), FEATURES_OK | DRIVER_OK);
        }
        if status & DRIVER_OK != 0 && status & (NEEDS_RESET | FAILED) == 0 {
            assert!(t.is_activated(), "DRIVER_OK {status:#x} without activation");
        }
    }
    assert!(activations > 10, "only {activations} bring-ups activated");
    assert!(!t.device().notified.is_empty());
}
