//! Laying out and writing an [`Fs`] as an EROFS image, in one sequential
//! pass through the packer's [`Sink`] (so large files are copied by the
//! kernel with `copy_file_range` when the output is a file).
//!
//! The image is block 0 (1024 zero bytes, the superblock), then runs of
//! metadata blocks, each followed by the data blocks of the inodes it
//! holds (as erofs-utils interleaves them), so that every file is read
//! once, in inode order:
//!
//! - **metadata**: the inodes in the model's order (depth first, root
//!   first: its nid is 36), each 32-byte aligned: its header (compact, or
//!   extended where the size, owner, link count or mtime do not fit a
//!   compact one), its inline xattrs, then either the inline tail of its
//!   data (the last partial block of a directory, symlink or file: "tail
//!   packing") or a chunk-based file's block map. An inode whose header,
//!   xattrs and tail do not fit in what is left of the current block
//!   starts the next run (a tail may not cross a block), unless storing
//!   the tail in a block of its own wastes less;
//! - **data**: the whole blocks of the run's inodes, in inode order (a
//!   file's tail that is not inline is padded to a block), and the chunks
//!   of sparse files that hold data.
//!
//! Holes: a directory's regular file whose allocated size is below its
//! size is mapped with `SEEK_DATA`; when a whole chunk is a hole it is
//! stored chunk-based, and the holes take no block of the image (chunks
//! are 4 KiB, larger for files over 64 MiB so that the map stays at most
//! 16384 entries; a chunk with any data is stored whole, its holes as
//! zeros). Other files are stored flat.
//!
//! The same model gives the same bytes: nothing depends on time or on the
//! order of system calls; the uuid is a hash of the superblock and the root inode.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::format::{
    self, DataLayout, InodeHeader, Super, BLOCK, COMPACT_LEN, DIRENT_LEN, EXTENDED_LEN, NAME_MAX,
    NULL_ADDR, SLOT, SUPER_LEN, SUPER_OFFSET,
};
use super::{ErofsError, Fs, Kind};
use crate::pack::Sink;
use crate::{InitrdError, PackStats};

/// Where a chunk-based file's map may grow to.
const MAX_CHUNKS: u64 = 16384;

/// Where file data comes from.
pub(crate) trait Source {
    /// The error of this source, which the writer's own errors become.
    type Error: From<ErofsError> + From<InitrdError>;

    /// The file holding the data of the file with `key`, where the data
    /// starts in it, and its name for messages. Called for each piece of
    /// the data the writer copies (its inline tail, its blocks).
    fn open(&mut self, key: u64) -> Result<(&File, u64, &Path), Self::Error>;

    /// The writer is done with the data of `key` (its file may be closed).
    fn close(&mut self, _key: u64) {}

    /// For a file that may have holes: which of its `size >> chunk_bits`
    /// (rounded up) chunks hold data; `None` when that is not known (all
    /// are stored).
    fn data_map(
        &mut self,
        _key: u64,
        _size: u64,
        _chunk_bits: u8,
    ) -> Result<Option<Vec<bool>>, Self::Error> {
        Ok(None)
    }
}

/// Where one inode goes.
#[derive(Debug, Clone, Default)]
struct Placed {
    /// Byte offset of its header (a multiple of 32; the nid × 32).
    offset: u64,
    /// Its `i_size`.
    size: u64,
    extended: bool,
    /// Its inline xattr body, encoded.
    xattrs: Vec<u8>,
    layout: DataLayout,
    /// Bytes of inline data after the xattrs.
    inline_len: u64,
    /// Blocks in the data area.
    blocks: u64,
    /// Its first block in the data area.
    blkaddr: u64,
    /// A chunk-based file's chunk size (bits) and which chunks hold data.
    chunks: Option<(u8, Vec<bool>)>,
}

impl Placed {
    fn nid(&self) -> u64 {
        self.offset / SLOT
    }

    fn header_len(&self) -> u64 {
        if self.extended {
            EXTENDED_LEN
        } else {
            COMPACT_LEN
        }
    }
}

