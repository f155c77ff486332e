//! The disk root (`--root disk`, issue 25) in each VM engine, on a copy of
//! the `libs` rootfs with a file larger than the guest's memory: the
//! rootfs's EROFS image on a read-only virtio-blk disk under a tmpfs
//! overlay. A write in one run is gone in the next, writes over the
//! image's own files work, and the big file reads back whole. A test file
//! expands [`disk_root_cases!`] with its engine.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{assert_code, microrun_command, prerequisites, stdout, Engine};

/// Expands to one `#[test]` per disk-root case, run with `$engine`.
#[macro_export]
macro_rules! disk_root_cases {
    ($engine:expr) => {
        #[test]
        fn disk_root_writes_vanish_and_an_image_larger_than_memory_runs() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::disk_root_writes_vanish_and_an_image_larger_than_memory_runs"
                ),
                common::disk_root::writes_vanish_and_a_big_image_runs,
            );
        }
    };
}

/// The guest's memory, and a file larger than it (the image is larger
/// still): kept small enough for the nested lane's outer VM (2 GiB) to
/// hold the tree, its image and the inner VM.
const MEM: &str = "128M";
const BIG: u64 = 160 << 20;

/// The libs copy with `/etc/file` and `/big` ([`BIG`] bytes ending in
/// `THE-END`), made once per test binary.
fn big_rootfs(libs: &Path) -> PathBuf {
    let root = super::libs_copy(libs, "disk-root", &["cat", "echo", "tail"]);
    // The libs rootfs has no /etc.
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/file"), b"original\n").unwrap();
    write_big(&root.join("big"), BIG);
    root
}

/// Writes `len` bytes (whole MiB) at `path`: a pattern of 251 byte values
/// that ends in `THE-END\n`, so a read of the tail shows the whole file is
/// there.
pub fn write_big(path: &Path, len: u64) {
    let mut big = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..(len >> 20) - 1 {
        big.write_all(&chunk).unwrap();
    }
    big.write_all(&chunk[..chunk.len() - 8]).unwrap();
    big.write_all(b"THE-END\n").unwrap();
    big.flush().unwrap();
}

/// Two runs on the disk root with a private cache: the first changes an
/// image file and creates one, the second sees neither change; the big
/// file's end reads back in both; the image in the cache is larger than
/// the guest's memory.
pub fn writes_vanish_and_a_big_image_runs(engine: &Engine) {
    let Some(libs) = prerequisites(engine) else {
        return;
    };
    let root = big_rootfs(libs);
    let cache = root.with_extension("cache");
    let _ = fs::remove_dir_all(&cache);
    let run = |script: &str| {
        microrun_command(
            engine,
            &["--root", "disk", "--mem", MEM],
            &root,
            &["sh", "-c", script],
        )
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .expect("run microrun")
    };
    let first = run(
        "cat /etc/file; echo changed > /etc/file; echo new > /new; cat /etc/file /new; \
         tail -c 8 /big",
    );
    assert_code(&first, 0);
    assert_eq!(stdout(&first), "original\nchanged\nnew\nTHE-END\n");
    let image = fs::read_dir(cache.join("microrun/initrd"))
        .expect("the cache's initrd directory")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
        .expect("the EROFS image in the cache");
    assert!(image.metadata().unwrap().len() > 128 << 20);
    let second = run("cat /etc/file; cat /new 2>/dev/null || echo gone; tail -c 8 /big");
    assert_code(&second, 0);
    assert_eq!(stdout(&second), "original\ngone\nTHE-END\n");
    let _ = fs::remove_dir_all(&cache);
    let _ = fs::remove_dir_all(&root);
}
