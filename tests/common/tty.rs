//! `-it` driven through a real terminal: a detached `tmux` session (its
//! own server, on a socket in a scratch directory) runs a script that
//! records `stty -a`, runs microrun with `-it`, prints its exit code and
//! records `stty -a` again; `send-keys` types, `capture-pane` reads the
//! screen, `resize-window` changes the pane's size. A test file expands
//! [`tty_cases!`] with its engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use test_support::skip_unavailable;

use super::Engine;

/// Busybox applets of the terminal rootfs.
const APPLETS: [&str; 7] = ["sh", "stty", "tty", "sleep", "echo", "true", "stat"];
/// The guest shell's prompt (`PS1`), looked for on the screen.
const PROMPT: &str = "guest#";

/// Expands to the terminal cases, run with `$engine` (in the nested lane
/// for an engine that asks for it, see [`super::run_case`]).
#[macro_export]
macro_rules! tty_cases {
    ($engine:expr) => {
        #[test]
        fn tty_shell_is_the_panes_terminal_and_survives_ctrl_c() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::tty_shell_is_the_panes_terminal_and_survives_ctrl_c"
                ),
                common::tty::shell_is_the_panes_terminal_and_survives_ctrl_c,
            );
        }
        #[test]
        fn tty_timeout_restores_the_terminal() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::tty_timeout_restores_the_terminal"),
                common::tty::timeout_restores_the_terminal,
            );
        }
        #[test]
        fn tty_sigterm_restores_the_terminal() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::tty_sigterm_restores_the_terminal"),
                common::tty::sigterm_restores_the_terminal,
            );
        }
        #[test]
        fn tty_escape_stops_the_vm_with_125() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::tty_escape_stops_the_vm_with_125"),
                common::tty::escape_stops_the_vm_with_125,
            );
        }
    };
}

/// The files tmux needs in the nested lane's outer guest besides its
/// binary (`scripts/nested-kvm --bin`): the terminal descriptions of the
/// `TERM` it is given and of its panes, and a UTF-8 locale (tmux refuses
/// to start without one, and tries C.UTF-8 by itself).
pub const LANE_FILES: [&str; 3] = [
    "/lib/terminfo/x/xterm",
    "/lib/terminfo/s/screen",
    "/usr/lib/locale/C.utf8",
];