/// The size of the inode's data (directory contents, link target, file).
fn data_size(fs: &Fs, index: usize) -> u64 {
    match &fs.inodes[index].kind {
        Kind::Dir { .. } => dir_content(fs, index, &|_| 0).len() as u64,
        Kind::File { size, .. } => *size,
        Kind::Symlink(target) => target.len() as u64,
        Kind::Special => 0,
    }
}

/// A directory's dirent blocks: `.`, `..` and its entries sorted bytewise,
/// each block holding as many dirents (then their names) as fit, zero
/// padded; the last block cut after its last name. `nid` gives a child's
/// nid.
fn dir_content(fs: &Fs, index: usize, nid: &dyn Fn(u32) -> u64) -> Vec<u8> {
    let Kind::Dir { entries, parent } = &fs.inodes[index].kind else {
        return Vec::new();
    };
    let mut all: Vec<(&[u8], u32)> = Vec::with_capacity(entries.len() + 2);
    all.push((b".", index as u32));
    all.push((b"..", *parent));
    all.extend(entries.iter().map(|(name, child)| (&name[..], *child)));
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    let mut start = 0;
    while start < all.len() {
        // How many entries fit in this block.
        let mut end = start;
        let mut used = 0;
        while end < all.len() && used + DIRENT_LEN + all[end].0.len() <= BLOCK as usize {
            used += DIRENT_LEN + all[end].0.len();
            end += 1;
        }
        let block_start = out.len();
        out.resize(block_start + used, 0);
        let block = &mut out[block_start..];
        let mut name_off = (end - start) * DIRENT_LEN;
        for (i, (name, child)) in all[start..end].iter().enumerate() {
            let mode = fs.inodes[*child as usize].mode;
            format::put_dirent(
                &mut block[i * DIRENT_LEN..],
                nid(*child),
                name_off as u16,
                format::file_type(mode),
            );
            block[name_off..name_off + name.len()].copy_from_slice(name);
            name_off += name.len();
        }
        start = end;
        if start < all.len() {
            out.resize(block_start + BLOCK as usize, 0);
        }
    }
    out
}

/// The inline xattr body of `index`.
fn xattr_body(fs: &Fs, index: usize) -> Result<Vec<u8>, ErofsError> {
    let inode = &fs.inodes[index];
    let mut entries = Vec::new();
    for (name, value) in &inode.xattrs {
        let Some((prefix, suffix)) = format::xattr_index(name) else {
            continue;
        };
        if suffix.len() > usize::from(u8::MAX) || value.len() > usize::from(u16::MAX) {
            return Err(ErofsError::XattrTooLarge {
                name: super::quote(name),
                size: value.len(),
            });
        }
        let start = entries.len();
        entries.resize(
            start + format::xattr_entry_len(suffix.len(), value.len()),
            0,
        );
        format::put_xattr(&mut entries[start..], prefix, suffix, value);
    }
    if entries.is_empty() {
        return Ok(entries);
    }
    let mut body = vec![0u8; format::xattr_body_len(entries.len()) - entries.len()];
    body.extend_from_slice(&entries);
    if body.len() > format::xattr_body_len(4 * (usize::from(u16::MAX) - 1)) {
        return Err(ErofsError::XattrTooLarge {
            name: "(all of one file's)".to_string(),
            size: body.len(),
        });
    }
    Ok(body)
}

/// Checks a name a dirent will hold.
fn check_name(name: &[u8]) -> Result<(), ErofsError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > NAME_MAX {
        Some("it is longer than 255 bytes")
    } else if name.contains(&0) || name.contains(&b'/') {
        Some("it holds a NUL or a slash")
    } else if name == b"." || name == b".." {
        Some("it is . or ..")
    } else {
        None
    };
    match why {
        Some(why) => Err(ErofsError::BadName {
            name: super::quote(name),
            why,
        }),
        None => Ok(()),
    }
}

