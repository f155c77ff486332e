//! The guest's network, over rtnetlink (no tool of the rootfs: the `libs`
//! rootfs has none): `lo` up in every run, and with a `net` record the
//! interface `eth0` up with its MTU, address and default route, and the
//! guest's `/etc/resolv.conf` and `/etc/hosts` written from
//! `/.microrun/etc/` (read before a disk root's switch, written after it:
//! the root is the initramfs's tmpfs, or a disk root's tmpfs overlay, so
//! nothing of the image or its cache is changed).
//!
//! Each request is one message with `NLM_F_ACK`; the kernel answers it
//! before `write` returns, and the answer is read after a bounded wait.

use core::ffi::CStr;

use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;

use crate::channels::GlobalState;
use crate::config::NetConfig;
use crate::console::Line;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
/// The loopback interface's index, in every network namespace.
const LO_INDEX: u32 = 1;
/// The interface `net=` configures.
const INTERFACE_INDEX_FILE: &CStr = c"/sys/class/net/eth0/ifindex";
/// How long the interface may take to appear (its driver binds during
/// boot, or while `finit_module` loads it), and the answer to a request.
const DEVICE_WAIT_MS: u64 = 2000;
const ANSWER_WAIT_MS: i32 = 1000;
const RETRY_MS: u64 = 10;
const RETRY: rustix::thread::Timespec = rustix::thread::Timespec {
    tv_sec: 0,
    tv_nsec: RETRY_MS as i64 * 1_000_000,
};

/// A request being built: header, fixed part, attributes.
struct Message {
    buf: [u8; 64],
    len: usize,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Message {
        let mut m = Message {
            buf: [0; 64],
            len: 16,
        };
        m.buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        m.buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        m
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Message {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len().next_multiple_of(4);
        self
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Message {
        let mut head = [0u8; 4];
        head[..2].copy_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        head[2..].copy_from_slice(&kind.to_ne_bytes());
        self.put(&head);
        self.put(value)
    }

    fn bytes(&mut self) -> &[u8] {
        let len = self.len as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf[..self.len]
    }
}

/// The largest network file taken (microrun writes a few hundred bytes).
const FILE_CAPACITY: usize = 4096;
/// The files, where microrun puts them, and where they go.
const FILES: [(&CStr, &CStr); 2] = [
    (c"/.microrun/etc/resolv.conf", c"/etc/resolv.conf"),
    (c"/.microrun/etc/hosts", c"/etc/hosts"),
];

/// The guest's network files, read from guest-init's archive.
pub struct NetFiles {
    contents: [([u8; FILE_CAPACITY], usize); 2],
    read: Result<(), (&'static [u8], Errno)>,
}

impl NetFiles {
    /// Reads them when `wanted` (a `net` record): a failure is reported by
    /// [`configure`].
    pub fn load(wanted: bool) -> NetFiles {
        let mut files = NetFiles {
            contents: [([0; FILE_CAPACITY], 0); 2],
            read: Ok(()),
        };
        if wanted {
            for (slot, (from, _)) in files.contents.iter_mut().zip(FILES) {
                if let Err(e) = read_small(from, slot) {
                    files.read = Err((b"reading the network files from /.microrun/etc", e));
                    break;
                }
            }
        }
        files
    }

    /// Writes them into `/etc` (made when missing), each replacing what is
    /// there, a symlink included (never followed).
    fn write(&self) -> Step {
        self.read?;
        match rustix::fs::mkdir(c"/etc", rustix::fs::Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err((b"creating /etc", e)),
        }
        for ((bytes, len), (_, to)) in self.contents.iter().zip(FILES) {
            write_new(to, &bytes[..*len]).map_err(|e| (&b"writing /etc"[..], e))?;
        }
        Ok(())
    }
}

fn read_small(path: &CStr, (buf, len): &mut ([u8; FILE_CAPACITY], usize)) -> Result<(), Errno> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    loop {
        if *len == FILE_CAPACITY {
            return Err(Errno::FBIG);
        }
        match rustix::io::read(&fd, &mut buf[*len..])? {
            0 => return Ok(()),
            n => *len += n,
        }
    }
}

fn write_new(path: &CStr, bytes: &[u8]) -> Result<(), Errno> {
    match rustix::fs::unlink(path) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    use rustix::fs::OFlags;
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o644),
    )?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(&fd, &bytes[written..])?;
    }
    Ok(())
}

