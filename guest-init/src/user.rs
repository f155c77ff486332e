//! The `user=USER[:GROUP]` record: who the command runs as.
//!
//! PID 1 resolves it ([`resolve`]) against the rootfs's own `/etc/passwd`
//! and `/etc/group` (`passwd.rs` has the rules), after the shares are
//! mounted and before the command starts, and puts `HOME`, `USER` and
//! `LOGNAME` in the command's environment (an `env` record of the same
//! name wins). A name the files do not have ends the run with 125 and
//! `microrun: guest-init: unknown user NAME (not in /etc/passwd)`.
//!
//! The command's process switches ([`switch`]), just before its exec:
//! `setgroups` (the primary group and the user's groups), `setgid`,
//! `setuid`. Leaving uid 0 makes the kernel clear the permitted,
//! effective and ambient capabilities; the inheritable set is cleared
//! here, so the program has none. An explicit uid 0 stays root with
//! root's capabilities, as in docker, with empty inheritable and ambient
//! sets.

use core::ffi::CStr;

use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::channels::GlobalState;
use crate::config::{self, RunConfig};
use crate::console::Line;
use crate::end::{finish, MICRORUN_FAILED};
use crate::passwd::{self, Unknown};

/// The most groups a user gets (the primary one included).
const MAX_GROUPS: usize = 256;

/// What the command's process becomes.
pub struct Switch {
    uid: u32,
    gid: u32,
    groups: [u32; MAX_GROUPS],
    ngroups: usize,
}

/// Resolves the configuration's user, if it names one, and sets the
/// command's `HOME`, `USER` and `LOGNAME`; never returns when the user or
/// group is unknown (125).
pub fn resolve(config: &mut RunConfig) -> Option<Switch> {
    let spec = config.user?;
    let passwd = read_or_empty(c"/etc/passwd");
    let group = read_or_empty(c"/etc/group");
    let resolved = match passwd::resolve(spec.to_bytes(), passwd, group) {
        Ok(resolved) => resolved,
        Err(unknown) => {
            let (kind, name, file): (&[u8], _, &[u8]) = match unknown {
                Unknown::User(name) => (b"user", name, b"/etc/passwd"),
                Unknown::Group(name) => (b"group", name, b"/etc/group"),
            };
            Line::new()
                .text(b"microrun: guest-init: unknown ")
                .text(kind)
                .text(b" ")
                .text(name)
                .text(b" (not in the rootfs's ")
                .text(file)
                .text(b"); add it there, or give a number")
                .send(GlobalState::console());
            finish(MICRORUN_FAILED);
        }
    };
    let mut switch = Switch {
        uid: resolved.uid,
        gid: resolved.gid,
        groups: [0; MAX_GROUPS],
        ngroups: 0,
    };
    match passwd::supplementary(&resolved, group, &mut switch.groups) {
        Some(n) => switch.ngroups = n,
        None => {
            Line::new()
                .text(b"microrun: guest-init: user ")
                .text(spec.to_bytes())
                .text(b" is in more than 256 groups of /etc/group")
                .send(GlobalState::console());
            finish(MICRORUN_FAILED);
        }
    }
    let mut number = [0u8; 10];
    let name = resolved
        .name
        .unwrap_or_else(|| decimal(resolved.uid, &mut number));
    for (key, value) in [
        (&b"HOME="[..], resolved.home),
        (b"USER=", name),
        (b"LOGNAME=", name),
    ] {
        if let Some(entry) = env_entry(key, value) {
            config.set_env_default(entry);
        }
    }
    Some(switch)
}

/// Becomes the user: groups, gid, uid, then no capabilities to pass on.
/// In the command's process, just before exec.
pub fn switch(switch: &Switch) -> Result<(), Errno> {
    // The command's terminal (`-t`) becomes the user's, as login makes it:
    // programs that open it again by name (`screen`, `script`) can.
    if crate::tty::active() {
        // SAFETY: descriptor 0 is open for the whole call: the child has
        // just put the terminal's slave there (streams::setup_stdio).
        let stdin = unsafe { rustix::stdio::stdin() };
        let _ = rustix::fs::fchown(
            stdin,
            Some(Uid::from_raw(switch.uid)),
            Some(Gid::from_raw(switch.gid)),
        );
    }
    let groups = &switch.groups[..switch.ngroups];
    // SAFETY: Gid is a transparent wrapper of gid_t, so a slice of u32
    // has the layout of a slice of Gid.
    let groups: &[Gid] =
        unsafe { core::slice::from_raw_parts(groups.as_ptr().cast(), groups.len()) };
    rustix::thread::set_thread_groups(groups)?;
    let gid = Gid::from_raw(switch.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    let uid = Uid::from_raw(switch.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    // guest-init is single-threaded: the thread's ids are the process's.
    rustix::thread::clear_ambient_capability_set()?;
    let current = rustix::thread::capabilities(None)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            inheritable: CapabilitySet::empty(),
            ..current
        },
    )
}

/// The file's bytes, or none when it is not a regular file or cannot be
/// read (a rootfs without `/etc/passwd` knows no names, and numbers still
/// work; a FIFO there must not hold the boot).
fn read_or_empty(path: &CStr) -> &'static [u8] {
    let regular = rustix::fs::stat(path)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
    if !regular {
        return &[];
    }
    config::read_file(path).unwrap_or(&[])
}

/// `KEY` + `value` + NUL in memory that is never freed.
fn env_entry(key: &[u8], value: &[u8]) -> Option<&'static CStr> {
    if value.contains(&0) {
        return None;
    }
    let len = key.len() + value.len();
    let buf = config::alloc_bytes(len + 1).ok()?;
    buf[..key.len()].copy_from_slice(key);
    buf[key.len()..len].copy_from_slice(value);
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

/// `value` in decimal, in `buf`.
fn decimal(mut value: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[start..]
}
