//! The on-disk structures of an uncompressed EROFS image, as the kernel's
//! `fs/erofs/erofs_fs.h` and `Documentation/filesystems/erofs.rst` define
//! them: the superblock at byte 1024, compact (32-byte) and extended
//! (64-byte) inodes addressed by their nid (byte offset / 32 from the
//! metadata area, which starts at block 0 here), inline extended
//! attributes after the inode, directory blocks of 12-byte dirents followed
//! by their names, and block maps of chunk-based files. All little-endian.

/// The block size: 4 KiB, the page size every kernel that mounts EROFS has
/// on x86-64.
pub(crate) const BLOCK: u64 = 4096;
pub(crate) const BLOCK_BITS: u8 = 12;

/// Where the superblock starts, and its length.
pub(crate) const SUPER_OFFSET: usize = 1024;
pub(crate) const SUPER_LEN: usize = 128;

const MAGIC: u32 = 0xE0F5_E1E2;

/// `EROFS_FEATURE_INCOMPAT_CHUNKED_FILE`: some inode is chunk-based.
pub(crate) const INCOMPAT_CHUNKED_FILE: u32 = 0x4;

/// Inodes are 32-byte slots: a nid is a byte offset / 32.
pub(crate) const SLOT: u64 = 32;
pub(crate) const COMPACT_LEN: u64 = 32;
pub(crate) const EXTENDED_LEN: u64 = 64;

/// Data layouts (`i_format` bits 1-3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum DataLayout {
    /// Whole blocks from `raw_blkaddr` (none for an empty file).
    #[default]
    FlatPlain = 0,
    /// Whole blocks from `raw_blkaddr`, then the last partial block's
    /// bytes right after the inode and its xattrs, in the same block.
    FlatInline = 2,
    /// A block map after the inode: one block address per chunk, or
    /// [`NULL_ADDR`] for a chunk that is a hole.
    ChunkBased = 4,
}

/// A chunk that is a hole, in a block map.
pub(crate) const NULL_ADDR: u32 = u32::MAX;

/// The longest name a dirent holds.
pub(crate) const NAME_MAX: usize = 255;

/// A dirent: nid (8), name offset (2), file type (1), reserved (1).
pub(crate) const DIRENT_LEN: usize = 12;

/// `EROFS_FT_*`, the file type in a dirent.
pub(crate) fn file_type(mode: u32) -> u8 {
    match mode & 0o170_000 {
        0o100_000 => 1,
        0o040_000 => 2,
        0o020_000 => 3,
        0o060_000 => 4,
        0o010_000 => 5,
        0o140_000 => 6,
        0o120_000 => 7,
        _ => 0,
    }
}

/// A device number as the kernel's `new_encode_dev` writes it.
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The superblock's fields that vary.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Super {
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub uuid: [u8; 16],
    pub feature_incompat: u32,
}

/// Writes the superblock into `dst` (the 128 bytes at [`SUPER_OFFSET`]).
pub(crate) fn put_super(dst: &mut [u8], sb: &Super) {
    dst[..SUPER_LEN].fill(0);
    put32(dst, 0, MAGIC);
    // checksum (4) and feature_compat (8) stay 0: no superblock checksum.
    dst[12] = BLOCK_BITS;
    put16(dst, 14, sb.root_nid);
    put64(dst, 16, sb.inos);
    put64(dst, 24, sb.build_time);
    put32(dst, 32, sb.build_time_nsec);
    put32(dst, 36, sb.blocks);
    // meta_blkaddr (40) and xattr_blkaddr (44) are block 0.
    dst[48..64].copy_from_slice(&sb.uuid);
    // The volume name marks the image as this writer's (the cache's check).
    dst[64..80].copy_from_slice(super::VOLUME_NAME);
    put32(dst, 80, sb.feature_incompat);
}

/// What the superblock of an image says, for the cache's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SuperSummary {
    pub blocks: u32,
}

/// Reads the superblock's magic, block size and block count; `None` when
/// `src` (the 128 bytes at [`SUPER_OFFSET`]) is not one this writer makes.
pub(crate) fn read_super(src: &[u8]) -> Option<SuperSummary> {
    if src.len() < SUPER_LEN || get32(src, 0) != MAGIC || src[12] != BLOCK_BITS {
        return None;
    }
    Some(SuperSummary {
        blocks: get32(src, 36),
    })
}

/// One inode's on-disk header.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InodeHeader {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr`, `rdev` or the chunk format, by the inode's kind.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

