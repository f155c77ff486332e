//! A virtio-net device (virtio 1.2 §5.1) whose other end is passt: a
//! connected `SOCK_STREAM` socket carrying Ethernet frames, each preceded
//! by its length as 4 bytes, big-endian (passt's `qemu` framing, the one
//! QEMU's `-netdev stream` speaks). No `virtio_net_hdr` goes on the wire.
//!
//! Queues: 0 receive (socket to guest), 1 transmit (guest to socket).
//! Features: `MAC`, `MTU`, `STATUS` and `MRG_RXBUF` (with the transport's
//! `VERSION_1`), nothing else: no checksum or segmentation offload, since
//! the stream has no header to say a checksum is partial, so every frame
//! either way is whole and checksummed. With `MRG_RXBUF` Linux posts
//! receive buffers sized to the traffic (about a page each) and the
//! device spreads a large frame over several, so the MTU can be passt's
//! 65520 without the "big packets" mode, where every receive buffer, even
//! one for a 60-byte ACK, is 17 pages in 17 descriptors.
//!
//! Each direction has a thread of its own under the `net` seccomp filter
//! ([`crate::seccomp::ThreadKind::Net`]), doing blocking I/O on the
//! socket; the vCPU threads only pass on the driver's notifications and
//! its activation and reset ([`rx`], [`tx`]). Both buffers are bounded:
//! the receive thread stops reading the socket while the guest has no
//! buffer for the frame it holds, and the transmit thread stops taking
//! chains while a write to the socket blocks. Every touch of guest memory
//! is made under the queue's lock, so once [`VirtioDevice::reset`]
//! returns, the device leaves guest memory alone.
//!
//! When passt closes the socket (it died) the device says so once (a
//! warning), reports the link down (`VIRTIO_NET_S_LINK_UP` cleared, a
//! configuration interrupt) and drops what the guest sends. Dropping the
//! device (the VM's end) shuts the socket down and joins both threads.

mod rx;
mod tx;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};

use super::{read_config_from, Activation, Interrupt, VirtioDevice, VirtioError};
use crate::devices::bus::lock;
use crate::memory::GuestMemory;
use crate::seccomp::{self, ThreadKind};
use crate::NetSpec;

/// The virtio device type of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Entries of each queue, as QEMU's default. Linux's mergeable receive
/// buffers are sized so that a full ring holds the largest frame.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// `struct virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`).
pub const HEADER_LEN: usize = 12;
/// An Ethernet header: the least a frame holds.
pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag, which a frame of the MTU may carry besides.
pub const VLAN_HLEN: usize = 4;
/// The least MTU taken: IPv4's minimum (and Linux's `ETH_MIN_MTU`).
pub const MIN_MTU: u16 = 68;
/// The largest frame any Ethernet device makes: Linux's `ETH_MAX_MTU`,
/// its header and a VLAN tag. A length prefix past it is not a frame:
/// the stream is out of step.
pub const MAX_WIRE_FRAME: usize = 65535 + ETH_HLEN + VLAN_HLEN;
/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// The receive thread's buffer: the bytes read from the socket and not
/// yet in the guest. Room for a few large frames or many small ones.
pub const RX_BUFFER: usize = 256 << 10;
/// The transmit thread's buffer: frames taken from the guest and not yet
/// written to the socket.
pub const TX_BUFFER: usize = 256 << 10;
/// Chains one round of either thread takes at most, whatever they hold:
/// a driver that keeps adding (garbage, say) from another vCPU cannot
/// keep a thread under the queue's lock for ever.
const CHAINS_PER_ROUND: usize = 4 * QUEUE_SIZE as usize;

