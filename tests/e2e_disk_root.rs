//! The disk root (`--root disk`, issue 25) under the qemu engine (TCG)
//! with Debian's kernel, whose virtio-blk, EROFS and overlayfs drivers are
//! modules that guest-init loads: the rootfs's EROFS image on a read-only
//! virtio-blk disk under a tmpfs overlay. A write in one run is gone in the
//! next, and an image larger than the guest's memory runs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::skip_unavailable;

/// Larger than the guest's memory (`--mem 256M`).
const BIG: u64 = 320 << 20;

/// A busybox rootfs with `/etc/file` and a file of [`BIG`] bytes that
/// ends in `THE-END`.
fn rootfs(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "tail"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("etc/file"), b"original\n").unwrap();
    common::disk_root::write_big(&root.join("big"), BIG);
    root
}

fn run(cache: &Path, kernel: &Path, root: &Path, script: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microrun"))
        .env_remove("MICRORUN_IRQCHIP")
        .env("XDG_CACHE_HOME", cache)
        .args(["--engine", "qemu", "--root", "disk", "--mem", "256M"])
        .args(["--timeout", "300s", "--kernel"])
        .arg(kernel)
        .arg(root)
        .args(["--", "sh", "-c", script])
        .output()
        .expect("run microrun")
}

#[test]
fn writes_vanish_with_the_vm_and_an_image_larger_than_memory_runs() {
    let Some(kernel) = common::qemu_with_debian_kernel() else {
        return;
    };
    let busybox = match common::host_busybox() {
        Ok(path) => path,
        Err(why) => {
            skip_unavailable!("{why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path(), &busybox);
    let cache = dir.path().join("cache");
    let first = run(
        &cache,
        &kernel,
        &root,
        "cat /etc/file; echo changed > /etc/file; echo new > /new; cat /etc/file /new; \
         tail -c 8 /big",
    );
    common::assert_code(&first, 0);
    assert_eq!(common::stdout(&first), "original\nchanged\nnew\nTHE-END\n");
    // The image is in the (private) cache, larger than the guest memory.
    let image = fs::read_dir(cache.join("microrun/initrd"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
        .expect("the EROFS image in the cache");
    assert!(image.metadata().unwrap().len() > 256 << 20);
    let second = run(
        &cache,
        &kernel,
        &root,
        "cat /etc/file; cat /new 2>/dev/null || echo gone",
    );
    common::assert_code(&second, 0);
    assert_eq!(common::stdout(&second), "original\ngone\n");
}
