//! The virtio-net device's queues (`vmm::devices::virtio::net`) driven by
//! a byte string decoded into a hostile driver's moves (descriptors
//! anywhere, with any flags and links, heads published on either ring,
//! avail indexes out of step, buffer contents) and a hostile backend's
//! bytes (any length prefixes), served by the code the device's threads
//! run. No panic; what goes to the backend is whole frames of 14 bytes
//! to the MTU's size behind their lengths, never more than the transmit
//! buffer; every used entry names a head of the table.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::serial::IrqTrigger;
use vmm::devices::virtio::net::{Harness, ETH_HLEN, PREFIX_LEN, TX_BUFFER, VLAN_HLEN};
use vmm::devices::virtio::Interrupt;
use vmm::NetSpec;
use vmm_sys_util::eventfd::EventFd;

const SIZE: u16 = 16;
/// Queue q's table, avail ring and used ring, a page each.
fn ring(q: usize, part: u64) -> u64 {
    0x1_0000 + q as u64 * 0x4000 + part * 0x1000
}
/// Buffers the driver's addresses mostly point into.
const BUFFERS: u64 = 0x2_0000;
const MEM: u64 = 2 << 20;

struct Input<'a>(std::slice::Iter<'a, u8>);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data.iter());
    let head = input.u8();
    let mtu = [68, 1500, 9000, 65520][usize::from(head & 3)];
    let mergeable = head & 4 != 0;
    let spec = NetSpec {
        mac: [2, 0, 0, 0, 0, 1],
        mtu,
    };
    let mem = vmm::memory::create_guest_memory(MEM).unwrap();
    let queues = [0, 1].map(|q| {
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_desc_table_address(Some(ring(q, 0) as u32), Some(0));
        queue.set_avail_ring_address(Some(ring(q, 1) as u32), Some(0));
        queue.set_used_ring_address(Some(ring(q, 2) as u32), Some(0));
        queue.set_ready(true);
        queue
    });
    let line = IrqTrigger::Fd(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let interrupt = Interrupt::new(Arc::new(line));
    let mut harness = Harness::new(&spec, mem.clone(), interrupt, queues, mergeable);
    let mut avail = [0u16; 2];
    let mut stopped = false;
    // Whether a descriptor's buffer covers the rings: the device then
    // writes the guest's frames over them, as a guest may ask.
    let mut over_rings = false;
    for _ in 0..256 {
        if input.0.len() == 0 {
            break;
        }
        let op = input.u8();
        let q = usize::from(op >> 7);
        match op & 0x7f {
            // A descriptor: mostly in the buffers, sometimes anywhere.
            0..=39 => {
                let index = u64::from(input.u8() % SIZE as u8);
                let addr = match input.u8() {
                    0 => u64::from(input.u16()) << 24 | u64::from(input.u16()),
                    n => BUFFERS + u64::from(n) * 256,
                };
                let len = u32::from(input.u16());
                over_rings |= addr < ring(1, 3) && addr + u64::from(len) > ring(0, 0);
                let flags = u16::from(input.u8() & 7);
                let next = u16::from(input.u8());
                let at = GuestAddress(ring(q, 0) + 16 * index);
                mem.write_obj(addr, at).unwrap();
                mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
                mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
                mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
            }
            // A head published (or the index moved out of step).
            40..=69 => {
                let head = u16::from(input.u8());
                let slot = u64::from(avail[q] % SIZE);
                mem.write_obj(head, GuestAddress(ring(q, 1) + 4 + 2 * slot))
                    .unwrap();
                avail[q] = avail[q].wrapping_add(if op & 1 == 0 { 1 } else { input.u16() });
                mem.write_obj(avail[q], GuestAddress(ring(q, 1) + 2))
                    .unwrap();
            }
            // Bytes in the buffers (frames to send).
            70..=84 => {
                let at = BUFFERS + u64::from(input.u8()) * 256;
                let bytes: Vec<u8> = (0..input.u8()).map(|_| input.u8()).collect();
                mem.write_slice(&bytes, GuestAddress(at)).unwrap();
            }
            // The backend's bytes: a frame of some length, or raw bytes.
            85..=109 if !stopped => {
                let mut bytes = Vec::new();
                if op & 1 == 0 {
                    let len = input.u16();
                    bytes.extend(u32::from(len).to_be_bytes());
                    bytes.resize(PREFIX_LEN + usize::from(len), input.u8());
                } else {
                    bytes.extend((0..input.u8()).map(|_| input.u8()));
                }
                let mut rest = &bytes[..];
                // What the thread would do: read on while it takes bytes.
                while !rest.is_empty() {
                    match harness.from_backend(rest) {
                        Ok(0) => break,
                        Ok(n) => rest = &rest[n..],
                        Err(_) => {
                            stopped = true;
                            break;
                        }
                    }
                }
            }
            // A transmit round: whole frames behind their lengths.
            _ => {
                let out = harness.from_guest();
                assert!(out.len() <= TX_BUFFER);
                let mut rest = out;
                while !rest.is_empty() {
                    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    // The MTU, the Ethernet header and a VLAN tag at most.
                    assert!((ETH_HLEN..=usize::from(mtu) + ETH_HLEN + VLAN_HLEN).contains(&len));
                    rest = &rest[PREFIX_LEN + len..];
                }
            }
        }
    }
    // Every used entry names a head of the table (unless the guest had
    // the device write over its rings).
    for q in (!over_rings).then_some(0..2).into_iter().flatten() {
        let idx: u16 = mem.read_obj(GuestAddress(ring(q, 2) + 2)).unwrap();
        for slot in 0..u64::from(idx.min(SIZE)) {
            let id: u32 = mem
                .read_obj(GuestAddress(ring(q, 2) + 4 + 8 * slot))
                .unwrap();
            assert!(id < u32::from(SIZE), "used id {id}");
        }
    }
});