/// Why the network device cannot be made, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is out of range.
    #[error(
        "the network MTU {mtu} is out of range: give one between {MIN_MTU} and 65535 \
         (passt's default is 65520), the same as passt's -m"
    )]
    Mtu {
        /// The MTU asked for.
        mtu: u16,
    },
    /// The MAC address is not a unicast address.
    #[error(
        "the network MAC address {} is not a unicast address: give one whose first \
         byte is even and that is not all zeros (a locally administered one such as \
         02:xx:xx:xx:xx:xx)", format_mac(.mac)
    )]
    Mac {
        /// The address asked for.
        mac: [u8; 6],
    },
    /// The backend is not a connected stream socket.
    #[error(
        "the network backend (descriptor {fd}) is not a stream socket: give one end of \
         socketpair(AF_UNIX, SOCK_STREAM), the other end passt's --fd"
    )]
    NotAStream {
        /// The descriptor.
        fd: RawFd,
    },
    /// A host call on the backend or a thread failed at set-up.
    #[error("cannot {what} for the network device: {source}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// passt closed its end (at run time: logged).
    #[error(
        "the network backend (passt) closed the connection: the guest's network is down \
         (passt's own messages, with -v, say why)"
    )]
    BackendClosed,
    /// Reading or writing the socket failed (at run time: logged).
    #[error("the network backend (passt) failed: {0}: the guest's network is down")]
    Backend(std::io::Error),
    /// A length prefix no Ethernet frame has (at run time: logged).
    #[error(
        "the network backend (passt) sent a frame length of {len} bytes, which no \
         Ethernet frame has ({ETH_HLEN} to {MAX_WIRE_FRAME}): the stream is out of step, \
         so the guest's network is stopped (is the backend passt with its qemu framing?)"
    )]
    BadLength {
        /// The length prefix.
        len: u32,
    },
}

fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

impl NetSpec {
    /// Checks the MTU and the MAC address.
    pub fn check(&self) -> Result<(), NetError> {
        if self.mtu < MIN_MTU {
            return Err(NetError::Mtu { mtu: self.mtu });
        }
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(NetError::Mac { mac: self.mac });
        }
        Ok(())
    }

    /// The largest frame either way: the MTU, an Ethernet header and a
    /// VLAN tag. Linux's driver does not call the device VLAN-challenged,
    /// so a VLAN interface over it has its MTU and sends tagged frames of
    /// the MTU and 18 bytes (and sizes its receive buffers for them).
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN + VLAN_HLEN
    }
}

/// A queue in use, with what it needs to be served.
struct Active {
    mem: GuestMemory,
    interrupt: Interrupt,
    queue: Queue,
}

impl Active {
    /// Returns a chain to the driver with `len` bytes written.
    fn add_used(&mut self, head: u16, len: usize) {
        if let Err(e) = self.queue.add_used(&self.mem, head, len as u32) {
            log::debug!("virtio-net: used ring not updated: {e}");
        }
    }

    /// Asks the driver to kick the queue when it adds chains; true when
    /// it added some meanwhile (serve them before waiting for the kick).
    fn ask_for_kicks(&mut self) -> bool {
        self.queue.enable_notification(&self.mem).unwrap_or(false)
    }

    /// Interrupts the driver for the chains just used, unless it asked
    /// not to be ([`super::interrupt_wanted`]).
    fn notify(&mut self) {
        if let Err(e) = self.interrupt.notify_used(&mut self.queue, &self.mem) {
            log::debug!("virtio-net: interrupt not delivered: {e}");
        }
    }
}

/// One direction's state, shared by its thread and the vCPU threads.
struct Side<S> {
    state: Mutex<S>,
    /// Rung at a notification, an activation, a reset and the end.
    wake: Condvar,
}

