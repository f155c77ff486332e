//! What microrun makes of the keys typed in its terminal during a run with
//! `-it`, without any system call: the control frames of the stdin stream
//! (guest-init's `frames.rs` decodes them; docs/guest-init.md) and the
//! escape that stops the VM.

use std::time::{Duration, Instant};

/// The byte that starts a frame; doubled, it is one data byte 0xFF.
pub const FRAME_ESCAPE: u8 = 0xff;
/// The frame kind of a window size.
pub const FRAME_WINDOW: u8 = b'W';

/// Ctrl-], the escape key (as telnet's and QEMU's monitors use it).
pub const ESCAPE_KEY: u8 = 0x1d;
/// How many escape keys in a row stop the VM.
pub const ESCAPE_PRESSES: usize = 3;
/// Within how long of the first.
pub const ESCAPE_WINDOW: Duration = Duration::from_secs(1);

/// Appends `input` to `out` as the stream carries it: every 0xFF doubled.
pub fn encode_input(input: &[u8], out: &mut Vec<u8>) {
    for &byte in input {
        out.push(byte);
        if byte == FRAME_ESCAPE {
            out.push(FRAME_ESCAPE);
        }
    }
}

/// The frame that sets the program's window to `rows` by `cols`.
pub fn window_frame(rows: u16, cols: u16) -> [u8; 6] {
    let [r0, r1] = rows.to_le_bytes();
    let [c0, c1] = cols.to_le_bytes();
    [FRAME_ESCAPE, FRAME_WINDOW, r0, r1, c0, c1]
}

/// Watches the typed keys for [`ESCAPE_PRESSES`] Ctrl-] in a row within
/// [`ESCAPE_WINDOW`].
#[derive(Debug, Default)]
pub struct EscapeWatch {
    /// When the current row of escape keys began, and how long it is.
    row: Option<(Instant, usize)>,
}

impl EscapeWatch {
    /// Takes the keys of one read, typed at `now`; true when they complete
    /// the escape.
    pub fn keys(&mut self, keys: &[u8], now: Instant) -> bool {
        for &key in keys {
            if key != ESCAPE_KEY {
                self.row = None;
                continue;
            }
            let row = match self.row {
                Some((first, n)) if now.saturating_duration_since(first) <= ESCAPE_WINDOW => {
                    (first, n + 1)
                }
                _ => (now, 1),
            };
            if row.1 >= ESCAPE_PRESSES {
                self.row = None;
                return true;
            }
            self.row = Some(row);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_doubles_every_0xff_and_nothing_else() {
        let mut out = Vec::new();
        encode_input(b"ls\r\x03\xff\x00\xff", &mut out);
        assert_eq!(out, b"ls\r\x03\xff\xff\x00\xff\xff");
    }

    #[test]
    fn a_window_frame_is_rows_then_columns_little_endian() {
        assert_eq!(window_frame(24, 80), [0xff, b'W', 24, 0, 80, 0]);
        assert_eq!(
            window_frame(300, 1000),
            [0xff, b'W', 0x2c, 0x01, 0xe8, 0x03]
        );
    }

    #[test]
    fn three_escape_keys_within_a_second_stop_the_vm() {
        let t = Instant::now();
        let mut watch = EscapeWatch::default();
        // All three in one read.
        assert!(watch.keys(b"\x1d\x1d\x1d", t));
        // One per read, within the second.
        assert!(!watch.keys(b"\x1d", t));
        assert!(!watch.keys(b"\x1d", t + Duration::from_millis(400)));
        assert!(watch.keys(b"\x1d", t + Duration::from_millis(900)));
    }

    #[test]
    fn slow_or_interrupted_escape_keys_do_not() {
        let t = Instant::now();
        let mut watch = EscapeWatch::default();
        assert!(!watch.keys(b"\x1d\x1d", t));
        // The third comes too late: it starts a new row.
        assert!(!watch.keys(b"\x1d", t + Duration::from_millis(1100)));
        assert!(!watch.keys(b"\x1d", t + Duration::from_millis(1200)));
        assert!(watch.keys(b"\x1d", t + Duration::from_millis(1300)));
        // Another key in between starts over.
        assert!(!watch.keys(b"\x1d\x1da\x1d", t));
        assert!(!watch.keys(b"\x1d", t));
        assert!(watch.keys(b"\x1d", t));
    }
}
