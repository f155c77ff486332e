//! Reading tar streams with every header bounded: the entries of a tar
//! archive (v7, ustar, GNU, PAX), their headers parsed with the `tar`
//! crate's [`tar::Header`], their data read or skipped.
//!
//! The `tar` crate's own iterator reads a GNU long name (`L`), long link
//! (`K`) or PAX extended header (`x`) into memory whole, whatever size its
//! header claims, before the caller sees it: a few megabytes of gzip or
//! zstd that decompress to a gigabyte of "name" took that gigabyte of
//! memory. Here each such header is held only when its size field is at
//! most [`MAX_EXTENSION`] (1 MiB, as Go's `archive/tar`, which containerd
//! and umoci use, allows), checked before anything is allocated or read;
//! a PAX global header (`g`) is checked the same way and skipped; a GNU
//! sparse map may have 1 MiB of extension blocks. Anything larger is a
//! [`TarError::TooLarge`] naming the header, where it is, and the limit.
//!
//! The rules are otherwise the `tar` crate's (and GNU tar's): the first
//! zero block ends the archive, and so does the end of the stream after
//! an entry's data, with or without the padding to a whole block (umoci's
//! `insert` writes layers so; Go's `archive/tar` reads them), but never
//! inside an entry's data or headers; each header's checksum is checked;
//! a GNU long name or link, else a PAX `path` or `linkpath`, replaces the
//! header's name; a PAX `size` replaces the header's size; a GNU sparse
//! file (`S`) is expanded, its holes read as zeros.

use std::io::{self, Read, Seek, SeekFrom};

/// The most bytes one GNU long name, long link, PAX header or GNU sparse
/// map may take: what is held in memory for one header.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

/// The length of a tar block.
const BLOCK: u64 = 512;

/// What can be wrong with a tar stream.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The stream (or the file or decompressor under it) failed.
    #[error("cannot read it as a tar stream (truncated or corrupt): {0}")]
    Read(io::Error),
    /// The stream ends in the middle of something.
    #[error("the tar stream ends inside {what} at byte {offset}: it is truncated")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts in the (uncompressed) stream.
        offset: u64,
    },
    /// A header is malformed.
    #[error("the tar header at byte {offset} {detail}: the archive is corrupt")]
    Header {
        /// Where the header starts in the (uncompressed) stream.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A header or name larger than microrun holds in memory.
    #[error(
        "the {kind} at byte {offset} is {size} bytes, more than the 1 MiB microrun holds in \
         memory for one tar header or name (Go's archive/tar, which containerd and umoci \
         use, has the same limit): the archive is corrupt or crafted; rebuild it with a \
         standard tar"
    )]
    TooLarge {
        /// Which header: "GNU long name (type L)", ...
        kind: &'static str,
        /// Where its header starts in the (uncompressed) stream.
        offset: u64,
        /// The size its header claims (or, for a sparse map, at least).
        size: u64,
    },
}

impl TarError {
    fn header(offset: u64, detail: impl Into<String>) -> Self {
        TarError::Header {
            offset,
            detail: detail.into(),
        }
    }
}

/// What a tar stream is read from: something that reads, and skips
/// forward (reading, or seeking when it can).
pub(crate) trait Source: Read {
    /// Moves `n` bytes forward; false when the stream ended first.
    fn skip(&mut self, from: u64, n: u64) -> io::Result<bool>;
}

/// A stream read from start to end: skipped data is read and dropped.
pub(crate) struct Stream<R>(pub R);

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Source for Stream<R> {
    fn skip(&mut self, _from: u64, n: u64) -> io::Result<bool> {
        let copied = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
        Ok(copied == n)
    }
}

/// A seekable stream that starts at offset 0: skipped data is seeked
/// over, never read. Seeking past the end is not noticed here; the next
/// header read finds the end.
pub(crate) struct Seekable<R>(pub R);

impl<R: Read> Read for Seekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Seek> Source for Seekable<R> {
    fn skip(&mut self, from: u64, n: u64) -> io::Result<bool> {
        let to = from
            .checked_add(n)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek past 2^64"))?;
        self.0.seek(SeekFrom::Start(to))?;
        Ok(true)
    }
}

/// PAX records, as key and value, in order.
pub(crate) type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// A run of data of a sparse file: `len` bytes stored in the archive, at
/// `offset` in the file. What lies between runs reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    offset: u64,
    len: u64,
}

