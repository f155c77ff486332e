//! A pull's progress on stderr: a bar per layer (`indicatif`) when stderr
//! is a terminal, one line per layer when it is not, nothing under `-q`.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::spec::Verbosity;

/// How a pull shows its progress.
pub enum Progress {
    /// `-q`.
    Quiet,
    /// One line per layer (stderr is not a terminal).
    Lines,
    /// A bar per layer.
    Bars(MultiProgress),
}

impl Progress {
    /// The kind `verbosity` and stderr call for.
    pub fn new(verbosity: Verbosity) -> Progress {
        match verbosity {
            Verbosity::Quiet => Progress::Quiet,
            _ if std::io::stderr().is_terminal() => {
                Progress::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            _ => Progress::Lines,
        }
    }

    /// A line of its own (not under `-q`).
    pub fn say(&self, text: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines => crate::say(format_args!("{text}")),
            Progress::Bars(bars) => {
                let _ = bars.println(format!("microrun: {text}"));
            }
        }
    }

    /// The progress of one blob of `size` bytes.
    pub fn blob(&self, what: &str, size: u64) -> BlobProgress {
        let bar = match self {
            Progress::Bars(bars) => {
                let bar = bars.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(what.to_string());
                Some(bar)
            }
            _ => None,
        };
        BlobProgress {
            what: what.to_string(),
            size,
            started: Instant::now(),
            bar,
            lines: matches!(self, Progress::Lines),
        }
    }
}

/// One blob's progress.
pub struct BlobProgress {
    what: String,
    size: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    lines: bool,
}

impl BlobProgress {
    /// `n` more bytes arrived.
    pub fn advance(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// The blob is complete.
    pub fn done(self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        if self.lines {
            crate::say(format_args!(
                "pulled {} ({}) in {:.1} s",
                self.what,
                human_size(self.size),
                self.started.elapsed().as_secs_f64()
            ));
        }
    }
}

/// `bytes` as `12.3 MB` (decimal units, as registries and docker show).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_shows_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1500), "1.5 kB");
        assert_eq!(human_size(7_340_032), "7.3 MB");
        assert_eq!(human_size(u64::MAX), "18446744.1 TB");
    }
}
