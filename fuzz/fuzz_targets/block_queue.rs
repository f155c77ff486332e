//! The virtio-blk device (`vmm::devices::virtio::block::Block`) serving a
//! queue whose descriptor table, rings and buffers are the input: byte 0
//! picks a read-only or writable disk and the queue size (2 to 256), the
//! rest is guest memory from 0x1000 (the table there, the driver area at
//! 0x2000, the device area at 0x3000, buffers anywhere). The device is
//! activated and kicked twice. No panic; a read-only image keeps its
//! bytes, a writable one its size; each kick uses at most 256 chains.

#![no_main]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::serial::IrqTrigger;
use vmm::devices::virtio::block::{Block, QUEUE_SIZE, SECTOR_SIZE};
use vmm::devices::virtio::{Activation, Interrupt, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 1 << 20;
const TABLE: u64 = 0x1000;
const DRIVER_AREA: u64 = 0x2000;
const DEVICE_AREA: u64 = 0x3000;
const IMAGE_SECTORS: u64 = 64;

/// The image's bytes: every sector differs.
fn pattern() -> Vec<u8> {
    (0..IMAGE_SECTORS * SECTOR_SIZE)
        .map(|i| (i / SECTOR_SIZE * 31 + i % 251) as u8)
        .collect()
}

#[path = "scratch.rs"]
mod scratch;

/// The scratch directory with `ro.img` (and `rw.img`, written per input).
fn scratch() -> &'static Path {
    scratch::dir("blk", |dir| {
        std::fs::write(dir.join("ro.img"), pattern()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let read_only = setup & 1 == 1;
    let size = 1u16 << (1 + (setup >> 1) % 8);
    let dir = scratch();
    let path = if read_only {
        dir.join("ro.img")
    } else {
        let path = dir.join("rw.img");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&pattern()).unwrap();
        path
    };
    let mut block = Block::open(&path, read_only, "fuzz").unwrap();
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = rest.len().min(MEM - TABLE as usize);
    mem.write_slice(&rest[..n], GuestAddress(TABLE)).unwrap();
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(DRIVER_AREA as u32), Some(0));
    queue.set_used_ring_address(Some(DEVICE_AREA as u32), Some(0));
    queue.set_ready(true);
    let line = IrqTrigger::Fd(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    block
        .activate(Activation {
            mem: mem.clone(),
            interrupt: Interrupt::new(Arc::new(line)),
            queues: vec![queue],
            features: block.features(),
        })
        .unwrap();
    let used_idx = || mem.read_obj::<u16>(GuestAddress(DEVICE_AREA + 2)).unwrap();
    let before = used_idx();
    block.queue_notify(0);
    let once = used_idx().wrapping_sub(before);
    block.queue_notify(0);
    let twice = used_idx().wrapping_sub(before);
    assert!(
        once <= QUEUE_SIZE && twice <= 2 * QUEUE_SIZE,
        "{once} {twice}"
    );
    let image = std::fs::read(&path).unwrap();
    if read_only {
        assert!(image == pattern(), "a read-only image changed");
    } else {
        assert_eq!(
            image.len() as u64,
            IMAGE_SECTORS * SECTOR_SIZE,
            "the image grew"
        );
    }
});
