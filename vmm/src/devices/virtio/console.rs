//! A multiport virtio-console (virtio 1.2 §5.3) whose named ports carry
//! the program's streams: port 0 `microrun.stdout`, port 1
//! `microrun.stderr` (the caller's stdout and stderr), port 2
//! `microrun.stdin` (the caller's stdin, with an end of file).
//!
//! Queues: 0/1 are port 0's receive/transmit queues, 2/3 the control
//! queues (device to driver, driver to device), then two per further port
//! (4/5 for port 1, 6/7 for port 2).
//!
//! Everything the driver hands over is handled at once, on the vCPU
//! thread that made the QueueNotify exit: a transmit buffer is copied to
//! the caller's writer before the guest's `write` returns, so whatever the
//! program wrote before guest-init reports the status has reached the
//! output queues by then (the contract's ordering), and a writer that
//! falls behind holds the guest back, as a pipe would. Only the receive
//! side of the stdin port is fed from another thread (the stdin
//! forwarder, through [`ConsoleInput`]); it shares that side's state under
//! a lock.
//!
//! The handshake follows Linux's driver: DEVICE_READY from the driver is
//! answered with one PORT_ADD per port; each PORT_READY with PORT_OPEN(1)
//! and then PORT_NAME, so a port whose name guest-init can read is already
//! connected. Input is held until the guest opens the stdin port (the
//! driver discards input for a closed port); at the host's end of file,
//! once every byte is in the guest's buffers, PORT_OPEN(0) makes the
//! program's next `read` return 0.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, Weak};

use virtio_queue::{Queue, QueueT};

use super::{read_config_from, Activation, Interrupt, VirtioDevice, VirtioError};
use crate::devices::bus::lock;
use crate::layout::VIRTIO_CONSOLE_PORTS;
use crate::memory::GuestMemory;

/// The virtio device type of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Feature bit: the device has several ports and control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1;

/// Control events (`struct virtio_console_control.event`).
mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const PORT_ADD: u16 = 1;
    pub const PORT_READY: u16 = 3;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// Ports, in port-number order.
const STDOUT_PORT: usize = 0;
const STDERR_PORT: usize = 1;
const STDIN_PORT: usize = 2;
const PORTS: usize = VIRTIO_CONSOLE_PORTS.len();

/// Every queue holds this many entries at most. Linux fills each receive
/// queue with one page per entry: 64 keeps that near 1 MiB in all.
const QUEUE_SIZE: u16 = 64;
const QUEUES: usize = 2 * (PORTS + 1);
const QUEUE_SIZES: [u16; QUEUES] = [QUEUE_SIZE; QUEUES];

/// Queue indexes.
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;

/// The receive queue of `port`.
fn rx_queue(port: usize) -> usize {
    if port == 0 {
        0
    } else {
        2 + 2 * port
    }
}

/// The port whose transmit queue is `queue`, if it is one.
fn tx_port(queue: usize) -> Option<usize> {
    match queue {
        1 => Some(0),
        q if q >= 5 && q % 2 == 1 && (q - 3) / 2 < PORTS => Some((q - 3) / 2),
        _ => None,
    }
}

/// Bytes of a control message header: `{le32 id, le16 event, le16 value}`.
const CONTROL_HEADER: usize = 8;
/// A control message from the driver carries nothing more that matters.
const CONTROL_MESSAGE_MAX: usize = 64;
/// Control messages waiting for a buffer from the driver; a driver that
/// asks for more answers than it takes loses the rest.
const CONTROL_BACKLOG: usize = 64;
/// Host input held for the guest: the forwarder waits while it is full.
pub const INPUT_CAPACITY: usize = 64 << 10;
/// Descriptor chains one notification handles at most: a driver feeding a
/// queue from another vCPU cannot keep one vCPU thread here for ever (the
/// rest waits for the next notification, which Linux sends on every add).
const CHAINS_PER_NOTIFY: usize = 4 * QUEUE_SIZE as usize;
/// Bytes copied from guest memory per write to the caller's writer.
const COPY_CHUNK: usize = 64 << 10;

