//! The virtio-blk device against a minimal driver over guest memory:
//! reads at known offsets, writes (refused on a read-only disk), flush,
//! GET_ID, requests out of range, broken chains, random rings, and the
//! image rules.

use super::*;
use crate::devices::virtio::test_util::{self, Counter, Driver, XorShift};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_DISCARD;
use vm_memory::{Bytes, GuestAddress};

/// Enough guest memory for two requests of [`MAX_REQUEST_BYTES`]
/// (the driver never reuses a buffer).
const MEM: u64 = 80 << 20;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
/// The test image: 64 sectors.
const IMAGE_SECTORS: u64 = 64;

/// The image's byte at `offset`: every sector differs from the others,
/// and every byte of a sector from its neighbours.
fn image_byte(offset: u64) -> u8 {
    (offset / SECTOR_SIZE * 31 + offset % 251) as u8
}

fn image_bytes(len: u64) -> Vec<u8> {
    (0..len).map(image_byte).collect()
}

/// A request header.
fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend(0u32.to_le_bytes());
    h.extend(sector.to_le_bytes());
    h
}

struct Rig {
    block: Block,
    driver: Driver,
    irqs: Arc<Counter>,
    image: tempfile::NamedTempFile,
}

/// A device over an image of `len` bytes of [`image_byte`]s, activated.
fn rig_with(len: u64, read_only: bool) -> Rig {
    let mut image = tempfile::NamedTempFile::new().unwrap();
    image.write_all(&image_bytes(len)).unwrap();
    let mut block = Block::open(image.path(), read_only, "microrun0").unwrap();
    let driver = Driver::new(MEM, 1, QUEUE_SIZE);
    let irqs = Arc::new(Counter::default());
    block
        .activate(Activation {
            mem: driver.mem.clone(),
            interrupt: Interrupt::new(irqs.clone()),
            queues: driver.queues(),
            features: block.features(),
        })
        .unwrap();
    Rig {
        block,
        driver,
        irqs,
        image,
    }
}

fn rig(read_only: bool) -> Rig {
    rig_with(IMAGE_SECTORS * SECTOR_SIZE, read_only)
}

/// What came back for one request.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u8,
    /// The used ring's length.
    len: u32,
}

impl Rig {
    /// Sends a request: the header, readable `data_out` buffers, writable
    /// buffers of the `data_in` lengths, and the status byte; returns the
    /// answer and the addresses of the writable buffers.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data_out: &[&[u8]],
        data_in: &[u32],
    ) -> (Answer, Vec<u64>) {
        let h = header(kind, sector);
        let mut descs = vec![(self.driver.alloc(&h, 16), 16, 0)];
        for data in data_out {
            let len = data.len() as u32;
            descs.push((self.driver.alloc(data, len), len, 0));
        }
        let mut inputs = Vec::new();
        for &len in data_in {
            // Filled with 0xee, to see what the device wrote (the first
            // 64 KiB: enough to see it).
            let mark = vec![0xee; len.min(64 << 10) as usize];
            let addr = self.driver.alloc(&mark, len);
            inputs.push(addr);
            descs.push((addr, len, WRITE));
        }
        let status = self.driver.alloc(&[0xff], 1);
        descs.push((status, 1, WRITE));
        self.driver.add_raw(0, &descs);
        self.block.queue_notify(0);
        let used = self.driver.used(0);
        assert_eq!(used.len(), 1, "one request, one used entry: {used:?}");
        let status: u8 = self.driver.mem.read_obj(GuestAddress(status)).unwrap();
        (
            Answer {
                status,
                len: used[0].1,
            },
            inputs,
        )
    }

    /// Reads `lens` bytes at `sector`, in one buffer per length.
    fn read(&mut self, sector: u64, lens: &[u32]) -> (Answer, Vec<u8>) {
        let (answer, addrs) = self.request(VIRTIO_BLK_T_IN, sector, &[], lens);
        let mut data = Vec::new();
        for (&addr, &len) in addrs.iter().zip(lens) {
            let mut buf = vec![0; len as usize];
            self.driver
                .mem
                .read_slice(&mut buf, GuestAddress(addr))
                .unwrap();
            data.extend(buf);
        }
        (answer, data)
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }
}

const fn ok(len: u32) -> Answer {
    Answer { status: OK, len }
}

/// A failure: only the status byte is written.
const fn failed(status: u8) -> Answer {
    Answer { status, len: 1 }
}

