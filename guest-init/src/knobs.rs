//! guest-init's own settings, read from its environment (the knobs for
//! tests and the chroot engine; the kernel passes none of them, and none
//! is passed on to the command). The list is in the crate doc (`main.rs`).

use core::ffi::CStr;

use rustix::fd::RawFd;

use crate::channels::Channel;
use crate::ports;

/// How long to wait for the virtio-console's ports by default.
const PORTS_WAIT_MS: u32 = 2000;

/// guest-init's own settings, from its environment.
pub struct Knobs {
    pub console: Channel,
    pub stdout: Channel,
    pub status: Channel,
    pub config: &'static CStr,
    pub skip_mounts: bool,
    pub no_poweroff: bool,
    pub ports: ports::Settings,
    /// With `MICRORUN_INIT_STDIN=fd:N` (the chroot engine), the forwarded
    /// stdin is that inherited descriptor instead of the stdout channel.
    pub stdin: Option<RawFd>,
}

impl Knobs {
    pub fn from_env(envp: *const *const u8) -> Self {
        let mut knobs = Knobs {
            console: Channel::Path(c"/dev/ttyS0"),
            stdout: Channel::Path(c"/dev/ttyS1"),
            status: Channel::Path(c"/dev/ttyS2"),
            config: c"/.microrun/run",
            skip_mounts: false,
            no_poweroff: false,
            ports: ports::Settings {
                sysfs: c"/sys/class/virtio-ports",
                dev: c"/dev",
                wait_ms: PORTS_WAIT_MS,
            },
            stdin: None,
        };
        let mut entry = envp;
        loop {
            // SAFETY: the environment array from the kernel is NULL-terminated,
            // and this loop stops at the NULL.
            let ptr = unsafe { *entry };
            if ptr.is_null() {
                break;
            }
            // SAFETY: each entry is a NUL-terminated string on the initial
            // stack, which lives as long as the process.
            let var: &'static CStr = unsafe { CStr::from_ptr(ptr.cast()) };
            knobs.apply(var);
            // SAFETY: the current entry was not the terminating NULL.
            entry = unsafe { entry.add(1) };
        }
        knobs
    }

    fn apply(&mut self, var: &'static CStr) {
        let bytes = var.to_bytes();
        let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
            return;
        };
        let (name, value) = (&bytes[..eq], &bytes[eq + 1..]);
        // SAFETY: `value` is the tail of `var`, so it ends at var's NUL.
        let value_cstr: &'static CStr = unsafe { CStr::from_ptr(value.as_ptr().cast()) };
        match name {
            b"MICRORUN_INIT_CONSOLE" => self.console = Channel::parse(value_cstr),
            b"MICRORUN_INIT_STDOUT" => self.stdout = Channel::parse(value_cstr),
            b"MICRORUN_INIT_STATUS" => self.status = Channel::parse(value_cstr),
            b"MICRORUN_INIT_CONFIG" => self.config = value_cstr,
            b"MICRORUN_INIT_SKIP_MOUNTS" => self.skip_mounts = value == b"1",
            b"MICRORUN_INIT_NO_POWEROFF" => self.no_poweroff = value == b"1",
            b"MICRORUN_INIT_PORTS_SYSFS" => self.ports.sysfs = value_cstr,
            b"MICRORUN_INIT_PORTS_DEV" => self.ports.dev = value_cstr,
            b"MICRORUN_INIT_PORTS_WAIT_MS" => {
                if let Some(ms) = parse_ms(value) {
                    self.ports.wait_ms = ms;
                }
            }
            b"MICRORUN_INIT_STDIN" => {
                if let Channel::Fd(fd) = Channel::parse(value_cstr) {
                    self.stdin = Some(fd);
                }
            }
            _ => {}
        }
    }
}

/// A decimal number of milliseconds, at most ten minutes; `None` for
/// anything else.
fn parse_ms(digits: &[u8]) -> Option<u32> {
    const MAX_MS: u64 = 600_000;
    let ms = crate::config::decimal(digits).filter(|&ms| ms <= MAX_MS)?;
    u32::try_from(ms).ok()
}
