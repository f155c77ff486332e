//! Images opened before, remembered by the metadata of their files, so
//! that a run of an unchanged image reads nothing of it before its
//! converted archive is found in the cache. Opening one reads its tar
//! headers (an archive), its index, manifest and configuration (checking
//! their digests) and, for the choice of root, the first bytes of every
//! layer: all of it depends on the image's files alone.
//!
//! An entry `<cache>/facts/<hash>.image` holds the key (the image's path,
//! device, inode, size, mtime and ctime, [`Stamp::Metadata`], and the tag
//! asked for) and the opened image, as one line of JSON. An image in a
//! file (a docker-archive, an OCI archive, a rootfs tar) is that file; a
//! directory (an OCI layout, a `dir:` layout) also has the stamps of the
//! files the entry depends on, checked on every recall: its top files
//! (`oci-layout`, `index.json`; `version`, `manifest.json`), the blobs'
//! directory (a blob added, removed or renamed into place changes it) and
//! every layer. The manifest and configuration blobs are named by their
//! digests, which were checked when they were read. A file rewritten,
//! replaced or touched has another stamp, and the image is opened again.
//!
//! An image of a store of blobs shared by many images (the registry
//! pulls' OCI layout, which has no `index.json`) is opened by its
//! manifest's digest, [`Which::Manifest`]: its entry is keyed by the
//! store's stamp and that digest, and holds the stamps of the manifest,
//! configuration and layer blobs, not the blobs directory's, which every
//! pull of another image changes. A content-addressed store writes a blob
//! once under its digest, so a blob whose stamp holds still has the bytes
//! that were checked against that digest.
//!
//! An image is remembered only when its files last changed [`SETTLED`]
//! before the opening began: a rewrite within the same tick of the file
//! system's clock keeps the size and both times, so an entry taken right
//! after a change could outlive the contents it was read from (git's
//! "racily clean" files).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{Compression, Digest, Image, ImageConfig, ImageFormat, Layer};
use crate::cache::{self, Stamp};

/// Changes whenever this format or what opening an image finds changes.
const FORMAT: &str = "microrun-opened-image-v1";
/// What the entries' names end in.
const SUFFIX: &str = ".image";
/// How many images are remembered.
const KEEP: usize = 16;
/// The largest entry written or read back (an image's configuration is
/// kilobytes; one that takes more is opened every time).
const MAX_ENTRY: u64 = 1 << 20;
/// How long after its last change a file is remembered: longer than the
/// coarsest timestamps of the file systems images lie on (seconds on ext3
/// and some network file systems, two on FAT).
pub(crate) const SETTLED: Duration = Duration::from_secs(2);

/// The directory of the entries (`<cache>/facts`, made and checked), or
/// `None` when the cache cannot be used: images are then opened every
/// time, and the conversion says what is wrong with the cache.
pub(crate) fn dir() -> Option<PathBuf> {
    match cache::subdir(cache::FACTS_DIR) {
        Ok(dir) => Some(dir),
        Err(e) => {
            log::debug!("images are opened afresh: {e}");
            None
        }
    }
}

