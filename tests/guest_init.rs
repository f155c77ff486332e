//! guest-init, run natively as PID 1 of a new PID and mount namespace
//! (`unshare --pid --fork --mount`), chrooted into a temporary rootfs with
//! busybox-static as its only program. Pipes and pseudo-terminals stand in
//! for the serial ports through guest-init's `MICRORUN_INIT_*` knobs.
//!
//! The binary under test is the one embedded in microrun
//! (`microrun::embedded::GUEST_INIT`), which also proves the embedding.
//!
//! Needs root, `unshare`, `chroot` and `/bin/busybox` (statically linked);
//! each test prints `skipped (unavailable): <reason>` and returns when one
//! is missing, or fails in strict mode (`MICRORUN_REQUIRE_ALL=1`, CI's: it
//! runs as root with scripts/install-deps's packages).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use microrun::embedded::GUEST_INIT;
use microrun::runconfig::{RunConfig, CONFIG_PATH, INIT_PATH};

/// Busybox applets the tests use inside the rootfs.
const APPLETS: &[&str] = &[
    "sh", "cat", "env", "pwd", "sleep", "kill", "true", "printf", "touch", "head", "ls", "stty",
    "tty",
];

/// Held while writing files into a rootfs and while spawning a process.
///
/// A process forked by another test thread inherits every descriptor open
/// at that moment until it execs; if one of them is a file being written,
/// executing that file fails with ETXTBSY. So no file is open for writing
/// while a spawn is in flight (`Command::spawn` returns after the exec).
static FORK_LOCK: Mutex<()> = Mutex::new(());

fn with_fork_lock<T>(f: impl FnOnce() -> T) -> T {
    let _guard = FORK_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f()
}

/// A run that takes longer than this is stuck (guest-init did not end).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The host tools the harness needs, or why the test is skipped.
struct Tools {
    unshare: PathBuf,
    chroot: PathBuf,
    busybox: PathBuf,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn tools() -> Result<Tools, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "not root (unshare --pid --mount and chroot need root): run the tests as root".into(),
        );
    }
    let unshare = find_in_path("unshare").ok_or("unshare not found (install util-linux)")?;
    let chroot = find_in_path("chroot").ok_or("chroot not found (install coreutils)")?;
    let busybox = PathBuf::from("/bin/busybox");
    let elf = fs::read(&busybox)
        .map_err(|e| format!("/bin/busybox: {e} (install busybox-static; scripts/install-deps)"))?;
    if program_headers(&elf).contains(&PT_INTERP) {
        return Err(
            "/bin/busybox is dynamically linked (install busybox-static; scripts/install-deps)"
                .into(),
        );
    }
    let probe = with_fork_lock(|| {
        Command::new(&unshare)
            .args(["--pid", "--fork", "--mount", "true"])
            .status()
    })
    .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !probe.success() {
        return Err(
            "unshare --pid --fork --mount is not permitted here (a container without \
             CAP_SYS_ADMIN?): run the tests as root on the host or a privileged container"
                .into(),
        );
    }
    Ok(Tools {
        unshare,
        chroot,
        busybox,
    })
}

macro_rules! tools_or_skip {
    () => {
        match tools() {
            Ok(tools) => tools,
            Err(reason) => {
                test_support::skip_unavailable!("{reason}");
                return;
            }
        }
    };
}

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
const ET_EXEC: u16 = 2;

