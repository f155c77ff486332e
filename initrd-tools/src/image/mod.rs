//! Container images and tar archives as a rootfs: read them and write the
//! merged tree as one newc archive, the way [`crate::pack_dir`] does for a
//! directory.
//!
//! Accepted, detected by content (never by name, see [`detect`]):
//!
//! - a tar archive of a root filesystem, plain or compressed with gzip,
//!   zstd, xz or bzip2 (`mmdebstrap ... debian.tar`, `tar -C root -czf
//!   root.tar.gz .`, LXC's `rootfs.tar.xz`);
//! - a docker-archive (`docker save`, `podman save`): the legacy layout
//!   (`manifest.json`, `<id>/layer.tar`) and the Docker 25+ one
//!   (`manifest.json` and `index.json` beside `blobs/sha256/...`);
//! - an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`),
//!   and an OCI archive, a tar of such a directory;
//! - skopeo's `dir:` layout (`manifest.json`, `version`, blobs named by
//!   digest), which `podman save --format docker-dir` also writes.
//!
//! Layers are applied in order with the OCI whiteout rules, straight from
//! the tar headers (modes, owners, mtimes, hard links, symlinks, device
//! nodes, FIFOs) into the archive: nothing is extracted to disk and no
//! root privilege is needed. Every blob is checked against its digest.
//! Converting the same image twice gives the same bytes;
//! [`Image::cached_convert`] keeps the result in the initrd cache.
//! `docs/images.md` has the rules in full.
//!
//! ```no_run
//! use std::path::Path;
//! use initrd_tools::image::{detect, Detected};
//!
//! if let Detected::Image(image) = detect(Path::new("debian.tar"))? {
//!     let archive = image.cached_convert()?;
//!     println!("{} -> {}", image.path().display(), archive.display());
//! }
//! # Ok::<(), initrd_tools::image::ImageError>(())
//! ```

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::pack::Sink;
use crate::regular_file::{self, Links};
use crate::{cache, InitrdError, PackStats};

mod config;
mod detect;
mod docker;
// Converting: each layer is read into entries (`layer`), applied to the
// merged tree (`merge`), and the tree is written (`write`). The stages
// share the entry model (`entry`) and the file data's sources (`spool`),
// and import only downward: layer -> entry, spool; merge -> entry;
// write -> merge, entry, spool; spool -> entry.
mod entry;
mod layer;
mod merge;
mod oci;
mod remembered;
mod spool;
mod store;
mod tar_reader;
mod to_erofs;
mod write;

pub use config::ImageConfig;
pub use detect::{compression_format, detect, Detected};
pub use entry::LayerError;
pub use tar_reader::TarError;

/// Changes whenever the conversion rules change, so old archives miss.
const FORMAT_VERSION: &str = "microrun-image-v1";

/// What the accepted formats are, for error messages.
const ACCEPTED: &str = "a rootfs directory, a cpio initrd (newc, or compressed), a tar \
     archive of a rootfs (plain, gzip, zstd, xz or bzip2), a docker-archive (`docker save`, `podman save`), \
     an OCI image layout directory, an OCI archive or a skopeo dir: layout";