/// One entry of the archive: its header and what the extensions before it
/// said.
#[derive(Debug, Clone)]
pub(crate) struct TarEntry {
    /// The entry's own header (after any long name, long link or PAX
    /// header).
    pub header: tar::Header,
    /// Its name: the GNU long name, else the PAX `path`, else the header's
    /// (ustar prefix included).
    pub path: Vec<u8>,
    /// Its link target, likewise (`None` when there is none at all).
    pub link: Option<Vec<u8>>,
    /// The PAX records that apply to it, as key and value, in order.
    pub pax: PaxRecords,
    /// The length of its data: a sparse file's with its holes.
    pub size: u64,
    /// Where its data starts in the stream.
    pub data_pos: u64,
    /// The length of its data as stored in the stream.
    stored: u64,
    /// A GNU sparse file's runs.
    sparse: Option<Vec<Run>>,
}

impl TarEntry {
    /// The value of the last PAX record with `key`.
    pub(crate) fn pax_value(&self, key: &str) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The PAX record `key` as a number, when it is one (as the `tar`
    /// crate reads `size`, `uid` and `gid`).
    pub(crate) fn pax_number(&self, key: &str) -> Option<u64> {
        std::str::from_utf8(self.pax_value(key)?).ok()?.parse().ok()
    }
}

/// The extensions read so far for the next entry.
#[derive(Default)]
struct Pending {
    offset: Option<u64>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<PaxRecords>,
}

/// The extension header types, and their names for messages.
fn extension_kind(entry_type: tar::EntryType) -> Option<&'static str> {
    match entry_type.as_byte() {
        b'L' => Some("GNU long name (type L)"),
        b'K' => Some("GNU long link name (type K)"),
        b'x' => Some("PAX extended header (type x)"),
        b'g' => Some("PAX global header (type g)"),
        _ => None,
    }
}

/// Reads a tar stream's entries, one at a time.
pub(crate) struct TarReader<S> {
    source: S,
    /// Bytes consumed from `source` (read or skipped).
    pos: u64,
    /// Where the next header starts.
    next: u64,
    /// Where the current entry's stored data ends.
    data_end: u64,
    done: bool,
}

impl<S: Source> TarReader<S> {
    /// A reader of the archive `source` (at its offset 0).
    pub(crate) fn new(source: S) -> Self {
        TarReader {
            source,
            pos: 0,
            next: 0,
            data_end: 0,
            done: false,
        }
    }

    /// The next entry; `None` at the end of the archive. After an error,
    /// `None` for ever.
    pub(crate) fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_entry();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    /// The data of `entry`, the entry [`Self::next_entry`] returned last:
    /// a sparse file's expanded. What is not read is skipped by the next
    /// call to `next_entry`.
    pub(crate) fn data<'a>(&'a mut self, entry: &'a TarEntry) -> EntryData<'a, S> {
        EntryData {
            runs: match &entry.sparse {
                Some(runs) => Runs::Sparse(runs),
                None => Runs::Plain,
            },
            size: entry.size,
            index: 0,
            at: 0,
            reader: self,
        }
    }

    /// The stream under the reader, for reading what follows the archive.
    pub(crate) fn into_inner(self) -> S {
        self.source
    }

    fn read_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        let mut pending = Pending::default();
        loop {
            if !self.skip_to_next()? {
                // The stream ends in the padding after complete data.
                return match pending.offset {
                    Some(offset) => Err(TarError::Truncated {
                        what: "the headers of an entry (the entry itself is missing)",
                        offset,
                    }),
                    None => Ok(None),
                };
            }
            let offset = self.pos;
            let mut block = [0u8; BLOCK as usize];
            if !self.read_block(&mut block, offset)? || block.iter().all(|&b| b == 0) {
                return match pending.offset {
                    Some(offset) => Err(TarError::Truncated {
                        what: "the headers of an entry (the entry itself is missing)",
                        offset,
                    }),
                    None => Ok(None),
                };
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            check_checksum(&header, offset)?;
            let stored = header
                .entry_size()
                .map_err(|e| TarError::header(offset, format!("has an unreadable size: {e}")))?;
            let data_pos = self.pos;
            let entry_type = header.entry_type();
            if let Some(kind) = extension_kind(entry_type) {
                if stored > MAX_EXTENSION {
                    return Err(TarError::TooLarge {
                        kind,
                        offset,
                        size: stored,
                    });
                }
                self.data_end = data_pos + stored;
                self.next = data_pos + round_up(stored);
                if entry_type.as_byte() != b'g' {
                    pending.offset.get_or_insert(offset);
                }
                let duplicate =
                    || TarError::header(offset, format!("is a second {kind} for the same entry"));
                match entry_type.as_byte() {
                    // Global defaults: no reader here uses them.
                    b'g' => {}
                    b'L' => {
                        if pending.long_name.is_some() {
                            return Err(duplicate());
                        }
                        pending.long_name = Some(trim_nuls(self.read_payload(stored, kind)?));
                    }
                    b'K' => {
                        if pending.long_link.is_some() {
                            return Err(duplicate());
                        }
                        pending.long_link = Some(trim_nuls(self.read_payload(stored, kind)?));
                    }
                    _ => {
                        if pending.pax.is_some() {
                            return Err(duplicate());
                        }
                        let payload = self.read_payload(stored, kind)?;
                        pending.pax = Some(parse_pax(&payload, offset)?);
                    }
                }
                continue;
            }
            return self.entry(header, stored, pending, offset).map(Some);
        }
    }