/// A control message as the driver reads it.
fn control_message(port: usize, event: u16, value: u16, extra: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CONTROL_HEADER + extra.len());
    msg.extend_from_slice(&(port as u32).to_le_bytes());
    msg.extend_from_slice(&event.to_le_bytes());
    msg.extend_from_slice(&value.to_le_bytes());
    msg.extend_from_slice(extra);
    msg
}

/// The guest's side of the run, once the driver set DRIVER_OK.
struct Active {
    mem: GuestMemory,
    interrupt: Interrupt,
}

/// What the vCPU threads and the stdin forwarder share: the receive
/// queues, the control messages waiting for a buffer, the input.
#[derive(Default)]
struct Shared {
    active: Option<Active>,
    /// The receive queues, by queue index (the transmit queues' slots are
    /// empty: those belong to the [`Console`] itself).
    rx: Vec<Option<Queue>>,
    /// The guest has the port open.
    guest_open: [bool; PORTS],
    control_out: VecDeque<Vec<u8>>,
    input: VecDeque<u8>,
    /// The host's stdin ended.
    input_eof: bool,
    /// PORT_OPEN(0) for the stdin port is queued.
    eof_sent: bool,
}

impl Shared {
    fn queue_control(&mut self, msg: Vec<u8>) {
        push_control(&mut self.control_out, msg);
    }

    /// Moves what is waiting into the buffers the driver gave: input
    /// first, then the control messages (so that the end of file follows
    /// the last byte), interrupting for each queue that used any.
    fn deliver(&mut self) {
        let Shared {
            active,
            rx,
            guest_open,
            control_out,
            input,
            input_eof,
            eof_sent,
        } = self;
        let Some(active) = active.as_ref() else {
            return;
        };
        if guest_open[STDIN_PORT] {
            if let Some(Some(queue)) = rx.get_mut(rx_queue(STDIN_PORT)) {
                let mut used = false;
                while !input.is_empty() {
                    let (a, b) = input.as_slices();
                    let first = if a.is_empty() { b } else { a };
                    let Some(n) = fill_one(queue, &active.mem, first) else {
                        break;
                    };
                    used = true;
                    input.drain(..n);
                }
                if used {
                    notify(queue, active);
                }
            }
        }
        if *input_eof && input.is_empty() && !*eof_sent {
            *eof_sent = true;
            let eof = control_message(STDIN_PORT, event::PORT_OPEN, 0, &[]);
            push_control(control_out, eof);
        }
        if let Some(Some(queue)) = rx.get_mut(CONTROL_RX) {
            let mut used = false;
            while let Some(msg) = control_out.front() {
                if fill_one(queue, &active.mem, msg).is_none() {
                    break;
                }
                used = true;
                control_out.pop_front();
            }
            if used {
                notify(queue, active);
            }
        }
    }
}

fn push_control(backlog: &mut VecDeque<Vec<u8>>, msg: Vec<u8>) {
    if backlog.len() < CONTROL_BACKLOG {
        backlog.push_back(msg);
    } else {
        log::debug!("virtio-console: control backlog full; message dropped");
    }
}

/// Interrupts the driver for the buffers just used in `queue`, unless it
/// asked not to be.
fn notify(queue: &mut Queue, active: &Active) {
    notify_with(queue, &active.mem, &active.interrupt);
}

fn notify_with(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            log::debug!("virtio-console: interrupt not delivered: {e}");
        }
    }
}

/// Writes as much of `data` as fits into the next buffer the driver made
/// available in `queue` and returns it, with how many bytes it took;
/// `None` when the driver has no buffer there. A broken chain is returned
/// empty (`Some(0)`).
fn fill_one(queue: &mut Queue, mem: &GuestMemory, data: &[u8]) -> Option<usize> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let written = match chain.writer(mem) {
        Ok(mut writer) => writer.write(data).unwrap_or(0),
        Err(e) => {
            log::debug!("virtio-console: receive buffer {head} unusable: {e}");
            0
        }
    };
    if let Err(e) = queue.add_used(mem, head, written as u32) {
        log::debug!("virtio-console: used ring not updated: {e}");
    }
    Some(written)
}

