//! Packing real trees and reading them back with GNU cpio.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

use initrd_tools::{pack_dir, pack_dir_to, PackOptions};
use test_support::skip_unavailable;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?}: {status}");
}

/// A tree with every kind of entry the packer handles (device nodes only as
/// root).
fn make_tree(root: &Path, with_devices: bool) {
    test_support::fixtures::modes_tree(root);
    // Larger than the in-buffer threshold, odd length to exercise padding.
    let big: Vec<u8> = (0..1_234_567u32)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    for len in 1..=5 {
        fs::write(root.join(format!("pad{len}")), vec![b'x'; len]).unwrap();
    }
    std::os::unix::fs::symlink("tool", root.join("bin/relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/secret", root.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    fs::write(root.join("linked-a"), b"shared data").unwrap();
    fs::hard_link(root.join("linked-a"), root.join("bin/linked-b")).unwrap();
    fs::hard_link(root.join("linked-a"), root.join("linked-c")).unwrap();
    run(Command::new("mkfifo").arg(root.join("fifo")));
    // The socket file stays after the listener is closed.
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    if with_devices {
        fs::create_dir(root.join("dev")).unwrap();
        run(Command::new("mknod")
            .arg(root.join("dev/tty9"))
            .args(["c", "4", "9"]));
        run(Command::new("mknod")
            .arg(root.join("dev/loop300"))
            .args(["b", "7", "300"]));
        run(Command::new("mknod")
            .arg(root.join("dev/big-minor"))
            .args(["c", "511", "70000"]));
    }
}

/// What the comparison looks at for each path: type, permission bits, link
/// target, contents, device numbers.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = meta.file_type();
            let perms = meta.mode() & 0o7777;
            let what = if ft.is_dir() {
                stack.push(path.clone());
                format!("dir {perms:o}")
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                let data = fs::read(&path).unwrap();
                format!("file {perms:o} {} bytes {:x}", data.len(), fnv(&data))
            } else if ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_char_device() { "char" } else { "block" };
                let rdev = meta.rdev();
                format!(
                    "{kind} {perms:o} {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            } else if ft.is_fifo() {
                format!("fifo {perms:o}")
            } else {
                format!("socket {perms:o}")
            };
            out.insert(rel, what);
        }
    }
    out
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn round_trip_through_gnu_cpio() {
    if !have("cpio") {
        skip_unavailable!("GNU cpio is not installed (apt-get install cpio; scripts/install-deps)");
        return;
    }
    let root_user = is_root();
    if !root_user {
        // Only part of the test: it goes on without the device nodes (a
        // failure in strict mode, whose CI runs as root).
        skip_unavailable!("the device-node part: creating device nodes needs root (run as root)");
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src, root_user);
    let archive = work.path().join("out.cpio");
    let opts = PackOptions {
        keep_owner: false,
        mtime: 1_600_000_000,
    };
    let stats = pack_dir(&src, &archive, &opts).unwrap();
    assert_eq!(stats.bytes, fs::metadata(&archive).unwrap().len());

    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let input = fs::File::open(&archive).unwrap();
    let output = Command::new("cpio")
        .args(["-idm", "--no-absolute-filenames", "--quiet"])
        .current_dir(&dest)
        .stdin(input)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cpio -i: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut expected = describe(&src);
    assert_eq!(
        expected.remove("socket").as_deref(),
        Some("socket 755"),
        "sockets are skipped"
    );
    if !root_user {
        expected.insert("dev".into(), "dir 755".into());
    }
    expected.insert("dev/console".into(), "char 600 5:1".into());
    expected.insert("dev/null".into(), "char 666 1:3".into());
    let got = describe(&dest);
    if root_user {
        assert_eq!(got, expected);
    } else {
        // Without root, cpio cannot create the added device nodes.
        let filtered: BTreeMap<_, _> = got
            .into_iter()
            .filter(|(k, _)| !k.starts_with("dev"))
            .collect();
        expected.retain(|k, _| !k.starts_with("dev"));
        assert_eq!(filtered, expected);
    }

    // The hard links came back as one inode, with the data.
    let a = fs::metadata(dest.join("linked-a")).unwrap();
    let b = fs::metadata(dest.join("bin/linked-b")).unwrap();
    let c = fs::metadata(dest.join("linked-c")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
    assert_eq!(a.ino(), c.ino());
    assert_eq!(fs::read(dest.join("linked-c")).unwrap(), b"shared data");
    // The data is stored once: one of the three entries has the 11 bytes.
    let listing = Command::new("cpio")
        .args(["-tv", "--quiet"])
        .stdin(fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    let sizes: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("linked-"))
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(sizes.iter().filter(|s| **s == "11").count(), 1, "{listing}");

    // mtimes are the given epoch.
    assert_eq!(
        fs::metadata(dest.join("big.bin")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::metadata(dest.join("bin/tool")).unwrap().mtime(),
        1_600_000_000
    );

    // cpio -tv shows every entry owned by root.
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.len() > 20, "{listing}");
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[2..4], ["root", "root"], "{line}");
    }
}

