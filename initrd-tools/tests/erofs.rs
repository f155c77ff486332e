//! EROFS images of real trees, read back by erofs-utils (`fsck.erofs
//! --extract`) and by the kernel (a loop mount, as root), then compared
//! file by file with their source: type, content, mode, owner, link
//! target, device number, mtime, hard links and extended attributes.

mod images;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use initrd_tools::erofs::{cached_pack, pack_dir};
use initrd_tools::image::{detect, Detected};
use initrd_tools::PackOptions;
use test_support::skip_unavailable;

const MTIME: u32 = 1_700_000_000;
const GIB: u64 = 1 << 30;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have_fsck() -> bool {
    Command::new("fsck.erofs")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a value of its length.
    unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut value = vec![0u8; 65536];
    // SAFETY: NUL-terminated strings and a buffer of its length.
    let got = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    (got >= 0).then(|| value[..got as usize].to_vec())
}

/// A `security.capability` value (version 2): cap_net_bind_service
/// permitted and effective.
fn capability() -> Vec<u8> {
    let mut value = Vec::new();
    value.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    value.extend_from_slice(&(1u32 << 10).to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value
}

/// Writes `len` bytes of a pattern at `offset` of `path`.
fn write_at(path: &Path, offset: u64, len: usize) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8 + 1).collect();
    file.write_all_at(&data, offset).unwrap();
}

fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::mknod(name.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

/// A tree with every file type, edge sizes, long names, deep and large
/// directories, hard links, a sparse file; device nodes, owners and
/// `security.capability` as root.
fn make_tree(root: &Path) {
    test_support::fixtures::modes_tree(root);
    for len in [1, 5, 4000, 4095, 4096, 4097, 8192, 100_000, 1_234_567] {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(7919) as u8)
            .collect();
        fs::write(root.join(format!("size-{len}")), data).unwrap();
    }
    std::os::unix::fs::symlink("tool", root.join("bin/relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/secret", root.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    let long_target = "t/".repeat(1500) + "end";
    std::os::unix::fs::symlink(&long_target, root.join("long-link")).unwrap();
    fs::write(root.join("linked-a"), b"shared data").unwrap();
    fs::hard_link(root.join("linked-a"), root.join("bin/linked-b")).unwrap();
    fs::hard_link(root.join("linked-a"), root.join("linked-c")).unwrap();
    run(Command::new("mkfifo").arg(root.join("fifo")));
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    fs::write(root.join("n".repeat(255)), b"long name").unwrap();
    let mut deep = root.join("deep");
    for level in 0..40 {
        deep = deep.join(format!("level-{level}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"at the bottom").unwrap();
    // 600 entries of 40-byte names: several directory blocks.
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..600 {
        fs::write(root.join(format!("many/{i:040}")), i.to_string()).unwrap();
    }
    // 64 MiB with data at the start, in the middle and at the end.
    let sparse = root.join("sparse");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    write_at(&sparse, 0, 10_000);
    write_at(&sparse, 30 << 20, 5000);
    write_at(&sparse, (64 << 20) - 100, 100);
    if is_root() {
        fs::create_dir(root.join("dev")).unwrap();
        mknod(&root.join("dev/zero"), libc::S_IFCHR | 0o666, 1, 5);
        mknod(&root.join("dev/loop-big"), libc::S_IFBLK | 0o660, 7, 0x1234);
        std::os::unix::fs::chown(root.join("etc/secret"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(70000), Some(70001)).unwrap();
        assert!(set_xattr(
            &root.join("bin/tool"),
            "security.capability",
            &capability()
        ));
        set_xattr(&root.join("etc/secret"), "user.comment", b"kept");
        set_xattr(&root.join("etc/secret"), "trusted.overlay.x", b"y");
        // Names and a value longer than the writer's first ask (256
        // bytes), which it must grow past.
        for i in 0..8 {
            let name = format!("user.{}{i}", "long-attribute-name-".repeat(2));
            set_xattr(&root.join("bin/tool"), &name, b"v");
        }
        set_xattr(&root.join("bin/tool"), "user.big", &[0xa5; 3000]);
    }
}

fn options() -> PackOptions {
    PackOptions {
        keep_owner: true,
        mtime: MTIME,
    }
}

/// Every path under `root`, relative, with its metadata.
fn walk(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), meta);
        }
    }
    out
}

/// What to compare.
struct Compare {
    /// The setuid and setgid bits (fsck.erofs 1.5 changes the owner after
    /// the mode as it extracts, which clears them).
    set_id: bool,
    /// The sparse file (fsck.erofs 1.5 extracts a file with holes by
    /// writing its data back to back, without seeking over the holes: here
    /// 24 KiB for the 64 MiB file; the kernel reads it whole).
    sparse: bool,
    owners: bool,
    mtime: bool,
    xattrs: bool,
    hard_links: bool,
}

/// Compares the tree `got` (read back from an image) with its source.
fn compare(source: &Path, got: &Path, what: &Compare) {
    let want = walk(source);
    let have = walk(got);
    let mut expected: Vec<&PathBuf> = want.keys().collect();
    for added in ["dev", "dev/console", "dev/null"] {
        if !want.contains_key(Path::new(added)) {
            expected.push(have.keys().find(|p| p.as_os_str() == added).unwrap());
        }
    }
    expected.sort();
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        expected,
        "the listings differ"
    );
    for (rel, w) in &want {
        let h = &have[rel];
        let (src, dst) = (source.join(rel), got.join(rel));
        let name = rel.display();
        let mask = if what.set_id { !0 } else { !0o6000 };
        assert_eq!(h.mode() & mask, w.mode() & mask, "mode of {name}");
        if what.owners {
            assert_eq!((h.uid(), h.gid()), (w.uid(), w.gid()), "owner of {name}");
        }
        if what.mtime {
            assert_eq!(h.mtime(), i64::from(MTIME), "mtime of {name}");
        }
        let ft = w.file_type();
        if ft.is_file() && (what.sparse || rel != Path::new("sparse")) {
            assert_eq!(h.len(), w.len(), "size of {name}");
            assert!(
                fs::read(&src).unwrap() == fs::read(&dst).unwrap(),
                "content of {name}"
            );
        } else if ft.is_symlink() {
            assert_eq!(
                fs::read_link(&dst).unwrap(),
                fs::read_link(&src).unwrap(),
                "{name}"
            );
        } else if ft.is_char_device() || ft.is_block_device() {
            assert_eq!(h.rdev(), w.rdev(), "device number of {name}");
        }
        if what.xattrs {
            let long: Vec<String> = (0..8)
                .map(|i| format!("user.{}{i}", "long-attribute-name-".repeat(2)))
                .collect();
            let attrs = [
                "security.capability",
                "user.comment",
                "trusted.overlay.x",
                "user.big",
            ];
            for attr in attrs.iter().copied().chain(long.iter().map(String::as_str)) {
                assert_eq!(
                    get_xattr(&dst, attr),
                    get_xattr(&src, attr),
                    "{attr} of {name}"
                );
            }
        }
    }
    if what.hard_links {
        let ino = |p: &str| have[Path::new(p)].ino();
        assert_eq!(ino("linked-a"), ino("bin/linked-b"));
        assert_eq!(ino("linked-a"), ino("linked-c"));
        assert_eq!(have[Path::new("linked-a")].nlink(), 3);
        assert_ne!(ino("linked-a"), ino("etc/secret"));
    }
}

/// `fsck.erofs --extract` of `image` into a new directory of `parent`.
fn extract(image: &Path, parent: &Path) -> PathBuf {
    let dir = parent.join("extracted");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.display()))
        .arg(image));
    dir
}