/// The host end of the stdin port, for the stdin forwarder. It holds the
/// device weakly, so the VM can be torn down while the forwarder waits.
#[derive(Clone)]
pub struct ConsoleInput {
    shared: Weak<Mutex<Shared>>,
}

impl ConsoleInput {
    /// Takes as much of `data` as there is room for and returns how many
    /// bytes; `None` once the device is gone.
    pub fn push(&self, data: &[u8]) -> Option<usize> {
        let shared = self.shared.upgrade()?;
        let mut shared = lock(&shared);
        let n = data.len().min(INPUT_CAPACITY - shared.input.len());
        shared.input.extend(&data[..n]);
        shared.deliver();
        Some(n)
    }

    /// The host's input ended: once the guest has every byte, its next
    /// read returns 0.
    pub fn close(&self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut shared = lock(&shared);
            shared.input_eof = true;
            shared.deliver();
        }
    }
}

/// The writers behind the output ports.
pub struct ConsoleOutputs {
    /// Port 0, the program's stdout.
    pub stdout: Box<dyn Write + Send>,
    /// Port 1, the program's stderr.
    pub stderr: Box<dyn Write + Send>,
}

/// The virtio-console device model.
pub struct Console {
    outputs: ConsoleOutputs,
    /// The transmit queues, by queue index (the receive queues' slots are
    /// empty: those are in [`Shared`]).
    tx: Vec<Option<Queue>>,
    shared: Arc<Mutex<Shared>>,
    /// Set when a writer failed: the VM is ending, output is dropped.
    output_failed: bool,
    buf: Vec<u8>,
}

impl Console {
    /// A console whose output ports write to `outputs`.
    pub fn new(outputs: ConsoleOutputs) -> Self {
        Self {
            outputs,
            tx: Vec::new(),
            shared: Arc::new(Mutex::new(Shared::default())),
            output_failed: false,
            buf: vec![0; COPY_CHUNK],
        }
    }