/// A tmux server of its own with one session, `80` x `24` to start with,
/// killed when dropped.
pub struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts the session; its pane runs a shell until [`Tmux::run`].
    fn new() -> Tmux {
        let tmux = Tmux {
            dir: tempfile::tempdir().unwrap(),
        };
        let output = tmux.command(&["new-session", "-d", "-s", "t", "-x", "80", "-y", "24"]);
        assert!(output.status.success(), "tmux new-session: {output:?}");
        tmux
    }

    /// Has the pane's shell run `script` (with `sh`, in place of itself).
    fn run(&self, script: &str) {
        let path = self.file("run.sh");
        fs::write(&path, script).unwrap();
        self.line(&format!("exec sh {}", path.display()));
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            // tmux wants a terminal type for its pane, whatever runs the
            // tests; `sh` keeps the user's shell configuration out.
            .env("TERM", "xterm")
            .env("SHELL", "/bin/sh")
            .env_remove("TMUX")
            .output()
            .expect("cannot run tmux")
    }

    /// `send-keys` with these arguments.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        let output = self.command(&args);
        assert!(output.status.success(), "tmux send-keys: {output:?}");
    }

    /// Types `line` and Enter.
    pub fn line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// The screen, wrapped lines joined.
    pub fn screen(&self) -> String {
        let output = self.command(&["capture-pane", "-p", "-J", "-t", "t"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until a line of the screen satisfies `want`, for `limit` at
    /// most; the test fails with the screen otherwise.
    pub fn wait_for(&self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.lines().any(|line| want(line.trim_end())) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{what} did not appear within {limit:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a line that is exactly `text`.
    pub fn wait_line(&self, text: &str, limit: Duration) {
        self.wait_for(&format!("{text:?}"), limit, |line| line == text);
    }

    /// Resizes the window (and its one pane).
    pub fn resize(&self, cols: u16, rows: u16) {
        let output = self.command(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
        assert!(output.status.success(), "tmux resize-window: {output:?}");
    }

    /// The process id of the microrun the pane's script runs.
    pub fn microrun_pid(&self) -> u32 {
        let output = self.command(&["list-panes", "-t", "t", "-F", "#{pane_pid}"]);
        let shell = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let children = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_else(|e| panic!("the children of the pane's shell {shell}: {e}"));
        children
            .split_whitespace()
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "microrun")
            })
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no microrun among {children:?}"))
    }

    /// A file of the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}

/// A static busybox with the applets the cases use, built once per test
/// binary; `Err` says why it cannot be.
fn tty_rootfs() -> Result<&'static Path, String> {
    static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let busybox = super::host_busybox()?;
            let root = super::fresh_dir_of_this_binary("tty")?;
            let bin = root.join("bin");
            fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
            fs::copy(&busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
            for applet in APPLETS {
                std::os::unix::fs::symlink("busybox", bin.join(applet))
                    .map_err(|e| format!("linking bin/{applet}: {e}"))?;
            }
            Ok(root)
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// What a case needs, or `None` after saying why it is skipped.
fn prerequisites(engine: &Engine) -> Option<&'static Path> {
    if let Some(why) = (engine.unavailable)() {
        skip_unavailable!("{} engine: {why}", engine.name);
        return None;
    }
    let tmux = Command::new("tmux").arg("-V").output();
    if !tmux.is_ok_and(|o| o.status.success()) {
        skip_unavailable!("tmux is not installed (scripts/install-deps installs it)");
        return None;
    }
    if super::nested::inside() && !Path::new("/dev/pts/ptmx").exists() {
        // The lane's outer guest mounts no devpts, and tmux needs
        // pseudo-terminals for its panes.
        let _ = fs::create_dir_all("/dev/pts");
        let mounted = Command::new("mount")
            .args(["-t", "devpts", "-o", "ptmxmode=0666", "devpts", "/dev/pts"])
            .status();
        assert!(
            mounted.is_ok_and(|s| s.success()),
            "cannot mount devpts in the nested lane"
        );
    }
    match tty_rootfs() {
        Ok(root) => Some(root),
        Err(why) => {
            skip_unavailable!("cannot build the terminal rootfs: {why}");
            None
        }
    }
}

/// How long the guest's first prompt may take: a VM under TCG on a busy
/// machine boots in seconds.
fn boot_limit(engine: &Engine) -> Duration {
    Duration::from_secs(if engine.is_vm { 90 } else { 20 })
}

/// Shell-quotes `text` for the script.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script the pane runs: `stty -a` before, microrun with `options`
/// running the guest's `sh`, `stty -a` after, then its exit code as
/// `code=N` (last, so that the file is complete once the line shows).
fn script(engine: &Engine, options: &[&str], root: &Path, dir: &Path) -> String {
    let command = super::microrun_command(
        engine,
        &[&["-it", "-e", &format!("PS1={PROMPT}")][..], options].concat(),
        root,
        &["sh"],
    );
    let program = command.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = command
        .get_args()
        .map(|a| quote(&a.to_string_lossy()))
        .collect();
    let envs: Vec<String> = command
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={}",
                k.to_string_lossy(),
                quote(&v?.to_string_lossy())
            ))
        })
        .collect();
    format!(
        "stty -a > {before}\nenv -u MICRORUN_IRQCHIP {envs} {program} {args}\n\
         code=$?\nstty -a > {after}\nprintf 'code=%s\\n' \"$code\"\nexec sleep 600\n",
        before = dir.join("before").display(),
        after = dir.join("after").display(),
        envs = envs.join(" "),
        program = quote(&program),
        args = args.join(" "),
    )
}

/// Starts the pane's script for `options`.
fn start(engine: &Engine, options: &[&str], root: &Path) -> Tmux {
    let tmux = Tmux::new();
    tmux.run(&script(engine, options, root, tmux.dir.path()));
    tmux
}

/// The host terminal's `stty -a`, before and after microrun, are the same.
fn assert_terminal_restored(tmux: &Tmux) {
    let before = fs::read_to_string(tmux.file("before")).unwrap();
    let after = fs::read_to_string(tmux.file("after")).unwrap();
    assert!(!before.is_empty());
    assert_eq!(before, after, "stty -a differs after the run");
}

