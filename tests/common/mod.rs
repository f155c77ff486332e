//! End-to-end cases shared by every engine. Each drives the real `microrun`
//! binary on the `libs` example rootfs: a dynamically linked hello-world C
//! program (`/init` -> hello) with its libraries, plus a static busybox as
//! `/bin/sh` and a few applets. A test file picks an engine and expands
//! [`e2e_cases!`] to get one `#[test]` per case:
//!
//! ```ignore
//! #[macro_use]
//! mod common;
//! const ENGINE: common::Engine = common::Engine { name: "chroot", /* ... */ };
//! e2e_cases!(ENGINE);
//! ```

#![allow(dead_code)]

pub mod disk_root;
pub mod nested;
pub mod net;
pub mod tty;
pub mod user;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// A case that cannot run says which kind of skip it is (test-support):
// not applicable to the engine, or unavailable here (fails in strict mode).
use test_support::{skip_not_applicable, skip_unavailable};

/// The engine a test binary runs the cases with.
pub struct Engine {
    /// For messages.
    pub name: &'static str,
    /// The options that select it, such as `["--engine", "chroot"]`.
    pub args: &'static [&'static str],
    /// Environment variables set for every run (`MICRORUN_IRQCHIP` is
    /// removed otherwise).
    pub env: &'static [(&'static str, &'static str)],
    /// Whether the engine boots a VM (so `--cpus` means something).
    pub is_vm: bool,
    /// Why the engine cannot run on this machine, when it cannot.
    pub unavailable: fn() -> Option<String>,
    /// The kernel to pass with `--kernel` (VM engines), `None` for none.
    pub kernel: fn() -> Option<PathBuf>,
    /// Where this host's KVM cannot run Linux, run the cases in the
    /// nested-KVM lane ([`nested`]) instead of skipping them.
    pub nested: bool,
    /// Why the program's stdin never ends under this engine, if it does not
    /// (a serial port has no end of file).
    pub no_stdin_eof: Option<&'static str>,
    /// Why the engine's stdout is too slow for 64 MiB in a test, if it is.
    pub slow_stdout: Option<&'static str>,
    /// Why the engine cannot share host directories (`--bind`), if it
    /// cannot.
    pub no_shares: Option<&'static str>,
}

/// Runs one shared case: here, or, for an engine that asks for it on a host
/// whose KVM cannot run Linux, in the nested-KVM lane. `path` is the test's
/// `module_path!()::name`.
pub fn run_case(engine: &Engine, path: &str, case: fn(&Engine)) {
    if engine.nested && !nested::inside() && matches!(vmm::kvm_host(), vmm::KvmHost::Emulated(_)) {
        // The crate name is not part of a test's name.
        let name = path.split_once("::").map_or(path, |(_, rest)| rest);
        // A case left out of the lane is a skip by design, lane or no lane.
        if let Some(why) = nested::skipped_here(name) {
            skip_not_applicable!("{name} in the nested lane: {why}");
            return;
        }
        if let Some(why) = nested::unavailable() {
            skip_unavailable!(
                "{} engine: this host's KVM cannot run Linux and the nested lane cannot run: {why}",
                engine.name
            );
            return;
        }
        nested::assert_passed(name);
        return;
    }
    case(engine)
}

/// Whether `qemu-system-x86_64` is on `PATH`.
pub fn qemu_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("qemu-system-x86_64").is_file())
    })
}

/// Debian's kernel for a case of the qemu engine; `None`, after the skip
/// line, when QEMU or the kernel is missing.
pub fn qemu_with_debian_kernel() -> Option<PathBuf> {
    if !qemu_installed() {
        skip_unavailable!("qemu-system-x86_64 is not installed (scripts/install-deps installs it)");
        return None;
    }
    let kernel = nested::distribution_kernel();
    if kernel.is_none() {
        skip_unavailable!("{NO_DEBIAN_KERNEL}");
    }
    kernel
}

/// No `--kernel` option: the chroot engine, or discovery's choice.
pub fn no_kernel() -> Option<PathBuf> {
    None
}

/// The project kernel that `scripts/build-kernel` leaves in the cache.
pub fn project_kernel() -> Option<PathBuf> {
    let path = initrd_tools::cache_dir()
        .ok()?
        .join("kernels/default/bzImage");
    path.is_file().then_some(path)
}

