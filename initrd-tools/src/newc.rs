//! The newc ("070701") cpio format: one header encoder shared by the tree
//! packer and by [`NewcWriter`], a writer for small archives built in memory.
//!
//! An entry is a 110-byte ASCII header (the magic and thirteen 8-digit hex
//! fields), the NUL-terminated name padded so that the data starts on a
//! 4-byte boundary, then the data padded to 4 bytes. The archive ends with an
//! entry named `TRAILER!!!`. Every entry ends 4-aligned, so archives can be
//! concatenated: the kernel unpacks each one in turn.

use std::io::{self, Write};

/// Length of a newc header, magic included.
pub(crate) const HEADER_LEN: usize = 110;

/// Name of the entry that ends an archive.
pub(crate) const TRAILER_NAME: &[u8] = b"TRAILER!!!";

/// File type bits of `st_mode`, as stored in the header's mode field.
pub(crate) const S_IFMT: u32 = 0o170_000;
pub(crate) const S_IFDIR: u32 = 0o040_000;
pub(crate) const S_IFREG: u32 = 0o100_000;
pub(crate) const S_IFLNK: u32 = 0o120_000;
pub(crate) const S_IFCHR: u32 = 0o020_000;
pub(crate) const S_IFBLK: u32 = 0o060_000;
pub(crate) const S_IFIFO: u32 = 0o010_000;

/// The fields of one newc header, except the name (whose length the encoder
/// fills in) and the checksum (always 0 in "070701").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Bytes of padding after `len` bytes to reach a multiple of 4.
pub(crate) fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Bytes an entry's header and name take, padding included.
pub(crate) fn header_and_name_len(name_len: usize) -> usize {
    let n = HEADER_LEN + name_len + 1;
    n + pad4(n)
}