    /// The entry whose header is `header` (at `offset`), with what the
    /// extensions before it said.
    fn entry(
        &mut self,
        header: tar::Header,
        stored: u64,
        pending: Pending,
        offset: u64,
    ) -> Result<TarEntry, TarError> {
        let mut entry = TarEntry {
            path: Vec::new(),
            link: None,
            pax: pending.pax.unwrap_or_default(),
            size: stored,
            data_pos: 0,
            stored,
            sparse: None,
            header,
        };
        if let Some(size) = entry.pax_number("size") {
            entry.stored = size;
            entry.size = size;
        }
        entry.path = match pending.long_name {
            Some(name) => name,
            None => match entry.pax_value("path") {
                Some(path) => path.to_vec(),
                None => entry.header.path_bytes().into_owned(),
            },
        };
        entry.link = match pending.long_link {
            Some(link) => Some(link),
            None => match entry.pax_value("linkpath") {
                Some(link) => Some(link.to_vec()),
                None => entry.header.link_name_bytes().map(|l| l.into_owned()),
            },
        };
        if entry.header.entry_type().is_gnu_sparse() {
            let (runs, size) = self.sparse_map(&entry.header, entry.stored, offset)?;
            entry.sparse = Some(runs);
            entry.size = size;
        }
        entry.data_pos = self.pos;
        let overflow = || TarError::header(offset, "has a size that overflows");
        self.data_end = entry
            .data_pos
            .checked_add(entry.stored)
            .ok_or_else(overflow)?;
        self.next = self.data_end.checked_add(BLOCK - 1).ok_or_else(overflow)? & !(BLOCK - 1);
        Ok(entry)
    }

