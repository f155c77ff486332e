//! The `-u/--user` cases shared by every engine, on a copy of the `libs`
//! rootfs with its own `/etc/passwd` and `/etc/group` (never the host's):
//!
//! | user | uid | primary group | member of |
//! | --- | --- | --- | --- |
//! | `root` | 0 | `root` (0) | `wheel` |
//! | `builder` | 1000 | `users` (100) | `wheel` (10), `staff` (50) |
//!
//! A test file expands [`user_cases!`] with its engine.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{assert_code, microrun, prerequisites, stderr, stdout, Engine};
use test_support::skip_not_applicable;

/// Expands to one `#[test]` per `-u` case, run with `$engine`.
#[macro_export]
macro_rules! user_cases {
    ($engine:expr) => {
        #[test]
        fn user_by_name_gets_its_ids_groups_and_home() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::user_by_name_gets_its_ids_groups_and_home"
                ),
                common::user::by_name,
            );
        }
        #[test]
        fn user_by_number_is_taken_as_it_is() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::user_by_number_is_taken_as_it_is"),
                common::user::by_number,
            );
        }
        #[test]
        fn user_with_a_group() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::user_with_a_group"),
                common::user::with_a_group,
            );
        }
        #[test]
        fn unknown_user_or_group_gives_125_naming_the_file() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::unknown_user_or_group_gives_125_naming_the_file"
                ),
                common::user::unknown,
            );
        }
        #[test]
        fn user_runs_without_capabilities() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::user_runs_without_capabilities"),
                common::user::no_capabilities,
            );
        }
        #[test]
        fn users_files_on_a_share_belong_to_the_invoking_user() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::users_files_on_a_share_belong_to_the_invoking_user"
                ),
                common::user::share_files,
            );
        }
    };
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      builder:x:1000:100:Builder:/home/builder:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:root,builder\nstaff:x:50:builder\nusers:x:100:\n";
/// Applets the cases use, besides the libs rootfs's.
const APPLETS: [&str; 6] = ["id", "grep", "touch", "stat", "sort", "tr"];
/// Prints uid, gid, the groups (sorted: their order is the kernel's,
/// which sorts host ids) and the user's environment, one per line.
const PROBE: &str = "id -u; id -g; id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' '; echo; \
                     echo \"$HOME $USER $LOGNAME\"";

/// The rootfs of the cases: the libs rootfs's files with the users above,
/// made once per test binary.
fn user_rootfs(engine: &Engine) -> Option<&'static Path> {
    let libs = prerequisites(engine)?;
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    Some(ROOTFS.get_or_init(|| {
        let root = super::libs_copy(libs, "user", &APPLETS);
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        fs::write(root.join("etc/group"), GROUP).unwrap();
        root
    }))
}

