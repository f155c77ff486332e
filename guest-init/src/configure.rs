//! Reading the run configuration (`config.rs` parses it): when it cannot
//! be read or is malformed, the console says why and the run ends with
//! 126. Kept out of `config.rs`, whose unit tests (`tests/config.rs`)
//! build it without the rest of guest-init.

use core::ffi::CStr;

use crate::channels::GlobalState;
use crate::config::{self, ConfigError, RunConfig};
use crate::console::Line;
use crate::end::{finish, CANNOT_EXECUTE};

/// Reads the run configuration at `path`; never returns on failure.
pub fn read(path: &CStr) -> RunConfig {
    match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report_config_error(path, e);
            finish(CANNOT_EXECUTE)
        }
    }
}

fn report_config_error(path: &CStr, error: ConfigError) {
    let mut line = Line::new();
    line.text(b"microrun: ");
    match error {
        ConfigError::Read(e) => {
            line.text(b"cannot read the run configuration ")
                .text(path.to_bytes())
                .text(b": ")
                .errno(e);
        }
        _ => {
            line.text(b"malformed run configuration ")
                .text(path.to_bytes())
                .text(b": ");
            match error {
                ConfigError::Unterminated => line.text(b"the last record has no NUL terminator"),
                ConfigError::NoEquals(n) => {
                    line.text(b"record ").num(n as u64).text(b" has no '='")
                }
                ConfigError::UnknownKey(n, key) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" has the unknown key '")
                    .text(key)
                    .text(b"' (expected arg, env, cwd, stdin, ports, module, root, mount, net, user or tty)"),
                ConfigError::BadEnv(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not env=NAME=value"),
                ConfigError::BadModule(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not module=/PATH or module=/PATH PARAMS"),
                ConfigError::BadMount(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not mount=TAG rw /DEST or mount=TAG ro /DEST"),
                ConfigError::BadNet(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not net=ADDR/PREFIX GATEWAY MTU"),
                ConfigError::BadRoot(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not root=erofs /DEV BYTES"),
                ConfigError::BadTty(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not tty=ROWS COLS"),
                ConfigError::Duplicate(n, key) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" repeats the key '")
                    .text(key)
                    .text(b"'"),
                ConfigError::BadUser(n) => line
                    .text(b"record ")
                    .num(n as u64)
                    .text(b" is not user=USER or user=USER:GROUP"),
                ConfigError::Read(_) => &mut line,
            };
        }
    }
    line.send(GlobalState::console());
}
