//! The receive direction: frames read from the socket into a bounded
//! buffer ([`Frames`]), then written into the guest's receive buffers.
//!
//! The thread reads the socket only while it holds no complete frame: a
//! guest that posts no buffers leaves the frames in the socket (passt
//! then holds back too), and the thread's memory stays [`RX_BUFFER`].
//! A length prefix larger than the MTU allows (with a header and a VLAN
//! tag: [`NetSpec::max_frame`](crate::NetSpec::max_frame)), but one an Ethernet frame
//! can have, is a frame the guest may not get (`VIRTIO_NET_F_MTU`): it
//! is skipped as it arrives, never held. A prefix no frame has ends the
//! direction ([`NetError::BadLength`]).
//!
//! With `MRG_RXBUF` a frame may take several chains: they are popped
//! until their room holds the header and the frame, then filled in order
//! and returned, with `num_buffers` in the first; chains popped for a
//! frame that does not fit yet are held (read once, [`pop_chain`]) until
//! more come. A broken chain, or one without room, is returned at once
//! with nothing written: the guest's error. A frame that the whole ring
//! cannot hold is dropped and the chains it held are returned empty.

use std::io::Write;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{
    Active, NetError, Shared, CHAINS_PER_ROUND, ETH_HLEN, HEADER_LEN, MAX_WIRE_FRAME, PREFIX_LEN,
    RX_BUFFER,
};
use crate::devices::virtio::{pop_chain, Chain};
use virtio_queue::QueueT;

/// The receive queue's side of the device.
#[derive(Default)]
pub(super) struct RxState {
    pub(super) active: Option<Active>,
    /// `VIRTIO_NET_F_MRG_RXBUF` was negotiated.
    mergeable: bool,
    /// Chains popped for the next frame, in ring order, with their room.
    held: Vec<(u16, Chain, usize)>,
    /// The driver added buffers (or the device was activated or reset).
    pub(super) kicked: bool,
    pub(super) stop: bool,
}

impl RxState {
    pub(super) fn activate(&mut self, mut active: Active, mergeable: bool) {
        // Nothing waits for a buffer yet: no kicks until something does.
        let _ = active.queue.disable_notification(&active.mem);
        self.active = Some(active);
        self.mergeable = mergeable;
        self.held.clear();
        self.kicked = true;
    }

    pub(super) fn reset(&mut self) {
        self.active = None;
        self.held.clear();
        self.kicked = true;
    }
}

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    /// In the guest's buffers.
    Delivered,
    /// Not deliverable (the ring cannot hold it, or the driver kept
    /// handing over garbage): dropped.
    Dropped,
    /// The ring has no more buffers yet: the frame waits.
    Starved,
    /// The round's chains are spent: the frame waits for the next round.
    Spent,
}

