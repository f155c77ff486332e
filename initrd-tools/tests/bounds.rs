//! Tar archives that claim huge headers or names, or hold names no file
//! can have: refused at once, with errors that name the archive, the
//! limit and (cut short) the entry. Memory is measured in a child process
//! (this test binary run again for one case), whose peak resident set
//! (`VmHWM`) is its own.

mod images;

use std::path::{Path, PathBuf};
use std::process::Command;

use images::*;
use initrd_tools::image::{detect, Detected};
use serde_json::json;

/// Set in the child: the case it runs.
const CHILD: &str = "INITRD_TOOLS_BOUNDS_CHILD";
const MIB: usize = 1 << 20;
/// The data behind each crafted header: more than the peak allowed, so
/// that a reader holding the header whole fails the test.
const BEHIND_MIB: usize = 80;
/// The peak resident set allowed to a child, in KiB.
const PEAK_KIB: u64 = 64 * 1024;

/// A tar stream, compressed by `how`, whose first header is of type
/// `kind` and claims `claim` bytes; [`BEHIND_MIB`] of zeros follow it.
/// Built of concatenated gzip members or zstd frames (which the readers
/// take as one stream), so the megabytes are compressed once.
fn crafted(kind: u8, claim: u64, how: Compression) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_size(claim);
    let name = b"././@LongLink";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut out = compress(header.as_bytes(), how);
    let zeros = compress(&vec![0; MIB], how);
    for _ in 0..BEHIND_MIB {
        out.extend_from_slice(&zeros);
    }
    out
}

/// An OCI layout whose one layer is the blob `layer` (gzip). Its diff_id
/// is made up: the layer fails before digests are compared.
fn layout_with_layer(dir: &Path, layer: Vec<u8>) -> PathBuf {
    let mut files = Files::default();
    let mut blob = |data: Vec<u8>, media_type: &str| {
        let descriptor =
            json!({"mediaType": media_type, "digest": digest(&data), "size": data.len()});
        files
            .files
            .insert(format!("blobs/sha256/{}", sha256_hex(&data)), data);
        descriptor
    };
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    });
    let config = blob(
        serde_json::to_vec(&config).unwrap(),
        "application/vnd.oci.image.config.v1+json",
    );
    let layer = blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(
        serde_json::to_vec(&manifest).unwrap(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    manifest["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let layout = dir.join("layout");
    oci_layout_with(files, vec![manifest]).write_to(&layout);
    layout
}

/// In the child: detects `path`, and converts it when it is an image;
/// prints the error and the peak resident set.
fn child(path: &Path) {
    let out = tempfile::tempdir().unwrap();
    let result = detect(path).and_then(|detected| match detected {
        Detected::Image(image) => image.convert_to(&out.path().join("out.cpio")).map(drop),
        other => panic!("{} detected as {other:?}", path.display()),
    });
    let err = result.expect_err("the crafted archive should be refused");
    println!("bounds-child error: {err}");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    println!("bounds-child {hwm}");
}

/// Runs [`child`] on `path` in a new process: its error and its peak
/// resident set in KiB.
fn in_child(test: &str, path: &Path) -> (String, u64) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, path)
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"))
            .trim()
            .to_string()
    };
    let error = field("bounds-child error: ");
    let hwm = field("bounds-child VmHWM:");
    let kib = hwm.trim_end_matches("kB").trim().parse().unwrap();
    (error, kib)
}