/// The project kernel's ELF vmlinux, in the cache beside the bzImage: the
/// kvm engine maps its segments into guest memory rather than copying
/// them (a cache entry).
pub fn project_vmlinux() -> Option<PathBuf> {
    let path = initrd_tools::cache_dir()
        .ok()?
        .join("kernels/default/vmlinux");
    path.is_file().then_some(path)
}

/// Limit given to every run that does not test `--timeout` itself, so that
/// a hung guest fails the test (124) instead of hanging it.
const SAFETY_TIMEOUT: &str = "120s";
/// Size of the binary file the stdout case copies.
const BINARY_LEN: usize = 1 << 20;
/// Why a case that boots Debian's kernel cannot run.
const NO_DEBIAN_KERNEL: &str =
    "no Debian kernel (/boot/vmlinuz-*-amd64): install linux-image-amd64 (scripts/install-deps)";
/// Busybox applets linked into the rootfs's /bin.
const APPLETS: [&str; 10] = [
    "sh", "cat", "echo", "printf", "pwd", "nproc", "sleep", "kill", "env", "head",
];

/// Expands to one `#[test]` per shared case, run with `$engine`.
#[macro_export]
macro_rules! e2e_cases {
    ($engine:expr) => {
        #[test]
        fn libs_init_says_hello() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::libs_init_says_hello"),
                common::libs_init_says_hello,
            );
        }
        #[test]
        fn command_with_args_env_and_workdir() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::command_with_args_env_and_workdir"),
                common::command_with_args_env_and_workdir,
            );
        }
        #[test]
        fn exit_statuses_pass_through() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::exit_statuses_pass_through"),
                common::exit_statuses_pass_through,
            );
        }
        #[test]
        fn signal_death_gives_128_plus_n() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::signal_death_gives_128_plus_n"),
                common::signal_death_gives_128_plus_n,
            );
        }
        #[test]
        fn binary_stdout_arrives_unchanged() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::binary_stdout_arrives_unchanged"),
                common::binary_stdout_arrives_unchanged,
            );
        }
        #[test]
        fn stderr_is_separate() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::stderr_is_separate"),
                common::stderr_is_separate,
            );
        }
        #[test]
        fn missing_command_gives_127() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::missing_command_gives_127"),
                common::missing_command_gives_127,
            );
        }
        #[test]
        fn stdin_is_forwarded() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::stdin_is_forwarded"),
                common::stdin_is_forwarded,
            );
        }
        #[test]
        fn stdin_ends_when_host_stdin_ends() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::stdin_ends_when_host_stdin_ends"),
                common::stdin_ends_when_host_stdin_ends,
            );
        }
        #[test]
        fn timeout_gives_124() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::timeout_gives_124"),
                common::timeout_gives_124,
            );
        }
        #[test]
        fn binary_stdout_64k_arrives_unchanged() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::binary_stdout_64k_arrives_unchanged"),
                common::binary_stdout_64k_arrives_unchanged,
            );
        }
        #[test]
        fn binary_stdout_64m_arrives_unchanged() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::binary_stdout_64m_arrives_unchanged"),
                common::binary_stdout_64m_arrives_unchanged,
            );
        }
        #[test]
        fn distribution_kernel_binary_stdout_64m_arrives_unchanged() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::distribution_kernel_binary_stdout_64m_arrives_unchanged"
                ),
                common::distribution_kernel_binary_stdout_64m_arrives_unchanged,
            );
        }
        #[test]
        fn binary_stdout_16k_arrives_unchanged() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::binary_stdout_16k_arrives_unchanged"),
                common::binary_stdout_16k_arrives_unchanged,
            );
        }
        #[test]
        fn kernel_panic_gives_125_with_the_reason() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::kernel_panic_gives_125_with_the_reason"),
                common::kernel_panic_gives_125_with_the_reason,
            );
        }
        #[test]
        fn distribution_kernel_runs_libs_with_default_options() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::distribution_kernel_runs_libs_with_default_options"
                ),
                common::distribution_kernel_runs_libs_with_default_options,
            );
        }
        #[test]
        fn distribution_kernel_gets_the_virtio_console() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::distribution_kernel_gets_the_virtio_console"
                ),
                common::distribution_kernel_gets_the_virtio_console,
            );
        }
        #[test]
        fn distribution_kernel_stdin_follows_a_fallback_to_the_uarts() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::distribution_kernel_stdin_follows_a_fallback_to_the_uarts"
                ),
                common::distribution_kernel_stdin_follows_a_fallback_to_the_uarts,
            );
        }
        #[test]
        fn shares_carry_a_build_step_in_and_its_artifact_out() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::shares_carry_a_build_step_in_and_its_artifact_out"
                ),
                common::shares_carry_a_build_step_in_and_its_artifact_out,
            );
        }
        #[test]
        fn read_only_share_refuses_writes() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::read_only_share_refuses_writes"),
                common::read_only_share_refuses_writes,
            );
        }
        #[test]
        fn shares_get_no_setuid_files_and_no_foreign_owners() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::shares_get_no_setuid_files_and_no_foreign_owners"
                ),
                common::shares_get_no_setuid_files_and_no_foreign_owners,
            );
        }
        #[test]
        fn share_symlinks_do_not_lead_out() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::share_symlinks_do_not_lead_out"),
                common::share_symlinks_do_not_lead_out,
            );
        }
        #[test]
        fn distribution_kernel_mounts_a_share() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::distribution_kernel_mounts_a_share"),
                common::distribution_kernel_mounts_a_share,
            );
        }
        #[test]
        fn two_vcpus_seen_by_nproc() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::two_vcpus_seen_by_nproc"),
                common::two_vcpus_seen_by_nproc,
            );
        }
    };
}

