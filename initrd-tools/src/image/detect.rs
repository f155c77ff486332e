//! What a ROOTFS path is, by content: a directory, an OCI layout
//! directory, a cpio initrd, a tar of a rootfs, a docker-archive or an OCI
//! archive. Names and extensions are never looked at.
//!
//! A tar archive is an image archive when every member lies in an image
//! archive's vocabulary (`manifest.json`, `index.json`, `oci-layout`,
//! `repositories`, `blobs/...`, `<64 hex>/...`, `<64 hex>.json`,
//! `<64 hex>.tar`) and it has
//! `manifest.json` (docker-archive; Docker 25+ archives also have the OCI
//! files) or `oci-layout` and `index.json` (OCI archive). Anything else is
//! a rootfs tar; the first member outside the vocabulary (in a rootfs tar,
//! the first or second) ends the scan.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::remembered::Which;
use super::store::{link_target, normalise_member_name, Member, Store, Window};
use super::tar_reader::{Seekable, Stream, TarError, TarReader};
use super::{
    docker, file_identity, is_sha256_hex, oci, quote, remembered, Compression, Image, ImageError,
    ImageFormat, Layer,
};
use crate::regular_file::{self, Links};

/// The compressed formats the kernel unpacks an initramfs from, by magic.
const COMPRESSIONS: [(&[u8], &str); 5] = [
    (&[0x1f, 0x8b], "gzip"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
    (b"BZh", "bzip2"),
];

/// The length of a tar header block.
const BLOCK: usize = 512;

/// The compression of an initrd that starts with `head`, if any, among
/// those the kernel unpacks.
pub fn compression_format(head: &[u8]) -> Option<&'static str> {
    COMPRESSIONS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|&(_, format)| format)
}

/// What a ROOTFS path holds.
#[derive(Debug)]
pub enum Detected {
    /// A plain directory, to pack as it is.
    Directory,
    /// A cpio initrd (newc, or compressed), to boot as it is.
    Cpio,
    /// An image or a rootfs tar, opened, to convert.
    Image(Box<Image>),
}

/// Tells what `path` is, by its content, and opens it when it is an image
/// (reading its index, manifest and configuration, checked against their
/// digests). Anything else is an [`ImageError::UnknownFormat`] that lists
/// what is accepted.
///
/// When `path` does not exist but is `PATH:TAG` with a `PATH` that does
/// (skopeo's spelling, `oci:DIR:TAG`), the image tagged `TAG` in the OCI
/// layout, OCI archive or docker-archive `PATH` is opened.
pub fn detect(path: &Path) -> Result<Detected, ImageError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match split_tag(path) {
            Some((image, tag)) => detect_as(&image, Some(&tag)),
            None => Err(ImageError::read(path, e)),
        },
        _ => detect_as(path, None),
    }
}

/// `PATH:TAG` split at the first `:` after which `PATH` exists; `None`
/// when there is none.
fn split_tag(path: &Path) -> Option<(PathBuf, String)> {
    let bytes = path.as_os_str().as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b':' && i > 0 && i + 1 < bytes.len())
        .find_map(|(i, _)| {
            let image = Path::new(OsStr::from_bytes(&bytes[..i]));
            let tag = std::str::from_utf8(&bytes[i + 1..]).ok()?;
            fs::metadata(image)
                .is_ok()
                .then(|| (image.to_path_buf(), tag.to_string()))
        })
}

/// [`detect`] for an existing `path`, picking the image tagged `tag`.
fn detect_as(path: &Path, tag: Option<&str>) -> Result<Detected, ImageError> {
    let detected = detect_untagged(path, tag)?;
    let Some(tag) = tag else {
        return Ok(detected);
    };
    let kind = match &detected {
        Detected::Directory => "a directory".to_string(),
        Detected::Cpio => "a cpio initrd".to_string(),
        Detected::Image(image) => match image.format() {
            ImageFormat::Tar(_) | ImageFormat::DirTransport => format!("a {}", image.format()),
            _ => return Ok(detected),
        },
    };
    Err(ImageError::NotTagged {
        path: path.to_path_buf(),
        tag: quote(tag.as_bytes()),
        kind,
    })
}

