//! The entry model the image stages share: what reading a layer
//! (`layer`) makes of each tar entry ([`LayerEntry`]: a normalised path,
//! its [`Meta`] and an [`Action`]), which the merged tree (`merge`)
//! applies; where a regular file's data is ([`DataRef`], a range of one of
//! the files `spool` keeps); and what can be wrong with a layer
//! ([`LayerError`]), which reading, spooling and merging report.
//!
//! Entry paths are normalised ([`normalise`]): a leading `/` or `./` and
//! `.` components are dropped; a `..` component is an error, so no entry
//! names anything outside the tree. A symlink's target is data and is kept
//! as it is.

use std::io;

use super::TarError;

/// What is wrong with a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar (or compressed) stream cannot be read.
    #[error("cannot read it as a tar stream (truncated or corrupt): {0}")]
    Corrupt(io::Error),
    /// The tar stream is malformed, or a header is too large to hold.
    #[error(transparent)]
    Tar(#[from] TarError),
    /// An entry's path has a `..` component.
    #[error("the entry {entry} has a `..` component, which could reach outside the tree")]
    PathEscapes {
        /// The entry's path as the tar has it.
        entry: String,
    },
    /// An entry's path runs through something that is not a directory.
    #[error("the entry {entry} runs through {component}, which is not a directory")]
    NotADirectory {
        /// The entry.
        entry: String,
        /// The component that is not a directory.
        component: String,
    },
    /// Resolving an entry's path met too many symbolic links.
    #[error("the entry {entry} runs through more than 40 symbolic links (a loop?)")]
    SymlinkLoop {
        /// The entry.
        entry: String,
    },
    /// A hard link whose target cannot be linked to.
    #[error("the hard link {entry} points to {target}, which {why}")]
    HardLink {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
        /// What is wrong with the target.
        why: &'static str,
    },
    /// A file too large for newc.
    #[error("the file {entry} is {size} bytes: newc archives hold only files below 4 GiB")]
    FileTooLarge {
        /// The file.
        entry: String,
        /// Its size.
        size: u64,
    },
    /// Something the cpio format or microrun does not support.
    #[error("the entry {entry}: {what}")]
    Unsupported {
        /// The entry.
        entry: String,
        /// What is not supported, and what to do.
        what: String,
    },
    /// An entry's data runs past the end of the layer.
    #[error("the data of {entry} runs past the end of the layer: it is truncated")]
    Truncated {
        /// The entry.
        entry: String,
    },
    /// A digest differs from what the image names.
    #[error("its {what} digest is {actual}, but the image expects {expected}: the image is corrupt; save or copy it again")]
    DigestMismatch {
        /// `blob` or `uncompressed (diff_id)`.
        what: &'static str,
        /// The digest the image names.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },
    /// The spool file for a compressed layer's data could not be written.
    #[error("cannot keep the layer's file data in a temporary file: {0}")]
    Spool(io::Error),
}

/// The longest path Linux takes: `PATH_MAX` (4096) with its NUL.
pub(crate) const MAX_PATH: usize = 4095;

/// The longest name of one path component: `NAME_MAX`.
pub(crate) const MAX_NAME: usize = 255;

/// Why `path` (an entry's name or a hard link's target, as the tar has
/// it) can be no file's path, if it cannot: a NUL in it, more than
/// [`MAX_PATH`] bytes, or a component of more than [`MAX_NAME`].
pub(crate) fn unusable_path(path: &[u8]) -> Option<String> {
    if path.contains(&0) {
        return Some("a NUL byte, which no file name can hold".to_string());
    }
    if path.len() > MAX_PATH {
        return Some(format!(
            "{} bytes, more than a path may have (PATH_MAX, 4096 bytes with the NUL)",
            path.len()
        ));
    }
    let longest = path.split(|&b| b == b'/').map(<[u8]>::len).max();
    match longest {
        Some(len) if len > MAX_NAME => Some(format!(
            "a component of {len} bytes, more than a file name may have (NAME_MAX, 255)"
        )),
        _ => None,
    }
}

/// Normalises an entry's path into its components (see the module
/// comment); `None` when it has a `..` component.
pub(crate) fn normalise(raw: &[u8]) -> Option<Vec<Box<[u8]>>> {
    let mut components = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            part => components.push(part.into()),
        }
    }
    Some(components)
}

/// Mode bits, owner and mtime of an entry, from its tar header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    /// Its extended attributes (PAX `SCHILY.xattr.*` records), kept by
    /// [`Sources`](super::spool::Sources): 0 for none.
    pub xattrs: u32,
}

impl Meta {
    /// What created directories and added device nodes get.
    pub(crate) fn root_owned(perm: u32) -> Meta {
        Meta {
            perm,
            ..Meta::default()
        }
    }
}

/// A node that is neither a directory nor a regular file: what a layer
/// entry makes and what the tree holds are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// A symbolic link to a target (kept as it is).
    Symlink(Box<[u8]>),
    /// A character or block device: its file type bits and numbers.
    Device {
        kind: u32,
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// What a layer entry does to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Dir,
    /// A regular file and where its data is.
    File(DataRef),
    /// A hard link to the (normalised) path of a file.
    HardLink(Vec<Box<[u8]>>),
    Leaf(Leaf),
    /// `.wh.NAME`: hides the entry's path in lower layers.
    Whiteout,
    /// `.wh..wh..opq`: hides everything below the entry's path (a directory)
    /// in lower layers.
    Opaque,
}

/// One entry of a layer, its path normalised into components.
#[derive(Debug, Clone)]
pub(crate) struct LayerEntry {
    pub path: Vec<Box<[u8]>>,
    pub meta: Meta,
    pub action: Action,
}

/// Where a regular file's data is: `len` bytes at `offset` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataRef {
    /// A layer file's index in [`Sources`](super::spool::Sources), or the
    /// spool's id.
    pub source: u32,
    pub offset: u64,
    pub len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_dotdot_refused() {
        let parts = |raw: &[u8]| {
            normalise(raw).map(|p| {
                p.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(parts(b"./usr//bin/./sh").unwrap(), ["usr", "bin", "sh"]);
        assert_eq!(parts(b"/etc/").unwrap(), ["etc"]);
        assert!(parts(b"./").unwrap().is_empty());
        assert_eq!(parts(b"a/../../etc"), None);
        assert_eq!(parts(b".."), None);
    }

    #[test]
    fn paths_no_file_can_have_are_named() {
        assert_eq!(unusable_path(b"usr/bin/sh"), None);
        let name = vec![b'n'; 255];
        assert_eq!(unusable_path(&name), None);
        let long_name = vec![b'n'; 256];
        assert!(unusable_path(&long_name).unwrap().contains("NAME_MAX"));
        let path = [&b"a/"[..]; 2048].concat();
        assert!(unusable_path(&path).unwrap().contains("PATH_MAX"));
        assert!(unusable_path(&path[..4095]).is_none());
        assert!(unusable_path(b"a\0b").unwrap().contains("NUL"));
    }
}
