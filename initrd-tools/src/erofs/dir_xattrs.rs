//! Reading a scanned directory's extended attributes for the EROFS image.
//!
//! This is a system call or two for every entry (51,446 on /usr/share),
//! most of whose answers are "none", so it is made cheap where it can be:
//! - the first ask offers a small buffer: the kernel allocates (and for a
//!   value zeroes) a buffer of the size it is offered, so offering the
//!   64 KiB maximum every time cost more than the answer; a file with more
//!   is asked for its size and read again;
//! - the entries are split between threads (the cores there are, up to
//!   [`MAX_THREADS`]); each thread reads its own share with its own
//!   buffers, and the results come back in the tree's order.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{format, quote, source_path, ErofsError, Xattr};
use crate::tree::Tree;

/// The most bytes of names one file's attributes have (`XATTR_LIST_MAX`),
/// and of one value (`XATTR_SIZE_MAX`).
const XATTR_LIST_MAX: usize = 65536;
const XATTR_SIZE_MAX: usize = 65536;

/// The buffer offered first: the names or value of most attributes fit.
const FIRST_ASK: usize = 256;

/// Threads that read a tree's attributes at most; trees of fewer entries
/// than [`PER_THREAD`] times the count are read by fewer.
const MAX_THREADS: usize = 4;
const PER_THREAD: usize = 4096;