impl<S> Side<S> {
    fn new(state: S) -> Self {
        Self {
            state: Mutex::new(state),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }

    /// Changes the state and wakes the thread.
    fn update(&self, change: impl FnOnce(&mut S)) {
        change(&mut self.lock());
        self.wake.notify_all();
    }

    /// Waits, the lock released, until `woken` holds.
    fn wait_until<'a>(
        &self,
        guard: MutexGuard<'a, S>,
        woken: impl Fn(&S) -> bool,
    ) -> MutexGuard<'a, S> {
        self.wake
            .wait_while(guard, |s| !woken(s))
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// What both threads and the vCPU threads share.
struct Shared {
    rx: Side<rx::RxState>,
    tx: Side<tx::TxState>,
    /// `VIRTIO_NET_S_LINK_UP`: until the backend fails.
    link_up: AtomicBool,
    /// The device is being dropped: a socket error is ours, not passt's.
    stopping: AtomicBool,
}

impl Shared {
    /// The backend failed: say so once, tell the guest its link is down.
    fn backend_down(&self, why: NetError) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if self.link_up.swap(false, Ordering::AcqRel) {
            log::warn!("{why}");
            if let Some(active) = &self.rx.lock().active {
                if let Err(e) = active.interrupt.signal_config_change() {
                    log::debug!("virtio-net: interrupt not delivered: {e}");
                }
            }
        } else {
            log::debug!("virtio-net: {why}");
        }
    }
}

/// The virtio-net device model: the configuration, and the line to its
/// two threads.
pub struct Net {
    spec: NetSpec,
    shared: Arc<Shared>,
    socket: Arc<OwnedFd>,
    threads: Vec<JoinHandle<Option<()>>>,
}

impl Net {
    /// A device reporting `spec`, whose frames go to and come from
    /// `socket` (see the module's documentation), with its two threads
    /// started, each under `filter` (the `net` allow-list) when given.
    pub fn new(
        spec: NetSpec,
        socket: OwnedFd,
        filter: Option<BpfProgram>,
    ) -> Result<Self, NetError> {
        spec.check()?;
        blocking_stream(&socket)?;
        let shared = Arc::new(Shared {
            rx: Side::new(rx::RxState::default()),
            tx: Side::new(tx::TxState::default()),
            link_up: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        });
        let socket = Arc::new(socket);
        let spawn_err = |source| NetError::Setup {
            what: "start a thread",
            source,
        };
        let (rx_thread, rx_filter) = {
            let (shared, socket) = (shared.clone(), socket.clone());
            let frames = rx::Frames::new(spec.max_frame());
            seccomp::spawn_unconfirmed(
                "net rx".into(),
                ThreadKind::Net,
                filter.clone(),
                move || rx::run(&shared, &socket, frames),
            )
            .map_err(spawn_err)?
        };
        let mut device = Self {
            spec,
            shared,
            socket,
            threads: vec![rx_thread],
        };
        let (tx_thread, tx_filter) = {
            let (shared, socket) = (device.shared.clone(), device.socket.clone());
            let max_frame = device.spec.max_frame();
            seccomp::spawn_unconfirmed("net tx".into(), ThreadKind::Net, filter, move || {
                tx::run(&shared, &socket, max_frame)
            })
            .map_err(spawn_err)?
        };
        device.threads.push(tx_thread);
        // Dropping `device` on an error ends both threads.
        for pending in [rx_filter, tx_filter] {
            pending.confirm().map_err(|source| NetError::Setup {
                what: "install the seccomp filter of a thread",
                source,
            })?;
        }
        Ok(device)
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
    fn config(&self) -> [u8; 12] {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.spec.mac);
        let status = if self.shared.link_up.load(Ordering::Acquire) {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.spec.mtu.to_le_bytes());
        config
    }
}

