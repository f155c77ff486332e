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
//! vCPU's seccomp filter): a slow disk holds that thread, never a vCPU.
//! The vCPU thread only passes on the driver's notifications. Before it
//! serves anything the worker confines itself ([`confine`]: no
//! capabilities, Landlock to its share) and installs the file-system
//! allow-list; the device is not made unless that succeeded.
//!
//! The share's root is opened once, when the device is made, and every
//! attach starts from that descriptor: the server is never asked to
//! resolve the share's path again, so a guest that renames directories
//! through one share cannot redirect another share nested in it. The
//! handler counts the guest's fids against a limit ([`fids`]).

pub mod confine;
pub mod fids;
mod handler;
pub mod policy;

pub use handler::Handler;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use seccompiler::BpfProgram;
use virtio_queue::{Queue, QueueT};

use super::{pop_chain, read_config_from, Activation, Interrupt, VirtioDevice, VirtioError};
use crate::memory::GuestMemory;
use confine::ConfineError;
use policy::Policy;

/// The virtio device type of a 9p transport.
pub const VIRTIO_ID_9P: u32 = 9;
/// Feature (bit 0): the configuration space holds the mount tag.
pub const VIRTIO_9P_F_MOUNT_TAG: u64 = 1 << 0;
/// Longest mount tag taken (Linux reads any length; QEMU allows 255).
pub const MAX_TAG_LEN: usize = 64;
/// Entries of the request queue.
const QUEUE_SIZE: u16 = 128;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

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
    /// The worker could not confine itself to the share.
    #[error("cannot serve {path} to the guest: {source}")]
    Confine {
        /// The shared directory.
        path: String,
        /// Why.
        source: ConfineError,
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
    /// the worker thread, and returns once that thread has confined itself
    /// ([`Handler::confine`], with `filter`, the file-system allow-list,
    /// when there is one).
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
        let (confined, ready) = mpsc::sync_channel(1);
        let notified = Arc::new(AtomicBool::new(false));
        let flag = notified.clone();
        std::thread::Builder::new()
            .name(format!("9p {tag}"))
            .spawn(move || {
                match handler.confine(filter.as_ref()) {
                    Ok(how) => {
                        log::debug!("9p: share confined ({how:?})");
                        let _ = confined.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = confined.send(Err(e));
                        return;
                    }
                }
                worker(handler, inbox, flag);
            })
            .map_err(server_err)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(P9Error::Confine {
                    path: root.display().to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(server_err(std::io::Error::other(
                    "the share's thread ended before it was confined",
                )))
            }
        }
        let mut config = (tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(tag.as_bytes());
        Ok(Self {
            config,
            work,
            notified,
        })
    }

    fn send(&self, work: Work) {
        // The worker ends only with the process: nothing more to do then.
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

/// The worker, once confined: serves the queue on each notification
/// until the device is dropped.
fn worker(mut handler: Handler, inbox: mpsc::Receiver<Work>, notified: Arc<AtomicBool>) {
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

/// Serves every chain the driver has made available.
fn serve_queue(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, handler: &mut Handler) {
    // Bounded per round: the queue holds at most QUEUE_SIZE chains, but a
    // driver may keep adding; the rest waits for its next notification.
    let mut used = false;
    for _ in 0..4 * usize::from(QUEUE_SIZE) {
        // The chain as the transport's rules read it: never through an
        // indirect table, each descriptor read once (devices/virtio/mod.rs).
        let Some((head, chain)) = pop_chain(queue, mem) else {
            break;
        };
        let written = match chain {
            Ok(chain) => {
                let (reader, mut writer) = (chain.reader(mem), chain.writer(mem));
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
            Err(e) => {
                log::debug!("9p: request {head} unusable: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, written as u32) {
            log::debug!("9p: used ring not updated: {e}");
        }
        used = true;
    }
    if used {
        if let Err(e) = interrupt.notify_used(queue, mem) {
            log::debug!("9p: interrupt not delivered: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