/// The extended attributes of every entry of `tree`, by entry index
/// (none for the entries the packer adds, and for every name of a
/// hard-linked file but its first, which the image stores once). The
/// first error, in the tree's order, is the one returned.
pub(super) fn read_tree(tree: &Tree) -> Result<Vec<Vec<Xattr>>, ErofsError> {
    let count = tree.entries.len();
    // Which entries are read, decided before the entries are shared out.
    let mut linked = std::collections::HashSet::new();
    let wanted: Vec<bool> = tree
        .entries
        .iter()
        .map(|entry| {
            entry.src_ino != 0
                && !(entry.is_regular() && entry.src_nlink > 1 && !linked.insert(entry.ino))
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(MAX_THREADS).min(count / PER_THREAD).max(1);
    let share = count.div_ceil(threads);
    let read_range = |range: std::ops::Range<usize>| {
        let mut scratch = Scratch::default();
        let mut path = Vec::new();
        let mut out = Vec::with_capacity(range.len());
        for index in range {
            if !wanted[index] {
                out.push(Vec::new());
                continue;
            }
            source_path(tree, &tree.entries[index], &mut path);
            out.push(read(&mut path, &mut scratch)?);
        }
        Ok::<_, ErofsError>(out)
    };
    if threads == 1 {
        return read_range(0..count);
    }
    std::thread::scope(|scope| {
        let read_range = &read_range;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = t * share..((t + 1) * share).min(count);
                scope.spawn(move || read_range(range))
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for handle in handles {
            match handle.join() {
                Ok(part) => all.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(all)
    })
}

/// Buffers for [`read`], grown as a file needs them.
struct Scratch {
    list: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            list: vec![0; FIRST_ASK],
            value: vec![0; FIRST_ASK],
        }
    }
}

/// Calls `call(buffer, size)` (an `llistxattr` or `lgetxattr`) with a
/// small part of `buf` first, and when that is too small (`ERANGE`) asks
/// for the size (`call(null, 0)`), grows `buf` to it (at most `max`) and
/// calls again; the size can change in between, so this is tried a few
/// times. Returns the length of the answer, at the start of `buf`.
fn sized_call(
    buf: &mut Vec<u8>,
    max: usize,
    mut call: impl FnMut(*mut libc::c_void, usize) -> isize,
) -> io::Result<usize> {
    let mut offer = buf.len().min(FIRST_ASK);
    for _ in 0..4 {
        let got = call(buf.as_mut_ptr().cast(), offer);
        if got >= 0 {
            return Ok(got as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        let need = call(std::ptr::null_mut(), 0);
        if need < 0 {
            return Err(io::Error::last_os_error());
        }
        // Past the kernel's own maximum it answers E2BIG for the next
        // call, which is reported.
        offer = (need as usize).clamp(1, max);
        if buf.len() < offer {
            buf.resize(offer, 0);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// The extended attributes of `path` (not following a symlink), sorted by
/// name for reproducible bytes; those EROFS cannot store are left out
/// with a warning.
fn read(path: &mut Vec<u8>, scratch: &mut Scratch) -> Result<Vec<Xattr>, ErofsError> {
    let error = |path: &[u8], source| ErofsError::Xattrs {
        path: PathBuf::from(OsStr::from_bytes(path)),
        source,
    };
    if path.contains(&0) {
        return Err(error(path, io::ErrorKind::InvalidInput.into()));
    }
    // The path NUL-terminated in place, without an allocation per file.
    path.push(0);
    let result = read_terminated(path, scratch);
    path.pop();
    let mut out = match result {
        Ok(out) => out,
        Err(ReadError::Io(e)) => return Err(error(path, e)),
        Err(ReadError::TooLarge { name, size }) => {
            let file = String::from_utf8_lossy(path);
            return Err(ErofsError::XattrTooLarge {
                name: format!("{name} of {file}"),
                size,
            });
        }
    };
    out.sort();
    Ok(out)
}

enum ReadError {
    Io(io::Error),
    TooLarge { name: String, size: usize },
}

/// [`read`] of a NUL-terminated path, unsorted.
fn read_terminated(path: &[u8], scratch: &mut Scratch) -> Result<Vec<Xattr>, ReadError> {
    let Scratch { list, value } = scratch;
    let len = match sized_call(list, XATTR_LIST_MAX, |buf, size| {
        // SAFETY: `path` is NUL-terminated; `buf` is null with size 0 or
        // writable for `size` bytes (`sized_call`'s buffer).
        unsafe { libc::llistxattr(path.as_ptr().cast(), buf.cast(), size) }
    }) {
        Ok(len) => len,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        // Each name in the list ends with a NUL.
        let end = start
            + list[start..len]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(len - start);
        let attr: Box<[u8]> = list[start..end].into();
        start = end + 1;
        if attr.is_empty() {
            continue;
        }
        let Some((_, suffix)) = format::xattr_index(&attr) else {
            log::warn!(
                "{}: leaving out the extended attribute {}: EROFS stores only user., trusted., security. and POSIX ACLs",
                String::from_utf8_lossy(&path[..path.len() - 1]),
                quote(&attr)
            );
            continue;
        };
        let suffix_len = suffix.len();
        let mut name = attr.to_vec();
        name.push(0);
        let got = sized_call(value, XATTR_SIZE_MAX, |buf, size| {
            // SAFETY: both names are NUL-terminated; `buf` is null with
            // size 0 or writable for `size` bytes.
            unsafe { libc::lgetxattr(path.as_ptr().cast(), name.as_ptr().cast(), buf, size) }
        });
        match got {
            Ok(got) if got > usize::from(u16::MAX) || suffix_len > usize::from(u8::MAX) => {
                return Err(ReadError::TooLarge {
                    name: quote(&attr),
                    size: got,
                });
            }
            Ok(got) => out.push((attr, value[..got].into())),
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_buffer_grows_to_the_size_asked() {
        // A fake call whose answer is 1000 bytes long.
        let mut buf = vec![0; FIRST_ASK];
        let mut calls = Vec::new();
        let got = sized_call(&mut buf, XATTR_LIST_MAX, |ptr, size| {
            calls.push(size);
            if size == 0 {
                return 1000;
            }
            if size < 1000 {
                // SAFETY: setting errno, as the real call does.
                unsafe { *libc::__errno_location() = libc::ERANGE };
                return -1;
            }
            assert!(!ptr.is_null());
            1000
        })
        .unwrap();
        assert_eq!(got, 1000);
        assert_eq!(calls, [FIRST_ASK, 0, 1000]);
        assert!(buf.len() >= 1000);
    }

    #[test]
    fn an_answer_that_keeps_growing_is_an_error_not_a_loop() {
        let mut buf = vec![0; FIRST_ASK];
        let mut need = 300;
        let got = sized_call(&mut buf, XATTR_LIST_MAX, |_, size| {
            if size == 0 {
                need += 100;
                return need;
            }
            // SAFETY: setting errno, as the real call does.
            unsafe { *libc::__errno_location() = libc::ERANGE };
            -1
        });
        assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::ERANGE));
    }

    #[test]
    fn other_errors_pass_through() {
        let mut buf = vec![0; FIRST_ASK];
        let got = sized_call(&mut buf, XATTR_LIST_MAX, |_, _| {
            // SAFETY: setting errno, as the real call does.
            unsafe { *libc::__errno_location() = libc::EACCES };
            -1
        });
        assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EACCES));
    }
}
