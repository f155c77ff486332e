//! The `microrun` command line, end to end, with synthetic kernels: the real
//! binary boots guests of a few hundred bytes (`vmm/tests/guests/*.S`,
//! assembled with GNU `as` and `ld`) under the kvm
//! engine. Such guests run even where KVM cannot run Linux (kvm_pvm), so
//! these tests check exit codes, the serial streams, `--timeout`, the
//! kernel command line, memory and vCPU sizing, and bad input for real.
//! Where `/dev/kvm` or binutils are missing, the tests that boot a VM print
//! `skipped (unavailable): <reason>` (and fail in strict mode,
//! `MICRORUN_REQUIRE_ALL=1`); the bad-input tests that fail before KVM
//! always run.

#[path = "../vmm/tests/common/mod.rs"]
mod guests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use guests::GuestFormat;

const MIB: u64 = 1 << 20;
/// Limit for every run that does not test `--timeout` itself: a guest that
/// hangs fails its test (124) instead of hanging the suite.
const SAFETY_TIMEOUT: &str = "20s";
/// The exit guest's stdout: every byte value, then a marker line.
fn exit_guest_stdout() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend_from_slice(b"stdout-end\n");
    bytes
}

macro_rules! require_kvm {
    () => {
        if !guests::can_boot_guests() {
            return;
        }
    };
}

/// The kernel file of guest `name` (`vmm/tests/guests/<name>.S`), built
/// once per test binary by the VMM tests' own builder.
fn guest(name: &str, format: GuestFormat) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, String), PathBuf>>> = OnceLock::new();
    let key = (name.to_string(), format!("{format:?}"));
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    built
        .entry(key)
        .or_insert_with(|| {
            let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("vmm/tests/guests");
            guests::build_guest_in(&guests, name, format)
        })
        .clone()
}

fn bz(name: &str) -> PathBuf {
    guest(name, GuestFormat::BzImage)
}

/// `args` with `--engine kvm` in front, unless they name a subcommand or an
/// engine: these tests are of microrun's own VMM, which the default engine
/// (auto) does not pick on a host whose KVM cannot run Linux.
fn kvm_engine<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    // A subcommand may follow the global options.
    let mut rest = args.iter();
    let mut first = rest.next();
    while let Some(global) =
        first.filter(|a| ["-q", "-v", "--insecure-registry"].iter().any(|g| a == g))
    {
        if global == "--insecure-registry" {
            rest.next();
        }
        first = rest.next();
    }
    let subcommand =
        first.is_some_and(|a| ["pack", "rootfs", "pull", "images"].iter().any(|s| a == s));
    if subcommand || args.iter().any(|a| a == "--engine") {
        return args;
    }
    let mut with = vec!["--engine".into(), "kvm".into()];
    with.extend(args);
    with
}

/// A scratch directory per test: a rootfs with one file, and a cache
/// directory of its own so that no test touches the user's cache.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("hello.txt"), b"hello\n").unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    /// Runs `microrun ARGS` (with `--engine kvm`, see [`kvm_engine`]) with
    /// stdin from /dev/null and nothing taken
    /// from the environment (no MICRORUN_KERNEL or MICRORUN_IRQCHIP, the
    /// fixture's cache) but `env`.
    fn microrun_env<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
    ) -> (Output, Duration) {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_microrun"))
            .args(kvm_engine(args))
            .env_remove("MICRORUN_KERNEL")
            .env_remove("MICRORUN_IRQCHIP")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("XDG_CACHE_HOME", self.path("cache"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run microrun");
        (out, start.elapsed())
    }

    /// [`Fixture::microrun_env`] with nothing added to the environment.
    fn microrun<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> (Output, Duration) {
        self.microrun_env(args, &[])
    }

    /// Boots `kernel` with the fixture's rootfs, the safety timeout and
    /// `-q` (so stderr is only what the guest or an error says) plus `extra`.
    fn boot(&self, kernel: &Path, extra: &[&str]) -> Output {
        self.boot_env(kernel, extra, &[])
    }

    /// [`Fixture::boot`] with `env` added to the environment.
    fn boot_env(&self, kernel: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-q".into(),
            "--timeout".into(),
            SAFETY_TIMEOUT.into(),
            "--kernel".into(),
            kernel.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        args.push(self.root().into());
        self.microrun_env(&args, env).0
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a microrun failure: exit 125 and an error on stderr that
/// contains each of `needles`.
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(code(out), Some(125), "stderr: {err}");
    assert!(err.contains("error"), "no error message: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Parses e820 lines: `base length type`, in hex.
fn parse_e820(lines: &[&str]) -> Vec<(u64, u64, u32)> {
    lines
        .iter()
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(hex).collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0], f[1], f[2] as u32)
        })
        .collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("not hex: {s:?}"))
}

