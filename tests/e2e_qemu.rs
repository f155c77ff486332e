//! The full guest path on every CI run: the shared end-to-end cases through
//! `--engine qemu` (TCG where KVM cannot run Linux), booting the project
//! kernel from `scripts/build-kernel` with microrun's initrd and guest-init.

#[macro_use]
mod common;

use std::path::PathBuf;

use common::Engine;
use test_support::skip_unavailable;

const ENGINE: Engine = Engine {
    name: "qemu",
    args: &["--engine", "qemu"],
    env: &[],
    is_vm: true,
    unavailable: qemu_unavailable,
    kernel: common::project_kernel,
    nested: false,
    no_stdin_eof: None,
    slow_stdout: None,
    no_shares: None,
};

fn qemu_unavailable() -> Option<String> {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("qemu-system-x86_64").is_file())
    });
    if !found {
        return Some(
            "qemu-system-x86_64 is not installed (scripts/install-deps installs it)".into(),
        );
    }
    if common::project_kernel().is_none() {
        return Some("the project kernel is not built: run scripts/build-kernel".into());
    }
    None
}

e2e_cases!(ENGINE);
tty_cases!(ENGINE);

/// The kernel's command line carries `--cmdline`, and microrun's own
/// arguments come first.
#[test]
fn cmdline_reaches_the_guest_kernel() {
    if let Some(why) = qemu_unavailable() {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let output = common::microrun(
        &ENGINE,
        &["--cmdline", "microrun.test=42"],
        root,
        &["cat", "/proc/cmdline"],
    );
    common::assert_code(&output, 0);
    let cmdline = common::stdout(&output);
    assert!(cmdline.starts_with("console=ttyS0 "), "{cmdline}");
    // QEMU's microvm appends the virtio-mmio devices it has after it all.
    let ours: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|arg| !arg.starts_with("virtio_mmio.device="))
        .collect();
    assert_eq!(ours.last(), Some(&"microrun.test=42"), "{cmdline}");
}

/// A kernel that is not one: QEMU refuses it and microrun says so (125).
#[test]
fn qemu_failing_to_start_shows_its_stderr() {
    if let Some(why) = qemu_unavailable() {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bogus: PathBuf = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let root = common::libs_rootfs().expect("libs rootfs");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_microrun"))
        .args(["--engine", "qemu", "--timeout", "60s", "--kernel"])
        .arg(&bogus)
        .arg(root)
        .output()
        .unwrap();
    common::assert_code(&output, 125);
    let err = common::stderr(&output);
    assert!(err.contains("QEMU"), "{err}");
}

/// Without QEMU on the PATH the error names the package to install (125).
#[test]
fn missing_qemu_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("file"), b"x").unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, b"not looked at before QEMU starts").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_microrun"))
        .env("PATH", dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args(["--engine", "qemu", "--kernel"])
        .arg(&kernel)
        .arg(&root)
        .output()
        .unwrap();
    common::assert_code(&output, 125);
    let err = common::stderr(&output);
    assert!(err.contains("qemu-system-x86"), "{err}");
}

/// Output QEMU still holds when the program ends reaches stdout before
/// microrun exits: with a reader that starts only after 3 s, QEMU's
/// virtio-serial keeps what the full pipe refused (up to a queue of
/// buffers) while the guest's writes have returned and its status is in.
/// guest-init's `@sent` counts make microrun wait for it (without them,
/// only 1,376,256 of the 16 MiB arrived here).
#[test]
fn output_qemu_still_holds_at_the_status_reaches_a_late_reader() {
    use std::io::Read;
    if let Some(why) = qemu_unavailable() {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let script = "i=0; while [ $i -lt 16 ]; do cat /data.bin; i=$((i + 1)); done; exit 3";
    let mut child = common::microrun_command(&ENGINE, &[], root, &["sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn microrun");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut got = Vec::new();
    stdout.read_to_end(&mut got).unwrap();
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap();
    assert_eq!(status.code(), Some(3), "stderr: {errors}");
    common::assert_same_bytes(&got, &common::binary_data().repeat(16));
}
