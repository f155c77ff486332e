//! Images opened from a file (a docker-archive, an OCI archive, a rootfs
//! tar), remembered by the file's metadata, so that a run of an unchanged
//! image reads nothing of it before its converted archive is found in the
//! cache. Opening one reads its tar headers, its manifest and
//! configuration (checking their digests) and, for the choice of root, the
//! first bytes of every layer: all of it depends on the file alone.
//!
//! An entry `<cache>/facts/<hash>.image` holds the key (the file's path,
//! device, inode, size, mtime and ctime, [`Stamp::Metadata`], and the tag
//! asked for) and the opened image, as one line of JSON. A file rewritten,
//! replaced or touched has another key and is opened again. A file is
//! remembered only once its last change lies [`SETTLED`] in the past: a
//! rewrite within the same tick of the file system's clock keeps the size
//! and both times, so an entry taken right after a change could outlive
//! the contents it was read from (git's "racily clean" files). Directories
//! (OCI layouts, `dir:` layouts) are opened every time: their blobs are
//! files of their own.

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

/// What an entry is keyed by: the file `path` with the metadata `meta`,
/// opened for `tag`.
fn key(path: &Path, meta: &fs::Metadata, tag: Option<&str>) -> String {
    let stamp = cache::stamp_of(path, meta, Stamp::Metadata);
    format!("{FORMAT} {stamp} tag {tag:?}")
}

fn entry(dir: &Path, key: &str) -> PathBuf {
    let hash = Digest::of_bytes(key.as_bytes());
    dir.join(format!("{}{SUFFIX}", &hash.hex()[..32]))
}

/// The image the file `path`, whose metadata is `meta` now, was opened as
/// for `tag`, when it is remembered in `dir` under that metadata.
pub(crate) fn recall(
    dir: &Path,
    path: &Path,
    meta: &fs::Metadata,
    tag: Option<&str>,
) -> Option<Image> {
    let key = key(path, meta, tag);
    let value = cache::load_fact(&entry(dir, &key), &key, MAX_ENTRY)?;
    let image = decode(path, meta.len(), &value);
    match &image {
        Some(_) => log::debug!(
            "{}: opened before and unchanged since (by its metadata)",
            path.display()
        ),
        None => log::debug!(
            "{}: its remembered opening is unreadable: opening it again",
            path.display()
        ),
    }
    image
}