/// Which image of a file or directory was opened.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Which<'a> {
    /// The image tagged so (`PATH:TAG`), or without a tag the only one.
    Tag(Option<&'a str>),
    /// The image whose manifest is this blob of a store shared by many
    /// images (see the module comment).
    Manifest(&'a Digest),
}

/// What an entry is keyed by: the image `path` (a file or a directory)
/// with the metadata `meta`, and which image of it was opened.
fn key(path: &Path, meta: &fs::Metadata, which: Which) -> String {
    let stamp = cache::stamp_of(path, meta, Stamp::Metadata);
    match which {
        Which::Tag(tag) => format!("{FORMAT} {stamp} tag {tag:?}"),
        Which::Manifest(digest) => format!("{FORMAT} {stamp} manifest {digest}"),
    }
}

fn entry(dir: &Path, key: &str) -> PathBuf {
    let hash = Digest::of_bytes(key.as_bytes());
    dir.join(format!("{}{SUFFIX}", &hash.hex()[..32]))
}

/// The image `which` of `path` (a file or a directory, whose metadata is
/// `meta` now) as it was opened, when it is remembered in `dir` under that
/// metadata and none of the files it depends on changed since.
pub(crate) fn recall(dir: &Path, path: &Path, meta: &fs::Metadata, which: Which) -> Option<Image> {
    let key = key(path, meta, which);
    let value = cache::load_fact(&entry(dir, &key), &key, MAX_ENTRY)?;
    let Some((image, files)) = decode(path, meta.len(), &value) else {
        log::debug!(
            "{}: its remembered opening is unreadable: opening it again",
            path.display()
        );
        return None;
    };
    for (name, stamp) in &files {
        if cache::stamp(&path.join(name), Stamp::Metadata) != *stamp {
            log::debug!("{}: {name} changed: opening it again", path.display());
            return None;
        }
    }
    log::debug!(
        "{}: opened before and unchanged since (by its metadata)",
        path.display()
    );
    Some(image)
}

/// Remembers `image`, opened as `which` from `path` (a file or a
/// directory) whose metadata was `meta` when it was opened, unless it or a
/// file it depends on changed less than [`SETTLED`] before `started`, when
/// the opening began. The files it depends on are its format's (see the
/// module comment), the files `read` (names in `path`: the blobs a store's
/// image was read from) and its layers. Failures are logged: this is an
/// optimisation. The unpacked estimate taken for the entry is kept in
/// `image` too, so the run that opened it does not read its layers for it
/// again.
pub(crate) fn remember(
    dir: &Path,
    path: &Path,
    meta: &fs::Metadata,
    which: Which,
    read: &[String],
    image: &mut Image,
    started: SystemTime,
) {
    let unsettled = || {
        log::debug!(
            "{}: changed in the last {} s: not remembered, opened again next time",
            path.display(),
            SETTLED.as_secs()
        );
    };
    if !settled(meta, started) {
        return unsettled();
    }
    let Some(names) = depends_on(path, image, which, read) else {
        return;
    };
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let file = path.join(&name);
        match fs::metadata(&file) {
            Ok(file_meta) if settled(&file_meta, started) => {
                files.push((name, cache::stamp_of(&file, &file_meta, Stamp::Metadata)));
            }
            Ok(_) => return unsettled(),
            Err(_) => return,
        }
    }
    if image.known_estimate.is_none() {
        image.known_estimate = image.unpacked_estimate().ok();
    }
    let Some(value) = encode(path, image, &files) else {
        return;
    };
    let key = key(path, meta, which);
    if (key.len() + value.len() + 2) as u64 > MAX_ENTRY {
        log::debug!(
            "{}: its configuration is too large to remember",
            path.display()
        );
        return;
    }
    if let Err(e) = cache::store_fact(dir, &entry(dir, &key), &key, &value, SUFFIX, KEEP) {
        log::debug!("cannot remember how {} opened: {e}", path.display());
    }
}