/// Sets `lo` up, then configures the interface when `net` says so and
/// writes `files`; the interface failing ends the run (the program asked
/// for a network).
pub fn configure(net: Option<NetConfig>, files: &NetFiles) -> Result<(), Errno> {
    let socket = match open_socket() {
        Ok(socket) => socket,
        Err(e) => {
            warn(b"cannot open a netlink socket", e);
            return if net.is_some() { Err(e) } else { Ok(()) };
        }
    };
    match set_link_up(&socket, LO_INDEX, None) {
        // The chroot engine's namespace is not guest-init's to configure
        // (its helper has set lo up already).
        Ok(()) | Err(Errno::PERM) => {}
        Err(e) => warn(b"cannot set lo up", e),
    }
    let Some(net) = net else {
        return Ok(());
    };
    configure_interface(&socket, net)
        .and_then(|()| files.write())
        .map_err(|(what, e)| {
            warn(what, e);
            e
        })
}

fn open_socket() -> Result<OwnedFd, Errno> {
    rustix::net::socket_with(
        rustix::net::AddressFamily::NETLINK,
        rustix::net::SocketType::RAW,
        rustix::net::SocketFlags::CLOEXEC,
        // NETLINK_ROUTE is protocol 0, the default.
        None,
    )
}

fn warn(what: &[u8], e: Errno) {
    Line::new()
        .text(b"microrun: guest-init: network: ")
        .text(what)
        .text(b": ")
        .errno(e)
        .send(GlobalState::console());
}

type Step = Result<(), (&'static [u8], Errno)>;

fn configure_interface(socket: &OwnedFd, net: NetConfig) -> Step {
    let index =
        interface_index().map_err(|e| (&b"no interface eth0 (the virtio-net device)"[..], e))?;
    set_link_up(socket, index, Some(u32::from(net.mtu)))
        .map_err(|e| (&b"setting eth0 up"[..], e))?;
    add_address(socket, index, net).map_err(|e| (&b"giving eth0 its address"[..], e))?;
    add_route(socket, index, net).map_err(|e| (&b"adding the default route"[..], e))
}

/// eth0's index, once it has appeared (bounded wait).
fn interface_index() -> Result<u32, Errno> {
    let mut waited = 0;
    loop {
        match read_index() {
            Ok(index) => return Ok(index),
            Err(Errno::NOENT) if waited < DEVICE_WAIT_MS => {
                let _ = rustix::thread::nanosleep(&RETRY);
                waited += RETRY_MS;
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_index() -> Result<u32, Errno> {
    let fd = rustix::fs::open(
        INTERFACE_INDEX_FILE,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&fd, &mut buf)?;
    let mut index: u32 = 0;
    for &b in buf[..n].iter().take_while(|b| b.is_ascii_digit()) {
        index = index
            .checked_mul(10)
            .and_then(|i| i.checked_add(u32::from(b - b'0')))
            .ok_or(Errno::RANGE)?;
    }
    if index == 0 {
        return Err(Errno::INVAL);
    }
    Ok(index)
}

fn set_link_up(socket: &OwnedFd, index: u32, mtu: Option<u32>) -> Result<(), Errno> {
    let mut m = Message::new(RTM_NEWLINK, 0);
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut info = [0u8; 16];
    info[4..8].copy_from_slice(&index.to_ne_bytes());
    info[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    info[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    m.put(&info);
    if let Some(mtu) = mtu {
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    request(socket, &mut m)
}

fn add_address(socket: &OwnedFd, index: u32, net: NetConfig) -> Result<(), Errno> {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut info = [0u8; 8];
    info[0] = AF_INET;
    info[1] = net.prefix;
    info[4..8].copy_from_slice(&index.to_ne_bytes());
    m.put(&info);
    m.attr(IFA_LOCAL, &net.address);
    m.attr(IFA_ADDRESS, &net.address);
    request(socket, &mut m)
}

fn add_route(socket: &OwnedFd, index: u32, net: NetConfig) -> Result<(), Errno> {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags.
    let info = [
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    m.put(&info);
    m.attr(RTA_GATEWAY, &net.gateway);
    m.attr(RTA_OIF, &index.to_ne_bytes());
    request(socket, &mut m)
}

/// Sends `m` and reads the kernel's answer: `Ok` for an acknowledgement,
/// the errno it carries otherwise.
fn request(socket: &OwnedFd, m: &mut Message) -> Result<(), Errno> {
    rustix::io::write(socket, m.bytes())?;
    let mut fds = [rustix::event::PollFd::new(
        socket,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(ANSWER_WAIT_MS) * 1_000_000 - 1,
    };
    if rustix::event::poll(&mut fds, Some(&timeout))? == 0 {
        return Err(Errno::TIMEDOUT);
    }
    let mut answer = [0u8; 512];
    let n = rustix::io::read(socket.as_fd(), &mut answer)?;
    if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
        return Err(Errno::PROTO);
    }
    match i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]) {
        0 => Ok(()),
        e => Err(Errno::from_raw_os_error(-e)),
    }
}
