//! The run configuration microrun writes to `/.microrun/run`: a sequence of
//! `KEY=VALUE\0` records.
//!
//! | key | meaning |
//! | --- | --- |
//! | `arg` | one argument, in order; none at all means `/init` |
//! | `env` | `NAME=value`, added to or replacing the default environment |
//! | `cwd` | the working directory (default `/`) |
//! | `stdin` | `1`: the command reads its stdin channel (ttyS1, or the `microrun.stdin` port); anything else: `/dev/null` |
//! | `ports` | `virtio`: the host offers a multiport virtio-console with the ports `microrun.stdout`, `microrun.stderr` and `microrun.stdin`; `virtio-relay`: the same, with the command's output relayed and counted (see `relay.rs`); anything else: the serial ports only |
//! | `module` | `/PATH` or `/PATH PARAMS`: a kernel module in the initrd, loaded with `finit_module` and the parameter string `PARAMS` (empty when absent); any number, loaded in order |
//! | `root` | `erofs /DEV BYTES`: after the modules, mount the block device `/DEV` read-only as EROFS under an overlay whose writable layer is a tmpfs of `BYTES` bytes, and make that the root (see `root.rs`) |
//! | `mount` | `TAG rw /DEST` or `TAG ro /DEST`: a 9p share (virtio mount tag `TAG`) to mount at `/DEST`, created when missing; any number, after the modules |
//! | `user` | `USER[:GROUP]`: who the command runs as, resolved in the rootfs's `/etc/passwd` and `/etc/group` (`user.rs`) |
//! | `net` | `ADDR/PREFIX GATEWAY MTU` (IPv4 dotted quads, decimal prefix 0-32 and MTU 68-65535): the first network interface, `eth0`, is configured so (see `network.rs`) |
//! | `tty` | `ROWS COLS` (decimal, 1-65535): the command gets a terminal of that size (see `tty.rs`), and the stdin stream carries control frames (see `frames.rs`) |
//!
//! `cwd`, `stdin`, `ports`, `root`, `net`, `user` and `tty` may appear once each.
//!
//! Since every record ends with a NUL byte, the values are used in place as
//! the C strings `execve` wants; only the pointer arrays are built here.

use core::ffi::CStr;
use core::ptr;

use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// The environment every command starts from.
pub const DEFAULT_ENV: [&CStr; 3] = [
    c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    c"HOME=/",
    c"TERM=linux",
];

/// What runs when the configuration names no command.
const DEFAULT_COMMAND: &CStr = c"/init";

/// The parsed configuration; every pointer refers to memory that lives as
/// long as the process.
pub struct RunConfig {
    /// NULL-terminated argument vector, never empty.
    pub argv: &'static [*const u8],
    /// NULL-terminated environment.
    pub envp: &'static mut [*const u8],
    /// The working directory.
    pub cwd: &'static CStr,
    /// Whether the command's stdin is forwarded (ttyS1 or the stdin port;
    /// else `/dev/null`).
    pub forward_stdin: bool,
    /// Whether the host offers the virtio-console's named ports.
    pub virtio_ports: bool,
    /// Whether the command's output reaches the ports through guest-init,
    /// which counts it (`ports=virtio-relay`).
    pub relay_output: bool,
    /// The `module` records, in order.
    pub modules: Modules,
    /// The `root` record: the disk to make the root.
    pub root: Option<Root>,
    /// The `mount` records, in order.
    pub mounts: Mounts,
    /// The `user` record: `USER[:GROUP]`, not empty.
    pub user: Option<&'static CStr>,
    /// `tty=ROWS COLS`: the command's terminal and its size.
    pub tty: Option<(u16, u16)>,
    /// `net=ADDR/PREFIX GATEWAY MTU`: the network interface's settings.
    pub net: Option<NetConfig>,
}

