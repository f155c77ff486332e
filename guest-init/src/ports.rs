//! The virtio-console's named ports, which carry the command's stdout,
//! stderr and stdin when the host offers them (`ports=virtio`).
//!
//! Linux's virtio_console driver creates `/dev/vportNpM` for each port and,
//! once the host has sent the port's name, `/sys/class/virtio-ports/
//! vportNpM/name` holding the name and a newline. The host connects a port
//! (PORT_OPEN) before naming it, so a visible name means a usable port. The
//! device numbers depend on probe order, so the ports are found by name.
//!
//! A port can be open only once at a time, so each is opened here once and
//! the command inherits it. Everything is bounded: the wait, the number of
//! bytes read from a name file, the length of a device name.

use core::ffi::CStr;
use core::mem::MaybeUninit;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;
use rustix::thread::Timespec;

use crate::sys;

/// The ports' names, as the host sends them, in [`Port`] order.
const NAMES: [&[u8]; 3] = [b"microrun.stdout", b"microrun.stderr", b"microrun.stdin"];

/// One of the three ports.
#[derive(Clone, Copy)]
pub enum Port {
    Stdout = 0,
    Stderr = 1,
    Stdin = 2,
}

impl Port {
    /// The name the host gives the port.
    pub fn name(self) -> &'static [u8] {
        NAMES[self as usize]
    }
}

/// At most this many bytes of a `name` file are read; the real names are
/// far shorter, so a longer file matches none of them.
const NAME_FILE_CAPACITY: usize = 64;
/// A device name (`vportNpM`) longer than this is not one of ours.
const DEVICE_NAME_CAPACITY: usize = 32;
/// The pause between two looks at sysfs.
const POLL_INTERVAL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 2_000_000,
};

/// Where to look and for how long.
#[derive(Clone, Copy)]
pub struct Settings {
    /// The directory of the ports' sysfs entries (`/sys/class/virtio-ports`).
    pub sysfs: &'static CStr,
    /// The directory of their device nodes (`/dev`).
    pub dev: &'static CStr,
    /// How long to wait for all three names, in milliseconds.
    pub wait_ms: u32,
}

/// A port's device name, e.g. `vport0p1`.
#[derive(Clone, Copy)]
pub struct DeviceName {
    buf: [u8; DEVICE_NAME_CAPACITY],
    len: usize,
}

impl DeviceName {
    fn new(name: &[u8]) -> Option<Self> {
        // One byte stays free for the NUL terminator.
        if name.len() >= DEVICE_NAME_CAPACITY {
            return None;
        }
        let mut buf = [0; DEVICE_NAME_CAPACITY];
        buf[..name.len()].copy_from_slice(name);
        Some(Self {
            buf,
            len: name.len(),
        })
    }

    /// The name without its NUL terminator.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"")
    }
}

/// The ports, open: stdout and stderr for writing, stdin (when asked for)
/// for reading. Every descriptor is close-on-exec.
pub struct Ports {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub stdin: Option<OwnedFd>,
}

/// Why the ports cannot be used.
pub enum PortsError {
    /// The kernel has no virtio console driver: the class directory is not
    /// there once the modules are loaded (the driver creates it when it
    /// starts, before init runs or before `finit_module` returns).
    NoDriver,
    /// Not all three names appeared within the wait.
    Timeout,
    /// The device directory cannot be opened.
    OpenDev(Errno),
    /// A port was found but its device cannot be opened.
    Open(Port, DeviceName, Errno),
}

/// Waits for the three named ports and opens them; the stdin port only when
/// `open_stdin` (opening it is what lets the host start sending input).
pub fn wait_and_open(settings: Settings, open_stdin: bool) -> Result<Ports, PortsError> {
    let devices = wait_for_names(settings)?;
    let dev = rustix::fs::open(
        settings.dev,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(PortsError::OpenDev)?;
    let open = |port: Port, flags: OFlags| {
        let device = &devices[port as usize];
        rustix::fs::openat(
            &dev,
            device.as_cstr(),
            flags | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PortsError::Open(port, *device, e))
    };
    Ok(Ports {
        stdout: open(Port::Stdout, OFlags::WRONLY)?,
        stderr: open(Port::Stderr, OFlags::WRONLY)?,
        stdin: if open_stdin {
            Some(open(Port::Stdin, OFlags::RDONLY)?)
        } else {
            None
        },
    })
}

/// Looks at sysfs every [`POLL_INTERVAL`] until all three names are there
/// or `settings.wait_ms` have passed; returns the device of each port.
fn wait_for_names(settings: Settings) -> Result<[DeviceName; 3], PortsError> {
    if rustix::fs::access(settings.sysfs, rustix::fs::Access::EXISTS) == Err(Errno::NOENT) {
        return Err(PortsError::NoDriver);
    }
    let start = sys::monotonic_ns();
    let mut found: [Option<DeviceName>; 3] = [None; 3];
    loop {
        scan(settings.sysfs, &mut found);
        if let [Some(stdout), Some(stderr), Some(stdin)] = found {
            return Ok([stdout, stderr, stdin]);
        }
        let elapsed_ms = sys::monotonic_ns().saturating_sub(start) / 1_000_000;
        if elapsed_ms >= u64::from(settings.wait_ms) {
            return Err(PortsError::Timeout);
        }
        let _ = rustix::thread::nanosleep(&POLL_INTERVAL);
    }
}

/// Reads every entry of the sysfs directory once and records, for each
/// port not found yet, the entry whose `name` file names it. A directory
/// that cannot be read finds nothing.
fn scan(sysfs: &CStr, found: &mut [Option<DeviceName>; 3]) {
    let Ok(dir) = rustix::fs::open(
        sysfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
    let mut entries = RawDir::new(&dir, &mut buf);
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name().to_bytes();
        if name.starts_with(b".") {
            continue;
        }
        let Some(device) = DeviceName::new(name) else {
            continue;
        };
        let Some(port) = port_named_by(dir.as_fd(), &device) else {
            continue;
        };
        found[port as usize].get_or_insert(device);
    }
}

/// Which port the entry's `name` file names, if any.
fn port_named_by(dir: BorrowedFd<'_>, device: &DeviceName) -> Option<Port> {
    // `<device>/name`, NUL-terminated.
    let mut path = [0u8; DEVICE_NAME_CAPACITY + 6];
    let len = device.len;
    path[..len].copy_from_slice(device.as_bytes());
    path[len..len + 6].copy_from_slice(b"/name\0");
    let path = CStr::from_bytes_with_nul(&path[..len + 6]).ok()?;
    // O_NONBLOCK: a FIFO in place of the file must not stop the wait.
    let file = rustix::fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut contents = [0u8; NAME_FILE_CAPACITY];
    let (n, read) = crate::console::read_full(file.as_fd(), &mut contents);
    read.ok()?;
    let contents = &contents[..n];
    let name = contents.strip_suffix(b"\n").unwrap_or(contents);
    [Port::Stdout, Port::Stderr, Port::Stdin]
        .into_iter()
        .find(|port| port.name() == name)
}
