//! The virtio-net device against a minimal driver that lays out both
//! rings in guest memory, with a socketpair standing in for passt: frames
//! each way, mergeable buffers, backpressure each way, garbage chains, a
//! peer that goes away, the configuration space, reset and the end.

use super::*;
use crate::devices::virtio::test_util::{self, Counter, Driver, XorShift, BUFFERS};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 64 << 20;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const SIZE: u16 = QUEUE_SIZE;
const RX: usize = RX_QUEUE as usize;
const TX: usize = TX_QUEUE as usize;
const MAC: [u8; 6] = [0x02, 0x6d, 0x72, 0x00, 0x00, 0x01];
/// Long enough for a loaded machine, short enough for a hang to fail.
const PATIENCE: Duration = Duration::from_secs(10);

fn avail_ring(q: usize) -> u64 {
    test_util::avail_ring(q, SIZE)
}

/// What the tests here ask of the shared split-ring driver besides.
impl Driver {
    fn for_net() -> Self {
        Driver::new(MEM, 2, SIZE)
    }

    /// A frame to send: the (zero) header and the frame, one descriptor.
    fn transmit(&mut self, frame: &[u8]) -> u16 {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(frame);
        let len = bytes.len() as u32;
        let addr = self.alloc(&bytes, len);
        self.add_raw(TX, &[(addr, len, 0)])
    }

    /// A receive buffer of `len` bytes; its address.
    fn post(&mut self, len: u32) -> u64 {
        self.post_buffer(RX, len)
    }