    /// The host end of the stdin port.
    pub fn input(&self) -> ConsoleInput {
        ConsoleInput {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Copies every buffer the driver queued on `port`'s transmit queue
    /// to its writer (the stdin port's are dropped), then hands them back.
    fn transmit(&mut self, queue_index: usize, port: usize) {
        let shared = lock(&self.shared);
        let Some(active) = &shared.active else {
            return;
        };
        let (mem, interrupt) = (active.mem.clone(), active.interrupt.clone());
        drop(shared);
        let Some(Some(queue)) = self.tx.get_mut(queue_index) else {
            return;
        };
        let mut used = false;
        for _ in 0..CHAINS_PER_NOTIFY {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            match chain.reader(&mem) {
                Ok(mut reader) => {
                    let out = match port {
                        STDOUT_PORT => Some(&mut self.outputs.stdout),
                        STDERR_PORT => Some(&mut self.outputs.stderr),
                        _ => None,
                    };
                    if let (Some(out), false) = (out, self.output_failed) {
                        if let Err(e) = copy_out(&mut reader, out, &mut self.buf) {
                            log::debug!("virtio-console: port {port} output failed: {e}");
                            self.output_failed = true;
                        }
                    }
                }
                Err(e) => log::debug!("virtio-console: transmit buffer {head} unusable: {e}"),
            }
            if let Err(e) = queue.add_used(&mem, head, 0) {
                log::debug!("virtio-console: used ring not updated: {e}");
            }
            used = true;
        }
        if used {
            notify_with(queue, &mem, &interrupt);
        }
    }

    /// Reads the driver's control messages and answers them.
    fn control(&mut self) {
        let mut shared = lock(&self.shared);
        let Some(active) = &shared.active else {
            return;
        };
        let (mem, interrupt) = (active.mem.clone(), active.interrupt.clone());
        let Some(Some(queue)) = self.tx.get_mut(CONTROL_TX) else {
            return;
        };
        let mut used = false;
        let mut messages = Vec::new();
        for _ in 0..CHAINS_PER_NOTIFY {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut msg = [0u8; CONTROL_MESSAGE_MAX];
            let n = match chain.reader(&mem) {
                Ok(mut reader) => read_up_to(&mut reader, &mut msg),
                Err(e) => {
                    log::debug!("virtio-console: control buffer {head} unusable: {e}");
                    0
                }
            };
            if n >= CONTROL_HEADER {
                messages.push(msg);
            }
            if let Err(e) = queue.add_used(&mem, head, 0) {
                log::debug!("virtio-console: used ring not updated: {e}");
            }
            used = true;
        }
        if used {
            notify_with(queue, &mem, &interrupt);
        }
        for msg in messages {
            handle_control(&mut shared, &msg);
        }
        shared.deliver();
    }
}

/// Reads until `buf` is full or the chain ends.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Copies everything `reader` holds to `out`, a chunk at a time.
fn copy_out(
    reader: &mut impl Read,
    out: &mut Box<dyn Write + Send>,
    buf: &mut [u8],
) -> std::io::Result<()> {
    loop {
        let n = read_up_to(reader, buf);
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}

/// One message from the driver.
fn handle_control(shared: &mut Shared, msg: &[u8]) {
    let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let event = u16::from_le_bytes([msg[4], msg[5]]);
    let value = u16::from_le_bytes([msg[6], msg[7]]);
    match event {
        event::DEVICE_READY if value == 1 => {
            for port in 0..PORTS {
                shared.queue_control(control_message(port, event::PORT_ADD, 0, &[]));
            }
        }
        event::PORT_READY if value == 1 => {
            let Some(port) = usize::try_from(id).ok().filter(|&p| p < PORTS) else {
                return;
            };
            // Connected first, named second: once guest-init can read the
            // name, writes do not block and reads do not see an end.
            let connected = !(port == STDIN_PORT && shared.eof_sent);
            let open = control_message(port, event::PORT_OPEN, connected.into(), &[]);
            shared.queue_control(open);
            let name = VIRTIO_CONSOLE_PORTS[port].as_bytes();
            shared.queue_control(control_message(port, event::PORT_NAME, 1, name));
        }
        event::PORT_OPEN => {
            if let Some(open) = usize::try_from(id)
                .ok()
                .and_then(|p| shared.guest_open.get_mut(p))
            {
                *open = value == 1;
            }
        }
        _ => log::debug!("virtio-console: control event {event} for port {id} ignored"),
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_CONSOLE_F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config: cols, rows (no F_SIZE: unused),
        // max_nr_ports, emerg_wr (no F_EMERG_WRITE: unused).
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&(PORTS as u32).to_le_bytes());
        read_config_from(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            queues,
            ..
        } = activation;
        for (index, queue) in queues.iter().enumerate() {
            if !queue.ready() && (index == CONTROL_RX || index == CONTROL_TX) {
                return Err(VirtioError::QueueNotReady {
                    device_type: VIRTIO_ID_CONSOLE,
                    index,
                });
            }
        }
        let mut rx = Vec::with_capacity(QUEUES);
        self.tx.clear();
        for (index, queue) in queues.into_iter().enumerate() {
            let is_tx = index == CONTROL_TX || tx_port(index).is_some();
            let queue = queue.ready().then_some(queue);
            if is_tx {
                self.tx.push(queue);
                rx.push(None);
            } else {
                self.tx.push(None);
                rx.push(queue);
            }
        }
        let mut shared = lock(&self.shared);
        shared.rx = rx;
        shared.active = Some(Active { mem, interrupt });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        let index = usize::from(index);
        if index == CONTROL_TX {
            self.control();
        } else if let Some(port) = tx_port(index) {
            self.transmit(index, port);
        } else {
            // New receive buffers: what waited for them goes now.
            lock(&self.shared).deliver();
        }
    }

    fn reset(&mut self) {
        self.tx.clear();
        let mut shared = lock(&self.shared);
        shared.active = None;
        shared.rx.clear();
        shared.guest_open = [false; PORTS];
        shared.control_out.clear();
        shared.eof_sent = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{Counter, XorShift};
    use super::*;
    use vm_memory::{Address, Bytes, GuestAddress};

    const MEM: u64 = 0x40_0000;
    /// Each queue's rings live in a page of their own from here.
    const RINGS: u64 = 0x1000;
    /// Buffers from here.
    const BUFFERS: u64 = 0x4_0000;
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

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

    /// A minimal split-ring driver: descriptors, avail and used rings of
    /// every queue in guest memory, as Linux's would be.
    struct Driver {
        mem: GuestMemory,
        next_desc: [u16; QUEUES],
        avail_idx: [u16; QUEUES],
        used_seen: [u16; QUEUES],
        next_buf: u64,
    }

    fn desc_table(q: usize) -> u64 {
        RINGS + q as u64 * 0x1000
    }
    fn avail_ring(q: usize) -> u64 {
        desc_table(q) + 0x400
    }
    fn used_ring(q: usize) -> u64 {
        desc_table(q) + 0x600
    }

    impl Driver {
        fn new() -> Self {
            let mem = crate::memory::create_guest_memory(MEM).unwrap();
            Self {
                mem,
                next_desc: [0; QUEUES],
                avail_idx: [0; QUEUES],
                used_seen: [0; QUEUES],
                next_buf: BUFFERS,
            }
        }

        fn queues(&self) -> Vec<Queue> {
            (0..QUEUES)
                .map(|q| {
                    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
                    queue.set_size(QUEUE_SIZE);
                    queue.set_desc_table_address(Some(desc_table(q) as u32), Some(0));
                    queue.set_avail_ring_address(Some(avail_ring(q) as u32), Some(0));
                    queue.set_used_ring_address(Some(used_ring(q) as u32), Some(0));
                    queue.set_ready(true);
                    queue
                })
                .collect()
        }

        fn alloc(&mut self, data: &[u8], len: u32) -> u64 {
            let addr = self.next_buf;
            self.next_buf += u64::from(len).next_multiple_of(16);
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
            addr
        }

        /// Makes a chain of `(addr, len, flags)` available on queue `q`.
        fn add_raw(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc[q];
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = (head + i as u16) % QUEUE_SIZE;
                let next = (index + 1) % QUEUE_SIZE;
                let flags = if i + 1 < descs.len() {
                    flags | NEXT
                } else {
                    flags
                };
                let at = GuestAddress(desc_table(q) + 16 * u64::from(index));
                self.mem.write_obj(addr, at).unwrap();
                self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
                self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
                self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
            }
            self.next_desc[q] = (head + descs.len() as u16) % QUEUE_SIZE;
            let slot = u64::from(self.avail_idx[q] % QUEUE_SIZE);
            self.mem
                .write_obj(head, GuestAddress(avail_ring(q) + 4 + 2 * slot))
                .unwrap();
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx[q], GuestAddress(avail_ring(q) + 2))
                .unwrap();
            head
        }

        fn send(&mut self, q: usize, data: &[u8]) {
            let addr = self.alloc(data, data.len() as u32);
            self.add_raw(q, &[(addr, data.len() as u32, 0)]);
        }

        fn post_buffer(&mut self, q: usize, len: u32) -> u64 {
            let addr = self.alloc(&vec![0; len as usize], len);
            self.add_raw(q, &[(addr, len, WRITE)]);
            addr
        }

        /// The used entries since the last call: (descriptor id, length).
        fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(used_ring(q) + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen[q] != idx {
                let slot = u64::from(self.used_seen[q] % QUEUE_SIZE);
                let at = GuestAddress(used_ring(q) + 4 + 8 * slot);
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                out.push((id, len));
                self.used_seen[q] = self.used_seen[q].wrapping_add(1);
            }
            out
        }

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
        let driver = Driver::new();
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
}
