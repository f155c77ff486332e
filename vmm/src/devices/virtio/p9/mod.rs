//! A virtio-9p device (virtio 1.2 §5.6 of the transport, 9P2000.L as
//! Linux's `9pnet_virtio` speaks it) serving one host directory from
//! inside the VMM process, rootless: the `p9` crate's server behind
//! microrun's [`policy`].
//!
//! One request queue. Each descriptor chain holds a T-message in its
//! readable part and room for the R-message in its writable part; the
//! worker reads the request into a buffer, checks it ([`policy::check`]),
//! lets the server answer, and copies the answer back.
//!
//! Requests are served on a worker thread of the device's own, started
//! with the device (before the guest runs, so no thread is created under a
//! vCPU's seccomp filter) and filtered by the file-system allow-list: a
//! slow disk holds that thread, never a vCPU. The vCPU thread only passes
//! on the driver's notifications.

pub mod policy;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use seccompiler::BpfProgram;
use virtio_queue::{Queue, QueueT};

use super::{read_config_from, Activation, Interrupt, VirtioDevice, VirtioError};
use crate::memory::GuestMemory;
use crate::seccomp::{self, ThreadKind};
use policy::{Policy, Verdict};

/// The virtio device type of a 9p transport.
pub const VIRTIO_ID_9P: u32 = 9;
/// Feature (bit 0): the configuration space holds the mount tag.
pub const VIRTIO_9P_F_MOUNT_TAG: u64 = 1 << 0;
/// Longest mount tag taken (Linux reads any length; QEMU allows 255).
pub const MAX_TAG_LEN: usize = 64;
/// Entries of the request queue.
const QUEUE_SIZE: u16 = 128;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Largest request read from a chain. The server negotiates at most
/// 64 KiB of payload plus its header (its `MAX_MESSAGE_SIZE`) and reads
/// no further into a request than that; anything past it is ignored.
const MAX_REQUEST: usize = 64 * 1024 + 64;

/// Why a share cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum P9Error {
    /// The tag is empty or too long.
    #[error("the 9p mount tag {tag:?} must be 1 to {MAX_TAG_LEN} bytes")]
    Tag {
        /// The tag.
        tag: String,
    },
    /// The server could not start.
    #[error("cannot serve {path} to the guest: {source}")]
    Server {
        /// The shared directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the worker is told by the vCPU threads.
enum Work {
    Activate {
        mem: GuestMemory,
        interrupt: Interrupt,
        queue: Queue,
    },
    Notify,
    Reset,
}

/// Messages waiting for the worker at most; a driver that resets faster
/// than the worker keeps up waits on its own vCPU thread.
const WORK_BACKLOG: usize = 16;

/// One share as a virtio device: the configuration space and the line to
/// its worker.
pub struct NineP {
    config: Vec<u8>,
    work: mpsc::SyncSender<Work>,
    /// A notification is on its way to the worker: a driver that kicks in
    /// a loop queues one, not one per kick.
    notified: Arc<AtomicBool>,
}

impl NineP {
    /// Serves `root` (a directory) under `tag`, as `policy` says, starting
    /// the worker thread; it installs `filter` (the file-system allow-list)
    /// on itself first, when there is one.
    pub fn new(
        root: &Path,
        tag: &str,
        policy: Policy,
        filter: Option<BpfProgram>,
    ) -> Result<Self, P9Error> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(P9Error::Tag { tag: tag.into() });
        }
        let server_err = |source| P9Error::Server {
            path: root.display().to_string(),
            source,
        };
        let handler = Handler::new(root, policy).map_err(server_err)?;
        let (work, inbox) = mpsc::sync_channel(WORK_BACKLOG);
        let notified = Arc::new(AtomicBool::new(false));
        let flag = notified.clone();
        std::thread::Builder::new()
            .name(format!("9p {tag}"))
            .spawn(move || worker(handler, inbox, flag, filter))
            .map_err(server_err)?;
        let mut config = (tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(tag.as_bytes());
        Ok(Self {
            config,
            work,
            notified,
        })
    }

    fn send(&self, work: Work) {
        // The worker ends only with the process (or after its filter
        // failed, already reported): nothing more to do then.
        let _ = self.work.send(work);
    }
}

