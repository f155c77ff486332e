//! The image cases shared by `e2e_image` (chroot and qemu engines) and
//! `e2e_image_kvm` (the kvm engine, in the nested lane where this host's
//! KVM cannot run Linux): images built here (a static busybox in a base
//! layer, a second layer with whiteouts, hard links, a device node and
//! owners), in every format, run with their config's defaults.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use test_support::skip_unavailable;

use crate::common::{self, assert_code, stderr, stdout};
use crate::images::*;

pub const APPLETS: [&str; 8] = ["sh", "cat", "echo", "ls", "stat", "pwd", "test", "id"];

/// The kvm engine for image cases: here on hardware KVM, else in the
/// nested lane (one outer VM per test binary).
pub const KVM: common::Engine = common::Engine {
    name: "kvm",
    args: &["--engine", "kvm"],
    env: &[],
    is_vm: true,
    unavailable: || unavailable("kvm"),
    kernel: common::project_kernel,
    nested: true,
    no_stdin_eof: None,
    slow_stdout: None,
    no_shares: None,
};

/// Why an engine cannot run here, if it cannot.
pub fn unavailable(engine: &str) -> Option<String> {
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (install busybox-static; scripts/install-deps)".into());
    }
    match engine {
        "chroot" => {
            let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok()?;
            (max.trim() == "0").then(|| {
                "user namespaces are disabled (sysctl -w user.max_user_namespaces=10000)"
                    .to_string()
            })
        }
        // Inside the nested lane or on hardware KVM (the kvm engine's own
        // binary routes the cases there).
        "kvm" => common::project_kernel()
            .is_none()
            .then(|| "the project kernel is not built: run scripts/build-kernel".to_string()),
        _ => {
            let found = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
            });
            if !found {
                return Some("qemu-system-x86_64 is not installed (scripts/install-deps)".into());
            }
            common::project_kernel()
                .is_none()
                .then(|| "the project kernel is not built: run scripts/build-kernel".to_string())
        }
    }
}

/// The base layer: busybox and its applets, /etc, /tmp.
pub fn base_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox");
    let mut entries = vec![
        dir("./"),
        dir("bin"),
        file("bin/busybox", &busybox).mode(0o755),
        dir("etc"),
        file("etc/layer", b"one\n"),
        file("etc/removed", b"x\n"),
        dir("tmp").mode(0o1777),
        dir("opt"),
        file("opt/old", b"old\n"),
    ];
    for applet in APPLETS {
        entries.push(symlink(&format!("bin/{applet}"), "busybox"));
    }
    layer_tar(&entries)
}

pub fn second_layer() -> Vec<u8> {
    layer_tar(&[
        file("etc/layer", b"two\n"),
        whiteout("etc/removed"),
        dir("opt"),
        opaque("opt"),
        file("opt/new", b"new\n"),
        hard_link("etc/layer-link", "etc/layer"),
        dir("nodes"),
        char_dev("nodes/null", 1, 3),
        file("owned", b"mine\n").owner(1000, 1001),
    ])
}

pub fn spec(compressions: [Compression; 2]) -> ImageSpec {
    ImageSpec::new(
        vec![
            (base_layer(), compressions[0]),
            (second_layer(), compressions[1]),
        ],
        json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"$GREETING from $(pwd)\"; cat /etc/layer"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/srv/app",
            "User": "1000",
        }),
    )
}

/// The image in each format, written under `dir`.
pub fn all_formats(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let gz_zst = spec([Compression::Gzip, Compression::Zstd]);
    let plain = spec([Compression::None, Compression::None]);
    let layout = dir.join("oci-layout");
    oci_layout(&gz_zst).write_to(&layout);
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    vec![
        ("OCI layout", layout),
        ("OCI archive", write("oci.tar", oci_layout(&gz_zst).tar())),
        (
            "docker-archive",
            write("legacy.tar", docker_legacy(&plain).tar()),
        ),
        (
            "docker-archive 25+",
            write("docker25.tar", docker_25(&plain).tar()),
        ),
    ]
}

