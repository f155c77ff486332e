//! How much memory a newc archive takes once the kernel has unpacked it
//! into a tmpfs (the initramfs's rootfs when the kernel has
//! `CONFIG_TMPFS` and no `root=`): what the default guest memory is sized
//! from. Only the headers are read, through one window that slides over
//! the file, so an archive of small files costs a few reads per window and
//! one of large files one read per member; nothing is indexed or kept.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::image::compression_format;
use crate::regular_file::{self, Links};

/// A newc header: magic and 13 fields of 8 hex digits.
const HEADER: usize = 110;
/// The window the headers are read through.
const WINDOW: usize = 64 * 1024;
/// A tmpfs page.
const PAGE: u64 = 4096;
/// Symbolic link targets up to this long live in the inode (Linux 6.1,
/// `mm/shmem.c`, `SHORT_SYMLINK_LEN`).
const SHORT_SYMLINK_LEN: u64 = 128;

/// The memory pages a tmpfs gives members of these `(mode, size)`, in
/// bytes: a regular file's data rounded up to 4 KiB pages (a hard link's
/// other names carry no data in newc), a symbolic link's target one page
/// when it is longer than the 128 bytes shmem keeps in the inode;
/// directories, devices and FIFOs take none.
pub fn tmpfs_bytes(members: impl IntoIterator<Item = (u32, u64)>) -> u64 {
    members
        .into_iter()
        .map(|(mode, size)| match mode & libc::S_IFMT {
            libc::S_IFREG => size.div_ceil(PAGE).saturating_mul(PAGE),
            libc::S_IFLNK if size > SHORT_SYMLINK_LEN => PAGE,
            _ => 0,
        })
        .fold(0u64, u64::saturating_add)
}

/// [`tmpfs_bytes`] of the members of a newc archive held in memory (or
/// several concatenated, zero padding between them, as the kernel takes
/// them).
pub fn tmpfs_bytes_of(bytes: &[u8]) -> io::Result<u64> {
    scan(bytes.len() as u64, |buf, offset| {
        let start = offset as usize;
        let end = (start + buf.len()).min(bytes.len());
        let n = end.saturating_sub(start);
        buf[..n].copy_from_slice(&bytes[start..end]);
        Ok(n)
    })
}

/// [`tmpfs_bytes`] of the archive at `path` (a regular file); `None` when
/// it is compressed (only the kernel unpacks those).
pub fn tmpfs_bytes_of_archive(path: &Path) -> io::Result<Option<u64>> {
    let file = regular_file::open(path, Links::Follow)?;
    let mut head = [0u8; 6];
    let n = read_full_at(&file, &mut head, 0)?;
    if compression_format(&head[..n]).is_some() {
        return Ok(None);
    }
    let len = file.metadata()?.len();
    scan(len, |buf, offset| read_full_at(&file, buf, offset)).map(Some)
}