/// The files in the directory `path` whose stamps an entry for `image`,
/// opened as `which` from the files `read` (besides its layers), holds,
/// by their names in it (none for an image in a file); `None` when a
/// layer lies outside `path`, or has a name that is not UTF-8.
fn depends_on(path: &Path, image: &Image, which: Which, read: &[String]) -> Option<Vec<String>> {
    let top: &[&str] = match (which, image.format) {
        (Which::Manifest(_), _) => &[],
        (_, ImageFormat::OciLayout) => &["oci-layout", "index.json", "blobs/sha256"],
        (_, ImageFormat::DirTransport) => &["version", "manifest.json"],
        _ => &[],
    };
    let mut names: Vec<String> = top.iter().map(|name| name.to_string()).collect();
    for name in read {
        if !inside(name) || name.is_empty() {
            return None;
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    for layer in &image.layers {
        let name = layer_name(path, &layer.file)?;
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// `file` as a layer's entry names it: `""` for `path` itself, else its
/// name inside the directory `path`.
fn layer_name(path: &Path, file: &Path) -> Option<String> {
    if file == path {
        return Some(String::new());
    }
    let name = file.strip_prefix(path).ok()?.to_str()?;
    (inside(name) && !name.is_empty()).then(|| name.to_string())
}

/// Whether `name` is a plain relative name that stays inside its
/// directory.
fn inside(name: &str) -> bool {
    super::store::normalise_member_name(name).as_deref() == Some(name)
}

/// Whether the file's last change (mtime or ctime, the later) lies at
/// least [`SETTLED`] before `now`.
fn settled(meta: &fs::Metadata, now: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let at = |secs: i64, nanos: i64| -> Option<SystemTime> {
        let since = Duration::new(u64::try_from(secs).ok()?, u32::try_from(nanos).ok()?);
        SystemTime::UNIX_EPOCH.checked_add(since)
    };
    let (Some(modified), Some(changed)) = (
        at(meta.mtime(), meta.mtime_nsec()),
        at(meta.ctime(), meta.ctime_nsec()),
    ) else {
        return false;
    };
    now.duration_since(modified.max(changed))
        .is_ok_and(|age| age >= SETTLED)
}

fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Tar(compression) => format!("tar:{}", compression.name()),
        ImageFormat::DockerArchive => "docker-archive".into(),
        ImageFormat::OciArchive => "oci-archive".into(),
        ImageFormat::OciLayout => "oci-layout".into(),
        ImageFormat::DirTransport => "dir".into(),
    }
}

fn parse_format(name: &str) -> Option<ImageFormat> {
    let compression = match name {
        "docker-archive" => return Some(ImageFormat::DockerArchive),
        "oci-archive" => return Some(ImageFormat::OciArchive),
        "oci-layout" => return Some(ImageFormat::OciLayout),
        "dir" => return Some(ImageFormat::DirTransport),
        "tar:uncompressed" => Compression::None,
        "tar:gzip" => Compression::Gzip,
        "tar:zstd" => Compression::Zstd,
        "tar:xz" => Compression::Xz,
        "tar:bzip2" => Compression::Bzip2,
        _ => return None,
    };
    Some(ImageFormat::Tar(compression))
}

/// The entry's line for `image`, opened from `path`, which depends on the
/// `files` (name, stamp); `None` when it is not to be remembered (a layer
/// outside `path`, or no estimate: a layer could not be read for it).
fn encode(path: &Path, image: &Image, files: &[(String, String)]) -> Option<String> {
    if image.path != path {
        return None;
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        layers.push(json!({
            "file": layer_name(path, &layer.file)?,
            "name": layer.name,
            "offset": layer.offset,
            "len": layer.len,
            "digest": layer.digest.as_ref().map(Digest::hex),
            "diff_id": layer.diff_id.as_ref().map(Digest::hex),
        }));
    }
    let estimate = image.known_estimate?;
    let config = &image.config;
    let value = json!({
        "format": format_name(image.format),
        "files": files,
        "layers": layers,
        "entrypoint": config.entrypoint,
        "cmd": config.cmd,
        "env": config.env,
        "working_dir": config.working_dir,
        "user": config.user,
        "identity": image.identity,
        "description": image.description,
        "estimate": estimate,
    });
    serde_json::to_string(&value).ok()
}

/// The image `line` describes, from `path` (whose length is `len`), and
/// the files it depends on (name, stamp); `None` for anything [`encode`]
/// would not have written.
fn decode(path: &Path, len: u64, line: &str) -> Option<(Image, Vec<(String, String)>)> {
    let value: Value = serde_json::from_str(line).ok()?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let texts = |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(text).collect() };
    let optional = |v: &Value| match v {
        Value::Null => Some(None),
        v => text(v).map(Some),
    };
    let digest = |v: &Value| match v {
        Value::Null => Some(None),
        v => Digest::from_hex(v.as_str()?).map(Some),
    };
    let mut files = Vec::new();
    for file in value["files"].as_array()? {
        let (name, stamp) = (text(&file[0])?, text(&file[1])?);
        if !inside(&name) || name.is_empty() {
            return None;
        }
        files.push((name, stamp));
    }
    let mut layers = Vec::new();
    for layer in value["layers"].as_array()? {
        let (offset, layer_len) = (layer["offset"].as_u64()?, layer["len"].as_u64()?);
        let name = text(&layer["file"])?;
        let file = if name.is_empty() {
            // A member of the archive `path`: within it.
            if offset.checked_add(layer_len)? > len {
                return None;
            }
            path.to_path_buf()
        } else if inside(&name) {
            path.join(name)
        } else {
            return None;
        };
        layers.push(Layer {
            name: text(&layer["name"])?,
            file,
            offset,
            len: layer_len,
            digest: digest(&layer["digest"])?,
            diff_id: digest(&layer["diff_id"])?,
        });
    }
    let image = Image {
        path: path.to_path_buf(),
        format: parse_format(value["format"].as_str()?)?,
        layers,
        config: ImageConfig {
            entrypoint: texts(&value["entrypoint"])?,
            cmd: texts(&value["cmd"])?,
            env: texts(&value["env"])?,
            working_dir: optional(&value["working_dir"])?,
            user: optional(&value["user"])?,
        },
        identity: text(&value["identity"])?,
        description: text(&value["description"])?,
        known_estimate: Some(value["estimate"].as_u64()?),
    };
    Some((image, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A docker-archive-like image whose one layer is the file itself.
    fn image(path: &Path, len: u64) -> Image {
        Image {
            path: path.to_path_buf(),
            format: ImageFormat::DockerArchive,
            layers: vec![Layer {
                name: "abc/layer.tar".into(),
                file: path.to_path_buf(),
                offset: 0,
                len,
                digest: None,
                diff_id: Digest::from_hex(&"d".repeat(64)),
            }],
            config: ImageConfig {
                entrypoint: vec!["/bin/sh".into(), "-c".into()],
                cmd: vec!["echo \"a b\"\nnext".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/srv".into()),
                user: None,
            },
            identity: "config:sha256:x".into(),
            description: "t:latest, image ID x".into(),
            known_estimate: None,
        }
    }

    #[test]
    fn an_image_reads_back_as_it_was_written_and_anything_else_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        fs::write(&path, [0u8; 1024]).unwrap();
        let original = Image {
            known_estimate: Some(1024),
            ..image(&path, 1024)
        };
        let line = encode(&path, &original, &[]).unwrap();
        assert!(!line.contains('\n'), "{line}");
        let (back, files) = decode(&path, 1024, &line).unwrap();
        assert!(files.is_empty());
        assert_eq!(back.unpacked_estimate().unwrap(), 1024);
        assert_eq!(back, original);
        // A layer past the end of the file, damaged text, other formats.
        assert!(decode(&path, 1000, &line).is_none());
        assert!(decode(&path, 1024, &line[..line.len() / 2]).is_none());
        assert!(decode(&path, 1024, &line.replace("docker-archive", "zip")).is_none());
        assert!(decode(&path, 1024, &line.replace(&"d".repeat(64), "d")).is_none());
        assert!(decode(&path, 1024, "null").is_none());
        // A layer outside the image is not remembered, nor read back.
        let mut elsewhere = original.clone();
        elsewhere.layers[0].file = dir.path().join("blob");
        assert!(encode(&path, &elsewhere, &[]).is_none());
        let escaping = line.replace("\"file\":\"\"", "\"file\":\"../x\"");
        assert_ne!(escaping, line);
        assert!(decode(&path, 1024, &escaping).is_none());
        // A directory's layers by their names in it, and its files' stamps.
        let layout = Image {
            format: ImageFormat::OciLayout,
            layers: vec![Layer {
                file: path.join("blobs/sha256/abc"),
                ..original.layers[0].clone()
            }],
            known_estimate: Some(7),
            ..original.clone()
        };
        let files = [("index.json".to_string(), "stamp".to_string())];
        let line = encode(&path, &layout, &files).unwrap();
        let (back, back_files) = decode(&path, 0, &line).unwrap();
        assert_eq!(back.layers, layout.layers);
        assert_eq!(back_files, files);
        let escaping = line.replace("index.json", "../index.json");
        assert!(decode(&path, 0, &escaping).is_none());
        // A store's image depends on the blobs it was read from and its
        // layers, not on an index or the blobs' directory; never on a name
        // outside the store.
        let digest = Digest::from_hex(&"c".repeat(64)).unwrap();
        let store = Which::Manifest(&digest);
        let read = ["blobs/sha256/m".to_string(), "blobs/sha256/c".to_string()];
        let names = depends_on(&path, &layout, store, &read).unwrap();
        assert_eq!(
            names,
            ["blobs/sha256/m", "blobs/sha256/c", "blobs/sha256/abc"]
        );
        assert!(depends_on(&path, &layout, store, &["../m".to_string()]).is_none());
        let meta = fs::metadata(&path).unwrap();
        assert_ne!(
            key(&path, &meta, store),
            key(&path, &meta, Which::Tag(None))
        );
    }

    #[test]
    fn a_file_is_remembered_once_settled_and_recalled_while_its_metadata_holds() {
        let dir = tempfile::tempdir().unwrap();
        let facts = dir.path().join("facts");
        let path = dir.path().join("image.tar");
        fs::write(&path, [0u8; 1024]).unwrap();
        let meta = fs::metadata(&path).unwrap();
        let mut opened = image(&path, 1024);
        let now = SystemTime::now();
        let untagged = Which::Tag(None);
        // Just written: a rewrite in the same clock tick would keep its
        // metadata, so it is not remembered yet.
        remember(&facts, &path, &meta, untagged, &[], &mut opened, now);
        assert!(recall(&facts, &path, &meta, untagged).is_none());
        let later = now + SETTLED;
        remember(&facts, &path, &meta, untagged, &[], &mut opened, later);
        // The estimate taken for the entry stays with the opened image.
        assert_eq!(opened.known_estimate, Some(1024));
        let recalled = recall(&facts, &path, &meta, untagged).unwrap();
        assert_eq!(recalled.config, opened.config);
        // The archive is not read for it: gone, it is still recalled by the
        // metadata taken before.
        fs::remove_file(&path).unwrap();
        assert!(recall(&facts, &path, &meta, untagged).is_some());
        // Another tag, or other metadata (written again): not recalled.
        assert!(recall(&facts, &path, &meta, Which::Tag(Some("latest"))).is_none());
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, [0u8; 1024]).unwrap();
        let rewritten = fs::metadata(&path).unwrap();
        assert!(recall(&facts, &path, &rewritten, untagged).is_none());
        // An entry not of this format is a miss, never an error.
        let key = key(&path, &meta, untagged);
        fs::write(entry(&facts, &key), format!("{key}\n{{\"format\":1}}\n")).unwrap();
        assert!(recall(&facts, &path, &meta, untagged).is_none());
    }

    #[test]
    fn a_change_in_the_future_or_just_now_is_not_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        let meta = fs::metadata(&path).unwrap();
        let now = SystemTime::now();
        assert!(!settled(&meta, now));
        assert!(settled(&meta, now + SETTLED));
        assert!(!settled(&meta, now - Duration::from_secs(60)));
    }
}