/// The `net` record: the interface's IPv4 address and prefix, the default
/// gateway, the MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The address, in network order.
    pub address: [u8; 4],
    /// The prefix length, 0-32.
    pub prefix: u8,
    /// The gateway, in network order.
    pub gateway: [u8; 4],
    /// The MTU, 68-65535.
    pub mtu: u16,
}

impl RunConfig {
    /// The command name, `argv[0]`.
    pub fn command(&self) -> &'static CStr {
        // SAFETY: argv[0] is non-null (the vector is never empty) and points
        // at a NUL-terminated string in memory that is never freed.
        unsafe { CStr::from_ptr(self.argv[0].cast()) }
    }

    /// The value of `PATH` in the command's environment, if it has one.
    pub fn path_var(&self) -> Option<&'static [u8]> {
        self.envp
            .iter()
            .take_while(|p| !p.is_null())
            .find_map(|&p| {
                // SAFETY: every non-null entry points at a NUL-terminated string
                // that is never freed.
                let entry = unsafe { CStr::from_ptr(p.cast()) }.to_bytes();
                entry.strip_prefix(b"PATH=")
            })
    }
}

/// Why the configuration cannot be used.
pub enum ConfigError {
    /// The file could not be opened or read.
    Read(Errno),
    /// The file does not end with a NUL byte.
    Unterminated,
    /// Record `n` (counting from 1) has no `=`.
    NoEquals(usize),
    /// Record `n` has a key that is not one of the known ones.
    UnknownKey(usize, &'static [u8]),
    /// Record `n` is an `env` record without `NAME=`.
    BadEnv(usize),
    /// Record `n` is a `module` record whose path is not absolute.
    BadModule(usize),
    /// Record `n` is a `mount` record that is not `TAG rw|ro /DEST`.
    BadMount(usize),
    /// Record `n` is a `root` record that is not `erofs /DEV BYTES`.
    BadRoot(usize),
    /// Record `n` is a `tty` record that is not `ROWS COLS`.
    BadTty(usize),
    /// Record `n` is a `net` record that is not `ADDR/PREFIX GATEWAY MTU`.
    BadNet(usize),
    /// Record `n` repeats a key that may appear only once.
    Duplicate(usize, &'static [u8]),
    /// Record `n` is a `user` record with an empty value.
    BadUser(usize),
}

/// Reads and parses the configuration at `path`.
pub fn load(path: &CStr) -> Result<RunConfig, ConfigError> {
    let data = read_file(path).map_err(ConfigError::Read)?;
    parse(data)
}

/// Parses configuration bytes that live for the rest of the process.
pub fn parse(data: &'static [u8]) -> Result<RunConfig, ConfigError> {
    if data.last().is_some_and(|&b| b != 0) {
        return Err(ConfigError::Unterminated);
    }

    // First pass: validate and count, so the pointer arrays are sized once.
    let mut args = 0;
    let mut envs = 0;
    let mut cwd = None;
    let mut forward_stdin = None;
    let mut virtio_ports = None;
    let mut user = None;
    let mut tty = None;
    let mut net = None;
    let mut root = None;
    for (index, record) in records(data).enumerate() {
        let number = index + 1;
        let (key, value) = split_record(record).ok_or(ConfigError::NoEquals(number))?;
        match key {
            b"arg" => args += 1,
            b"env" => {
                match value.iter().position(|&b| b == b'=') {
                    Some(0) | None => return Err(ConfigError::BadEnv(number)),
                    Some(_) => {}
                }
                envs += 1;
            }
            b"cwd" => {
                if cwd.replace(value_cstr(record)).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"stdin" => {
                if forward_stdin.replace(value == b"1").is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"ports" => {
                let kind = match value {
                    b"virtio" => (true, false),
                    b"virtio-relay" => (true, true),
                    _ => (false, false),
                };
                if virtio_ports.replace(kind).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"module" => {
                if split_module(value).is_none() {
                    return Err(ConfigError::BadModule(number));
                }
            }
            b"mount" => {
                if split_mount(value).is_none() {
                    return Err(ConfigError::BadMount(number));
                }
            }
            b"root" => {
                let disk = split_root(value).ok_or(ConfigError::BadRoot(number))?;
                if root.replace(disk).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"user" => {
                if value.is_empty() {
                    return Err(ConfigError::BadUser(number));
                }
                if user.replace(value_cstr(record)).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"net" => {
                let settings = split_net(value).ok_or(ConfigError::BadNet(number))?;
                if net.replace(settings).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            b"tty" => {
                let size = split_tty(value).ok_or(ConfigError::BadTty(number))?;
                if tty.replace(size).is_some() {
                    return Err(ConfigError::Duplicate(number, key));
                }
            }
            _ => return Err(ConfigError::UnknownKey(number, key)),
        }
    }

    let argv = alloc_pointers(args.max(1) + 1).map_err(ConfigError::Read)?;
    // A user adds USER and LOGNAME (`set_env_default`).
    let user_env = if user.is_some() { 2 } else { 0 };
    let envp =
        alloc_pointers(DEFAULT_ENV.len() + envs + user_env + 1).map_err(ConfigError::Read)?;
    let mut argc = 0;
    let mut envc = 0;
    for entry in DEFAULT_ENV {
        envp[envc] = entry.as_ptr().cast();
        envc += 1;
    }
    for record in records(data) {
        // Validated above: every record splits.
        let Some((key, _)) = split_record(record) else {
            continue;
        };
        let value = value_cstr(record);
        match key {
            b"arg" => {
                argv[argc] = value.as_ptr().cast();
                argc += 1;
            }
            b"env" => {
                let name = env_name(value.to_bytes());
                let existing = envp[..envc].iter().position(|&p| {
                    // SAFETY: entries below envc point at NUL-terminated
                    // strings that are never freed.
                    env_name(unsafe { CStr::from_ptr(p.cast()) }.to_bytes()) == name
                });
                match existing {
                    Some(i) => envp[i] = value.as_ptr().cast(),
                    None => {
                        envp[envc] = value.as_ptr().cast();
                        envc += 1;
                    }
                }
            }
            _ => {}
        }
    }
    if argc == 0 {
        argv[0] = DEFAULT_COMMAND.as_ptr().cast();
    }
    // The arrays come zeroed from mmap, so they are already NULL-terminated.
    Ok(RunConfig {
        argv,
        envp,
        cwd: cwd.unwrap_or(c"/"),
        forward_stdin: forward_stdin.unwrap_or(false),
        virtio_ports: virtio_ports.is_some_and(|(ports, _)| ports),
        relay_output: virtio_ports.is_some_and(|(_, relay)| relay),
        modules: Modules { data },
        root,
        mounts: Mounts { data },
        user,
        tty,
        net,
    })
}

/// Splits a `net` value, `ADDR/PREFIX GATEWAY MTU`.
fn split_net(value: &[u8]) -> Option<NetConfig> {
    let mut parts = value.split(|&b| b == b' ');
    let (address, gateway, mtu) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let slash = address.iter().position(|&b| b == b'/')?;
    let prefix = decimal_u16(&address[slash + 1..])
        .or_else(|| (&address[slash + 1..] == b"0").then_some(0))?;
    Some(NetConfig {
        address: ipv4(&address[..slash])?,
        prefix: u8::try_from(prefix).ok().filter(|&p| p <= 32)?,
        gateway: ipv4(gateway)?,
        mtu: decimal_u16(mtu).filter(|&m| m >= 68)?,
    })
}

/// A dotted-quad IPv4 address, each part 0-255 in decimal.
fn ipv4(text: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for byte in out.iter_mut() {
        let part = parts.next()?;
        *byte = match part {
            b"0" => 0,
            _ => u8::try_from(decimal_u16(part)?).ok()?,
        };
    }
    parts.next().is_none().then_some(out)
}

/// Splits a `tty` value, `ROWS COLS`, both decimal and 1-65535.
fn split_tty(value: &[u8]) -> Option<(u16, u16)> {
    let space = value.iter().position(|&b| b == b' ')?;
    Some((
        decimal_u16(&value[..space])?,
        decimal_u16(&value[space + 1..])?,
    ))
}

/// A decimal number from 1 to 65535, digits only.
fn decimal_u16(digits: &[u8]) -> Option<u16> {
    decimal(digits)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n > 0)
}

/// A decimal number, digits only (at least one), that fits in a u64.
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

impl RunConfig {
    /// Puts `entry` (`NAME=value`) in the command's environment unless an
    /// `env` record gave `NAME`: in place of a default's entry, or in a
    /// free slot ([`parse`] keeps two for a `user` record); false when
    /// there was no room.
    pub fn set_env_default(&mut self, entry: &'static CStr) -> bool {
        let name = env_name(entry.to_bytes());
        let len = self.envp.len() - 1;
        for slot in self.envp[..len].iter_mut() {
            if slot.is_null() {
                *slot = entry.as_ptr().cast();
                return true;
            }
            // SAFETY: every non-null entry points at a NUL-terminated
            // string that is never freed.
            let existing = unsafe { CStr::from_ptr(slot.cast()) };
            if env_name(existing.to_bytes()) == name {
                if DEFAULT_ENV.iter().any(|d| d.as_ptr().cast() == *slot) {
                    *slot = entry.as_ptr().cast();
                }
                return true;
            }
        }
        false
    }
}

/// The `root` record: an EROFS disk under a tmpfs overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// The block device's path, absolute, not NUL-terminated (the record
    /// goes on after it).
    pub device: &'static [u8],
    /// The size of the tmpfs that takes the writes, in bytes (at least 1).
    pub tmpfs_bytes: u64,
}

/// Splits a `root` value, `erofs /DEV BYTES`: EROFS is the only file
/// system, DEV an absolute path other than `/`, BYTES a decimal number
/// from 1 to 2^64 - 1. `None` for anything else.
fn split_root(value: &'static [u8]) -> Option<Root> {
    let rest = value.strip_prefix(b"erofs ")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let (device, digits) = (&rest[..space], &rest[space + 1..]);
    if !device.starts_with(b"/") || device.len() < 2 {
        return None;
    }
    let tmpfs_bytes = decimal(digits).filter(|&n| n > 0)?;
    Some(Root {
        device,
        tmpfs_bytes,
    })
}

/// The `mount` records of a configuration, which [`parse`] has checked.
#[derive(Clone, Copy)]
pub struct Mounts {
    data: &'static [u8],
}

/// One `mount` record.
pub struct Mount {
    /// The virtio-9p mount tag, not NUL-terminated.
    pub tag: &'static [u8],
    /// Mount it read-only.
    pub read_only: bool,
    /// Where, absolute.
    pub dest: &'static CStr,
}

impl Mounts {
    /// The shares, in order.
    pub fn iter(self) -> impl Iterator<Item = Mount> {
        values_of(self.data, b"mount").filter_map(|value| {
            let (tag, read_only, dest_at) = split_mount(value)?;
            // SAFETY: `dest_at` is within `value`, which is followed by the
            // record's terminating NUL (checked in `parse`), so a
            // NUL-terminated string starts there in the same allocation.
            let dest = unsafe { CStr::from_ptr(value.as_ptr().add(dest_at).cast()) };
            Some(Mount {
                tag,
                read_only,
                dest,
            })
        })
    }
}

/// Splits a `mount` value, `TAG rw|ro /DEST`: the tag, whether read-only,
/// and the offset of DEST. `None` for anything else.
fn split_mount(value: &[u8]) -> Option<(&[u8], bool, usize)> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (tag, rest) = (&value[..space], &value[space + 1..]);
    let read_only = match rest.get(..3)? {
        b"rw " => false,
        b"ro " => true,
        _ => return None,
    };
    let dest = &rest[3..];
    let ok = !tag.is_empty() && dest.starts_with(b"/") && dest.len() > 1;
    ok.then_some((tag, read_only, space + 4))
}

/// The `module` records of a configuration, which [`parse`] has checked.
#[derive(Clone, Copy)]
pub struct Modules {
    data: &'static [u8],
}

/// One `module` record.
pub struct Module {
    /// The module file's path, absolute, not NUL-terminated (the record goes
    /// on after it).
    pub path: &'static [u8],
    /// The parameter string for `finit_module` (empty when there is none).
    pub params: &'static CStr,
}

impl Modules {
    /// The modules, in load order.
    pub fn iter(self) -> impl Iterator<Item = Module> {
        values_of(self.data, b"module").filter_map(|value| {
            let (path, params_at) = split_module(value)?;
            let params = if params_at == value.len() {
                c""
            } else {
                // SAFETY: `params_at` is within `value`, which is followed by
                // the record's terminating NUL (checked in `parse`), so a
                // NUL-terminated string starts there in the same allocation.
                unsafe { CStr::from_ptr(value.as_ptr().add(params_at).cast()) }
            };
            Some(Module { path, params })
        })
    }
}

/// Splits a `module` value, `/PATH` or `/PATH PARAMS`, at its first space:
/// returns the path and the offset of the parameters (the value's length
/// when there are none). `None` when the path is not absolute.
fn split_module(value: &[u8]) -> Option<(&[u8], usize)> {
    let (path, params_at) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], space + 1),
        None => (value, value.len()),
    };
    path.starts_with(b"/").then_some((path, params_at))
}

/// The values of the records with key `key`, in order, each followed in
/// memory by its record's terminating NUL.
fn values_of(data: &'static [u8], key: &'static [u8]) -> impl Iterator<Item = &'static [u8]> {
    records(data).filter_map(move |record| {
        let (k, value) = split_record(record)?;
        (k == key).then_some(value)
    })
}

/// The records of the file, each without its terminating NUL.
fn records(data: &'static [u8]) -> impl Iterator<Item = &'static [u8]> {
    let body = data.split_last().map_or(&[][..], |(_, body)| body);
    body.split(|&b| b == 0).filter(move |_| !data.is_empty())
}

/// Splits `KEY=VALUE` at the first `=`.
fn split_record(record: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = record.iter().position(|&b| b == b'=')?;
    Some((&record[..eq], &record[eq + 1..]))
}

/// The value of a record as a C string: the bytes after the first `=` up to
/// the record's terminating NUL, which follows the slice in memory.
fn value_cstr(record: &'static [u8]) -> &'static CStr {
    let start = record
        .iter()
        .position(|&b| b == b'=')
        .map_or(0, |eq| eq + 1);
    // SAFETY: `record` is a sub-slice of the file data and is followed by its
    // terminating NUL byte (checked in `parse`), so from `start` on there is a
    // NUL-terminated string inside the same allocation.
    unsafe { CStr::from_ptr(record.as_ptr().add(start).cast()) }
}

/// The `NAME` of a `NAME=value` entry.
fn env_name(entry: &[u8]) -> &[u8] {
    entry.split(|&b| b == b'=').next().unwrap_or(entry)
}

/// Reads a whole file into memory that is never freed.
pub fn read_file(path: &CStr) -> Result<&'static [u8], Errno> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let size = usize::try_from(rustix::fs::fstat(&fd)?.st_size).map_err(|_| Errno::FBIG)?;
    // One spare byte shows whether the file grew since fstat.
    let buf = alloc_bytes(size + 1)?;
    let (len, read) = crate::console::read_full(fd.as_fd(), buf);
    read?;
    if len > size {
        return Err(Errno::FBIG);
    }
    Ok(&buf[..len])
}

/// Zeroed memory that is never freed (PID 1 runs one command).
pub fn alloc_bytes(len: usize) -> Result<&'static mut [u8], Errno> {
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let mem = unsafe {
        rustix::mm::mmap_anonymous(
            ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?
    };
    // SAFETY: the mapping is `len` bytes, readable, writable, zero-filled, and
    // never unmapped, so a 'static exclusive slice over it is sound.
    Ok(unsafe { core::slice::from_raw_parts_mut(mem.cast(), len) })
}

/// A zeroed (all NULL) pointer array that is never freed.
fn alloc_pointers(count: usize) -> Result<&'static mut [*const u8], Errno> {
    let bytes = count
        .checked_mul(core::mem::size_of::<*const u8>())
        .ok_or(Errno::NOMEM)?;
    let mem = alloc_bytes(bytes)?;
    // SAFETY: mmap memory is page-aligned, the length is a whole number of
    // pointers, and all-zero bytes are a valid (null) pointer value.
    Ok(unsafe { core::slice::from_raw_parts_mut(mem.as_mut_ptr().cast(), count) })
}

// The binary is `no_std` and cannot host the test harness, so these run from
// `tests/config.rs`, which includes this file in a std test crate.
#[cfg(test)]
mod tests {
    use super::*;