/// The (mtime, nsec) most inodes have, the smallest on a tie: compact
/// inodes take the superblock's.
fn build_time(fs: &Fs) -> (u64, u32) {
    let mut counts: std::collections::HashMap<(u64, u32), u64> = Default::default();
    for inode in &fs.inodes {
        *counts.entry((inode.mtime, inode.mtime_nsec)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(time, _)| time)
        .unwrap_or_default()
}

fn block_align(pos: u64) -> u64 {
    pos.next_multiple_of(BLOCK)
}

/// Lays out every inode: metadata offsets, layouts, data blocks (see the
/// module comment). Returns the placements and the image's block count.
fn lay_out<S: Source>(
    fs: &Fs,
    source: &mut S,
    build: (u64, u32),
) -> Result<(Vec<Placed>, u64), S::Error> {
    let mut placed: Vec<Placed> = Vec::with_capacity(fs.inodes.len());
    let mut pos = (SUPER_OFFSET + SUPER_LEN) as u64;
    // Inodes whose data blocks follow the current metadata run.
    let mut pending: Vec<usize> = Vec::new();
    // Ends the metadata run: the pending inodes' data blocks come next,
    // and the next run starts after them.
    let flush = |pos: u64, pending: &mut Vec<usize>, placed: &mut [Placed]| -> u64 {
        let mut next = block_align(pos) / BLOCK;
        for &i in pending.iter() {
            placed[i].blkaddr = next;
            next += placed[i].blocks;
        }
        pending.clear();
        next * BLOCK
    };
    for (index, inode) in fs.inodes.iter().enumerate() {
        if let Kind::Dir { entries, .. } = &inode.kind {
            for (name, _) in entries {
                check_name(name)?;
            }
        }
        let size = data_size(fs, index);
        let mut p = Placed {
            size,
            extended: size > u64::from(u32::MAX)
                || inode.uid > u32::from(u16::MAX)
                || inode.gid > u32::from(u16::MAX)
                || inode.nlink > u32::from(u16::MAX)
                || (inode.mtime, inode.mtime_nsec) != build,
            xattrs: xattr_body(fs, index)?,
            layout: DataLayout::FlatPlain,
            ..Placed::default()
        };
        let head = p.header_len() + p.xattrs.len() as u64;
        let mut map_len = 0;
        if let Kind::File {
            key,
            maybe_sparse: true,
            ..
        } = inode.kind
        {
            if let Some((bits, map)) = hole_map(source, key, size)? {
                p.blocks = map
                    .iter()
                    .enumerate()
                    .filter(|(_, has)| **has)
                    .map(|(c, _)| chunk_len(size, bits, c).div_ceil(BLOCK))
                    .sum();
                map_len = 4 * map.len() as u64;
                p.layout = DataLayout::ChunkBased;
                p.chunks = Some((bits, map));
            }
        }
        let has_data = !matches!(inode.kind, Kind::Special);
        let tail = size % BLOCK;
        let room = BLOCK - pos % BLOCK;
        if p.layout == DataLayout::FlatPlain && has_data && tail > 0 {
            // The tail inline, where it fits here or in a fresh block and
            // that wastes less than a block of its own would.
            let footprint = head + tail;
            if footprint > room && footprint <= BLOCK && room <= BLOCK - tail {
                pos = flush(pos, &mut pending, &mut placed);
            }
            if footprint <= BLOCK - pos % BLOCK {
                p.layout = DataLayout::FlatInline;
                p.inline_len = tail;
                map_len = tail;
            }
        }
        if p.layout == DataLayout::FlatPlain {
            p.blocks = size.div_ceil(BLOCK);
        } else if p.layout == DataLayout::FlatInline {
            p.blocks = size / BLOCK;
        }
        let footprint = head + map_len;
        if footprint > BLOCK - pos % BLOCK {
            pos = flush(pos, &mut pending, &mut placed);
        }
        p.offset = pos;
        pos = (pos + footprint).next_multiple_of(SLOT);
        if p.blocks > 0 {
            pending.push(index);
        }
        placed.push(p);
    }
    let end = flush(pos, &mut pending, &mut placed);
    let blocks = end / BLOCK;
    if blocks > u64::from(u32::MAX) {
        return Err(ErofsError::TooLarge { blocks }.into());
    }
    Ok((placed, blocks))
}

/// For a file that may have holes: its chunk size (bits) and which chunks
/// hold data, when some chunk is a hole.
fn hole_map<S: Source>(
    source: &mut S,
    key: u64,
    size: u64,
) -> Result<Option<(u8, Vec<bool>)>, S::Error> {
    if size < BLOCK {
        return Ok(None);
    }
    let mut bits = format::BLOCK_BITS;
    while size.div_ceil(1 << bits) > MAX_CHUNKS {
        bits += 1;
    }
    Ok(source
        .data_map(key, size, bits)?
        .filter(|map| map.iter().any(|has| !has))
        .map(|map| (bits, map)))
}

/// Bytes of chunk `chunk` of a file of `size` with chunks of `1 << bits`.
fn chunk_len(size: u64, bits: u8, chunk: usize) -> u64 {
    let start = (chunk as u64) << bits;
    (size - start).min(1 << bits)
}

/// The header of inode `index`.
fn header(fs: &Fs, p: &Placed, index: usize, ino: u32) -> InodeHeader {
    let inode = &fs.inodes[index];
    let i_u = match (&inode.kind, &p.chunks) {
        (Kind::Special, _) => format::encode_dev(inode.rdev.0, inode.rdev.1),
        (_, Some((bits, _))) => u32::from(bits - format::BLOCK_BITS),
        _ if p.blocks > 0 => p.blkaddr as u32,
        _ => 0,
    };
    InodeHeader {
        extended: p.extended,
        layout: p.layout as u16,
        xattr_icount: format::xattr_icount(p.xattrs.len()),
        mode: inode.mode as u16,
        nlink: inode.nlink,
        size: p.size,
        i_u,
        ino,
        uid: inode.uid,
        gid: inode.gid,
        mtime: inode.mtime,
        mtime_nsec: inode.mtime_nsec,
    }
}

/// Writes `count` zero bytes.
fn zeros<W: Write>(sink: &mut Sink<W>, mut count: u64) -> Result<(), InitrdError> {
    while count > 0 {
        let step = count.min(BLOCK);
        sink.space(step as usize)?.fill(0);
        count -= step;
    }
    Ok(())
}

/// Writes `bytes` (of any length).
fn bytes<W: Write>(sink: &mut Sink<W>, bytes: &[u8]) -> Result<(), InitrdError> {
    for piece in bytes.chunks(BLOCK as usize) {
        sink.space(piece.len())?.copy_from_slice(piece);
    }
    Ok(())
}

/// One piece of the image, by where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// An inode: header, xattrs, inline data or block map.
    Meta(usize),
    /// An inode's data blocks.
    Data(usize),
}

