//! Opening files that must be regular files (image blobs, archives,
//! cache entries) without ever blocking: a FIFO where a file is expected
//! would make a plain `open(2)` wait for a writer for ever, before any
//! timeout of the caller's is armed. The rule is `vmm::regular_file`'s:
//! open with `O_NONBLOCK` (which returns at once for a FIFO), check with
//! `fstat` that the file is a regular one, and only then clear
//! `O_NONBLOCK` again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The error inside the [`io::Error`] (of kind
/// [`io::ErrorKind::InvalidInput`]) that [`open`] returns for a file that
/// is not a regular file.
#[derive(Debug, thiserror::Error)]
#[error("{kind}, not a regular file")]
pub(crate) struct NotRegular {
    /// What the file is instead: "a FIFO", "a directory", ...
    pub kind: &'static str,
}

/// What a file that is not regular is instead, when `error` came from
/// [`open`] for that reason.
pub(crate) fn not_regular_kind(error: &io::Error) -> Option<&'static str> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegular>())
        .map(|not_regular| not_regular.kind)
}

/// How [`open`] treats a symbolic link at the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Links {
    /// Followed (user input: a link to an image is fine).
    Follow,
    /// Refused as "a symbolic link" (a cache entry is never one).
    Refuse,
}

/// Opens `path` for reading, refusing anything but a regular file (with
/// a [`NotRegular`] error) without blocking on a FIFO or a device.
pub(crate) fn open(path: &Path, links: Links) -> io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Err(e) if links == Links::Refuse && e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_regular("a symbolic link"))
        }
        result => result?,
    };
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(not_regular(crate::describe_type(file_type)));
    }
    // SAFETY: F_GETFL on a descriptor `file` owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with plain flags on a descriptor `file` owns.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn not_regular(kind: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, NotRegular { kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_directories_and_refused_links_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer for ever.
        let err = open(&fifo, Links::Follow).unwrap_err();
        assert_eq!(not_regular_kind(&err), Some("a FIFO"));
        let err = open(dir.path(), Links::Follow).unwrap_err();
        assert_eq!(not_regular_kind(&err), Some("a directory"));

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open(&link, Links::Follow).is_ok());
        let err = open(&link, Links::Refuse).unwrap_err();
        assert_eq!(not_regular_kind(&err), Some("a symbolic link"));
        let opened = open(&file, Links::Refuse).unwrap();
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "reads wait again");
        assert_eq!(
            open(&dir.path().join("missing"), Links::Follow)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
