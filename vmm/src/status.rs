//! The status channel protocol (ttyS2), shared by every engine.
//!
//! The guest writes ASCII lines. A line that is a decimal integer 0-255 is
//! the program's exit status; a line starting with `@` is an event (such as
//! `@init`); anything else is noise that is logged and ignored. `\r` is
//! dropped wherever it appears, so `echo $? >/dev/ttyS2` through a cooked
//! tty works unchanged.

/// The longest line kept; longer lines are cut (and then cannot be a status).
const MAX_LINE: usize = 256;

/// One complete line received on the status channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// The program's exit status: the run is over.
    Exit(u8),
    /// An event such as `@init`, without the `@`.
    Event(String),
    /// Any other line, kept for debug logging.
    Other(String),
}

/// Turns the bytes written to the status port into [`StatusLine`]s.
#[derive(Debug, Default)]
pub struct StatusParser {
    line: Vec<u8>,
}

impl StatusParser {
    /// A parser with an empty line buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one byte; returns a line when `byte` completes one.
    pub fn push(&mut self, byte: u8) -> Option<StatusLine> {
        match byte {
            b'\r' => None,
            b'\n' => {
                let line = std::mem::take(&mut self.line);
                Some(parse_line(&line))
            }
            _ => {
                if self.line.len() < MAX_LINE {
                    self.line.push(byte);
                }
                None
            }
        }
    }

    /// Feeds many bytes, calling `on_line` for each completed line. Stops
    /// early (returning the status) at the first exit status, since the run
    /// ends there.
    pub fn feed(&mut self, bytes: &[u8], mut on_line: impl FnMut(&StatusLine)) -> Option<u8> {
        for &b in bytes {
            if let Some(line) = self.push(b) {
                on_line(&line);
                if let StatusLine::Exit(code) = line {
                    return Some(code);
                }
            }
        }
        None
    }
}

fn parse_line(line: &[u8]) -> StatusLine {
    let text = String::from_utf8_lossy(line);
    let trimmed = text.trim_matches(|c: char| c == ' ' || c == '\t');
    if let Some(event) = trimmed.strip_prefix('@') {
        return StatusLine::Event(event.to_string());
    }
    let is_number =
        !trimmed.is_empty() && trimmed.len() <= 3 && trimmed.bytes().all(|b| b.is_ascii_digit());
    match is_number.then(|| trimmed.parse::<u16>()) {
        Some(Ok(code)) if code <= 255 => StatusLine::Exit(code as u8),
        _ => StatusLine::Other(trimmed.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<StatusLine> {
        let mut parser = StatusParser::new();
        input.iter().filter_map(|&b| parser.push(b)).collect()
    }

    #[test]
    fn statuses_events_and_noise() {
        assert_eq!(
            lines(b"@init\n0\n"),
            vec![StatusLine::Event("init".into()), StatusLine::Exit(0)]
        );
        assert_eq!(lines(b"255\r\n"), vec![StatusLine::Exit(255)]);
        assert_eq!(lines(b"42"), vec![]);
        assert_eq!(lines(b"256\n"), vec![StatusLine::Other("256".into())]);
        assert_eq!(lines(b"-1\n"), vec![StatusLine::Other("-1".into())]);
        assert_eq!(lines(b"0042\n"), vec![StatusLine::Other("0042".into())]);
        assert_eq!(lines(b"hello\n"), vec![StatusLine::Other("hello".into())]);
        assert_eq!(lines(b"\n"), vec![StatusLine::Other(String::new())]);
    }

    #[test]
    fn feed_stops_at_the_first_status() {
        let mut parser = StatusParser::new();
        let mut seen = Vec::new();
        let code = parser.feed(b"@init\n3\n4\n", |l| seen.push(l.clone()));
        assert_eq!(code, Some(3));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn overlong_lines_are_cut_and_never_a_status() {
        let mut input = vec![b'1'; 1000];
        input.push(b'\n');
        assert!(matches!(lines(&input)[0], StatusLine::Other(_)));
    }
}