/// Writes `fs` as an EROFS image to `sink`, file data from `source`.
pub(crate) fn write_fs<S: Source, W: Write>(
    fs: &Fs,
    source: &mut S,
    sink: &mut Sink<W>,
) -> Result<PackStats, S::Error> {
    let build = build_time(fs);
    let (placed, blocks) = lay_out(fs, source, build)?;
    let headers: Vec<InodeHeader> = placed
        .iter()
        .enumerate()
        .map(|(i, p)| header(fs, p, i, i as u32 + 1))
        .collect();
    let mut sb = Super {
        root_nid: placed[0].nid() as u16,
        inos: fs.inodes.len() as u64,
        build_time: build.0,
        build_time_nsec: build.1,
        blocks: blocks as u32,
        uuid: [0; 16],
        feature_incompat: if placed.iter().any(|p| p.chunks.is_some()) {
            format::INCOMPAT_CHUNKED_FILE
        } else {
            0
        },
    };
    // The uuid: a hash of the superblock's other fields and of the root
    // directory's inode (hashing every inode cost more than the rest of
    // the metadata).
    let mut hasher = Sha256::new();
    let mut encoded = [0u8; SUPER_LEN + EXTENDED_LEN as usize];
    format::put_super(&mut encoded, &sb);
    format::put_inode(&mut encoded[SUPER_LEN..], &headers[0]);
    hasher.update(encoded);
    sb.uuid.copy_from_slice(&hasher.finalize()[..16]);
    zeros(sink, SUPER_OFFSET as u64)?;
    format::put_super(sink.space(SUPER_LEN)?, &sb);

    // Metadata offsets and data blocks both grow in inode order: the
    // pieces in image order are a merge of the two.
    let mut with_data = (0..placed.len())
        .filter(|&i| placed[i].blocks > 0)
        .peekable();
    let mut metas = 0..placed.len();
    let pieces = std::iter::from_fn(|| {
        let data_at = with_data.peek().map(|&i| placed[i].blkaddr * BLOCK);
        let meta_at = (metas.start < metas.end).then(|| placed[metas.start].offset);
        match (meta_at, data_at) {
            (Some(m), Some(d)) if d < m => with_data.next().map(|i| (d, Piece::Data(i))),
            (Some(m), _) => metas.next().map(|i| (m, Piece::Meta(i))),
            (None, Some(d)) => with_data.next().map(|i| (d, Piece::Data(i))),
            (None, None) => None,
        }
    });
    let nid = |child: u32| placed[child as usize].nid();
    // Directory contents between their inline tail and their blocks.
    let mut dirs: std::collections::HashMap<usize, Vec<u8>> = Default::default();
    for (at, piece) in pieces {
        zeros(sink, at - sink.total())?;
        match piece {
            Piece::Meta(i) => {
                let p = &placed[i];
                let dst = sink.space(p.header_len() as usize)?;
                dst.fill(0);
                format::put_inode(dst, &headers[i]);
                bytes(sink, &p.xattrs)?;
                if p.inline_len > 0 {
                    let from = p.size - p.inline_len;
                    write_data(fs, i, source, sink, &nid, &mut dirs, from..p.size)?;
                }
                if let Some((bits, map)) = &p.chunks {
                    let mut addr = p.blkaddr;
                    for (c, has) in map.iter().enumerate() {
                        let value = if *has {
                            let this = addr as u32;
                            addr += chunk_len(p.size, *bits, c).div_ceil(BLOCK);
                            this
                        } else {
                            NULL_ADDR
                        };
                        sink.space(4)?.copy_from_slice(&value.to_le_bytes());
                    }
                }
                if p.blocks == 0 {
                    close(fs, i, source);
                }
            }
            Piece::Data(i) => {
                let p = &placed[i];
                match &p.chunks {
                    None => {
                        let end = p.size - p.inline_len;
                        write_data(fs, i, source, sink, &nid, &mut dirs, 0..end)?;
                        zeros(sink, block_align(end) - end)?;
                    }
                    Some((bits, map)) => {
                        for (c, _) in map.iter().enumerate().filter(|(_, has)| **has) {
                            let start = (c as u64) << bits;
                            let len = chunk_len(p.size, *bits, c);
                            write_data(fs, i, source, sink, &nid, &mut dirs, start..start + len)?;
                            zeros(sink, block_align(len) - len)?;
                        }
                    }
                }
                close(fs, i, source);
            }
        }
    }
    zeros(sink, blocks * BLOCK - sink.total())?;
    sink.flush()?;
    Ok(PackStats {
        entries: fs.inodes.len() as u64,
        bytes: sink.total(),
    })
}