    /// The runs of a GNU sparse file and its size, from its header and
    /// the extension blocks after it (which are read here), checked as the
    /// `tar` crate checks them: runs in order, each stored run starting on
    /// a block boundary of the stored data, all of it used, the last run
    /// ending at the size the header gives.
    fn sparse_map(
        &mut self,
        header: &tar::Header,
        stored: u64,
        offset: u64,
    ) -> Result<(Vec<Run>, u64), TarError> {
        let bad =
            |detail: &str| TarError::header(offset, format!("has a bad sparse map: {detail}"));
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("the entry type is GNU sparse (S) but the header is not GNU's"))?;
        let mut runs = Vec::new();
        let mut end = 0u64;
        let mut left = stored;
        let mut add = |run: &tar::GnuSparseHeader| -> Result<(), TarError> {
            if run.is_empty() {
                return Ok(());
            }
            let (Ok(at), Ok(len)) = (run.offset(), run.length()) else {
                return Err(bad("a run's offset or length is not a number"));
            };
            if len != 0 && !(stored - left).is_multiple_of(BLOCK) {
                return Err(bad("a run's data does not start on a block boundary"));
            }
            if at < end {
                return Err(bad("runs overlap or are out of order"));
            }
            end = at
                .checked_add(len)
                .ok_or_else(|| bad("a run ends past 2^64"))?;
            left = left
                .checked_sub(len)
                .ok_or_else(|| bad("its runs hold more data than the entry stores"))?;
            runs.push(Run { offset: at, len });
            Ok(())
        };
        for run in &gnu.sparse {
            add(run)?;
        }
        let mut extended = gnu.is_extended();
        let mut blocks = 0u64;
        while extended {
            blocks += 1;
            if blocks * BLOCK > MAX_EXTENSION {
                return Err(TarError::TooLarge {
                    kind: "GNU sparse map (extension blocks of type S)",
                    offset,
                    size: blocks * BLOCK,
                });
            }
            let mut ext = tar::GnuExtSparseHeader::new();
            let at = self.pos;
            if !self.read_block(ext.as_mut_bytes(), at)? {
                return Err(TarError::Truncated {
                    what: "a GNU sparse map",
                    offset,
                });
            }
            for run in ext.sparse() {
                add(run)?;
            }
            extended = ext.is_extended();
        }
        let real_size = gnu
            .real_size()
            .map_err(|_| bad("its real size is not a number"))?;
        if end != real_size {
            return Err(bad("its runs do not end at the size the header gives"));
        }
        if left != 0 {
            return Err(bad("its runs hold less data than the entry stores"));
        }
        Ok((runs, end))
    }

    /// Moves to the next header. The data before it must all be there;
    /// the padding after the data may be cut short by the end of the
    /// stream (false then): umoci's `insert` writes layers that end so,
    /// and Go's `archive/tar` (containerd, containers/storage) reads them.
    fn skip_to_next(&mut self) -> Result<bool, TarError> {
        self.skip_to(self.data_end.min(self.next))?;
        if self.next > self.pos {
            let n = self.next - self.pos;
            if !self.source.skip(self.pos, n).map_err(TarError::Read)? {
                return Ok(false);
            }
            self.pos = self.next;
        }
        Ok(true)
    }

    /// Moves to `to` (never backwards).
    fn skip_to(&mut self, to: u64) -> Result<(), TarError> {
        if to > self.pos {
            let n = to - self.pos;
            if !self.source.skip(self.pos, n).map_err(TarError::Read)? {
                return Err(TarError::Truncated {
                    what: "the data of an entry",
                    offset: self.pos,
                });
            }
            self.pos = to;
        }
        Ok(())
    }

    /// Reads one block; false when the stream ends before it starts.
    fn read_block(&mut self, block: &mut [u8], offset: u64) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < block.len() {
            match self.source.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(TarError::Truncated {
                        what: "a header",
                        offset,
                    })
                }
                Ok(n) => {
                    filled += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Read(e)),
            }
        }
        Ok(true)
    }

    /// Reads the `len` bytes (at most [`MAX_EXTENSION`]) of an extension
    /// header's payload.
    fn read_payload(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, TarError> {
        debug_assert!(len <= MAX_EXTENSION);
        let offset = self.pos;
        let mut payload = vec![0u8; len as usize];
        self.source.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                TarError::Truncated { what, offset }
            } else {
                TarError::Read(e)
            }
        })?;
        self.pos += len;
        Ok(payload)
    }

    /// Reads stored data of the current entry, never past its end.
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.data_end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.source.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The sum check every tar header carries (the field itself counted as
/// spaces), as the `tar` crate and GNU tar check it.
fn check_checksum(header: &tar::Header, offset: u64) -> Result<(), TarError> {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    match header.cksum() {
        Ok(stored) if stored == sum => Ok(()),
        Ok(_) => Err(TarError::header(offset, "has a bad checksum")),
        Err(_) => Err(TarError::header(offset, "has an unreadable checksum")),
    }
}

fn round_up(len: u64) -> u64 {
    // `len` is at most MAX_EXTENSION here.
    len.div_ceil(BLOCK) * BLOCK
}

/// A GNU long name or link without the NULs that end it.
fn trim_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// The records of a PAX header: `LEN KEY=VALUE\n` each, `LEN` counting
/// the whole record (so a value may hold newlines).
fn parse_pax(mut bytes: &[u8], offset: u64) -> Result<PaxRecords, TarError> {
    let bad = |detail: &str| {
        TarError::header(
            offset,
            format!("is a PAX extended header with a malformed record ({detail})"),
        )
    };
    let mut records = Vec::new();
    // Writers may pad the payload with NULs.
    while let Some(&first) = bytes.first() {
        if first == 0 {
            break;
        }
        let space = bytes
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&bytes[..space])
            .ok()
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| bad("its length is not a number"))?;
        if len <= space + 1 || len > bytes.len() || bytes[len - 1] != b'\n' {
            return Err(bad("its length does not match it"));
        }
        let record = &bytes[space + 1..len - 1];
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no `=`"))?;
        records.push((record[..equals].to_vec(), record[equals + 1..].to_vec()));
        bytes = &bytes[len..];
    }
    Ok(records)
}

/// Which runs an entry's data has.
enum Runs<'a> {
    /// All of it stored, in one piece.
    Plain,
    /// A sparse file's runs.
    Sparse(&'a [Run]),
}

/// The data of one entry (see [`TarReader::data`]). A stream that ends
/// early ends it early: the reader sees fewer bytes than the entry's size.
pub(crate) struct EntryData<'a, S> {
    reader: &'a mut TarReader<S>,
    runs: Runs<'a>,
    size: u64,
    /// The next run of a sparse file.
    index: usize,
    /// How far into the file's data reading is.
    at: u64,
}

impl<S: Source> Read for EntryData<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cap = |n: u64| buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let runs = match self.runs {
            Runs::Plain => {
                let want = cap(self.size - self.at);
                let n = self.reader.read_stored(&mut buf[..want])?;
                self.at += n as u64;
                return Ok(n);
            }
            Runs::Sparse(runs) => runs,
        };
        while let Some(run) = runs.get(self.index) {
            if self.at < run.offset {
                let n = cap(run.offset - self.at);
                buf[..n].fill(0);
                self.at += n as u64;
                return Ok(n);
            }
            let end = run.offset + run.len;
            if self.at < end {
                let want = cap(end - self.at);
                let n = self.reader.read_stored(&mut buf[..want])?;
                self.at += n as u64;
                return Ok(n);
            }
            self.index += 1;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
