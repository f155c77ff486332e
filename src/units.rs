//! Parsing of the command line's `SIZE` and `DURATION` values.

use std::time::Duration;

/// Why a size or duration on the command line could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitsError {
    /// Not a number with an optional known suffix.
    #[error(
        "invalid size '{0}': use bytes or a number with K, M or G (for example 512K, 256M, 1G)"
    )]
    Size(String),
    /// Not a number with an optional known suffix.
    #[error("invalid duration '{0}': use seconds or a number with ms, s or m (for example 500ms, 30s, 2m)")]
    Duration(String),
}

/// Parses `512K`, `256M`, `1G` (binary units, case-insensitive, optional
/// `iB`/`B`) or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitsError> {
    let err = || UnitsError::Size(text.to_string());
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let number: u64 = digits.parse().map_err(|_| err())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Parses `500ms`, `30s`, `2m` or plain (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitsError> {
    let err = || UnitsError::Duration(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let seconds = match suffix {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        for bad in ["", "M", "12X", "-1", "1.5G", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "1e999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