/// Tells the source that inode `index`'s data is written.
fn close<S: Source>(fs: &Fs, index: usize, source: &mut S) {
    if let Kind::File { key, .. } = fs.inodes[index].kind {
        source.close(key);
    }
}

/// Writes the bytes `range` of inode `index`'s data.
fn write_data<S: Source, W: Write>(
    fs: &Fs,
    index: usize,
    source: &mut S,
    sink: &mut Sink<W>,
    nid: &dyn Fn(u32) -> u64,
    dirs: &mut std::collections::HashMap<usize, Vec<u8>>,
    range: std::ops::Range<u64>,
) -> Result<(), S::Error> {
    let (start, end) = (range.start as usize, range.end as usize);
    match &fs.inodes[index].kind {
        Kind::Dir { .. } => {
            // A directory's tail comes first (its inode), then its blocks.
            let content = dirs
                .remove(&index)
                .unwrap_or_else(|| dir_content(fs, index, nid));
            bytes(sink, &content[start..end])?;
            if start > 0 && end == content.len() {
                dirs.insert(index, content);
            }
        }
        Kind::Symlink(target) => bytes(sink, &target[start..end])?,
        Kind::File { key, .. } => {
            if end > start {
                let (file, base, path) = source.open(*key)?;
                sink.file_data(file, base + range.start, range.end - range.start, path)?;
            }
        }
        Kind::Special => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Inode, Kind};
    use super::*;

    fn dir(entries: Vec<(&str, u32)>, parent: u32) -> Inode {
        Inode {
            mode: 0o040_755,
            nlink: 2,
            kind: Kind::Dir {
                entries: entries
                    .into_iter()
                    .map(|(n, c)| (n.as_bytes().into(), c))
                    .collect(),
                parent,
            },
            ..Inode::default()
        }
    }

    #[test]
    fn dirents_are_sorted_and_split_into_blocks() {
        // 300 names of 20 bytes: 32 bytes each, 128 per block.
        let names: Vec<String> = (0..300).map(|i| format!("{:020}", 299 - i)).collect();
        let mut fs = Fs {
            inodes: vec![dir(names.iter().map(|n| (n.as_str(), 1)).collect(), 0)],
        };
        fs.inodes.push(Inode {
            mode: 0o100_644,
            ..Inode::default()
        });
        let content = dir_content(&fs, 0, &|c| u64::from(c) + 100);
        // 302 entries: "." and ".." (13 and 14 bytes) sort first, and
        // leave room for 127 names in the first block; then 128, then 45.
        assert_eq!(content.len(), 2 * 4096 + 45 * 32);
        let first = u16::from_le_bytes([content[8], content[9]]);
        assert_eq!(first as usize, 129 * DIRENT_LEN);
        assert_eq!(&content[first as usize..first as usize + 1], b".");
        let second_block = &content[4096..];
        let off = u16::from_le_bytes([second_block[8], second_block[9]]) as usize;
        assert_eq!(off, 128 * DIRENT_LEN);
        assert_eq!(
            &second_block[off..off + 20],
            format!("{:020}", 127).as_bytes()
        );
        assert_eq!(
            u64::from_le_bytes(second_block[..8].try_into().unwrap()),
            101
        );
    }

    #[test]
    fn names_a_dirent_cannot_hold_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'n'; 256]] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name(&[b'n'; 255]).unwrap();
    }

    /// A source with no files.
    struct NoFiles;

    impl Source for NoFiles {
        type Error = ErofsError;

        fn open(&mut self, _key: u64) -> Result<(&File, u64, &Path), ErofsError> {
            unreachable!("no file data in these trees")
        }
    }

    fn write_to_vec(fs: &Fs) -> Result<Vec<u8>, ErofsError> {
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, None, Path::new("test"));
        write_fs(fs, &mut NoFiles, &mut sink)?;
        drop(sink);
        Ok(out)
    }

    #[test]
    fn hostile_trees_are_refused_with_the_name() {
        let mut fs = Fs {
            inodes: vec![dir(vec![], 0)],
        };
        let long = "n".repeat(256);
        fs.inodes[0] = dir(vec![(long.as_str(), 0)], 0);
        let err = write_to_vec(&fs).unwrap_err();
        assert!(matches!(err, ErofsError::BadName { .. }), "{err}");
        fs.inodes[0] = dir(vec![], 0);
        fs.inodes[0].xattrs = vec![(b"user.big"[..].into(), vec![0u8; 70_000].into_boxed_slice())];
        let err = write_to_vec(&fs).unwrap_err();
        assert!(err.to_string().contains("user.big"), "{err}");
    }

    #[test]
    fn an_empty_root_is_one_block_with_the_root_at_nid_36() {
        let image = write_to_vec(&Fs {
            inodes: vec![dir(vec![], 0)],
        })
        .unwrap();
        assert_eq!(image.len(), 4096);
        let sb = &image[SUPER_OFFSET..SUPER_OFFSET + SUPER_LEN];
        assert_eq!(format::read_super(sb).map(|s| s.blocks), Some(1));
        assert_eq!(u16::from_le_bytes([sb[14], sb[15]]), 36);
        // The root: compact, inline, its two dirents right after it.
        let root = &image[36 * 32..];
        assert_eq!(u16::from_le_bytes([root[0], root[1]]), 2 << 1);
        assert_eq!(u32::from_le_bytes(root[8..12].try_into().unwrap()), 27);
        assert_eq!(&root[32 + 24..32 + 27], b"...");
    }
}