/// A `libs` rootfs built beforehand, used instead of building one (the
/// nested lane has no compiler inside).
pub const LIBS_VAR: &str = "MICRORUN_TEST_LIBS";

/// The `libs` rootfs, built once per test binary; `Err` says why it cannot
/// be built on this machine.
pub fn libs_rootfs() -> Result<&'static Path, String> {
    static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOTFS
        .get_or_init(|| match std::env::var_os(LIBS_VAR) {
            Some(path) => {
                let path = PathBuf::from(path);
                if path.join("bin/busybox").is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "{LIBS_VAR}={} holds no libs rootfs",
                        path.display()
                    ))
                }
            }
            None => build_libs_rootfs(),
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// The host's static busybox.
pub fn host_busybox() -> Result<PathBuf, String> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "no busybox (install busybox-static)".to_string())
}

/// `<target tmp>/<prefix>-<test binary>`, emptied: one directory per test
/// binary, since binaries of the same target dir may run at the same time.
pub fn fresh_dir_of_this_binary(prefix: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let name = exe
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    Ok(dir)
}

fn build_libs_rootfs() -> Result<PathBuf, String> {
    let busybox = host_busybox()?;
    let base = fresh_dir_of_this_binary("libs")?;
    let build = base.join("build");
    let root = base.join("root");
    fs::create_dir_all(&build).map_err(|e| format!("creating {}: {e}", build.display()))?;
    let source = build.join("hello.c");
    fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { puts(\"Hello, world!\"); return 0; }\n",
    )
    .map_err(|e| e.to_string())?;
    let hello = build.join("hello");
    let cc = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&hello)
        .arg(&source)
        .status();
    match cc {
        Err(e) => return Err(format!("cannot run cc ({e}); install build-essential")),
        Ok(s) if !s.success() => return Err(format!("cc failed to compile {}", source.display())),
        Ok(_) => {}
    }
    let assembled = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .arg("rootfs")
        .arg(&root)
        .arg("--bin")
        .arg(&hello)
        .arg("--bin")
        .arg(&busybox)
        .arg("--init")
        .arg(&hello)
        .output()
        .map_err(|e| e.to_string())?;
    // The rootfs subcommand must work: a failure here is a real failure.
    assert!(
        assembled.status.success(),
        "microrun rootfs failed: {}",
        String::from_utf8_lossy(&assembled.stderr)
    );
    let bin = root.join("bin");
    if !bin.join("busybox").exists() {
        // The host's busybox lives elsewhere (/bin -> usr/bin is resolved).
        fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        fs::copy(&busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    }
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| format!("linking bin/{applet}: {e}"))?;
    }
    fs::write(root.join("data.bin"), binary_data()).map_err(|e| e.to_string())?;
    Ok(root)
}

/// Where [`libs_copy`] puts its copies: the target directory's tmp, or,
/// in the nested lane, which has no target directory, /tmp (the outer
/// VM's root tmpfs).
pub fn libs_copy_dir() -> PathBuf {
    match std::env::var_os(LIBS_VAR) {
        Some(_) => std::env::temp_dir(),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    }
}

/// Where [`libs_copy`] puts the copy named `prefix` of this test binary.
pub fn libs_copy_path(prefix: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    libs_copy_dir().join(format!("{prefix}-{name}"))
}

