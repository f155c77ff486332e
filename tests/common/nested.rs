//! The nested-KVM lane for `cargo test` (see docs/nested.md).
//!
//! On a host whose KVM cannot run Linux (kvm_pvm), the kvm engine's
//! full-boot cases run inside a Linux booted by `scripts/nested-kvm`, where
//! `/dev/kvm` behaves like hardware KVM. The outer VM boots once per test
//! binary: the first case that needs it runs every selected case of this
//! binary in there, one after the other (`--exact NAME`), and each `#[test]`
//! then reports its own case's result, so every case counts as passed or
//! failed under its own name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set inside the lane, so a case never tries to nest again.
const INNER_VAR: &str = "MICRORUN_NESTED_INNER";
/// Where the outer guest's cache (the project kernel) lives.
const INNER_CACHE: &str = "/nested/cache";
/// A limit per case, so one stuck case cannot take the suite's time (a
/// slow case, [`left_out`], takes up to 20 minutes).
const CASE_TIMEOUT_S: u32 = 1500;
/// `MICRORUN_NESTED_SLOW=1` runs the cases that [`left_out`] names as well
/// as the others; `MICRORUN_NESTED_SLOW=only` runs only them
/// (`scripts/nested-slow`).
const SLOW_VAR: &str = "MICRORUN_NESTED_SLOW";

/// Why case `name` does not run in the lane of this process, if it does
/// not: [`left_out`]'s reason (CI's lane), or, under
/// `MICRORUN_NESTED_SLOW=only`, that CI runs it.
pub fn skipped_here(name: &str) -> Option<String> {
    let why = left_out(name);
    match std::env::var(SLOW_VAR).as_deref() {
        Err(_) => {
            why.map(|why| format!("{why}; scripts/nested-slow runs it (CI does not gate on it)"))
        }
        Ok("only") => why
            .is_none()
            .then(|| format!("CI runs it, and {SLOW_VAR}=only runs only what CI leaves out")),
        Ok(_) => None,
    }
}

/// Why case `name` is left out of CI's lane: it does not fit CI's time
/// there, or the lane itself (TCG's nested SVM, not the kvm engine) makes
/// it fail at random. `scripts/nested-slow` runs these.
pub fn left_out(name: &str) -> Option<&'static str> {
    match name {
        // Bulk output over the UARTs (`MICRORUN_VIRTIO=off`). CI keeps the
        // UART cases that write a few bytes (hello, stderr, stdin); the
        // VMM's transmit-interrupt flow is checked with 64 KiB on this
        // host, both irqchips (vmm/tests/interrupts.rs).
        "uarts::binary_stdout_arrives_unchanged" => {
            Some("1 MiB through the 16550 takes about 6 minutes there (3 KB/s under TCG)")
        }
        "uarts::binary_stdout_64k_arrives_unchanged"
        | "uarts::binary_stdout_16k_arrives_unchanged" => Some(
            "under sustained UART interrupts TCG's nested SVM stalls or triple-faults the \
             lane's inner guest at random (docs/nested.md; a CI run stalled 16 KiB after \
             2.3 KB, twice)",
        ),
        // The shares' confinement, read-only rules and module loading do
        // not depend on the interrupt controller: CI runs them with the
        // default one, and the build-step case with both.
        "in_kernel_irqchip::read_only_share_refuses_writes"
        | "in_kernel_irqchip::shares_get_no_setuid_files_and_no_foreign_owners"
        | "in_kernel_irqchip::share_symlinks_do_not_lead_out"
        | "in_kernel_irqchip::distribution_kernel_mounts_a_share"
        | "in_kernel_irqchip::distribution_kernel_stdin_follows_a_fallback_to_the_uarts"
        | "in_kernel_irqchip::distribution_kernel_binary_stdout_64m_arrives_unchanged" => Some(
            "what it checks does not depend on the interrupt controller, and CI runs it with \
             the default one (the lane's time is CI's longest part)",
        ),
        // 64 MiB takes 75-90 s there: the in-kernel irqchip's virtio path
        // is checked with 1 MiB and 64 KiB, the 64 MiB with the default.
        "in_kernel_irqchip::binary_stdout_64m_arrives_unchanged" => Some(
            "64 MiB takes 75-90 s in the lane; CI runs it with the default irqchip, and the \
             in-kernel one with 1 MiB and 64 KiB",
        ),
        _ => None,
    }
}
/// A limit for the whole outer run.
const SUITE_TIMEOUT: &str = "50m";
/// The outer VM's memory (lazily backed: the host gives it what it
/// touches). Its root, where the cases' trees and the inner cache live, is
/// a tmpfs of half of it; the disk-root case (`disk_root.rs`) writes a
/// 1 GiB tree and its 1 GiB EROFS image there and checks that they fit.
pub const OUTER_MEM: &str = "6G";