/// Runs the probe as `user` and returns its lines.
fn probe(engine: &Engine, root: &Path, user: &str) -> Vec<String> {
    let output = microrun(engine, &["-u", user], root, &["sh", "-c", PROBE]);
    assert_code(&output, 0);
    stdout(&output)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// `-u builder`: its uid, primary group, memberships and home from the
/// rootfs's files; `-u root` stays root, with root's groups.
pub fn by_name(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    assert_eq!(
        probe(engine, root, "builder"),
        ["1000", "100", "10 50 100", "/home/builder builder builder"]
    );
    assert_eq!(
        probe(engine, root, "root"),
        ["0", "0", "0 10", "/root root root"]
    );
}

/// `-u 1000` finds builder's entry; `-u 4242` has none: group 0, home /,
/// and the number as its name.
pub fn by_number(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    assert_eq!(
        probe(engine, root, "1000"),
        ["1000", "100", "10 50 100", "/home/builder builder builder"]
    );
    assert_eq!(
        probe(engine, root, "4242"),
        ["4242", "0", "0", "/ 4242 4242"]
    );
}

/// `:GROUP` replaces the primary group, by name or number; the user's
/// memberships stay.
pub fn with_a_group(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    assert_eq!(
        probe(engine, root, "builder:staff"),
        ["1000", "50", "10 50", "/home/builder builder builder"]
    );
    assert_eq!(
        probe(engine, root, "4242:77"),
        ["4242", "77", "77", "/ 4242 4242"]
    );
}

/// An unknown name fails the run with 125, naming it and the file looked
/// in; the program never starts.
pub fn unknown(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    for (user, name, file) in [
        ("ghost", "ghost", "/etc/passwd"),
        ("builder:nogroup", "nogroup", "/etc/group"),
    ] {
        let output = microrun(engine, &["-u", user], root, &["echo", "ran"]);
        assert_code(&output, 125);
        assert_eq!(stdout(&output), "");
        let err = stderr(&output);
        assert!(err.contains(name) && err.contains(file), "{user}: {err}");
    }
}

/// The user's process has no capabilities in any set.
pub fn no_capabilities(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    let output = microrun(
        engine,
        &["-u", "builder"],
        root,
        &["grep", "^Cap[IPEA]", "/proc/self/status"],
    );
    assert_code(&output, 0);
    let caps = stdout(&output);
    assert_eq!(caps.lines().count(), 4, "{caps}");
    for line in caps.lines() {
        assert!(line.ends_with("0000000000000000"), "{caps}");
    }
}

/// What the user writes to a `--bind` share belongs to the user who ran
/// microrun. Inside, the kvm and chroot engines show the invoking user's
/// files as the guest user's (so it can write to the share); QEMU's 9p
/// server has no id map: it shows the host's owners, and the user writes
/// only where the host's modes let anyone (docs/shares.md).
pub fn share_files(engine: &Engine) {
    if let Some(why) = engine.no_shares {
        skip_not_applicable!("{}: {why}", engine.name);
        return;
    }
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let qemu = engine.name.starts_with("qemu");
    if qemu {
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let bind = format!("{}:/out", out.display());
    let output = microrun(
        engine,
        &["-u", "builder", "--bind", &bind],
        root,
        &["sh", "-c", "echo made > /out/made && stat -c %u:%g /out"],
    );
    assert_code(&output, 0);
    // SAFETY: these calls only return the caller's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let inside = if qemu {
        format!("{uid}:{gid}\n")
    } else {
        "1000:100\n".to_string()
    };
    assert_eq!(stdout(&output), inside);
    let made = fs::metadata(out.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (uid, gid));
    assert_eq!(fs::read(out.join("made")).unwrap(), b"made\n");
}

/// An ordinary user of this host with a range in `/etc/subuid` and
/// `/etc/subgid`: (name, uid, gid).
pub fn user_with_a_range() -> Option<(String, u32, u32)> {
    let subuid = fs::read_to_string("/etc/subuid").ok()?;
    let subgid = fs::read_to_string("/etc/subgid").ok()?;
    subuid.lines().find_map(|line| {
        let name = line.split(':').next()?;
        subgid
            .lines()
            .any(|g| g.split(':').next() == Some(name))
            .then_some(())?;
        let (uid, gid) = host_ids(name)?;
        (uid != 0).then(|| (name.to_string(), uid, gid))
    })
}

/// A host user's uid and gid (`getent passwd`).
fn host_ids(name: &str) -> Option<(u32, u32)> {
    let out = std::process::Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = line.trim().split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Runs microrun (chroot engine) as the host user `uid`:`gid`: through
/// `setpriv` when this process is root, directly when it is that user;
/// `None` otherwise.
pub fn microrun_as(
    uid: u32,
    gid: u32,
    options: &[&str],
    root: &Path,
    cmd: &[&str],
) -> Option<std::process::Output> {
    // SAFETY: geteuid only returns the caller's id.
    let me = unsafe { libc::geteuid() };
    let mut command = if me == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_microrun"));
        c
    } else if me == uid {
        std::process::Command::new(env!("CARGO_BIN_EXE_microrun"))
    } else {
        return None;
    };
    command
        .current_dir("/")
        .args(["--engine", "chroot", "--timeout", "120s"])
        .args(options)
        .arg(root)
        .arg("--")
        .args(cmd);
    Some(command.output().expect("run microrun"))
}

/// As an ordinary user, the chroot engine maps the user's subordinate
/// range (newuidmap, newgidmap): the guest user is that user, so a
/// share's files are its own both ways.
pub fn unprivileged_with_a_range(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    let Some((name, uid, gid)) = user_with_a_range() else {
        test_support::skip_unavailable!(
            "no ordinary user with a range in /etc/subuid and /etc/subgid: add one with \
             `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(uid), Some(gid)).unwrap();
    let bind = format!("{}:/out", out.display());
    let script = format!("{PROBE}; echo made > /out/made && stat -c %u /out");
    let Some(output) = microrun_as(
        uid,
        gid,
        &["-u", "builder", "--bind", &bind],
        root,
        &["sh", "-c", &script],
    ) else {
        test_support::skip_unavailable!("{name} is not this process's user, and this is not root");
        return;
    };
    assert_code(&output, 0);
    let lines: Vec<String> = stdout(&output)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "1000",
            "100",
            "10 50 100",
            "/home/builder builder builder",
            "1000"
        ],
        "as {name}"
    );
    let made = fs::metadata(out.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (uid, gid), "as {name}");
}

/// As an ordinary user without a subordinate range, `-u` fails with 125,
/// saying so and how to add one.
pub fn unprivileged_without_a_range(engine: &Engine) {
    let Some(root) = user_rootfs(engine) else {
        return;
    };
    // nobody has no range, unless this host gave it one.
    let Some((uid, gid)) = host_ids("nobody") else {
        test_support::skip_unavailable!("this host has no user nobody");
        return;
    };
    let has_range = fs::read_to_string("/etc/subuid").is_ok_and(|t| {
        t.lines()
            .any(|l| l.starts_with("nobody:") || l.starts_with(&format!("{uid}:")))
    });
    if has_range {
        test_support::skip_unavailable!("nobody has a range in /etc/subuid on this host");
        return;
    }
    let Some(output) = microrun_as(uid, gid, &["-u", "builder"], root, &["echo", "ran"]) else {
        test_support::skip_unavailable!("runs as nobody, which needs root");
        return;
    };
    assert_code(&output, 125);
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    assert!(
        err.contains("/etc/subuid") && err.contains("nobody"),
        "{err}"
    );
    assert!(err.contains("usermod --add-subuids"), "{err}");
}