/// The end of the highest usable RAM range: the guest's memory size while
/// it is below the 32-bit PCI hole.
fn ram_end(e820: &[(u64, u64, u32)]) -> u64 {
    e820.iter()
        .filter(|e| e.2 == 1)
        .map(|e| e.0 + e.1)
        .max()
        .unwrap_or_else(|| panic!("no usable RAM in {e820:x?}"))
}

/// What the bootinfo guest prints on stdout.
struct BootInfo {
    cmdline: String,
    initrd_size: u64,
    initrd_sum: u64,
}

impl BootInfo {
    fn parse(out: &Output) -> Self {
        assert_eq!(code(out), Some(0), "stderr: {}", stderr(out));
        let text = stdout(out);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 5, "{text}");
        assert_eq!(lines.len(), 5 + hex(lines[4]) as usize, "{text}");
        BootInfo {
            cmdline: lines[0].to_string(),
            initrd_size: hex(lines[2]),
            initrd_sum: hex(lines[3]),
        }
    }
}

/// What the memory guest prints: the initrd's size and the e820 map.
fn memory_info(out: &Output) -> (u64, Vec<(u64, u64, u32)>) {
    assert_eq!(code(out), Some(0), "stderr: {}", stderr(out));
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    (hex(lines[0]), parse_e820(&lines[1..]))
}

/// The contract's default: 3 × initrd + 64 MiB, rounded up to 2 MiB.
fn default_memory(initrd: u64) -> u64 {
    (3 * initrd + 64 * MIB).div_ceil(2 * MIB) * 2 * MIB
}

#[test]
fn exit_statuses_propagate_and_streams_arrive_exactly() {
    require_kvm!();
    let f = Fixture::new();
    // The guest reports the command line's last word as its status.
    for (format, status, no_init) in [
        (GuestFormat::BzImage, "0", true),
        (GuestFormat::BzImage, "1", false),
        (GuestFormat::Elf, "255", true),
    ] {
        let kernel = guest("exit", format);
        let mut extra = vec!["--cmdline", status];
        if no_init {
            extra.push("--no-init");
        }
        let out = f.boot(&kernel, &extra);
        let what = format!("{format:?}, status {status}, --no-init {no_init}");
        assert_eq!(
            code(&out),
            Some(status.parse().unwrap()),
            "{what}: {}",
            stderr(&out)
        );
        assert_eq!(out.stdout, exit_guest_stdout(), "{what}");
        assert_eq!(
            stderr(&out),
            "console: hello from the guest\n",
            "{what}: the console is microrun's stderr"
        );
    }
}

#[test]
fn microrun_irqchip_picks_the_interrupt_controllers() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("exit");
    for model in ["split", "kernel"] {
        let out = f.boot_env(&kernel, &["--cmdline", "3"], &[("MICRORUN_IRQCHIP", model)]);
        assert_eq!(code(&out), Some(3), "{model}: {}", stderr(&out));
        assert_eq!(out.stdout, exit_guest_stdout(), "{model}");
    }
    let out = f.boot_env(&kernel, &[], &[("MICRORUN_IRQCHIP", "pic")]);
    assert_fails(&out, &["MICRORUN_IRQCHIP=\"pic\"", "split", "kernel"]);
}

