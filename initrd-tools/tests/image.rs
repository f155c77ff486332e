//! Images built here from scratch, converted, and the archive read back
//! entry by entry (with the `cpio` crate) against the merged tree the OCI
//! rules give.

mod images;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use images::*;
use initrd_tools::image::{detect, Detected, Image, ImageError, ImageFormat};
use serde_json::json;

/// One archive entry, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn read_archive(bytes: &[u8]) -> Vec<Member> {
    let mut members = Vec::new();
    let mut rest = bytes;
    loop {
        let mut reader = cpio::NewcReader::new(rest).expect("a newc header");
        if reader.entry().is_trailer() {
            break;
        }
        let e = reader.entry();
        let mut member = Member {
            name: e.name().to_string(),
            ino: e.ino(),
            mode: e.mode(),
            uid: e.uid(),
            gid: e.gid(),
            nlink: e.nlink(),
            mtime: e.mtime(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data: Vec::new(),
        };
        reader.read_to_end(&mut member.data).unwrap();
        members.push(member);
        rest = reader.finish().unwrap();
    }
    members
}

/// `name kind mode uid:gid what` for each member, the way a test states
/// the expected tree.
fn describe(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .map(|m| {
            let what = match m.mode & 0o170000 {
                0o040000 => "dir".to_string(),
                0o100000 => format!("file {:?}", String::from_utf8_lossy(&m.data)),
                0o120000 => format!("-> {}", String::from_utf8_lossy(&m.data)),
                0o020000 => format!("chr {}:{}", m.rdev.0, m.rdev.1),
                0o060000 => format!("blk {}:{}", m.rdev.0, m.rdev.1),
                0o010000 => "fifo".to_string(),
                other => format!("type {other:o}"),
            };
            format!(
                "{} {:o} {}:{} {what}",
                m.name,
                m.mode & 0o7777,
                m.uid,
                m.gid
            )
        })
        .collect()
}

fn open(path: &Path) -> Image {
    match detect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        Detected::Image(image) => *image,
        other => panic!("{} detected as {other:?}", path.display()),
    }
}

fn convert(path: &Path) -> Vec<u8> {
    let image = open(path);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("out.cpio");
    let stats = image
        .convert_to(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(stats.bytes, bytes.len() as u64);
    assert_eq!(bytes.len() % 4, 0);
    bytes
}

fn convert_err(path: &Path) -> ImageError {
    let out = tempfile::tempdir().unwrap();
    let result = detect(path).and_then(|d| match d {
        Detected::Image(image) => image.convert_to(&out.path().join("out.cpio")),
        other => panic!("{} detected as {other:?}", path.display()),
    });
    let err = result.expect_err("conversion should fail");
    // Nothing is left behind, not even a temporary file.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    err
}

/// Three layers exercising every rule: gzip, zstd, then plain.
fn rule_layers() -> Vec<(Vec<u8>, Compression)> {
    let first = layer_tar(&[
        dir("./"),
        dir("bin"),
        dir("etc"),
        file("etc/hostname", b"one\n"),
        file("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
        file("gone", b"x"),
        dir("opq"),
        file("opq/old", b"old"),
        dir("opq/sub"),
        file("opq/sub/deep", b"deep"),
        dir("data"),
        file("data/orig", b"shared\n")
            .mode(0o640)
            .owner(1000, 1001)
            .mtime(1_700_000_000),
        file("swap", b"was a file"),
        dir("dev"),
        char_dev("dev/null", 1, 3),
        char_dev("dev/tty", 5, 0),
        block_dev("dev/loop0", 7, 0),
        dir("run"),
        fifo("run/fifo"),
        dir("usr"),
        dir("usr/lib"),
        symlink("lib", "usr/lib"),
        file("setuid", b"#!/bin/sh\n").mode(0o4755),
    ]);
    let second = layer_tar(&[
        whiteout("gone"),
        dir("opq"),
        opaque("opq"),
        file("opq/new", b"new"),
        dir("swap"),
        file("swap/inside", b"in dir"),
        hard_link("data/link", "data/orig"),
        file("lib/libx.so", b"ELF"),
        whiteout("never-existed"),
        whiteout("etc/no/such/dir"),
        file("etc/hostname", b"two\n"),
    ]);
    let third = layer_tar(&[
        file("swap", b"file again"),
        hard_link("data/link2", "data/link"),
        whiteout("etc/passwd"),
        symlink("escape", "/../../../../etc"),
        file("escape/evil", b"evil"),
    ]);
    vec![
        (first, Compression::Gzip),
        (second, Compression::Zstd),
        (third, Compression::None),
    ]
}

fn rule_config() -> serde_json::Value {
    json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING"],
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
        "WorkingDir": "/srv/app",
        "User": "1000:1001",
    })
}

