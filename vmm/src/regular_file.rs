//! Opening input files (kernels, initrds) without ever blocking: a FIFO
//! given where a file is expected would make a plain `open(2)` wait for a
//! writer forever, before any `--timeout` is armed.
//!
//! [`open`] opens with `O_NONBLOCK` (which returns at once for a FIFO),
//! checks with `fstat` that the file is a regular one, and only then
//! clears `O_NONBLOCK` again.

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The error inside the [`io::Error`] that [`open`] returns for a file that
/// is not a regular file.
#[derive(Debug, thiserror::Error)]
#[error("{kind}, not a regular file")]
pub struct NotRegular {
    /// What the file is instead, such as "a FIFO" (see [`describe`]).
    pub kind: &'static str,
}

/// What a file of type `file_type` is, for messages: "a FIFO", "a
/// directory", ...
pub fn describe(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// What a file that is not regular is instead, when `error` came from
/// [`open`] for that reason.
pub fn not_regular_kind(error: &io::Error) -> Option<&'static str> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegular>())
        .map(|not_regular| not_regular.kind)
}

/// Opens `path` for reading, refusing (with a [`NotRegular`] error, kind
/// [`io::ErrorKind::InvalidInput`]) anything but a regular file, without
/// blocking on a FIFO or a device.
pub fn open(path: &Path) -> io::Result<File> {
    open_for(path, false)
}

/// [`open`], for reading and writing when `write`.
pub fn open_for(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            NotRegular {
                kind: describe(file_type),
            },
        ));
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

/// Test helpers shared with the other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    /// Makes a FIFO named `fifo` in `dir`.
    pub fn make_fifo(dir: &Path) -> PathBuf {
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        fifo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn regular_files_open_and_read_normally() {
        let mut temp = tempfile::NamedTempFile::new().unwrap();
        io::Write::write_all(&mut temp, b"data").unwrap();
        let mut file = open(temp.path()).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "data");
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = testing::make_fifo(dir.path());
        let err = open(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(not_regular_kind(&err), Some("a FIFO"));
        assert_eq!(err.to_string(), "a FIFO, not a regular file");
    }

    #[test]
    fn directories_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path()).unwrap_err();
        assert_eq!(not_regular_kind(&err), Some("a directory"));
        let err = open(Path::new("/dev/null")).unwrap_err();
        assert_eq!(not_regular_kind(&err), Some("a character device"));
        let missing = open(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert_eq!(not_regular_kind(&missing), None);
    }
}