#[test]
fn reads_return_the_image_at_their_sectors() {
    let mut rig = rig(true);
    let (answer, data) = rig.read(0, &[512]);
    assert_eq!((answer, data), (ok(513), image_bytes(512)));
    // Across buffers of several sizes, at an offset.
    let (answer, data) = rig.read(9, &[512, 1024, 2048]);
    assert_eq!(answer, ok(3585));
    let want: Vec<u8> = (9 * 512..9 * 512 + 3584).map(image_byte).collect();
    assert_eq!(data, want);
    // The last sector.
    let (answer, data) = rig.read(IMAGE_SECTORS - 1, &[512]);
    assert_eq!(answer, ok(513));
    assert_eq!(data[..], image_bytes(IMAGE_SECTORS * 512)[63 * 512..]);
    assert_eq!(rig.irqs.edges(), 3, "one interrupt per notification");
}

#[test]
fn a_read_only_disk_refuses_writes_and_offers_no_flush() {
    let mut rig = rig(true);
    let features = rig.block.features();
    assert_ne!(features & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(features & 1 << VIRTIO_BLK_F_FLUSH, 0);
    let before = rig.image();
    let (answer, _) = rig.request(VIRTIO_BLK_T_OUT, 1, &[&[0u8; 512]], &[]);
    assert_eq!(answer, failed(IOERR));
    assert_eq!(rig.image(), before);
    // A flush has nothing to do, and succeeds.
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, &[], &[]).0, ok(1));
    // Opened read-only: the file itself cannot be written through it.
    assert!(rig.block.file.write_all_at(b"x", 0).is_err());
}

#[test]
fn writes_reach_the_image_and_read_back() {
    let mut rig = rig(false);
    let features = rig.block.features();
    assert_eq!(features & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(features & 1 << VIRTIO_BLK_F_FLUSH, 0);
    let (a, b) = (vec![1u8; 512], vec![2u8; 1024]);
    let (answer, _) = rig.request(VIRTIO_BLK_T_OUT, 3, &[&a, &b], &[]);
    assert_eq!(answer, ok(1));
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, &[], &[]).0, ok(1));
    let mut want = image_bytes(IMAGE_SECTORS * 512);
    want[3 * 512..4 * 512].fill(1);
    want[4 * 512..6 * 512].fill(2);
    assert_eq!(rig.image(), want);
    let (answer, data) = rig.read(3, &[1536]);
    assert_eq!(answer, ok(1537));
    assert_eq!(data, want[3 * 512..6 * 512]);
}

#[test]
fn requests_outside_the_image_or_its_bounds_fail() {
    let mut rig = rig(false);
    let before = rig.image();
    let end = IMAGE_SECTORS;
    // Past the end, across the end, wrapping around.
    assert_eq!(rig.read(end, &[512]).0, failed(IOERR));
    assert_eq!(rig.read(end - 1, &[1024]).0, failed(IOERR));
    assert_eq!(rig.read(u64::MAX, &[512]).0, failed(IOERR));
    assert_eq!(rig.read(u64::MAX / 512 + 1, &[512]).0, failed(IOERR));
    let (answer, _) = rig.request(VIRTIO_BLK_T_OUT, end - 1, &[&[0; 1024]], &[]);
    assert_eq!(answer, failed(IOERR));
    let (answer, _) = rig.request(VIRTIO_BLK_T_OUT, u64::MAX, &[&[0; 512]], &[]);
    assert_eq!(answer, failed(IOERR));
    // Not whole sectors.
    assert_eq!(rig.read(0, &[100]).0, failed(IOERR));
    let (answer, _) = rig.request(VIRTIO_BLK_T_OUT, 0, &[&[0; 513]], &[]);
    assert_eq!(answer, failed(IOERR));
    assert_eq!(rig.image(), before, "no failed write wrote anything");
    // A failed read leaves the buffers as they were.
    let (answer, data) = rig.read(end, &[512]);
    assert_eq!((answer, data), (failed(IOERR), vec![0xee; 512]));
}

#[test]
fn a_request_larger_than_the_bound_fails_even_inside_the_image() {
    let sectors = MAX_REQUEST_BYTES / SECTOR_SIZE + 8;
    let mut rig = rig_with(sectors * SECTOR_SIZE, true);
    let half = (MAX_REQUEST_BYTES / 2) as u32;
    // Exactly the bound: served.
    assert_eq!(rig.read(8, &[half, half]).0, ok(2 * half + 1));
    // One sector more: refused.
    assert_eq!(rig.read(0, &[half, half, 512]).0, failed(IOERR));
}