fn detect_untagged(path: &Path, tag: Option<&str>) -> Result<Detected, ImageError> {
    // Before anything is read: what is remembered must have changed
    // before the reading began (`remembered`).
    let started = SystemTime::now();
    let meta = fs::metadata(path).map_err(|e| ImageError::read(path, e))?;
    if meta.is_dir() {
        let oci_layout = fs::symlink_metadata(path.join("oci-layout")).is_ok();
        if !oci_layout && !has_dir_transport_files(path) {
            return Ok(Detected::Directory);
        }
        // A layout opened before, none of its files changed since.
        let facts = remembered::dir();
        if let Some(dir) = &facts {
            if let Some(image) = remembered::recall(dir, path, &meta, Which::Tag(tag)) {
                return Ok(Detected::Image(Box::new(image)));
            }
        }
        let mut image = if oci_layout {
            let store = Store::Dir(path.to_path_buf());
            oci::open(&store, ImageFormat::OciLayout, tag)?
        } else if is_dir_transport(path) {
            let store = Store::Flat(path.to_path_buf());
            oci::open_dir_transport(&store)?
        } else {
            return Ok(Detected::Directory);
        };
        if let Some(dir) = &facts {
            remembered::remember(dir, path, &meta, Which::Tag(tag), &[], &mut image, started);
        }
        return Ok(Detected::Image(Box::new(image)));
    }
    if !meta.is_file() {
        return Err(ImageError::NotAFile {
            path: path.to_path_buf(),
            kind: crate::describe_type(meta.file_type()),
        });
    }
    // An image file opened before and unchanged since is not read again.
    let facts = remembered::dir();
    if let Some(dir) = &facts {
        if let Some(image) = remembered::recall(dir, path, &meta, Which::Tag(tag)) {
            return Ok(Detected::Image(Box::new(image)));
        }
    }
    let file = regular_file::open(path, Links::Follow).map_err(|e| ImageError::read(path, e))?;
    // The metadata of the file read, which the entry is keyed by.
    let opened = file.metadata().map_err(|e| ImageError::read(path, e))?;
    let mut detected = detect_file(path, &opened, &file, tag)?;
    if let (Detected::Image(image), Some(dir)) = (&mut detected, &facts) {
        remembered::remember(dir, path, &opened, Which::Tag(tag), &[], image, started);
    }
    Ok(detected)
}

