//! The virtio-console against a minimal driver that lays out the rings in
//! guest memory: the port handshake, output to the writers, input with its
//! end of file, hostile chains, and random rings.

use super::*;
use crate::devices::virtio::test_util::{self, Counter, Driver, XorShift, BUFFERS};
use crate::devices::virtio::DESCRIPTORS_READ;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

const MEM: u64 = 0x40_0000;
const WRITE: u16 = 2;
const NEXT: u16 = 1;
const INDIRECT: u16 = 4;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn desc_table(q: usize) -> u64 {
    test_util::desc_table(q, QUEUE_SIZE)
}
fn avail_ring(q: usize) -> u64 {
    test_util::avail_ring(q, QUEUE_SIZE)
}
fn used_ring(q: usize) -> u64 {
    test_util::used_ring(q, QUEUE_SIZE)
}

impl Driver {
    /// The control messages the device put in `posted` buffers.
    fn control_messages(&mut self, posted: &[u64]) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let used = self.used(CONTROL_RX);
        used.iter()
            .map(|&(id, len)| {
                // Each posted buffer is one descriptor: id n is the n-th.
                let addr = posted[id as usize];
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                let id = u32::from_le_bytes(buf[0..4].try_into().unwrap());
                let ev = u16::from_le_bytes(buf[4..6].try_into().unwrap());
                let val = u16::from_le_bytes(buf[6..8].try_into().unwrap());
                (id, ev, val, buf[8..].to_vec())
            })
            .collect()
    }
}

struct Rig {
    console: Console,
    driver: Driver,
    stdout: Sink,
    stderr: Sink,
    irqs: Arc<Counter>,
    control_buffers: Vec<u64>,
}

fn rig() -> Rig {
    let (stdout, stderr) = (Sink::default(), Sink::default());
    let mut console = Console::new(ConsoleOutputs {
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
    });
    let driver = Driver::new(MEM, QUEUES, QUEUE_SIZE);
    let irqs = Arc::new(Counter::default());
    console
        .activate(Activation {
            mem: driver.mem.clone(),
            interrupt: Interrupt::new(irqs.clone()),
            queues: driver.queues(),
            features: 1 << VIRTIO_CONSOLE_F_MULTIPORT,
        })
        .unwrap();
    let mut rig = Rig {
        console,
        driver,
        stdout,
        stderr,
        irqs,
        control_buffers: Vec::new(),
    };
    for _ in 0..16 {
        let addr = rig.driver.post_buffer(CONTROL_RX, 4096);
        rig.control_buffers.push(addr);
    }
    rig
}

impl Rig {
    fn control(&mut self, port: u32, event: u16, value: u16) {
        let msg = control_message(port as usize, event, value, &[]);
        self.driver.send(CONTROL_TX, &msg);
        self.console.queue_notify(CONTROL_TX as u16);
    }

    fn messages(&mut self) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let posted = self.control_buffers.clone();
        self.driver.control_messages(&posted)
    }

    /// The driver's side of the handshake, up to named, open ports.
    fn handshake(&mut self) {
        self.control(u32::MAX, event::DEVICE_READY, 1);
        for port in 0..PORTS as u32 {
            self.control(port, event::PORT_READY, 1);
        }
        self.messages();
        self.driver.used(CONTROL_TX);
    }
}

#[test]
fn the_handshake_adds_three_ports_connected_then_named() {
    let mut rig = rig();
    rig.control(u32::MAX, event::DEVICE_READY, 1);
    let added: Vec<_> = rig.messages().into_iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(added, [(0, 1), (1, 1), (2, 1)]);
    rig.control(1, event::PORT_READY, 1);
    let answers = rig.messages();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0], (1, event::PORT_OPEN, 1, vec![]));
    assert_eq!(
        answers[1],
        (1, event::PORT_NAME, 1, b"microrun.stderr".to_vec())
    );
    // The control transmit buffers all came back.
    assert_eq!(rig.driver.used(CONTROL_TX).len(), 2);
    assert!(rig.irqs.edges() > 0);
    // Ports the device does not have, and unknown events, get nothing.
    rig.control(3, event::PORT_READY, 1);
    rig.control(0, 99, 1);
    assert!(rig.messages().is_empty());
}