/// The `p_type` of every program header of a 64-bit little-endian ELF.
fn program_headers(elf: &[u8]) -> Vec<u32> {
    assert!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF",
        "not an ELF file"
    );
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// A temporary rootfs with guest-init, busybox and a run configuration.
struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    fn new(tools: &Tools) -> Self {
        with_fork_lock(|| Self::create(tools))
    }

    fn create(tools: &Tools) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy(&tools.busybox, root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let init = root.join(INIT_PATH.trim_start_matches('/'));
        fs::create_dir_all(init.parent().unwrap()).unwrap();
        fs::write(&init, GUEST_INIT).unwrap();
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
        // The status channel, when it is not shared with stdout.
        fs::write(root.join("status"), b"").unwrap();
        Rootfs { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn configure(&self, config: &RunConfig) {
        self.write(CONFIG_PATH, &config.encode().unwrap());
    }

    /// Writes a file (not executable).
    fn write(&self, inside: &str, bytes: &[u8]) {
        self.write_mode(inside, bytes, 0o644);
    }

    /// Writes a file with permission bits `mode`.
    fn write_mode(&self, inside: &str, bytes: &[u8], mode: u32) {
        let path = self.path(inside);
        with_fork_lock(|| {
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        });
    }
}

/// `config` encoded, followed by `extra` records (those the host encoder
/// may not write yet: `ports`, `module`).
fn encode_with(config: &RunConfig, extra: &[&str]) -> Vec<u8> {
    let mut bytes = config.encode().unwrap();
    for record in extra {
        bytes.extend_from_slice(record.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// A config running `argv`, with no other settings.
fn command(argv: &[&str]) -> RunConfig {
    RunConfig {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Where the three channels go for one run.
#[derive(Clone, Copy, PartialEq)]
enum Wiring {
    /// stdout and stderr on pipes, status in the file `/status`.
    Pipes,
    /// stdout and status on the same pipe, so their order shows.
    StatusOnStdout,
    /// stdout (and stdin) on a pseudo-terminal, status in `/status`.
    Pty,
    /// As `Pipes`, in a network namespace of its own (a VM's: only `lo`,
    /// down until guest-init sets it up).
    PipesOwnNetwork,
}

struct Outcome {
    stdout: Vec<u8>,
    stderr: String,
    /// The status channel's contents (empty with `StatusOnStdout`).
    status_channel: String,
    /// What guest-init itself exited with (it has the no-power-off knob).
    init_exit: std::process::ExitStatus,
    elapsed: Duration,
}

impl Outcome {
    /// guest-init's choice of streams on the status channel, when the run
    /// configuration offered the virtio ports: `@ports` or `@uarts`.
    fn ports_event(&self) -> Option<&str> {
        self.status_channel
            .lines()
            .find(|l| *l == "@ports" || *l == "@uarts")
    }

    /// The relay's `@sent OUT ERR` counts, if the channel has them.
    fn sent_event(&self) -> Option<[u64; 2]> {
        let line = self
            .status_channel
            .lines()
            .find(|l| l.starts_with("@sent "))?;
        vmm::status::sent_counts(&line[1..])
    }

    /// The exit status reported on the status channel, after checking the
    /// channel holds exactly `@init` (and the ports and relay events, if
    /// any, the relay's just before the status) and one status line.
    fn status(&self) -> u8 {
        let all: Vec<&str> = self.status_channel.lines().collect();
        if let Some(at) = all.iter().position(|l| l.starts_with("@sent ")) {
            assert_eq!(at + 2, all.len(), "@sent must come just before the status");
        }
        let lines: Vec<&str> = all
            .into_iter()
            .filter(|l| Some(*l) != self.ports_event() && !l.starts_with("@sent "))
            .collect();
        assert_eq!(
            lines.len(),
            2,
            "status channel: {:?}; stderr: {}",
            self.status_channel,
            self.stderr
        );
        assert_eq!(lines[0], "@init");
        assert!(
            self.init_exit.success(),
            "guest-init exited with {}",
            self.init_exit
        );
        lines[1]
            .parse()
            .unwrap_or_else(|_| panic!("bad status line {:?}", lines[1]))
    }
}

/// Creates a pseudo-terminal; returns (master, slave).
fn open_pty() -> (fs::File, fs::File) {
    // Under the fork lock, and close-on-exec at once: a process spawned by
    // another test must not inherit the slave and keep it open.
    with_fork_lock(|| {
        let mut master = -1;
        let mut slave = -1;
        // SAFETY: openpty writes the two descriptors; the name, termios and
        // window size arguments may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        for fd in [master, slave] {
            // SAFETY: fd is open; F_SETFD only changes its flags.
            let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened and are owned by nobody
        // else.
        unsafe {
            (
                fs::File::from(OwnedFd::from_raw_fd(master)),
                fs::File::from(OwnedFd::from_raw_fd(slave)),
            )
        }
    })
}

fn run(
    tools: &Tools,
    rootfs: &Rootfs,
    wiring: Wiring,
    stdin_input: &[u8],
    extra_env: &[(&str, &str)],
) -> Outcome {
    let mut cmd = Command::new(&tools.unshare);
    cmd.args(["--pid", "--fork", "--mount", "--kill-child"]);
    if wiring == Wiring::PipesOwnNetwork {
        cmd.arg("--net");
    }
    cmd.arg(&tools.chroot)
        .arg(rootfs.dir.path())
        .arg(INIT_PATH)
        .env_clear()
        .env("MICRORUN_INIT_CONSOLE", "fd:2")
        .env("MICRORUN_INIT_STDOUT", "fd:1")
        .env("MICRORUN_INIT_NO_POWEROFF", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd.env(
        "MICRORUN_INIT_STATUS",
        if wiring == Wiring::StatusOnStdout {
            "fd:1"
        } else {
            "/status"
        },
    );
    for (name, value) in extra_env {
        cmd.env(name, value);
    }
    let mut pty_master = None;
    if wiring == Wiring::Pty {
        let (master, slave) = open_pty();
        cmd.stdout(Stdio::from(slave));
        pty_master = Some(master);
    } else {
        cmd.stdout(Stdio::piped());
    }

    let start = Instant::now();
    let mut child = with_fork_lock(|| cmd.spawn()).expect("spawn unshare");
    // Drop our copy of the pty slave, so the master reads EIO once guest-init
    // and everything in its namespace are gone.
    drop(cmd);
    let stdout_reader = match pty_master {
        Some(mut master) => {
            if !stdin_input.is_empty() {
                // Only once guest-init has put the terminal in raw mode
                // (before it announces itself), or the line discipline would
                // still echo and translate the input.
                let status = rootfs.path("status");
                while !fs::read_to_string(&status).unwrap().starts_with("@init\n") {
                    assert!(start.elapsed() < RUN_TIMEOUT, "no @init");
                    thread::sleep(Duration::from_millis(1));
                }
                master.write_all(stdin_input).unwrap();
            }
            thread::spawn(move || {
                let mut out = Vec::new();
                let mut buf = [0u8; 65536];
                loop {
                    match master.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        // EIO: the slave side was closed for good.
                        Err(_) => break,
                    }
                }
                out
            })
        }
        None => {
            let mut stdout = child.stdout.take().unwrap();
            thread::spawn(move || {
                let mut out = Vec::new();
                stdout.read_to_end(&mut out).unwrap();
                out
            })
        }
    };
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = thread::spawn(move || {
        let mut out = Vec::new();
        stderr.read_to_end(&mut out).unwrap();
        out
    });

    let init_exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_TIMEOUT {
            // --kill-child takes the whole namespace down with unshare.
            let _ = child.kill();
            let _ = child.wait();
            panic!("guest-init did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = stdout_reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap()).into_owned();
    let status_channel = fs::read_to_string(rootfs.path("status")).unwrap();
    Outcome {
        stdout,
        stderr,
        status_channel,
        init_exit,
        elapsed,
    }
}

/// Runs `config` with pipes and returns the outcome.
fn run_config(tools: &Tools, config: &RunConfig) -> Outcome {
    let rootfs = Rootfs::new(tools);
    rootfs.configure(config);
    run(tools, &rootfs, Wiring::Pipes, b"", &[])
}

#[test]
fn guest_init_is_small_and_statically_linked() {
    assert!(
        GUEST_INIT.len() <= 128 * 1024,
        "guest-init is {} bytes, over the 128 KiB limit",
        GUEST_INIT.len()
    );
    let elf_type = u16::from_le_bytes([GUEST_INIT[16], GUEST_INIT[17]]);
    assert_eq!(
        elf_type, ET_EXEC,
        "guest-init must be a fixed-address executable"
    );
    let headers = program_headers(GUEST_INIT);
    assert!(
        !headers.contains(&PT_INTERP),
        "guest-init has an ELF interpreter"
    );
    // Without a dynamic section there can be no DT_NEEDED entry.
    assert!(
        !headers.contains(&PT_DYNAMIC),
        "guest-init has a dynamic section"
    );
}

#[test]
fn exit_statuses_are_reported() {
    let tools = tools_or_skip!();
    for code in [0u8, 1, 42, 255] {
        let outcome = run_config(&tools, &command(&["sh", "-c", &format!("exit {code}")]));
        assert_eq!(outcome.status(), code, "stderr: {}", outcome.stderr);
        assert_eq!(outcome.stderr, "");
    }
}

#[test]
fn death_by_signal_is_128_plus_n() {
    let tools = tools_or_skip!();
    for (signal, code) in [("KILL", 137), ("SEGV", 139)] {
        let outcome = run_config(
            &tools,
            &command(&["sh", "-c", &format!("kill -{signal} $$")]),
        );
        assert_eq!(
            outcome.status(),
            code,
            "signal {signal}; stderr: {}",
            outcome.stderr
        );
    }
}

#[test]
fn missing_command_is_127() {
    let tools = tools_or_skip!();
    let outcome = run_config(&tools, &command(&["no-such-command", "x"]));
    assert_eq!(outcome.status(), 127);
    assert_eq!(
        outcome.stderr,
        "microrun: no-such-command: command not found\n"
    );

    let outcome = run_config(&tools, &command(&["/bin/no-such-file"]));
    assert_eq!(outcome.status(), 127);
    assert_eq!(
        outcome.stderr,
        "microrun: /bin/no-such-file: command not found\n"
    );
}

#[test]
fn default_init_that_is_a_dangling_symlink_is_127() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&RunConfig::default());
    symlink("/nowhere", rootfs.path("/init")).unwrap();
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 127);
    assert_eq!(
        outcome.stderr,
        "microrun: /init: command not found (dangling symbolic link)\n"
    );
}

#[test]
fn default_init_runs_when_no_command_is_given() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&RunConfig::default());
    rootfs.write_mode("/init", b"#!/bin/sh\necho \"init as $0\"\nexit 5\n", 0o755);
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 5, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout, b"init as /init\n");
}

#[test]
fn command_that_cannot_be_executed_is_126() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.write("/bin/not-executable", b"#!/bin/sh\necho hi\n");
    rootfs.configure(&command(&["not-executable"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 126);
    assert!(
        outcome
            .stderr
            .starts_with("microrun: /bin/not-executable: cannot execute: permission denied"),
        "{}",
        outcome.stderr
    );
    assert_eq!(outcome.stderr.lines().count(), 1);

    let outcome = run_config(&tools, &command(&["/bin"]));
    assert_eq!(outcome.status(), 126);
    assert_eq!(
        outcome.stderr,
        "microrun: /bin: cannot execute: is a directory\n"
    );

    // Neither ELF nor #!: the kernel cannot run it and there is no shell
    // fallback.
    let rootfs = Rootfs::new(&tools);
    rootfs.write_mode("/script", b"echo hi\n", 0o755);
    rootfs.configure(&command(&["/script"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 126);
    assert!(
        outcome.stderr.contains("not an executable format"),
        "{}",
        outcome.stderr
    );
}

/// A share that cannot be mounted (here: no virtio-9p device, and no
/// right to mount in the test's namespace) ends the run with 125 before
/// the command runs, naming the share; its directory was made first.
#[test]
fn a_share_that_cannot_be_mounted_is_125() {
    let tools = tools_or_skip!();
    let config = RunConfig {
        mounts: vec![microrun::runconfig::ShareMount {
            tag: "microrun0".into(),
            dest: "/work/out".into(),
            read_only: false,
        }],
        ..command(&["/bin/sh", "-c", "echo ran"])
    };
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&config);
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 125, "{}", outcome.stderr);
    assert!(
        outcome.stderr.starts_with(
            "microrun: guest-init: cannot mount the share microrun0 at /work/out: mount: "
        ),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stdout.is_empty(),
        "the command ran: {:?}",
        outcome.stdout
    );
}

/// In every run, guest-init sets `lo` up (a new network namespace, like a
/// VM, starts with it down): flags 0x9, IFF_UP | IFF_LOOPBACK.
#[test]
fn loopback_is_set_up() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&command(&["/bin/cat", "/sys/class/net/lo/flags"]));
    let outcome = run(&tools, &rootfs, Wiring::PipesOwnNetwork, b"", &[]);
    assert_eq!(outcome.status(), 0, "{}", outcome.stderr);
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), "0x9\n");
}

