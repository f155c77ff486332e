//! Images as ROOTFS, end to end, through `--engine chroot` and `--engine
//! qemu` (TCG where KVM cannot run Linux): the cases of `image_cases`, a
//! rootfs tarball, and bad images. The kvm engine runs the same cases in
//! `e2e_image_kvm`.

#[macro_use]
mod common;
#[path = "image_cases/mod.rs"]
mod image_cases;
#[path = "../initrd-tools/tests/images/mod.rs"]
mod images;

use common::{assert_code, stderr, stdout};
use image_cases::*;
use images::*;
use test_support::skip_unavailable;

#[test]
fn chroot_the_image_user_is_the_default_and_u_wins() {
    the_image_user_is_the_default_and_u_wins("chroot");
}

#[test]
fn qemu_the_image_user_is_the_default_and_u_wins() {
    the_image_user_is_the_default_and_u_wins("qemu");
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
            skip_unavailable!("{engine} engine: {why}");
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        let mut tar = base_layer();
        // The second layer's entries on top, as one tar (whiteouts of a
        // rootfs tar are plain files: nothing below them).
        tar.truncate(tar.len() - 1024);
        tar.extend(layer_tar(&[file("etc/layer", b"tarball\n")]));
        // An xz tarball was once taken for an xz initrd (the kernel
        // panicked under qemu).
        let formats = match engine {
            "qemu" => &[("rootfs.tar.xz", Compression::Xz)][..],
            _ => &[
                ("root.tar.gz", Compression::Gzip),
                ("root.tar.zst", Compression::Zstd),
                ("root.tar.bz2", Compression::Bzip2),
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

/// A work directory and the cache in it, for a case of the chroot
/// engine; `None`, reported as skipped, where that engine cannot run.
fn chroot_work() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if let Some(why) = unavailable("chroot") {
        skip_unavailable!("chroot engine: {why}");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    Some((work, cache))
}

/// An image file run again unchanged is not read again (its opening is
/// looked up by the file's metadata once the file is 2 s old); rewritten,
/// it is opened, converted and run anew.
#[test]
fn an_unchanged_image_file_is_opened_once_and_a_rewritten_one_again() {
    let Some((work, cache)) = chroot_work() else {
        return;
    };
    let image = |greeting: &str| {
        let mut spec = spec([Compression::None; 2]);
        spec.config["Env"] = serde_json::json!(["PATH=/bin", format!("GREETING={greeting}")]);
        docker_legacy(&spec).tar()
    };
    let path = work.path().join("image.tar");
    std::fs::write(&path, image("hello")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for (run, greeting) in [(0, "hello"), (1, "hello"), (2, "howdy")] {
        if run == 2 {
            std::fs::write(&path, image(greeting)).unwrap();
        }
        let output = microrun("chroot", &cache, &["-v"], &path, &[]);
        assert_code(&output, 0);
        assert!(
            stdout(&output).starts_with(&format!("{greeting} from /srv/app\n")),
            "run {run}: {}",
            stdout(&output)
        );
        let err = stderr(&output);
        assert_eq!(err.contains("opened before"), run == 1, "run {run}: {err}");
        assert_eq!(err.contains("converted"), run != 1, "run {run}: {err}");
    }
}

/// Bad images: exit 125, a message naming the file, nothing run.
#[test]
fn bad_images_fail_with_a_clear_error() {
    let Some((work, cache)) = chroot_work() else {
        return;
    };
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

    // A configuration error, not a program that cannot start (126).
    let workdir = work.path().join("workdir.tar");
    let escaping = ImageSpec::new(
        vec![(base_layer(), Compression::None)],
        serde_json::json!({"Cmd": ["true"], "WorkingDir": "/srv/../.."}),
    );
    std::fs::write(&workdir, docker_legacy(&escaping).tar()).unwrap();

    for (path, needles) in [
        (&unknown, vec!["notes.tar", "not a rootfs", "OCI"]),
        (
            &compressed,
            vec!["image.tar.gz", "gzip-compressed docker-archive"],
        ),
        (&tampered, vec!["tampered.tar", "layer", "digest"]),
        (&dotdot, vec!["dotdot.tar", "`..`"]),
        (&workdir, vec!["WorkingDir", "/srv/../..", "-w"]),
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

/// The formats podman, skopeo and LXC's image server give, in the chroot
/// engine: a podman docker-archive (`<hex>.tar` layers), an OCI layout
/// holding two tags (`PATH:TAG`; without a tag, 125 and the tags), a
/// `rootfs.tar.xz`, and skopeo's `dir:` layout.
#[test]
fn chroot_podman_skopeo_and_lxc_formats_run() {
    let Some((work, cache)) = chroot_work() else {
        return;
    };
    let image = spec([Compression::Gzip, Compression::Xz]);
    let expected = "hello from /srv/app\ntwo\n";

    let podman = work.path().join("podman.tar");
    std::fs::write(
        &podman,
        docker_podman(&spec([Compression::None; 2]), false).tar(),
    )
    .unwrap();
    let dir = work.path().join("dir");
    dir_transport(&image).write_to(&dir);
    for path in [&podman, &dir] {
        let output = microrun("chroot", &cache, &[], path, &[]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), expected, "{}", path.display());
    }

    let other = ImageSpec::new(
        vec![(base_layer(), Compression::Zstd)],
        serde_json::json!({"Cmd": ["/bin/cat", "/etc/layer"]}),
    );
    let layout = work.path().join("layout");
    oci_layout_tagged(&[("1.0", &other), ("2.0", &image)]).write_to(&layout);
    let output = microrun("chroot", &cache, &[], &layout, &[]);
    assert_code(&output, 125);
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    let example = format!("microrun {}:1.0", layout.display());
    for needle in ["2 images", "1.0, 2.0", example.as_str()] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    for (tag, out) in [("1.0", "one\n"), ("2.0", expected)] {
        let tagged = std::path::PathBuf::from(format!("{}:{tag}", layout.display()));
        let output = microrun("chroot", &cache, &[], &tagged, &[]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), out, "tag {tag}");
    }

    let mut tar = base_layer();
    tar.truncate(tar.len() - 1024);
    tar.extend(layer_tar(&[file("etc/layer", b"lxc\n")]));
    let rootfs = work.path().join("rootfs.tar.xz");
    std::fs::write(&rootfs, compress(&tar, Compression::Xz)).unwrap();
    let output = microrun("chroot", &cache, &["-v"], &rootfs, &["cat", "/etc/layer"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "lxc\n");
    assert!(
        stderr(&output).contains("xz-compressed tar archive"),
        "{}",
        stderr(&output)
    );
}