    fn modules(config: &RunConfig) -> Vec<(&'static [u8], &'static [u8])> {
        config
            .modules
            .iter()
            .map(|m| (m.path, m.params.to_bytes()))
            .collect()
    }

    fn parse_ok(data: &'static [u8]) -> RunConfig {
        match parse(data) {
            Ok(config) => config,
            Err(_) => panic!("{data:?} did not parse"),
        }
    }

    #[test]
    fn module_records_keep_their_order_and_parameters() {
        let config = parse_ok(
            b"module=/.microrun/modules/00-virtio.ko\0arg=true\0\
              module=/m/01-virtio_mmio.ko device=4K@0xd0000000:5\0\
              module=/m/02.ko a=1 b=2\0module=/m/03.ko \0",
        );
        assert_eq!(
            modules(&config),
            [
                (&b"/.microrun/modules/00-virtio.ko"[..], &b""[..]),
                (b"/m/01-virtio_mmio.ko", b"device=4K@0xd0000000:5"),
                (b"/m/02.ko", b"a=1 b=2"),
                (b"/m/03.ko", b""),
            ]
        );
        assert_eq!(config.command().to_bytes(), b"true");
        assert!(!config.virtio_ports);
    }

    #[test]
    fn no_module_records_means_no_modules() {
        let config = parse_ok(b"arg=true\0stdin=1\0");
        assert!(modules(&config).is_empty());
        assert!(config.forward_stdin);
        assert!(parse_ok(b"").modules.iter().next().is_none());
    }

