//! Parsing of the command line's `SIZE`, `DURATION` and vCPU count values.

use std::time::Duration;

/// The longest `--timeout`: 365 days. Longer ones are refused rather than
/// taken as "no limit", since a typo is likelier than a year-long run; the
/// engines then never meet a deadline the clock cannot represent.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// A timeout of zero, which would stop every run at once.
    #[error("--timeout {0}: a timeout must be more than 0; leave --timeout out for no limit")]
    TimeoutZero(String),
    /// A timeout longer than [`MAX_TIMEOUT`].
    #[error(
        "--timeout {0}: a timeout can be at most 365 days (8760h); leave --timeout out for no limit"
    )]
    TimeoutTooLong(String),
    /// A vCPU count outside 1 to [`vmm::mptable::MAX_CPUS`].
    #[error("--cpus {0}: a VM has 1 to {max} vCPUs", max = vmm::mptable::MAX_CPUS)]
    Vcpus(String),
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
    let seconds = parse_seconds(text)?;
    Duration::try_from_secs_f64(seconds).map_err(|_| UnitsError::Duration(text.to_string()))
}

/// The number of seconds `text` stands for (non-negative, possibly
/// infinite for an absurdly long number).
fn parse_seconds(text: &str) -> Result<f64, UnitsError> {
    let err = || UnitsError::Duration(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    Ok(match suffix {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err()),
    })
}

/// Parses `--timeout`: a duration as [`parse_duration`] takes it, above
/// zero and at most [`MAX_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Duration, UnitsError> {
    let seconds = parse_seconds(text)?;
    if seconds > MAX_TIMEOUT.as_secs_f64() {
        return Err(UnitsError::TimeoutTooLong(text.to_string()));
    }
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err(UnitsError::TimeoutZero(text.to_string()));
    }
    Ok(timeout)
}

/// Parses `--cpus`: 1 to [`vmm::mptable::MAX_CPUS`] (the MP table's limit).
pub fn parse_vcpus(text: &str) -> Result<u8, UnitsError> {
    text.trim()
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=vmm::mptable::MAX_CPUS).contains(n))
        .ok_or_else(|| UnitsError::Vcpus(text.to_string()))
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

    #[test]
    fn timeouts_are_above_zero_and_at_most_a_year() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("8760h"), Ok(MAX_TIMEOUT));
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0", "0s", "0ms", "0.0", "0.0000000001"] {
            assert_eq!(
                parse_timeout(zero),
                Err(UnitsError::TimeoutZero(zero.into())),
                "{zero}"
            );
        }
        let endless = "9".repeat(400);
        for long in [
            "31536001",
            "8761h",
            "10000000000000000000",
            "99999999999999999999999999",
            &endless,
        ] {
            assert_eq!(
                parse_timeout(long),
                Err(UnitsError::TimeoutTooLong(long.into())),
                "{long}"
            );
        }
        for bad in ["", "10x", "-1s", "1e999", "1.2.3", "9999999999999999999x"] {
            assert!(
                matches!(parse_timeout(bad), Err(UnitsError::Duration(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn vcpus_are_1_to_32() {
        assert_eq!(parse_vcpus("1"), Ok(1));
        assert_eq!(parse_vcpus("32"), Ok(32));
        for bad in ["0", "33", "256", "-1", "", "two"] {
            assert_eq!(
                parse_vcpus(bad),
                Err(UnitsError::Vcpus(bad.into())),
                "{bad}"
            );
        }
        assert!(UnitsError::Vcpus("0".into())
            .to_string()
            .contains("1 to 32"));
    }
}
