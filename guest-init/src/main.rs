//! guest-init: microrun's PID 1 inside the guest.
//!
//! The kernel starts it with `rdinit=/.microrun/init`. It mounts `/dev`,
//! `/proc`, `/sys` (and `/tmp` when the rootfs has none), opens the three
//! serial ports, announces itself with `@init` on ttyS2, reads the run
//! configuration `/.microrun/run`, loads the kernel modules it lists,
//! switches to a disk root when it names one (`root.rs`: EROFS under a
//! tmpfs overlay), and,
//! when it says `ports=virtio`, waits (up to 2 s) for the virtio-console's
//! ports `microrun.stdout`, `microrun.stderr` and `microrun.stdin`. It runs
//! the command with stdout and stderr on those ports (on ttyS1 and ttyS0
//! without them; with `ports=virtio-relay`, on pipes it copies to the ports
//! itself, counting the bytes: see `relay.rs`), stdin on the stdin port
//! (ttyS1) when forwarded, reaps every process, and writes the command's
//! exit status as one line on ttyS2 once ttyS1 has drained (after the
//! relay's `@sent OUT ERR`). Then it powers the machine off (with the
//! relay, it waits for the host to end it). Its own messages always go to
//! ttyS0. With a `user=` record the command runs as that user of the
//! rootfs's `/etc/passwd` (`user.rs`).
//!
//! It is a freestanding static executable (`no_std`, raw system calls via
//! rustix, no libc), so it runs on any rootfs, even one without a libc.
//! PID 1 must never exit (the kernel would panic), so every failure ends in
//! a status line and a power-off, never in a return from `main`.
//!
//! Knobs for tests and the chroot engine, read from guest-init's own
//! environment (the kernel passes none of them) and never passed on to the
//! command:
//!
//! - `MICRORUN_INIT_CONSOLE`, `MICRORUN_INIT_STDOUT`, `MICRORUN_INIT_STATUS`:
//!   a device path (defaults `/dev/ttyS0`, `/dev/ttyS1`, `/dev/ttyS2`) or
//!   `fd:N` for an inherited open file descriptor;
//! - `MICRORUN_INIT_CONFIG`: the run configuration (default `/.microrun/run`);
//! - `MICRORUN_INIT_SKIP_MOUNTS=1`: mount nothing;
//! - `MICRORUN_INIT_STDIN=fd:N`: the forwarded stdin, when it is not the
//!   stdout channel (the chroot engine passes microrun's own stdin);
//! - `MICRORUN_INIT_NO_POWEROFF=1`: exit after the status line instead of
//!   powering off;
//! - `MICRORUN_INIT_PORTS_SYSFS`, `MICRORUN_INIT_PORTS_DEV`: where the
//!   virtio-console's ports are looked for (defaults
//!   `/sys/class/virtio-ports`, `/dev`);
//! - `MICRORUN_INIT_PORTS_WAIT_MS`: how long to wait for them (default 2000).
//!
//! With `tty=ROWS COLS` the command gets a pseudo-terminal instead
//! (`tty.rs`), which guest-init relays, decoding the control frames on
//! the stdin stream (`frames.rs`).
//!
//! Each stage of the boot is a module of its own, and [`main`] runs them in
//! order.

#![no_std]
#![no_main]

mod channels;
mod command;
mod config;
mod configure;
mod console;
mod end;
mod frames;
mod kernel_fs;
mod knobs;
mod modules;
mod network;
mod passwd;
mod ports;
mod relay;
mod root;
mod rt;
mod shares;
mod streams;
mod sys;
mod tty;
mod user;

use end::{finish, MICRORUN_FAILED};
use knobs::Knobs;

/// The program: everything between the kernel and the status line.
pub fn main(envp: *const *const u8) -> ! {
    let knobs = Knobs::from_env(envp);
    end::set_no_poweroff(knobs.no_poweroff);
    let mount_failures = kernel_fs::mount_all(knobs.skip_mounts);
    channels::open_console(knobs.console);
    kernel_fs::warn(mount_failures);
    channels::open_stdout_and_status(knobs.stdout, knobs.status);
    let mut config = configure::read(knobs.config);
    modules::load_all(config.modules);
    // Read before a disk root hides the initramfs that holds them.
    let net_files = network::NetFiles::load(config.net.is_some());
    if root::switch(config.root).is_err() {
        finish(MICRORUN_FAILED);
    }
    if network::configure(config.net, &net_files).is_err() {
        finish(MICRORUN_FAILED);
    }
    if shares::mount_all(config.mounts).is_err() {
        finish(MICRORUN_FAILED);
    }
    let user = user::resolve(&mut config);
    streams::choose(&config, knobs.ports, knobs.stdin);
    command::enter_cwd(config.cwd);
    finish(command::run(&config, user.as_ref()))
}