/// A copy of the `libs` rootfs for one test binary, `<prefix>-<binary>`
/// (replaced by its next run; in [`libs_copy_dir`]), without its data
/// file, with `applets` linked to busybox, and readable by anyone (the
/// chroot engine's unprivileged cases run microrun as another user).
pub fn libs_copy(libs: &Path, prefix: &str, applets: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = libs_copy_path(prefix);
    let _ = fs::remove_dir_all(&root);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(libs)
        .arg(&root)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copying {} failed", libs.display());
    let _ = fs::remove_file(root.join("data.bin"));
    for applet in applets {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// 1 MiB in which every byte value occurs, in no simple pattern.
pub fn binary_data() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..BINARY_LEN)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) ^ (i as u8)
        })
        .collect()
}

/// What a case needs, or `None` after printing why the case is skipped.
fn prerequisites(engine: &Engine) -> Option<&'static Path> {
    if let Some(why) = (engine.unavailable)() {
        skip_unavailable!("{} engine: {why}", engine.name);
        return None;
    }
    match libs_rootfs() {
        Ok(root) => Some(root),
        Err(why) => {
            skip_unavailable!("cannot build the libs rootfs: {why}");
            None
        }
    }
}

/// Runs `microrun <engine args> <options> ROOTFS [-- cmd...]`.
pub fn microrun(engine: &Engine, options: &[&str], rootfs: &Path, cmd: &[&str]) -> Output {
    microrun_command(engine, options, rootfs, cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_microrun")))
}

/// The command line [`microrun`] runs.
pub fn microrun_command(engine: &Engine, options: &[&str], rootfs: &Path, cmd: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microrun"));
    command
        .env_remove("MICRORUN_IRQCHIP")
        .envs(engine.env.iter().copied())
        .args(engine.args)
        .args(options);
    if let Some(kernel) = (engine.kernel)() {
        command.arg("--kernel").arg(kernel);
    }
    if !options.contains(&"--timeout") {
        command.args(["--timeout", SAFETY_TIMEOUT]);
    }
    command.arg(rootfs);
    if !cmd.is_empty() {
        command.arg("--").args(cmd);
    }
    command
}

/// The exit code, with both streams in the message when it is not `want`
/// (their first 4 KiB each: a binary megabyte helps nobody read a log).
pub fn assert_code(output: &Output, want: i32) {
    assert_eq!(
        output.status.code(),
        Some(want),
        "stdout: {}\nstderr: {}",
        excerpt(&output.stdout),
        excerpt(&output.stderr)
    );
}

/// Up to 4 KiB of `bytes` as text, with what was left out counted.
fn excerpt(bytes: &[u8]) -> String {
    const SHOWN: usize = 4096;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]).into_owned();
    if bytes.len() > SHOWN {
        format!("{text}[... {} more bytes]", bytes.len() - SHOWN)
    } else {
        text
    }
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// No command: the rootfs's /init (hello) runs.
pub fn libs_init_says_hello(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &[], root, &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "Hello, world!\n");
}

pub fn command_with_args_env_and_workdir(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let script = r#"printf '%s|%s|%s|%s\n' "$GREETING" "$EMPTY" "$(pwd)" "$*""#;
    let output = microrun(
        engine,
        &["-e", "GREETING=hello world", "-e", "EMPTY=", "-w", "/bin"],
        root,
        &["sh", "-c", script, "sh", "one", "two  words"],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "hello world||/bin|one two  words\n");
}

pub fn exit_statuses_pass_through(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    for status in [0, 3, 255] {
        let output = microrun(engine, &[], root, &["sh", "-c", &format!("exit {status}")]);
        assert_code(&output, status);
    }
}

pub fn signal_death_gives_128_plus_n(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &[], root, &["sh", "-c", "kill -TERM $$"]);
    assert_code(&output, 128 + 15);
}

pub fn binary_stdout_arrives_unchanged(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let limit = bulk_output_limit();
    let output = microrun(engine, &["--timeout", limit], root, &["cat", "/data.bin"]);
    assert_code(&output, 0);
    assert_same_bytes(&output.stdout, &binary_data());
}

/// 64 KiB: more than any FIFO or ring on the way holds, so the flow of
/// output (interrupts, back-pressure) must work for it to complete.
pub fn binary_stdout_64k_arrives_unchanged(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &[], root, &["head", "-c", "65536", "/data.bin"]);
    assert_code(&output, 0);
    assert_same_bytes(&output.stdout, &binary_data()[..65536]);
}