/// What the regular file `path` (with the metadata `meta`, open as
/// `file`) is, by its content.
fn detect_file(
    path: &Path,
    meta: &fs::Metadata,
    file: &File,
    tag: Option<&str>,
) -> Result<Detected, ImageError> {
    let head =
        read_head(&mut Window::new(file, 0, meta.len())).map_err(|e| ImageError::read(path, e))?;
    if is_newc(&head) {
        return Ok(Detected::Cpio);
    }
    let unknown = || ImageError::UnknownFormat {
        path: path.to_path_buf(),
    };
    let compression = Compression::of(&head);
    if compression != Compression::None {
        let decompression_error = |source| ImageError::Decompress {
            path: path.to_path_buf(),
            compression: compression.name(),
            source,
        };
        let mut decoder = compression
            .decoder(Window::new(file, 0, meta.len()))
            .map_err(decompression_error)?;
        let inner = read_head(&mut decoder).map_err(decompression_error)?;
        if is_newc(&inner) {
            return Ok(Detected::Cpio);
        }
        if !is_tar_header(&inner) {
            return Err(unknown());
        }
        let decoder = compression
            .decoder(Window::new(file, 0, meta.len()))
            .map_err(decompression_error)?;
        let kind = classify_stream(decoder).map_err(|e| match e {
            TarError::Read(e) => decompression_error(e),
            source => ImageError::Tar {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let Some(kind) = kind else {
            return Ok(Detected::Image(Box::new(rootfs_tar(
                path,
                meta,
                compression,
            ))));
        };
        return Err(ImageError::CompressedImageArchive {
            path: path.to_path_buf(),
            compression: compression.name(),
            kind: match kind {
                ImageFormat::DockerArchive => "docker-archive",
                _ => "OCI archive",
            },
            tool: compression.name(),
        });
    }
    if compression_format(&head).is_some() && !is_tar_header(&head) {
        // lz4 (and bzip2 without a block after its magic): only the kernel
        // unpacks those, as initrds.
        return Ok(Detected::Cpio);
    }
    if !is_tar_header(&head) {
        return Err(unknown());
    }
    let (kind, members) = scan_archive(file, path, meta.len())?;
    let store = Store::Tar {
        path: path.to_path_buf(),
        members,
    };
    let image = match kind {
        None => rootfs_tar(path, meta, Compression::None),
        Some(ImageFormat::DockerArchive) => docker::open(&store, tag)?,
        Some(format) => oci::open(&store, format, tag)?,
    };
    Ok(Detected::Image(Box::new(image)))
}

/// Whether the directory `path` is skopeo's `dir:` layout: `manifest.json`
/// beside a `version` file that says so (a rootfs has neither at its top).
fn is_dir_transport(path: &Path) -> bool {
    if !has_dir_transport_files(path) {
        return false;
    }
    let mut head = Vec::new();
    let read =
        File::open(path.join("version")).and_then(|file| file.take(64).read_to_end(&mut head));
    read.is_ok() && head.starts_with(oci::DIR_TRANSPORT_VERSION.as_bytes())
}

/// Whether the directory `path` has the files of skopeo's `dir:` layout,
/// `manifest.json` and `version`, as regular files (by their metadata
/// alone).
fn has_dir_transport_files(path: &Path) -> bool {
    let regular = |name: &str| {
        fs::symlink_metadata(path.join(name)).is_ok_and(|meta| meta.file_type().is_file())
    };
    regular("manifest.json") && regular("version")
}

/// A rootfs tar: one layer, the whole file, no configuration.
fn rootfs_tar(path: &Path, meta: &fs::Metadata, compression: Compression) -> Image {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Image {
        path: path.to_path_buf(),
        format: ImageFormat::Tar(compression),
        layers: vec![Layer {
            name,
            file: path.to_path_buf(),
            offset: 0,
            len: meta.len(),
            digest: None,
            diff_id: None,
        }],
        config: Default::default(),
        identity: file_identity(meta),
        description: String::new(),
        known_estimate: None,
    }
}

/// Up to one tar block from the start of `reader`.
fn read_head(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(BLOCK);
    reader.take(BLOCK as u64).read_to_end(&mut head)?;
    Ok(head)
}

fn is_newc(head: &[u8]) -> bool {
    head.starts_with(b"070701") || head.starts_with(b"070702")
}

/// Whether `block` is a tar header: not all zeros, and its checksum (the
/// byte sum with the checksum field counted as spaces) matches. Holds for
/// v7, ustar, GNU and pax archives alike.
fn is_tar_header(block: &[u8]) -> bool {
    let Some(block) = block.get(..BLOCK) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

/// The names seen so far in a tar that may be an image archive.
#[derive(Default)]
struct Vocabulary {
    manifest_json: bool,
    index_json: bool,
    oci_layout: bool,
}

impl Vocabulary {
    /// Notes the member `name`; false when an image archive has no such
    /// member (so the tar is a rootfs).
    fn observe(&mut self, name: &[u8]) -> bool {
        let Some(name) = std::str::from_utf8(name)
            .ok()
            .and_then(normalise_member_name)
        else {
            return false;
        };
        let (top, nested) = match name.split_once('/') {
            Some((top, _)) => (top, true),
            None => (name.as_str(), false),
        };
        match (top, nested) {
            ("", _) | ("blobs", _) => true,
            ("manifest.json", false) => {
                self.manifest_json = true;
                true
            }
            ("index.json", false) => {
                self.index_json = true;
                true
            }
            ("oci-layout", false) => {
                self.oci_layout = true;
                true
            }
            ("repositories", false) => true,
            (top, _) if is_sha256_hex(top) => true,
            // `<hex>.json`: a configuration; `<hex>.tar`: a layer, as
            // podman, skopeo and buildah write docker-archives.
            (top, false) => [".json", ".tar"]
                .iter()
                .any(|suffix| top.strip_suffix(suffix).is_some_and(is_sha256_hex)),
            _ => false,
        }
    }

    fn verdict(&self) -> Option<ImageFormat> {
        if self.manifest_json {
            Some(ImageFormat::DockerArchive)
        } else if self.oci_layout && self.index_json {
            Some(ImageFormat::OciArchive)
        } else {
            None
        }
    }
}

/// Which image archive a tar stream is, `None` for a rootfs tar.
fn classify_stream(reader: impl Read) -> Result<Option<ImageFormat>, TarError> {
    let mut tar = TarReader::new(Stream(reader));
    let mut vocabulary = Vocabulary::default();
    while let Some(entry) = tar.next_entry()? {
        if !vocabulary.observe(&entry.path) {
            return Ok(None);
        }
    }
    Ok(vocabulary.verdict())
}

/// Which image archive the uncompressed tar `file` is (`None`: a rootfs
/// tar), and its members when it is one. Member data is skipped, not read.
fn scan_archive(
    file: &File,
    path: &Path,
    file_len: u64,
) -> Result<(Option<ImageFormat>, BTreeMap<String, Member>), ImageError> {
    let tar_error = |source| ImageError::Tar {
        path: path.to_path_buf(),
        source,
    };
    let mut tar = TarReader::new(Seekable(file));
    let mut vocabulary = Vocabulary::default();
    let mut members = BTreeMap::new();
    while let Some(entry) = tar.next_entry().map_err(tar_error)? {
        if !vocabulary.observe(&entry.path) {
            return Ok((None, BTreeMap::new()));
        }
        // observe() accepted it, so it is UTF-8 and normalises.
        let name = std::str::from_utf8(&entry.path)
            .ok()
            .and_then(normalise_member_name)
            .unwrap_or_default();
        let entry_type = entry.header.entry_type();
        let member = if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            let (offset, size) = (entry.data_pos, entry.size);
            if offset.saturating_add(size) > file_len {
                return Err(ImageError::invalid(
                    path,
                    format!(
                        "the archive is truncated: its member {} runs past the end of the file",
                        quote(name.as_bytes())
                    ),
                ));
            }
            Member::File { offset, size }
        } else if entry_type.is_symlink() || entry_type.is_hard_link() {
            let target = entry.link.as_deref().unwrap_or_default();
            let target = String::from_utf8_lossy(target);
            match link_target(&name, &target, entry_type.is_symlink()) {
                Some(target) => Member::Link(target),
                None => Member::Other,
            }
        } else {
            Member::Other
        };
        members.insert(name, member);
    }
    Ok((vocabulary.verdict(), members))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(names: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for name in names {
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, &b"{}"[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn tar_headers_are_recognised_by_checksum() {
        let bytes = tar_of(&["etc/passwd"]);
        assert!(is_tar_header(&bytes));
        let mut broken = bytes.clone();
        broken[0] ^= 1;
        assert!(!is_tar_header(&broken));
        assert!(!is_tar_header(&[0; 512]));
        assert!(!is_tar_header(b"070701"));
    }

    #[test]
    fn archives_are_classified_by_their_members() {
        let hex = "a".repeat(64);
        let legacy = [
            format!("{hex}/layer.tar"),
            format!("{hex}.json"),
            "manifest.json".into(),
        ];
        let legacy: Vec<&str> = legacy.iter().map(String::as_str).collect();
        let classify = |names: &[&str]| classify_stream(&tar_of(names)[..]).unwrap();
        assert_eq!(classify(&legacy), Some(ImageFormat::DockerArchive));
        assert_eq!(
            classify(&["oci-layout", "index.json", "blobs/sha256/x"]),
            Some(ImageFormat::OciArchive)
        );
        assert_eq!(
            classify(&[
                "blobs/sha256/x",
                "index.json",
                "manifest.json",
                "oci-layout"
            ]),
            Some(ImageFormat::DockerArchive)
        );
        // podman, skopeo and buildah: `<hex>.tar` layers at the top.
        let podman = [
            format!("{hex}.tar"),
            format!("{}.json", "b".repeat(64)),
            format!("{}/layer.tar", "c".repeat(64)),
            "manifest.json".into(),
            "repositories".into(),
        ];
        let podman: Vec<&str> = podman.iter().map(String::as_str).collect();
        assert_eq!(classify(&podman), Some(ImageFormat::DockerArchive));
        let short = format!("{}.tar", "a".repeat(63));
        assert_eq!(classify(&[&short, "manifest.json"]), None);
        // A rootfs that happens to have a manifest.json is a rootfs.
        assert_eq!(classify(&["manifest.json", "etc/passwd"]), None);
        assert_eq!(classify(&["./", "./bin/sh"]), None);
        assert_eq!(classify(&["index.json"]), None);
    }

    #[test]
    fn compression_magics() {
        assert_eq!(compression_format(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(
            compression_format(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Some("zstd")
        );
        assert_eq!(compression_format(b"070701"), None);
        assert_eq!(
            Compression::of(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::of(b"BZh"), Compression::None);
        assert_eq!(Compression::of(b"BZh91AY&SY"), Compression::Bzip2);
        assert_eq!(Compression::of(b"BZh9\x17rE8P\x90"), Compression::Bzip2);
        assert_eq!(Compression::of(b"BZh9 a name"), Compression::None);
        assert_eq!(Compression::of(b"\xfd7zXZ\0\0\x01"), Compression::Xz);
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
        io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    /// xz and bzip2 files are told by what they decompress to: a tar is a
    /// rootfs tar, a newc archive an initrd the kernel unpacks itself.
    #[test]
    fn xz_and_bzip2_hold_a_rootfs_tar_or_a_cpio_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&["etc/os-release"]);
        let cpio = b"070701000000010000...TRAILER!!!".repeat(20);
        // `BZh` also starts a tar whose first member has that name.
        let bzh = tar_of(&["BZh91AY"]);
        for (name, bytes, expected) in [
            ("root.tar.xz", xz(&tar), Some(Compression::Xz)),
            ("root.tar.bz2", bzip2(&tar), Some(Compression::Bzip2)),
            (
                "two-streams.tar.xz",
                [xz(&tar[..512]), xz(&tar[512..])].concat(),
                Some(Compression::Xz),
            ),
            ("bzh.tar", bzh, Some(Compression::None)),
            ("initrd.xz", xz(&cpio), None),
            ("initrd.bz2", bzip2(&cpio), None),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            match (detect(&path).unwrap(), expected) {
                (Detected::Image(image), Some(compression)) => {
                    assert_eq!(image.format(), ImageFormat::Tar(compression), "{name}");
                }
                (Detected::Cpio, None) => {}
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
        // Neither inside: an unknown format, not an initrd.
        let path = dir.path().join("notes.xz");
        fs::write(&path, xz(b"just text")).unwrap();
        let err = detect(&path).unwrap_err();
        assert!(matches!(err, ImageError::UnknownFormat { .. }), "{err}");
        // Corrupt after its magic: a decompression error naming xz.
        let mut corrupt = xz(&tar);
        corrupt.truncate(12);
        corrupt.extend([0x55; 64]);
        fs::write(&path, corrupt).unwrap();
        let err = detect(&path).unwrap_err().to_string();
        assert!(err.contains("(xz)"), "{err}");
    }
}
