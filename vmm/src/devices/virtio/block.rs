//! A virtio-blk disk (virtio 1.2 §5.2) backed by one image file: the root
//! of a run that boots from a disk (an EROFS image, mounted read-only
//! under an overlay by guest-init).
//!
//! The image is opened once, when the device is made, with the
//! regular-file rule ([`crate::regular_file`]): a FIFO, a device or a
//! directory is refused before the VM starts, and nothing is opened by
//! name afterwards. It is read-only unless asked: the device then offers
//! `VIRTIO_BLK_F_RO`, holds the file open for reading only, and answers
//! every write with `VIRTIO_BLK_S_IOERR`.
//!
//! One request queue. Requests are served at once, on the vCPU thread
//! that made the QueueNotify exit, as the console's are: `pread`/`pwrite`
//! between the image and guest memory, with no copy in between. That
//! costs the vCPU the time of the read, which a one-vCPU guest waiting
//! for its root would spend waiting anyway, and needs no thread: the
//! vCPU's seccomp filter allows `pread64`, `pwrite64` and `fdatasync` on
//! descriptors it holds ([`crate::seccomp`]).
//!
//! What a request may be is bounded before anything is read: a chain holds
//! at most a queue's worth of descriptors ([`SEG_MAX`] data descriptors,
//! the header and the status; `pop_chain` refuses longer ones, and
//! indirect tables are not offered), its data at most
//! [`MAX_REQUEST_BYTES`], a whole number of sectors inside the image; the
//! header must be readable and the status byte, the chain's last writable
//! byte, writable. A request that breaks a rule
//! gets `VIRTIO_BLK_S_IOERR` (or nothing, when it has no status byte);
//! one of a type the device does not know gets `VIRTIO_BLK_S_UNSUPP`.
//! Every notification serves at most a queue's worth of chains.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::{pop_chain, read_config_from, Activation, Chain, Interrupt, VirtioDevice, VirtioError};
use crate::memory::GuestMemory;

/// Bytes in a sector, the unit of the capacity and of request offsets.
pub const SECTOR_SIZE: u64 = 512;
/// The block size offered (`VIRTIO_BLK_F_BLK_SIZE`) when the image is a
/// whole number of them: an EROFS image's own block size.
pub const BLOCK_SIZE: u64 = 4096;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors in one request at most (`VIRTIO_BLK_F_SEG_MAX`): the
/// queue, less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes in one data descriptor at most (`VIRTIO_BLK_F_SIZE_MAX`).
pub const SIZE_MAX: u32 = 128 << 10;
/// Data bytes in one request at most: what a driver that keeps to
/// [`SEG_MAX`] and [`SIZE_MAX`] can send. Linux sends at most 1.25 MiB
/// (its default `max_sectors_kb`).
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// The request header: `{le32 type, le32 reserved, le64 sector}`.
const HEADER_LEN: usize = 16;
/// The configuration space read: capacity, size_max, seg_max, geometry
/// (unused: no `VIRTIO_BLK_F_GEOMETRY`), blk_size.
const CONFIG_LEN: usize = 24;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Why a disk cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error(
        "cannot open the disk image {}{}: {source}; give the path of a readable{} \
         image file",
        path.display(),
        if *read_only { "" } else { " for writing" },
        if *read_only { "" } else { " and writable" }
    )]
    Open {
        /// The image.
        path: PathBuf,
        /// Whether it was opened read-only.
        read_only: bool,
        /// The OS error.
        source: io::Error,
    },
    /// The image is not a regular file.
    #[error(
        "the disk image {} is {kind}, not a regular file: give an image file (microrun \
         reads no device, FIFO or directory as a disk)",
        path.display()
    )]
    NotRegular {
        /// The image.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The image is smaller than one sector.
    #[error(
        "the disk image {} holds {size} bytes, less than one {SECTOR_SIZE}-byte sector: \
         give an image with a file system in it",
        path.display()
    )]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

/// What the device does once the driver set DRIVER_OK.
struct Active {
    mem: GuestMemory,
    interrupt: Interrupt,
    queue: Queue,
}