    #[test]
    fn mount_records_name_a_tag_an_access_and_an_absolute_place() {
        let config = parse_ok(b"arg=true\0mount=microrun0 rw /out\0mount=microrun1 ro /src/tree\0");
        let mounts: Vec<_> = config
            .mounts
            .iter()
            .map(|m| (m.tag, m.read_only, m.dest.to_bytes()))
            .collect();
        assert_eq!(
            mounts,
            [
                (&b"microrun0"[..], false, &b"/out"[..]),
                (b"microrun1", true, b"/src/tree"),
            ]
        );
        for data in [
            &b"arg=true\0mount=t rw out\0"[..],
            b"arg=true\0mount=t xx /out\0",
            b"arg=true\0mount= rw /out\0",
            b"arg=true\0mount=t rw /\0",
            b"arg=true\0mount=t\0",
            b"arg=true\0mount=t ro\0",
        ] {
            assert!(
                matches!(parse(data), Err(ConfigError::BadMount(2))),
                "{data:?}"
            );
        }
    }

    #[test]
    fn a_root_record_names_an_erofs_device_and_the_overlays_size() {
        let config = parse_ok(b"arg=true\0root=erofs /dev/vda 268435456\0");
        assert_eq!(
            config.root,
            Some(Root {
                device: b"/dev/vda",
                tmpfs_bytes: 256 << 20
            })
        );
        let max = parse_ok(b"root=erofs /dev/vdb 18446744073709551615\0");
        assert_eq!(max.root.map(|r| r.tmpfs_bytes), Some(u64::MAX));
        assert_eq!(parse_ok(b"arg=true\0").root, None);
        for data in [
            &b"arg=true\0root=ext4 /dev/vda 1\0"[..],
            b"arg=true\0root=erofs dev/vda 1\0",
            b"arg=true\0root=erofs / 1\0",
            b"arg=true\0root=erofs /dev/vda\0",
            b"arg=true\0root=erofs /dev/vda 0\0",
            b"arg=true\0root=erofs /dev/vda 1x\0",
            b"arg=true\0root=erofs /dev/vda -1\0",
            b"arg=true\0root=erofs /dev/vda 1 2\0",
            b"arg=true\0root=erofs /dev/vda 18446744073709551616\0",
            b"arg=true\0root=erofs  /dev/vda 1\0",
            b"arg=true\0root=\0",
        ] {
            assert!(
                matches!(parse(data), Err(ConfigError::BadRoot(2))),
                "{data:?}"
            );
        }
        let twice = b"root=erofs /dev/vda 1\0root=erofs /dev/vda 1\0";
        assert!(matches!(
            parse(twice),
            Err(ConfigError::Duplicate(2, b"root"))
        ));
    }