/// Runs microrun with `engine` on `rootfs`, its cache in `cache`.
pub fn microrun(
    engine: &str,
    cache: &Path,
    options: &[&str],
    rootfs: &Path,
    cmd: &[&str],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microrun"));
    command
        .env("XDG_CACHE_HOME", cache)
        .env_remove("MICRORUN_IRQCHIP")
        .args(["--engine", engine, "--timeout", "120s"])
        .args(options);
    if engine != "chroot" {
        command
            .arg("--kernel")
            .arg(common::project_kernel().unwrap());
    }
    command.arg(rootfs);
    if !cmd.is_empty() {
        command.arg("--").args(cmd);
    }
    command.output().expect("run microrun")
}

/// What the merged layers look like from inside, per engine.
pub const PROBE: &str = "cat /etc/layer /etc/layer-link /opt/new; \
    ls /opt; test -e /etc/removed || echo removed-is-gone; \
    stat -c '%h %u:%g' /etc/layer /owned; \
    if test -e /nodes/null; then stat -c '%F %t:%T' /nodes/null; else echo no-node; fi";

pub fn expected_probe(engine: &str) -> String {
    let (owner, node) = match engine {
        // The image's User (1000) gives the namespace a range of ids, so
        // the owners are kept; it cannot make devices.
        "chroot" => ("1000:1001", "no-node"),
        _ => ("1000:1001", "character special file 1:3"),
    };
    format!("two\ntwo\nnew\nnew\nremoved-is-gone\n2 0:0\n1 {owner}\n{node}\n")
}

pub fn every_format_runs_with_its_defaults(engine: &str) {
    if let Some(why) = unavailable(engine) {
        skip_unavailable!("{engine} engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    for (format, path) in all_formats(work.path()) {
        // Each VM run boots a kernel (under TCG here, for qemu): two
        // formats there, the chroot engine takes all four.
        if engine != "chroot" && !matches!(format, "OCI layout" | "docker-archive") {
            continue;
        }
        let output = microrun(engine, &cache, &[], &path, &[]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "hello from /srv/app\ntwo\n", "{format}");
        if engine == "chroot" || format == "OCI layout" {
            let output = microrun(engine, &cache, &[], &path, &[PROBE]);
            assert_code(&output, 0);
            assert_eq!(stdout(&output), expected_probe(engine), "{format}");
        }
    }
}

/// `-- CMD` replaces Cmd and keeps the Entrypoint; `-e` and `-w` win.
pub fn the_command_line_overrides_as_docker_run_does(engine: &str) {
    if let Some(why) = unavailable(engine) {
        skip_unavailable!("{engine} engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = work.path().join("image.tar");
    std::fs::write(&image, docker_legacy(&spec([Compression::None; 2])).tar()).unwrap();
    // -v for microrun's account of the image; in a VM the kernel's own log
    // stays quiet (it is slow through the 16550 under TCG and the lane).
    let mut options = vec!["-e", "GREETING=bye", "-w", "/tmp", "-v"];
    if engine != "chroot" {
        options.extend(["--cmdline", "quiet loglevel=1"]);
    }
    let output = microrun(
        engine,
        &cache,
        &options,
        &image,
        &["echo \"$GREETING from $(pwd) with $PATH\""],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "bye from /tmp with /bin\n");
    let err = stderr(&output);
    assert!(
        err.contains("the command runs as 1000 (the image's User"),
        "{err}"
    );
    assert!(err.contains("docker-archive"), "{err}");
}

/// The image's `User` (1000, without an entry in its /etc/passwd: group
/// 0) is who the command runs as, as in docker; `-u` wins.
pub fn the_image_user_is_the_default_and_u_wins(engine: &str) {
    if let Some(why) = unavailable(engine) {
        skip_unavailable!("{engine} engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = work.path().join("image.tar");
    std::fs::write(&image, docker_legacy(&spec([Compression::None; 2])).tar()).unwrap();
    let ids = "id -u; id -g; echo $HOME";
    let output = microrun(engine, &cache, &[], &image, &[ids]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "1000\n0\n/\n");
    let output = microrun(engine, &cache, &["-u", "0:7"], &image, &[ids]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "0\n7\n/\n");
}