/// Remembers `image`, opened for `tag` from the file `path` whose metadata
/// was `meta` when it was opened, unless the file changed less than
/// [`SETTLED`] before `now`. Nothing is remembered for an image with a
/// layer in another file. Failures are logged: this is an optimisation.
pub(crate) fn remember(
    dir: &Path,
    path: &Path,
    meta: &fs::Metadata,
    tag: Option<&str>,
    image: &Image,
    now: SystemTime,
) {
    if !settled(meta, now) {
        log::debug!(
            "{}: changed in the last {} s: not remembered, opened again next time",
            path.display(),
            SETTLED.as_secs()
        );
        return;
    }
    let Some(value) = encode(path, image) else {
        return;
    };
    let key = key(path, meta, tag);
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

fn format_name(format: ImageFormat) -> Option<String> {
    Some(match format {
        ImageFormat::Tar(compression) => format!("tar:{}", compression.name()),
        ImageFormat::DockerArchive => "docker-archive".into(),
        ImageFormat::OciArchive => "oci-archive".into(),
        // Directories are not remembered.
        ImageFormat::OciLayout | ImageFormat::DirTransport => return None,
    })
}

fn parse_format(name: &str) -> Option<ImageFormat> {
    let compression = match name {
        "docker-archive" => return Some(ImageFormat::DockerArchive),
        "oci-archive" => return Some(ImageFormat::OciArchive),
        "tar:uncompressed" => Compression::None,
        "tar:gzip" => Compression::Gzip,
        "tar:zstd" => Compression::Zstd,
        "tar:xz" => Compression::Xz,
        "tar:bzip2" => Compression::Bzip2,
        _ => return None,
    };
    Some(ImageFormat::Tar(compression))
}

/// The entry's line for `image`, opened from `path`; `None` when it is
/// not to be remembered (a layer in another file, a layer that cannot be
/// read for the estimate).
fn encode(path: &Path, image: &Image) -> Option<String> {
    let format = format_name(image.format)?;
    if image.path != path || image.layers.iter().any(|layer| layer.file != path) {
        return None;
    }
    let estimate = image.unpacked_estimate().ok()?;
    let layers: Vec<Value> = image
        .layers
        .iter()
        .map(|layer| {
            json!({
                "name": layer.name,
                "offset": layer.offset,
                "len": layer.len,
                "digest": layer.digest.as_ref().map(Digest::hex),
                "diff_id": layer.diff_id.as_ref().map(Digest::hex),
            })
        })
        .collect();
    let config = &image.config;
    let value = json!({
        "format": format,
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

/// The image `line` describes, from the file `path` of `file_len` bytes;
/// `None` for anything [`encode`] would not have written.
fn decode(path: &Path, file_len: u64, line: &str) -> Option<Image> {
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
    let mut layers = Vec::new();
    for layer in value["layers"].as_array()? {
        let (offset, len) = (layer["offset"].as_u64()?, layer["len"].as_u64()?);
        if offset.checked_add(len)? > file_len {
            return None;
        }
        layers.push(Layer {
            name: text(&layer["name"])?,
            file: path.to_path_buf(),
            offset,
            len,
            digest: digest(&layer["digest"])?,
            diff_id: digest(&layer["diff_id"])?,
        });
    }
    Some(Image {
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
    })
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
        let original = image(&path, 1024);
        let line = encode(&path, &original).unwrap();
        assert!(!line.contains('\n'), "{line}");
        let back = decode(&path, 1024, &line).unwrap();
        assert_eq!(back.unpacked_estimate().unwrap(), 1024);
        assert_eq!(
            Image {
                known_estimate: None,
                ..back
            },
            original
        );
        // A layer past the end of the file, damaged text, other formats.
        assert!(decode(&path, 1000, &line).is_none());
        assert!(decode(&path, 1024, &line[..line.len() / 2]).is_none());
        assert!(decode(&path, 1024, &line.replace("docker-archive", "zip")).is_none());
        assert!(decode(&path, 1024, &line.replace(&"d".repeat(64), "d")).is_none());
        assert!(decode(&path, 1024, "null").is_none());
        // A layer elsewhere, or a directory: not remembered.
        let mut elsewhere = original.clone();
        elsewhere.layers[0].file = dir.path().join("blob");
        assert!(encode(&path, &elsewhere).is_none());
        let layout = Image {
            format: ImageFormat::OciLayout,
            ..original
        };
        assert!(encode(&path, &layout).is_none());
    }

    #[test]
    fn a_file_is_remembered_once_settled_and_recalled_while_its_metadata_holds() {
        let dir = tempfile::tempdir().unwrap();
        let facts = dir.path().join("facts");
        let path = dir.path().join("image.tar");
        fs::write(&path, [0u8; 1024]).unwrap();
        let meta = fs::metadata(&path).unwrap();
        let opened = image(&path, 1024);
        let now = SystemTime::now();
        // Just written: a rewrite in the same clock tick would keep its
        // metadata, so it is not remembered yet.
        remember(&facts, &path, &meta, None, &opened, now);
        assert!(recall(&facts, &path, &meta, None).is_none());
        remember(&facts, &path, &meta, None, &opened, now + SETTLED);
        let recalled = recall(&facts, &path, &meta, None).unwrap();
        assert_eq!(recalled.config, opened.config);
        // The archive is not read for it: gone, it is still recalled by the
        // metadata taken before.
        fs::remove_file(&path).unwrap();
        assert!(recall(&facts, &path, &meta, None).is_some());
        // Another tag, or other metadata (written again): not recalled.
        assert!(recall(&facts, &path, &meta, Some("latest")).is_none());
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, [0u8; 1024]).unwrap();
        let rewritten = fs::metadata(&path).unwrap();
        assert!(recall(&facts, &path, &rewritten, None).is_none());
        // An entry not of this format is a miss, never an error.
        let key = key(&path, &meta, None);
        fs::write(entry(&facts, &key), format!("{key}\n{{\"format\":1}}\n")).unwrap();
        assert!(recall(&facts, &path, &meta, None).is_none());
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