/// The `--timeout` of the cases that write megabytes: in the nested lane
/// a megabyte over the UARTs takes minutes (`uarts::`), and 64 MiB over
/// the virtio-console about a minute.
fn bulk_output_limit() -> &'static str {
    if nested::inside() {
        "20m"
    } else {
        SAFETY_TIMEOUT
    }
}

/// 64 MiB: the 1 MiB file 64 times over, as fast as the engine's output
/// path goes (the virtio-console under the kvm engine).
pub fn binary_stdout_64m_arrives_unchanged(engine: &Engine) {
    // Before the prerequisites: a case that does not apply is a skip even
    // where they are missing (in strict mode that would fail it).
    if let Some(why) = engine.slow_stdout {
        skip_not_applicable!("{}: {why}", engine.name);
        return;
    }
    let Some(root) = prerequisites(engine) else {
        return;
    };
    stdout_64m_arrives_unchanged(engine, root);
}

/// The same 64 MiB through Debian's kernel, whose virtio-console drivers
/// are modules (found through ACPI by the kvm engine, on PCI by the qemu
/// engine).
pub fn distribution_kernel_binary_stdout_64m_arrives_unchanged(engine: &Engine) {
    let Some(debian) = debian_virtio_engine(engine, engine.slow_stdout) else {
        return;
    };
    let Some(root) = prerequisites(engine) else {
        return;
    };
    stdout_64m_arrives_unchanged(&debian, root);
}

/// A 1 MiB file 64 times, byte for byte.
fn stdout_64m_arrives_unchanged(engine: &Engine, root: &Path) {
    let script = "i=0; while [ $i -lt 64 ]; do cat /data.bin; i=$((i + 1)); done";
    let limit = bulk_output_limit();
    let output = microrun(engine, &["--timeout", limit], root, &["sh", "-c", script]);
    assert_code(&output, 0);
    assert_same_bytes(&output.stdout, &binary_data().repeat(64));
}

/// 16 KiB: a thousand times a UART's FIFO and four virtio-console rings,
/// so the transmit interrupts and back-pressure are exercised (over the
/// UARTs, `uarts::`, the lane leaves it out of CI: docs/nested.md).
pub fn binary_stdout_16k_arrives_unchanged(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &[], root, &["head", "-c", "16384", "/data.bin"]);
    assert_code(&output, 0);
    assert_same_bytes(&output.stdout, &binary_data()[..16384]);
}

/// Compares output bytes, naming the first difference rather than dumping both.
pub fn assert_same_bytes(got: &[u8], want: &[u8]) {
    let first_difference = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first_difference.is_none(),
        "stdout differs: {} bytes, {} expected, first difference at {:?}",
        got.len(),
        want.len(),
        first_difference
    );
}

/// The kernel panics when the initrd's own init (hello, with `--no-init`)
/// exits; the VM ends without a status, and microrun says why.
pub fn kernel_panic_gives_125_with_the_reason(engine: &Engine) {
    if !engine.is_vm {
        skip_not_applicable!(
            "the {} engine boots no kernel: nothing can panic",
            engine.name
        );
        return;
    }
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &["--no-init"], root, &[]);
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(err.contains("Kernel panic"), "stderr: {err}");
    assert!(err.contains("Attempted to kill init"), "stderr: {err}");
}

/// `engine` booting Debian's kernel, for a case that needs its virtio
/// devices; `None` (skipped, with the reason) where the engine boots no
/// kernel, cannot do what the case needs (`unable`), or there is no
/// Debian kernel.
fn debian_virtio_engine(engine: &Engine, unable: Option<&'static str>) -> Option<Engine> {
    if !engine.is_vm {
        skip_not_applicable!("the {} engine boots no kernel", engine.name);
        return None;
    }
    if let Some(why) = unable {
        skip_not_applicable!("{}: {why}", engine.name);
        return None;
    }
    if nested::distribution_kernel().is_none() {
        skip_unavailable!("{NO_DEBIAN_KERNEL}");
        return None;
    }
    Some(Engine {
        kernel: nested::distribution_kernel,
        ..*engine
    })
}

/// Debian's kernel gets the virtio-console too (its drivers are modules,
/// loaded by guest-init; the device is found through ACPI): stdin reaches
/// its end, which over a UART it never would.
pub fn distribution_kernel_gets_the_virtio_console(engine: &Engine) {
    let Some(debian) = debian_virtio_engine(engine, engine.no_stdin_eof) else {
        return;
    };
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let cmd = ["sh", "-c", "cat; echo ."];
    let output = microrun_with_stdin(&debian, &[], root, &cmd, b"abc", Duration::ZERO);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "abc.\n");
}