#[test]
fn timeout_stops_a_spinning_guest_with_124() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("spin");
    let (out, took) = f.microrun(&[
        "-q".as_ref(),
        "--timeout".as_ref(),
        "500ms".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        f.root().as_os_str(),
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(124), "{err}");
    assert!(err.contains("timeout"), "no reason on stderr: {err}");
    assert!(
        took >= Duration::from_millis(500),
        "stopped early: {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "stopped late: {took:?}");
}

/// The kvm engine watches the console: a kernel that says it could not
/// unpack the initrd ends the run 125 with the sizes and the default
/// memory for this initrd (3 x initrd + 64 MiB) as the --mem to give.
#[test]
fn a_failed_initrd_unpack_names_the_memory_to_give() {
    require_kvm!();
    let f = Fixture::new();
    let out = f.boot(&bz("unpack_failed"), &["--mem", "40M"]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(125), "{err}");
    let said = err.lines().last().unwrap_or_default();
    let (sizes, give) = said.split_once("): give --mem ").expect(&err);
    assert!(
        sizes.contains("MiB of files) into 40 MiB of guest memory"),
        "{said}"
    );
    assert!(
        sizes.ends_with("(\"Initramfs unpacking failed: write error\""),
        "{said}"
    );
    let (initrd, _) = memory_info(&f.boot(&bz("memory"), &[]));
    assert_eq!(give, format!("{}M", default_memory(initrd) >> 20), "{said}");
}

#[test]
fn reset_without_status_gives_125_with_a_reason() {
    require_kvm!();
    let f = Fixture::new();
    let out = f.boot(&bz("reset"), &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(125), "{err}");
    assert!(err.starts_with('r'), "the guest's console byte: {err}");
    assert!(
        err.contains("reset without reporting an exit status"),
        "{err}"
    );
}

#[test]
fn kernel_command_line_has_the_defaults_and_the_users_args_last() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("bootinfo");
    let normal = BootInfo::parse(&f.boot(&kernel, &["--cmdline", "foo=bar"]));
    // A kernel whose configuration cannot be read (this synthetic one) is
    // offered the virtio-console, named first on the command line.
    let c = &normal.cmdline;
    let c = c
        .strip_prefix("virtio_mmio.device=4K@0xd0000000:5 ")
        .unwrap_or(c);
    assert!(c.starts_with("console=ttyS0 "), "{c}");
    for arg in [
        "reboot=k",
        "panic=-1",
        "8250.nr_uarts=3",
        "quiet",
        "loglevel=1",
    ] {
        assert!(c.split(' ').any(|a| a == arg), "{arg} not in {c}");
    }
    assert!(
        c.contains(" rdinit=/.microrun/init init=/.microrun/init "),
        "{c}"
    );
    assert!(c.ends_with(" foo=bar"), "--cmdline not last: {c}");

    // -v drops quiet (and -q may not go with it).
    let mut args: Vec<std::ffi::OsString> = vec![
        "-v".into(),
        "--timeout".into(),
        SAFETY_TIMEOUT.into(),
        "--kernel".into(),
        kernel.clone().into(),
        f.root().into(),
    ];
    let verbose = BootInfo::parse(&f.microrun(&args).0);
    assert!(!verbose.cmdline.contains("quiet"), "{}", verbose.cmdline);
    assert!(!verbose.cmdline.contains("loglevel"), "{}", verbose.cmdline);
    assert!(verbose
        .cmdline
        .ends_with(" rdinit=/.microrun/init init=/.microrun/init"));

    // --no-init boots the initrd as given: no rdinit.
    args[0] = "-q".into();
    args.insert(1, "--no-init".into());
    let no_init = BootInfo::parse(&f.microrun(&args).0);
    assert!(!no_init.cmdline.contains("init="), "{}", no_init.cmdline);
    assert!(no_init.cmdline.ends_with(" quiet loglevel=1"));
}

