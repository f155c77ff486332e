//! The run configuration: what guest-init should run, encoded for the file
//! it reads inside the guest.
//!
//! The format is a sequence of NUL-terminated `KEY=VALUE` records:
//!
//! | key | meaning |
//! | --- | --- |
//! | `arg` | one argument, repeated in order; none at all runs `/init` |
//! | `env` | `NAME=value`, added to or replacing guest-init's default environment (`PATH`, `HOME=/`, `TERM=linux`) |
//! | `cwd` | the working directory (default `/`) |
//! | `stdin` | `1`: the command reads ttyS1; otherwise it reads `/dev/null` |
//! | `ports` | `virtio`: the program's streams go over the virtio-console's ports when they appear (after a bounded wait, the UARTs); `virtio-relay`: the same, through pipes guest-init copies to the ports, with `@sent OUT ERR` (the bytes each port took) before the status line |
//! | `module` | `<absolute path in the initrd>`, then one space and the module's parameters when it has some; repeated in load order, loaded before the program |
//! | `root` | `erofs <absolute device path> <tmpfs bytes>`: after the modules, mount that device read-only as EROFS under a tmpfs overlay of that size, and switch the root to it before the shares and the program (at most once) |
//! | `mount` | `<9p tag> <rw or ro> <absolute guest path>`: a share to mount there (created when missing), after the modules and before the program |
//! | `net` | `ADDR/PREFIX GATEWAY MTU` (`--net`, IPv4, decimal): guest-init sets the first network interface (`eth0`) up with that MTU and address and a default route through the gateway, and moves the guest's `resolv.conf` and `hosts` from `/.microrun/etc/` into `/etc` (at most once) |
//! | `user` | `USER[:GROUP]` (`-u`): names looked up in the rootfs's `/etc/passwd` and `/etc/group`, numbers taken as they are; the program runs as that user, with its supplementary groups, `HOME`, `USER` and `LOGNAME`, and no capabilities (at most once) |
//! | `tty` | `<rows> <cols>`: the program gets a pseudo-terminal of that size as stdin, stdout and stderr (`-t`); the stdin stream then carries control frames (docs/guest-init.md) |
//!
//! The records come in this order: `arg`, `env`, `cwd`, `stdin`, `ports`,
//! `module`, `root`, `mount`, `net`, `user`, `tty`.
//!
//! guest-init rejects unknown keys, so both sides must agree on this list.
//!
//! ```
//! use microrun::runconfig::RunConfig;
//!
//! let config = RunConfig {
//!     argv: vec!["echo".into(), "hi".into()],
//!     env: vec![("LANG".into(), "C".into())],
//!     workdir: Some("/tmp".into()),
//!     ..Default::default()
//! };
//! assert_eq!(
//!     config.encode().unwrap(),
//!     b"arg=echo\0arg=hi\0env=LANG=C\0cwd=/tmp\0"
//! );
//! ```

use thiserror::Error;

/// Where guest-init lives in the initrd; the kernel starts it with
/// `rdinit=` set to this path.
pub const INIT_PATH: &str = "/.microrun/init";

/// Where guest-init reads the run configuration.
pub const CONFIG_PATH: &str = "/.microrun/run";

/// The directory of the kernel modules guest-init loads.
pub const MODULES_DIR: &str = "/.microrun/modules";

/// Why a run configuration cannot be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RunConfigError {
    /// A value contains a NUL byte, which would end its record early.
    #[error(
        "the {field} {value:?} contains a NUL byte, which cannot be passed to a program; remove it"
    )]
    NulByte {
        /// Which part of the configuration (`argument`, `environment variable`, `working directory`).
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A module's path is not absolute or contains a space or NUL.
    #[error(
        "the module path {path:?} cannot be passed to guest-init: it must be absolute, without \
         spaces or NUL bytes"
    )]
    ModulePath {
        /// The offending path.
        path: String,
    },
    /// A share's guest path or tag is not absolute or contains a space or NUL.
    #[error(
        "the share at {path:?} cannot be passed to guest-init: its path must be absolute, \
         without spaces or NUL bytes"
    )]
    MountPath {
        /// The offending path.
        path: String,
    },
    /// The root disk's device path is not absolute or contains a space or
    /// NUL, or its overlay has no room.
    #[error(
        "the root disk {device:?} with a {tmpfs_bytes}-byte overlay cannot be passed to \
         guest-init: its device path must be absolute, without spaces or NUL bytes, and the \
         overlay at least one byte"
    )]
    RootDisk {
        /// The device path.
        device: String,
        /// The overlay's size.
        tmpfs_bytes: u64,
    },
    /// An environment variable name is empty or contains `=`.
    #[error(
        "invalid environment variable name {name:?}: a name must be non-empty and contain no '='"
    )]
    InvalidEnvName {
        /// The offending name.
        name: String,
    },
}