/// Errors of reading and converting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// ROOTFS is neither a directory nor a regular file (a FIFO would
    /// block the first read for ever, before any timeout).
    #[error("rootfs {} is {kind}: give a rootfs directory or a regular file (an image, a tar or a cpio archive)", path.display())]
    NotAFile {
        /// The ROOTFS path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A file of the image could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A compressed file does not decompress.
    #[error("cannot decompress {} ({compression}): {source}; the file is truncated or corrupt", path.display())]
    Decompress {
        /// The file.
        path: PathBuf,
        /// `gzip`, `zstd`, `xz` or `bzip2`.
        compression: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The file is none of the accepted formats.
    #[error("{} is not a rootfs microrun can use: give {ACCEPTED}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A docker-archive or OCI archive inside a compressed file.
    #[error(
        "{} is a {compression}-compressed {kind}: decompress it first (for example `{tool} -dk FILE`); \
         microrun reads image archives uncompressed, as `docker save` and `skopeo` write them",
        path.display()
    )]
    CompressedImageArchive {
        /// The file.
        path: PathBuf,
        /// `gzip` or `zstd`.
        compression: &'static str,
        /// `docker-archive` or `OCI archive`.
        kind: &'static str,
        /// The command that decompresses it.
        tool: &'static str,
    },
    /// A tar archive (a rootfs tar, an image archive) cannot be read.
    #[error("{}: {source}", path.display())]
    Tar {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        source: TarError,
    },
    /// The image's metadata is malformed.
    #[error("{} is not a valid image: {detail}", path.display())]
    Invalid {
        /// The image.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
    /// The image refers to a file it does not contain.
    #[error("{}: the image names {blob}, which it does not contain: the image is incomplete; save or copy it again", path.display())]
    MissingBlob {
        /// The image.
        path: PathBuf,
        /// The missing file or digest.
        blob: String,
    },
    /// A blob's contents do not match the digest that names it.
    #[error(
        "{}: {blob} has the digest {actual}, but the image expects {expected}: the image is corrupt; save or copy it again",
        path.display()
    )]
    DigestMismatch {
        /// The image.
        path: PathBuf,
        /// Which blob (and which digest: of the blob or of its uncompressed tar).
        blob: String,
        /// The digest the image names.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },
    /// A blob's size differs from what its descriptor says.
    #[error("{}: {blob} is {actual} bytes, but the image says {expected}: the image is corrupt; save or copy it again", path.display())]
    SizeMismatch {
        /// The image.
        path: PathBuf,
        /// Which blob.
        blob: String,
        /// The size the descriptor names.
        expected: u64,
        /// The blob's size.
        actual: u64,
    },
    /// No manifest for linux/amd64.
    #[error("{} has no linux/amd64 image (microrun runs x86-64 guests); it has: {available}", path.display())]
    NoPlatform {
        /// The image.
        path: PathBuf,
        /// The platforms it has.
        available: String,
    },
    /// An image archive or layout with several images, and no tag given.
    #[error("{} holds {count} images ({tags}): {}", path.display(), pick_hint(path, example))]
    SeveralImages {
        /// The archive or layout.
        path: PathBuf,
        /// How many.
        count: usize,
        /// Their tags.
        tags: String,
        /// One of the tags, for the example; empty when none has one.
        example: String,
    },
    /// `PATH:TAG` with a tag the image does not have.
    #[error(
        "{} has no image tagged {tag} (its tags: {tags}): pick one as {}:TAG",
        path.display(),
        path.display()
    )]
    NoSuchTag {
        /// The archive or layout.
        path: PathBuf,
        /// The tag asked for, quoted.
        tag: String,
        /// The tags it has.
        tags: String,
    },
    /// `PATH:TAG` where PATH has no tags.
    #[error(
        "{} is {kind}, which has no tags to pick from: give it without the tag {tag} (a tag \
         picks an image in an OCI layout, an OCI archive or a docker-archive)",
        path.display()
    )]
    NotTagged {
        /// The file or directory.
        path: PathBuf,
        /// The tag given.
        tag: String,
        /// What it is.
        kind: String,
    },
    /// A layer could not be applied.
    #[error("{}: layer {layer}: {source}", path.display())]
    Layer {
        /// The image.
        path: PathBuf,
        /// Which layer (its number and file).
        layer: String,
        /// What is wrong with it.
        source: LayerError,
    },
    /// The merged tree has a path no file can have.
    #[error(
        "{}: the merged layers make the path {entry}, which has {why}; the kernel cannot \
         unpack it: shorten the names or symbolic links in the image",
        path.display()
    )]
    UnusablePath {
        /// The image.
        path: PathBuf,
        /// The path, quoted and bounded.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The archive could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output (or the temporary file next to it).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the archive or using the cache failed.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// Writing the EROFS image failed.
    #[error("cannot write the EROFS image: {0}")]
    Erofs(#[from] crate::erofs::ErofsError),
}

/// How to pick one of several images in `path`.
fn pick_hint(path: &Path, example: &str) -> String {
    if example.is_empty() {
        "none has a tag to pick it by: copy the one to run into an image of its own \
         (`skopeo copy`, `docker save IMAGE`)"
            .to_string()
    } else {
        format!(
            "pick one as {}:TAG, for example `microrun {}:{example}` (skopeo's spelling)",
            path.display(),
            path.display()
        )
    }
}

impl ImageError {
    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        ImageError::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        ImageError::Invalid {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// The kinds of image microrun reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A tar archive of a root filesystem, one layer, no configuration.
    Tar(Compression),
    /// `docker save` output, either layout.
    DockerArchive,
    /// An OCI image layout directory.
    OciLayout,
    /// A tar archive of an OCI image layout.
    OciArchive,
    /// skopeo's `dir:` layout (podman's `docker-dir`).
    DirTransport,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageFormat::Tar(Compression::None) => f.write_str("tar archive"),
            ImageFormat::Tar(c) => write!(f, "{}-compressed tar archive", c.name()),
            ImageFormat::DockerArchive => f.write_str("docker-archive"),
            ImageFormat::OciLayout => f.write_str("OCI image layout"),
            ImageFormat::OciArchive => f.write_str("OCI archive"),
            ImageFormat::DirTransport => f.write_str("skopeo dir: layout"),
        }
    }
}