    #[test]
    fn a_module_path_must_be_absolute() {
        for data in [
            &b"arg=true\0module=\0"[..],
            b"arg=true\0module=rel.ko\0",
            b"arg=true\0module= /x.ko\0",
        ] {
            assert!(matches!(parse(data), Err(ConfigError::BadModule(2))));
        }
    }

    #[test]
    fn ports_virtio_selects_the_virtio_console() {
        assert!(parse_ok(b"ports=virtio\0arg=true\0").virtio_ports);
        assert!(!parse_ok(b"ports=virtio\0arg=true\0").relay_output);
        let relay = parse_ok(b"ports=virtio-relay\0");
        assert!(relay.virtio_ports && relay.relay_output);
        // Any other value leaves the serial ports, as an unknown `stdin`
        // value leaves /dev/null.
        assert!(!parse_ok(b"ports=serial\0").virtio_ports);
        assert!(matches!(
            parse(b"ports=virtio\0ports=virtio\0"),
            Err(ConfigError::Duplicate(2, b"ports"))
        ));
    }

    fn env(config: &RunConfig) -> Vec<&'static [u8]> {
        config
            .envp
            .iter()
            .take_while(|p| !p.is_null())
            // SAFETY: entries point at NUL-terminated strings never freed.
            .map(|&p| unsafe { CStr::from_ptr(p.cast()) }.to_bytes())
            .collect()
    }