/// A `net` record without the interface (no virtio-net device here) ends
/// the run with 125 before the command runs, after the bounded wait.
#[test]
fn a_network_without_its_interface_is_125() {
    let tools = tools_or_skip!();
    let config = RunConfig {
        net: Some(microrun::runconfig::NetRecord {
            address: std::net::Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: std::net::Ipv4Addr::new(10, 0, 2, 2),
            mtu: 65520,
        }),
        ..command(&["/bin/sh", "-c", "echo ran"])
    };
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&config);
    fs::create_dir_all(rootfs.path(".microrun/etc")).unwrap();
    for file in ["resolv.conf", "hosts"] {
        rootfs.write(&format!(".microrun/etc/{file}"), b"# test\n");
    }
    let outcome = run(&tools, &rootfs, Wiring::PipesOwnNetwork, b"", &[]);
    assert_eq!(outcome.status(), 125, "{}", outcome.stderr);
    assert!(
        outcome
            .stderr
            .starts_with("microrun: guest-init: network: no interface eth0"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stdout.is_empty(), "the command ran");
}

#[test]
fn missing_or_malformed_configuration_is_126() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 126);
    assert_eq!(
        outcome.stderr,
        "microrun: cannot read the run configuration /.microrun/run: no such file or directory\n"
    );

    for (bytes, reason) in [
        (
            &b"arg=true\0bogus=1\0"[..],
            "record 2 has the unknown key 'bogus' (expected arg, env, cwd, stdin, ports, module, \
             root, mount, net, user or tty)",
        ),
        (
            b"arg=true\0net=10.0.2.15 10.0.2.2 1500\0",
            "record 2 is not net=ADDR/PREFIX GATEWAY MTU",
        ),
        (
            b"arg=true\0root=ext4 /dev/vda 1\0",
            "record 2 is not root=erofs /DEV BYTES",
        ),
        (b"user=\0", "record 1 is not user=USER or user=USER:GROUP"),
        (b"user=a\0user=b\0", "record 2 repeats the key 'user'"),
        (b"arg=true\0tty=24\0", "record 2 is not tty=ROWS COLS"),
        (
            b"arg=true\0mount=tag rw relative\0",
            "record 2 is not mount=TAG rw /DEST or mount=TAG ro /DEST",
        ),
        (
            b"arg=true\0module=relative.ko\0",
            "record 2 is not module=/PATH or module=/PATH PARAMS",
        ),
        (
            b"ports=virtio\0ports=virtio\0",
            "record 2 repeats the key 'ports'",
        ),
        (b"arg=true", "the last record has no NUL terminator"),
        (b"arg=true\0noequals\0", "record 2 has no '='"),
        (b"env=NOVALUE\0", "record 1 is not env=NAME=value"),
        (b"cwd=/\0cwd=/tmp\0", "record 2 repeats the key 'cwd'"),
    ] {
        rootfs.write(CONFIG_PATH, bytes);
        let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
        assert_eq!(outcome.status(), 126);
        assert_eq!(
            outcome.stderr,
            format!("microrun: malformed run configuration /.microrun/run: {reason}\n")
        );
    }

    rootfs.configure(&RunConfig {
        workdir: Some("/no/such/dir".into()),
        ..command(&["true"])
    });
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 126);
    assert_eq!(
        outcome.stderr,
        "microrun: cannot change to the working directory /no/such/dir: no such file or directory\n"
    );
}

