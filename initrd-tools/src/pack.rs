//! Writing a scanned tree as a newc archive, fast: headers and small files
//! go through one large buffer (small files are read straight into it), and
//! large files are copied in the kernel with `copy_file_range` when the
//! output is a file. The image converter writes through the same [`Sink`].

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::newc::{encode_header, header_and_name_len, pad4, trailer_header, Header, TRAILER_NAME};
use crate::tree::Tree;
use crate::{InitrdError, PackOptions, PackStats};

/// Size of the output buffer: big writes, few system calls.
const BUF_LEN: usize = 1 << 20;

/// Files up to this size are read straight into the output buffer (on
/// /usr/share this was as fast as `copy_file_range` for them, or faster);
/// larger ones are copied by the kernel when the output is a file.
const SMALL_FILE: u64 = BUF_LEN as u64;

/// Where the archive goes: a buffered writer that knows, when the output is
/// a file, its descriptor for in-kernel copies.
pub(crate) struct Sink<W: Write> {
    out: W,
    out_fd: Option<RawFd>,
    out_name: PathBuf,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
}

impl<W: Write> Sink<W> {
    /// A sink writing to `out` (named `out_name` in errors); `out_fd` is its
    /// descriptor when it is a plain file.
    pub(crate) fn new(out: W, out_fd: Option<RawFd>, out_name: &Path) -> Self {
        Sink {
            out,
            out_fd,
            out_name: out_name.to_path_buf(),
            buf: vec![0; BUF_LEN],
            pos: 0,
            total: 0,
        }
    }

    /// Bytes written so far, trailer included once [`Sink::finish`] ran.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    fn write_error(&self, source: io::Error) -> InitrdError {
        InitrdError::Write {
            path: self.out_name.clone(),
            source,
        }
    }

    fn flush_buf(&mut self) -> Result<(), InitrdError> {
        if self.pos > 0 {
            let result = self.out.write_all(&self.buf[..self.pos]);
            result.map_err(|e| self.write_error(e))?;
            self.pos = 0;
        }
        Ok(())
    }

    /// The next `len` bytes of the buffer (`len` <= BUF_LEN), counted as
    /// written.
    pub(crate) fn space(&mut self, len: usize) -> Result<&mut [u8], InitrdError> {
        if self.pos + len > self.buf.len() {
            self.flush_buf()?;
        }
        let start = self.pos;
        self.pos += len;
        self.total += len as u64;
        Ok(&mut self.buf[start..start + len])
    }

    pub(crate) fn entry_header(&mut self, header: &Header, name: &[u8]) -> Result<(), InitrdError> {
        let len = header_and_name_len(name.len());
        if len > BUF_LEN {
            return Err(InitrdError::NameTooLong(
                String::from_utf8_lossy(name).into(),
            ));
        }
        let dst = self.space(len)?;
        encode_header(dst, header, name).map_err(|e| self.write_error(e))
    }

    pub(crate) fn padding(&mut self, data_len: u64) -> Result<(), InitrdError> {
        let pad = pad4((data_len % 4) as usize);
        self.space(pad)?.fill(0);
        Ok(())
    }

    /// Appends exactly `len` bytes of `file` from byte `offset` (the file
    /// at `path`); the file's own position is not used, so one file can
    /// hold the data of many entries.
    pub(crate) fn file_data(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        path: &Path,
    ) -> Result<(), InitrdError> {
        let changed = || InitrdError::FileChanged(path.to_path_buf());
        let read_error = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                changed()
            } else {
                InitrdError::read(path, e)
            }
        };
        if len <= SMALL_FILE {
            let dst = self.space(len as usize)?;
            return file.read_exact_at(dst, offset).map_err(read_error);
        }
        let mut remaining = len;
        let mut position = offset;
        if let Some(out_fd) = self.out_fd {
            self.flush_buf()?;
            while remaining > 0 {
                let chunk = remaining.min(1 << 30) as usize;
                let mut from = position as libc::loff_t;
                // SAFETY: both descriptors belong to files that stay open for
                // the whole call; `from` is a valid offset for the kernel to
                // read from (and advance), the null output offset makes it
                // use and advance the output's position, as write would.
                let copied = unsafe {
                    libc::copy_file_range(
                        file.as_raw_fd(),
                        &mut from,
                        out_fd,
                        std::ptr::null_mut(),
                        chunk,
                        0,
                    )
                };
                if copied > 0 {
                    remaining -= copied as u64;
                    position += copied as u64;
                    self.total += copied as u64;
                    continue;
                }
                if copied == 0 {
                    return Err(changed());
                }
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Not possible between these two files (different file
                    // system types, special files): copy through the buffer.
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        if remaining == len =>
                    {
                        break
                    }
                    _ => return Err(self.write_error(error)),
                }
            }
        }
        while remaining > 0 {
            if self.pos == self.buf.len() {
                self.flush_buf()?;
            }
            let room = (self.buf.len() - self.pos).min(remaining.min(usize::MAX as u64) as usize);
            let read = file
                .read_at(&mut self.buf[self.pos..self.pos + room], position)
                .map_err(read_error)?;
            if read == 0 {
                return Err(changed());
            }
            position += read as u64;
            self.pos += read;
            self.total += read as u64;
            remaining -= read as u64;
        }
        Ok(())
    }

    /// Writes the trailer and flushes everything to the output.
    pub(crate) fn finish(&mut self) -> Result<(), InitrdError> {
        self.entry_header(&trailer_header(), TRAILER_NAME)?;
        self.flush()
    }

    /// Flushes everything written so far to the output (the EROFS writer
    /// ends this way: its format has no trailer).
    pub(crate) fn flush(&mut self) -> Result<(), InitrdError> {
        self.flush_buf()?;
        self.out.flush().map_err(|e| self.write_error(e))
    }
}