#[test]
fn memory_is_3x_the_initrd_plus_64m_or_mem() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("memory");
    let (initrd, e820) = memory_info(&f.boot(&kernel, &[]));
    assert!(initrd > 0);
    assert_eq!(ram_end(&e820), default_memory(initrd), "{e820:x?}");

    // A rootfs 4 MiB larger: 12 MiB more by default.
    std::fs::write(f.root().join("big.bin"), vec![0x5a; 4 << 20]).unwrap();
    let (bigger, e820) = memory_info(&f.boot(&kernel, &[]));
    assert!(bigger >= initrd + (4 << 20), "{bigger} vs {initrd}");
    assert_eq!(ram_end(&e820), default_memory(bigger), "{e820:x?}");
    assert!(ram_end(&e820) >= default_memory(initrd) + 12 * MIB);

    for (mem, bytes) in [("100M", 100 * MIB), ("262144K", 256 * MIB)] {
        let (_, e820) = memory_info(&f.boot(&kernel, &["--mem", mem]));
        assert_eq!(ram_end(&e820), bytes, "--mem {mem}: {e820:x?}");
    }
    assert_fails(&f.boot(&kernel, &["--mem", "1K"]), &["too small", "--mem"]);
}

#[test]
fn cpus_gives_the_guest_that_many_vcpus() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("cpus");
    let one = f.boot(&kernel, &[]);
    assert_eq!(code(&one), Some(0), "{}", stderr(&one));
    assert_eq!(stdout(&one), "00000000\n");
    let two = f.boot(&kernel, &["--cpus", "2"]);
    assert_eq!(code(&two), Some(0), "{}", stderr(&two));
    assert_eq!(stdout(&two), "00000000\n00000001\n");
    assert_fails(&f.boot(&kernel, &["--cpus", "0"]), &["--cpus 0"]);
}

#[test]
fn kvm_pvm_warning_is_one_line_and_q_silences_it() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("exit");
    let args = |quiet: bool| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--timeout".into(),
            SAFETY_TIMEOUT.into(),
            "--kernel".into(),
            kernel.clone().into(),
            "--cmdline".into(),
            "0".into(),
            f.root().into(),
        ];
        if quiet {
            a.insert(0, "-q".into());
        }
        a
    };
    let loud = f.microrun(&args(false)).0;
    assert_eq!(code(&loud), Some(0), "{}", stderr(&loud));
    let warnings: Vec<String> = stderr(&loud)
        .lines()
        .filter(|l| l.contains("warning"))
        .map(String::from)
        .collect();
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(warnings.len(), 1, "{}", stderr(&loud));
        assert!(
            warnings[0].starts_with("microrun: warning: "),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("kvm_pvm"), "{warnings:?}");
        assert!(warnings[0].contains("--engine qemu"), "{warnings:?}");
    } else {
        assert!(warnings.is_empty(), "{}", stderr(&loud));
    }
    let quiet = f.microrun(&args(true)).0;
    assert_eq!(code(&quiet), Some(0), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "console: hello from the guest\n");
}

#[test]
fn timings_print_one_line_per_phase() {
    require_kvm!();
    let f = Fixture::new();
    let out = f.boot(&bz("exit"), &["--timings", "--cmdline", "3"]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("timings (kvm engine)"))
        .unwrap_or_else(|| panic!("no timings: {err}"));
    let phases = [
        "VMM set-up",
        "kernel until guest-init starts",
        "program",
        "teardown",
        "total, boot to exit",
    ];
    // The set-up's own steps, indented under it.
    let steps = [
        "plan",
        "rootfs cache lookup",
        "kernel load",
        "initrd assembly",
        "memory and devices",
    ];
    let (step_lines, lines): (Vec<&str>, Vec<&str>) =
        lines.iter().partition(|l| l.starts_with("microrun:     "));
    assert_eq!(step_lines.len(), steps.len(), "{err}");
    for (line, step) in step_lines.iter().zip(steps) {
        assert!(line.contains(step) && line.ends_with(" ms"), "{line:?}");
    }
    assert_eq!(lines.len(), header + 1 + phases.len(), "{err}");
    for (line, phase) in lines[header + 1..].iter().zip(phases) {
        assert!(line.contains(phase), "{phase:?} expected in {line:?}");
        // The exit guest says @init and reports a status: every phase has
        // a measured time.
        let ms = line
            .trim_end()
            .strip_suffix(" ms")
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no time in {line:?}"));
        assert!((0.0..20_000.0).contains(&ms), "{line}");
    }
}