#[test]
fn keep_owner_keeps_owners() {
    if !have("cpio") || !is_root() {
        skip_unavailable!(
            "needs GNU cpio (apt-get install cpio; scripts/install-deps) and root, to chown \
             (run as root)"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("owned"), b"x").unwrap();
    std::os::unix::fs::chown(src.join("owned"), Some(4321), Some(8765)).unwrap();
    let mut archive = Vec::new();
    let opts = PackOptions {
        keep_owner: true,
        mtime: 0,
    };
    pack_dir_to(&src, &mut archive, &opts).unwrap();
    let mut child = Command::new("cpio")
        .args(["-tv", "--quiet", "--numeric-uid-gid"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &archive).unwrap();
    let listing = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let line = listing.lines().find(|l| l.ends_with(" owned")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[2..4], ["4321", "8765"], "{listing}");
}

#[test]
fn same_tree_packs_to_the_same_bytes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src, is_root());
    let opts = PackOptions {
        keep_owner: false,
        mtime: 1_700_000_000,
    };
    let first = work.path().join("1.cpio");
    let second = work.path().join("2.cpio");
    pack_dir(&src, &first, &opts).unwrap();
    pack_dir(&src, &second, &opts).unwrap();
    let first = fs::read(first).unwrap();
    assert_eq!(first, fs::read(second).unwrap());

    // Touching every file (same contents) changes nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    run(Command::new("find")
        .arg(&src)
        .args(["-not", "-type", "s", "-exec", "touch", "-h", "{}", "+"]));
    let third = work.path().join("3.cpio");
    pack_dir(&src, &third, &opts).unwrap();
    assert_eq!(first, fs::read(third).unwrap());

    // Nor does a copy of the tree elsewhere (other inode numbers, other
    // directory order on disk).
    let copy = work.path().join("copy");
    run(Command::new("cp").arg("-a").arg(&src).arg(&copy));
    let fourth = work.path().join("4.cpio");
    pack_dir(&copy, &fourth, &opts).unwrap();
    assert_eq!(first, fs::read(fourth).unwrap());
}

#[test]
fn output_is_replaced_atomically() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let out = work.path().join("out.cpio");
    fs::write(&out, b"old contents").unwrap();
    // A tree that fails half-way (an unreadable file, as non-root; or a
    // missing tree) leaves the old output and no temporary file.
    let err = pack_dir(&work.path().join("missing"), &out, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"old contents");
    pack_dir(&src, &out, &PackOptions::default()).unwrap();
    assert!(fs::read(&out).unwrap().starts_with(b"070701"));
    let names: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn output_in_missing_directory_is_named() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("no/such/dir/out.cpio");
    let err = pack_dir(work.path(), &out, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no/such/dir/out.cpio"), "{err}");
}

