//! Runs the unit tests of `src/config.rs`, the run configuration parser.
//!
//! guest-init is a `no_std`, `no_main` binary whose link flags (no start
//! files, no libc) leave no room for the test harness, so this std test
//! crate includes the parser's source, which needs nothing but `core`,
//! rustix and guest-init's console helpers.

#[allow(dead_code)]
#[path = "../src/config.rs"]
mod config;

// What config.rs uses of guest-init's own code (reading a whole file).
#[allow(dead_code)]
#[path = "../src/console.rs"]
mod console;