#[test]
fn a_packed_rootfs_boots_like_its_directory_and_packs_reproducibly() {
    require_kvm!();
    let f = Fixture::new();
    let (a, b) = (f.path("a.cpio"), f.path("b.cpio"));
    for file in [&a, &b] {
        let (out, _) = f.microrun(&[
            "pack".as_ref(),
            f.root().as_os_str(),
            "-o".as_ref(),
            file.as_os_str(),
        ]);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    }
    let packed = std::fs::read(&a).unwrap();
    assert!(packed.starts_with(b"070701"));
    assert_eq!(
        packed,
        std::fs::read(&b).unwrap(),
        "packing is not reproducible"
    );

    let kernel = bz("bootinfo");
    let from_dir = f.boot(&kernel, &[]);
    let mut args: Vec<std::ffi::OsString> = vec![
        "-q".into(),
        "--timeout".into(),
        SAFETY_TIMEOUT.into(),
        "--kernel".into(),
        kernel.clone().into(),
        a.clone().into(),
    ];
    let from_file = f.microrun(&args).0;
    let (dir_info, file_info) = (BootInfo::parse(&from_dir), BootInfo::parse(&from_file));
    // Same initrd bytes in the guest, same memory, same command line.
    assert_eq!(from_dir.stdout, from_file.stdout);
    assert!(
        file_info.initrd_size > packed.len() as u64,
        "guest-init follows"
    );
    assert_eq!(dir_info.initrd_sum, file_info.initrd_sum);

    // With --no-init the guest gets exactly the packed file.
    args.insert(1, "--no-init".into());
    let exact = BootInfo::parse(&f.microrun(&args).0);
    assert_eq!(exact.initrd_size, packed.len() as u64);
    let sum: u64 = packed.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(exact.initrd_sum, sum & 0xffff_ffff);
}

#[test]
fn bad_rootfs_is_refused_with_its_path() {
    // Both fail before any VM is made: no KVM needed.
    let f = Fixture::new();
    let kernel = f.path("vmlinuz");
    std::fs::write(&kernel, b"not looked at").unwrap();
    let missing = f.path("no-such-rootfs");
    let (out, _) = f.microrun(&["--kernel".as_ref(), kernel.as_os_str(), missing.as_os_str()]);
    assert_fails(&out, &[missing.to_str().unwrap()]);

    let not_cpio = f.path("rootfs.img");
    std::fs::write(&not_cpio, b"this is plain text, not an archive\n").unwrap();
    let (out, _) = f.microrun(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        not_cpio.as_os_str(),
    ]);
    assert_fails(&out, &["rootfs.img", "not a rootfs", "docker-archive"]);
}

#[test]
fn bad_kernels_are_refused_with_their_path() {
    let f = Fixture::new();
    let missing = f.path("no-such-vmlinuz");
    assert_fails(
        &f.boot(&missing, &[]),
        &[missing.to_str().unwrap(), "No such file"],
    );

    // The image is checked by the VMM, after /dev/kvm is opened.
    require_kvm!();
    let random = f.path("random-kernel");
    // Deterministic noise that is neither "HdrS" at 0x202 nor an ELF.
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, noise).unwrap();
    assert_fails(
        &f.boot(&random, &[]),
        &[random.to_str().unwrap(), "not a kernel"],
    );
    let empty = f.path("empty-kernel");
    std::fs::write(&empty, b"").unwrap();
    assert_fails(&f.boot(&empty, &[]), &[empty.to_str().unwrap(), "empty"]);
}

#[test]
fn bad_option_values_exit_125_and_name_the_value() {
    let f = Fixture::new();
    let kernel = f.path("vmlinuz");
    std::fs::write(&kernel, b"never booted").unwrap();
    for (option, value) in [
        ("--mem", "12X"),
        ("--mem", "1.5G"),
        ("--timeout", "10x"),
        ("--timeout", "1e999"),
        ("--cpus", "many"),
    ] {
        let (out, _) = f.microrun(&[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            option.as_ref(),
            value.as_ref(),
            f.root().as_os_str(),
        ]);
        let err = stderr(&out);
        assert_eq!(code(&out), Some(125), "{option} {value}: {err}");
        assert!(
            err.contains(value) && err.contains(option),
            "{option} {value}: {err}"
        );
    }
    const UNSET: &str = "MICRORUN_CLI_TEST_SURELY_UNSET";
    assert!(std::env::var_os(UNSET).is_none());
    let out = f.boot(&kernel, &["--env", UNSET]);
    assert_fails(&out, &[UNSET, "not set"]);
    // An unknown option is a usage error: 125 too, not clap's 2.
    let out = f.boot(&kernel, &["--no-such-option"]);
    assert_eq!(code(&out), Some(125), "{}", stderr(&out));
}