    /// Waits until `q` has `n` more used entries, and returns them.
    fn wait_used(&mut self, q: usize, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.used(q));
            assert!(
                Instant::now() < deadline,
                "queue {q}: {} of {n} used entries after {PATIENCE:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

/// A device, its driver, and the socket's other end (passt's).
struct Rig {
    net: Net,
    driver: Driver,
    peer: UnixStream,
    irqs: Arc<Counter>,
}

fn spec(mtu: u16) -> NetSpec {
    NetSpec { mac: MAC, mtu }
}

fn rig_with(mtu: u16, features: u64) -> Rig {
    let (ours, peer) = UnixStream::pair().unwrap();
    let mut net = Net::new(spec(mtu), ours.into(), None).unwrap();
    let driver = Driver::for_net();
    let irqs = Arc::new(Counter::default());
    net.activate(Activation {
        mem: driver.mem.clone(),
        interrupt: Interrupt::new(irqs.clone()),
        queues: driver.queues(),
        features,
    })
    .unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    Rig {
        net,
        driver,
        peer,
        irqs,
    }
}

fn mergeable() -> u64 {
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_NET_F_MAC)
}

fn rig() -> Rig {
    rig_with(65520, mergeable())
}

/// An Ethernet frame of `len` bytes whose content says `seed`.
fn frame(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn prefixed(frame: &[u8]) -> Vec<u8> {
    let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(frame);
    wire
}

impl Rig {
    /// Reads one frame from the wire, as passt would.
    fn wire_frame(&mut self) -> Vec<u8> {
        let mut prefix = [0u8; 4];
        self.peer.read_exact(&mut prefix).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.peer.read_exact(&mut frame).unwrap();
        frame
    }

    fn kick(&mut self, q: usize) {
        self.net.queue_notify(q as u16);
    }

    /// The configuration's `status` field.
    fn link_status(&self) -> u16 {
        let mut status = [0u8; 2];
        self.net.read_config(6, &mut status);
        u16::from_le_bytes(status)
    }

    /// Waits until the device reports its link down.
    fn wait_link_down(&self, why: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.link_status() != 0 {
            assert!(Instant::now() < deadline, "{why}: the link stays up");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_transmitted_frame_reaches_the_socket_behind_its_length_without_the_header() {
    let mut rig = rig();
    let sent = frame(1514, 1);
    let head = rig.driver.transmit(&sent);
    // A frame over two descriptors, the header split across them.
    let second = frame(60, 2);
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes.extend_from_slice(&second);
    let a = rig.driver.alloc(&bytes[..5], 5);
    let b = rig.driver.alloc(&bytes[5..], (bytes.len() - 5) as u32);
    rig.driver
        .add_raw(TX, &[(a, 5, 0), (b, (bytes.len() - 5) as u32, 0)]);
    rig.kick(TX);
    assert_eq!(rig.wire_frame(), sent);
    assert_eq!(rig.wire_frame(), second);
    let used = rig.driver.wait_used(TX, 2);
    assert_eq!(used, [(u32::from(head), 0), (u32::from(head) + 1, 0)]);
    assert!(rig.irqs.edges() > 0);
}

#[test]
fn a_frame_from_the_socket_lands_in_a_receive_buffer_behind_a_header() {
    let mut rig = rig();
    let addr = rig.driver.post(4096);
    rig.kick(RX);
    let sent = frame(98, 3);
    rig.peer.write_all(&prefixed(&sent)).unwrap();
    let used = rig.driver.wait_used(RX, 1);
    assert_eq!(used, [(0, (HEADER_LEN + sent.len()) as u32)]);
    let got = rig.driver.read(addr, HEADER_LEN + sent.len());
    let mut header = [0u8; HEADER_LEN];
    header[10] = 1; // num_buffers
    assert_eq!(got[..HEADER_LEN], header);
    assert_eq!(got[HEADER_LEN..], sent[..]);
    assert!(rig.irqs.edges() > 0);
}

#[test]
fn a_large_frame_spans_mergeable_buffers_with_their_count_in_the_header() {
    let mut rig = rig();
    let addrs: Vec<u64> = (0..40).map(|_| rig.driver.post(4096)).collect();
    rig.kick(RX);
    let big = frame(65534, 4);
    let small = frame(60, 5);
    let mut wire = prefixed(&big);
    wire.extend(prefixed(&small));
    rig.peer.write_all(&wire).unwrap();
    let need = (HEADER_LEN + big.len()).div_ceil(4096);
    let used = rig.driver.wait_used(RX, need + 1);
    let mut got = Vec::new();
    for (i, &(id, len)) in used[..need].iter().enumerate() {
        assert_eq!(id as usize, i);
        let full = i + 1 < need;
        assert!(!full || len == 4096, "buffer {i} holds {len}");
        got.extend(rig.driver.read(addrs[i], len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]) as usize, need);
    assert_eq!(got[HEADER_LEN..], big[..]);
    let (id, len) = used[need];
    assert_eq!(id as usize, need);
    let got = rig.driver.read(addrs[need], len as usize);
    assert_eq!((got[10], &got[HEADER_LEN..]), (1, &small[..]));
}

#[test]
fn without_mergeable_buffers_a_frame_takes_one_chain_or_is_dropped() {
    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MTU);
    let mut rig = rig_with(1500, features);
    let small = rig.driver.post(100);
    let fits = rig.driver.post(1526);
    rig.kick(RX);
    let (too_big, ok) = (frame(1000, 6), frame(1000, 7));
    let mut wire = prefixed(&too_big);
    wire.extend(prefixed(&ok));
    rig.peer.write_all(&wire).unwrap();
    // The first frame does not fit its chain: the chain comes back empty.
    assert_eq!(rig.driver.wait_used(RX, 2), [(0, 0), (1, 1012)]);
    assert_eq!(rig.driver.read(fits + HEADER_LEN as u64, 1000), ok);
    let _ = small;
}

#[test]
fn frames_over_the_mtu_are_skipped_either_way() {
    let mut rig = rig_with(1500, mergeable());
    rig.driver.post(4096);
    rig.driver.post(4096);
    rig.kick(RX);
    // The MTU, an Ethernet header and a VLAN tag (1518) pass; more not.
    let (big, ok) = (frame(1519, 8), frame(1518, 9));
    let mut wire = prefixed(&big);
    wire.extend(prefixed(&ok));
    rig.peer.write_all(&wire).unwrap();
    assert_eq!(rig.driver.wait_used(RX, 1), [(0, 1530)]);
    assert!(rig.driver.used(RX).is_empty());
    // From the guest: returned, not sent; the next one is.
    rig.driver.transmit(&big);
    rig.driver.transmit(&ok);
    rig.kick(TX);
    assert_eq!(rig.wire_frame(), ok);
    assert_eq!(rig.driver.wait_used(TX, 2).len(), 2);
}

#[test]
fn a_guest_without_receive_buffers_stops_the_device_reading_the_socket() {
    let mut rig = rig();
    rig.peer.set_nonblocking(true).unwrap();
    let one = prefixed(&frame(65534, 10));
    // Write until the socket is full: the device read some, then stopped.
    let mut written = 0usize;
    let deadline = Instant::now() + PATIENCE;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "the device keeps reading");
        match rig.peer.write(&one[written % one.len()..]) {
            Ok(n) => {
                written += n;
                quiet_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The device holds at most its buffer's worth; the rest waits in the
    // socket, whatever passt has.
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(rig.net.socket.as_raw_fd(), libc::FIONREAD, &mut unread) };
    let held = written - unread as usize;
    assert!(held <= RX_BUFFER, "the device took {held} bytes");
    assert!(unread > 0, "the device read everything ({written} bytes)");
    // Buffers come: the frames arrive whole and in order.
    let addrs: Vec<u64> = (0..40).map(|_| rig.driver.post(4096)).collect();
    rig.kick(RX);
    let used = rig.driver.wait_used(RX, 34);
    for (n, chunk) in used[..34].chunks(17).enumerate() {
        let mut got = Vec::new();
        for &(id, len) in chunk {
            got.extend(rig.driver.read(addrs[id as usize], len as usize));
        }
        assert_eq!(got[HEADER_LEN..], one[4..], "frame {n}");
    }
}

#[test]
fn a_socket_that_does_not_read_stops_the_device_taking_frames() {
    let mut rig = rig();
    let sent = frame(65534, 11);
    for _ in 0..SIZE {
        rig.driver.transmit(&sent);
    }
    rig.kick(TX);
    // The device takes what the socket and its buffer hold, then waits.
    let deadline = Instant::now() + PATIENCE;
    let mut taken = 0;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "the device keeps taking frames");
        let n = rig.driver.used(TX).len();
        if n > 0 {
            taken += n;
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(taken < usize::from(SIZE), "all {taken} frames taken");
    // passt reads: every frame arrives, whole and in order.
    for i in 0..SIZE {
        assert_eq!(rig.wire_frame(), sent, "frame {i}");
    }
    assert_eq!(
        taken + rig.driver.wait_used(TX, usize::from(SIZE) - taken).len(),
        256
    );
}

#[test]
fn garbage_chains_come_back_empty_and_the_device_goes_on() {
    let mut rig = rig();
    let good = rig.driver.alloc(&[0; 4096], 4096);
    // Receive side: a loop, an index past the table, a buffer outside
    // memory, a read-only buffer, then a good one.
    rig.driver.write_desc(RX, 0, (good, 64, WRITE | NEXT, 0));
    rig.driver.publish(RX, 0);
    rig.driver.write_desc(RX, 1, (good, 64, WRITE | NEXT, 999));
    rig.driver.publish(RX, 1);
    rig.driver.write_desc(RX, 2, (MEM - 8, 64, WRITE, 0));
    rig.driver.publish(RX, 2);
    rig.driver.write_desc(RX, 3, (good, 64, 0, 0));
    rig.driver.publish(RX, 3);
    rig.driver.write_desc(RX, 4, (good, 4096, WRITE, 0));
    rig.driver.publish(RX, 4);
    rig.kick(RX);
    let sent = frame(100, 12);
    rig.peer.write_all(&prefixed(&sent)).unwrap();
    let used = rig.driver.wait_used(RX, 5);
    assert_eq!(used, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 112)]);
    assert_eq!(rig.driver.read(good + HEADER_LEN as u64, 100), sent);
    // Transmit side: the same garbage, a short chain, then a frame.
    rig.driver.write_desc(TX, 0, (good, 64, NEXT, 0));
    rig.driver.publish(TX, 0);
    rig.driver.write_desc(TX, 1, (u64::MAX - 4, 64, 0, 0));
    rig.driver.publish(TX, 1);
    rig.driver.write_desc(TX, 2, (good, 20, 0, 0));
    rig.driver.publish(TX, 2);
    rig.driver.next_desc[TX] = 3;
    rig.driver.transmit(&sent);
    rig.kick(TX);
    assert_eq!(rig.wire_frame(), sent);
    assert_eq!(rig.driver.wait_used(TX, 4).len(), 4);
}

#[test]
fn a_ring_flooded_with_garbage_costs_bounded_work() {
    let mut rig = rig();
    // Every head is a loop through the whole table.
    for i in 0..SIZE {
        rig.driver
            .write_desc(RX, i, (BUFFERS, 1, WRITE | NEXT, (i + 1) % SIZE));
    }
    for i in 0..SIZE {
        rig.driver.publish(RX, i);
    }
    rig.kick(RX);
    rig.peer.write_all(&prefixed(&frame(60, 13))).unwrap();
    assert_eq!(rig.driver.wait_used(RX, usize::from(SIZE)).len(), 256);
    // The frame waits for a real buffer.
    let addr = rig.driver.alloc(&[0; 256], 256);
    rig.driver.write_desc(RX, 0, (addr, 256, WRITE, 0));
    rig.driver.publish(RX, 0);
    rig.kick(RX);
    assert_eq!(rig.driver.wait_used(RX, 1), [(0, 72)]);
}

#[test]
fn a_peer_that_goes_away_takes_the_link_down_and_frames_are_dropped() {
    let mut rig = rig();
    let edges = rig.irqs.edges();
    let mut config = [0u8; 2];
    rig.net.read_config(6, &mut config);
    assert_eq!(u16::from_le_bytes(config), VIRTIO_NET_S_LINK_UP as u16);
    drop(std::mem::replace(
        &mut rig.peer,
        UnixStream::pair().unwrap().0,
    ));
    let deadline = Instant::now() + PATIENCE;
    loop {
        rig.net.read_config(6, &mut config);
        if config == [0, 0] {
            break;
        }
        assert!(Instant::now() < deadline, "the link stays up");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(rig.irqs.edges() > edges);
    // The guest's frames still come back.
    for _ in 0..8 {
        rig.driver.transmit(&frame(60, 14));
    }
    rig.kick(TX);
    assert_eq!(rig.driver.wait_used(TX, 8).len(), 8);
}

#[test]
fn a_length_no_frame_has_stops_the_receive_side() {
    for len in [0u32, 13, 70000, u32::MAX] {
        let mut rig = rig();
        rig.driver.post(4096);
        rig.kick(RX);
        rig.peer.write_all(&len.to_be_bytes()).unwrap();
        rig.wait_link_down(&format!("length {len}"));
        assert!(rig.driver.used(RX).is_empty());
    }
}

#[test]
fn features_and_configuration_space() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let net = Net::new(spec(65520), ours.into(), None).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), [256, 256]);
    let want = [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
    ]
    .iter()
    .fold(0u64, |f, b| f | 1 << b);
    assert_eq!(net.features(), want);
    let mut config = [0xaau8; 16];
    net.read_config(0, &mut config[..12]);
    assert_eq!(config[..6], MAC);
    assert_eq!(config[6..8], [1, 0]); // link up
    assert_eq!(config[8..10], [1, 0]); // one queue pair
    assert_eq!(config[10..12], 65520u16.to_le_bytes());
    let mut odd = [0u8; 3];
    net.read_config(10, &mut odd);
    assert_eq!(odd, [0xf0, 0xff, 0]);
    net.read_config(u64::MAX, &mut odd);
    assert_eq!(odd, [0xf0, 0xff, 0]);
}