/// A read-only loop mount, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts `image` at a new directory of `parent`; `None` (after the skip
/// line) where this host cannot.
fn mount(image: &Path, parent: &Path) -> Option<Mount> {
    if !is_root() {
        skip_unavailable!("mounting an EROFS image needs root: run the tests as root");
        return None;
    }
    let supported = || fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("erofs"));
    if !supported() {
        let _ = Command::new("modprobe").arg("erofs").status();
    }
    if !supported() {
        skip_unavailable!("this host's kernel has no erofs (modprobe erofs failed)");
        return None;
    }
    let dir = parent.join("mnt");
    fs::create_dir(&dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(image)
        .arg(&dir)
        .status()
        .unwrap();
    if !status.success() {
        // Some sandboxes have no loop devices.
        if !Path::new("/dev/loop-control").exists() {
            skip_unavailable!("no loop devices here (/dev/loop-control is missing)");
            return None;
        }
        panic!("mount -t erofs {}: {status}", image.display());
    }
    Some(Mount(dir))
}

#[test]
fn erofs_utils_read_back_every_file_of_a_tree() {
    if !have_fsck() {
        skip_unavailable!("fsck.erofs not found: install erofs-utils (scripts/install-deps)");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("tree.erofs");
    pack_dir(src.path(), &image, &options()).unwrap();
    let extracted = extract(&image, out.path());
    // fsck.erofs 1.5 extracts owners and modes as root, but neither
    // mtimes, hard links nor xattrs: the kernel's mount checks those.
    compare(
        src.path(),
        &extracted,
        &Compare {
            sparse: false,
            set_id: false,
            owners: is_root(),
            mtime: false,
            xattrs: false,
            hard_links: false,
        },
    );
    // The sparse file's holes take no blocks: the image holds the data.
    let image_len = fs::metadata(&image).unwrap().len();
    assert!(image_len < 8 << 20, "image of {image_len} bytes");
}

#[test]
fn the_kernel_mounts_the_image_and_sees_every_file_as_the_source() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("tree.erofs");
    pack_dir(src.path(), &image, &options()).unwrap();
    let Some(mounted) = mount(&image, out.path()) else {
        return;
    };
    compare(
        src.path(),
        &mounted.0,
        &Compare {
            sparse: true,
            set_id: true,
            owners: true,
            mtime: true,
            xattrs: true,
            hard_links: true,
        },
    );
    let tool = mounted.0.join("bin/tool");
    assert_eq!(get_xattr(&tool, "security.capability"), Some(capability()));
}

