//! The transmit direction: frames taken from the guest's chains into a
//! bounded buffer, each behind its length prefix, then written to the
//! socket.
//!
//! A round takes chains under the queue's lock while the buffer has room
//! for a frame of the MTU, returns them (the frames are copied out), and
//! then writes the buffer with the lock released. While that write waits
//! (passt does not read), no chain is taken: the ring fills and the
//! guest's driver stops its queue. A chain whose readable part is not a
//! header and a frame of [`ETH_HLEN`] to the MTU's size (with its header
//! and a VLAN tag) is returned
//! unsent. Once the backend failed, frames are dropped, so the guest's
//! queue keeps moving.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{
    Active, NetError, Shared, CHAINS_PER_ROUND, ETH_HLEN, HEADER_LEN, PREFIX_LEN, TX_BUFFER,
};
use crate::devices::virtio::pop_chain;
use virtio_queue::QueueT;

/// The transmit queue's side of the device.
#[derive(Default)]
pub(super) struct TxState {
    pub(super) active: Option<Active>,
    /// The driver added chains (or the device was activated).
    pub(super) kicked: bool,
    pub(super) stop: bool,
}

/// Takes chains into `out` while it has room for a frame of
/// `max_frame`, and returns them; `send` false drops the frames. Returns
/// how many it took.
pub(super) fn take(active: &mut Active, out: &mut Vec<u8>, max_frame: usize, send: bool) -> usize {
    let mut chains = 0;
    while chains < CHAINS_PER_ROUND && TX_BUFFER - out.len() >= PREFIX_LEN + max_frame {
        let Some((head, chain)) = pop_chain(&mut active.queue, &active.mem) else {
            break;
        };
        chains += 1;
        match chain {
            Ok(chain) => {
                let mut reader = chain.reader(&active.mem);
                let len = reader.available_bytes().saturating_sub(HEADER_LEN);
                let fits =
                    reader.available_bytes() >= HEADER_LEN && (ETH_HLEN..=max_frame).contains(&len);
                if !fits {
                    log::debug!(
                        "virtio-net: transmit chain {head} holds {} bytes, not a header and a \
                         frame of {ETH_HLEN} to {max_frame}: not sent",
                        reader.available_bytes()
                    );
                } else if send {
                    // The header says nothing the device acts on: no
                    // offload was offered.
                    let mut header = [0u8; HEADER_LEN];
                    let at = out.len();
                    out.extend_from_slice(&(len as u32).to_be_bytes());
                    out.resize(at + PREFIX_LEN + len, 0);
                    let copied = reader
                        .read_exact(&mut header)
                        .and_then(|()| reader.read_exact(&mut out[at + PREFIX_LEN..]));
                    if let Err(e) = copied {
                        log::debug!("virtio-net: transmit chain {head} unreadable: {e}");
                        out.truncate(at);
                    }
                }
            }
            Err(e) => log::debug!("virtio-net: transmit chain {head} unusable: {e}"),
        }
        active.add_used(head, 0);
    }
    chains
}

/// The transmit thread: until the device is dropped.
pub(super) fn run(shared: &Shared, socket: &OwnedFd, max_frame: usize) {
    let mut out = Vec::with_capacity(TX_BUFFER);
    let mut backend_up = true;
    loop {
        out.clear();
        {
            let mut state = shared.tx.lock();
            // The ring is read once more after asking for kicks, not
            // again: an avail index the driver moved past the ring's size
            // says "more" while nothing can be taken.
            let mut looked_again = false;
            loop {
                if state.stop {
                    return;
                }
                state.kicked = false;
                if let Some(active) = state.active.as_mut() {
                    // No kicks while the ring is being emptied.
                    let _ = active.queue.disable_notification(&active.mem);
                    if take(active, &mut out, max_frame, backend_up) > 0 {
                        active.notify();
                        break;
                    }
                    // Empty: chains added meanwhile are served before
                    // waiting.
                    if !looked_again && active.ask_for_kicks() {
                        looked_again = true;
                        continue;
                    }
                }
                state = shared.tx.wait_until(state, |s| s.kicked || s.stop);
                looked_again = false;
            }
        }
        if backend_up && !out.is_empty() {
            if let Err(e) = send_all(socket, &out) {
                backend_up = false;
                shared.backend_down(e);
            }
        }
    }
}

/// Writes all of `data`, waiting while the socket is full.
fn send_all(socket: &OwnedFd, mut data: &[u8]) -> Result<(), NetError> {
    while !data.is_empty() {
        // SAFETY: reads at most `data.len()` bytes from `data`, on a
        // descriptor the device owns (it outlives this thread).
        // MSG_NOSIGNAL: a closed peer is an error here, not a SIGPIPE.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                return Err(NetError::BackendClosed)
            }
            _ => return Err(NetError::Backend(e)),
        }
    }
    Ok(())
}