#[test]
fn every_byte_value_passes_a_raw_terminal_unchanged() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    // Every byte value, several times, including \n, \r, ^C, ^D and DEL,
    // which a terminal in cooked mode would translate or act on.
    let bytes: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
    rootfs.write("/bytes", &bytes);
    rootfs.configure(&command(&["cat", "/bytes"]));
    let outcome = run(&tools, &rootfs, Wiring::Pty, b"", &[]);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert!(
        outcome.stdout == bytes,
        "stdout differs: {:?}",
        outcome.stdout
    );
}

#[test]
fn forwarded_stdin_reads_the_terminal_without_echo() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&RunConfig {
        forward_stdin: true,
        ..command(&["sh", "-c", "read line; echo \"got:$line\""])
    });
    let outcome = run(&tools, &rootfs, Wiring::Pty, b"abc\n", &[]);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), "got:abc\n");
}

/// `tty=ROWS COLS`: the command's stdin, stdout and stderr are a
/// pseudo-terminal of that size, its controlling terminal; the stdin
/// stream's frames set the size (`FF 'W' rows cols`) and unescape a
/// doubled 0xFF, and none of their bytes reaches the command.
#[test]
fn a_tty_record_gives_the_command_a_terminal_that_takes_frames() {
    let tools = tools_or_skip!();
    let has = |out: &[u8], needle: &[u8]| out.windows(needle.len()).any(|w| w == needle);
    // The record's size; stdout and stderr are the terminal (whose output
    // processing turns \n into \r\n).
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&RunConfig {
        tty: Some((24, 80)),
        ..command(&["sh", "-c", "stty size; tty >&2; exit 4"])
    });
    let outcome = run(&tools, &rootfs, Wiring::Pty, b"", &[]);
    assert_eq!(outcome.status(), 4, "stderr: {}", outcome.stderr);
    let out = &outcome.stdout;
    assert!(out.starts_with(b"24 80\r\n/dev/pts/"), "{out:?}");

    // A frame's size, and a line with one 0xFF: the frame comes before
    // the line that `read` waits for.
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&RunConfig {
        forward_stdin: true,
        tty: Some((24, 80)),
        ..command(&[
            "sh",
            "-c",
            "read line; stty size; echo \"got:$line\" >&2; exit 3",
        ])
    });
    // 30 rows (0x1e), 100 columns (0x64).
    let input = b"\xffW\x1e\x00\x64\x00he\xff\xffllo\r";
    let outcome = run(&tools, &rootfs, Wiring::Pty, input, &[]);
    assert_eq!(outcome.status(), 3, "stderr: {}", outcome.stderr);
    let out = &outcome.stdout;
    // The terminal echoes the line, then the new size, then the line read.
    assert_eq!(
        out.as_slice(),
        b"he\xffllo\r\n30 100\r\ngot:he\xffllo\r\n",
        "{out:?}"
    );
    assert!(!has(out, b"\xffW"));
}

#[test]
fn stdin_is_dev_null_unless_forwarded() {
    let tools = tools_or_skip!();
    let outcome = run_config(&tools, &command(&["sh", "-c", "cat; echo done"]));
    assert_eq!(outcome.status(), 0);
    assert_eq!(outcome.stdout, b"done\n");
}

#[test]
fn stderr_is_kept_apart_from_stdout() {
    let tools = tools_or_skip!();
    let outcome = run_config(
        &tools,
        &command(&[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
        ]),
    );
    assert_eq!(outcome.status(), 0);
    assert_eq!(outcome.stdout, b"out1\nout2\n");
    assert_eq!(outcome.stderr, "err1\nerr2\n");
}