impl VirtioDevice for NineP {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_9P
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_9P_F_MOUNT_TAG
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The tag is read-only.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            mut queues,
            ..
        } = activation;
        let queue = queues
            .pop()
            .filter(|q| q.ready())
            .ok_or(VirtioError::QueueNotReady {
                device_type: VIRTIO_ID_9P,
                index: 0,
            })?;
        self.send(Work::Activate {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.send(Work::Notify);
        }
    }

    fn reset(&mut self) {
        self.send(Work::Reset);
    }
}

/// The worker: serves the queue on each notification until the device
/// is dropped.
fn worker(
    mut handler: Handler,
    inbox: mpsc::Receiver<Work>,
    notified: Arc<AtomicBool>,
    filter: Option<BpfProgram>,
) {
    if let Some(filter) = &filter {
        if let Err(e) = seccomp::install(ThreadKind::Fs, filter) {
            log::error!("9p: {e}; the share is not served");
            return;
        }
    }
    let mut active: Option<(GuestMemory, Interrupt, Queue)> = None;
    while let Ok(work) = inbox.recv() {
        match work {
            Work::Activate {
                mem,
                interrupt,
                queue,
            } => active = Some((mem, interrupt, queue)),
            Work::Reset => active = None,
            Work::Notify => {
                // Cleared first: a kick while the queue is served sends
                // the next notification.
                notified.store(false, Ordering::Release);
                if let Some((mem, interrupt, queue)) = &mut active {
                    serve_queue(queue, mem, interrupt, &mut handler);
                }
            }
        }
    }
}

/// One share's requests, answered: the policy in front of the server,
/// and the buffers kept from one request to the next.
pub struct Handler {
    server: p9::Server,
    policy: Policy,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Handler {
    /// A server for `root`, as `policy` says.
    pub fn new(root: &Path, policy: Policy) -> std::io::Result<Self> {
        // The invoking user's files look like root's in the guest.
        let uid_map = BTreeMap::from([(policy.uid, 0)]);
        let gid_map = BTreeMap::from([(policy.gid, 0)]);
        Ok(Self {
            server: p9::Server::new(root, uid_map, gid_map)?,
            policy,
            request: Vec::new(),
            reply: Vec::new(),
        })
    }

    /// Reads one request (at most [`MAX_REQUEST`] bytes of it), checks it
    /// and answers it; `None` when there is no answer to give (no header,
    /// or the server could not decode it).
    pub fn handle(&mut self, mut reader: impl Read) -> Option<&[u8]> {
        let Self {
            server,
            policy,
            request,
            reply,
        } = self;
        request.clear();
        reply.clear();
        if let Err(e) = reader
            .by_ref()
            .take(MAX_REQUEST as u64)
            .read_to_end(request)
        {
            log::debug!("9p: request unreadable: {e}");
            return None;
        }
        match policy::check(request, policy) {
            Verdict::Drop => None,
            Verdict::Refuse(errno) => {
                reply.extend_from_slice(&policy::error_reply(request, errno));
                Some(reply)
            }
            Verdict::Serve => match server.handle_message(&mut &request[..], reply) {
                Ok(()) => Some(reply),
                Err(e) => {
                    log::debug!("9p: request not answered: {e}");
                    None
                }
            },
        }
    }
}

/// Serves every chain the driver has made available.
fn serve_queue(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, handler: &mut Handler) {
    // Bounded per round: the queue holds at most QUEUE_SIZE chains, but a
    // driver may keep adding; the rest waits for its next notification.
    let mut used = false;
    for _ in 0..4 * usize::from(QUEUE_SIZE) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let written = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(reader), Ok(mut writer)) => {
                let reply = handler.handle(reader);
                match reply {
                    Some(reply) if reply.len() <= writer.available_bytes() => {
                        writer.write_all(reply).map(|()| reply.len()).unwrap_or(0)
                    }
                    Some(reply) => {
                        log::debug!(
                            "9p: answer of {} bytes does not fit the driver's {} (chain {head})",
                            reply.len(),
                            writer.available_bytes()
                        );
                        0
                    }
                    None => 0,
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                log::debug!("9p: request {head} unusable: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, written as u32) {
            log::debug!("9p: used ring not updated: {e}");
        }
        used = true;
    }
    if used && queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            log::debug!("9p: interrupt not delivered: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
