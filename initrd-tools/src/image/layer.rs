//! Reading one layer: its tar stream (plain, gzip, zstd, xz or bzip2, told
//! by magic)
//! becomes a list of entries for the merged tree. File data is located,
//! not read into memory: an uncompressed layer's data stays where it is in
//! its file; a compressed layer's is copied into the spool file. The
//! layer's digest and its uncompressed digest are checked on the way.
//! Entry paths are normalised as [`normalise`] says.

use std::fs::File;
use std::io::{self, Read};

use super::entry::{normalise, unusable_path, Action, DataRef, LayerEntry, LayerError, Leaf, Meta};
use super::spool::Sources;
use super::store::{Hashing, Window};
use super::tar_reader::{Seekable, Source, Stream, TarEntry, TarReader};
use super::{quote, Compression, Digest, Layer, MAGIC_LEN};
use crate::newc::{S_IFBLK, S_IFCHR};

/// The longest symlink target Linux accepts (`PATH_MAX` - 1).
const MAX_SYMLINK_TARGET: usize = 4095;

/// The PAX records that carry an extended attribute (GNU tar's and
/// bsdtar's `--xattrs`, buildah's): `SCHILY.xattr.NAME`.
const XATTR_RECORD: &[u8] = b"SCHILY.xattr.";

/// Reads `layer` (a byte range of `file`) into entries; file data of a
/// compressed layer goes into `sources`' spool, and data references name
/// `file` by the id it gets next in `sources`.
pub(crate) fn read_layer(
    layer: &Layer,
    file: &File,
    sources: &mut Sources,
) -> Result<Vec<LayerEntry>, LayerError> {
    let window = || Window::new(file, layer.offset, layer.len);
    let mut head = Vec::with_capacity(MAGIC_LEN);
    window()
        .take(MAGIC_LEN as u64)
        .read_to_end(&mut head)
        .map_err(LayerError::Corrupt)?;
    let compression = Compression::of(&head);
    let mut reader = EntryReader {
        source: sources.next_layer_id(),
        base: layer.offset,
        len: layer.len,
        in_place: compression == Compression::None,
        sources,
        entries: Vec::new(),
    };
    if compression == Compression::None && layer.digest.is_none() && layer.diff_id.is_none() {
        // Nothing to check: only the headers are read, data is skipped.
        let mut tar = TarReader::new(Seekable(window()));
        while let Some(entry) = tar.next_entry()? {
            reader.take(&mut tar, entry)?;
        }
        return Ok(reader.entries);
    }
    let mut blob = Hashing::new(window());
    let diff_digest = {
        let decoder = compression
            .decoder(&mut blob)
            .map_err(LayerError::Corrupt)?;
        let mut tar = TarReader::new(Stream(Hashing::new(decoder)));
        while let Some(entry) = tar.next_entry()? {
            reader.take(&mut tar, entry)?;
        }
        let Stream(diff) = tar.into_inner();
        diff.finish().map_err(LayerError::Corrupt)?
    };
    let blob_digest = blob.finish().map_err(LayerError::Corrupt)?;
    check_digest("blob", layer.digest.as_ref(), &blob_digest)?;
    check_digest(
        "uncompressed (diff_id)",
        layer.diff_id.as_ref(),
        &diff_digest,
    )?;
    Ok(reader.entries)
}

