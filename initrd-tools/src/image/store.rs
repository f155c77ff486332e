//! Where an image's files are (an OCI layout directory, or the members of
//! an uncompressed tar archive), and reading them: byte ranges of a file as
//! readers, digests checked while reading.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{quote, Digest, ImageError};
use crate::regular_file::{self, Links};

/// The most a metadata file (index, manifest, configuration) may take:
/// these are kilobytes; anything this large is not image metadata, and is
/// not read into memory.
const MAX_METADATA: u64 = 16 << 20;

/// How many links (symbolic or hard) between archive members are followed
/// to find a blob.
const MAX_MEMBER_LINKS: usize = 16;

/// One member of an image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    /// A regular file: where its data is in the archive.
    File { offset: u64, size: u64 },
    /// A symbolic or hard link to another member (`docker save` links
    /// layers that occur twice), as a normalised member name.
    Link(String),
    /// A directory or anything else that holds no blob.
    Other,
}

/// Where an image's files are.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// An OCI image layout directory.
    Dir(PathBuf),
    /// skopeo's `dir:` layout (and podman's `docker-dir`): `manifest.json`
    /// and `version` beside the blobs, each named by its hex digest.
    Flat(PathBuf),
    /// An uncompressed tar archive and its members by normalised name.
    Tar {
        path: PathBuf,
        members: BTreeMap<String, Member>,
    },
}

/// A file of the image: a byte range of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Store {
    /// The image: the directory or the archive.
    pub(crate) fn image_path(&self) -> &Path {
        match self {
            Store::Dir(path) | Store::Flat(path) | Store::Tar { path, .. } => path,
        }
    }

    /// Where the file `name` (relative to the layout or the archive's
    /// root, as an image names it) is; `None` when the image lacks it.
    pub(crate) fn locate(&self, name: &str) -> Result<Option<Located>, ImageError> {
        let Some(normal) = normalise_member_name(name) else {
            return Err(ImageError::invalid(
                self.image_path(),
                format!(
                    "it names the file {}, which is outside the image",
                    quote(name.as_bytes())
                ),
            ));
        };
        match self {
            Store::Dir(dir) | Store::Flat(dir) => {
                let file = dir.join(&normal);
                match std::fs::metadata(&file) {
                    Ok(meta) if meta.is_file() => Ok(Some(Located {
                        file,
                        offset: 0,
                        len: meta.len(),
                    })),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ImageError::read(&file, e)),
                }
            }
            Store::Tar { path, members } => resolve_member(members, &normal)
                .map(|found| {
                    found.map(|(offset, size)| Located {
                        file: path.clone(),
                        offset,
                        len: size,
                    })
                })
                .map_err(|why| {
                    ImageError::invalid(
                        path,
                        format!("the member {} {why}", quote(name.as_bytes())),
                    )
                }),
        }
    }

    /// Reads the metadata file `name`, which must exist.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let located = self.locate(name)?.ok_or_else(|| self.missing(name))?;
        self.read_located(&located, name)
    }

    /// Reads the metadata blob `digest`, checking its size (when the
    /// descriptor gives one) and digest.
    pub(crate) fn read_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, ImageError> {
        let name = self.blob_name(digest);
        let located = self
            .locate(&name)?
            .ok_or_else(|| self.missing(&digest.to_string()))?;
        self.check_size(&located, &digest.to_string(), size)?;
        let bytes = self.read_located(&located, &name)?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                path: self.image_path().to_path_buf(),
                blob: name,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Where the layer blob `digest` of `size` bytes is.
    pub(crate) fn locate_blob(&self, digest: &Digest, size: u64) -> Result<Located, ImageError> {
        let located = self
            .locate(&self.blob_name(digest))?
            .ok_or_else(|| self.missing(&digest.to_string()))?;
        self.check_size(&located, &digest.to_string(), size)?;
        Ok(located)
    }

    /// The size of the blob `digest`, which must be there and be metadata
    /// (at most [`MAX_METADATA`] bytes).
    pub(crate) fn locate_blob_size(&self, digest: &Digest) -> Result<u64, ImageError> {
        let located = self
            .locate(&self.blob_name(digest))?
            .ok_or_else(|| self.missing(&digest.to_string()))?;
        if located.len > MAX_METADATA {
            return Err(ImageError::invalid(
                self.image_path(),
                format!(
                    "{digest} is {} bytes, too large for a manifest",
                    located.len
                ),
            ));
        }
        Ok(located.len)
    }

    pub(crate) fn missing(&self, blob: &str) -> ImageError {
        ImageError::MissingBlob {
            path: self.image_path().to_path_buf(),
            blob: quote(blob.as_bytes()),
        }
    }

    fn check_size(&self, located: &Located, blob: &str, size: u64) -> Result<(), ImageError> {
        if located.len != size {
            return Err(ImageError::SizeMismatch {
                path: self.image_path().to_path_buf(),
                blob: blob.to_string(),
                expected: size,
                actual: located.len,
            });
        }
        Ok(())
    }

    fn read_located(&self, located: &Located, name: &str) -> Result<Vec<u8>, ImageError> {
        if located.len > MAX_METADATA {
            return Err(ImageError::invalid(
                self.image_path(),
                format!(
                    "{} is {} bytes, too large for image metadata",
                    quote(name.as_bytes()),
                    located.len
                ),
            ));
        }
        let file = regular_file::open(&located.file, Links::Follow)
            .map_err(|e| ImageError::read(&located.file, e))?;
        let mut bytes = Vec::with_capacity(located.len as usize);
        Window::new(&file, located.offset, located.len)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::read(&located.file, e))?;
        if bytes.len() as u64 != located.len {
            return Err(ImageError::invalid(
                self.image_path(),
                format!("{} is truncated", quote(name.as_bytes())),
            ));
        }
        Ok(bytes)
    }
}