/// `-it ... -- sh`: `tty` names a pseudo-terminal of the pane's size,
/// which follows a resize; Ctrl-C interrupts `sleep 100` and the shell
/// survives; `exit 5` gives 5; the terminal is as it was.
pub fn shell_is_the_panes_terminal_and_survives_ctrl_c(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let tmux = start(engine, &[], root);
    let step = Duration::from_secs(if engine.is_vm { 30 } else { 10 });
    tmux.wait_for("the guest's prompt", boot_limit(engine), |line| {
        line.starts_with(PROMPT)
    });
    tmux.line("echo T1 $(tty)");
    tmux.wait_for("T1 /dev/pts/N", step, |line| {
        line.strip_prefix("T1 /dev/pts/")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    tmux.line("echo S1 $(stty size)");
    tmux.wait_line("S1 24 80", step);
    tmux.resize(100, 30);
    // SIGWINCH reaches microrun at the resize; its frame goes ahead of
    // the next keys on the same stream.
    std::thread::sleep(Duration::from_millis(500));
    tmux.line("echo S2 $(stty size)");
    tmux.wait_line("S2 30 100", step);
    tmux.resize(80, 24);
    std::thread::sleep(Duration::from_millis(500));
    tmux.line("echo S3 $(stty size)");
    tmux.wait_line("S3 24 80", step);
    tmux.line("sleep 100");
    std::thread::sleep(Duration::from_secs(2));
    tmux.keys(&["C-c"]);
    // Well before sleep 100 could end by itself.
    tmux.line("echo A1 alive-$((40+2))");
    tmux.wait_line("A1 alive-42", step);
    tmux.line("exit 5");
    tmux.wait_line("code=5", step);
    assert_terminal_restored(&tmux);
}

/// `--timeout` ends an `-it` run (124) and the terminal is as it was.
pub fn timeout_restores_the_terminal(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    let limit = if engine.is_vm { "30s" } else { "4s" };
    let tmux = start(engine, &["--timeout", limit], root);
    tmux.wait_for("the guest's prompt", boot_limit(engine), |line| {
        line.starts_with(PROMPT)
    });
    tmux.line("sleep 600");
    tmux.wait_line("code=124", Duration::from_secs(90));
    assert_terminal_restored(&tmux);
}

/// `SIGTERM` to microrun during an `-it` run: it ends by that signal
/// (143) and the terminal is as it was.
pub fn sigterm_restores_the_terminal(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    // -v: microrun's messages thread starts before the terminal session,
    // and must not be the thread that takes the signal.
    let tmux = start(engine, &["-v"], root);
    tmux.wait_for("the guest's prompt", boot_limit(engine), |line| {
        line.starts_with(PROMPT)
    });
    let pid = tmux.microrun_pid();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    tmux.wait_line("code=143", Duration::from_secs(20));
    assert_terminal_restored(&tmux);
}

/// Ctrl-] three times within a second stops the VM: 125, and the terminal
/// is as it was. (Run with `-u 1000:100` where that needs no range, whose
/// terminal is then the user's, as login makes it.)
pub fn escape_stops_the_vm_with_125(engine: &Engine) {
    let Some(root) = prerequisites(engine) else {
        return;
    };
    // SAFETY: geteuid only returns the caller's id.
    let as_user = engine.is_vm || unsafe { libc::geteuid() } == 0;
    let options: &[&str] = if as_user { &["-u", "1000:100"] } else { &[] };
    let tmux = start(engine, options, root);
    tmux.wait_for("the guest's prompt", boot_limit(engine), |line| {
        line.starts_with(PROMPT)
    });
    if as_user {
        tmux.line("echo O1 $(stat -c %u:%g $(tty))");
        tmux.wait_line("O1 1000:100", Duration::from_secs(30));
    }
    tmux.line("sleep 600");
    tmux.keys(&["C-]", "C-]", "C-]"]);
    tmux.wait_line("code=125", Duration::from_secs(20));
    let screen = tmux.screen();
    assert!(
        screen.contains("Ctrl-] pressed three times: the VM was stopped"),
        "{screen}"
    );
    assert_terminal_restored(&tmux);
}