/// When guest-init cannot have the virtio-console it falls back to the
/// UARTs, says so, and stdin follows it to ttyS1. Here the guest kernel
/// refuses to load the console's driver (`module_blacklist=`), which
/// microrun's plan offered.
pub fn distribution_kernel_stdin_follows_a_fallback_to_the_uarts(engine: &Engine) {
    let Some(debian) = debian_virtio_engine(engine, None) else {
        return;
    };
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let options = ["--cmdline", "module_blacklist=virtio_console"];
    // Stdin stays open: over a UART the program cannot see its end.
    let input = b"from stdin\n\n";
    let hold = Duration::from_millis(200);
    let cmd = ["head", "-c", "12"];
    let output = microrun_with_stdin(&debian, &options, root, &cmd, input, hold);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "from stdin\n\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no virtio console driver") && stderr.contains("using the serial ports"),
        "guest-init did not say it fell back; stderr:\n{stderr}"
    );
}

/// The mission's headline command with a distribution kernel: Debian's
/// `linux-image-amd64` (virtio drivers as modules, 64 MiB `init_size`),
/// default memory and options.
pub fn distribution_kernel_runs_libs_with_default_options(engine: &Engine) {
    if !engine.is_vm {
        skip_not_applicable!("the {} engine boots no kernel", engine.name);
        return;
    }
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let Some(kernel) = nested::distribution_kernel() else {
        skip_unavailable!("{NO_DEBIAN_KERNEL}");
        return;
    };
    let output = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .env_remove("MICRORUN_IRQCHIP")
        .envs(engine.env.iter().copied())
        .args(engine.args)
        .args(["--timeout", SAFETY_TIMEOUT, "--kernel"])
        .arg(&kernel)
        .arg(root)
        .output()
        .expect("run microrun");
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "Hello, world!\n");
}

/// The libs rootfs and a scratch directory, for a case with shares;
/// `None` (skipped, with the reason) where the engine has none.
fn share_prerequisites(engine: &Engine) -> Option<(&'static Path, tempfile::TempDir)> {
    if let Some(why) = engine.no_shares {
        skip_not_applicable!("{}: {why}", engine.name);
        return None;
    }
    let root = prerequisites(engine)?;
    Some((root, tempfile::tempdir().expect("scratch directory")))
}

/// A checkout: `src/README` and `src/lib/code.c`.
fn checkout(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("lib")).unwrap();
    fs::write(src.join("README"), b"read me\n").unwrap();
    fs::write(src.join("lib/code.c"), binary_data()).unwrap();
    src
}

/// The seed's CI step: the checkout bound in read-only, an output
/// directory bound read-write; the step archives the checkout into the
/// output and copies one file. The host sees both, byte for byte, owned by
/// the user who ran microrun.
pub fn shares_carry_a_build_step_in_and_its_artifact_out(engine: &Engine) {
    let Some((root, dir)) = share_prerequisites(engine) else {
        return;
    };
    let src = checkout(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let binds = [
        "--bind-ro".to_string(),
        format!("{}:/src", src.display()),
        "--bind".to_string(),
        format!("{}:/out", out.display()),
    ];
    let options: Vec<&str> = binds.iter().map(String::as_str).collect();
    let step = "cd /src && busybox tar cf /out/artifact.tar README lib && \
                cat lib/code.c > /out/code.c && mkdir -p /out/logs && echo built > /out/logs/log && \
                ls -1 /src";
    let output = microrun(engine, &options, root, &["sh", "-c", step]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "README\nlib\n");
    assert_same_bytes(&fs::read(out.join("code.c")).unwrap(), &binary_data());
    assert_eq!(fs::read(out.join("logs/log")).unwrap(), b"built\n");
    let mut archive = tar::Archive::new(fs::File::open(out.join("artifact.tar")).unwrap());
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "lib/code.c" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            assert_same_bytes(&data, &binary_data());
        }
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["README", "lib/", "lib/code.c"]);
    // SAFETY: geteuid only returns the caller's id.
    let me = unsafe { libc::geteuid() };
    for file in ["artifact.tar", "code.c", "logs", "logs/log"] {
        let owner = std::os::unix::fs::MetadataExt::uid(&fs::metadata(out.join(file)).unwrap());
        assert_eq!(owner, me, "{file} belongs to the user who ran microrun");
    }
}