/// How a tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not at all.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
    /// xz (possibly several streams): LXC's image server serves
    /// `rootfs.tar.xz`.
    Xz,
    /// bzip2 (possibly several streams).
    Bzip2,
}

/// The most memory the xz decoder may take: `xz -9` needs 65 MiB; a
/// stream asking for more is refused, not decoded.
const XZ_MEMLIMIT: u64 = 256 << 20;

/// How many bytes [`Compression::of`] looks at.
pub(crate) const MAGIC_LEN: usize = 10;

impl Compression {
    /// The compression of a stream starting with `head` (its first
    /// [`MAGIC_LEN`] bytes), among those a layer may use, by magic
    /// number. bzip2's is checked up to its first block's (or the empty
    /// stream's) own magic, so a tar whose first name starts with `BZh`
    /// stays a tar.
    pub(crate) fn of(head: &[u8]) -> Compression {
        const BZIP2_BLOCK: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
        const BZIP2_END: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.len() >= MAGIC_LEN
            && head.starts_with(b"BZh")
            && (b'1'..=b'9').contains(&head[3])
            && (head[4..10] == BZIP2_BLOCK || head[4..10] == BZIP2_END)
        {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// A reader of the decompressed stream.
    pub(crate) fn decoder<'a, R: io::Read + 'a>(
        self,
        raw: R,
    ) -> io::Result<Box<dyn io::Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Box::new(liblzma::read::XzDecoder::new_stream(raw, stream))
            }
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(raw)),
        })
    }
}