/// Writes `tree` to `out` as a newc archive; `out_fd` is the descriptor of
/// `out` when it is a plain file, for in-kernel copies of large files.
pub(crate) fn write_tree<W: Write>(
    tree: &Tree,
    out: W,
    out_fd: Option<RawFd>,
    out_name: &Path,
    opts: &PackOptions,
) -> Result<PackStats, InitrdError> {
    let mut sink = Sink::new(out, out_fd, out_name);
    let mut source = tree.root.as_os_str().as_encoded_bytes().to_vec();
    for entry in &tree.entries {
        let name = tree.name(entry);
        let data_len = if (entry.is_regular() && entry.has_data) || entry.is_symlink() {
            entry.size
        } else {
            0
        };
        let (uid, gid) = if opts.keep_owner {
            (entry.uid, entry.gid)
        } else {
            (0, 0)
        };
        let header = Header {
            ino: entry.ino,
            mode: entry.mode,
            uid,
            gid,
            nlink: entry.nlink,
            mtime: opts.mtime,
            // The scan refused regular files of 4 GiB or more.
            filesize: data_len as u32,
            dev_major: 0,
            dev_minor: 0,
            rdev_major: entry.rdev_major,
            rdev_minor: entry.rdev_minor,
        };
        sink.entry_header(&header, name)?;
        if entry.is_symlink() {
            sink.space(data_len as usize)?
                .copy_from_slice(tree.target(entry));
        } else if data_len > 0 {
            let root_len = tree.root.as_os_str().len();
            source.truncate(root_len);
            source.push(b'/');
            source.extend_from_slice(name);
            let path = Path::new(OsStr::from_bytes(&source));
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| InitrdError::read(path, e))?;
            sink.file_data(&file, 0, data_len, path)?;
        }
        sink.padding(data_len)?;
    }
    sink.finish()?;
    Ok(PackStats {
        entries: tree.entries.len() as u64,
        bytes: sink.total(),
    })
}
