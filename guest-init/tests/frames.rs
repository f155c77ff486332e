//! Runs the unit tests of `src/frames.rs`, the decoder of the control
//! frames on a terminal's stdin stream (see `tests/config.rs` for why the
//! source is included here).

#[allow(dead_code)]
#[path = "../src/frames.rs"]
mod frames;