#[test]
fn a_multi_gib_sparse_file_costs_only_its_data() {
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big");
    fs::File::create(&big).unwrap().set_len(5 * GIB).unwrap();
    write_at(&big, 0, 4096);
    write_at(&big, 3 * GIB, 100);
    write_at(&big, 5 * GIB - 7, 7);
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("sparse.erofs");
    let started = std::time::Instant::now();
    pack_dir(src.path(), &image, &options()).unwrap();
    let meta = fs::metadata(&image).unwrap();
    assert!(meta.len() < 4 << 20, "image of {} bytes", meta.len());
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "image allocates {} blocks",
        meta.blocks()
    );
    eprintln!(
        "5 GiB sparse file: image of {} bytes in {:?}",
        meta.len(),
        started.elapsed()
    );
    if have_fsck() {
        run(Command::new("fsck.erofs").arg(&image));
    }
    let Some(mounted) = mount(&image, out.path()) else {
        return;
    };
    let file = fs::File::open(mounted.0.join("big")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 5 * GIB);
    let source = fs::File::open(&big).unwrap();
    for (offset, len) in [
        (0, 8192),
        (3 * GIB - 4096, 8192),
        (5 * GIB - 4096, 4096),
        (GIB, 4096),
    ] {
        let mut want = vec![0u8; len];
        let mut got = vec![0u8; len];
        source.read_exact_at(&mut want, offset).unwrap();
        file.read_exact_at(&mut got, offset).unwrap();
        assert!(want == got, "bytes at {offset}");
    }
}

#[test]
fn the_same_tree_gives_the_same_bytes() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a.erofs"), out.path().join("b.erofs"));
    pack_dir(src.path(), &a, &options()).unwrap();
    pack_dir(src.path(), &b, &options()).unwrap();
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    assert_eq!(fs::metadata(&a).unwrap().len() % 4096, 0);
}

#[test]
fn a_damaged_cached_image_is_written_again() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("file"), vec![7u8; 50_000]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // This test binary's only test that uses the cache.
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    let opts = PackOptions::default();
    let path = cached_pack(src.path(), &opts).unwrap();
    assert!(
        path.to_string_lossy().ends_with(".erofs"),
        "{}",
        path.display()
    );
    let good = fs::read(&path).unwrap();
    // A whole image is used as it is, not written again (which would
    // rename a new file into place).
    let inode = fs::metadata(&path).unwrap().ino();
    assert_eq!(cached_pack(src.path(), &opts).unwrap(), path);
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "rewritten");
    // Cut short: found by the size check.
    fs::write(&path, &good[..good.len() - 4096]).unwrap();
    assert_eq!(cached_pack(src.path(), &opts).unwrap(), path);
    assert!(fs::read(&path).unwrap() == good);
    // A superblock that is not this writer's: found by its check.
    let mut bad = good.clone();
    bad[1024] ^= 0xff;
    fs::write(&path, &bad).unwrap();
    cached_pack(src.path(), &opts).unwrap();
    assert!(fs::read(&path).unwrap() == good);
    // The newc archive of the same tree sits beside it, under the same key.
    let cpio = initrd_tools::cached_pack(src.path(), &opts).unwrap();
    assert_eq!(cpio.with_extension("erofs"), path);
}