/// What guest-init runs, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// The command and its arguments; empty means the rootfs's `/init`.
    /// A command without `/` is looked up in the command's `PATH`.
    pub argv: Vec<String>,
    /// Environment variables added to (or replacing) the defaults.
    pub env: Vec<(String, String)>,
    /// The working directory; `None` means `/`.
    pub workdir: Option<String>,
    /// Whether the command's stdin is forwarded from microrun's stdin.
    pub forward_stdin: bool,
    /// Whether the program's streams go over the virtio-console's ports
    /// (`ports=virtio`) rather than the UARTs.
    pub virtio_ports: bool,
    /// With [`RunConfig::virtio_ports`]: guest-init relays the program's
    /// output to the ports and reports the bytes each took (`@sent OUT
    /// ERR`) before the status line (`ports=virtio-relay`), for a host
    /// whose ports may still hold output when the status arrives (QEMU).
    pub relay_output: bool,
    /// Kernel modules to load before the program, in load order.
    pub modules: Vec<ModuleLoad>,
    /// The root to switch to after the modules, before the shares.
    pub root: Option<RootDisk>,
    /// Shares to mount before the program, in order.
    pub mounts: Vec<ShareMount>,
    /// `--net`: the interface guest-init configures.
    pub net: Option<NetRecord>,
    /// Who the program runs as (`USER[:GROUP]`, checked by
    /// [`crate::user::UserSpec::parse`]); root when `None`.
    pub user: Option<String>,
    /// `-t`: the program's terminal, as (rows, columns), each at least 1.
    pub tty: Option<(u16, u16)>,
}

/// The guest's network interface, as guest-init configures it (`net=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRecord {
    /// Its IPv4 address.
    pub address: std::net::Ipv4Addr,
    /// The prefix length of its network.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: std::net::Ipv4Addr,
    /// The interface's MTU.
    pub mtu: u16,
}

/// The disk guest-init makes the root (`root=erofs DEVICE BYTES`): the
/// EROFS image on `device`, read-only, under an overlay whose writable
/// layer is a tmpfs of `tmpfs_bytes`, so every write vanishes with the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    /// The guest's device node, such as `/dev/vda`.
    pub device: String,
    /// The size of the tmpfs that takes the writes, in bytes.
    pub tmpfs_bytes: u64,
}

/// One share guest-init mounts (9P2000.L over virtio).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareMount {
    /// The virtio-9p device's mount tag.
    pub tag: String,
    /// Where: an absolute guest path without spaces.
    pub dest: String,
    /// Mount it read-only.
    pub read_only: bool,
}

/// One kernel module guest-init loads (`finit_module`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleLoad {
    /// Its absolute path in the initrd (under [`MODULES_DIR`]).
    pub path: String,
    /// Its parameters, as `finit_module` takes them (`device=4K@0xd0000000:5`);
    /// empty for none.
    pub params: String,
}

impl RunConfig {
    /// Encodes the configuration as the file guest-init reads.
    pub fn encode(&self) -> Result<Vec<u8>, RunConfigError> {
        let mut out = Vec::new();
        for arg in &self.argv {
            push_record(&mut out, "arg", &[arg], "argument")?;
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(RunConfigError::InvalidEnvName { name: name.clone() });
            }
            push_record(&mut out, "env", &[name, "=", value], "environment variable")?;
        }
        if let Some(workdir) = &self.workdir {
            push_record(&mut out, "cwd", &[workdir], "working directory")?;
        }
        if self.forward_stdin {
            out.extend_from_slice(b"stdin=1\0");
        }
        match (self.virtio_ports, self.relay_output) {
            (true, false) => out.extend_from_slice(b"ports=virtio\0"),
            (true, true) => out.extend_from_slice(b"ports=virtio-relay\0"),
            (false, _) => {}
        }
        for module in &self.modules {
            let path = &module.path;
            if !path.starts_with('/') || path.contains([' ', '\0']) {
                return Err(RunConfigError::ModulePath { path: path.clone() });
            }
            if module.params.is_empty() {
                push_record(&mut out, "module", &[path], "module path")?;
            } else {
                push_record(
                    &mut out,
                    "module",
                    &[path, " ", &module.params],
                    "module parameters",
                )?;
            }
        }
        if let Some(root) = &self.root {
            let device = &root.device;
            if !device.starts_with('/') || device.contains([' ', '\0']) || root.tmpfs_bytes == 0 {
                return Err(RunConfigError::RootDisk {
                    device: device.clone(),
                    tmpfs_bytes: root.tmpfs_bytes,
                });
            }
            let size = root.tmpfs_bytes.to_string();
            push_record(
                &mut out,
                "root",
                &["erofs ", device, " ", &size],
                "root disk",
            )?;
        }
        for mount in &self.mounts {
            let plain = |text: &str| !text.is_empty() && !text.contains([' ', '\0']);
            if !mount.dest.starts_with('/') || !plain(&mount.dest) || !plain(&mount.tag) {
                return Err(RunConfigError::MountPath {
                    path: mount.dest.clone(),
                });
            }
            let access = if mount.read_only { "ro" } else { "rw" };
            push_record(
                &mut out,
                "mount",
                &[&mount.tag, " ", access, " ", &mount.dest],
                "share",
            )?;
        }
        if let Some(net) = &self.net {
            let value = format!("{}/{} {} {}", net.address, net.prefix, net.gateway, net.mtu);
            push_record(&mut out, "net", &[&value], "network")?;
        }
        if let Some(user) = &self.user {
            push_record(&mut out, "user", &[user], "user")?;
        }
        if let Some((rows, cols)) = self.tty {
            // guest-init refuses a size of 0, which is what a terminal that
            // does not know its size says: the classic 24 x 80 instead.
            let rows = if rows == 0 { 24 } else { rows };
            let cols = if cols == 0 { 80 } else { cols };
            push_record(
                &mut out,
                "tty",
                &[&format!("{rows} {cols}")],
                "terminal size",
            )?;
        }
        Ok(out)
    }
}