#[test]
fn get_id_gives_the_serial_and_other_types_are_unsupported() {
    let mut rig = rig(true);
    let (answer, data) = {
        let (answer, addrs) = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[], &[20]);
        let mut id = [0u8; 20];
        rig.driver
            .mem
            .read_slice(&mut id, GuestAddress(addrs[0]))
            .unwrap();
        (answer, id)
    };
    assert_eq!(answer, ok(21));
    assert_eq!(&data, b"microrun0\0\0\0\0\0\0\0\0\0\0\0");
    // A shorter buffer gets the start.
    let (answer, _) = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[], &[4]);
    assert_eq!(answer, ok(5));
    for kind in [VIRTIO_BLK_T_DISCARD, 99, u32::MAX] {
        assert_eq!(rig.request(kind, 0, &[], &[512]).0, failed(UNSUPP));
    }
}

#[test]
fn broken_chains_are_answered_or_returned_and_the_queue_goes_on() {
    let mut rig = rig(false);
    let before = rig.image();
    let h = header(VIRTIO_BLK_T_OUT, 0);
    let hdr = rig.driver.alloc(&h, 16);
    let data = rig.driver.alloc(&[9; 512], 512);
    let status = rig.driver.alloc(&[0xff], 1);
    // No writable byte at all: nothing can be answered.
    rig.driver.add_raw(0, &[(hdr, 16, 0), (data, 512, 0)]);
    // A header cut short.
    rig.driver.add_raw(0, &[(hdr, 8, 0), (status, 1, WRITE)]);
    // The header in a writable buffer.
    rig.driver
        .add_raw(0, &[(hdr, 16, WRITE), (status, 1, WRITE)]);
    // An indirect table, never negotiated.
    rig.driver.add_raw(0, &[(hdr, 16, INDIRECT)]);
    // A buffer outside guest memory.
    rig.driver
        .add_raw(0, &[(hdr, 16, 0), (MEM - 8, 512, 0), (status, 1, WRITE)]);
    rig.block.queue_notify(0);
    let used = rig.driver.used(0);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, [0, 1, 1, 0, 0]);
    let status: u8 = rig.driver.mem.read_obj(GuestAddress(status)).unwrap();
    assert_eq!(status, IOERR);
    assert_eq!(rig.image(), before);
    // Still serving.
    assert_eq!(rig.read(1, &[512]).0, ok(513));
    // Notifications of a queue that does not exist do nothing.
    rig.block.queue_notify(1);
    rig.block.queue_notify(u16::MAX);
}

#[test]
fn a_read_past_an_image_that_shrank_fails() {
    let mut rig = rig(true);
    rig.image.as_file().set_len(10 * SECTOR_SIZE).unwrap();
    assert_eq!(rig.read(9, &[512]).0, ok(513));
    // Part of it was read: the used length counts it and the status.
    let (answer, data) = rig.read(9, &[1024]);
    assert_eq!(
        answer,
        Answer {
            status: IOERR,
            len: 513
        }
    );
    assert_eq!(data[..512], image_bytes(10 * SECTOR_SIZE)[9 * 512..]);
    assert_eq!(rig.read(20, &[512]).0, failed(IOERR));
}

#[test]
fn the_configuration_says_capacity_bounds_and_block_size() {
    let rig = rig(true);
    let mut config = [0u8; CONFIG_LEN];
    rig.block.read_config(0, &mut config);
    let le32 = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 64);
    assert_eq!((le32(8), le32(12), le32(20)), (SIZE_MAX, SEG_MAX, 4096));
    assert_ne!(rig.block.features() & 1 << VIRTIO_BLK_F_BLK_SIZE, 0);
    // Past the end: zeroes.
    let mut tail = [0u8; 8];
    rig.block.read_config(CONFIG_LEN as u64 - 4, &mut tail);
    assert_eq!(tail, [0, 0x10, 0, 0, 0, 0, 0, 0]);
    // An image that is not whole blocks: sectors, and no block size.
    let odd = rig_with(2 * BLOCK_SIZE + 3 * SECTOR_SIZE + 100, true);
    assert_eq!(odd.block.capacity(), 19);
    assert_eq!(odd.block.features() & 1 << VIRTIO_BLK_F_BLK_SIZE, 0);
    let mut size = [0u8; 4];
    odd.block.read_config(20, &mut size);
    assert_eq!(u32::from_le_bytes(size), 512);
}