#[test]
fn argv_environment_and_working_directory_are_applied() {
    let tools = tools_or_skip!();
    let outcome = run_config(
        &tools,
        &command(&[
            "sh",
            "-c",
            "printf '[%s]' \"$0\" \"$@\"",
            "zero",
            "a b",
            "",
            "c",
        ]),
    );
    assert_eq!(outcome.status(), 0);
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), "[zero][a b][][c]");

    // The defaults, PATH replaced in place, FOO appended; guest-init's own
    // MICRORUN_INIT_* knobs do not leak.
    let outcome = run_config(
        &tools,
        &RunConfig {
            env: vec![
                ("FOO".into(), "bar baz".into()),
                ("PATH".into(), "/bin".into()),
            ],
            ..command(&["env"])
        },
    );
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "PATH=/bin\nHOME=/\nTERM=linux\nFOO=bar baz\n"
    );

    // A PATH without /bin: `env` is not found.
    let outcome = run_config(
        &tools,
        &RunConfig {
            env: vec![("PATH".into(), "/usr/bin".into())],
            ..command(&["env"])
        },
    );
    assert_eq!(outcome.status(), 127);

    let rootfs = Rootfs::new(&tools);
    fs::create_dir_all(rootfs.path("/work/dir")).unwrap();
    rootfs.configure(&RunConfig {
        workdir: Some("/work/dir".into()),
        ..command(&["pwd"])
    });
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 0);
    assert_eq!(outcome.stdout, b"/work/dir\n");
}

#[test]
fn mounts_dev_proc_sys_and_tmp() {
    let tools = tools_or_skip!();
    let outcome = run_config(
        &tools,
        &command(&[
            "sh",
            "-c",
            "cat /proc/1/comm; ls /sys/kernel >/dev/null && echo sys; \
             ls /dev/null && touch /tmp/x && echo tmp; cat /proc/mounts",
        ]),
    );
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("init"), "PID 1 is guest-init: {stdout}");
    assert_eq!(lines.next(), Some("sys"));
    assert_eq!(lines.next(), Some("/dev/null"));
    assert_eq!(lines.next(), Some("tmp"));
    let mounts: Vec<(&str, &str)> = lines
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some((fields.nth(1)?, fields.next()?))
        })
        .collect();
    for expected in [
        ("/dev", "devtmpfs"),
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/tmp", "tmpfs"),
    ] {
        assert!(mounts.contains(&expected), "{expected:?} not in {mounts:?}");
    }

    // With the knob, nothing is mounted (the chroot engine mounts itself).
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&command(&["ls", "/"]));
    let outcome = run(
        &tools,
        &rootfs,
        Wiring::Pipes,
        b"",
        &[("MICRORUN_INIT_SKIP_MOUNTS", "1")],
    );
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), "bin\nstatus\n");
}

#[test]
fn orphans_are_reaped_while_the_command_runs() {
    let tools = tools_or_skip!();
    // `(true &)` orphans `true`, whose parent becomes guest-init; unless
    // guest-init reaps it, it stays a zombie (state Z in /proc/PID/stat).
    let outcome = run_config(
        &tools,
        &command(&[
            "sh",
            "-c",
            "(true &); (true &); sleep 0.3; cat /proc/[0-9]*/stat",
        ]),
    );
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    let stat = String::from_utf8_lossy(&outcome.stdout);
    assert!(stat.contains("(sleep)") || stat.contains("(cat)"), "{stat}");
    assert!(!stat.contains(") Z "), "a zombie was left: {stat}");
}

#[test]
fn leftover_processes_get_sigterm_before_the_status_line() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    // The orphan says when SIGTERM reaches it; stdout and status share a
    // pipe, so the order of the two is visible.
    let orphan = concat!(
        "#!/bin/sh\n",
        "trap 'echo got-term; exit 0' TERM\n",
        "touch /tmp/ready\n",
        "while :; do sleep 0.01; done\n",
    );
    rootfs.write_mode("/orphan", orphan.as_bytes(), 0o755);
    rootfs.configure(&command(&[
        "sh",
        "-c",
        "/orphan & while [ ! -e /tmp/ready ]; do sleep 0.01; done; echo last; exit 7",
    ]));
    let outcome = run(&tools, &rootfs, Wiring::StatusOnStdout, b"", &[]);
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "@init\nlast\ngot-term\n7\n",
        "stderr: {}",
        outcome.stderr
    );
    assert!(outcome.init_exit.success());
}

#[test]
fn leftover_processes_that_ignore_sigterm_are_killed() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    // SIG_IGN survives exec, so this sleep ignores SIGTERM: only SIGKILL
    // ends it, and guest-init waits for every process before reporting.
    // Without SIGKILL, guest-init would wait 5 s for it before giving up.
    rootfs.write_mode(
        "/stubborn",
        b"#!/bin/sh\ntrap '' TERM\ntouch /tmp/ready\nexec sleep 1000\n",
        0o755,
    );
    rootfs.configure(&command(&[
        "sh",
        "-c",
        "/stubborn & while [ ! -e /tmp/ready ]; do sleep 0.01; done; exit 3",
    ]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 3, "stderr: {}", outcome.stderr);
    assert!(
        outcome.elapsed < Duration::from_secs(4),
        "took {:?}",
        outcome.elapsed
    );
}

#[test]
fn status_line_comes_after_the_last_stdout_byte() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    // Far more than a pipe holds, so the command is still writing when the
    // reader is slow; the status must wait for all of it.
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    rootfs.write("/big", &big);
    rootfs.configure(&command(&["cat", "/big"]));
    let outcome = run(&tools, &rootfs, Wiring::StatusOnStdout, b"", &[]);
    let mut expected = b"@init\n".to_vec();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"0\n");
    assert!(
        outcome.stdout == expected,
        "stdout is {} bytes, expected {}",
        outcome.stdout.len(),
        expected.len()
    );
}

#[test]
fn initial_environment_knobs_do_not_reach_the_command() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.configure(&command(&["env"]));
    let outcome = run(
        &tools,
        &rootfs,
        Wiring::Pipes,
        b"",
        &[("MICRORUN_INIT_CONFIG", "/.microrun/run"), ("OTHER", "x")],
    );
    assert_eq!(outcome.status(), 0);
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nHOME=/\nTERM=linux\n"
    );
}