#[test]
fn crafted_headers_are_refused_at_once_in_bounded_memory() {
    const TEST: &str = "crafted_headers_are_refused_at_once_in_bounded_memory";
    if let Some(path) = std::env::var_os(CHILD) {
        return child(Path::new(&path));
    }
    let work = tempfile::tempdir().unwrap();
    let gib = 1u64 << 30;
    let cases = [
        // A rootfs tar fails in detection, which reads its headers.
        (b'x', gib, Compression::Zstd, "PAX extended header", false),
        (b'L', 4 * gib, Compression::Gzip, "GNU long name", false),
        (b'K', gib, Compression::Zstd, "GNU long link name", false),
        // An image's layer fails in conversion.
        (
            b'x',
            3 * gib,
            Compression::Gzip,
            "PAX extended header",
            true,
        ),
        (b'L', gib, Compression::Gzip, "GNU long name", true),
    ];
    for (i, (kind, claim, how, what, in_image)) in cases.into_iter().enumerate() {
        let bytes = crafted(kind, claim, how);
        assert!(bytes.len() < 4 * MIB, "{} bytes", bytes.len());
        let dir = work.path().join(i.to_string());
        std::fs::create_dir(&dir).unwrap();
        let path = if in_image {
            layout_with_layer(&dir, bytes)
        } else {
            let path = dir.join("crafted.tar");
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let (error, peak_kib) = in_child(TEST, &path);
        let case = format!("{} {how:?} claiming {claim}", kind as char);
        for needle in [
            &path.display().to_string(),
            what,
            "1 MiB",
            &claim.to_string(),
        ] {
            assert!(error.contains(needle), "{case}: no {needle:?} in: {error}");
        }
        if in_image {
            assert!(error.contains("layer 1"), "{case}: {error}");
        }
        assert!(
            peak_kib < PEAK_KIB,
            "{case}: peak resident set {peak_kib} KiB, over {PEAK_KIB} KiB"
        );
    }
}

/// The error converting the rootfs tar `tar`.
fn convert_err(tar: Vec<u8>) -> String {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("root.tar");
    std::fs::write(&path, tar).unwrap();
    let result = detect(&path).and_then(|detected| match detected {
        Detected::Image(image) => image.convert_to(&work.path().join("out.cpio")),
        other => panic!("detected as {other:?}"),
    });
    result.expect_err("should be refused").to_string()
}

/// PAX records before an entry, as key and value.
type Pax<'a> = &'a [(&'a str, &'a [u8])];

/// A tar of `entries`: (PAX records, header type, name, link target).
fn tar_of(entries: &[(Pax<'_>, tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for &(pax, kind, name, target) in entries {
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if target.is_empty() {
            builder.append_data(&mut header, name, &[][..]).unwrap();
        } else {
            builder.append_link(&mut header, name, target).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

#[test]
fn names_no_file_can_have_are_refused_with_short_messages() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let long_path = "d/".repeat(2500) + "f";
    let long_name = "n".repeat(300);
    let two_mib = vec![b'p'; 2 * MIB];
    let deep_target = vec!["t".repeat(250); 16].join("/");
    let deep_entry = format!("l/{}/{}", "c".repeat(250), "e".repeat(250));
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        // A GNU long name longer than PATH_MAX; a component over NAME_MAX.
        (
            tar_of(&[(&[], Regular, &long_path, "")]),
            &["PATH_MAX", "(5001 bytes)"],
        ),
        (
            tar_of(&[(&[], Regular, &format!("d/{long_name}"), "")]),
            &["NAME_MAX", "a component of 300 bytes"],
        ),
        // A NUL in a PAX path, a PAX header over the limit.
        (
            tar_of(&[(&[("path", b"a\0b")], Regular, "x", "")]),
            &["NUL", "\"a\\0b\""],
        ),
        (
            tar_of(&[(&[("path", &two_mib)], Regular, "x", "")]),
            &["1 MiB", "PAX extended header"],
        ),
        // A hard link to a path longer than PATH_MAX.
        (
            tar_of(&[(&[], Link, "h", &long_path)]),
            &["hard link", "PATH_MAX"],
        ),
        // Names that each fit, through a symlinked directory: a merged
        // path longer than PATH_MAX.
        (
            tar_of(&[
                (&[], Symlink, "l", &deep_target),
                (&[], Directory, &deep_entry, ""),
            ]),
            &["merged layers make the path", "PATH_MAX", "bytes)"],
        ),
    ];
    for (tar, needles) in cases {
        let err = convert_err(tar);
        assert!(err.len() < 1000, "{} bytes: {err}", err.len());
        for needle in needles {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
    }
}