#[test]
fn bad_specs_and_backends_are_refused_with_the_fix() {
    let socket = || UnixStream::pair().unwrap().0.into();
    let e = Net::new(spec(67), socket(), None).err().unwrap();
    assert!(e.to_string().contains("between 68 and 65535"), "{e}");
    for mac in [[0; 6], [1, 0, 0, 0, 0, 1]] {
        let e = Net::new(NetSpec { mac, mtu: 1500 }, socket(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("unicast"), "{e}");
    }
    let file = std::fs::File::open("/dev/null").unwrap();
    let e = Net::new(spec(1500), file.into(), None).err().unwrap();
    assert!(matches!(e, NetError::NotAStream { .. }), "{e}");
    let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let e = Net::new(spec(1500), a.into(), None).err().unwrap();
    assert!(matches!(e, NetError::NotAStream { .. }), "{e}");
}

#[test]
fn after_a_reset_the_device_leaves_guest_memory_alone_until_activated() {
    let mut rig = rig();
    let addr = rig.driver.post(4096);
    rig.kick(RX);
    rig.net.reset();
    rig.peer.write_all(&prefixed(&frame(60, 15))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(rig.driver.used(RX).is_empty());
    assert_eq!(rig.driver.read(addr, 16), [0; 16]);
    // A new driver: the frame that waited goes to its buffer.
    let driver = Driver::for_net();
    rig.net
        .activate(Activation {
            mem: driver.mem.clone(),
            interrupt: Interrupt::new(rig.irqs.clone()),
            queues: driver.queues(),
            features: mergeable(),
        })
        .unwrap();
    rig.driver = driver;
    rig.driver.post(4096);
    rig.kick(RX);
    assert_eq!(rig.driver.wait_used(RX, 1), [(0, 72)]);
}

#[test]
fn activation_needs_both_queues() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let mut net = Net::new(spec(1500), ours.into(), None).unwrap();
    let driver = Driver::for_net();
    let mut queues = driver.queues();
    queues[1].set_ready(false);
    let irq = Interrupt::new(Arc::new(Counter::default()));
    let activation = |queues| Activation {
        mem: driver.mem.clone(),
        interrupt: irq.clone(),
        queues,
        features: mergeable(),
    };
    assert!(matches!(
        net.activate(activation(queues)),
        Err(VirtioError::QueueNotReady { index: 1, .. })
    ));
    assert!(net.activate(activation(Vec::new())).is_err());
}

#[test]
fn dropping_the_device_ends_its_threads_even_while_they_wait() {
    let mut rig = rig();
    // The transmit thread waits in a full socket, the receive thread for
    // buffers with a frame in hand.
    for _ in 0..SIZE {
        rig.driver.transmit(&frame(65534, 16));
    }
    rig.kick(TX);
    rig.peer.write_all(&prefixed(&frame(60, 17))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    drop(rig.net);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Set in the child process of [`both_directions_run_under_the_net_filter`].
const FILTER_CHILD: &str = "VMM_NET_FILTER_CHILD";

/// The device's threads under their seccomp filter, and its drop under
/// the supervisor's: a forbidden call ends the process with 125, so the
/// case runs in a child (this test binary again).
#[test]
fn both_directions_run_under_the_net_filter() {
    const NAME: &str = "devices::virtio::net::tests::both_directions_run_under_the_net_filter";
    if std::env::var_os(FILTER_CHILD).is_some() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let fds = crate::seccomp::Descriptors {
            disks: Vec::new(),
            net_socket: Some(ours.as_raw_fd()),
        };
        let filter = crate::seccomp::filter_for(ThreadKind::Net, &fds).unwrap();
        let mut net = Net::new(spec(65520), ours.into(), Some(filter)).unwrap();
        let driver = Driver::for_net();
        net.activate(Activation {
            mem: driver.mem.clone(),
            interrupt: Interrupt::new(Arc::new(Counter::default())),
            queues: driver.queues(),
            features: mergeable(),
        })
        .unwrap();
        let mut rig = Rig {
            net,
            driver,
            peer,
            irqs: Arc::new(Counter::default()),
        };
        let sent = frame(9000, 18);
        rig.driver.transmit(&sent);
        rig.kick(TX);
        assert_eq!(rig.wire_frame(), sent);
        for _ in 0..4 {
            rig.driver.post(4096);
        }
        rig.kick(RX);
        rig.peer.write_all(&prefixed(&sent)).unwrap();
        rig.driver.wait_used(RX, 3);
        // The peer goes away: both threads see it.
        drop(std::mem::replace(
            &mut rig.peer,
            UnixStream::pair().unwrap().0,
        ));
        rig.driver.transmit(&sent);
        rig.kick(TX);
        rig.driver.wait_used(TX, 2);
        let supervisor = crate::seccomp::filter_for(ThreadKind::Supervisor, &fds).unwrap();
        let net = rig.net;
        let dropped = crate::seccomp::spawn(
            "supervisor".into(),
            ThreadKind::Supervisor,
            Some(supervisor),
            move || drop(net),
        )
        .unwrap();
        dropped.join().unwrap();
        eprintln!("both directions done");
        std::process::exit(0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env(FILTER_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("both directions done"), "{stderr}");
}

#[test]
fn no_interrupt_while_the_driver_polls() {
    let mut rig = rig();
    // VRING_AVAIL_F_NO_INTERRUPT (1), as Linux's NAPI sets it while it
    // polls, then clear: one frame each, an interrupt for the second.
    let edges = rig.irqs.edges();
    for (seed, flags) in [(19, 1u16), (20, 0)] {
        let avail_flags = GuestAddress(avail_ring(RX));
        rig.driver.mem.write_obj(flags, avail_flags).unwrap();
        rig.driver.post(4096);
        rig.kick(RX);
        rig.peer.write_all(&prefixed(&frame(60, seed))).unwrap();
        rig.driver.wait_used(RX, 1);
        assert_eq!(rig.irqs.edges(), edges + usize::from(flags == 0));
    }
}

#[test]
fn an_avail_index_past_the_ring_does_not_keep_the_device_busy() {
    let mut rig = rig();
    let (ours, theirs) = std::sync::mpsc::channel();
    for q in [RX, TX] {
        // More than the ring's size ahead: nothing to take, yet "more".
        rig.driver.avail_idx[q] = 1000;
        rig.driver
            .mem
            .write_obj(1000u16, GuestAddress(avail_ring(q) + 2))
            .unwrap();
        rig.kick(q);
    }
    // A frame for the receive side to hold while the ring says "more".
    rig.peer.write_all(&prefixed(&frame(60, 23))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The threads wait for the driver rather than spin with the locks:
    // a reset (the vCPU's) gets through.
    let mut net = rig.net;
    std::thread::spawn(move || {
        net.reset();
        ours.send(net).unwrap();
    });
    let net = theirs
        .recv_timeout(PATIENCE)
        .expect("the reset waits for ever");
    drop(net);
}
