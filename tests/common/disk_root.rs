//! The disk root (`--root disk`, issue 25) in each VM engine, on a copy of
//! the `libs` rootfs with a 1 GiB file, four times the guest's memory
//! (`--mem 256M`; issue 25's "a 1 GiB image running with --mem 256M in
//! the lane and under the qemu engine"): the
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

/// The guest's memory, and a file four times larger (issue 25: "a 1 GiB
/// image running with --mem 256M"; the image is larger still). In the
/// nested lane the tree and its image both sit in the outer VM's root, a
/// tmpfs of half its memory: the lane's outer VM is sized for them
/// (`nested::OUTER_MEM`).
const MEM: &str = "256M";
const MEM_BYTES: u64 = 256 << 20;
const BIG: u64 = 1 << 30;
const _: () = assert!(BIG >= 4 * MEM_BYTES);
/// What the case writes where the tree and the cache live: the tree (the
/// big file and the libs copy) and its EROFS image, with room to spare.
const SPACE_NEEDED: u64 = 2 * BIG + (128 << 20);
/// The first run writes the EROFS image (1 GiB) before it boots, which
/// takes about a minute in the nested lane (its tmpfs copy runs under
/// TCG), and `--timeout` counts from microrun's start.
const TIMEOUT: &str = "600s";

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
    // The tree and the cache go beside each other: in the lane, into the
    // outer VM's root tmpfs; on the host, into target/tmp. What an earlier
    // run left there goes first.
    let root = super::libs_copy_path("disk-root");
    let cache = root.with_extension("cache");
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_dir_all(&cache);
    let base = super::libs_copy_dir();
    let free = free_bytes(&base);
    eprintln!(
        "disk root case: {} MiB free in {}, {} MiB needed",
        free >> 20,
        base.display(),
        SPACE_NEEDED >> 20
    );
    assert!(
        free >= SPACE_NEEDED,
        "{} has {} MiB free, and the case writes a {} MiB tree and its image there \
         (in the nested lane: raise nested::OUTER_MEM, the outer root is a tmpfs of half \
         its memory)",
        base.display(),
        free >> 20,
        BIG >> 20
    );
    let started = std::time::Instant::now();
    assert_eq!(big_rootfs(libs), root);
    eprintln!(
        "disk root case: the tree took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let run = |script: &str| {
        let started = std::time::Instant::now();
        let output = microrun_command(
            engine,
            &["--root", "disk", "--mem", MEM, "--timeout", TIMEOUT],
            &root,
            &["sh", "-c", script],
        )
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .expect("run microrun");
        eprintln!(
            "disk root case: a run took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        output
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
    let image_len = image.metadata().unwrap().len();
    assert!(
        image_len > BIG,
        "the EROFS image is {image_len} bytes, not more than the big file ({BIG}, four \
         times the guest's memory)"
    );
    let second = run("cat /etc/file; cat /new 2>/dev/null || echo gone; tail -c 8 /big");
    assert_code(&second, 0);
    assert_eq!(stdout(&second), "original\ngone\nTHE-END\n");
    let _ = fs::remove_dir_all(&cache);
    let _ = fs::remove_dir_all(&root);
}

/// Bytes free for an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain integers, for which all zeroes is a value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills in.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(
        rc,
        0,
        "statvfs {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    stat.f_bavail as u64 * stat.f_frsize as u64
}
