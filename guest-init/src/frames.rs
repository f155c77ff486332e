//! The in-band control frames on the stdin stream of a run with a terminal
//! (`tty=ROWS COLS`): the host escapes every 0xFF byte of the user's input
//! as 0xFF 0xFF, and sends a new window size as 0xFF `W` ROWS COLS (two
//! little-endian u16s). [`Decoder`] takes the stream apart, chunk by chunk,
//! whatever the chunk boundaries.
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0xFF 0xFF | one data byte 0xFF |
//! | 0xFF `W` r0 r1 c0 c1 | the window is now `r` rows by `c` columns |
//! | 0xFF, any other byte | ignored, both bytes (room for later frames) |
//! | any other byte | data |

/// The byte that starts a frame.
pub const ESCAPE: u8 = 0xff;
/// The frame kind of a window size.
pub const WINDOW: u8 = b'W';

/// Where the decoder stands between two chunks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Data.
    Data,
    /// After an [`ESCAPE`].
    Escape,
    /// Inside a window frame: `got` of its four payload bytes so far.
    Window { got: usize },
}

/// The stdin stream's decoder.
pub struct Decoder {
    state: State,
    payload: [u8; 4],
}

/// What one chunk held besides its data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Decoded {
    /// How many data bytes [`Decoder::decode`] left at the start of the
    /// chunk.
    pub data: usize,
    /// The last window size the chunk completed, as (rows, columns).
    pub window: Option<(u16, u16)>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub const fn new() -> Decoder {
        Decoder {
            state: State::Data,
            payload: [0; 4],
        }
    }

    /// Decodes `chunk` in place: its data bytes are moved to its start
    /// (there are never more of them than bytes in the chunk), and a frame
    /// cut by the chunk's end is completed by the next chunk.
    pub fn decode(&mut self, chunk: &mut [u8]) -> Decoded {
        let mut out = Decoded::default();
        for i in 0..chunk.len() {
            let byte = chunk[i];
            match self.state {
                State::Data if byte == ESCAPE => self.state = State::Escape,
                State::Data => {
                    chunk[out.data] = byte;
                    out.data += 1;
                }
                State::Escape => {
                    self.state = State::Data;
                    match byte {
                        ESCAPE => {
                            chunk[out.data] = ESCAPE;
                            out.data += 1;
                        }
                        WINDOW => self.state = State::Window { got: 0 },
                        _ => {}
                    }
                }
                State::Window { got } => {
                    self.payload[got] = byte;
                    if got + 1 == self.payload.len() {
                        let [r0, r1, c0, c1] = self.payload;
                        out.window =
                            Some((u16::from_le_bytes([r0, r1]), u16::from_le_bytes([c0, c1])));
                        self.state = State::Data;
                    } else {
                        self.state = State::Window { got: got + 1 };
                    }
                }
            }
        }
        out
    }
}

// The binary is `no_std` and cannot host the test harness, so these run from
// `tests/frames.rs`, which includes this file in a std test crate.
#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `chunks` one after the other; returns the data and every
    /// window size seen.
    fn decode_all(chunks: &[&[u8]]) -> (Vec<u8>, Vec<(u16, u16)>) {
        let mut decoder = Decoder::new();
        let mut data = Vec::new();
        let mut windows = Vec::new();
        for chunk in chunks {
            let mut chunk = chunk.to_vec();
            let decoded = decoder.decode(&mut chunk);
            data.extend_from_slice(&chunk[..decoded.data]);
            windows.extend(decoded.window);
        }
        (data, windows)
    }

    #[test]
    fn plain_bytes_are_data() {
        assert_eq!(
            decode_all(&[b"ls -l\r", b"\x03\x1a"]),
            (b"ls -l\r\x03\x1a".to_vec(), vec![])
        );
    }

    #[test]
    fn a_doubled_escape_is_one_literal_byte() {
        assert_eq!(decode_all(&[b"a\xff\xffb"]), (b"a\xffb".to_vec(), vec![]));
        // Split between the two bytes.
        assert_eq!(
            decode_all(&[b"a\xff", b"\xffb"]),
            (b"a\xffb".to_vec(), vec![])
        );
        assert_eq!(
            decode_all(&[b"\xff\xff\xff\xff"]),
            (vec![0xff, 0xff], vec![])
        );
    }

    #[test]
    fn a_window_frame_gives_rows_and_columns() {
        // 24 rows, 80 columns; 300 rows (0x012c), 1000 columns (0x03e8).
        assert_eq!(
            decode_all(&[b"x\xffW\x18\x00\x50\x00y"]),
            (b"xy".to_vec(), vec![(24, 80)])
        );
        assert_eq!(
            decode_all(&[b"\xffW\x2c\x01\xe8\x03"]),
            (vec![], vec![(300, 1000)])
        );
    }

    #[test]
    fn a_frame_may_be_cut_anywhere() {
        let stream: &[u8] = b"ab\xffW\x18\x00\x50\x00cd\xff\xffe";
        for cut in 0..=stream.len() {
            let (first, second) = stream.split_at(cut);
            assert_eq!(
                decode_all(&[first, second]),
                (b"abcd\xffe".to_vec(), vec![(24, 80)]),
                "cut at {cut}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes), (b"abcd\xffe".to_vec(), vec![(24, 80)]));
    }

    #[test]
    fn the_last_window_of_a_chunk_wins_and_payload_bytes_are_not_data() {
        // A payload byte 0xFF is part of the size, not an escape.
        let (data, windows) = decode_all(&[b"\xffW\x01\x00\x02\x00\xffW\xff\x00\xff\x00z"]);
        assert_eq!(data, b"z");
        assert_eq!(windows, [(255, 255)]);
    }

    #[test]
    fn an_unknown_frame_kind_is_dropped() {
        assert_eq!(decode_all(&[b"a\xffQb"]), (b"ab".to_vec(), vec![]));
    }
}
