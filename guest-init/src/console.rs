//! Building and writing one-line messages without an allocator or
//! `core::fmt` (which would cost several KiB of code).

use rustix::fd::BorrowedFd;
use rustix::io::Errno;

/// Room for one message; longer ones are cut, never split.
const LINE_CAPACITY: usize = 1024;

/// One line of text under construction.
pub struct Line {
    buf: [u8; LINE_CAPACITY],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_CAPACITY],
            len: 0,
        }
    }

    /// Appends bytes, keeping one byte free for the newline.
    pub fn text(&mut self, bytes: &[u8]) -> &mut Self {
        let room = LINE_CAPACITY - 1 - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// Appends a decimal number.
    pub fn num(&mut self, mut value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.text(&digits[start..])
    }

    /// Appends a short description of a system call error.
    pub fn errno(&mut self, errno: Errno) -> &mut Self {
        match describe(errno) {
            Some(text) => self.text(text),
            None => self.text(b"error ").num(errno.raw_os_error() as u64),
        }
    }

    /// The line so far as a C string (for a system call's argument, such
    /// as mount options); it holds no NUL unless one was appended.
    pub fn as_c_str(&mut self) -> &core::ffi::CStr {
        self.buf[self.len] = 0;
        core::ffi::CStr::from_bytes_until_nul(&self.buf[..=self.len]).unwrap_or(c"")
    }

    /// Writes the line and a newline to `fd` (if any); errors are ignored,
    /// since there is nowhere left to report them.
    pub fn send(&mut self, fd: Option<BorrowedFd<'_>>) {
        self.buf[self.len] = b'\n';
        if let Some(fd) = fd {
            write_all(fd, &self.buf[..=self.len]);
        }
    }
}

/// Writes all of `bytes`, retrying after partial writes and interruptions;
/// gives up silently on any other error.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Reads from `fd` until `buf` is full or the file ends, retrying after
/// interruptions; returns how many bytes were read, and the error that
/// stopped it early, if one did.
pub fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> (usize, Result<(), Errno>) {
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(e) => return (len, Err(e)),
        }
    }
    (len, Ok(()))
}

/// The errors guest-init can meet while starting a command, in words.
fn describe(errno: Errno) -> Option<&'static [u8]> {
    Some(match errno {
        Errno::NOENT => b"no such file or directory",
        Errno::ACCESS => b"permission denied",
        Errno::PERM => b"operation not permitted",
        Errno::NOEXEC => b"not an executable format (a script needs a #! line)",
        Errno::ISDIR => b"is a directory",
        Errno::NOTDIR => b"a path component is not a directory",
        Errno::LOOP => b"too many levels of symbolic links",
        Errno::NAMETOOLONG => b"file name too long",
        Errno::TOOBIG => b"argument list too long",
        Errno::NOMEM => b"out of memory",
        Errno::TXTBSY => b"text file busy",
        Errno::INVAL => b"invalid argument",
        Errno::IO => b"input/output error",
        Errno::NODEV => b"no such device",
        Errno::NXIO => b"no such device or address",
        Errno::BUSY => b"device or resource busy",
        Errno::AGAIN => b"resource temporarily unavailable",
        Errno::LIBBAD => b"bad ELF interpreter",
        Errno::NOTTY => b"not a terminal",
        _ => return None,
    })
}