const EXPECTED: &[&str] = &[
    ". 755 0:0 dir",
    "bin 755 0:0 dir",
    "data 755 0:0 dir",
    "data/link 640 1000:1001 file \"\"",
    "data/link2 640 1000:1001 file \"\"",
    "data/orig 640 1000:1001 file \"shared\\n\"",
    "dev 755 0:0 dir",
    "dev/console 600 0:0 chr 5:1",
    "dev/loop0 660 0:0 blk 7:0",
    "dev/null 666 0:0 chr 1:3",
    "dev/tty 666 0:0 chr 5:0",
    "escape 777 0:0 -> /../../../../etc",
    "etc 755 0:0 dir",
    "etc/evil 644 0:0 file \"evil\"",
    "etc/hostname 644 0:0 file \"two\\n\"",
    "lib 777 0:0 -> usr/lib",
    "opq 755 0:0 dir",
    "opq/new 644 0:0 file \"new\"",
    "run 755 0:0 dir",
    "run/fifo 600 0:0 fifo",
    "setuid 4755 0:0 file \"#!/bin/sh\\n\"",
    "srv 755 0:0 dir",
    "srv/app 755 0:0 dir",
    "swap 644 0:0 file \"file again\"",
    "usr 755 0:0 dir",
    "usr/lib 755 0:0 dir",
    "usr/lib/libx.so 644 0:0 file \"ELF\"",
];

