//! End-to-end tests of `--engine chroot`: the shared cases, then what is
//! particular to running without a VM (cpio rootfs, nothing written to the
//! user's directory, nothing left running, `--no-init` refused).

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{assert_code, microrun, stderr, stdout, Engine};
use test_support::skip_unavailable;

const ENGINE: Engine = Engine {
    name: "chroot",
    args: &["--engine", "chroot"],
    env: &[],
    is_vm: false,
    unavailable: user_namespaces_unavailable,
    kernel: common::no_kernel,
    nested: false,
    no_stdin_eof: None,
    slow_stdout: None,
    no_shares: None,
};

/// The chroot engine needs user namespaces; `sysctl user.max_user_namespaces=0`
/// turns them off.
fn user_namespaces_unavailable() -> Option<String> {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").ok()?;
    (max.trim() == "0").then(|| {
        "user namespaces are disabled (user.max_user_namespaces=0): \
         sysctl -w user.max_user_namespaces=10000"
            .to_string()
    })
}

e2e_cases!(ENGINE);
user_cases!(ENGINE);

/// `-u` as an ordinary user with a subordinate range: mapped through
/// newuidmap and newgidmap, the share's files that user's.
#[test]
fn user_as_an_ordinary_user_with_a_range() {
    common::user::unprivileged_with_a_range(&ENGINE);
}

/// `-u` as an ordinary user without a range: 125, and how to add one.
#[test]
fn user_as_an_ordinary_user_without_a_range() {
    common::user::unprivileged_without_a_range(&ENGINE);
}
tty_cases!(ENGINE);
net_cases!(ENGINE);

/// `--net --net-host` as an ordinary user: pasta runs as that user.
#[test]
fn net_as_an_ordinary_user() {
    common::net::fetch_as_an_ordinary_user(&ENGINE);
}

/// The shared rootfs, or `None` after printing why the test is skipped.
fn rootfs() -> Option<&'static Path> {
    if let Some(why) = user_namespaces_unavailable() {
        skip_unavailable!("{why}");
        return None;
    }
    match common::libs_rootfs() {
        Ok(root) => Some(root),
        Err(why) => {
            skip_unavailable!("cannot build the libs rootfs: {why}");
            None
        }
    }
}