/// The longest member name followed, with the links in it resolved.
const MAX_MEMBER_NAME: usize = 4096;

/// The file member `name` (normalised) is, as (offset, size), following
/// links in any of its components the way a file system would, inside
/// the archive: `podman save` names `<id>/layer.tar`, a symlink to
/// `../<hex>.tar`, and a directory may be a link too. Link targets were
/// resolved against the archive's root when it was scanned (a target that
/// leaves it is no link). `None` when there is no such file; an error
/// (why) for a loop or a longer chain than [`MAX_MEMBER_LINKS`].
fn resolve_member(
    members: &BTreeMap<String, Member>,
    name: &str,
) -> Result<Option<(u64, u64)>, String> {
    let too_long = || format!("resolves to a name longer than {MAX_MEMBER_NAME} bytes");
    if name.len() > MAX_MEMBER_NAME {
        return Err(too_long());
    }
    let mut rest: Vec<String> = name.split('/').rev().map(str::to_string).collect();
    let mut resolved = String::new();
    let mut links = 0;
    while let Some(part) = rest.pop() {
        if part.is_empty() {
            continue;
        }
        if !resolved.is_empty() {
            resolved.push('/');
        }
        resolved.push_str(&part);
        if resolved.len() > MAX_MEMBER_NAME {
            return Err(too_long());
        }
        match members.get(&resolved) {
            Some(Member::File { offset, size }) if rest.is_empty() => {
                return Ok(Some((*offset, *size)))
            }
            // A file where a directory should be.
            Some(Member::File { .. }) => return Ok(None),
            Some(Member::Link(target)) => {
                links += 1;
                if links > MAX_MEMBER_LINKS {
                    return Err(format!(
                        "is a chain of more than {MAX_MEMBER_LINKS} links (or a loop)"
                    ));
                }
                if target.len() > MAX_MEMBER_NAME {
                    return Err(too_long());
                }
                rest.extend(target.split('/').rev().map(str::to_string));
                resolved.clear();
            }
            // A directory, or a directory only implied by its members.
            Some(Member::Other) | None => {}
        }
    }
    Ok(None)
}

impl Store {
    /// Where the image keeps the blob `digest`: `blobs/sha256/<hex>`, or
    /// `<hex>` in skopeo's `dir:` layout.
    pub(crate) fn blob_name(&self, digest: &Digest) -> String {
        match self {
            Store::Flat(_) => digest.hex().to_string(),
            _ => format!("blobs/sha256/{}", digest.hex()),
        }
    }
}