/// Puts `frame` into the receive ring: see the module's documentation.
/// Pops at most `budget` chains (and takes them off it). Returns whether
/// the ring got used entries too.
fn place(state: &mut RxState, frame: &[u8], budget: &mut usize) -> (Placed, bool) {
    let RxState {
        active,
        mergeable,
        held,
        ..
    } = state;
    let Some(active) = active.as_mut() else {
        return (Placed::Starved, false);
    };
    let need = HEADER_LEN + frame.len();
    let size = usize::from(active.queue.size());
    let mut room: usize = held.iter().map(|&(_, _, room)| room).sum();
    let mut used = false;
    // Without MRG_RXBUF, a frame takes one chain.
    while room < need && (held.is_empty() || *mergeable) && held.len() < size {
        if *budget == 0 {
            return (Placed::Spent, used);
        }
        let Some((head, chain)) = pop_chain(&mut active.queue, &active.mem) else {
            return (Placed::Starved, used);
        };
        *budget -= 1;
        let chain_room = match &chain {
            Ok(chain) => chain.writer(&active.mem).available_bytes(),
            Err(e) => {
                log::debug!("virtio-net: receive buffer {head} unusable: {e}");
                0
            }
        };
        match chain {
            Ok(chain) if chain_room > 0 => {
                held.push((head, chain, chain_room));
                room += chain_room;
            }
            _ => {
                active.add_used(head, 0);
                used = true;
            }
        }
    }
    if room < need {
        log::debug!(
            "virtio-net: a frame of {} bytes does not fit the receive buffers: dropped",
            frame.len()
        );
        for (head, _, _) in held.drain(..) {
            active.add_used(head, 0);
        }
        return (Placed::Dropped, true);
    }
    // The chains the frame takes: all but those it does not reach.
    let mut count = 0;
    let mut covered = 0;
    while covered < need {
        covered += held[count].2;
        count += 1;
    }
    let mut header = [0u8; HEADER_LEN];
    header[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    let mut rest: [&[u8]; 2] = [&header, frame];
    for (head, chain, _) in held.drain(..count) {
        let mut writer = chain.writer(&active.mem);
        for part in rest.iter_mut() {
            let n = writer.write(part).unwrap_or(0);
            *part = &part[n..];
        }
        active.add_used(head, writer.bytes_written());
    }
    (Placed::Delivered, true)
}

/// The bytes read from the socket and not yet delivered: whole frames
/// with their prefixes, and the start of the next.
pub(super) struct Frames {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of an oversized frame still to skip.
    skip: usize,
    max_frame: usize,
}

impl Frames {
    pub(super) fn new(max_frame: usize) -> Self {
        Self {
            buf: vec![0; RX_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            max_frame,
        }
    }

    /// The next complete frame in the buffer, skipping oversized ones;
    /// `None` until one is complete.
    pub(super) fn next(&mut self) -> Result<Option<Range<usize>>, NetError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            if self.end - self.start < PREFIX_LEN {
                return Ok(None);
            }
            let prefix = &self.buf[self.start..self.start + PREFIX_LEN];
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            let frame_len = len as usize;
            if !(ETH_HLEN..=MAX_WIRE_FRAME).contains(&frame_len) {
                return Err(NetError::BadLength { len });
            }
            if frame_len > self.max_frame {
                log::debug!(
                    "virtio-net: a frame of {frame_len} bytes from the backend exceeds the MTU: \
                     dropped"
                );
                self.start += PREFIX_LEN;
                self.skip = frame_len;
                continue;
            }
            let body = self.start + PREFIX_LEN;
            if self.end - body < frame_len {
                return Ok(None);
            }
            return Ok(Some(body..body + frame_len));
        }
    }

    /// The frame [`Frames::next`] returned is done with.
    fn consume(&mut self, frame: Range<usize>) {
        self.start = frame.end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, after moving a partial frame to the front.
    pub(super) fn space(&mut self) -> &mut [u8] {
        if self.start > 0 && self.buf.len() - self.end < PREFIX_LEN + self.max_frame {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

/// The receive thread: until the device is dropped or the backend fails.
pub(super) fn run(shared: &Shared, socket: &OwnedFd, mut frames: Frames) {
    loop {
        match frames.next() {
            Err(e) => return shared.backend_down(e),
            Ok(Some(_)) => {
                if !deliver(shared, &mut frames) {
                    return;
                }
                continue;
            }
            Ok(None) => {}
        }
        let space = frames.space();
        // SAFETY: reads at most `space.len()` bytes into `space`, from a
        // descriptor the device owns (it outlives this thread).
        let n = unsafe { libc::read(socket.as_raw_fd(), space.as_mut_ptr().cast(), space.len()) };
        match n {
            0 => return shared.backend_down(NetError::BackendClosed),
            n if n > 0 => frames.filled(n as usize),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return shared.backend_down(NetError::Backend(e));
                }
            }
        }
    }
}

/// Delivers the complete frames, waiting (without reading the socket)
/// while the guest has no buffer for the next. False when the device is
/// being dropped.
fn deliver(shared: &Shared, frames: &mut Frames) -> bool {
    let mut state = shared.rx.lock();
    // The ring is read once more after asking for kicks, not again: an
    // avail index the driver moved past the ring's size says "more"
    // while nothing can be taken.
    let mut looked_again = false;
    loop {
        if state.stop {
            return false;
        }
        state.kicked = false;
        match deliver_ready(&mut state, frames) {
            Delivered::All => return true,
            // Buffers added meanwhile are served before waiting.
            Delivered::Starved
                if !looked_again && state.active.as_mut().is_some_and(Active::ask_for_kicks) =>
            {
                looked_again = true;
                continue;
            }
            // A driver that keeps the ring busy (from another vCPU, or
            // through rings that overlap) does not keep the lock: a reset
            // or a notification gets its turn.
            Delivered::Spent => {
                drop(state);
                std::thread::yield_now();
                state = shared.rx.lock();
            }
            // Not active (yet, or after a reset), or no buffers: wait
            // for the driver.
            Delivered::Starved | Delivered::Inactive => {
                state = shared.rx.wait_until(state, |s| s.kicked || s.stop);
                looked_again = false;
            }
        }
    }
}

/// How far [`deliver_ready`] got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    /// Every complete frame is in the guest (or dropped).
    All,
    /// A frame waits for buffers.
    Starved,
    /// A frame waits: the round took [`CHAINS_PER_ROUND`] chains.
    Spent,
    /// The device is not active.
    Inactive,
}

/// Puts the complete frames into the ring while it has buffers, taking
/// at most [`CHAINS_PER_ROUND`] chains, and interrupts for what it used.
pub(super) fn deliver_ready(state: &mut RxState, frames: &mut Frames) -> Delivered {
    let mut used = false;
    let mut waiting = None;
    let mut budget = CHAINS_PER_ROUND;
    while let Ok(Some(frame)) = frames.next() {
        let (placed, any) = place(state, &frames.buf[frame.clone()], &mut budget);
        used |= any;
        match placed {
            Placed::Starved => waiting = Some(Delivered::Starved),
            Placed::Spent => waiting = Some(Delivered::Spent),
            Placed::Delivered | Placed::Dropped => {
                frames.consume(frame);
                continue;
            }
        }
        break;
    }
    let Some(active) = state.active.as_mut() else {
        return Delivered::Inactive;
    };
    if used {
        active.notify();
    }
    if let Some(waiting) = waiting {
        return waiting;
    }
    let _ = active.queue.disable_notification(&active.mem);
    Delivered::All
}