/// Reads from `offset` until `buf` is full or the file ends.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Walks the headers of an archive of `len` bytes that `read_at` reads.
fn scan(len: u64, mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<usize>) -> io::Result<u64> {
    let mut window = vec![0u8; WINDOW];
    // The window holds [start, start + filled).
    let (mut start, mut filled) = (0u64, 0usize);
    let mut pos = 0u64;
    let mut total = 0u64;
    // Makes the window hold `[pos, pos + want)` (or to the end of the
    // archive) and returns how much of it it holds.
    let mut fetch = |pos: u64, want: usize, window: &mut Vec<u8>| -> io::Result<(usize, usize)> {
        if pos < start || pos + want as u64 > start + filled as u64 {
            start = pos;
            filled = read_at(window, pos)?;
        }
        let at = (pos - start) as usize;
        Ok((at, filled - at))
    };
    while pos < len {
        let (at, held) = fetch(pos, HEADER, &mut window)?;
        // Concatenated archives are separated by zero padding.
        let zeros = window[at..at + held]
            .iter()
            .take_while(|&&b| b == 0)
            .count();
        if zeros > 0 {
            pos += zeros as u64;
            continue;
        }
        if held < HEADER {
            return Err(bad(format!("the archive is truncated at byte {pos}")));
        }
        let header = &window[at..at + HEADER];
        if !header.starts_with(b"070701") && !header.starts_with(b"070702") {
            return Err(bad(format!("no newc header at byte {pos}")));
        }
        let field = |index: usize| -> io::Result<u64> {
            let digits = &header[6 + 8 * index..14 + 8 * index];
            std::str::from_utf8(digits)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .map(u64::from)
                .ok_or_else(|| bad(format!("a bad header field at byte {pos}")))
        };
        let (mode, size, name_len) = (field(1)? as u32, field(6)?, field(11)?);
        total = total.saturating_add(tmpfs_bytes([(mode, size)]));
        let data = (pos + HEADER as u64 + name_len).next_multiple_of(4);
        pos = (data + size).next_multiple_of(4);
        if data + size > len {
            return Err(bad(format!(
                "the archive is truncated in the member at byte {}",
                data
            )));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::newc::NewcWriter;

    /// An archive with every kind of member the count tells apart, and
    /// its count: one 1, page 1, page-and-a-byte 2, linked 1, long 1.
    fn archive() -> (Vec<u8>, u64) {
        let mut w = NewcWriter::new(Vec::new());
        w.add_dir(".", 0o755).unwrap();
        w.add_file("empty", 0o644, b"").unwrap();
        w.add_file("one", 0o644, b"x").unwrap();
        w.add_file("page", 0o644, &[7; 4096]).unwrap();
        w.add_file("page-and-a-byte", 0o644, &[7; 4097]).unwrap();
        w.add_symlink("short", &"a".repeat(128)).unwrap();
        w.add_symlink("long", &"a".repeat(129)).unwrap();
        w.add_dir("dir", 0o755).unwrap();
        w.add_file(&format!("dir/{}", "n".repeat(200)), 0o644, b"linked")
            .unwrap();
        (w.finish().unwrap(), 6 * PAGE)
    }

    #[test]
    fn whole_pages_of_data_and_long_link_targets_are_counted() {
        let (bytes, want) = archive();
        assert_eq!(tmpfs_bytes_of(&bytes).unwrap(), want);
        // Two archives, zero padding between them (the kernel's rule).
        let mut two = bytes.clone();
        two.extend_from_slice(&[0; 12]);
        two.extend_from_slice(&bytes);
        assert_eq!(tmpfs_bytes_of(&two).unwrap(), 2 * want);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &two).unwrap();
        assert_eq!(tmpfs_bytes_of_archive(&path).unwrap(), Some(2 * want));
        assert_eq!(tmpfs_bytes([(0o100644, u64::MAX)]), u64::MAX);
        assert_eq!(tmpfs_bytes([(0o020644, 4096), (0o040755, 4096)]), 0);
    }

    #[test]
    fn headers_across_windows_are_read_whole() {
        // Members whose headers straddle the window's end at every offset.
        let mut w = NewcWriter::new(Vec::new());
        let mut want = 0;
        for i in 0..300u64 {
            let size = (i * 997) % 9000;
            w.add_file(&format!("f{i}"), 0o644, &vec![1; size as usize])
                .unwrap();
            want += size.div_ceil(PAGE) * PAGE;
        }
        let bytes = w.finish().unwrap();
        assert!(bytes.len() > 2 * WINDOW);
        assert_eq!(tmpfs_bytes_of(&bytes).unwrap(), want);
    }

    #[test]
    fn truncated_foreign_and_compressed_archives() {
        let (bytes, _) = archive();
        assert!(tmpfs_bytes_of(&bytes[..100]).is_err());
        // The header is whole, the data is not.
        let cut = bytes.len() - 200;
        assert!(tmpfs_bytes_of(&bytes[..cut]).is_err());
        assert!(tmpfs_bytes_of(b"not an archive at all, not at all, no").is_err());
        let mut bad_digit = bytes.clone();
        bad_digit[20] = b'g';
        assert!(tmpfs_bytes_of(&bad_digit).is_err());
        assert_eq!(tmpfs_bytes_of(b"").unwrap(), 0);
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("a.cpio.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        assert_eq!(tmpfs_bytes_of_archive(&gz).unwrap(), None);
        assert!(tmpfs_bytes_of_archive(dir.path()).is_err());
    }
}