#[test]
fn regular_file_as_tree_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = pack_dir_to(&file, Vec::new(), &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
    assert!(err.to_string().contains("file"), "{err}");
}

/// A small tree and the archive `pack_dir_to` makes of it.
fn small_tree(work: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let src = work.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let mut archive = Vec::new();
    pack_dir_to(&src, &mut archive, &PackOptions::default()).unwrap();
    (src, archive)
}

#[test]
fn a_fifo_output_is_streamed_to_and_stays_a_fifo() {
    let work = tempfile::tempdir().unwrap();
    let (src, archive) = small_tree(work.path());
    let fifo = work.path().join("out.fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    let stats = pack_dir(&src, &fifo, &PackOptions::default()).unwrap();
    // Checked before joining: a replaced FIFO would leave the reader
    // waiting for ever.
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(reader.join().unwrap(), archive);
    assert_eq!(stats.bytes, archive.len() as u64);
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        2,
        "no temporary file"
    );
}

#[test]
fn a_character_device_output_is_written_in_place_never_replaced() {
    let work = tempfile::tempdir().unwrap();
    let (src, _) = small_tree(work.path());
    // As root, a node of our own with /dev/null's numbers: a bug here must
    // not replace the host's /dev/null. As anyone else, /dev/null itself.
    let null = if is_root() {
        let node = work.path().join("null");
        run(Command::new("mknod").arg(&node).args(["c", "1", "3"]));
        node
    } else {
        Path::new("/dev/null").to_path_buf()
    };
    pack_dir(&src, &null, &PackOptions::default()).unwrap();
    let meta = fs::symlink_metadata(&null).unwrap();
    assert!(meta.file_type().is_char_device(), "{null:?} was replaced");
    assert_eq!(meta.rdev(), fs::metadata("/dev/null").unwrap().rdev());
}

#[test]
fn a_symlink_output_is_followed_and_its_target_replaced() {
    let work = tempfile::tempdir().unwrap();
    let (src, archive) = small_tree(work.path());
    let links = work.path().join("links");
    let images = work.path().join("images");
    fs::create_dir(&links).unwrap();
    fs::create_dir(&images).unwrap();
    let target = images.join("rootfs.cpio");
    fs::write(&target, b"old contents").unwrap();
    std::os::unix::fs::symlink("../images/rootfs.cpio", links.join("current")).unwrap();
    // A chain: a link to the link.
    std::os::unix::fs::symlink("current", links.join("alias")).unwrap();
    pack_dir(&src, &links.join("alias"), &PackOptions::default()).unwrap();
    assert_eq!(fs::read(&target).unwrap(), archive);
    for link in ["alias", "current"] {
        let meta = fs::symlink_metadata(links.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
    }
    // The temporary file was made beside the target, not the link.
    assert_eq!(fs::read_dir(&links).unwrap().count(), 2);
    assert_eq!(fs::read_dir(&images).unwrap().count(), 1);

    // A dangling link: its target is created.
    std::os::unix::fs::symlink("../images/new.cpio", links.join("next")).unwrap();
    pack_dir(&src, &links.join("next"), &PackOptions::default()).unwrap();
    assert_eq!(fs::read(images.join("new.cpio")).unwrap(), archive);
    assert!(fs::symlink_metadata(links.join("next"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn outputs_that_are_neither_files_nor_streams_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let (src, _) = small_tree(work.path());
    let dir = work.path().join("a-directory");
    fs::create_dir(&dir).unwrap();
    let err = pack_dir(&src, &dir, &PackOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("a-directory") && err.to_string().contains("a directory"),
        "{err}"
    );
    assert!(fs::metadata(&dir).unwrap().is_dir());
    let looped = work.path().join("loop");
    std::os::unix::fs::symlink("loop", &looped).unwrap();
    let err = pack_dir(&src, &looped, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");
    assert!(fs::symlink_metadata(&looped)
        .unwrap()
        .file_type()
        .is_symlink());
}