/// Every path under `dir`, with its size and mode, to compare before and
/// after a run.
fn listing(dir: &Path) -> Vec<(String, u64, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((
                entry.path().display().to_string(),
                meta.len(),
                meta.permissions().mode(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn cpio_rootfs_runs() {
    let Some(root) = rootfs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("libs.cpio");
    let packed = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .arg("pack")
        .arg(root)
        .arg("-o")
        .arg(&archive)
        .output()
        .unwrap();
    assert_code(&packed, 0);
    let output = microrun(&ENGINE, &[], &archive, &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "Hello, world!\n");
    // Writing works in the extracted copy, and /tmp (present in this
    // rootfs, which keeps hello under its host path) is writable too.
    let output = microrun(
        &ENGINE,
        &[],
        &archive,
        &[
            "sh",
            "-c",
            "echo x > /new && echo y > /tmp/new && cat /new /tmp/new",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "x\ny\n");
}

#[test]
fn the_rootfs_directory_is_never_written() {
    let Some(root) = rootfs() else { return };
    let before = listing(root);
    let script = "echo x > /written && rm /data.bin && mkdir /newdir && rm -r /bin && cat /written";
    let output = microrun(&ENGINE, &[], root, &["sh", "-c", script]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "x\n");
    assert_eq!(listing(root), before);
}

#[test]
fn the_program_is_in_its_own_pid_namespace_under_guest_init() {
    let Some(root) = rootfs() else { return };
    let output = microrun(&ENGINE, &[], root, &["cat", "/proc/1/cmdline"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "/.microrun/init\0");
}

#[test]
fn a_timeout_leaves_no_process_behind() {
    let Some(root) = rootfs() else { return };
    // A duration no other process on the machine uses, to find it by.
    let marker = format!("61.{}", std::process::id());
    let output = microrun(
        &ENGINE,
        &["--timeout", "1s"],
        root,
        &["sh", "-c", &format!("sleep {marker} & sleep {marker}")],
    );
    assert_code(&output, 124);
    let needle = format!("sleep\0{marker}\0");
    let left: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| {
            cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
        .map(|cmdline| String::from_utf8_lossy(&cmdline).into_owned())
        .collect();
    assert!(left.is_empty(), "still running after the timeout: {left:?}");
}

#[test]
fn no_init_is_refused_with_a_reason() {
    let Some(root) = rootfs() else { return };
    let output = microrun(&ENGINE, &["--no-init"], root, &[]);
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("--no-init needs a VM engine"),
        "stderr: {}",
        stderr(&output)
    );
}

/// A crafted archive (a symlink to a host directory, then a file "inside"
/// it) and a rootfs whose `.microrun` is a symlink: whatever the run does,
/// nothing is written on the host through them.
#[test]
fn symlinks_in_the_rootfs_never_lead_writes_onto_the_host() {
    let Some(root) = rootfs() else { return };
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    let pack = |dir: &Path, out: &Path| {
        let packed = Command::new(env!("CARGO_BIN_EXE_microrun"))
            .arg("pack")
            .arg(dir)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert_code(&packed, 0);
    };
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    std::os::unix::fs::symlink(outside.join("x"), a.join("x")).unwrap();
    fs::create_dir_all(b.join("x")).unwrap();
    fs::write(b.join("x/pwned"), "pwned\n").unwrap();
    fs::create_dir_all(outside.join("x")).unwrap();
    pack(&a, &work.path().join("a.cpio"));
    pack(&b, &work.path().join("b.cpio"));
    pack(root, &work.path().join("libs.cpio"));
    let mut evil = Vec::new();
    for part in ["a.cpio", "b.cpio", "libs.cpio"] {
        evil.extend(fs::read(work.path().join(part)).unwrap());
    }
    let evil_path = work.path().join("evil.cpio");
    fs::write(&evil_path, evil).unwrap();
    let _ = microrun(&ENGINE, &[], &evil_path, &[]);
    assert!(
        !outside.join("x/pwned").exists(),
        "an archive member was written on the host"
    );

    let copy = work.path().join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(root)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink(outside.join("m"), copy.join(".microrun")).unwrap();
    fs::create_dir_all(outside.join("m")).unwrap();
    let output = microrun(&ENGINE, &[], &copy, &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "Hello, world!\n");
    assert_eq!(
        fs::read_dir(outside.join("m")).unwrap().count(),
        0,
        "guest-init was written on the host"
    );
}

/// Root running the program as root (`-u 0`, or an image's `User: root`)
/// maps root alone, as without `-u`: another user's 0600 file in a share
/// stays out of reach (with every id mapped, namespace root's
/// CAP_DAC_OVERRIDE reached it).
#[test]
fn root_as_root_cannot_read_another_users_file_in_a_share() {
    if let Some(why) = user_namespaces_unavailable() {
        skip_unavailable!("chroot engine: {why}");
        return;
    }
    // SAFETY: geteuid only returns the caller's id.
    if unsafe { libc::geteuid() } != 0 {
        test_support::skip_not_applicable!("the case is root's: an ordinary user maps no other id");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let share = tempfile::tempdir().unwrap();
    let secret = share.path().join("secret");
    fs::write(&secret, "topsecret\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(4321), Some(4321)).unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bind = format!("{}:/s", share.path().display());
    let output = microrun(
        &ENGINE,
        &["-u", "0", "--bind", &bind],
        root,
        &["cat", "/s/secret"],
    );
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("Permission denied"),
        "{}",
        stderr(&output)
    );
}

/// The program gets SIGPIPE's default action, as in a VM: a writer whose
/// reader has gone ends quietly (Rust's runtime ignores SIGPIPE, and exec
/// keeps an ignored signal ignored).
#[test]
fn a_writer_whose_reader_has_gone_ends_quietly() {
    if let Some(why) = user_namespaces_unavailable() {
        skip_unavailable!("chroot engine: {why}");
        return;
    }
    let root = common::libs_rootfs().expect("libs rootfs");
    let output = microrun(
        &ENGINE,
        &[],
        root,
        &["sh", "-c", "busybox yes | busybox head -n 1"],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "y\n");
    assert_eq!(stderr(&output), "", "no broken-pipe error");
}