fn put_hex8(dst: &mut [u8], value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for (i, byte) in dst.iter_mut().take(8).enumerate() {
        *byte = DIGITS[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
}

/// Encodes the header and the padded, NUL-terminated `name` into `dst`,
/// which must be exactly `header_and_name_len(name.len())` bytes long.
/// Returns an error when the name is too long for the 32-bit name size.
pub(crate) fn encode_header(dst: &mut [u8], header: &Header, name: &[u8]) -> io::Result<()> {
    let namesize = u32::try_from(name.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry name too long"))?;
    debug_assert_eq!(dst.len(), header_and_name_len(name.len()));
    dst[..6].copy_from_slice(b"070701");
    let fields = [
        header.ino,
        header.mode,
        header.uid,
        header.gid,
        header.nlink,
        header.mtime,
        header.filesize,
        header.dev_major,
        header.dev_minor,
        header.rdev_major,
        header.rdev_minor,
        namesize,
        0, // check: only used by the "070702" variant
    ];
    for (i, value) in fields.into_iter().enumerate() {
        put_hex8(&mut dst[6 + 8 * i..], value);
    }
    dst[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
    dst[HEADER_LEN + name.len()..].fill(0);
    Ok(())
}

/// The trailer entry's header: inode 0, nothing else set but `nlink`, as GNU
/// cpio writes it.
pub(crate) fn trailer_header() -> Header {
    Header {
        nlink: 1,
        ..Header::default()
    }
}

/// Writes a newc archive entry by entry, for small archives built in memory
/// (for example a guest init and its configuration appended to a rootfs
/// archive).
///
/// Entries are owned by root, have mtime 0 and get inode numbers 1, 2, … in
/// the order they are added, so the same calls give the same bytes.
/// Paths are written as given; use relative paths such as `"etc/config"`.
/// Parent directories are not created implicitly: add them first.
///
/// ```
/// use initrd_tools::newc::NewcWriter;
///
/// let mut w = NewcWriter::new(Vec::new());
/// w.add_dir("etc", 0o755)?;
/// w.add_file("etc/motd", 0o644, b"hello\n")?;
/// let archive = w.finish()?;
/// assert_eq!(archive.len() % 4, 0);
/// assert!(archive.starts_with(b"070701"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    scratch: Vec<u8>,
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        NewcWriter {
            out,
            next_ino: 1,
            scratch: Vec::new(),
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let filesize = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {path}: data larger than 4 GiB"),
            )
        })?;
        let header = Header {
            ino: self.next_ino,
            mode,
            nlink: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
            filesize,
            rdev_major: rdev.0,
            rdev_minor: rdev.1,
            ..Header::default()
        };
        self.next_ino += 1;
        self.scratch.clear();
        self.scratch.resize(header_and_name_len(path.len()), 0);
        encode_header(&mut self.scratch, &header, path.as_bytes())?;
        self.out.write_all(&self.scratch)?;
        self.out.write_all(data)?;
        self.out.write_all(&[0; 3][..pad4(data.len())])
    }

    /// Adds a directory; `mode` holds the permission bits (for example 0o755).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), (0, 0), &[])
    }

    /// Adds a regular file with the given permission bits and contents.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// Adds a symbolic link to `target` (mode 0777, as Linux reports links).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (`/dev/console` is 5,1).
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the output. Every entry ends 4-aligned,
    /// so the archive's length is a multiple of 4 and another archive may be
    /// appended to it.
    pub fn finish(mut self) -> io::Result<W> {
        self.scratch.clear();
        self.scratch
            .resize(header_and_name_len(TRAILER_NAME.len()), 0);
        encode_header(&mut self.scratch, &trailer_header(), TRAILER_NAME)?;
        self.out.write_all(&self.scratch)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], index: usize) -> u32 {
        let text = std::str::from_utf8(&entry[6 + 8 * index..14 + 8 * index]).unwrap();
        u32::from_str_radix(text, 16).unwrap()
    }

    #[test]
    fn header_layout_matches_newc() {
        let header = Header {
            ino: 0x12,
            mode: 0o100_644,
            uid: 1,
            gid: 2,
            nlink: 3,
            mtime: 0xdead_beef,
            filesize: 5,
            dev_major: 6,
            dev_minor: 7,
            rdev_major: 8,
            rdev_minor: 9,
        };
        let mut buf = vec![0xff; header_and_name_len(3)];
        encode_header(&mut buf, &header, b"abc").unwrap();
        assert_eq!(buf.len(), 116);
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(&buf[6..14], b"00000012");
        assert_eq!(&buf[46..54], b"DEADBEEF");
        let expected = [0x12, 0o100_644, 1, 2, 3, 0xdead_beef, 5, 6, 7, 8, 9, 4, 0];
        for (i, value) in expected.into_iter().enumerate() {
            assert_eq!(field(&buf, i), value, "field {i}");
        }
        assert_eq!(&buf[110..], b"abc\0\0\0");
    }

    #[test]
    fn padding_keeps_entries_aligned() {
        for name_len in 0..12 {
            assert_eq!(header_and_name_len(name_len) % 4, 0);
            assert!(header_and_name_len(name_len) > HEADER_LEN + name_len);
        }
        assert_eq!(pad4(0), 0);
        assert_eq!(pad4(1), 3);
        assert_eq!(pad4(4), 0);
        assert_eq!(pad4(7), 1);
    }

    #[test]
    fn writer_assigns_inodes_and_aligns_archive() {
        let mut w = NewcWriter::new(Vec::new());
        w.add_dir("dev", 0o755).unwrap();
        w.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        w.add_file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.add_symlink("sh", "busybox").unwrap();
        let archive = w.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);

        // Walk the entries back and check what each header says.
        let mut pos = 0;
        let mut seen = Vec::new();
        loop {
            let entry = &archive[pos..];
            let namesize = field(entry, 11) as usize;
            let name = &entry[HEADER_LEN..HEADER_LEN + namesize - 1];
            let size = field(entry, 6) as usize;
            let data_start = header_and_name_len(namesize - 1);
            seen.push((
                String::from_utf8(name.to_vec()).unwrap(),
                field(entry, 0),
                field(entry, 1),
                entry[data_start..data_start + size].to_vec(),
                (field(entry, 9), field(entry, 10)),
            ));
            pos += data_start + size + pad4(size);
            if name == TRAILER_NAME {
                break;
            }
        }
        assert_eq!(pos, archive.len());
        assert_eq!(seen[0], ("dev".into(), 1, 0o040_755, vec![], (0, 0)));
        assert_eq!(
            seen[1],
            ("dev/console".into(), 2, 0o020_600, vec![], (5, 1))
        );
        assert_eq!(seen[2].3, b"#!/bin/sh\n");
        assert_eq!(
            seen[3],
            ("sh".into(), 4, 0o120_777, b"busybox".to_vec(), (0, 0))
        );
        assert_eq!(seen[4].0, "TRAILER!!!");
    }
}
