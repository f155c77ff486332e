//! Watching the kernel's console, as it passes to microrun's stderr, for
//! the line that says the initrd could not be unpacked
//! (`Initramfs unpacking failed: <why>`, printed at `KERN_EMERG`, so even
//! with `quiet`). Both VM engines feed it what the console carries; it
//! keeps a few counters and at most [`MAX_REASON`] bytes, however much
//! the console says.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// What the kernel prints before its reason (init/initramfs.c).
pub const UNPACK_FAILED: &[u8] = b"Initramfs unpacking failed: ";

/// The most of the reason kept (the kernel's are a few words).
pub const MAX_REASON: usize = 80;

/// The state of the search through the console stream.
#[derive(Debug, Default, Clone)]
pub struct ConsoleWatch {
    /// How many bytes of [`UNPACK_FAILED`] the stream has just matched.
    matched: usize,
    /// The reason, once the line was seen (to the end of its line).
    reason: Option<Vec<u8>>,
    /// Whether the reason's line has ended (or is as long as kept).
    complete: bool,
}

impl ConsoleWatch {
    /// Takes the next bytes of the console.
    pub fn feed(&mut self, data: &[u8]) {
        for &byte in data {
            if self.complete {
                return;
            }
            if let Some(reason) = &mut self.reason {
                if byte == b'\n' || byte == b'\r' || reason.len() >= MAX_REASON {
                    self.complete = true;
                } else {
                    reason.push(byte);
                }
                continue;
            }
            // The first byte of the pattern occurs nowhere else in it, so
            // a mismatch can only restart the match at this byte.
            if byte == UNPACK_FAILED[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(byte == UNPACK_FAILED[0]);
            }
            if self.matched == UNPACK_FAILED.len() {
                self.reason = Some(Vec::new());
            }
        }
    }

    /// The kernel's reason, when it said it could not unpack the initrd.
    pub fn unpack_failure(&self) -> Option<String> {
        let reason = self.reason.as_ref()?;
        let text = String::from_utf8_lossy(reason).trim().to_string();
        Some(if text.is_empty() {
            "(no reason given)".to_string()
        } else {
            text
        })
    }
}

/// A console writer that watches what it writes: for the kvm engine,
/// whose VMM writes the console from its own threads.
pub struct Watched<W> {
    /// Where the console goes.
    pub inner: W,
    /// The watch, shared with whoever reads it after the run.
    pub watch: Arc<Mutex<ConsoleWatch>>,
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Ok(mut watch) = self.watch.lock() {
            watch.feed(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] =
        b"[    1.313465] Initramfs unpacking failed: write error\r\n[ 1.7] Kernel panic";

    #[test]
    fn the_line_is_found_whole_or_split_anywhere() {
        assert_eq!(
            UNPACK_FAILED[1..]
                .iter()
                .filter(|&&b| b == UNPACK_FAILED[0])
                .count(),
            0,
            "feed's restart rule needs a first byte that does not recur"
        );
        let mut whole = ConsoleWatch::default();
        whole.feed(LINE);
        assert_eq!(whole.unpack_failure().as_deref(), Some("write error"));
        // Byte by byte (the kvm engine's UART writes), and at every split.
        let mut bytes = ConsoleWatch::default();
        for b in LINE {
            bytes.feed(std::slice::from_ref(b));
        }
        assert_eq!(bytes.unpack_failure().as_deref(), Some("write error"));
        for split in 0..LINE.len() {
            let mut watch = ConsoleWatch::default();
            watch.feed(&LINE[..split]);
            watch.feed(&LINE[split..]);
            assert_eq!(watch.unpack_failure().as_deref(), Some("write error"));
        }
        // A near miss restarts at its last byte.
        let mut near = ConsoleWatch::default();
        near.feed(b"Initramfs unpackInitramfs unpacking failed: junk in compressed archive\n");
        assert_eq!(
            near.unpack_failure().as_deref(),
            Some("junk in compressed archive")
        );
    }

    #[test]
    fn a_console_without_the_line_says_nothing_and_the_reason_is_bounded() {
        let mut quiet = ConsoleWatch::default();
        quiet.feed(b"Trying to unpack rootfs image as initramfs...\nInitramfs unpacking ok\n");
        assert_eq!(quiet.unpack_failure(), None);
        let mut long = ConsoleWatch::default();
        long.feed(UNPACK_FAILED);
        long.feed(&[b'x'; 10_000]);
        assert_eq!(long.unpack_failure().unwrap().len(), MAX_REASON);
        let mut cut = ConsoleWatch::default();
        cut.feed(b"Initramfs unpacking failed: \n");
        assert_eq!(cut.unpack_failure().as_deref(), Some("(no reason given)"));
    }

    #[test]
    fn the_watched_writer_passes_everything_on() {
        let watch = Arc::new(Mutex::new(ConsoleWatch::default()));
        let mut writer = Watched {
            inner: Vec::new(),
            watch: watch.clone(),
        };
        writer.write_all(LINE).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.inner, LINE);
        let found = watch.lock().unwrap().unpack_failure();
        assert_eq!(found.as_deref(), Some("write error"));
    }
}