/// Checks that `socket` is a stream socket and makes it blocking (each
/// direction's thread waits in `read` or `send`).
fn blocking_stream(socket: &OwnedFd) -> Result<(), NetError> {
    let fd = socket.as_raw_fd();
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for the call, which writes at
    // most `len` bytes into `kind`; `fd` is open (owned by `socket`).
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if got != 0 || kind != libc::SOCK_STREAM {
        return Err(NetError::NotAStream { fd });
    }
    let setup_err = |what| {
        move || NetError::Setup {
            what,
            source: std::io::Error::last_os_error(),
        }
    };
    // SAFETY: F_GETFL and F_SETFL on a descriptor `socket` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(setup_err("read the socket's flags")());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(setup_err("make the socket blocking")());
    }
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.rx.update(|s| s.stop = true);
        self.shared.tx.update(|s| s.stop = true);
        // Ends a `read` or `send` that waits on the socket.
        // SAFETY: shutdown on a descriptor this device owns.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
        ]
        .iter()
        .fold(0, |features, bit| features | 1 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only in legacy virtio; nothing else is.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            queues,
            features,
        } = activation;
        let mut queues = queues.into_iter();
        let (Some(rx_queue), Some(tx_queue)) = (queues.next(), queues.next()) else {
            return Err(VirtioError::QueueNotReady {
                device_type: VIRTIO_ID_NET,
                index: 0,
            });
        };
        for (index, queue) in [&rx_queue, &tx_queue].into_iter().enumerate() {
            if !queue.ready() {
                return Err(VirtioError::QueueNotReady {
                    device_type: VIRTIO_ID_NET,
                    index,
                });
            }
        }
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let (rx_mem, rx_interrupt) = (mem.clone(), interrupt.clone());
        self.shared.rx.update(|s| {
            s.activate(
                Active {
                    mem: rx_mem,
                    interrupt: rx_interrupt,
                    queue: rx_queue,
                },
                mergeable,
            )
        });
        self.shared.tx.update(|s| {
            s.active = Some(Active {
                mem,
                interrupt,
                queue: tx_queue,
            });
            s.kicked = true;
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.shared.rx.update(|s| s.kicked = true),
            TX_QUEUE => self.shared.tx.update(|s| s.kicked = true),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.shared.rx.update(rx::RxState::reset);
        self.shared.tx.update(|s| s.active = None);
    }
}

/// The device's handling of its queues and of the backend's bytes, on
/// the caller's thread, without threads or a socket: what the fuzz target
/// (`fuzz/fuzz_targets/net_queues.rs`) drives, with the code the threads
/// run.
#[doc(hidden)]
pub struct Harness {
    rx: rx::RxState,
    frames: rx::Frames,
    tx: Active,
    out: Vec<u8>,
    max_frame: usize,
}

impl Harness {
    /// Both queues active in `mem`, as after DRIVER_OK with `mergeable`
    /// (`VIRTIO_NET_F_MRG_RXBUF`) negotiated or not.
    pub fn new(
        spec: &NetSpec,
        mem: GuestMemory,
        interrupt: Interrupt,
        [rx_queue, tx_queue]: [Queue; 2],
        mergeable: bool,
    ) -> Self {
        let mut rx = rx::RxState::default();
        let rx_active = Active {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            queue: rx_queue,
        };
        rx.activate(rx_active, mergeable);
        Self {
            rx,
            frames: rx::Frames::new(spec.max_frame()),
            tx: Active {
                mem,
                interrupt,
                queue: tx_queue,
            },
            out: Vec::with_capacity(TX_BUFFER),
            max_frame: spec.max_frame(),
        }
    }

    /// Bytes from the backend: takes what the receive thread would read
    /// (nothing while it holds a complete frame; at most its buffer's
    /// room) and returns how many, after delivering the frames the ring
    /// has buffers for. An error where the thread would stop.
    pub fn from_backend(&mut self, bytes: &[u8]) -> Result<usize, NetError> {
        let taken = match self.frames.next()? {
            Some(_) => 0,
            None => {
                let space = self.frames.space();
                let n = space.len().min(bytes.len());
                space[..n].copy_from_slice(&bytes[..n]);
                self.frames.filled(n);
                n
            }
        };
        rx::deliver_ready(&mut self.rx, &mut self.frames);
        self.frames.next()?;
        Ok(taken)
    }

    /// One transmit round: what it writes to the backend.
    pub fn from_guest(&mut self) -> &[u8] {
        self.out.clear();
        if tx::take(&mut self.tx, &mut self.out, self.max_frame, true) > 0 {
            self.tx.notify();
        }
        &self.out
    }
}

#[cfg(test)]
mod tests;
