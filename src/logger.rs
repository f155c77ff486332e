//! A minimal `log` backend: `microrun: <level>: <message>` on stderr.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::spec::Verbosity;

struct StderrLogger;

/// virtio-queue reports what a broken or hostile guest driver does to its
/// queues as errors; those are the guest's, not microrun's, and a guest
/// could fill the user's stderr with them: they show at `-v` only.
/// The registry client's HTTP and TLS crates log every request and
/// handshake step: below what `-v` shows (the pull says what it does).
fn level(metadata: &Metadata) -> Level {
    let target = metadata.target();
    if target.starts_with("virtio_queue") {
        metadata.level().max(Level::Debug)
    } else if target.starts_with("ureq") || target.starts_with("rustls") {
        Level::Trace
    } else {
        metadata.level()
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        level(metadata) <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = match level(record.metadata()) {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            crate::say(format_args!("{level}: {}", record.args()));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger: `-q` errors only, default warnings, `-v` debug.
pub fn init(verbosity: Verbosity) {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(match verbosity {
            Verbosity::Quiet => LevelFilter::Error,
            Verbosity::Normal => LevelFilter::Warn,
            Verbosity::Verbose => LevelFilter::Debug,
        });
    }
}
