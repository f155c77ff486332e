//! Images as ROOTFS, end to end: images built here (a static busybox in a
//! base layer, a second layer with whiteouts, hard links, a device node and
//! owners), in every format, run through `--engine chroot` and `--engine
//! qemu` (TCG where KVM cannot run Linux), with their config's defaults.

#[macro_use]
mod common;
#[path = "../initrd-tools/tests/images/mod.rs"]
mod images;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_code, stderr, stdout};
use images::*;
use serde_json::json;

const APPLETS: [&str; 7] = ["sh", "cat", "echo", "ls", "stat", "pwd", "test"];

/// Why an engine cannot run here, if it cannot.
fn unavailable(engine: &str) -> Option<String> {
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (install busybox-static)".into());
    }
    match engine {
        "chroot" => {
            let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok()?;
            (max.trim() == "0").then(|| "user namespaces are disabled".to_string())
        }
        _ => {
            let found = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
            });
            if !found {
                return Some("qemu-system-x86_64 is not installed".into());
            }
            common::project_kernel()
                .is_none()
                .then(|| "the project kernel is not built: run scripts/build-kernel".to_string())
        }
    }
}

/// The base layer: busybox and its applets, /etc, /tmp.
fn base_layer() -> Vec<u8> {
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

fn second_layer() -> Vec<u8> {
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

fn spec(compressions: [Compression; 2]) -> ImageSpec {
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
fn all_formats(dir: &Path) -> Vec<(&'static str, PathBuf)> {
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
fn microrun(engine: &str, cache: &Path, options: &[&str], rootfs: &Path, cmd: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microrun"));
    command
        .env("XDG_CACHE_HOME", cache)
        .env_remove("MICRORUN_IRQCHIP")
        .args(["--engine", engine, "--timeout", "120s"])
        .args(options);
    if engine == "qemu" {
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
const PROBE: &str = "cat /etc/layer /etc/layer-link /opt/new; \
    ls /opt; test -e /etc/removed || echo removed-is-gone; \
    stat -c '%h %u:%g' /etc/layer /owned; \
    if test -e /nodes/null; then stat -c '%F %t:%T' /nodes/null; else echo no-node; fi";

fn expected_probe(engine: &str) -> String {
    let (owner, node) = match engine {
        // A rootless namespace maps only root, and cannot make devices.
        "chroot" => ("0:0", "no-node"),
        _ => ("1000:1001", "character special file 1:3"),
    };
    format!("two\ntwo\nnew\nnew\nremoved-is-gone\n2 0:0\n1 {owner}\n{node}\n")
}

fn every_format_runs_with_its_defaults(engine: &str) {
    if let Some(why) = unavailable(engine) {
        skipped!("{engine} engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    for (format, path) in all_formats(work.path()) {
        // Each QEMU run boots a kernel under TCG here: two formats there,
        // the chroot engine takes all four.
        if engine == "qemu" && !matches!(format, "OCI layout" | "docker-archive") {
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
fn the_command_line_overrides_as_docker_run_does(engine: &str) {
    if let Some(why) = unavailable(engine) {
        skipped!("{engine} engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = work.path().join("image.tar");
    std::fs::write(&image, docker_legacy(&spec([Compression::None; 2])).tar()).unwrap();
    let output = microrun(
        engine,
        &cache,
        &["-e", "GREETING=bye", "-w", "/tmp", "-v"],
        &image,
        &["echo \"$GREETING from $(pwd) with $PATH\""],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "bye from /tmp with /bin\n");
    let err = stderr(&output);
    assert!(
        err.contains("user \"1000\"") && err.contains("runs as root"),
        "{err}"
    );
    assert!(err.contains("docker-archive"), "{err}");
}

#[test]
fn chroot_every_format_runs_with_its_defaults() {
    every_format_runs_with_its_defaults("chroot");
}

#[test]
fn qemu_every_format_runs_with_its_defaults() {
    every_format_runs_with_its_defaults("qemu");
}

#[test]
fn chroot_the_command_line_overrides_as_docker_run_does() {
    the_command_line_overrides_as_docker_run_does("chroot");
}

#[test]
fn qemu_the_command_line_overrides_as_docker_run_does() {
    the_command_line_overrides_as_docker_run_does("qemu");
}

/// A rootfs tar (as `mmdebstrap` or `tar -czf` makes one) has no config:
/// the command comes from the command line; converted once, then cached.
#[test]
fn a_rootfs_tarball_runs_and_is_converted_once() {
    for engine in ["chroot", "qemu"] {
        if let Some(why) = unavailable(engine) {
            skipped!("{engine} engine: {why}");
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        let mut tar = base_layer();
        // The second layer's entries on top, as one tar (whiteouts of a
        // rootfs tar are plain files: nothing below them).
        tar.truncate(tar.len() - 1024);
        tar.extend(layer_tar(&[file("etc/layer", b"tarball\n")]));
        let formats = match engine {
            "qemu" => &[("root.tar.zst", Compression::Zstd)][..],
            _ => &[
                ("root.tar.gz", Compression::Gzip),
                ("root.tar.zst", Compression::Zstd),
            ][..],
        };
        for &(name, how) in formats {
            let path = work.path().join(name);
            std::fs::write(&path, compress(&tar, how)).unwrap();
            for run in 0..2 {
                let output = microrun(engine, &cache, &["-v"], &path, &["cat", "/etc/layer"]);
                assert_code(&output, 0);
                assert_eq!(stdout(&output), "tarball\n", "{engine} {name}");
                let converted = stderr(&output).contains("converted");
                assert_eq!(
                    converted,
                    run == 0,
                    "{engine} {name} run {run}: {}",
                    stderr(&output)
                );
            }
        }
    }
}

/// Bad images: exit 125, a message naming the file, nothing run.
#[test]
fn bad_images_fail_with_a_clear_error() {
    if let Some(why) = unavailable("chroot") {
        skipped!("chroot engine: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let plain = spec([Compression::None; 2]);

    let unknown = work.path().join("notes.tar");
    std::fs::write(&unknown, b"not an image, just text\n").unwrap();

    let compressed = work.path().join("image.tar.gz");
    std::fs::write(
        &compressed,
        compress(&docker_legacy(&plain).tar(), Compression::Gzip),
    )
    .unwrap();

    // A layer edited after the image was saved: its digest no longer
    // matches the config's diff_id.
    let mut files = docker_legacy(&plain);
    let layer = files.legacy_layer();
    let blob = files.files.get_mut(&layer).unwrap();
    let at = blob.len() / 2;
    blob[at] ^= 1;
    let tampered = work.path().join("tampered.tar");
    std::fs::write(&tampered, files.tar()).unwrap();

    let dotdot = work.path().join("dotdot.tar");
    std::fs::write(&dotdot, layer_tar(&[file("../../etc/passwd", b"x")])).unwrap();

    for (path, needles) in [
        (&unknown, vec!["notes.tar", "not a rootfs", "OCI"]),
        (
            &compressed,
            vec!["image.tar.gz", "gzip-compressed docker-archive"],
        ),
        (&tampered, vec!["tampered.tar", "layer", "digest"]),
        (&dotdot, vec!["dotdot.tar", "`..`"]),
    ] {
        let output = microrun("chroot", &cache, &[], path, &["echo", "ran"]);
        assert_code(&output, 125);
        assert_eq!(stdout(&output), "");
        let err = stderr(&output);
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}