#[test]
fn config_path_knob_is_honoured() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    rootfs.write(
        "/other-config",
        &command(&["sh", "-c", "exit 9"]).encode().unwrap(),
    );
    let outcome = run(
        &tools,
        &rootfs,
        Wiring::Pipes,
        b"",
        &[("MICRORUN_INIT_CONFIG", "/other-config")],
    );
    assert_eq!(outcome.status(), 9, "stderr: {}", outcome.stderr);
}

/// The fake sysfs and device directories of the virtio-console's ports, and
/// the knobs that point guest-init at them.
const PORTS_SYSFS: &str = "/ports/sys";
const PORTS_DEV: &str = "/ports/dev";
const PORTS_KNOBS: [(&str, &str); 2] = [
    ("MICRORUN_INIT_PORTS_SYSFS", PORTS_SYSFS),
    ("MICRORUN_INIT_PORTS_DEV", PORTS_DEV),
];

impl Rootfs {
    /// A sysfs entry `<PORTS_SYSFS>/<device>` whose `name` file holds `name`.
    fn port_name(&self, device: &str, name: &[u8]) {
        let dir = format!("{PORTS_SYSFS}/{device}");
        fs::create_dir_all(self.path(&dir)).unwrap();
        self.write(&format!("{dir}/name"), name);
    }

    /// A stand-in for the device node `<PORTS_DEV>/<device>`: a regular file
    /// holding `contents`.
    fn port_device(&self, device: &str, contents: &[u8]) {
        fs::create_dir_all(self.path(PORTS_DEV)).unwrap();
        self.write(&format!("{PORTS_DEV}/{device}"), contents);
    }

    fn read(&self, inside: &str) -> String {
        String::from_utf8_lossy(&fs::read(self.path(inside)).unwrap()).into_owned()
    }
}

/// The three ports as the driver shows them, at device numbers other than
/// 0..2 (they follow probe order), among entries that must be ignored.
fn rootfs_with_ports(tools: &Tools) -> Rootfs {
    let rootfs = Rootfs::new(tools);
    rootfs.port_name("vport3p0", b"other\n");
    rootfs.port_name("vport3p1", b"microrun.stdout\n");
    rootfs.port_name("vport3p2", b"microrun.stderr\n");
    rootfs.port_name("vport12p7", b"microrun.stdin\n");
    // Far longer than any name, with no newline, and starting like one.
    rootfs.port_name("vport9p0", "microrun.stdout".repeat(10_000).as_bytes());
    // An entry without a name file (not named yet) and one whose name file
    // is a FIFO with no writer, which must not stall the wait.
    fs::create_dir_all(rootfs.path(&format!("{PORTS_SYSFS}/vport9p1"))).unwrap();
    fs::create_dir_all(rootfs.path(&format!("{PORTS_SYSFS}/vport9p2"))).unwrap();
    let fifo = std::ffi::CString::new(
        rootfs
            .path(&format!("{PORTS_SYSFS}/vport9p2/name"))
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: `fifo` is a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    rootfs.port_device("vport3p0", b"");
    rootfs.port_device("vport3p1", b"");
    rootfs.port_device("vport3p2", b"");
    rootfs
}

#[test]
fn virtio_ports_carry_stdout_stderr_and_stdin() {
    let tools = tools_or_skip!();
    let rootfs = rootfs_with_ports(&tools);
    rootfs.port_device("vport12p7", b"from the stdin port\n");
    let config = RunConfig {
        forward_stdin: true,
        ..command(&[
            "sh",
            "-c",
            "read line; echo \"out:$line\"; echo err >&2; exit 4",
        ])
    };
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 4, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.ports_event(), Some("@ports"));
    assert_eq!(
        rootfs.read("/ports/dev/vport3p1"),
        "out:from the stdin port\n"
    );
    assert_eq!(rootfs.read("/ports/dev/vport3p2"), "err\n");
    // Nothing on the serial stand-ins, and the decoy port was left alone.
    assert_eq!(outcome.stdout, b"");
    assert_eq!(outcome.stderr, "");
    assert_eq!(rootfs.read("/ports/dev/vport3p0"), "");
}

#[test]
fn relayed_output_reaches_the_ports_counted_and_leftovers_do_not_hold_it() {
    let tools = tools_or_skip!();
    let rootfs = rootfs_with_ports(&tools);
    rootfs.port_device("vport12p7", b"in\n");
    // Over a pipe's worth of stdout (past the relay's 256 KiB pipes), some
    // stderr, stdin straight from its port, and a background process that
    // keeps both pipes open past the command's end.
    let script = "read line; echo \"got:$line\"; sleep 30 & \
                  i=0; while [ $i -lt 40000 ]; do echo \"line $i of the build log\"; \
                  i=$((i+1)); done; echo err >&2; exit 5";
    let config = RunConfig {
        forward_stdin: true,
        ..command(&["sh", "-c", script])
    };
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio-relay"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 5, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.ports_event(), Some("@ports"));
    let out = rootfs.read("/ports/dev/vport3p1");
    let mut expected = String::from("got:in\n");
    for i in 0..40000 {
        expected.push_str(&format!("line {i} of the build log\n"));
    }
    assert!(
        out == expected,
        "stdout port: {} bytes, not {}",
        out.len(),
        expected.len()
    );
    assert_eq!(rootfs.read("/ports/dev/vport3p2"), "err\n");
    assert_eq!(
        outcome.sent_event(),
        Some([expected.len() as u64, 4]),
        "status channel: {:?}",
        outcome.status_channel
    );
    assert_eq!(outcome.stdout, b"");
    assert_eq!(outcome.stderr, "");
    // The sleep was ended, not waited for.
    assert!(
        outcome.elapsed < Duration::from_secs(20),
        "took {:?}",
        outcome.elapsed
    );

    // Without the relay there is no count.
    let rootfs = rootfs_with_ports(&tools);
    let config = command(&["sh", "-c", "echo out"]);
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.sent_event(), None);
}