    #[test]
    fn a_user_record_names_the_user_once() {
        let config = parse_ok(b"arg=id\0user=builder:staff\0");
        assert_eq!(config.user.map(CStr::to_bytes), Some(&b"builder:staff"[..]));
        assert!(parse_ok(b"arg=id\0").user.is_none());
        assert!(matches!(
            parse(b"user=a\0user=b\0"),
            Err(ConfigError::Duplicate(2, b"user"))
        ));
        assert!(matches!(parse(b"user=\0"), Err(ConfigError::BadUser(1))));
    }

    #[test]
    fn the_users_environment_gives_way_to_env_records() {
        let mut config = parse_ok(b"arg=id\0env=LOGNAME=mine\0env=A=1\0user=builder\0");
        assert!(config.set_env_default(c"HOME=/home/builder"));
        assert!(config.set_env_default(c"USER=builder"));
        assert!(config.set_env_default(c"LOGNAME=builder"));
        assert_eq!(
            env(&config),
            [
                &b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"[..],
                b"HOME=/home/builder",
                b"TERM=linux",
                b"LOGNAME=mine",
                b"A=1",
                b"USER=builder",
            ]
        );
        // An env record's HOME stays. Without a user record, the only
        // room is what a replacing record left (one slot here).
        let mut given = parse_ok(b"env=HOME=/mine\0");
        assert!(given.set_env_default(c"HOME=/root"));
        assert_eq!(env(&given)[1], b"HOME=/mine");
        assert!(given.set_env_default(c"USER=root"));
        assert!(!given.set_env_default(c"LOGNAME=root"));
        assert_eq!(env(&given).len(), 4);
    }