/// `--bind-ro`: every kind of change is refused with EROFS, and the host
/// tree is as it was.
pub fn read_only_share_refuses_writes(engine: &Engine) {
    let Some((root, dir)) = share_prerequisites(engine) else {
        return;
    };
    let src = checkout(dir.path());
    let bind = format!("{}:/src", src.display());
    // The last two try to make the share writable again first: root in
    // the guest may remount it, or a fresh bind of it, read-write (a VM's
    // server still refuses every change; the chroot engine's mounts are
    // locked). Unmounting it must not reach the host either.
    let attempts = "for try in 'echo x > /src/new' 'echo x >> /src/README' 'rm /src/README' \
                    'mkdir /src/d' 'mv /src/README /src/R' 'touch /src/lib/code.c' \
                    'chmod 777 /src/README' \
                    'busybox mount -o remount,bind,rw /src 2>/dev/null; echo x > /src/new' \
                    'mkdir -p /tmp/b && busybox mount --bind /src /tmp/b && \
                     busybox mount -o remount,bind,rw /tmp/b 2>/dev/null; echo x > /tmp/b/new'; do \
                      if sh -c \"$try\" 2>/tmp/err; then echo \"allowed: $try\"; \
                      elif grep -q 'Read-only file system' /tmp/err; then echo refused; \
                      else echo \"other: $try: $(cat /tmp/err)\"; fi; done; cat /src/README; \
                    busybox umount /src 2>/dev/null; echo x > /src/README 2>/dev/null; \
                    echo x > /src/new 2>/dev/null; true";
    let output = microrun(engine, &["--bind-ro", &bind], root, &["sh", "-c", attempts]);
    assert_code(&output, 0);
    assert_eq!(
        stdout(&output),
        format!("{}read me\n", "refused\n".repeat(9))
    );
    let mut names: Vec<_> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["README", "lib"]);
    assert_eq!(fs::read(src.join("README")).unwrap(), b"read me\n");
    assert_same_bytes(&fs::read(src.join("lib/code.c")).unwrap(), &binary_data());
}

/// Nothing a guest does through a read-write share leaves a set-user-ID or
/// set-group-ID file on the host, or a file owned by anyone but the user
/// who ran microrun (root in the guest is that user, as in a rootless
/// container); and, as root, microrun's share still honours the
/// permissions of another user's file.
pub fn shares_get_no_setuid_files_and_no_foreign_owners(engine: &Engine) {
    let Some((root, dir)) = share_prerequisites(engine) else {
        return;
    };
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid and getegid only return the caller's ids.
    let (me, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if me == 0 {
        let theirs = out.join("theirs");
        fs::write(
            &theirs,
            b"their secret
",
        )
        .unwrap();
        std::os::unix::fs::chown(&theirs, Some(4321), Some(4321)).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bind = format!("{}:/out", out.display());
    let attempts = "cd /out; echo x > f; chmod 4755 f; chmod 2755 f; chmod 6755 f;                     chown 1234:1234 f; echo y > g; busybox install -m 6755 g h;                     mkdir d; chown 0:1234 d; chmod 2755 d;                     cat theirs 2>/dev/null && echo read; echo theirs >> theirs 2>/dev/null;                     echo done";
    let output = microrun(engine, &["--bind", &bind], root, &["sh", "-c", attempts]);
    assert_code(&output, 0);
    assert!(
        stdout(&output).ends_with(
            "done
"
        ),
        "{output:?}"
    );
    assert!(
        !stdout(&output).contains("read"),
        "another user's file was read"
    );
    for entry in fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name == "theirs" {
            assert_eq!(
                fs::read(entry.path()).unwrap(),
                b"their secret
"
            );
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (4321, 0o600));
            continue;
        }
        assert_eq!(meta.mode() & 0o6000, 0, "{name}: {:o}", meta.mode());
        assert_eq!((meta.uid(), meta.gid()), (me, egid), "{name}");
    }
}

/// A symlink inside a share that points out of it (relatively, or to the
/// host's absolute path of a secret) resolves inside the guest, where the
/// secret is not; and the guest cannot make a link that leads out either.
pub fn share_symlinks_do_not_lead_out(engine: &Engine) {
    let Some((root, dir)) = share_prerequisites(engine) else {
        return;
    };
    let secret = dir.path().join("secret");
    fs::write(&secret, b"host secret\n").unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("relative")).unwrap();
    std::os::unix::fs::symlink(&secret, share.join("absolute")).unwrap();
    let bind = format!("{}:/share", share.display());
    let probe = "cat /share/relative /share/absolute /share/../secret 2>/dev/null; \
                 ln -s ../../secret /share/made 2>/dev/null; cat /share/made 2>/dev/null; \
                 echo done";
    let output = microrun(engine, &["--bind", &bind], root, &["sh", "-c", probe]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "done\n", "nothing of the secret");
    assert_eq!(fs::read(&secret).unwrap(), b"host secret\n");
}