#[test]
fn the_stdin_port_is_opened_only_when_stdin_is_forwarded() {
    let tools = tools_or_skip!();
    // No device node for the stdin port: opening it would fail and send
    // guest-init back to the serial ports.
    let rootfs = rootfs_with_ports(&tools);
    let config = command(&["sh", "-c", "cat; echo done; echo err >&2"]);
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stderr, "");
    assert_eq!(rootfs.read("/ports/dev/vport3p1"), "done\n");
    assert_eq!(rootfs.read("/ports/dev/vport3p2"), "err\n");

    // Forwarded, the missing node is reported and the serial ports serve.
    let config = RunConfig {
        forward_stdin: true,
        ..command(&["sh", "-c", "echo out; echo err >&2"])
    };
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(
        outcome.stderr,
        "microrun: guest-init: cannot open the virtio console's port /ports/dev/vport12p7 \
         (microrun.stdin): no such file or directory; using the serial ports\nerr\n"
    );
    assert_eq!(outcome.stdout, b"out\n");
}

#[test]
fn missing_virtio_ports_fall_back_to_the_serial_ports_in_bounded_time() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    // Two of the three: still not enough.
    rootfs.port_name("vport0p1", b"microrun.stdout\n");
    rootfs.port_name("vport0p2", b"microrun.stderr\n");
    rootfs.port_device("vport0p1", b"");
    rootfs.port_device("vport0p2", b"");
    let config = command(&["sh", "-c", "echo out; echo err >&2"]);
    rootfs.write(CONFIG_PATH, &encode_with(&config, &["ports=virtio"]));
    let knobs = [
        PORTS_KNOBS[0],
        PORTS_KNOBS[1],
        ("MICRORUN_INIT_PORTS_WAIT_MS", "300"),
    ];
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &knobs);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.ports_event(), Some("@uarts"));
    assert_eq!(
        outcome.stderr,
        "microrun: guest-init: the virtio console's ports did not appear within 300 ms; \
         using the serial ports\nerr\n"
    );
    assert_eq!(outcome.stdout, b"out\n");
    assert_eq!(rootfs.read("/ports/dev/vport0p1"), "");
    assert!(
        outcome.elapsed >= Duration::from_millis(300) && outcome.elapsed < Duration::from_secs(5),
        "took {:?}",
        outcome.elapsed
    );

    // The default wait is 2 s.
    let knobs = [PORTS_KNOBS[0], PORTS_KNOBS[1]];
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &knobs);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(
        outcome.stderr,
        "microrun: guest-init: the virtio console's ports did not appear within 2 s; \
         using the serial ports\nerr\n"
    );
    assert_eq!(outcome.stdout, b"out\n");
    assert!(
        outcome.elapsed >= Duration::from_secs(2) && outcome.elapsed < Duration::from_secs(8),
        "took {:?}",
        outcome.elapsed
    );

    // No class directory at all: the kernel has no virtio console driver,
    // and nothing is waited for.
    let knobs = [("MICRORUN_INIT_PORTS_SYSFS", "/no/such/dir")];
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &knobs);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.ports_event(), Some("@uarts"));
    assert_eq!(
        outcome.stderr,
        "microrun: guest-init: the kernel has no virtio console driver (/no/such/dir does \
         not exist); using the serial ports\nerr\n"
    );
    assert_eq!(outcome.stdout, b"out\n");
    assert!(
        outcome.elapsed < Duration::from_secs(1),
        "took {:?}",
        outcome.elapsed
    );
}

#[test]
fn without_ports_virtio_the_ports_are_not_used() {
    let tools = tools_or_skip!();
    let rootfs = rootfs_with_ports(&tools);
    rootfs.configure(&command(&["sh", "-c", "echo out; echo err >&2"]));
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &PORTS_KNOBS);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.ports_event(), None);
    assert_eq!(outcome.stdout, b"out\n");
    assert_eq!(outcome.stderr, "err\n");
    assert_eq!(rootfs.read("/ports/dev/vport3p1"), "");
}

#[test]
fn modules_that_cannot_be_loaded_are_reported_and_the_command_runs() {
    let tools = tools_or_skip!();
    let rootfs = Rootfs::new(&tools);
    fs::create_dir_all(rootfs.path("/.microrun/modules")).unwrap();
    // Not an ELF file: finit_module refuses it (ENOEXEC), or refuses every
    // module (EPERM) without CAP_SYS_MODULE. Nothing here can load.
    rootfs.write("/.microrun/modules/00-not-a-module.ko", b"not a module\n");
    let config = command(&["sh", "-c", "echo ran"]);
    rootfs.write(
        CONFIG_PATH,
        &encode_with(
            &config,
            &[
                "module=/.microrun/modules/00-not-a-module.ko",
                "module=/.microrun/modules/01-missing.ko device=4K@0xd0000000:5",
            ],
        ),
    );
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout, b"ran\n");
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", outcome.stderr);
    assert!(
        lines[0].starts_with(
            "microrun: guest-init: cannot load module /.microrun/modules/00-not-a-module.ko: "
        ),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        "microrun: guest-init: cannot load module /.microrun/modules/01-missing.ko: \
         no such file or directory"
    );
}

/// Busybox applets in the disk-root tests' image.
const IMAGE_APPLETS: &[&str] = &[
    "sh", "cat", "touch", "ls", "stat", "head", "grep", "rm", "mkdir",
];