/// What one test binary's lane carries beyond what every lane does, and
/// which of its cases run there (a binary whose other cases run on the
/// host, such as `e2e_registry`). Set it with [`set_extras`] before the
/// binary's first [`super::run_case`].
#[derive(Debug, Default)]
pub struct Extras {
    /// Executables copied in at their path with their libraries (`--bin`).
    pub bins: Vec<PathBuf>,
    /// Files copied in at their path (`--add`).
    pub files: Vec<PathBuf>,
    /// Only the cases whose path starts with this run in the lane.
    pub cases_under: Option<&'static str>,
}

static EXTRAS: OnceLock<Extras> = OnceLock::new();

/// Sets this test binary's [`Extras`]; the first call wins, and one made
/// after the lane has started changes nothing.
pub fn set_extras(extras: Extras) {
    let _ = EXTRAS.set(extras);
}

/// How one case ended inside the lane.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's exit status (0: passed), `None` if it never finished.
    pub status: Option<i32>,
    /// Everything the case printed (stdout and stderr).
    pub log: String,
    /// Seconds it took inside the lane.
    pub seconds: f64,
    /// It failed once and ran again (the status is the second attempt's).
    pub retried: bool,
}

struct Suite {
    cases: HashMap<String, CaseResult>,
    /// The whole outer run's output, for cases without a result.
    outer_log: String,
}

/// Whether this process runs inside the lane.
pub fn inside() -> bool {
    std::env::var_os(INNER_VAR).is_some()
}

/// Why the lane cannot run here, when it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists()
        && !std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
        })
    {
        return Some("qemu-system-x86_64 is not installed (scripts/install-deps)".into());
    }
    if outer_kernel().is_none() {
        return Some(
            "no Debian kernel with modules (/boot/vmlinuz-*-amd64 and /lib/modules): \
             install linux-image-amd64 (scripts/install-deps)"
                .into(),
        );
    }
    if super::project_kernel().is_none() {
        return Some("the project kernel is not built: run scripts/build-kernel".into());
    }
    None
}

/// Debian's kernel with its modules, as the nested-kvm script picks it by
/// default: the newest `/boot/vmlinuz-*-amd64` with a `/lib/modules` tree.
pub fn outer_kernel() -> Option<PathBuf> {
    newest_debian_kernel(|release| {
        Path::new("/lib/modules")
            .join(release)
            .join("modules.dep")
            .is_file()
    })
}

/// The files beside Debian's `kernel` that microrun reads to boot it with
/// the virtio-console: `/boot/config-<release>`, the module index files in
/// `/lib/modules/<release>` and the virtio modules with their
/// dependencies (a few MB, where the whole tree is hundreds). Whatever is
/// missing is left out, and the run inside falls back to the UARTs.
fn distribution_kernel_files(kernel: &Path) -> Vec<PathBuf> {
    let Ok(release) = initrd_tools::kernel_info::kernel_release(kernel) else {
        return Vec::new();
    };
    let modules = Path::new("/lib/modules").join(&release);
    let mut files = vec![Path::new("/boot").join(format!("config-{release}"))];
    files.extend(
        initrd_tools::modules::INDEX_FILES
            .iter()
            .map(|name| modules.join(name)),
    );
    if let Ok(tree) = initrd_tools::modules::ModuleTree::for_release(&release) {
        if let Ok(needed) = tree.resolve(&["virtio_mmio", "virtio_console", "9pnet_virtio", "9p"]) {
            files.extend(needed.into_iter().map(|m| m.path));
        }
    }
    files.retain(|f| f.is_file());
    files
}

/// The newest Debian kernel, `/boot/vmlinuz-*-amd64`, modules or not (the
/// lane carries the kernel file alone).
pub fn distribution_kernel() -> Option<PathBuf> {
    newest_debian_kernel(|_| true)
}

fn newest_debian_kernel(usable: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            (release.ends_with("-amd64") && usable(&release)).then(|| (release, entry.path()))
        })
        .collect();
    found.sort_by_key(|(release, _)| version_key(release));
    found.pop().map(|(_, path)| path)
}