/// Debian's kernel mounts a share too: `9p`, `9pnet_virtio` and what they
/// need are modules, loaded by guest-init; the device is found through
/// ACPI.
pub fn distribution_kernel_mounts_a_share(engine: &Engine) {
    let Some(debian) = debian_virtio_engine(engine, None) else {
        return;
    };
    let Some((root, dir)) = share_prerequisites(engine) else {
        return;
    };
    let src = checkout(dir.path());
    let bind = format!("{}:/work", src.display());
    let step = "cat /work/README && echo made > /work/made";
    let output = microrun(&debian, &["--bind", &bind], root, &["sh", "-c", step]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "read me\n");
    assert_eq!(fs::read(src.join("made")).unwrap(), b"made\n");
}

pub fn stderr_is_separate(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(
        engine,
        &[],
        root,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "to-stdout\n");
    assert!(
        stderr(&output).contains("to-stderr\n"),
        "stderr: {}",
        stderr(&output)
    );
}

pub fn missing_command_gives_127(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &[], root, &["no-such-command"]);
    assert_code(&output, 127);
    assert!(
        stderr(&output).contains("no-such-command"),
        "stderr: {}",
        stderr(&output)
    );
}

/// A sleeping guest is stopped at the limit: microrun exits 124 within
/// 2 s of it.
pub fn timeout_gives_124(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    // Long enough for a VM to boot and start the program (the qemu engine
    // under TCG and the nested lane take seconds), so that the limit stops
    // a program that sleeps, not a kernel still booting.
    let limit = Duration::from_secs(if engine.is_vm { 15 } else { 2 });
    let started = Instant::now();
    let output = microrun(
        engine,
        &["--timeout", &format!("{}s", limit.as_secs())],
        root,
        &["sh", "-c", "echo sleeping; exec sleep 600"],
    );
    assert_code(&output, 124);
    let took = started.elapsed();
    assert_eq!(
        stdout(&output),
        "sleeping\n",
        "the program did not start in time"
    );
    assert!(
        took < limit + Duration::from_secs(2),
        "a {limit:?} timeout took {took:?}"
    );
}

pub fn two_vcpus_seen_by_nproc(engine: &Engine) {
    if !engine.is_vm {
        skip_not_applicable!(
            "the {} engine is not a VM: --cpus does not apply and nproc shows the host's CPUs",
            engine.name
        );
        return;
    }
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let output = microrun(engine, &["--cpus", "2"], root, &["nproc"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "2\n");
}

/// `printf abc | microrun ROOTFS -- sh -c 'cat; echo .'` prints `abc.`:
/// the program sees the end of its stdin when microrun's ends (the
/// virtio-console's stdin port; a pipe under chroot), and goes on.
pub fn stdin_ends_when_host_stdin_ends(engine: &Engine) {
    // Before the prerequisites, as in binary_stdout_64m_arrives_unchanged.
    if let Some(why) = engine.no_stdin_eof {
        skip_not_applicable!("{}: {why}", engine.name);
        return;
    }
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let cmd = ["sh", "-c", "cat; echo ."];
    let output = microrun_with_stdin(engine, &[], root, &cmd, b"abc", Duration::ZERO);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "abc.\n");
}

/// Runs microrun with `input` on its stdin, which stays open `hold` longer.
pub fn microrun_with_stdin(
    engine: &Engine,
    options: &[&str],
    root: &Path,
    cmd: &[&str],
    input: &[u8],
    hold: Duration,
) -> Output {
    let mut command = microrun_command(engine, options, root, cmd);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn microrun");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        std::thread::sleep(hold);
    }
    child.wait_with_output().unwrap()
}

/// Stdin that is not a terminal reaches the command. A serial port has no
/// end of file, so the command reads a known number of bytes.
pub fn stdin_is_forwarded(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    // Stdin stays open a moment: the guest must not need end of file.
    let input = b"from stdin\n\n";
    let hold = Duration::from_millis(200);
    let output = microrun_with_stdin(engine, &[], root, &["head", "-c", "12"], input, hold);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "from stdin\n\n");
}