fn rule_image() -> ImageSpec {
    ImageSpec::new(rule_layers(), rule_config())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn layers_merge_by_the_oci_rules_and_read_back_entry_by_entry() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_layout(&rule_image()).write_to(&layout);
    let image = open(&layout);
    assert_eq!(image.format(), ImageFormat::OciLayout);
    assert_eq!(image.layer_count(), 3);
    let members = read_archive(&convert(&layout));
    assert_eq!(describe(&members), EXPECTED);

    let get = |name: &str| members.iter().find(|m| m.name == name).unwrap();
    // One inode for the three names, across layers; data with the last.
    let (link, link2, orig) = (get("data/link"), get("data/link2"), get("data/orig"));
    assert_eq!((link.ino, link2.ino), (orig.ino, orig.ino));
    assert_eq!((link.nlink, orig.nlink), (3, 3));
    assert_eq!(orig.mtime, 1_700_000_000);
    // Inodes are 1, 2, ... in archive order otherwise.
    let mut inos: Vec<u32> = members.iter().map(|m| m.ino).collect();
    inos.dedup();
    inos.sort_unstable();
    inos.dedup();
    assert_eq!(inos, (1..=inos.len() as u32).collect::<Vec<_>>());
    // Directory link counts: 2 + subdirectories.
    assert_eq!(get(".").nlink, 2 + 8);
    assert_eq!(get("usr").nlink, 3);
    assert_eq!(get("etc/hostname").mtime, 1_600_000_000);
    // No name leaves the tree.
    assert!(members
        .iter()
        .all(|m| !m.name.split('/').any(|c| c == "..")));

    let config = image.config();
    assert_eq!(config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(config.cmd, ["echo $GREETING"]);
    assert_eq!(config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
    assert_eq!(config.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(config.user.as_deref(), Some("1000:1001"));
}

#[test]
fn every_layout_converts_to_the_same_bytes_every_time() {
    let spec = rule_image();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_layout(&spec).write_to(&layout);
    let reference = convert(&layout);
    assert_eq!(convert(&layout), reference, "a second conversion differs");
    let archives = [
        ("oci.tar", oci_layout(&spec).tar(), ImageFormat::OciArchive),
        (
            "legacy.tar",
            docker_legacy(&spec).tar(),
            ImageFormat::DockerArchive,
        ),
        (
            "docker25.tar",
            docker_25(&spec).tar(),
            ImageFormat::DockerArchive,
        ),
    ];
    for (name, bytes, format) in archives {
        let path = write(work.path(), name, &bytes);
        assert_eq!(open(&path).format(), format, "{name}");
        assert_eq!(open(&path).config(), open(&layout).config(), "{name}");
        assert!(convert(&path) == reference, "{name} converts differently");
    }
}

#[test]
fn a_layer_that_occurs_twice_is_linked_in_legacy_archives() {
    let base = layer_tar(&[dir("a"), file("a/f", b"1")]);
    let spec = ImageSpec::new(
        vec![
            (base.clone(), Compression::None),
            (layer_tar(&[whiteout("a/f")]), Compression::None),
            (base, Compression::None),
        ],
        json!({}),
    );
    let files = docker_legacy(&spec);
    assert_eq!(files.symlinks.len(), 1);
    let work = tempfile::tempdir().unwrap();
    let path = write(work.path(), "img.tar", &files.tar());
    let members = read_archive(&convert(&path));
    assert!(describe(&members).contains(&"a/f 644 0:0 file \"1\"".to_string()));
}

#[test]
fn rootfs_tars_are_detected_by_content_in_any_compression() {
    let tar = layer_tar(&[
        dir("./"),
        dir("./etc"),
        file("./etc/os-release", b"ID=test\n"),
        symlink("./bin", "usr/bin"),
        file("/usr/bin/true", b"\x7fELF").mode(0o755).owner(0, 0),
    ]);
    let work = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (name, how) in [
        ("plain.img", Compression::None),
        ("gz.img", Compression::Gzip),
        ("zst.img", Compression::Zstd),
    ] {
        let path = write(work.path(), name, &compress(&tar, how));
        let image = open(&path);
        assert!(matches!(image.format(), ImageFormat::Tar(_)), "{name}");
        assert_eq!(image.config(), &Default::default());
        outputs.push(convert(&path));
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let list = describe(&read_archive(&outputs[0]));
    assert_eq!(
        list,
        [
            ". 755 0:0 dir",
            "bin 777 0:0 -> usr/bin",
            "dev 755 0:0 dir",
            "dev/console 600 0:0 chr 5:1",
            "dev/null 666 0:0 chr 1:3",
            "etc 755 0:0 dir",
            "etc/os-release 644 0:0 file \"ID=test\\n\"",
            "usr 755 0:0 dir",
            "usr/bin 755 0:0 dir",
            "usr/bin/true 755 0:0 file \"\\u{7f}ELF\"",
        ]
    );
}

#[test]
fn other_files_are_directories_cpio_or_unknown() {
    let work = tempfile::tempdir().unwrap();
    assert!(matches!(detect(work.path()).unwrap(), Detected::Directory));
    let newc = write(work.path(), "a.cpio", b"070701000000");
    assert!(matches!(detect(&newc).unwrap(), Detected::Cpio));
    let gz_cpio = write(
        work.path(),
        "b",
        &compress(b"070701000000", Compression::Gzip),
    );
    assert!(matches!(detect(&gz_cpio).unwrap(), Detected::Cpio));
    // xz and bzip2 are looked into as gzip is (a tar in them is a rootfs
    // tar); lz4 only the kernel unpacks.
    let xz = write(
        work.path(),
        "c",
        &compress(b"070701000000", Compression::Xz),
    );
    assert!(matches!(detect(&xz).unwrap(), Detected::Cpio));
    let lz4 = write(work.path(), "d", &[0x02, 0x21, 0x4c, 0x18, 0, 0]);
    assert!(matches!(detect(&lz4).unwrap(), Detected::Cpio));
    let cut_xz = write(work.path(), "e", &[0xfd, b'7', b'z', b'X', b'Z', 0, 1]);
    let err = detect(&cut_xz).unwrap_err();
    assert!(matches!(err, ImageError::Decompress { .. }), "{err}");
    for (name, bytes) in [
        ("text.tar", b"just some text, not an archive".to_vec()),
        ("empty.tar", Vec::new()),
        ("zeros.tar", vec![0; 10240]),
        ("gz-text.tar.gz", compress(b"hello", Compression::Gzip)),
    ] {
        let path = write(work.path(), name, &bytes);
        let err = detect(&path).unwrap_err();
        assert!(
            matches!(err, ImageError::UnknownFormat { .. }),
            "{name}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains("docker-archive") && text.contains("OCI"),
            "{text}"
        );
    }
}

#[test]
fn a_compressed_image_archive_is_refused_with_advice() {
    let work = tempfile::tempdir().unwrap();
    let tar = docker_legacy(&rule_image()).tar();
    let path = write(
        work.path(),
        "image.tar.gz",
        &compress(&tar, Compression::Gzip),
    );
    let err = detect(&path).unwrap_err().to_string();
    assert!(
        err.contains("gzip-compressed docker-archive") && err.contains("gzip -dk"),
        "{err}"
    );
}

#[test]
fn the_amd64_manifest_is_picked_from_an_index() {
    let amd64 = ImageSpec::new(
        vec![(layer_tar(&[file("arch", b"amd64")]), Compression::Gzip)],
        json!({}),
    );
    let arm64 = ImageSpec {
        architecture: "arm64",
        ..ImageSpec::new(
            vec![(layer_tar(&[file("arch", b"arm64")]), Compression::Gzip)],
            json!({}),
        )
    };
    let mut files = Files::default();
    let mut arm = add_image_blobs(&mut files, &arm64);
    arm["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let mut amd = add_image_blobs(&mut files, &amd64);
    amd["platform"] = json!({"architecture": "amd64", "os": "linux"});
    // A nested index, as `docker buildx` and containerd write them.
    let nested = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [arm.clone(), amd]});
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_descriptor = json!({"mediaType": "application/vnd.oci.image.index.v1+json",
                                   "digest": digest(&nested_bytes), "size": nested_bytes.len()});
    files.files.insert(
        format!("blobs/sha256/{}", sha256_hex(&nested_bytes)),
        nested_bytes,
    );
    let work = tempfile::tempdir().unwrap();
    let both = work.path().join("both");
    oci_layout_with(files.clone(), vec![nested_descriptor]).write_to(&both);
    let members = read_archive(&convert(&both));
    assert!(describe(&members).contains(&"arch 644 0:0 file \"amd64\"".to_string()));

    let arm_only = work.path().join("arm");
    oci_layout_with(files, vec![arm]).write_to(&arm_only);
    let err = detect(&arm_only).unwrap_err().to_string();
    assert!(
        err.contains("no linux/amd64") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

#[test]
fn unchanged_images_are_not_converted_again() {
    let cache_home = private_cache_home();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_layout(&rule_image()).write_to(&layout);
    let first = open(&layout).cached_convert().unwrap();
    assert!(first.starts_with(cache_home.path().join("microrun/initrd")));
    assert_eq!(
        read_archive(&std::fs::read(&first).unwrap()).len(),
        EXPECTED.len()
    );
    // Mark the cached archive: a second run that converted again would
    // replace it.
    std::fs::write(&first, b"marker").unwrap();
    assert_eq!(open(&layout).cached_convert().unwrap(), first);
    assert_eq!(std::fs::read(&first).unwrap(), b"marker");
    // The same image in another layout has the same manifest: same key.
    let archive = write(work.path(), "oci.tar", &oci_layout(&rule_image()).tar());
    assert_eq!(open(&archive).cached_convert().unwrap(), first);

    // A plain tar is keyed by its file's identity: rewriting it converts
    // again.
    let tar = write(work.path(), "root.tar", &layer_tar(&[file("a", b"1")]));
    let one = open(&tar).cached_convert().unwrap();
    let again = open(&tar).cached_convert().unwrap();
    assert_eq!(one, again);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(work.path(), "root.tar", &layer_tar(&[file("a", b"2")]));
    let changed = open(&tar).cached_convert().unwrap();
    assert_ne!(changed, one);
    let list = describe(&read_archive(&std::fs::read(&changed).unwrap()));
    assert!(
        list.contains(&"a 644 0:0 file \"2\"".to_string()),
        "{list:?}"
    );
}

/// A one-layer image whose layer is `tar`, as an OCI layout directory.
fn one_layer_layout(dir: &Path, tar: Vec<u8>, how: Compression) -> PathBuf {
    let layout = dir.join("layout");
    oci_layout(&ImageSpec::new(vec![(tar, how)], json!({}))).write_to(&layout);
    layout
}

/// The blob file of the first layer in `layout`.
fn layer_blob(layout: &Path, tar: &[u8], how: Compression) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(sha256_hex(&compress(tar, how)))
}

#[test]
fn corrupt_and_truncated_layers_are_errors() {
    let tar = layer_tar(&[dir("d"), file("d/f", &[7u8; 5000])]);
    for how in [Compression::None, Compression::Gzip, Compression::Zstd] {
        // A flipped byte: the digest no longer matches.
        let work = tempfile::tempdir().unwrap();
        let layout = one_layer_layout(work.path(), tar.clone(), how);
        let blob = layer_blob(&layout, &tar, how);
        let mut bytes = std::fs::read(&blob).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&blob, &bytes).unwrap();
        let err = convert_err(&layout).to_string();
        assert!(
            err.contains("layer 1") && (err.contains("digest") || err.contains("corrupt")),
            "{how:?}: {err}"
        );

        // Truncated: the size no longer matches the manifest.
        let work = tempfile::tempdir().unwrap();
        let layout = one_layer_layout(work.path(), tar.clone(), how);
        let blob = layer_blob(&layout, &tar, how);
        let bytes = std::fs::read(&blob).unwrap();
        std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
        let err = detect(&layout).unwrap_err();
        assert!(
            matches!(err, ImageError::SizeMismatch { .. }),
            "{how:?}: {err}"
        );

        // A truncated rootfs tar (no digest to check) fails as a stream.
        let work = tempfile::tempdir().unwrap();
        let compressed = compress(&tar, how);
        let cut = compressed.len() - 5000.min(compressed.len() / 2);
        let path = write(work.path(), "root.tar", &compressed[..cut]);
        // A short compressed stream already fails when detected.
        let err = match detect(&path) {
            Err(err) => err,
            Ok(_) => convert_err(&path),
        }
        .to_string();
        assert!(
            err.contains("root.tar") && err.contains("truncated"),
            "{how:?}: {err}"
        );
    }
}

#[test]
fn dotdot_paths_and_links_to_nowhere_are_refused() {
    for (entries, needle) in [
        (vec![file("a/../../etc/passwd", b"x")], "`..`"),
        (vec![file("../escape", b"x")], "`..`"),
        (vec![hard_link("link", "missing")], "does not exist"),
        (vec![dir("d"), hard_link("link", "d")], "is a directory"),
        (vec![file("f", b""), file("f/g", b"")], "not a directory"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let layout = one_layer_layout(work.path(), layer_tar(&entries), Compression::Gzip);
        let err = convert_err(&layout).to_string();
        assert!(err.contains(needle) && err.contains("layer 1"), "{err}");
    }
}

#[test]
fn metadata_that_does_not_match_its_digest_or_is_missing_is_refused() {
    let spec = ImageSpec::new(
        vec![(layer_tar(&[file("f", b"1")]), Compression::None)],
        json!({}),
    );
    let work = tempfile::tempdir().unwrap();

    // The configuration changed after the manifest was written.
    let mut files = oci_layout(&spec);
    let config_name = format!("blobs/sha256/{}", sha256_hex(&spec.config_blob()));
    let config = files.files.get_mut(&config_name).unwrap();
    let tampered = String::from_utf8(config.clone())
        .unwrap()
        .replace("amd64", "AMD64");
    *config = tampered.into_bytes();
    let layout = work.path().join("tampered");
    files.write_to(&layout);
    let err = detect(&layout).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

    // The manifest names a layer the archive does not have.
    let mut files = docker_legacy(&spec);
    let layer = files.legacy_layer();
    files.files.remove(&layer);
    let path = write(work.path(), "missing.tar", &files.tar());
    let err = detect(&path).unwrap_err();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&layer), "{err}");

    // The legacy configuration's name is its digest.
    let mut files = docker_legacy(&spec);
    let config_name = format!("{}.json", sha256_hex(&spec.config_blob()));
    files.files.get_mut(&config_name).unwrap().push(b' ');
    let path = write(work.path(), "config.tar", &files.tar());
    assert!(matches!(
        detect(&path).unwrap_err(),
        ImageError::DigestMismatch { .. }
    ));

    // A layer's uncompressed content differs from the config's diff_id.
    let other = ImageSpec::new(
        vec![(layer_tar(&[file("f", b"2")]), Compression::None)],
        json!({}),
    );
    let mut files = docker_legacy(&spec);
    files.files.insert(config_name, other.config_blob());
    let manifest = String::from_utf8(files.files["manifest.json"].clone()).unwrap();
    let manifest = manifest.replace(
        &sha256_hex(&spec.config_blob()),
        &sha256_hex(&other.config_blob()),
    );
    files
        .files
        .insert("manifest.json".into(), manifest.into_bytes());
    files.files.insert(
        format!("{}.json", sha256_hex(&other.config_blob())),
        other.config_blob(),
    );
    let path = write(work.path(), "diffid.tar", &files.tar());
    let err = convert_err(&path).to_string();
    assert!(err.contains("diff_id") && err.contains("layer 1"), "{err}");

    // Several images in one archive.
    let mut files = docker_legacy(&spec);
    let manifest: serde_json::Value =
        serde_json::from_slice(&files.files["manifest.json"]).unwrap();
    let doubled = json!([manifest[0], manifest[0]]);
    files.files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&doubled).unwrap(),
    );
    let path = write(work.path(), "two.tar", &files.tar());
    let err = detect(&path).unwrap_err().to_string();
    assert!(err.contains("holds 2 images"), "{err}");
}

