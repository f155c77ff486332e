//! microrun: run a program in a KVM microVM as easily as `chroot` runs it
//! in a directory. The binary (`src/main.rs`) is a thin clap front end over
//! this library: [`plan::make`] turns a [`spec::Request`] into a
//! [`plan::Plan`], and [`run::run`] runs it with its engine and returns a
//! [`spec::RunOutcome`].

pub mod binds;
pub mod boot;
pub mod console_watch;
pub mod embedded;
pub mod engine;
pub mod guest_kernel;
pub mod image;
pub mod kernel;
pub mod logger;
pub mod net;
pub mod plan;
pub mod registry;
pub mod run;
pub mod runconfig;
pub mod spec;
pub mod terminal;
pub mod units;
pub mod user;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmm::output::{FdWriter, OutputSink};

/// microrun's own messages on stderr: a queue and a writer thread, so that
/// a stderr nobody reads (a full pipe) never stops the thread that enforces
/// `--timeout` or ends the run. Messages that do not fit are counted and
/// dropped.
/// Its writer thread runs under the VMM's output filter (vmm::seccomp)
/// unless `MICRORUN_SECCOMP=off`: all it does is write to fd 2.
fn messages() -> Option<&'static OutputSink> {
    static SINK: OnceLock<Option<OutputSink>> = OnceLock::new();
    SINK.get_or_init(|| {
        let filter = vmm::seccomp::wanted()
            .then(|| vmm::seccomp::filter(vmm::seccomp::ThreadKind::Output).ok())
            .flatten();
        // Its thread may start before a terminal session (-it) blocks the
        // session's signals in every thread: it gets them blocked from the
        // start, or a SIGTERM could end microrun there with the terminal
        // still raw.
        terminal::spawn_without_session_signals(|| {
            OutputSink::spawn_filtered("messages", Box::new(FdWriter(2)), 256 * 1024, filter).ok()
        })
    })
    .as_ref()
}

/// Starts the messages' writer thread now (it otherwise starts with the
/// first message): the kvm engine does so before the VMM's supervising
/// thread goes under a seccomp filter that does not let it start threads.
pub fn start_messages() {
    let _ = messages();
}

static DROPPED_MESSAGES: AtomicUsize = AtomicUsize::new(0);

/// Writes `microrun: <message>` as one line on stderr. Unlike `eprintln!`,
/// a closed or broken stderr is not a panic, and a full one never blocks:
/// microrun still ends the run and exits with the program's status.
pub fn say(message: std::fmt::Arguments<'_>) {
    say_lines(&format!("microrun: {message}\n"));
}

/// Writes `text` (whole lines, each starting with `microrun:`) on stderr
/// the way [`say`] does.
pub fn say_lines(text: &str) {
    match messages() {
        Some(sink) => {
            if !sink.try_write(text.as_bytes()) {
                DROPPED_MESSAGES.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            use std::io::Write as _;
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// Waits, at most `grace`, until microrun's messages have been written.
/// Called before exiting.
pub fn flush_messages(grace: Duration) {
    let Some(sink) = messages() else {
        return;
    };
    let dropped = DROPPED_MESSAGES.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let line = format!("microrun: {dropped} messages were dropped: stderr was full\n");
        let _ = sink.try_write(line.as_bytes());
    }
    let _ = sink.drain(Some(Instant::now() + grace));
}