/// A member or file name as images write it (`./blobs/x`, `/manifest.json`,
/// `a//b/`), as one relative path (`blobs/x`); `None` when it has a `..`
/// component or is not UTF-8, so no name can leave the image.
pub(crate) fn normalise_member_name(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// The member a link member points to: `target` relative to the directory
/// of `member` (or to the archive's root when absolute), resolved
/// lexically; `None` when it leaves the archive.
pub(crate) fn link_target(member: &str, target: &str, symbolic: bool) -> Option<String> {
    if !symbolic || target.starts_with('/') {
        // A hard link names a member from the archive's root.
        return normalise_member_name(target);
    }
    let mut parts: Vec<&str> = member.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// A byte range `[start, start + len)` of a file, read with `pread`, so
/// several windows on one file never disturb each other.
pub(crate) struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub(crate) fn new(file: &'a File, start: u64, len: u64) -> Self {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// A reader that hashes everything read through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left to the end, and returns the digest of all of it.
    pub(crate) fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Digest::of_hasher(self.hasher))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalised_and_never_leave_the_image() {
        assert_eq!(
            normalise_member_name("./blobs//sha256/x/").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(
            normalise_member_name("/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(normalise_member_name("a/../../etc/passwd"), None);
        assert_eq!(
            link_target("abc/layer.tar", "../def/layer.tar", true).as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(link_target("abc/layer.tar", "../../x", true), None);
        assert_eq!(
            link_target("abc/layer.tar", "def/layer.tar", false).as_deref(),
            Some("def/layer.tar")
        );
    }

    #[test]
    fn windows_read_their_range_only_and_seek() {
        let mut temp = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut temp, b"0123456789").unwrap();
        let mut window = Window::new(&temp, 2, 5);
        let mut text = String::new();
        window.read_to_string(&mut text).unwrap();
        assert_eq!(text, "23456");
        window.seek(SeekFrom::Start(3)).unwrap();
        let mut rest = Vec::new();
        window.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"56");
        assert!(window.seek(SeekFrom::Current(-10)).is_err());
    }

    #[test]
    fn tar_members_resolve_through_links_and_stop_on_loops() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, b"x").unwrap();
        let mut members = BTreeMap::new();
        members.insert("a/layer.tar".into(), Member::File { offset: 7, size: 9 });
        members.insert("b/layer.tar".into(), Member::Link("a/layer.tar".into()));
        members.insert("loop".into(), Member::Link("loop".into()));
        let store = Store::Tar {
            path: archive.clone(),
            members,
        };
        let found = store.locate("./b/layer.tar").unwrap().unwrap();
        assert_eq!((found.offset, found.len), (7, 9));
        assert_eq!(store.locate("c").unwrap(), None);
        assert!(store.locate("loop").is_err());
        // Links in any component, as podman writes `<id>/layer.tar ->
        // ../<hex>.tar`; a file is no directory; a long chain is refused.
        let mut members = BTreeMap::new();
        let hex = "c".repeat(64);
        members.insert(format!("{hex}.tar"), Member::File { offset: 1, size: 2 });
        members.insert("id/layer.tar".into(), Member::Link(format!("{hex}.tar")));
        members.insert("alias".into(), Member::Link("id".into()));
        members.insert("up".into(), Member::Link(String::new()));
        members.insert("a".into(), Member::Link("b".into()));
        members.insert("b".into(), Member::Link("a/x".into()));
        let store = Store::Tar {
            path: archive.clone(),
            members,
        };
        let offset = |name: &str| store.locate(name).unwrap().map(|l| l.offset);
        assert_eq!(offset("id/layer.tar"), Some(1));
        assert_eq!(offset("alias/layer.tar"), Some(1));
        assert_eq!(offset("up/up/alias/layer.tar"), Some(1));
        assert_eq!(offset(&format!("{hex}.tar/x")), None);
        assert_eq!(offset("alias/other"), None);
        let err = store.locate("a").unwrap_err().to_string();
        assert!(err.contains("links"), "{err}");
        let err = store.locate(&"d/".repeat(3000)).unwrap_err().to_string();
        assert!(err.contains("longer"), "{err}");
        assert!(store.locate("../x").is_err());
        let err = store.read("c").unwrap_err();
        assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
    }
}