#[test]
fn only_regular_files_of_a_sector_or_more_are_disks() {
    let dir = tempfile::tempdir().unwrap();
    let err = |path: &Path, read_only| Block::open(path, read_only, "x").err().unwrap();
    let fifo = crate::regular_file::testing::make_fifo(dir.path());
    let e = err(&fifo, true);
    assert!(
        matches!(e, BlockError::NotRegular { kind: "a FIFO", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("give an image file"), "{e}");
    assert!(matches!(
        err(dir.path(), false),
        BlockError::NotRegular {
            kind: "a directory",
            ..
        }
    ));
    assert!(matches!(
        err(Path::new("/dev/null"), true),
        BlockError::NotRegular { .. }
    ));
    let missing = dir.path().join("missing.img");
    let e = err(&missing, false);
    assert!(matches!(e, BlockError::Open { .. }), "{e}");
    assert!(e.to_string().contains("missing.img for writing"), "{e}");
    let small = dir.path().join("small.img");
    std::fs::write(&small, [0; 511]).unwrap();
    let e = err(&small, true);
    assert!(matches!(e, BlockError::TooSmall { size: 511, .. }), "{e}");
}

#[test]
fn activation_needs_the_queue_and_reset_stops_serving() {
    let image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(4096).unwrap();
    let mut block = Block::open(image.path(), true, "x").unwrap();
    let driver = Driver::new(MEM, 1, QUEUE_SIZE);
    let activation = |queues| Activation {
        mem: driver.mem.clone(),
        interrupt: Interrupt::new(Arc::new(Counter::default())),
        queues,
        features: 0,
    };
    let mut unready = driver.queues();
    unready[0].set_ready(false);
    assert!(matches!(
        block.activate(activation(unready)),
        Err(VirtioError::QueueNotReady { index: 0, .. })
    ));
    assert!(block.activate(activation(Vec::new())).is_err());

    let mut rig = rig(true);
    rig.block.reset();
    let hdr = rig.driver.alloc(&header(VIRTIO_BLK_T_IN, 0), 16);
    rig.driver.add_raw(0, &[(hdr, 16, 0)]);
    rig.block.queue_notify(0);
    assert!(rig.driver.used(0).is_empty());
}

#[test]
fn random_rings_never_panic_or_hang_and_never_grow_the_image() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mem_end = 1 << 20;
    for round in 0..40 {
        let mut rig = rig(round % 2 == 0);
        for _ in 0..100 {
            let at = test_util::desc_table(0, QUEUE_SIZE) + 16 * rng.below(QUEUE_SIZE.into());
            // Buffers mostly inside the first megabyte, some anywhere.
            let addr = if rng.below(8) == 0 {
                rng.next()
            } else {
                rng.below(mem_end)
            };
            let len = rng.below(3 * 4096) as u32;
            let flags = rng.below(8) as u16;
            let next = rng.below(u64::from(QUEUE_SIZE) + 4) as u16;
            let mem = &rig.driver.mem;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
            // Headers and ring entries to pick from.
            let h = header(rng.below(10) as u32, rng.below(IMAGE_SECTORS + 2));
            mem.write_slice(&h, GuestAddress(rng.below(mem_end - 16)))
                .unwrap();
            let ring = test_util::avail_ring(0, QUEUE_SIZE) + 2 * rng.below(QUEUE_SIZE.into());
            mem.write_obj(rng.next() as u16, GuestAddress(ring + 2))
                .unwrap();
            if rng.below(4) == 0 {
                rig.block.queue_notify(0);
            }
        }
        assert_eq!(rig.image().len() as u64, IMAGE_SECTORS * SECTOR_SIZE);
        if round % 2 == 0 {
            assert_eq!(rig.image(), image_bytes(IMAGE_SECTORS * SECTOR_SIZE));
        }
    }
}

#[test]
fn no_interrupt_while_the_driver_polls() {
    let mut rig = rig(true);
    // VRING_AVAIL_F_NO_INTERRUPT (1) in the avail ring's flags, then not.
    let flags = GuestAddress(test_util::avail_ring(0, QUEUE_SIZE));
    let edges = rig.irqs.edges();
    for (set, more) in [(1u16, 0), (0, 1)] {
        rig.driver.mem.write_obj(set, flags).unwrap();
        assert_eq!(rig.read(0, &[512]).0, ok(513));
        assert_eq!(rig.irqs.edges(), edges + more, "flags {set}");
    }
}
