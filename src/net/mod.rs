//! Networking (`--net`, `--net-host`, `-p`): the guest's addresses, the
//! publish specs, passt's and pasta's command lines, and the files
//! (`/etc/resolv.conf`, `/etc/hosts`) the guest gets.
//!
//! Every engine gets the same view: one interface, `eth0`, with
//! [`GUEST_ADDR`]/[`GUEST_PREFIX`], the default route through [`GATEWAY`],
//! and [`DNS`] as its resolver, which passt and pasta forward to the host's
//! first resolver (`--dns-forward`). The VM engines connect the guest's
//! virtio-net device to `passt`, the chroot engine its network namespace to
//! `pasta` (both in the Debian package `passt`); [`helper`] starts and
//! stops them.
//!
//! Nothing of the host is reachable by default: the gateway address is not
//! mapped to the host's loopback (`--no-map-gw`) and pasta forwards no
//! ports either way, unless `--net-host` (the gateway, also named
//! [`HOST_NAME`], is then the host's loopback) or `-p` (a host port
//! forwarded to a guest port) asks.

pub mod helper;

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

/// The guest's IPv4 address.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The prefix length of the guest's network.
pub const GUEST_PREFIX: u8 = 24;
/// The guest's default gateway (passt's side of the link); with
/// `--net-host`, the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The resolver the guest is given, forwarded to the host's.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The name of the host (the gateway) in the guest's `/etc/hosts`, with
/// `--net-host`.
pub const HOST_NAME: &str = "host.microrun.internal";
/// The guest's name, in its `/etc/hosts`.
pub const GUEST_NAME: &str = "microrun";
/// The VM's interface MAC address (locally administered).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x6d, 0x72, 0x00, 0x00, 0x01];
/// The interface's MTU, in every engine: passt's and pasta's default, the
/// largest a tap takes; the virtio-net devices (microrun's, QEMU's) carry
/// such frames in merged receive buffers.
pub const MTU: u16 = 65520;
/// The interface's name, in every engine.
pub const INTERFACE: &str = "eth0";
/// The Debian package with passt and pasta.
pub const PACKAGE: &str = "passt";