/// The global options go before a subcommand too, as docker's do
/// (`docker -D pull`), and a run's options beside one are refused, not
/// ignored.
#[test]
fn global_options_go_before_a_subcommand() {
    let f = Fixture::new();
    let packed = f.path("packed.cpio");
    let (out, _) = f.microrun(&[
        "-v".as_ref(),
        "pack".as_ref(),
        f.root().as_os_str(),
        "-o".as_ref(),
        packed.as_os_str(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("info: packed"), "{}", stderr(&out));
    assert!(packed.is_file());

    // Nothing listens on this port: the pull fails after -v's first
    // debug line, offline.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let reference = format!("127.0.0.1:{closed}/x:1");
    let (out, _) = f.microrun(&["-v", "pull", &reference]);
    assert_fails(&out, &["cannot reach 127.0.0.1", "debug: 127.0.0.1"]);
    let (out, _) = f.microrun(&["-q", "pull", &reference]);
    assert_fails(&out, &["cannot reach 127.0.0.1"]);
    assert!(!stderr(&out).contains("debug"), "{}", stderr(&out));
    let (out, _) = f.microrun(&["-q", "--insecure-registry", "elsewhere", "pull", &reference]);
    assert_fails(&out, &["cannot reach 127.0.0.1"]);

    let (out, _) = f.microrun(&["--mem", "1G", "pull", &reference]);
    assert_fails(&out, &["--mem belongs to a run", "microrun pull"]);
    let (out, _) = f.microrun(&[f.root().as_os_str(), "images".as_ref()]);
    assert_fails(&out, &["<ROOTFS> belongs to a run", "microrun images"]);
}

#[test]
fn bad_pack_and_rootfs_input_is_refused_with_its_path() {
    let f = Fixture::new();
    let missing = f.path("no-such-dir");
    let (out, _) = f.microrun(&[
        "pack".as_ref(),
        missing.as_os_str(),
        "-o".as_ref(),
        f.path("out.cpio").as_os_str(),
    ]);
    assert_fails(&out, &[missing.to_str().unwrap()]);
    assert!(!f.path("out.cpio").exists());

    let inside = f.root().join("self.cpio");
    let (out, _) = f.microrun(&[
        "pack".as_ref(),
        f.root().as_os_str(),
        "-o".as_ref(),
        inside.as_os_str(),
    ]);
    assert_fails(&out, &["self.cpio", "inside"]);
    assert!(!inside.exists());

    let script = f.path("not-elf.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    let target = f.path("rootfs");
    let (out, _) = f.microrun(&[
        "rootfs".as_ref(),
        target.as_os_str(),
        "--bin".as_ref(),
        script.as_os_str(),
    ]);
    assert_fails(&out, &["not-elf.sh", "not an ELF"]);
}

/// How a run with chosen output streams ended: exit code, wall time, peak
/// RSS (KiB), and what it wrote to the streams the test reads.
struct StreamRun {
    code: Option<i32>,
    took: Duration,
    max_rss_kib: i64,
}

/// Runs `microrun ARGS` with stdout and stderr as given, and waits for it,
/// sampling its peak RSS.
fn run_with_streams(
    f: &Fixture,
    args: &[std::ffi::OsString],
    stdout: Stdio,
    stderr: Stdio,
) -> StreamRun {
    let start = Instant::now();
    // Reaped by the waitpid below, which std's `Child` does not know of.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .args(kvm_engine(args))
        .env_remove("MICRORUN_KERNEL")
        .env_remove("MICRORUN_IRQCHIP")
        .env("XDG_CACHE_HOME", f.path("cache"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("run microrun");
    // The peak RSS is the child's own VmHWM, read while it runs: wait4's
    // ru_maxrss would include the RSS of this test process at the spawn
    // (exec keeps the high-water mark of the memory it replaces, which for
    // a vfork-style spawn is ours), so it moves with the other tests.
    let pid = child.id() as i32;
    let mut status = 0;
    let mut max_rss_kib = 0;
    loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            max_rss_kib = max_rss_kib.max(hwm);
        }
        // SAFETY: the pid is our child's, not yet reaped; the status
        // pointer is valid for the call.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(reaped >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    StreamRun {
        code,
        took,
        max_rss_kib,
    }
}

/// `VmHWM` of process `pid` in KiB (its peak resident set since its exec),
/// while it is alive.
fn vm_hwm_kib(pid: i32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A guest that floods every channel, with the stream under test a pipe
/// nobody reads: the timeout still stops it within a second of the limit,
/// and microrun's memory stays bounded.
#[test]
fn a_full_output_pipe_does_not_outlive_the_timeout() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("flood");
    // The idle figure: the same run with both streams thrown away.
    let base_args = |extra: &[&'static str]| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
        args.extend([
            "--no-init".into(),
            "--timeout".into(),
            "2s".into(),
            "--kernel".into(),
        ]);
        args.push(kernel.clone().into());
        args.push(f.root().into());
        args
    };
    let quiet = base_args(&["-q"]);
    let idle = run_with_streams(&f, &quiet, Stdio::null(), Stdio::null());
    assert_eq!(idle.code, Some(124));
    let verbose = base_args(&["-v"]);
    for (what, args, full_stdout) in [
        ("stdout", &quiet, true),
        ("stderr", &quiet, false),
        ("stderr with -v", &verbose, false),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        let (out, err) = if full_stdout {
            (Stdio::from(writer), Stdio::null())
        } else {
            (Stdio::null(), Stdio::from(writer))
        };
        let run = run_with_streams(&f, args, out, err);
        drop(reader);
        assert_eq!(run.code, Some(124), "{what}: exit code");
        assert!(
            run.took < Duration::from_secs(3),
            "{what}: a 2 s timeout with a full pipe took {:?}",
            run.took
        );
        assert!(
            run.max_rss_kib < idle.max_rss_kib + 16 * 1024,
            "{what}: peak RSS {} KiB, idle {} KiB",
            run.max_rss_kib,
            idle.max_rss_kib
        );
    }
}

/// A write error on stdout ends the run with 125 and names the stream; a
/// reader that went away ends it quietly with 141, as a program in a
/// pipeline ends.
#[test]
fn output_write_errors_are_reported_and_a_closed_reader_is_quiet() {
    require_kvm!();
    let f = Fixture::new();
    let kernel = bz("flood");
    let args: Vec<std::ffi::OsString> = vec![
        "-q".into(),
        "--no-init".into(),
        "--timeout".into(),
        "10s".into(),
        "--kernel".into(),
        kernel.into(),
        f.root().into(),
    ];
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let err_path = f.path("stderr");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let run = run_with_streams(&f, &args, Stdio::from(full), Stdio::from(err_file));
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(run.code, Some(125), "stderr: {err}");
    assert!(
        err.contains("cannot write the program's stdout: No space left on device"),
        "stderr: {err}"
    );
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);

    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let err_file = std::fs::File::create(&err_path).unwrap();
    let run = run_with_streams(&f, &args, Stdio::from(writer), Stdio::from(err_file));
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(run.code, Some(141), "stderr: {err}");
    assert!(
        !err.contains("microrun:"),
        "a closed reader is quiet: {err}"
    );
}

/// Each thread of a running microrun (a spinning guest, stdin forwarded)
/// with its seccomp mode from /proc (0 none, 2 filter), once `settled`
/// holds for them (or after 10 s: the caller's asserts then say what is
/// missing).
fn thread_seccomp_modes(
    env: &[(&str, &str)],
    settled: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let f = Fixture::new();
    let kernel = bz("spin");
    let (stdin_reader, stdin_writer) = std::io::pipe().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .args([
            "-q",
            "--engine",
            "kvm",
            "--no-init",
            "--cpus",
            "2",
            "--timeout",
            "20s",
            "--kernel",
        ])
        .arg(&kernel)
        .arg(f.root())
        .env_remove("MICRORUN_SECCOMP")
        .env("XDG_CACHE_HOME", f.path("cache"))
        .envs(env.iter().copied())
        .stdin(stdin_reader)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run microrun");
    // Until both vCPUs run (the filters are in place before the first
    // KVM_RUN), at most 10 s.
    let task_dir = PathBuf::from(format!("/proc/{}/task", child.id()));
    let give_up = Instant::now() + Duration::from_secs(10);
    let modes = loop {
        let modes: Vec<(String, String)> = std::fs::read_dir(&task_dir)
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| {
                        let status = std::fs::read_to_string(t.path().join("status")).ok()?;
                        let field = |key: &str| {
                            status
                                .lines()
                                .find_map(|l| l.strip_prefix(key))
                                .map(|v| v.trim().to_string())
                        };
                        Some((field("Name:")?, field("Seccomp:")?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if settled(&modes) || Instant::now() > give_up {
            break modes;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin_writer);
    modes
}

#[test]
fn every_vmm_thread_runs_under_a_seccomp_filter() {
    require_kvm!();
    const EXPECTED: [&str; 5] = ["vcpu0", "vcpu1", "output-stdout", "output-stderr", "stdin"];
    let present = |modes: &[(String, String)]| {
        EXPECTED
            .iter()
            .all(|name| modes.iter().any(|(n, _)| n == name))
    };
    // The vCPU threads start before the set-up, the stdin thread after;
    // the supervisor's filter follows the vCPUs' start: waited for, on a
    // loaded machine, until every thread is filtered (or 10 s).
    let modes = thread_seccomp_modes(&[], |modes| {
        present(modes) && modes.iter().all(|(_, mode)| mode == "2")
    });
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in EXPECTED {
        assert!(names.contains(&expected), "no {expected} thread: {modes:?}");
    }
    let unfiltered: Vec<_> = modes.iter().filter(|(_, mode)| mode != "2").collect();
    assert!(
        unfiltered.is_empty(),
        "threads without a filter: {unfiltered:?} (all: {modes:?})"
    );

    let off = thread_seccomp_modes(&[("MICRORUN_SECCOMP", "off")], |modes| present(modes));
    assert!(
        off.iter().all(|(_, mode)| mode == "0"),
        "MICRORUN_SECCOMP=off still filters: {off:?}"
    );
}

/// A 1 MiB zstd archive whose first header claims a 1 GiB PAX extension
/// (with 80 MiB of zeros behind it, so that a reader holding the header
/// whole must grow far past the bound): refused at once with the limit,
/// exit 125, and microrun's peak RSS stays under 64 MiB. Nothing boots.
#[test]
fn a_tiny_archive_claiming_gigabytes_is_refused_in_bounded_memory() {
    let f = Fixture::new();
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_path("pax").unwrap();
    header.set_size(1 << 30);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.resize(tar.len() + (80 << 20), 0);
    let archive = f.path("claims.tar.zst");
    std::fs::write(&archive, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    assert!(std::fs::metadata(&archive).unwrap().len() < 1 << 20);
    let args: Vec<std::ffi::OsString> = vec![
        archive.clone().into(),
        "--engine".into(),
        "chroot".into(),
        "--".into(),
        "true".into(),
    ];
    let err = f.path("stderr");
    let run = run_with_streams(
        &f,
        &args,
        Stdio::null(),
        Stdio::from(std::fs::File::create(&err).unwrap()),
    );
    let err = std::fs::read_to_string(err).unwrap();
    assert_eq!(run.code, Some(125), "{err}");
    assert!(
        err.contains("claims.tar.zst") && err.contains("MiB"),
        "{err}"
    );
    assert!(
        run.max_rss_kib < 64 * 1024,
        "peak RSS {} KiB: {err}",
        run.max_rss_kib
    );
}