fn check_digest(
    what: &'static str,
    expected: Option<&Digest>,
    actual: &Digest,
) -> Result<(), LayerError> {
    match expected {
        Some(expected) if expected != actual => Err(LayerError::DigestMismatch {
            what,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Turns tar entries into layer entries.
struct EntryReader<'s> {
    /// The id of the layer's file in the sources.
    source: u32,
    /// Where the layer starts in its file.
    base: u64,
    /// The layer's length.
    len: u64,
    /// Whether file data can be read where it is (uncompressed layers).
    in_place: bool,
    sources: &'s mut Sources,
    entries: Vec<LayerEntry>,
}

impl EntryReader<'_> {
    fn take<S: Source>(
        &mut self,
        tar: &mut TarReader<S>,
        entry: TarEntry,
    ) -> Result<(), LayerError> {
        let raw_path = &entry.path;
        let name = || quote(raw_path);
        let header = &entry.header;
        let entry_type = header.entry_type();
        if let Some(why) = unusable_path(raw_path) {
            return Err(LayerError::Unsupported {
                entry: name(),
                what: format!("its name has {why}: no file can have it; rename it in the image"),
            });
        }
        let perm = header.mode().map_err(LayerError::Corrupt)? & 0o7777;
        let id = |pax: Option<u64>, value: io::Result<u64>, what: &str| {
            let value = match pax {
                Some(value) => value,
                None => value.map_err(LayerError::Corrupt)?,
            };
            u32::try_from(value).map_err(|_| LayerError::Unsupported {
                entry: name(),
                what: format!("its {what} {value} does not fit a cpio archive's 32 bits"),
            })
        };
        let uid = id(entry.pax_number("uid"), header.uid(), "uid")?;
        let gid = id(entry.pax_number("gid"), header.gid(), "gid")?;
        let mut mtime = header.mtime().map_err(LayerError::Corrupt)?;
        let device = if entry_type.is_character_special() || entry_type.is_block_special() {
            let major = header.device_major().map_err(LayerError::Corrupt)?;
            let minor = header.device_minor().map_err(LayerError::Corrupt)?;
            (major.unwrap_or(0), minor.unwrap_or(0))
        } else {
            (0, 0)
        };
        let size = entry.size;
        let position = entry.data_pos;
        let mut xattrs = Vec::new();
        for (key, value) in &entry.pax {
            match &key[..] {
                key if key.starts_with(XATTR_RECORD) => {
                    xattrs.push((key[XATTR_RECORD.len()..].into(), value[..].into()));
                }
                b"mtime" => {
                    let value = std::str::from_utf8(value).unwrap_or("");
                    let seconds = value.split('.').next().unwrap_or("");
                    // Before 1970: 0, as newc has no earlier time.
                    mtime = seconds.parse::<i64>().map_or(mtime, |s| s.max(0) as u64);
                }
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(LayerError::Unsupported {
                        entry: name(),
                        what: "a PAX sparse file, which microrun does not read; \
                               make the layer without --sparse"
                            .to_string(),
                    })
                }
                _ => {}
            }
        }
        let meta = Meta {
            perm,
            uid,
            gid,
            mtime: u32::try_from(mtime).unwrap_or(u32::MAX),
            xattrs: self.sources.add_xattrs(xattrs),
        };
        let mut path =
            normalise(raw_path).ok_or_else(|| LayerError::PathEscapes { entry: name() })?;

        if let Some(hidden) = path.last().and_then(|last| last.strip_prefix(b".wh.")) {
            let action = match hidden {
                b".wh..opq" => Action::Opaque,
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs), or a
                // whiteout that names nothing: ignored.
                hidden if hidden.starts_with(b".wh.") || matches!(hidden, b"" | b"." | b"..") => {
                    return Ok(())
                }
                _ => Action::Whiteout,
            };
            match action {
                Action::Opaque => {
                    path.pop();
                }
                _ => {
                    let hidden: Box<[u8]> = hidden.into();
                    if let Some(last) = path.last_mut() {
                        *last = hidden;
                    }
                }
            }
            self.entries.push(LayerEntry { path, meta, action });
            return Ok(());
        }

        let link = entry.link.as_deref().unwrap_or_default();
        let action = if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            let mut data = tar.data(&entry);
            Action::File(self.file_data(&mut data, size, Some(position), &name)?)
        } else if entry_type.is_gnu_sparse() {
            // The tar reader expands the holes: only a copy has the bytes.
            let mut data = tar.data(&entry);
            Action::File(self.file_data(&mut data, size, None, &name)?)
        } else if entry_type.is_hard_link() {
            if let Some(why) = unusable_path(link) {
                return Err(LayerError::Unsupported {
                    entry: name(),
                    what: format!("a hard link whose target {} has {why}", quote(link)),
                });
            }
            let target = normalise(link).ok_or_else(|| LayerError::PathEscapes {
                entry: format!("{} (a hard link to {})", name(), quote(link)),
            })?;
            Action::HardLink(target)
        } else if entry_type.is_symlink() {
            if link.is_empty() || link.len() > MAX_SYMLINK_TARGET || link.contains(&0) {
                let what = if link.contains(&0) {
                    "a symbolic link whose target holds a NUL byte".to_string()
                } else {
                    format!("a symbolic link with a target of {} bytes", link.len())
                };
                return Err(LayerError::Unsupported {
                    entry: name(),
                    what,
                });
            }
            Action::Leaf(Leaf::Symlink(link.into()))
        } else if entry_type.is_character_special() || entry_type.is_block_special() {
            let kind = if entry_type.is_character_special() {
                S_IFCHR
            } else {
                S_IFBLK
            };
            Action::Leaf(Leaf::Device {
                kind,
                major: device.0,
                minor: device.1,
            })
        } else if entry_type.is_dir() {
            Action::Dir
        } else if entry_type.is_fifo() {
            Action::Leaf(Leaf::Fifo)
        } else {
            log::warn!(
                "skipping {}: tar entry type {:?} has no equivalent in a cpio archive",
                name(),
                entry_type
            );
            return Ok(());
        };
        self.entries.push(LayerEntry { path, meta, action });
        Ok(())
    }

    /// Where a regular file's data is: where it lies in the layer when the
    /// layer is uncompressed and the entry's bytes are stored as they are
    /// (`position` given), else copied into the spool.
    fn file_data(
        &mut self,
        entry: &mut impl Read,
        size: u64,
        position: Option<u64>,
        name: &dyn Fn() -> String,
    ) -> Result<DataRef, LayerError> {
        if size > u64::from(u32::MAX) {
            return Err(LayerError::FileTooLarge {
                entry: name(),
                size,
            });
        }
        match position {
            Some(position) if self.in_place => {
                if position.saturating_add(size) > self.len {
                    return Err(LayerError::Truncated { entry: name() });
                }
                Ok(DataRef {
                    source: self.source,
                    offset: self.base + position,
                    len: size,
                })
            }
            _ => self.sources.spool(entry, size, name),
        }
    }
}
