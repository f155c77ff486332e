//! microrun: run a program in a KVM microVM as easily as `chroot` runs it
//! in a directory. The binary (`src/main.rs`) is a thin clap front end over
//! this library: [`run::run`] takes a [`spec::RunSpec`] and an engine and
//! returns a [`spec::RunOutcome`].

pub mod boot;
pub mod embedded;
pub mod engine;
pub mod image;
pub mod kernel;
pub mod logger;
pub mod run;
pub mod runconfig;
pub mod spec;
pub mod units;

/// Writes `microrun: <message>` as one line on stderr. Unlike `eprintln!`,
/// a closed or broken stderr is not a panic: microrun still exits with the
/// program's status.
pub fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "microrun: {message}");
}