#[test]
fn transmitted_bytes_reach_the_ports_writers_in_order() {
    let mut rig = rig();
    rig.handshake();
    let a = rig.driver.alloc(b"hello, ", 7);
    let b = rig.driver.alloc(b"world\n", 6);
    rig.driver.add_raw(1, &[(a, 7, 0), (b, 6, 0)]);
    rig.driver.send(5, b"to stderr");
    rig.driver.send(7, b"dropped: the stdin port is input only");
    rig.console.queue_notify(1);
    rig.console.queue_notify(5);
    rig.console.queue_notify(7);
    assert_eq!(*lock(&rig.stdout.0), b"hello, world\n");
    assert_eq!(*lock(&rig.stderr.0), b"to stderr");
    assert_eq!(rig.driver.used(1), [(0, 0)]);
    assert_eq!(rig.driver.used(7).len(), 1);
}

#[test]
fn input_waits_for_the_guest_to_open_the_port_then_ends_with_eof() {
    let mut rig = rig();
    rig.handshake();
    let input = rig.console.input();
    let rx = rx_queue(STDIN_PORT);
    let buf = rig.driver.post_buffer(rx, 4);
    let buf2 = rig.driver.post_buffer(rx, 4096);
    assert_eq!(input.push(b"abcdef"), Some(6));
    input.close();
    assert!(rig.driver.used(rx).is_empty(), "input for a closed port");
    assert!(rig.messages().is_empty(), "no EOF before the data");
    rig.control(STDIN_PORT as u32, event::PORT_OPEN, 1);
    assert_eq!(rig.driver.used(rx), [(0, 4), (1, 2)]);
    let mut got = [0u8; 4];
    rig.driver
        .mem
        .read_slice(&mut got, GuestAddress(buf))
        .unwrap();
    assert_eq!(&got, b"abcd");
    rig.driver
        .mem
        .read_slice(&mut got[..2], GuestAddress(buf2))
        .unwrap();
    assert_eq!(&got[..2], b"ef");
    assert_eq!(
        rig.messages(),
        [(STDIN_PORT as u32, event::PORT_OPEN, 0, vec![])]
    );
}

#[test]
fn input_is_bounded_and_gone_with_the_device() {
    let rig = rig();
    let input = rig.console.input();
    assert_eq!(
        input.push(&vec![0; INPUT_CAPACITY + 10]),
        Some(INPUT_CAPACITY)
    );
    assert_eq!(input.push(b"x"), Some(0));
    drop(rig);
    assert_eq!(input.push(b"x"), None);
    input.close();
}

#[test]
fn a_port_readied_after_eof_starts_disconnected() {
    let mut rig = rig();
    rig.console.input().close();
    rig.control(u32::MAX, event::DEVICE_READY, 1);
    rig.messages();
    rig.control(STDIN_PORT as u32, event::PORT_READY, 1);
    let answers = rig.messages();
    assert_eq!(answers[0], (2, event::PORT_OPEN, 0, vec![]));
}

#[test]
fn hostile_chains_are_returned_and_nothing_breaks() {
    let mut rig = rig();
    rig.handshake();
    // Outside memory, huge, wrapping, write-only on a transmit queue.
    rig.driver.add_raw(1, &[(MEM - 4, 4096, 0)]);
    rig.driver.add_raw(1, &[(u64::MAX - 8, u32::MAX, 0)]);
    rig.driver.add_raw(1, &[(BUFFERS, 16, WRITE)]);
    rig.driver.add_raw(CONTROL_TX, &[(BUFFERS, 3, 0)]);
    // A descriptor whose next is itself.
    let at = GuestAddress(desc_table(5));
    rig.driver.mem.write_obj(BUFFERS, at).unwrap();
    rig.driver.mem.write_obj(8u32, at.unchecked_add(8)).unwrap();
    rig.driver
        .mem
        .write_obj(NEXT, at.unchecked_add(12))
        .unwrap();
    rig.driver
        .mem
        .write_obj(0u16, at.unchecked_add(14))
        .unwrap();
    rig.driver
        .mem
        .write_obj(0u16, GuestAddress(avail_ring(5) + 4))
        .unwrap();
    rig.driver
        .mem
        .write_obj(1u16, GuestAddress(avail_ring(5) + 2))
        .unwrap();
    (rig.driver.avail_idx[5], rig.driver.next_desc[5]) = (1, 1);
    for q in 0..QUEUES as u16 + 2 {
        rig.console.queue_notify(q);
    }
    assert_eq!(rig.driver.used(1).len(), 3);
    assert_eq!(rig.driver.used(CONTROL_TX).len(), 1);
    // An avail index far ahead of the ring: the queue is refused, once.
    rig.driver
        .mem
        .write_obj(
            rig.driver.avail_idx[1].wrapping_add(1000),
            GuestAddress(avail_ring(1) + 2),
        )
        .unwrap();
    rig.console.queue_notify(1);
    // Still answering on the other queues.
    rig.driver.send(5, b"ok");
    rig.console.queue_notify(5);
    assert!(lock(&rig.stderr.0).ends_with(b"ok"));
}