/// A sha256 digest, as images name blobs (`sha256:<64 hex digits>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        is_sha256_hex(hex).then(|| Digest(hex.to_string()))
    }

    pub(crate) fn from_hex(hex: &str) -> Option<Digest> {
        is_sha256_hex(hex).then(|| Digest(hex.to_string()))
    }

    pub(crate) fn of_hasher(hasher: Sha256) -> Digest {
        let bytes = hasher.finalize();
        Digest(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub(crate) fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::of_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// 64 lowercase hex digits: the only digest names accepted, so a name taken
/// from an image can never be a path that leaves its directory.
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One layer: a byte range of a file (a blob file, a member of an archive,
/// or a whole tar file) and the digests it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    /// For messages: the layer's name in the image.
    pub name: String,
    /// The file holding it.
    pub file: PathBuf,
    /// Where it starts in that file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The digest of these bytes, when the image names one.
    pub digest: Option<Digest>,
    /// The digest of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: Option<Digest>,
}

/// An image, opened: its layers and configuration, read and checked, but
/// not converted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    path: PathBuf,
    format: ImageFormat,
    layers: Vec<Layer>,
    config: ImageConfig,
    /// What identifies the converted archive (see [`Image::cache_key`]).
    identity: String,
    /// For `-v`: tags, manifest digest.
    description: String,
    /// [`Image::unpacked_estimate`], when it was remembered with the image
    /// (`remembered`): then its layers are not read for it again.
    known_estimate: Option<u64>,
}

impl Image {
    /// The file or directory the image was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of image it is.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The run defaults from the image's configuration (empty for a plain
    /// tar).
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// How many layers the image has.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// What the image's files take unpacked, estimated without converting
    /// it: an uncompressed layer's length (a tar is its files plus 512-byte
    /// headers), a compressed layer's three times (gzip and zstd shrink a
    /// distribution's files about 2.5-3.5 times), summed over the layers
    /// (whiteouts and replaced files make it an upper bound). For the
    /// choice between the initrd and the disk root.
    pub fn unpacked_estimate(&self) -> Result<u64, ImageError> {
        if let Some(known) = self.known_estimate {
            return Ok(known);
        }
        let mut total = 0u64;
        for layer in &self.layers {
            let file = regular_file::open(&layer.file, Links::Follow)
                .map_err(|e| ImageError::read(&layer.file, e))?;
            let mut head = [0u8; MAGIC_LEN];
            let len = (layer.len.min(MAGIC_LEN as u64)) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut head[..len], layer.offset)
                .map_err(|e| ImageError::read(&layer.file, e))?;
            let factor = match Compression::of(&head[..len]) {
                Compression::None => 1,
                _ => 3,
            };
            total = total.saturating_add(layer.len.saturating_mul(factor));
        }
        Ok(total)
    }

    /// One line saying what the image is, for `-v`.
    pub fn description(&self) -> String {
        let layers = match self.layers.len() {
            1 => "1 layer".to_string(),
            n => format!("{n} layers"),
        };
        let mut text = format!("{} {}, {layers}", self.format, self.path.display());
        if !self.description.is_empty() {
            text.push_str(", ");
            text.push_str(&self.description);
        }
        text
    }

    /// The cache key of the converted archive: a SHA-256 over the format
    /// version and the image's identity. For images that is the manifest
    /// digest (OCI) or the config digest, the image ID (docker-archive):
    /// each names every layer's digest, which conversion checks. For a
    /// plain tar it is the file's device, inode, size, mtime and ctime, as
    /// for directory packs: hashing the whole file would cost more than a
    /// cached run is allowed to.
    pub fn cache_key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT_VERSION.as_bytes());
        hasher.update([0]);
        hasher.update(self.identity.as_bytes());
        Digest::of_hasher(hasher).hex().to_string()
    }

    /// Converts the image into the newc archive `out`, written to a
    /// temporary file next to it and renamed at the end.
    pub fn convert_to(&self, out: &Path) -> Result<PackStats, ImageError> {
        let out_dir = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.write_atomically(out, &out_dir, crate::OUTPUT_MODE)
    }

    /// The path of the converted archive in the cache
    /// (`<cache_dir>/initrd/<key>.cpio`), converting only when it is not
    /// there. The cache's eviction rules are those of directory packs.
    pub fn cached_convert(&self) -> Result<PathBuf, ImageError> {
        let slot = cache::slot(&crate::cache_dir()?, &self.cache_key(), &self.path, ".cpio")?;
        let (path, initrd_dir) = match slot {
            cache::Slot::Hit(path) => return Ok(path),
            cache::Slot::Miss { path, dir } => (path, dir),
        };
        let stats = self.write_atomically(&path, &initrd_dir, cache::ENTRY_MODE)?;
        log::info!(
            "{}: converted {} entries, {} bytes, into {}",
            self.path.display(),
            stats.entries,
            stats.bytes,
            path.display()
        );
        cache::evict(&initrd_dir, ".cpio", cache::KEEP);
        Ok(path)
    }

    /// Converts the image into the EROFS image `out`, written to a
    /// temporary file next to it and renamed at the end (see
    /// [`crate::erofs`]).
    pub fn convert_to_erofs(&self, out: &Path) -> Result<PackStats, ImageError> {
        let out_dir = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        crate::write_replacing(out, &out_dir, crate::OUTPUT_MODE, |file, temp| {
            let (tree, mut sources) = self.merge(&out_dir)?;
            to_erofs::write(&tree, &mut sources, file, temp)
        })
    }

    /// The path of the image converted into an EROFS image in the cache
    /// (`<cache_dir>/initrd/<key>.erofs`, beside the newc archive under
    /// the same key), converting only when no good one is there (see
    /// [`crate::erofs`]).
    pub fn cached_convert_erofs(&self) -> Result<PathBuf, ImageError> {
        let cache_dir = crate::cache_dir()?;
        let slot = cache::slot(
            &cache_dir,
            &self.cache_key(),
            &self.path,
            crate::erofs::CACHE_SUFFIX,
        )?;
        let (path, initrd_dir) = match slot {
            cache::Slot::Hit(path) => return Ok(path),
            cache::Slot::Miss { path, dir } => (path, dir),
        };
        let stats = crate::write_replacing(&path, &initrd_dir, cache::ENTRY_MODE, |file, temp| {
            let (tree, mut sources) = self.merge(&initrd_dir)?;
            to_erofs::write(&tree, &mut sources, file, temp)
        })?;
        log::info!(
            "{}: converted {} inodes, {} bytes, into {}",
            self.path.display(),
            stats.entries,
            stats.bytes,
            path.display()
        );
        cache::evict(&initrd_dir, crate::erofs::CACHE_SUFFIX, cache::KEEP);
        Ok(path)
    }

    fn write_atomically(
        &self,
        out: &Path,
        out_dir: &Path,
        mode: u32,
    ) -> Result<PackStats, ImageError> {
        crate::write_replacing(out, out_dir, mode, |file, temp_path| {
            self.convert(file, temp_path, out_dir)
        })
    }

    /// Reads every layer into the merged tree, then writes the tree to
    /// `out`. Data of compressed layers is kept in an unnamed temporary
    /// file in `spool_dir` until it is written.
    fn convert(
        &self,
        out: &File,
        out_name: &Path,
        spool_dir: &Path,
    ) -> Result<PackStats, ImageError> {
        let (tree, mut sources) = self.merge(spool_dir)?;
        let mut sink = Sink::new(out, Some(out.as_raw_fd()), out_name);
        let entries = write::write_tree(&tree, &mut sources, &mut sink, &self.path)?;
        sink.finish()?;
        Ok(PackStats {
            entries,
            bytes: sink.total(),
        })
    }

    /// Reads every layer into the merged tree (with `dev/console`,
    /// `dev/null` and the working directory added), and the files its
    /// data is in.
    pub(crate) fn merge(
        &self,
        spool_dir: &Path,
    ) -> Result<(merge::MergedTree, spool::Sources), ImageError> {
        let mut tree = merge::MergedTree::new();
        let mut sources = spool::Sources::new(spool_dir);
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_error = |source| ImageError::Layer {
                path: self.path.clone(),
                layer: format!("{} ({})", index + 1, layer.name),
                source,
            };
            let file = regular_file::open(&layer.file, Links::Follow)
                .map_err(|e| ImageError::read(&layer.file, e))?;
            let entries = layer::read_layer(layer, &file, &mut sources).map_err(layer_error)?;
            sources.add_layer_file(file, &layer.file);
            tree.apply(entries).map_err(layer_error)?;
        }
        tree.add_console_nodes();
        if let Some(dir) = &self.config.working_dir {
            tree.ensure_dir(dir);
        }
        Ok((tree, sources))
    }
}