/// Writes `inode` into `dst` (32 or 64 bytes, which must be zero).
pub(crate) fn put_inode(dst: &mut [u8], inode: &InodeHeader) {
    let format = u16::from(inode.extended) | (inode.layout << 1);
    put16(dst, 0, format);
    put16(dst, 2, inode.xattr_icount);
    put16(dst, 4, inode.mode);
    if inode.extended {
        put64(dst, 8, inode.size);
        put32(dst, 16, inode.i_u);
        put32(dst, 20, inode.ino);
        put32(dst, 24, inode.uid);
        put32(dst, 28, inode.gid);
        put64(dst, 32, inode.mtime);
        put32(dst, 40, inode.mtime_nsec);
        put32(dst, 44, inode.nlink);
    } else {
        // The caller chose compact only where these fit.
        put16(dst, 6, inode.nlink as u16);
        put32(dst, 8, inode.size as u32);
        put32(dst, 16, inode.i_u);
        put32(dst, 20, inode.ino);
        put16(dst, 24, inode.uid as u16);
        put16(dst, 26, inode.gid as u16);
    }
}

/// The name prefixes EROFS stores as an index, longest first where one is
/// a prefix of another: (prefix, index, whether the whole name is the
/// prefix).
const XATTR_PREFIXES: [(&[u8], u8, bool); 5] = [
    (b"system.posix_acl_access", 2, true),
    (b"system.posix_acl_default", 3, true),
    (b"user.", 1, false),
    (b"trusted.", 4, false),
    (b"security.", 6, false),
];

/// The index and the stored suffix of the extended attribute `name`;
/// `None` for a namespace EROFS cannot store.
pub(crate) fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES
        .iter()
        .find(|(prefix, _, whole)| {
            if *whole {
                name == *prefix
            } else {
                name.starts_with(prefix) && name.len() > prefix.len()
            }
        })
        .map(|(prefix, index, _)| (*index, &name[prefix.len()..]))
}

/// Bytes one xattr entry takes: a 4-byte header, the name suffix and the
/// value, padded to 4.
pub(crate) fn xattr_entry_len(suffix_len: usize, value_len: usize) -> usize {
    (4 + suffix_len + value_len).next_multiple_of(4)
}

/// Bytes the inline xattr body takes for entries of `entries_len` bytes:
/// the 12-byte header first; 0 without entries.
pub(crate) fn xattr_body_len(entries_len: usize) -> usize {
    if entries_len == 0 {
        0
    } else {
        12 + entries_len
    }
}

/// `i_xattr_icount` for a body of `body_len` bytes (see
/// [`xattr_body_len`]): the body is 12 + 4 × (icount − 1) bytes.
pub(crate) fn xattr_icount(body_len: usize) -> u16 {
    if body_len == 0 {
        0
    } else {
        ((body_len - 12) / 4 + 1) as u16
    }
}

/// Writes one xattr entry into `dst` (exactly its padded length, zeroed).
pub(crate) fn put_xattr(dst: &mut [u8], index: u8, suffix: &[u8], value: &[u8]) {
    dst[0] = suffix.len() as u8;
    dst[1] = index;
    put16(dst, 2, value.len() as u16);
    dst[4..4 + suffix.len()].copy_from_slice(suffix);
    dst[4 + suffix.len()..4 + suffix.len() + value.len()].copy_from_slice(value);
}

/// Writes one dirent at the start of `dst`.
pub(crate) fn put_dirent(dst: &mut [u8], nid: u64, name_off: u16, file_type: u8) {
    put64(dst, 0, nid);
    put16(dst, 8, name_off);
    dst[10] = file_type;
    dst[11] = 0;
}

pub(crate) fn put16(dst: &mut [u8], at: usize, value: u16) {
    dst[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put32(dst: &mut [u8], at: usize, value: u32) {
    dst[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put64(dst: &mut [u8], at: usize, value: u64) {
    dst[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get32(src: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_as_the_kernel_does() {
        assert_eq!(encode_dev(5, 1), 0x501);
        assert_eq!(encode_dev(1, 3), 0x103);
        // Minor above 255: its high bits go above the major's.
        assert_eq!(encode_dev(8, 0x1234), 0x34 | (8 << 8) | (0x1200 << 12));
    }

    #[test]
    fn xattr_names_map_to_their_index() {
        assert_eq!(
            xattr_index(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(xattr_index(b"user.x"), Some((1, &b"x"[..])));
        assert_eq!(xattr_index(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_index(b"system.other"), None);
        assert_eq!(xattr_index(b"user."), None);
        assert_eq!(xattr_entry_len(10, 20), 36);
        assert_eq!(xattr_icount(xattr_body_len(36)), 10);
        assert_eq!(xattr_body_len(0), 0);
    }

    #[test]
    fn superblock_reads_back() {
        let mut sb = [0xffu8; SUPER_LEN];
        put_super(
            &mut sb,
            &Super {
                root_nid: 36,
                blocks: 7,
                ..Super::default()
            },
        );
        assert_eq!(read_super(&sb), Some(SuperSummary { blocks: 7 }));
        sb[0] ^= 1;
        assert_eq!(read_super(&sb), None);
    }
}
