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

use super::{pop_chain, read_config_from, Activation, Interrupt, VirtioDevice, VirtioError};
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
/// Descriptor chains one notification (or one delivery of input)
/// handles at most: a driver feeding a queue from another vCPU cannot
/// keep one vCPU thread (or the stdin forwarder) here for ever; the rest
/// waits for the next notification, which Linux sends on every add. With
/// at most [`QUEUE_SIZE`] descriptors a chain, that bounds the
/// descriptors read per notification too.
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
    ///
    /// The driver is asked to kick a receive queue (`VRING_USED_F_NO_NOTIFY`
    /// clear) only while something waits for a buffer there: Linux kicks
    /// after every buffer it adds (64 per queue at start, one per message
    /// read after), each an exit, and the device reads the ring whenever
    /// it has something to deliver anyway. After asking, the ring is read
    /// once more, for buffers added before the driver saw the request.
    fn deliver(&mut self) {
        for _ in 0..2 {
            if !self.deliver_once() {
                return;
            }
        }
    }

    /// One pass of [`Shared::deliver`]; true when buffers came while the
    /// kicks were being turned back on, so that another pass is due.
    fn deliver_once(&mut self) -> bool {
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
            return false;
        };
        let mut again = false;
        if guest_open[STDIN_PORT] {
            if let Some(Some(queue)) = rx.get_mut(rx_queue(STDIN_PORT)) {
                let (mut used, mut starved) = (false, false);
                // Bounded by chains, not bytes: a chain may take none
                // (a broken or empty buffer).
                for _ in 0..CHAINS_PER_NOTIFY {
                    if input.is_empty() {
                        break;
                    }
                    let (a, b) = input.as_slices();
                    let first = if a.is_empty() { b } else { a };
                    let Some(n) = fill_one(queue, &active.mem, first) else {
                        starved = true;
                        break;
                    };
                    used = true;
                    input.drain(..n);
                }
                if used {
                    notify(queue, active);
                }
                // Past the bound, the rest waits for the next kick.
                let came = want_kicks(queue, &active.mem, !input.is_empty());
                again |= starved && came;
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
            again |= want_kicks(queue, &active.mem, !control_out.is_empty());
        }
        again
    }
}

/// Asks the driver to kick `queue` when something is `waiting` for a
/// buffer there, else not to; true when the ring holds buffers not yet
/// seen (added before the driver could see the request).
fn want_kicks(queue: &mut Queue, mem: &GuestMemory, waiting: bool) -> bool {
    if waiting {
        queue.enable_notification(mem).unwrap_or(false)
    } else {
        let _ = queue.disable_notification(mem);
        false
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
    if let Err(e) = interrupt.notify_used(queue, mem) {
        log::debug!("virtio-console: interrupt not delivered: {e}");
    }
}

/// Writes as much of `data` as fits into the next buffer the driver made
/// available in `queue` and returns it, with how many bytes it took;
/// `None` when the driver has no buffer there. A broken chain is returned
/// empty (`Some(0)`).
fn fill_one(queue: &mut Queue, mem: &GuestMemory, data: &[u8]) -> Option<usize> {
    let (head, chain) = pop_chain(queue, mem)?;
    let written = match chain {
        Ok(chain) => chain.writer(mem).write(data).unwrap_or(0),
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
            let Some((head, chain)) = pop_chain(queue, &mem) else {
                break;
            };
            match chain {
                Ok(chain) => {
                    let mut reader = chain.reader(&mem);
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
            let Some((head, chain)) = pop_chain(queue, &mem) else {
                break;
            };
            let mut msg = [0u8; CONTROL_MESSAGE_MAX];
            let n = match chain {
                Ok(chain) => read_up_to(&mut chain.reader(&mem), &mut msg),
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
        // Nothing waits for a receive buffer yet: no kicks for them.
        for queue in rx.iter_mut().flatten() {
            let _ = queue.disable_notification(&mem);
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
mod tests;