/// Opens the image whose manifest is the blob `manifest_digest`
/// (`sha256:<hex>`) of the OCI image layout directory `layout`, whatever
/// its `index.json`: how a store shared by many images (microrun's
/// registry pulls) names one. Blobs are read and checked as for any OCI
/// layout; `name` says what the image is in `-v`'s description. An image
/// opened before is remembered (`remembered`, [`remembered::Which::Manifest`])
/// while its manifest, configuration and layer blobs keep their metadata:
/// then none of them is read.
pub fn open_layout_manifest(
    layout: &Path,
    manifest_digest: &str,
    name: &str,
) -> Result<Image, ImageError> {
    // Before anything is read: what is remembered must have changed
    // before the reading began (`remembered`).
    let started = std::time::SystemTime::now();
    let digest = Digest::parse(manifest_digest).ok_or_else(|| {
        ImageError::invalid(
            layout,
            format!(
                "the manifest digest {} is not sha256:<64 hex digits>",
                quote(manifest_digest.as_bytes())
            ),
        )
    })?;
    let which = remembered::Which::Manifest(&digest);
    let meta = fs::metadata(layout).map_err(|e| ImageError::read(layout, e))?;
    let facts = remembered::dir();
    let recalled = facts
        .as_deref()
        .and_then(|dir| remembered::recall(dir, layout, &meta, which));
    let mut image = match recalled {
        Some(image) => image,
        None => {
            let store = store::Store::Dir(layout.to_path_buf());
            let (mut image, config) = oci::open_manifest(&store, &digest)?;
            if let Some(dir) = &facts {
                let read = [store.blob_name(&digest), store.blob_name(&config)];
                remembered::remember(dir, layout, &meta, which, &read, &mut image, started);
            }
            image
        }
    };
    image.description = format!("{}, manifest {digest}", cut(name));
    Ok(image)
}

/// How many bytes of a name an error message shows.
const SHOWN: usize = 200;

/// `name` for an error message: quoted, and cut to its first 200 bytes
/// with its length after it when longer, so that a name of megabytes
/// never crowds out the reason. Every name from an image that an error
/// holds is made with it (or with [`cut`]).
pub fn quote(name: &[u8]) -> String {
    if name.len() <= SHOWN {
        format!("{:?}", String::from_utf8_lossy(name))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&name[..SHOWN]),
            name.len()
        )
    }
}

/// `text` from an image (a list of tags or platforms) for an error
/// message: its first 1000 bytes, with its length after it when longer.
pub fn cut(text: &str) -> String {
    const LIMIT: usize = 1000;
    if text.len() <= LIMIT {
        return text.to_string();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// The identity of a plain file for the cache key: what changes when its
/// contents may have (the same fields a directory pack's key uses).
pub(crate) fn file_identity(meta: &fs::Metadata) -> String {
    format!(
        "file:{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_text_in_messages_are_bounded() {
        assert_eq!(quote(b"a\"b"), "\"a\\\"b\"");
        let long = vec![b'x'; 2 << 20];
        let shown = quote(&long);
        assert!(shown.len() < 250, "{shown}");
        assert!(shown.ends_with("... (2097152 bytes)"), "{shown}");
        assert_eq!(cut("short"), "short");
        let text = "é".repeat(1000);
        let shown = cut(&text);
        assert!(shown.len() <= 1000 + 20, "{shown}");
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
    }
}