/// The virtio-blk device model.
pub struct Block {
    file: File,
    read_only: bool,
    /// The image's size in sectors (a partial last sector is left out).
    capacity: u64,
    /// `VIRTIO_BLK_F_BLK_SIZE` is offered.
    block_size: bool,
    /// The GET_ID answer: at most 20 bytes, zero-padded.
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    active: Option<Active>,
}

/// Why a request failed: the status it gets.
type Status = u8;
const OK: Status = VIRTIO_BLK_S_OK as Status;
const IOERR: Status = VIRTIO_BLK_S_IOERR as Status;
const UNSUPP: Status = VIRTIO_BLK_S_UNSUPP as Status;

/// A request that failed: its status, and the bytes of data it wrote into
/// the chain first (the used ring's length counts them, virtio 1.2
/// §2.7.8).
struct Failed {
    status: Status,
    written: usize,
}

impl From<Status> for Failed {
    fn from(status: Status) -> Self {
        Self { status, written: 0 }
    }
}

impl Block {
    /// A disk served from the image at `path`, read-only (opened so, and
    /// offered with `VIRTIO_BLK_F_RO`) when `read_only`, that answers
    /// GET_ID with `serial` (its first 20 bytes).
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        let file = crate::regular_file::open_for(path, !read_only).map_err(|source| {
            let kind = crate::regular_file::not_regular_kind(&source);
            // Opened for writing, a directory fails before it is looked at.
            let kind =
                kind.or((source.raw_os_error() == Some(libc::EISDIR)).then_some("a directory"));
            match kind {
                Some(kind) => BlockError::NotRegular {
                    path: path.to_owned(),
                    kind,
                },
                None => BlockError::Open {
                    path: path.to_owned(),
                    read_only,
                    source,
                },
            }
        })?;
        let size = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                read_only,
                source,
            })?
            .len();
        if size < SECTOR_SIZE {
            return Err(BlockError::TooSmall {
                path: path.to_owned(),
                size,
            });
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            capacity: size / SECTOR_SIZE,
            block_size: size % BLOCK_SIZE == 0,
            serial: id,
            active: None,
        })
    }

    /// Whether the disk is read-only (its image open for reading only).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The disk's size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Serves what the driver queued, at most a queue's worth of chains
    /// (the driver notifies again for what it adds later).
    fn process(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        for _ in 0..QUEUE_SIZE {
            let Some((head, chain)) = pop_chain(&mut active.queue, &active.mem) else {
                break;
            };
            let len = match chain {
                Ok(chain) => self.serve(&chain, &active.mem),
                Err(e) => {
                    log::debug!("virtio-blk: request {head} unusable: {e}");
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                log::debug!("virtio-blk: used ring not updated: {e}");
            }
            used = true;
        }
        if used {
            if let Err(e) = active.interrupt.notify_used(&mut active.queue, &active.mem) {
                log::debug!("virtio-blk: interrupt not delivered: {e}");
            }
        }
        self.active = Some(active);
    }

    /// Serves one request and writes its status; returns the bytes written
    /// into the chain (the used ring's length).
    fn serve(&mut self, chain: &Chain, mem: &GuestMemory) -> u32 {
        let mut reader = chain.reader(mem);
        let mut writer = chain.writer(mem);
        // No status byte: nothing can be answered.
        let Some(data_in) = writer.available_bytes().checked_sub(1) else {
            log::debug!("virtio-blk: a request without a status byte is dropped");
            return 0;
        };
        let (status, written) = match self.request(&mut reader, &mut writer, data_in) {
            Ok(written) => (OK, written),
            Err(Failed { status, written }) => (status, written),
        };
        // The status is the last writable byte, whatever came before.
        writer.skip(writer.available_bytes() - 1);
        if writer.write_all(&[status]).is_err() {
            return 0;
        }
        // At most 4 GiB: `pop_chain` refuses longer chains.
        (written + 1) as u32
    }

    /// Does what the request asks; the bytes it wrote into the chain's
    /// `data_in` bytes of data, or the status of its failure with what it
    /// wrote before failing.
    fn request(
        &mut self,
        reader: &mut super::ChainReader,
        writer: &mut super::ChainWriter,
        data_in: usize,
    ) -> Result<usize, Failed> {
        let mut header = [0u8; HEADER_LEN];
        reader.read_exact(&mut header).map_err(|_| IOERR)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().map_err(|_| IOERR)?);
        match kind {
            VIRTIO_BLK_T_IN => {
                let offset = self.range(sector, data_in)?;
                let mut at = FileAt::new(&self.file, offset);
                match writer.read_from(&mut at, data_in) {
                    Ok(n) if n == data_in => Ok(n),
                    other => {
                        log::debug!("virtio-blk: read at sector {sector} failed: {other:?}");
                        // What the reads put in guest memory before the
                        // failure (a short read stops the copy part-way).
                        Err(Failed {
                            status: IOERR,
                            written: (at.offset - offset) as usize,
                        })
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(IOERR.into());
                }
                let len = reader.available_bytes();
                let offset = self.range(sector, len)?;
                let mut at = FileAt::new(&self.file, offset);
                match reader.write_to(&mut at, len) {
                    Ok(n) if n == len => Ok(0),
                    other => {
                        log::debug!("virtio-blk: write at sector {sector} failed: {other:?}");
                        Err(IOERR.into())
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                // A read-only image has nothing of the guest's to flush.
                if !self.read_only {
                    self.file.sync_data().map_err(|_| IOERR)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = data_in.min(self.serial.len());
                writer.write_all(&self.serial[..n]).map_err(|_| IOERR)?;
                Ok(n)
            }
            _ => Err(UNSUPP.into()),
        }
    }

    /// The byte offset of `len` bytes at `sector`, when they are whole
    /// sectors inside the image and no more than a request may carry.
    fn range(&self, sector: u64, len: usize) -> Result<u64, Status> {
        let len = len as u64;
        if !len.is_multiple_of(SECTOR_SIZE) || len > MAX_REQUEST_BYTES {
            return Err(IOERR);
        }
        let end = sector.checked_add(len / SECTOR_SIZE).ok_or(IOERR)?;
        if end > self.capacity {
            return Err(IOERR);
        }
        // Below the image's size in bytes, which fits in a u64.
        Ok(sector * SECTOR_SIZE)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = 1 << VIRTIO_BLK_F_SIZE_MAX | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.block_size {
            features |= 1 << VIRTIO_BLK_F_BLK_SIZE;
        }
        // A read-only disk has no write cache: the driver sends no flush.
        features |= if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            1 << VIRTIO_BLK_F_FLUSH
        };
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let block_size = if self.block_size {
            BLOCK_SIZE
        } else {
            SECTOR_SIZE
        };
        config[20..24].copy_from_slice(&(block_size as u32).to_le_bytes());
        read_config_from(&config, offset, data);
    }

    /// Nothing in the configuration is the driver's to write (no
    /// `VIRTIO_BLK_F_CONFIG_WCE`).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            queues,
            ..
        } = activation;
        let Some(queue) = queues.into_iter().next().filter(|q| q.ready()) else {
            return Err(VirtioError::QueueNotReady {
                device_type: VIRTIO_ID_BLOCK,
                index: 0,
            });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// The image's descriptor, which the vCPU threads' seccomp filter names.
impl AsRawFd for Block {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// The image at a byte offset, as vm-memory's volatile reader and writer:
/// each call one `pread`/`pwrite` between the file and guest memory,
/// moving the offset on by what it moved.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        Self { file, offset }
    }

    fn advance(&mut self, n: isize) -> Result<usize, VolatileMemoryError> {
        let n = usize::try_from(n)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        self.offset += n as u64;
        Ok(n)
    }

    fn at(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let at = self.at()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the descriptor is the image's, open for the call; the
        // guard's pointer is valid for writes of `buf.len()` bytes (guest
        // memory, mapped while `buf` lives), which pread fills at most.
        let n = unsafe { libc::pread(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), at) };
        let n = self.advance(n)?;
        buf.bitmap().mark_dirty(0, n);
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let at = self.at()?;
        let guard = buf.ptr_guard();
        // SAFETY: the descriptor is the image's, open for the call; the
        // guard's pointer is valid for reads of `buf.len()` bytes, which
        // pwrite reads at most.
        let n =
            unsafe { libc::pwrite(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), at) };
        self.advance(n)
    }
}

#[cfg(test)]
mod tests;