/// Appends `key=` + the concatenated parts + NUL.
fn push_record(
    out: &mut Vec<u8>,
    key: &str,
    parts: &[&str],
    field: &'static str,
) -> Result<(), RunConfigError> {
    if parts.iter().any(|part| part.contains('\0')) {
        return Err(RunConfigError::NulByte {
            field,
            value: parts.concat(),
        });
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.push(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_encodes_to_nothing() {
        assert_eq!(RunConfig::default().encode().unwrap(), b"");
    }

    #[test]
    fn records_keep_order_and_values_keep_equals_signs() {
        let config = RunConfig {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "a=b; echo $a".into(),
                String::new(),
            ],
            env: vec![("A".into(), "x=y".into()), ("EMPTY".into(), String::new())],
            workdir: Some("/work dir".into()),
            forward_stdin: true,
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"arg=sh\0arg=-c\0arg=a=b; echo $a\0arg=\0env=A=x=y\0env=EMPTY=\0cwd=/work dir\0stdin=1\0"
        );
    }

    #[test]
    fn a_terminal_comes_last_as_rows_and_columns() {
        let config = RunConfig {
            argv: vec!["sh".into()],
            forward_stdin: true,
            virtio_ports: true,
            tty: Some((24, 80)),
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"arg=sh\0stdin=1\0ports=virtio\0tty=24 80\0"
        );
        // A terminal that does not know its size (0 x 0) gets 24 x 80.
        let unknown = RunConfig {
            tty: Some((0, 0)),
            ..Default::default()
        };
        assert_eq!(unknown.encode().unwrap(), b"tty=24 80\0");
    }

    #[test]
    fn non_ascii_bytes_pass_unchanged() {
        let config = RunConfig {
            argv: vec!["é\u{1}\n".into()],
            ..Default::default()
        };
        assert_eq!(config.encode().unwrap(), "arg=é\u{1}\n\0".as_bytes());
    }

    #[test]
    fn nul_bytes_are_rejected_everywhere() {
        let arg = RunConfig {
            argv: vec!["a\0b".into()],
            ..Default::default()
        };
        assert_eq!(
            arg.encode(),
            Err(RunConfigError::NulByte {
                field: "argument",
                value: "a\0b".into()
            })
        );
        let env = RunConfig {
            env: vec![("A".into(), "\0".into())],
            ..Default::default()
        };
        assert!(matches!(
            env.encode(),
            Err(RunConfigError::NulByte {
                field: "environment variable",
                ..
            })
        ));
        let env_name = RunConfig {
            env: vec![("A\0".into(), "x".into())],
            ..Default::default()
        };
        assert!(matches!(
            env_name.encode(),
            Err(RunConfigError::NulByte { .. })
        ));
        let workdir = RunConfig {
            workdir: Some("/tmp\0".into()),
            ..Default::default()
        };
        assert!(matches!(
            workdir.encode(),
            Err(RunConfigError::NulByte {
                field: "working directory",
                ..
            })
        ));
    }

    #[test]
    fn virtio_ports_and_modules_come_last_in_load_order() {
        let config = RunConfig {
            argv: vec!["true".into()],
            forward_stdin: true,
            virtio_ports: true,
            modules: vec![
                ModuleLoad {
                    path: "/.microrun/modules/00-virtio_ring.ko".into(),
                    params: String::new(),
                },
                ModuleLoad {
                    path: "/.microrun/modules/02-virtio_mmio.ko".into(),
                    params: "device=4K@0xd0000000:5".into(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"arg=true\0stdin=1\0ports=virtio\0\
              module=/.microrun/modules/00-virtio_ring.ko\0\
              module=/.microrun/modules/02-virtio_mmio.ko device=4K@0xd0000000:5\0"
        );
        let modules_only = RunConfig {
            modules: config.modules[..1].to_vec(),
            ..Default::default()
        };
        assert_eq!(
            modules_only.encode().unwrap(),
            b"module=/.microrun/modules/00-virtio_ring.ko\0"
        );
        // The relay only with the ports.
        let relay = RunConfig {
            virtio_ports: true,
            relay_output: true,
            ..Default::default()
        };
        assert_eq!(relay.encode().unwrap(), b"ports=virtio-relay\0");
        let no_ports = RunConfig {
            relay_output: true,
            ..Default::default()
        };
        assert_eq!(no_ports.encode().unwrap(), b"");
    }

    #[test]
    fn the_user_comes_last() {
        let config = RunConfig {
            argv: vec!["id".into()],
            user: Some("builder:staff".into()),
            mounts: vec![ShareMount {
                tag: "microrun0".into(),
                dest: "/out".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"arg=id\0mount=microrun0 rw /out\0user=builder:staff\0"
        );
    }

    #[test]
    fn the_network_comes_after_the_mounts() {
        let config = RunConfig {
            mounts: vec![ShareMount {
                tag: "microrun0".into(),
                dest: "/out".into(),
                read_only: true,
            }],
            net: Some(NetRecord {
                address: std::net::Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: std::net::Ipv4Addr::new(10, 0, 2, 2),
                mtu: 65520,
            }),
            user: Some("1000".into()),
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"mount=microrun0 ro /out\0net=10.0.2.15/24 10.0.2.2 65520\0user=1000\0"
        );
    }

    #[test]
    fn the_root_disk_comes_after_the_modules_and_before_the_shares() {
        let config = RunConfig {
            modules: vec![ModuleLoad {
                path: "/.microrun/modules/00-erofs.ko".into(),
                params: String::new(),
            }],
            root: Some(RootDisk {
                device: "/dev/vda".into(),
                tmpfs_bytes: 256 << 20,
            }),
            mounts: vec![ShareMount {
                tag: "microrun0".into(),
                dest: "/out".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        assert_eq!(
            config.encode().unwrap(),
            b"module=/.microrun/modules/00-erofs.ko\0\
              root=erofs /dev/vda 268435456\0\
              mount=microrun0 ro /out\0"
        );
        for (device, tmpfs_bytes) in [("vda", 1), ("/dev/v da", 1), ("/dev/vda", 0)] {
            let bad = RunConfig {
                root: Some(RootDisk {
                    device: device.into(),
                    tmpfs_bytes,
                }),
                ..Default::default()
            };
            assert!(
                matches!(bad.encode(), Err(RunConfigError::RootDisk { .. })),
                "{device} {tmpfs_bytes}"
            );
        }
    }

    #[test]
    fn bad_module_records_are_rejected() {
        let with = |path: &str, params: &str| RunConfig {
            modules: vec![ModuleLoad {
                path: path.into(),
                params: params.into(),
            }],
            ..Default::default()
        };
        assert!(matches!(
            with("/m.ko", "a=\0").encode(),
            Err(RunConfigError::NulByte {
                field: "module parameters",
                ..
            })
        ));
        for path in ["m.ko", "", "/a b.ko", "/a\0.ko"] {
            let err = with(path, "").encode().unwrap_err();
            assert!(
                matches!(err, RunConfigError::ModulePath { .. }),
                "{path:?}: {err}"
            );
        }
    }

    #[test]
    fn bad_env_names_are_rejected() {
        for name in ["", "A=B", "="] {
            let config = RunConfig {
                env: vec![(name.into(), "v".into())],
                ..Default::default()
            };
            assert_eq!(
                config.encode(),
                Err(RunConfigError::InvalidEnvName { name: name.into() })
            );
        }
    }

    #[test]
    fn error_messages_name_the_value() {
        let err = RunConfig {
            env: vec![("A=B".into(), "v".into())],
            ..Default::default()
        }
        .encode()
        .unwrap_err();
        assert!(err.to_string().contains("\"A=B\""), "{err}");
    }
}
