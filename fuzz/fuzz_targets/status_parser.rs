//! The status-channel parser (`vmm::status::StatusParser`) against a
//! plain model of the rule: `\r` dropped; a line over `MAX_LINE` bytes is
//! never a status; otherwise, trimmed of spaces and tabs, `@...` is an
//! event and a run of digits worth 0-255 (leading zeros allowed) is a
//! status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::status::{StatusLine, StatusParser, MAX_LINE};

/// What the rule says a complete line (without `\n`) is.
fn expected(raw: &[u8]) -> StatusLine {
    let line: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    let kept = &line[..line.len().min(MAX_LINE)];
    let text = String::from_utf8_lossy(kept);
    let trimmed = text.trim_matches(|c| c == ' ' || c == '\t');
    if let Some(event) = trimmed.strip_prefix('@') {
        return StatusLine::Event(event.to_string());
    }
    let digits = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    if line.len() <= MAX_LINE && digits {
        let value = trimmed.bytes().try_fold(0u32, |v, d| {
            Some(v * 10 + u32::from(d - b'0')).filter(|&v| v <= 255)
        });
        if let Some(code) = value {
            return StatusLine::Exit(code as u8);
        }
    }
    StatusLine::Other(trimmed.to_string())
}

fuzz_target!(|data: &[u8]| {
    let mut parser = StatusParser::new();
    let mut start = 0;
    for (at, &byte) in data.iter().enumerate() {
        let line = parser.push(byte);
        if byte == b'\n' {
            let want = expected(&data[start..at]);
            assert_eq!(line.as_ref(), Some(&want), "line {:?}", &data[start..at]);
            start = at + 1;
        } else {
            assert_eq!(line, None);
        }
    }
    // feed() stops at the first status and agrees with push().
    let mut fed = StatusParser::new();
    let first = data
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .find_map(|l| match expected(&l[..l.len() - 1]) {
            StatusLine::Exit(code) => Some(code),
            _ => None,
        });
    assert_eq!(fed.feed(data, |_| {}), first);
});