/// Descriptors read on this thread while `f` runs.
fn descriptors_read(f: impl FnOnce()) -> usize {
    let before = DESCRIPTORS_READ.with(|n| n.get());
    f();
    DESCRIPTORS_READ.with(|n| n.get()) - before
}

#[test]
fn indirect_chains_are_returned_unread() {
    let mut rig = rig();
    rig.handshake();
    // A full transmit queue of chains that each refer to an indirect
    // table of 65,535 one-byte buffers: followed, that would be 65,535
    // descriptors read and bytes written out per chain.
    let x = rig.driver.alloc(b"x", 1);
    let table = 0x20_0000;
    for i in 0..u16::MAX {
        let flags = if i + 1 < u16::MAX { NEXT } else { 0 };
        let at = GuestAddress(table + 16 * u64::from(i));
        rig.driver
            .mem
            .write_obj(Descriptor::new(x, 1, flags, i + 1), at)
            .unwrap();
    }
    for _ in 0..QUEUE_SIZE {
        rig.driver
            .add_raw(1, &[(table, 16 * u32::from(u16::MAX), INDIRECT)]);
    }
    let read = descriptors_read(|| rig.console.queue_notify(1));
    assert!(lock(&rig.stdout.0).is_empty());
    let used: Vec<_> = (0..u32::from(QUEUE_SIZE)).map(|id| (id, 0)).collect();
    assert_eq!(rig.driver.used(1), used);
    assert_eq!(read, usize::from(QUEUE_SIZE), "one descriptor per chain");

    // A control message behind one is not read: no answer.
    let ready = control_message(u32::MAX as usize, event::DEVICE_READY, 1, &[]);
    let msg = rig.driver.alloc(&ready, 8);
    let one = |addr, len, flags| Descriptor::new(addr, len, flags, 0);
    let to_msg = rig.driver.alloc(one(msg, 8, 0).as_slice(), 16);
    let head = rig.driver.add_raw(CONTROL_TX, &[(to_msg, 16, INDIRECT)]);
    rig.console.queue_notify(CONTROL_TX as u16);
    assert_eq!(rig.driver.used(CONTROL_TX), [(head.into(), 0)]);
    assert!(rig.messages().is_empty());

    // Nor is input written through one: that buffer comes back empty,
    // the next plain one gets the input.
    rig.control(STDIN_PORT as u32, event::PORT_OPEN, 1);
    let rx = rx_queue(STDIN_PORT);
    let hidden = rig.driver.alloc(&[0; 8], 8);
    let to_hidden = rig.driver.alloc(one(hidden, 8, WRITE).as_slice(), 16);
    rig.driver.add_raw(rx, &[(to_hidden, 16, INDIRECT | WRITE)]);
    rig.driver.post_buffer(rx, 8);
    assert_eq!(rig.console.input().push(b"abc"), Some(3));
    assert_eq!(rig.driver.used(rx), [(0, 0), (1, 3)]);
    let mut got = [1; 8];
    rig.driver
        .mem
        .read_slice(&mut got, GuestAddress(hidden))
        .unwrap();
    assert_eq!(got, [0; 8]);
}

#[test]
fn one_delivery_of_input_takes_a_bounded_number_of_chains() {
    let mut rig = rig();
    rig.handshake();
    rig.control(STDIN_PORT as u32, event::PORT_OPEN, 1);
    let rx = rx_queue(STDIN_PORT);
    // Another vCPU keeps the stdin port's receive queue full of buffers
    // without room (descriptor 0, all zeroes), as fast as the device
    // returns them; up to a limit, where an unbounded delivery would end.
    const LIMIT: u16 = 20_000;
    let mem = rig.driver.mem.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let feeder = {
        let (stop, started) = (stop.clone(), started.clone());
        std::thread::spawn(move || {
            let used_idx = GuestAddress(used_ring(rx) + 2);
            let avail_idx = GuestAddress(avail_ring(rx) + 2);
            mem.write_obj(QUEUE_SIZE, avail_idx).unwrap();
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                let used: u16 = mem.read_obj(used_idx).unwrap();
                if used >= LIMIT {
                    break;
                }
                mem.write_obj(used + QUEUE_SIZE, avail_idx).unwrap();
            }
        })
    };
    started.wait();
    assert_eq!(rig.console.input().push(b"x"), Some(1));
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let used: u16 = rig
        .driver
        .mem
        .read_obj(GuestAddress(used_ring(rx) + 2))
        .unwrap();
    assert!(
        usize::from(used) <= CHAINS_PER_NOTIFY,
        "{used} chains in one delivery"
    );
}