#[test]
fn cut_and_scribbled_images_give_errors_never_panics() {
    let spec = rule_image();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.cpio");
    for (name, bytes) in [
        ("legacy.tar", docker_legacy(&spec).tar()),
        ("oci.tar", oci_layout(&spec).tar()),
        (
            "root.tar.gz",
            compress(&spec.layers[0].0, Compression::Gzip),
        ),
    ] {
        let step = (bytes.len() / 97).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            let path = write(work.path(), name, &bytes[..cut]);
            if let Ok(Detected::Image(image)) = detect(&path) {
                let _ = image.convert_to(&out);
            }
            let mut scribbled = bytes.clone();
            scribbled[cut] ^= 0xff;
            let path = write(work.path(), name, &scribbled);
            if let Ok(Detected::Image(image)) = detect(&path) {
                let _ = image.convert_to(&out);
            }
        }
    }
}

/// Nothing is written outside the output's directory: the layers' data
/// goes into the archive only, whatever symlinks the layers hold.
#[test]
fn conversion_writes_nothing_but_the_archive() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let layers = vec![(
        layer_tar(&[
            symlink("up", &format!("{}", outside.display())),
            file("up/planted", b"x"),
            symlink("rel", "../../../../../../../../tmp"),
            file("rel/planted", b"y"),
        ]),
        Compression::Gzip,
    )];
    let layout = work.path().join("layout");
    oci_layout(&ImageSpec::new(layers, json!({}))).write_to(&layout);
    let members = read_archive(&convert(&layout));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let names: BTreeMap<String, String> = members
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                String::from_utf8_lossy(&m.data).into_owned(),
            )
        })
        .collect();
    // Both resolved inside the tree, as a chroot would.
    let inside = format!(
        "{}/planted",
        outside.display().to_string().trim_start_matches('/')
    );
    assert_eq!(
        names.get(&inside).map(String::as_str),
        Some("x"),
        "{names:?}"
    );
    assert_eq!(
        names.get("tmp/planted").map(String::as_str),
        Some("y"),
        "{names:?}"
    );
}
