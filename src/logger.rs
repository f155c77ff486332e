//! A minimal `log` backend: `microrun: <level>: <message>` on stderr.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::spec::Verbosity;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
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