#[test]
fn an_image_converts_to_erofs_with_its_owners_links_and_devices() {
    use images::*;
    if !have_fsck() {
        skip_unavailable!("fsck.erofs not found: install erofs-utils (scripts/install-deps)");
        return;
    }
    let tar = layer_tar(&[
        dir("etc"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .owner(0, 0)
            .mode(0o644),
        file("etc/shadow", b"root:*:1::::::\n")
            .owner(70000, 42)
            .mode(0o640),
        dir("usr/bin"),
        file("usr/bin/prog", &vec![9u8; 70_000]).mode(0o755),
        hard_link("usr/bin/prog-link", "usr/bin/prog"),
        symlink("bin", "usr/bin"),
        char_dev("dev/tty9", 4, 9),
        block_dev("dev/sda1", 8, 1),
        fifo("run/pipe"),
        file(&"x".repeat(99), b"long"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("rootfs.tar");
    fs::write(&tar_path, tar).unwrap();
    let Detected::Image(image) = detect(&tar_path).unwrap() else {
        panic!("not an image");
    };
    // A plain tar: its own length estimates its files.
    let tar_len = fs::metadata(&tar_path).unwrap().len();
    assert_eq!(image.unpacked_estimate().unwrap(), tar_len);
    let out = dir.path().join("image.erofs");
    image.convert_to_erofs(&out).unwrap();
    let again = dir.path().join("again.erofs");
    image.convert_to_erofs(&again).unwrap();
    assert!(fs::read(&out).unwrap() == fs::read(&again).unwrap());
    let extracted = extract(&out, dir.path());
    let meta = |p: &str| fs::symlink_metadata(extracted.join(p)).unwrap();
    assert_eq!(
        fs::read(extracted.join("usr/bin/prog")).unwrap(),
        vec![9u8; 70_000]
    );
    assert_eq!(
        fs::read(extracted.join("usr/bin/prog-link")).unwrap(),
        vec![9u8; 70_000]
    );
    assert_eq!(
        fs::read_link(extracted.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(fs::read(extracted.join("x".repeat(99))).unwrap(), b"long");
    assert!(meta("run/pipe").file_type().is_fifo());
    assert!(meta("dev/console").file_type().is_char_device());
    if is_root() {
        assert_eq!(meta("dev/tty9").rdev(), libc::makedev(4, 9));
        assert_eq!(meta("dev/sda1").rdev(), libc::makedev(8, 1));
        assert_eq!(
            (meta("etc/shadow").uid(), meta("etc/shadow").gid()),
            (70000, 42)
        );
        assert_eq!(meta("etc/shadow").mode() & 0o7777, 0o640);
    }
    let Some(mounted) = mount(&out, dir.path()) else {
        return;
    };
    let m = |p: &str| fs::symlink_metadata(mounted.0.join(p)).unwrap();
    assert_eq!(m("usr/bin/prog").ino(), m("usr/bin/prog-link").ino());
    assert_eq!(m("usr/bin/prog").nlink(), 2);
    assert_eq!(m("etc/passwd").mtime(), 1_600_000_000);
    assert_eq!((m("etc/shadow").uid(), m("etc/shadow").gid()), (70000, 42));
}

#[test]
fn a_compressed_layer_is_estimated_at_three_times_its_length() {
    use images::*;
    let tar = layer_tar(&[file("big", &vec![0u8; 100_000])]);
    let gz = compress(&tar, Compression::Gzip);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.tar.gz");
    fs::write(&path, &gz).unwrap();
    let Detected::Image(image) = detect(&path).unwrap() else {
        panic!("not an image");
    };
    assert_eq!(image.unpacked_estimate().unwrap(), 3 * gz.len() as u64);
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

#[test]
fn an_images_xattrs_reach_the_erofs_image() {
    let cap = capability();
    let mut builder = tar::Builder::new(Vec::new());
    let mut pax = tar::Header::new_ustar();
    let records = [
        pax_record("SCHILY.xattr.security.capability", &cap),
        pax_record("SCHILY.xattr.user.note", b"kept"),
    ]
    .concat();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(records.len() as u64);
    pax.set_uid(0);
    pax.set_gid(0);
    pax.set_mtime(0);
    pax.set_mode(0o644);
    pax.set_cksum();
    builder.append(&pax, &records[..]).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_size(4);
    file.set_mode(0o755);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    file.set_cksum();
    builder
        .append_data(&mut file, "bin/ping", &b"ping"[..])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("rootfs.tar");
    fs::write(&tar_path, builder.into_inner().unwrap()).unwrap();
    let Detected::Image(image) = detect(&tar_path).unwrap() else {
        panic!("not an image");
    };
    let out = dir.path().join("image.erofs");
    image.convert_to_erofs(&out).unwrap();
    let Some(mounted) = mount(&out, dir.path()) else {
        return;
    };
    let ping = mounted.0.join("bin/ping");
    assert_eq!(fs::read(&ping).unwrap(), b"ping");
    assert_eq!(get_xattr(&ping, "security.capability"), Some(cap));
    assert_eq!(get_xattr(&ping, "user.note"), Some(b"kept".to_vec()));
    assert_eq!(get_xattr(&mounted.0.join("bin"), "user.note"), None);
}