#[test]
fn random_rings_never_panic_or_hang() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next();
    for _ in 0..50 {
        let mut rig = rig();
        let input = rig.console.input();
        for _ in 0..200 {
            let q = (next() % QUEUES as u64) as usize;
            let at = GuestAddress(desc_table(q) + 16 * (next() % u64::from(QUEUE_SIZE)));
            rig.driver.mem.write_obj(next(), at).unwrap();
            rig.driver
                .mem
                .write_obj(next(), at.unchecked_add(8))
                .unwrap();
            let ring = GuestAddress(avail_ring(q) + 2 * (next() % 70));
            rig.driver.mem.write_obj(next() as u16, ring).unwrap();
            match next() % 4 {
                0 => {
                    let _ = input.push(&[7; 100]);
                }
                1 => input.close(),
                _ => rig.console.queue_notify((next() % 10) as u16),
            }
        }
        rig.console.reset();
        rig.console.queue_notify(1);
    }
}

/// The used ring's flags of queue `q`: 1 is `VRING_USED_F_NO_NOTIFY`.
fn used_flags(driver: &Driver, q: usize) -> u16 {
    driver.mem.read_obj(GuestAddress(used_ring(q))).unwrap()
}

#[test]
fn receive_queues_ask_for_kicks_only_while_something_waits() {
    let mut rig = rig();
    // Nothing waits: Linux's kick after each buffer it adds is not wanted.
    for q in [rx_queue(0), CONTROL_RX, rx_queue(1), rx_queue(STDIN_PORT)] {
        assert_eq!(used_flags(&rig.driver, q), 1, "queue {q}");
    }
    // The handshake's answers take 9 of the 16 control buffers: delivered
    // without a kick, and no kick is asked for after.
    rig.handshake();
    assert_eq!(used_flags(&rig.driver, CONTROL_RX), 1);
    // Answers with no buffer left wait, and ask for the next kick.
    for _ in 0..8 {
        rig.control(0, event::PORT_READY, 1);
    }
    assert_eq!(used_flags(&rig.driver, CONTROL_RX), 0, "a backlog waits");
    let waiting = rig.console.shared.lock().unwrap().control_out.len();
    assert!(waiting > 0);
    for _ in 0..waiting {
        let addr = rig.driver.post_buffer(CONTROL_RX, 4096);
        rig.control_buffers.push(addr);
    }
    rig.console.queue_notify(CONTROL_RX as u16);
    assert_eq!(rig.console.shared.lock().unwrap().control_out.len(), 0);
    assert_eq!(
        used_flags(&rig.driver, CONTROL_RX),
        1,
        "delivered: no kicks"
    );
    // Input for an open stdin port without a buffer asks for a kick too.
    rig.control(STDIN_PORT as u32, event::PORT_OPEN, 1);
    assert_eq!(rig.console.input().push(b"abc"), Some(3));
    assert_eq!(used_flags(&rig.driver, rx_queue(STDIN_PORT)), 0);
    rig.driver.post_buffer(rx_queue(STDIN_PORT), 64);
    rig.console.queue_notify(rx_queue(STDIN_PORT) as u16);
    assert_eq!(used_flags(&rig.driver, rx_queue(STDIN_PORT)), 1);
    assert!(rig.console.shared.lock().unwrap().input.is_empty());
}

#[test]
fn no_interrupt_while_the_driver_polls() {
    let mut rig = rig();
    rig.handshake();
    // VRING_AVAIL_F_NO_INTERRUPT (1) in stdout's transmit ring's flags,
    // then not: bytes go out either way, an interrupt only without it.
    let flags = GuestAddress(avail_ring(1));
    for (set, more) in [(1u16, 0), (0, 1)] {
        rig.driver.mem.write_obj(set, flags).unwrap();
        let edges = rig.irqs.edges();
        rig.driver.send(1, b"x");
        rig.console.queue_notify(1);
        assert_eq!(rig.irqs.edges(), edges + more, "flags {set}");
    }
    assert_eq!(*lock(&rig.stdout.0), b"xx");
}