/// Why the network cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A `-p` spec that is not docker's syntax.
    #[error(
        "-p {spec}: {why}; write [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp], for example \
         -p 8080:80 or -p 127.0.0.1:5353:53/udp"
    )]
    BadPublish {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// `-p` or `--net-host` without `--net`.
    #[error("{option} needs --net (the guest has no network without it); add --net")]
    NeedsNet {
        /// The option, with its spec.
        option: String,
    },
    /// The host port of a `-p` is taken, or its address is not this host's.
    #[error("-p {spec}: cannot listen on {addr}/{protocol}: {source}; pick another host port or address")]
    PortUnavailable {
        /// The spec as given.
        spec: String,
        /// The host address and port.
        addr: SocketAddr,
        /// `tcp` or `udp`.
        protocol: Protocol,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// Two `-p` specs publish the same host port.
    #[error("-p {spec}: the host port {port}/{protocol} is already published by an earlier -p; give each its own host port")]
    DuplicatePublish {
        /// The second spec.
        spec: String,
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        protocol: Protocol,
    },
    /// passt or pasta is not installed.
    #[error(
        "--net needs {program}, which is not on PATH: install the Debian package `{PACKAGE}` \
         (apt-get install passt; it has passt and pasta), or run without --net"
    )]
    NotInstalled {
        /// `passt` or `pasta`.
        program: &'static str,
    },
    /// passt or pasta could not be started.
    #[error("--net: cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// passt or pasta ended (or hung) before it was ready.
    #[error("--net: {program} {what}{said}")]
    NotReady {
        /// The program.
        program: String,
        /// `exited with ...` or `was not ready in N s`.
        what: String,
        /// `: ` and its last messages, when it said something.
        said: String,
    },
    /// A system call while setting up the helper failed.
    #[error("--net: {call} failed: {source}")]
    Sys {
        /// What was called.
        call: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A published port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/tcp` (the default).
    Tcp,
    /// `/udp`.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One `-p/--publish [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]`: a host
/// port forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The spec as given, for messages.
    pub spec: String,
    /// The host address to listen on (default 127.0.0.1, not docker's
    /// 0.0.0.0: nothing is exposed beyond the host unless asked).
    pub host_ip: IpAddr,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl Publish {
    /// Parses docker's syntax. `HOSTIP` may be an IPv6 address in
    /// brackets (`[::1]:8080:80`); ports are 1-65535, one each (no ranges,
    /// no random host port).
    pub fn parse(spec: &str) -> Result<Publish, NetError> {
        let bad = |why: &str| NetError::BadPublish {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Protocol::Tcp),
            Some((rest, "udp")) => (rest, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (spec, Protocol::Tcp),
        };
        let (host_ip, ports) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (ip, ports) = bracketed
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 host address in brackets must be followed by :"))?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
            (IpAddr::V6(ip), ports)
        } else {
            match rest.matches(':').count() {
                1 => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
                2 => {
                    let (ip, ports) = rest.split_once(':').unwrap_or_default();
                    let ip: Ipv4Addr = ip.parse().map_err(|_| {
                        bad(&format!(
                            "{ip:?} is not an IPv4 address (an IPv6 one goes in brackets)"
                        ))
                    })?;
                    (IpAddr::V4(ip), ports)
                }
                _ => return Err(bad("expected HOSTPORT:GUESTPORT, optionally after HOSTIP:")),
            }
        };
        let (host, guest) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected HOSTPORT:GUESTPORT"))?;
        let port = |text: &str, which: &str| -> Result<u16, NetError> {
            match text.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!(
                    "the {which} port {text:?} is not a number from 1 to 65535 (ranges and \
                     random ports are not supported)"
                ))),
                Ok(port) => Ok(port),
            }
        };
        Ok(Publish {
            spec: spec.to_string(),
            host_ip,
            host_port: port(host, "host")?,
            guest_port: port(guest, "guest")?,
            protocol,
        })
    }

    /// The spec of passt's and pasta's `-t`/`-u`: `ADDR/HOSTPORT:GUESTPORT`.
    pub fn forward_spec(&self) -> String {
        format!("{}/{}:{}", self.host_ip, self.host_port, self.guest_port)
    }

    /// Fails, naming the spec, when the host port cannot be listened on now
    /// (taken, or an address that is not this host's): before the run
    /// starts, since passt would only warn.
    pub fn check_available(&self) -> Result<(), NetError> {
        let addr = SocketAddr::new(self.host_ip, self.host_port);
        let bound = match self.protocol {
            Protocol::Tcp => TcpListener::bind(addr).map(drop),
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
        };
        bound.map_err(|source| NetError::PortUnavailable {
            spec: self.spec.clone(),
            addr,
            protocol: self.protocol,
            source,
        })
    }
}

/// What the request asks of the network: present only with `--net`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `--net-host`: the gateway is the host's loopback, named
    /// [`HOST_NAME`] in the guest.
    pub host_loopback: bool,
    /// `-p`, in order.
    pub publish: Vec<Publish>,
}

impl Network {
    /// The network `--net`, `--net-host` and the `-p` specs ask for:
    /// `None` without `--net`, and an error for a malformed spec or an
    /// option that needs `--net` without it.
    pub fn from_options(
        net: bool,
        host_loopback: bool,
        publish: &[String],
    ) -> Result<Option<Network>, NetError> {
        let publish: Vec<Publish> = publish
            .iter()
            .map(|spec| Publish::parse(spec))
            .collect::<Result<_, _>>()?;
        if !net {
            if let Some(first) = publish.first() {
                return Err(NetError::NeedsNet {
                    option: format!("-p {}", first.spec),
                });
            }
            if host_loopback {
                return Err(NetError::NeedsNet {
                    option: "--net-host".to_string(),
                });
            }
            return Ok(None);
        }
        for (index, p) in publish.iter().enumerate() {
            let earlier = &publish[..index];
            if earlier
                .iter()
                .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
            {
                return Err(NetError::DuplicatePublish {
                    spec: p.spec.clone(),
                    port: p.host_port,
                    protocol: p.protocol,
                });
            }
        }
        Ok(Some(Network {
            host_loopback,
            publish,
        }))
    }

    /// Checks every published host port ([`Publish::check_available`]).
    pub fn check_ports(&self) -> Result<(), NetError> {
        self.publish.iter().try_for_each(Publish::check_available)
    }

    /// The options passt and pasta share: addresses, DNS, the host's
    /// loopback, the published ports. `mtu`: the MTU passt announces.
    fn common_args(&self, mtu: u16) -> Vec<String> {
        let mut args = vec![
            "-a".to_string(),
            GUEST_ADDR.to_string(),
            "-n".to_string(),
            GUEST_PREFIX.to_string(),
            "-g".to_string(),
            GATEWAY.to_string(),
            "-m".to_string(),
            mtu.to_string(),
            "--dns-forward".to_string(),
            DNS.to_string(),
        ];
        if !self.host_loopback {
            args.push("--no-map-gw".to_string());
        }
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let flag = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            };
            let specs: Vec<String> = self
                .publish
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(Publish::forward_spec)
                .collect();
            // "none" explicitly: pasta's default is "auto" (every port
            // the namespace listens on), and a TCP port would otherwise
            // bring its UDP twin along.
            if specs.is_empty() {
                args.extend([flag.to_string(), "none".to_string()]);
            }
            for spec in specs {
                args.extend([flag.to_string(), spec]);
            }
        }
        args
    }
}

/// passt's command line for a VM: in the foreground, on the connected
/// stream socket `fd` (one client, `--fd` implies `-1`), announcing `mtu`,
/// writing its pid to `ready` once it is set up. `runas`: as root, the
/// ids passt changes to (`nobody`'s, which passt would look up itself,
/// given as numbers so that a system without a passwd entry for it, such
/// as the nested lane's outer VM, works too).
pub fn passt_args(
    net: &Network,
    fd: i32,
    mtu: u16,
    ready: &Path,
    runas: Option<(u32, u32)>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-f", "-e", "-q", "--fd"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(fd.to_string().into());
    args.push("-P".into());
    args.push(ready.into());
    if let Some((uid, gid)) = runas {
        args.push("--runas".into());
        args.push(format!("{uid}:{gid}").into());
    }
    args.extend(net.common_args(mtu).into_iter().map(OsString::from));
    args
}

/// pasta's command line for the chroot engine: in the foreground, joining
/// the user and network namespaces of process `pid`, making the tap
/// interface [`INTERFACE`] there and configuring it (`--config-net`),
/// writing its pid to `ready` once it is. `as_root`: microrun runs as root,
/// whose namespaces pasta could not join after changing to `nobody` (its
/// default as root: "Could not open /proc/self/uid_map" or "Couldn't open
/// user namespace"), so it keeps root's ids (`--runas 0:0`); it still
/// sandboxes itself into namespaces of its own.
pub fn pasta_args(net: &Network, pid: i32, ready: &Path, as_root: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-f", "-e", "-q", "--config-net", "-I", INTERFACE]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push("-P".into());
    args.push(ready.into());
    if as_root {
        args.extend(["--runas", "0:0"].map(OsString::from));
    }
    // pasta forwards the namespace's ports to the host's loopback unless
    // told not to (-T/-U default to auto).
    args.extend(["-T", "none", "-U", "none"].map(OsString::from));
    args.extend(net.common_args(MTU).into_iter().map(OsString::from));
    args.push(pid.to_string().into());
    args
}

/// The guest's `/etc/resolv.conf`: the forwarded resolver, as docker
/// writes it for a network with its own DNS.
pub fn resolv_conf() -> String {
    format!("# Written by microrun (--net): {DNS} is forwarded to the host's resolver.\nnameserver {DNS}\n")
}

/// The guest's `/etc/hosts`, as docker writes it: loopback names, the
/// IPv6 multicast names, the guest's own name, and with `--net-host` the
/// host's.
pub fn hosts(host_loopback: bool) -> String {
    let mut text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n{GUEST_ADDR}\t{GUEST_NAME}\n"
    );
    if host_loopback {
        text.push_str(&format!("{GATEWAY}\t{HOST_NAME}\n"));
    }
    text
}

/// `program` on `PATH` (passt and pasta are found there, as a shell
/// would).
pub fn find_program(program: &'static str) -> Result<PathBuf, NetError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or(NetError::NotInstalled { program })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
