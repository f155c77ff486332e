//! The status channel protocol (ttyS2), shared by every engine.
//!
//! The guest writes ASCII lines. A line of decimal digits whose value is
//! 0-255 is the program's exit status; leading zeros are allowed (`042` and
//! `0042` are 42, `000` is 0), and spaces and tabs around the digits are
//! ignored. A line starting with `@` is an event (such as `@init`);
//! anything else is noise that is logged and ignored. `\r` is dropped
//! wherever it appears, so `echo $? >/dev/ttyS2` through a cooked tty works
//! unchanged. A line longer than [`MAX_LINE`] bytes is cut and is never a
//! status, whatever it starts with.

/// The longest line kept; longer lines are cut (and then cannot be a status).
pub const MAX_LINE: usize = 256;

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
    /// The current line was longer than [`MAX_LINE`].
    cut: bool,
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
                let cut = std::mem::take(&mut self.cut);
                Some(parse_line(&line, cut))
            }
            _ => {
                if self.line.len() < MAX_LINE {
                    self.line.push(byte);
                } else {
                    self.cut = true;
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

/// The byte counts of guest-init's relay event `@sent OUT ERR` (given
/// without its `@`): what its stdout and stderr ports took, which the host
/// reads before it ends the VM. Only that exact form counts.
pub fn sent_counts(event: &str) -> Option<[u64; 2]> {
    let mut words = event.strip_prefix("sent ")?.split(' ');
    let counts = [words.next()?.parse().ok()?, words.next()?.parse().ok()?];
    words.next().is_none().then_some(counts)
}

/// Where the program in the guest reads its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinReader {
    /// ttyS1.
    Uart,
    /// The virtio-console's `microrun.stdin` port.
    ConsolePort,
}

/// Where the program reads stdin, if guest event `name` (without its `@`)
/// says: without a virtio-console (`console` false) the first event, such
/// as guest-init's `@init`, means ttyS1; with one, guest-init's `@ports`
/// (it uses the console's ports) means the stdin port and `@uarts` (it
/// fell back to the serial ports) ttyS1. Every engine forwards stdin only
/// from then on, and only there: the guest's serial driver clears its FIFO
/// when it opens ttyS1, and the console's driver drops input for a port
/// nobody opened, so bytes sent earlier would be lost.
pub fn stdin_reader_after(name: &str, console: bool) -> Option<StdinReader> {
    match (console, name) {
        (false, _) | (true, "uarts") => Some(StdinReader::Uart),
        (true, "ports") => Some(StdinReader::ConsolePort),
        (true, _) => None,
    }
}

/// Guest events logged (at debug level) before the rest are only counted:
/// a guest can write `@` lines without end.
pub const EVENTS_LOGGED: usize = 32;

/// The one interpreter of the status channel's lines besides the exit
/// status, for every engine: it times `@init` (for `--timings`), keeps
/// guest-init's `@sent` counts (the qemu engine's relay), logs events and
/// noise within a bound, and says, once, where forwarded stdin must go
/// ([`stdin_reader_after`]). The exit status itself is the caller's: the
/// run ends there.
#[derive(Debug, Clone)]
pub struct GuestEvents {
    /// The VM has a virtio-console (its stdin port may be the reader).
    console: bool,
    /// Stdin is forwarded and the reader has not been named yet.
    stdin_pending: bool,
    init: Option<std::time::Instant>,
    sent: Option<[u64; 2]>,
    seen: usize,
}

impl GuestEvents {
    /// An interpreter for a guest with (`console`) or without a
    /// virtio-console, whose stdin is forwarded (`forward_stdin`) or not.
    pub fn new(console: bool, forward_stdin: bool) -> Self {
        Self {
            console,
            stdin_pending: forward_stdin,
            init: None,
            sent: None,
            seen: 0,
        }
    }

    /// Interprets `line`, received at `at`. Returns where stdin goes from
    /// now on, the first time an event names the reader (only when stdin
    /// is forwarded).
    pub fn line(&mut self, line: &StatusLine, at: std::time::Instant) -> Option<StdinReader> {
        match line {
            StatusLine::Event(name) => self.event(name, at),
            StatusLine::Other(text) => {
                log::debug!("status channel: {text}");
                None
            }
            StatusLine::Exit(_) => None,
        }
    }

    /// Interprets event `name` (without its `@`) received at `at`, as
    /// [`GuestEvents::line`] does.
    pub fn event(&mut self, name: &str, at: std::time::Instant) -> Option<StdinReader> {
        self.seen += 1;
        if self.seen <= EVENTS_LOGGED {
            log::debug!("guest event @{name}");
        } else if self.seen == EVENTS_LOGGED + 1 {
            log::debug!("the guest sends more events; they are no longer logged");
        }
        if name == "init" {
            self.init.get_or_insert(at);
        }
        if let Some(counts) = sent_counts(name) {
            self.sent = Some(counts);
        }
        if !self.stdin_pending {
            return None;
        }
        let reader = stdin_reader_after(name, self.console)?;
        self.stdin_pending = false;
        Some(reader)
    }

    /// When guest-init reported `@init` first.
    pub fn init(&self) -> Option<std::time::Instant> {
        self.init
    }

    /// guest-init's last `@sent OUT ERR` counts.
    pub fn sent(&self) -> Option<[u64; 2]> {
        self.sent
    }
}

/// What a complete line is; `cut` when it was longer than [`MAX_LINE`]
/// (then it can still be an event, cut short, but never a status).
fn parse_line(line: &[u8], cut: bool) -> StatusLine {
    let text = String::from_utf8_lossy(line);
    let trimmed = text.trim_matches(|c: char| c == ' ' || c == '\t');
    if let Some(event) = trimmed.strip_prefix('@') {
        return StatusLine::Event(event.to_string());
    }
    let is_number = !cut && !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    // Without its leading zeros a status has at most three digits (none for 0).
    let significant = trimmed.trim_start_matches('0');
    let code = match significant.len() {
        0 => Some(0),
        1..=3 => significant.parse::<u16>().ok(),
        _ => None,
    };
    match code.filter(|&c| is_number && c <= 255) {
        Some(code) => StatusLine::Exit(code as u8),
        None => StatusLine::Other(trimmed.to_string()),
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
    fn stdin_goes_where_guest_init_says_it_reads() {
        assert_eq!(stdin_reader_after("init", false), Some(StdinReader::Uart));
        assert_eq!(stdin_reader_after("init", true), None);
        assert_eq!(
            stdin_reader_after("ports", true),
            Some(StdinReader::ConsolePort)
        );
        assert_eq!(stdin_reader_after("uarts", true), Some(StdinReader::Uart));
    }

    #[test]
    fn guest_events_time_init_keep_sent_and_name_the_stdin_reader_once() {
        let t0 = std::time::Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(5);
        let event = |name: &str| StatusLine::Event(name.into());
        let mut events = GuestEvents::new(true, true);
        assert_eq!(events.line(&event("init"), t0), None);
        assert_eq!(events.line(&event("init"), t1), None);
        assert_eq!(events.init(), Some(t0));
        assert_eq!(
            events.line(&event("ports"), t1),
            Some(StdinReader::ConsolePort)
        );
        assert_eq!(events.line(&event("uarts"), t1), None, "named once");
        assert_eq!(events.line(&event("sent 3 4"), t1), None);
        assert_eq!(events.sent(), Some([3, 4]));
        assert_eq!(events.line(&StatusLine::Other("x".into()), t1), None);
        // No console: the first event names ttyS1.
        let mut uarts = GuestEvents::new(false, true);
        assert_eq!(uarts.line(&event("init"), t0), Some(StdinReader::Uart));
        // Stdin not forwarded: never a reader, still the times.
        let mut none = GuestEvents::new(true, false);
        assert_eq!(none.line(&event("ports"), t0), None);
        assert_eq!(none.line(&event("init"), t1), None);
        assert_eq!(none.init(), Some(t1));
        // A flood of events only costs a counter.
        for _ in 0..10_000 {
            none.event("spam", t1);
        }
        assert_eq!(none.init(), Some(t1));
    }

    #[test]
    fn sent_counts_parse_only_in_their_exact_form() {
        assert_eq!(sent_counts("sent 12 0"), Some([12, 0]));
        assert_eq!(
            sent_counts("sent 18446744073709551615 1"),
            Some([u64::MAX, 1])
        );
        for bad in [
            "sent",
            "sent 1",
            "sent 1 2 3",
            "sent -1 2",
            "sent 1  2",
            "sents 1 2",
            "init",
        ] {
            assert_eq!(sent_counts(bad), None, "{bad}");
        }
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
        assert_eq!(lines(b"hello\n"), vec![StatusLine::Other("hello".into())]);
        assert_eq!(lines(b"\n"), vec![StatusLine::Other(String::new())]);
    }

    #[test]
    fn leading_zeros_are_allowed_in_any_number() {
        assert_eq!(lines(b"0042\n"), vec![StatusLine::Exit(42)]);
        assert_eq!(lines(b"042\n"), vec![StatusLine::Exit(42)]);
        assert_eq!(lines(b"003\n"), vec![StatusLine::Exit(3)]);
        assert_eq!(lines(b"000\n"), vec![StatusLine::Exit(0)]);
        assert_eq!(lines(b"00000255\n"), vec![StatusLine::Exit(255)]);
        assert_eq!(lines(b" \t7 \n"), vec![StatusLine::Exit(7)]);
        assert_eq!(lines(b"0256\n"), vec![StatusLine::Other("0256".into())]);
        assert_eq!(lines(b"1000\n"), vec![StatusLine::Other("1000".into())]);
        assert_eq!(lines(b"4 2\n"), vec![StatusLine::Other("4 2".into())]);
        assert_eq!(lines(b"+42\n"), vec![StatusLine::Other("+42".into())]);
        let mut long = vec![b'0'; MAX_LINE - 2];
        long.extend_from_slice(b"42\n");
        assert_eq!(lines(&long), vec![StatusLine::Exit(42)]);
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
        for digit in [b'0', b'1'] {
            let mut input = vec![digit; 1000];
            input.push(b'\n');
            assert!(matches!(lines(&input)[..], [StatusLine::Other(_)]));
        }
        // One byte over the limit: cut, so not the status it would be.
        let mut input = vec![b'0'; MAX_LINE - 1];
        input.extend_from_slice(b"42\n");
        assert!(matches!(lines(&input)[..], [StatusLine::Other(_)]));
        // The next line is read afresh.
        input.extend_from_slice(b"7\n");
        assert_eq!(lines(&input)[1], StatusLine::Exit(7));
    }
}