    #[test]
    fn a_net_record_gives_the_interface_settings() {
        assert_eq!(
            parse_ok(b"net=10.0.2.15/24 10.0.2.2 65520\0").net,
            Some(NetConfig {
                address: [10, 0, 2, 15],
                prefix: 24,
                gateway: [10, 0, 2, 2],
                mtu: 65520,
            })
        );
        assert_eq!(
            parse_ok(b"net=0.0.0.0/0 255.255.255.255 68\0")
                .net
                .map(|n| n.prefix),
            Some(0)
        );
        assert_eq!(parse_ok(b"arg=sh\0").net, None);
        for bad in [
            &b"net=10.0.2.15 10.0.2.2 1500\0"[..],
            b"net=10.0.2.15/33 10.0.2.2 1500\0",
            b"net=10.0.2.15/24 10.0.2.2\0",
            b"net=10.0.2.15/24 10.0.2.2 67\0",
            b"net=10.0.2.15/24 10.0.2.2 65536\0",
            b"net=10.0.2/24 10.0.2.2 1500\0",
            b"net=10.0.2.256/24 10.0.2.2 1500\0",
            b"net=10.0.2.15/24 10.0.2.2.1 1500\0",
            b"net=10.0.2.15/24 10.0.2.2 1500 x\0",
            b"net=\0",
        ] {
            assert!(
                matches!(parse(bad), Err(ConfigError::BadNet(1))),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
        assert!(matches!(
            parse(b"net=10.0.2.15/24 10.0.2.2 1500\0net=10.0.2.15/24 10.0.2.2 1500\0"),
            Err(ConfigError::Duplicate(2, b"net"))
        ));
    }

    #[test]
    fn a_tty_record_gives_rows_and_columns() {
        assert_eq!(parse_ok(b"arg=sh\0tty=24 80\0").tty, Some((24, 80)));
        assert_eq!(parse_ok(b"tty=65535 1\0").tty, Some((65535, 1)));
        assert_eq!(parse_ok(b"arg=sh\0").tty, None);
        for data in [
            &b"tty=24\0"[..],
            b"tty=24 \0",
            b"tty= 80\0",
            b"tty=0 80\0",
            b"tty=24 65536\0",
            b"tty=24 80 1\0",
            b"tty=-1 80\0",
            b"tty=\0",
        ] {
            assert!(
                matches!(parse(data), Err(ConfigError::BadTty(1))),
                "{data:?}"
            );
        }
        assert!(matches!(
            parse(b"tty=24 80\0tty=24 80\0"),
            Err(ConfigError::Duplicate(2, b"tty"))
        ));
    }

    #[test]
    fn the_old_records_still_parse_as_before() {
        let config = parse_ok(b"arg=sh\0arg=-c\0env=A=1\0cwd=/tmp\0stdin=0\0");
        assert_eq!(config.command().to_bytes(), b"sh");
        assert_eq!(config.cwd.to_bytes(), b"/tmp");
        assert!(!config.forward_stdin);
        assert!(!config.virtio_ports);
        assert!(matches!(
            parse(b"bogus=1\0"),
            Err(ConfigError::UnknownKey(1, b"bogus"))
        ));
    }
}