/// An EROFS image made by `mkfs.erofs`, attached read-only to a loop
/// device for as long as the value lives.
struct LoopImage {
    device: String,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// What the disk-root tests need beyond [`tools`]: `mkfs.erofs`,
/// `losetup`, and a host kernel with EROFS and overlayfs.
fn erofs_tools() -> Result<(), String> {
    find_in_path("mkfs.erofs")
        .ok_or("mkfs.erofs not found (install erofs-utils; scripts/install-deps)")?;
    find_in_path("losetup").ok_or("losetup not found (install util-linux)")?;
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["erofs", "overlay"] {
        if !filesystems.split_whitespace().any(|name| name == fs) {
            return Err(format!(
                "the host kernel has no {fs} file system (modprobe {fs})"
            ));
        }
    }
    Ok(())
}

/// Attaches `file` read-only to a free loop device.
fn attach(file: &std::path::Path) -> Result<String, String> {
    let out = with_fork_lock(|| {
        Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
    })
    .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup cannot attach a loop device here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The image: busybox and [`IMAGE_APPLETS`] in `/bin`, `/etc/greeting`,
/// no `/tmp`, the root directory mode 0751 owned by 123:45.
fn loop_image(tools: &Tools) -> Result<LoopImage, String> {
    erofs_tools()?;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    with_fork_lock(|| {
        fs::create_dir_all(tree.join("bin")).unwrap();
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::copy(&tools.busybox, tree.join("bin/busybox")).unwrap();
        for applet in IMAGE_APPLETS {
            symlink("busybox", tree.join("bin").join(applet)).unwrap();
        }
        fs::write(tree.join("etc/greeting"), b"from the image\n").unwrap();
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::chown(&tree, Some(123), Some(45)).unwrap();
    });
    let image = dir.path().join("root.erofs");
    let out = with_fork_lock(|| Command::new("mkfs.erofs").arg(&image).arg(&tree).output())
        .map_err(|e| format!("cannot run mkfs.erofs: {e}"))?;
    assert!(
        out.status.success(),
        "mkfs.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = attach(&image)?;
    Ok(LoopImage {
        device,
        image,
        _dir: dir,
    })
}

macro_rules! image_or_skip {
    ($tools:expr) => {
        match loop_image($tools) {
            Ok(image) => image,
            Err(reason) => {
                test_support::skip_unavailable!("{reason}");
                return;
            }
        }
    };
}

/// A rootfs that holds only guest-init and its files (as guest-init's own
/// archive does when the root is a disk), configured to run `script` on
/// the root disk `device` with an overlay of `tmpfs_bytes`.
fn initramfs_for(tools: &Tools, device: &str, tmpfs_bytes: u64, script: &str) -> Rootfs {
    let rootfs = Rootfs::new(tools);
    with_fork_lock(|| fs::remove_dir_all(rootfs.path("bin")).unwrap());
    rootfs.configure(&RunConfig {
        root: Some(microrun::runconfig::RootDisk {
            device: device.into(),
            tmpfs_bytes,
        }),
        ..command(&["/bin/sh", "-c", script])
    });
    rootfs
}

/// guest-init mounts the image read-only under a tmpfs overlay and makes
/// it the root: the program comes from the image, writes work (over the
/// image's files too) up to the overlay's size, the kernel file systems
/// moved along, and nothing of a run is left in the next or in the image.
#[test]
fn a_disk_root_is_the_image_under_an_overlay_that_vanishes() {
    let tools = tools_or_skip!();
    let image = image_or_skip!(&tools);
    let before = fs::read(&image.image).unwrap();
    let script = "cat /etc/greeting; echo changed > /etc/greeting && cat /etc/greeting; \
                  touch /made && ls /made; stat -c '%a %u %g' /; \
                  head -c 2097152 /dev/zero > /big 2>/dev/null || echo full; rm -f /big; \
                  ls /.microrun 2>/dev/null || echo no-initramfs; \
                  ls /proc/self/stat /sys/kernel/uevent_seqnum /dev/null /tmp; \
                  grep -c '^overlay / overlay' /proc/mounts; \
                  mkdir /tmp/x && echo tmp-writable";
    let rootfs = initramfs_for(&tools, &image.device, 1 << 20, script);
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "from the image\nchanged\n/made\n751 123 45\nfull\nno-initramfs\n\
         /dev/null\n/proc/self/stat\n/sys/kernel/uevent_seqnum\n\n/tmp:\n1\ntmp-writable\n",
        "stderr: {}",
        outcome.stderr
    );

    // The next run starts from the image again.
    let rootfs = initramfs_for(
        &tools,
        &image.device,
        1 << 20,
        "cat /etc/greeting; ls /made 2>/dev/null || echo gone",
    );
    let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
    assert_eq!(outcome.status(), 0, "stderr: {}", outcome.stderr);
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "from the image\ngone\n"
    );
    assert!(
        fs::read(&image.image).unwrap() == before,
        "the image changed"
    );
}

/// A disk that is not EROFS, a device node that never appears, and a
/// path that is no block device each end the run with 125 and one line
/// naming the disk and the step, before the command runs.
#[test]
fn a_disk_root_that_cannot_be_mounted_is_125() {
    let tools = tools_or_skip!();
    if let Err(reason) = erofs_tools() {
        test_support::skip_unavailable!("{reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.img");
    with_fork_lock(|| fs::write(&zeros, vec![0u8; 64 << 10]).unwrap());
    let device = match attach(&zeros) {
        Ok(device) => device,
        Err(reason) => {
            test_support::skip_unavailable!("{reason}");
            return;
        }
    };
    let detach = LoopImage {
        device: device.clone(),
        image: zeros,
        _dir: dir,
    };
    for (device, step, at_least) in [
        (
            device.as_str(),
            "mounting it read-only as EROFS: ",
            Duration::ZERO,
        ),
        (
            "/dev/microrun-no-such-disk",
            "waiting 5 s for the device node: ",
            Duration::from_secs(5),
        ),
        ("/dev/null", "it is not a block device: ", Duration::ZERO),
    ] {
        let rootfs = initramfs_for(&tools, device, 1 << 20, "echo ran");
        let outcome = run(&tools, &rootfs, Wiring::Pipes, b"", &[]);
        assert_eq!(outcome.status(), 125, "{device}: {}", outcome.stderr);
        let line = format!("microrun: guest-init: cannot make the disk {device} the root: {step}");
        assert!(outcome.stderr.starts_with(&line), "{}", outcome.stderr);
        assert!(outcome.stdout.is_empty(), "the command ran: {device}");
        assert!(
            outcome.elapsed >= at_least,
            "{device}: {:?}",
            outcome.elapsed
        );
    }
    drop(detach);
}