/// Sorts `6.1.0-57-amd64` after `6.1.0-9-amd64`.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The result of case `name` (its path in this test binary, such as
/// `in_kernel_irqchip::libs_init_says_hello`), running the suite first if
/// no case has yet.
pub fn result(name: &str) -> Result<CaseResult, String> {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    let suite = SUITE.get_or_init(run_suite).as_ref()?;
    suite.cases.get(name).cloned().ok_or_else(|| {
        format!(
            "case {name} reported no result in the nested lane; the lane's output:\n{}",
            suite.outer_log
        )
    })
}

/// The libtest arguments that select cases (filters, `--exact`, `--skip`),
/// from this process's own command line, so that the lane runs what
/// `cargo test` was asked to run.
fn selection_args() -> Vec<String> {
    let takes_value = [
        "--test-threads",
        "--color",
        "--format",
        "-Z",
        "--logfile",
        "--shuffle-seed",
    ];
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--skip" {
            out.push(arg);
            out.extend(args.next());
        } else if takes_value.contains(&arg.as_str()) {
            args.next();
        } else if ["--exact", "--ignored", "--include-ignored"].contains(&arg.as_str())
            || !arg.starts_with('-')
        {
            out.push(arg);
        }
    }
    out
}

/// This binary's selected tests.
fn selected_cases(exe: &Path) -> Result<Vec<String>, String> {
    let listed = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .args(selection_args())
        .env(INNER_VAR, "list")
        .output()
        .map_err(|e| format!("cannot list the tests of {}: {e}", exe.display()))?;
    if !listed.status.success() {
        return Err(format!(
            "listing the tests of {} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&listed.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        // The harness's own unit tests need no VM.
        .filter(|name| !name.starts_with("common::") && skipped_here(name).is_none())
        .filter(|name| {
            EXTRAS
                .get()
                .and_then(|extras| extras.cases_under)
                .is_none_or(|prefix| name.starts_with(prefix))
        })
        .map(str::to_string)
        .collect())
}

/// The script the outer guest runs: every case in turn, each framed by
/// marker lines that carry its status and duration. While a case runs, a
/// heartbeat line comes every `$HEARTBEAT` seconds (so the host can tell a
/// slow case from an outer VM that stopped), and after `$THREADS_AT`
/// seconds every process's threads are shown with what each waits for in
/// the kernel.
const CASES_SCRIPT: &str = r#"exe=$1; shift
show_threads() {
  echo "@@nested: the case has run for $THREADS_AT s; every thread:"
  for task in /proc/[0-9]*/task/*; do
    echo "--- $task $(cat "$task/comm" 2>/dev/null) wchan=$(cat "$task/wchan" 2>/dev/null) syscall=$(cut -d' ' -f1 "$task/syscall" 2>/dev/null)"
    cat "$task/stack" 2>/dev/null | head -n 12
  done
}
heartbeat() {
  # Ended by `kill` between two one-second sleeps, quietly.
  trap 'exit 0' TERM
  n=0
  while sleep 1; do
    n=$((n + 1))
    [ $((n % HEARTBEAT)) -eq 0 ] && echo "@@nested-alive $1 $n"
    [ "$n" -eq "$THREADS_AT" ] && show_threads
  done
}
for case in "$@"; do
  echo "@@nested-begin $case"
  t0=$(cut -d' ' -f1 /proc/uptime)
  heartbeat "$case" &
  beat=$!
  timeout "$CASE_TIMEOUT" "$exe" --exact "$case" --nocapture --test-threads 1 </dev/null 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    # Once more: TCG's nested SVM fails a case now and then (an inner
    # triple fault, a stall); the host side reports the first failure.
    echo "@@nested-retry $case $rc"
    timeout "$CASE_TIMEOUT" "$exe" --exact "$case" --nocapture --test-threads 1 </dev/null 2>&1
    rc=$?
  fi
  kill "$beat"
  wait "$beat"
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "@@nested-end $case $rc $t0 $t1"
done
"#;

/// The lane's files for one suite: the cases script, and the log.
struct Lane {
    exe: PathBuf,
    libs: &'static Path,
    project_kernel: PathBuf,
    script: PathBuf,
    log: std::fs::File,
}

fn run_suite() -> Result<Suite, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this test binary: {e}"))?;
    let cases = selected_cases(&exe)?;
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let script = scratch.path().join("cases");
    std::fs::write(&script, CASES_SCRIPT).map_err(|e| e.to_string())?;
    // The lane's output also goes to a log file as it comes, to follow a
    // long run (`tail -f`) or read after a failure.
    let log_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "nested-{}.log",
        exe.file_name().unwrap_or_default().to_string_lossy()
    ));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut lane = Lane {
        exe,
        libs: super::libs_rootfs()?,
        project_kernel: super::project_kernel().ok_or("the project kernel is not built")?,
        script,
        log,
    };
    say(format_args!(
        "running {} cases in one outer VM; its output goes to {}",
        cases.len(),
        log_path.display()
    ));
    let started = Instant::now();
    let mut results = HashMap::new();
    let mut outer_log = String::new();
    let mut left = cases.clone();
    // An outer VM that stops answering (TCG's nested SVM has been seen to
    // stall the whole outer guest) is replaced, for the cases it did
    // not finish.
    for attempt in 1..=OUTER_ATTEMPTS {
        let run = run_outer(&mut lane, &left)?;
        outer_log.push_str(&run.log);
        results.extend(run.cases);
        left.retain(|c| {
            results
                .get(c)
                .is_none_or(|r: &CaseResult| r.status.is_none())
        });
        if left.is_empty() || attempt == OUTER_ATTEMPTS {
            break;
        }
        if run.silent {
            say(format_args!(
                "the outer VM gave no sign of life for {} s; {} cases run again in a new one",
                SILENCE_LIMIT.as_secs(),
                left.len()
            ));
        } else {
            say(format_args!(
                "the outer VM ended before {} cases finished (see the log); they run again in a new one",
                left.len()
            ));
        }
    }
    for (name, result) in &results {
        if result.retried {
            say(format_args!(
                "{name} failed once and was run again (the first attempt is in the log)"
            ));
        }
    }
    let passed = results.values().filter(|r| r.status == Some(0)).count();
    say(format_args!(
        "{passed} of {} cases passed, {:.0} s in all",
        cases.len(),
        started.elapsed().as_secs_f64()
    ));
    // What CI's time goes to, to keep the lane inside it.
    let mut by_time: Vec<_> = results.iter().collect();
    by_time.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    let slowest: Vec<String> = by_time
        .iter()
        .take(5)
        .map(|(name, r)| format!("{name} {:.0} s", r.seconds))
        .collect();
    say(format_args!("slowest: {}", slowest.join(", ")));
    Ok(Suite {
        cases: results,
        outer_log,
    })
}

/// A line on stderr that the test harness does not capture.
fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "nested lane: {message}");
}

/// Longest the lane may say nothing: four heartbeat periods, so a silent
/// lane is an outer VM that stopped. (It froze in three of four CI runs of
/// the suite, each time costing this long before the cases left ran in a
/// new one; the outer guest's first case starts 6 s after its boot.)
const SILENCE_LIMIT: Duration = Duration::from_secs(4 * HEARTBEAT_S as u64);
/// How many outer VMs a suite may use: TCG's nested SVM has frozen the
/// whole outer guest twice in one suite, so a frozen one is replaced, for
/// the cases it did not finish, up to three times.
const OUTER_ATTEMPTS: u32 = 4;
/// Seconds between a running case's heartbeat lines.
const HEARTBEAT_S: u32 = 20;
/// When a case that is still running has every thread in the outer guest
/// shown (the slowest CI cases take 70-100 s).
const THREADS_AT_S: u32 = 180;

/// What one outer VM did.
struct OuterRun {
    cases: HashMap<String, CaseResult>,
    log: String,
    /// It went silent and was stopped.
    silent: bool,
}

/// Boots one outer VM for `cases` and collects their results.
fn run_outer(lane: &mut Lane, cases: &[String]) -> Result<OuterRun, String> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::process::CommandExt as _;

    let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nested-kvm"));
    command
        .env("MICRORUN", env!("CARGO_BIN_EXE_microrun"))
        // The outer kernel's log goes to the lane's stderr, and so to the
        // log file: an outer VM that panics or resets says why there.
        .arg("-v")
        .arg("--mem")
        .arg(OUTER_MEM)
        .arg("--timeout")
        .arg(SUITE_TIMEOUT)
        .arg("--bin")
        .arg(&lane.exe)
        .arg("--add")
        .arg(lane.libs)
        .arg("--add")
        .arg(format!(
            "{}:{INNER_CACHE}/microrun/kernels/default/bzImage",
            lane.project_kernel.display()
        ))
        .arg("--add")
        .arg(format!("{}:/nested/cases", lane.script.display()));
    if let Some(vmlinux) = super::project_vmlinux() {
        command.arg("--add").arg(format!(
            "{}:{INNER_CACHE}/microrun/kernels/default/vmlinux",
            vmlinux.display()
        ));
    }
    // The terminal cases (tty.rs) drive the kvm engine through tmux there.
    if let Some(tmux) = which("tmux") {
        command.arg("--bin").arg(tmux);
        for file in super::tty::LANE_FILES {
            if Path::new(file).exists() {
                command.arg("--add").arg(format!("{file}:{file}"));
            }
        }
    }
    // The --net cases (net.rs): passt for the inner VMs, and a network
    // for the outer one, where passt needs a routable interface.
    if let Some(passt) = which("passt") {
        command.arg("--bin").arg(passt).arg("--net");
    }
    if let Some(kernel) = distribution_kernel() {
        // At the same path: inside, discovery finds it as
        // /boot/vmlinuz-$(uname -r), the outer kernel's own release.
        command.arg("--add").arg(&kernel);
        // With what the inner microrun needs to give it its virtio
        // drivers: its configuration, the module index and the modules.
        // At the paths named, not their real paths (/lib may be a link
        // to /usr/lib here, but is not in the outer rootfs).
        for file in distribution_kernel_files(&kernel) {
            command.arg("--add").arg(format!("{0}:{0}", file.display()));
        }
    }
    if let Some(extras) = EXTRAS.get() {
        for bin in &extras.bins {
            command.arg("--bin").arg(bin);
        }
        for file in &extras.files {
            command.arg("--add").arg(format!("{0}:{0}", file.display()));
        }
    }
    for (key, value) in [
        (INNER_VAR, "1".to_string()),
        ("XDG_CACHE_HOME", INNER_CACHE.to_string()),
        (super::LIBS_VAR, lane.libs.display().to_string()),
        ("CASE_TIMEOUT", CASE_TIMEOUT_S.to_string()),
        ("HEARTBEAT", HEARTBEAT_S.to_string()),
        ("THREADS_AT", THREADS_AT_S.to_string()),
        ("RUST_BACKTRACE", "1".to_string()),
        // Never strict inside (the lane passes only what is listed here, so
        // neither this host's MICRORUN_REQUIRE_ALL nor its CI reaches in;
        // this says so whatever a later change passes): an inner case that
        // cannot run prints its kind of skip and passes, and assert_passed
        // reports that kind out here, where strict mode decides.
        (test_support::REQUIRE_ALL_VAR, "0".to_string()),
    ] {
        command.arg("-e").arg(format!("{key}={value}"));
    }
    command
        .arg("--")
        .arg("/bin/sh")
        .arg("/nested/cases")
        .arg(&lane.exe)
        .args(cases)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a stopped lane can be ended whole
        // (the script, microrun and QEMU).
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run scripts/nested-kvm: {e}"))?;
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let stderr_thread = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err_pipe.read_to_end(&mut text);
        text
    });
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let (chunks, received) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = out_pipe.read(&mut buf) {
            if chunks.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut stdout_bytes = Vec::new();
    let mut silent = false;
    loop {
        match received.recv_timeout(SILENCE_LIMIT) {
            Ok(chunk) => {
                let _ = lane.log.write_all(&chunk);
                stdout_bytes.extend_from_slice(&chunk);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                silent = true;
                // SAFETY: kill has no memory preconditions; the group is
                // the lane's own (process_group(0) above).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                break;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for scripts/nested-kvm: {e}"))?;
    let stderr_bytes = stderr_thread.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&stdout_bytes).into_owned();
    let stderr = String::from_utf8_lossy(&stderr_bytes).into_owned();
    let note = if silent {
        format!(
            "\n--- the outer VM was silent for {} s and was stopped\n",
            SILENCE_LIMIT.as_secs()
        )
    } else {
        format!("\n--- the lane ended with {status}\n")
    };
    let _ = lane.log.write_all(note.as_bytes());
    let _ = lane.log.write_all(b"--- the lane's stderr\n");
    let _ = lane.log.write_all(&stderr_bytes);
    Ok(OuterRun {
        cases: parse_cases(&stdout),
        log: format!("--- stdout\n{stdout}{note}--- stderr\n{stderr}"),
        silent,
    })
}

/// Splits the lane's stdout into each case's result.
fn parse_cases(stdout: &str) -> HashMap<String, CaseResult> {
    let mut results = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut retried = false;
    for line in stdout.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("@@nested-begin ") {
            current = Some((name.trim().to_string(), String::new()));
            retried = false;
        } else if let Some(rest) = line.strip_prefix("@@nested-end ") {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let Some((name, log)) = current.take() else {
                continue;
            };
            let time = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            results.insert(
                name,
                CaseResult {
                    status: fields.get(1).and_then(|s| s.parse().ok()),
                    log,
                    seconds: time(3).zip(time(2)).map_or(0.0, |(b, a)| b - a),
                    retried,
                },
            );
        } else if line.starts_with("@@nested-retry ") {
            retried = true;
            if let Some((_, log)) = current.as_mut() {
                log.push_str("--- the case failed; it runs once more:\n");
            }
        } else if line.starts_with("@@nested-alive ") {
            // A heartbeat: not the case's own output.
        } else if let Some((_, log)) = current.as_mut() {
            log.push_str(line);
        }
    }
    // A case that began but never ended (the outer VM stopped): its output
    // so far is all there is.
    if let Some((name, log)) = current {
        results.insert(
            name,
            CaseResult {
                status: None,
                log,
                seconds: 0.0,
                retried,
            },
        );
    }
    results
}

/// Runs case `name` through the lane and fails the calling test unless it
/// passed there. A case that skipped itself inside says so here too.
pub fn assert_passed(name: &str) {
    let result = match result(name) {
        Ok(result) => result,
        Err(why) => panic!("nested lane: {why}"),
    };
    assert_eq!(
        result.status,
        Some(0),
        "case {name} failed in the nested lane (status {:?}); its output:\n{}",
        result.status,
        result.log
    );
    // Each kind comes back as it was: an inner unavailable skip (no Debian
    // kernel in the lane, say) fails this test in strict mode, which the
    // inner run never is (MICRORUN_REQUIRE_ALL=0 there, see run_outer).
    for (kind, why) in inner_skips(&result.log) {
        test_support::report(kind, format_args!("in the nested lane: {why}"));
    }
}

/// The skips a case's output inside the lane reports, of either kind.
fn inner_skips(log: &str) -> Vec<(test_support::Skip, &str)> {
    log.lines().filter_map(test_support::parse).collect()
}

/// The path of `program` on `PATH`, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cases_are_split_by_their_markers() {
        let out =
            "boot noise\n@@nested-begin a::b\nrunning 1 test\nok\n@@nested-end a::b 0 1.5 4.0\n\
                   @@nested-begin c\npanicked\n@@nested-retry c 101\npanicked\n\
                   @@nested-end c 101 4.0 5.0\n@@nested-begin d\nhalf";
        let r = super::parse_cases(out);
        assert_eq!(r["a::b"].status, Some(0));
        assert_eq!(r["a::b"].log, "running 1 test\nok\n");
        assert!((r["a::b"].seconds - 2.5).abs() < 1e-9);
        assert!(!r["a::b"].retried);
        assert_eq!(r["c"].status, Some(101));
        assert!(r["c"].retried);
        assert!(r["c"].log.contains("runs once more"));
        assert_eq!(r["d"].status, None);
        assert_eq!(r["d"].log, "half");
    }

    /// Inside, libtest (`--nocapture`, one thread) prints a skip on its
    /// `test NAME ... ` line; either kind is found there, and kept.
    #[test]
    fn inner_skips_keep_their_kind() {
        use test_support::Skip;
        let out = "@@nested-begin a\nrunning 1 test\n\
                   test a ... skipped (unavailable): no Debian kernel\nok\n\
                   @@nested-end a 0 1.0 2.0\n\
                   @@nested-begin b\ntest b ... skipped: boots no kernel\nok\n\
                   @@nested-end b 0 2.0 3.0\n\
                   @@nested-begin c\ntest c ... ok\n@@nested-end c 0 3.0 4.0\n";
        let r = super::parse_cases(out);
        assert_eq!(
            super::inner_skips(&r["a"].log),
            [(Skip::Unavailable, "no Debian kernel")]
        );
        assert_eq!(
            super::inner_skips(&r["b"].log),
            [(Skip::NotApplicable, "boots no kernel")]
        );
        assert_eq!(super::inner_skips(&r["c"].log), []);
    }
}
