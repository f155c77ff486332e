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
    if !common::qemu_installed() {
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
user_cases!(ENGINE);
tty_cases!(ENGINE);
net_cases!(ENGINE);
disk_root_cases!(ENGINE);

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

/// Runs `microrun OPTIONS --kernel K ROOT` with a `PATH` that has no
/// QEMU, a dummy kernel and a one-file rootfs.
fn without_qemu_on_path(options: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("file"), b"x").unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, b"not looked at before QEMU starts").unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_microrun"))
        .env("PATH", dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args(options)
        .arg("--kernel")
        .arg(&kernel)
        .arg(&root)
        .output()
        .unwrap()
}

/// Without QEMU on the PATH the error names the package to install (125).
#[test]
fn missing_qemu_names_the_package() {
    let output = without_qemu_on_path(&["--engine", "qemu"]);
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

/// A newcomer's first run on a host whose KVM cannot run Linux (here:
/// kvm_pvm, or no /dev/kvm): no `--engine`, and the program still runs,
/// under the qemu engine, after exactly one line that says why; `-q`
/// silences the line.
#[test]
fn without_engine_a_host_whose_kvm_cannot_run_linux_gets_qemu() {
    if let Some(why) = qemu_unavailable() {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    if vmm::kvm_host() == vmm::KvmHost::Hardware {
        test_support::skip_not_applicable!("this host's KVM runs Linux: the kvm engine is chosen");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let kernel = common::project_kernel().expect("project kernel");
    let run = |quiet: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microrun"));
        if quiet {
            command.arg("-q");
        }
        command
            .args(["--timeout", "300s", "--kernel"])
            .arg(&kernel)
            .arg(root)
            .env_remove("MICRORUN_KERNEL")
            .output()
            .unwrap()
    };
    let output = run(false);
    common::assert_code(&output, 0);
    assert_eq!(common::stdout(&output), "Hello, world!\n");
    let err = common::stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one note line: {err}");
    assert!(
        lines[0].contains("using the qemu engine")
            && (lines[0].contains("/dev/kvm") || lines[0].contains("kvm_pvm")),
        "{err}"
    );
    let quiet = run(true);
    common::assert_code(&quiet, 0);
    assert_eq!(common::stderr(&quiet), "", "-q silences the note");
}

/// With neither engine usable (KVM that cannot run Linux, and no QEMU on
/// PATH), a run without `--engine` ends at once with 125 naming both fixes.
#[test]
fn without_engine_kvm_or_qemu_the_error_names_both_fixes() {
    if vmm::kvm_host() == vmm::KvmHost::Hardware {
        test_support::skip_not_applicable!("this host's KVM runs Linux: the kvm engine is chosen");
        return;
    }
    let output = without_qemu_on_path(&[]);
    common::assert_code(&output, 125);
    let err = common::stderr(&output);
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
    assert!(err.contains("/dev/kvm") || err.contains("kvm_pvm"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// What microrun's `init=/.microrun/init` relies on: a kernel whose
/// `init=` cannot be started panics (the VM ends, 125) instead of falling
/// back to the rootfs's `/sbin/init` or `/bin/sh`, which would wait on the
/// console until `--timeout`. (guest-init goes missing when the kernel
/// could unpack the initrd only in part; here both paths name a file that
/// is not there.)
#[test]
fn a_missing_init_is_a_panic_not_a_shell() {
    if let Some(why) = qemu_unavailable() {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let output = common::microrun(
        &ENGINE,
        &[
            "--timeout",
            "120s",
            "--cmdline",
            "rdinit=/absent init=/absent",
        ],
        root,
        &[],
    );
    common::assert_code(&output, 125);
    let err = common::stderr(&output);
    // Without block devices the kernel says the init= it could not start;
    // with them (the disk root's CONFIG_BLOCK) it first looks for a root
    // device, finds none and panics there. A panic either way: no shell.
    assert!(
        err.contains("Kernel panic")
            && (err.contains("Requested init /absent failed")
                || err.contains("Unable to mount root fs")),
        "{err}"
    );
}

/// Debian's kernel unpacks the initrd into a tmpfs of half the memory it
/// sees, less than the files of a 60 MiB rootfs take at the 3 x initrd +
/// 64 MiB rule (Initramfs unpacking failed: write error): the default
/// memory makes room for them, and at the old rule's memory the run ends
/// 125 saying how much to give (docs/initrd.md, "Guest memory").
#[test]
fn debian_kernel_unpacks_a_big_rootfs_at_the_default_memory() {
    let Some(kernel) = common::qemu_with_debian_kernel() else {
        return;
    };
    let libs = common::libs_rootfs().expect("libs rootfs");
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(libs)
        .arg(&root)
        .status()
        .unwrap();
    assert!(copied.success());
    // 56 MiB in one file and 2000 files of 100 bytes, each a page of
    // tmpfs: 8 MiB more unpacked than archived.
    std::fs::write(root.join("big.bin"), common::binary_data().repeat(56)).unwrap();
    std::fs::create_dir(root.join("small")).unwrap();
    for i in 0..2000 {
        std::fs::write(root.join(format!("small/{i}")), [i as u8; 100]).unwrap();
    }
    let run = |options: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_microrun"))
            .env_remove("MICRORUN_IRQCHIP")
            .env("XDG_CACHE_HOME", scratch.path().join("cache"))
            .args(["--engine", "qemu", "--timeout", "120s", "--kernel"])
            .arg(&kernel)
            .args(options)
            .arg(&root)
            .args(["--", "sh", "-c", "ls /small | wc -l; wc -c < /big.bin"])
            .output()
            .unwrap()
    };
    let output = run(&["-v"]);
    common::assert_code(&output, 0);
    assert_eq!(common::stdout(&output), "2000\n58720256\n");
    let err = common::stderr(&output);
    let memory = err
        .lines()
        .find_map(|l| l.strip_prefix("microrun: info: memory: "))
        .unwrap_or_else(|| panic!("no memory line: {err}"));
    assert!(memory.contains("tmpfs"), "{memory}");
    let default = memory.split(" MiB").next().unwrap();
    // The old rule's memory, as the line says it.
    let old = memory
        .split(" MiB = ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .unwrap_or_else(|| panic!("no 3 x rule: {memory}"));
    assert!(old.parse::<u64>().unwrap() < default.parse::<u64>().unwrap());
    let output = run(&["--mem", &format!("{old}M")]);
    common::assert_code(&output, 125);
    let err = common::stderr(&output);
    assert!(
        err.contains(&format!(
            "MiB of files) into {old} MiB of guest memory (\"Initramfs unpacking failed: write \
             error\"): give --mem {default}M"
        )),
        "{err}"
    );
}
