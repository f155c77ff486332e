//! Scanning a directory tree into the ordered list of archive entries.
//!
//! The scan does all the `lstat`s (one per entry, relative to its open
//! directory) before anything is written, so that the cache key can be
//! computed from it and so that hard-link groups are known in full: the
//! data of a hard-linked file is stored with the last of its names, as GNU
//! cpio does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, DirEntry};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::newc::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG};
use crate::{InitrdError, PackOptions};

const S_IFSOCK: u32 = 0o140_000;

/// Device nodes the kernel needs to open a console for the first process;
/// added under `dev/` when the tree lacks them: (name, mode, major, minor).
/// Converted images get them by the same rule.
pub(crate) const DEV_NODES: [(&str, u32, u32, u32); 2] = [
    ("console", S_IFCHR | 0o600, 5, 1),
    ("null", S_IFCHR | 0o666, 1, 3),
];

/// A range of bytes in [`Tree::bytes`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span {
    start: usize,
    len: usize,
}

/// One archive entry, in archive order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    /// Path inside the archive ("." for the root).
    pub name: Span,
    /// Symlink target; empty for other types.
    pub target: Span,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `st_size` of the source (for regular files: the bytes to store).
    pub size: u64,
    /// Link count written to the archive: names of this inode in the
    /// archive for regular files, 2 + subdirectories for directories.
    pub nlink: u32,
    /// Inode number written to the archive: 1, 2, … in archive order, shared
    /// by the names of a hard-linked file.
    pub ino: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Whether this entry carries the file's data (false for all but the
    /// last name of a hard-linked file).
    pub has_data: bool,
    /// The source's identity and timestamps, for the cache key; zero for the
    /// device nodes the packer adds.
    pub src_dev: u64,
    pub src_ino: u64,
    pub src_nlink: u64,
    /// 512-byte blocks the source allocates (below its size: it has holes).
    pub src_blocks: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Entry {
    pub(crate) fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

/// A scanned tree: its entries in archive order (depth first, names sorted
/// bytewise, each directory before its contents).
#[derive(Debug)]
pub(crate) struct Tree {
    /// The directory that was scanned, as given.
    pub root: PathBuf,
    /// Names and symlink targets of all entries, back to back.
    bytes: Vec<u8>,
    pub entries: Vec<Entry>,
    /// Scanned for the EROFS writer: sockets kept and files of 4 GiB or
    /// more allowed (newc archives can hold neither).
    erofs: bool,
}

/// A child of a directory being scanned: a real directory entry, or a node
/// the packer adds.
enum Child {
    Real(DirEntry),
    AddedDevDir,
    AddedDevNode(usize),
}

impl Tree {
    /// Scans `root` (which must be a directory; a symlink to one is followed).
    pub(crate) fn scan(root: &Path) -> Result<Tree, InitrdError> {
        Tree::scan_with(root, false)
    }

    /// [`Tree::scan`] for the EROFS writer: sockets kept, files of any
    /// size.
    pub(crate) fn scan_all(root: &Path) -> Result<Tree, InitrdError> {
        Tree::scan_with(root, true)
    }

    fn scan_with(root: &Path, erofs: bool) -> Result<Tree, InitrdError> {
        let meta = fs::metadata(root).map_err(|e| InitrdError::read(root, e))?;
        if !meta.is_dir() {
            return Err(InitrdError::NotADirectory(root.to_path_buf()));
        }
        let mut tree = Tree {
            root: root.to_path_buf(),
            bytes: Vec::new(),
            entries: Vec::new(),
            erofs,
        };
        tree.push_real(b".", &meta);
        let mut name = Vec::new();
        let subdirs = tree.scan_dir(&mut name, root.to_path_buf())?;
        tree.entries[0].nlink = 2 + subdirs;
        tree.number_inodes();
        Ok(tree)
    }

    pub(crate) fn name(&self, entry: &Entry) -> &[u8] {
        &self.bytes[entry.name.start..entry.name.start + entry.name.len]
    }

    pub(crate) fn target(&self, entry: &Entry) -> &[u8] {
        &self.bytes[entry.target.start..entry.target.start + entry.target.len]
    }

    fn span(&mut self, bytes: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len(),
        }
    }

    fn push_real(&mut self, name: &[u8], meta: &fs::Metadata) -> usize {
        let rdev = meta.rdev();
        let entry = Entry {
            name: self.span(name),
            target: Span::default(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            nlink: 1,
            ino: 0,
            rdev_major: libc::major(rdev),
            rdev_minor: libc::minor(rdev),
            has_data: true,
            src_dev: meta.dev(),
            src_ino: meta.ino(),
            src_nlink: meta.nlink(),
            src_blocks: meta.blocks(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        self.entries.push(entry);
        self.entries.len() - 1
    }

    fn push_added(&mut self, name: &[u8], mode: u32, rdev: (u32, u32)) -> usize {
        let entry = Entry {
            name: self.span(name),
            mode,
            nlink: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
            rdev_major: rdev.0,
            rdev_minor: rdev.1,
            has_data: true,
            ..Entry::default()
        };
        self.entries.push(entry);
        self.entries.len() - 1
    }

    /// Scans the directory whose archive name is `name` ("" for the root) and
    /// whose source is `src`; returns how many subdirectories it has.
    fn scan_dir(&mut self, name: &mut Vec<u8>, src: PathBuf) -> Result<u32, InitrdError> {
        let read_dir = fs::read_dir(&src).map_err(|e| InitrdError::read(&src, e))?;
        let mut children: Vec<(OsString, Child)> = Vec::new();
        for dir_entry in read_dir {
            let dir_entry = dir_entry.map_err(|e| InitrdError::read(&src, e))?;
            children.push((dir_entry.file_name(), Child::Real(dir_entry)));
        }
        let has = |children: &[(OsString, Child)], wanted: &str| {
            children
                .iter()
                .any(|(n, _)| n.as_bytes() == wanted.as_bytes())
        };
        if name.is_empty() && !has(&children, "dev") {
            children.push(("dev".into(), Child::AddedDevDir));
        }
        if name == b"dev" {
            for (i, (node, ..)) in DEV_NODES.iter().enumerate() {
                if !has(&children, node) {
                    children.push(((*node).into(), Child::AddedDevNode(i)));
                }
            }
        }
        children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

        let mut subdirs = 0;
        for (file_name, child) in children {
            let parent_len = name.len();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(file_name.as_bytes());
            match child {
                Child::Real(dir_entry) => {
                    if self.scan_child(name, &src, &dir_entry)? {
                        subdirs += 1;
                    }
                }
                Child::AddedDevDir => {
                    let index = self.push_added(name, S_IFDIR | 0o755, (0, 0));
                    let mut nodes = 0;
                    for (node, mode, major, minor) in DEV_NODES {
                        name.truncate(3);
                        name.extend_from_slice(b"/");
                        name.extend_from_slice(node.as_bytes());
                        self.push_added(name, mode, (major, minor));
                        nodes += 1;
                    }
                    debug_assert_eq!(nodes, DEV_NODES.len());
                    self.entries[index].nlink = 2;
                    subdirs += 1;
                }
                Child::AddedDevNode(i) => {
                    let (_, mode, major, minor) = DEV_NODES[i];
                    self.push_added(name, mode, (major, minor));
                }
            }
            name.truncate(parent_len);
        }
        Ok(subdirs)
    }

    /// Adds one real directory entry (and, for a directory, its contents);
    /// returns whether it is a directory.
    fn scan_child(
        &mut self,
        name: &mut Vec<u8>,
        parent: &Path,
        dir_entry: &DirEntry,
    ) -> Result<bool, InitrdError> {
        // One fstatat relative to the open directory: no path walk.
        let meta = dir_entry
            .metadata()
            .map_err(|e| InitrdError::read(&dir_entry.path(), e))?;
        match meta.mode() & S_IFMT {
            S_IFSOCK if self.erofs => {
                let index = self.push_real(name, &meta);
                self.entries[index].size = 0;
                Ok(false)
            }
            S_IFSOCK => {
                log::warn!(
                    "skipping socket {}: sockets cannot be archived",
                    dir_entry.path().display()
                );
                Ok(false)
            }
            S_IFDIR => {
                let index = self.push_real(name, &meta);
                let subdirs = self.scan_dir(name, parent.join(dir_entry.file_name()))?;
                self.entries[index].nlink = 2 + subdirs;
                Ok(true)
            }
            S_IFLNK => {
                let path = dir_entry.path();
                let target = fs::read_link(&path).map_err(|e| InitrdError::read(&path, e))?;
                let index = self.push_real(name, &meta);
                let span = self.span(&target.into_os_string().into_vec());
                let entry = &mut self.entries[index];
                entry.target = span;
                entry.size = span.len as u64;
                Ok(false)
            }
            S_IFREG | S_IFCHR | S_IFBLK | S_IFIFO => {
                let index = self.push_real(name, &meta);
                if meta.mode() & S_IFMT == S_IFREG
                    && meta.size() > u64::from(u32::MAX)
                    && !self.erofs
                {
                    return Err(InitrdError::FileTooLarge {
                        path: dir_entry.path(),
                        size: meta.size(),
                    });
                }
                if meta.mode() & S_IFMT != S_IFREG {
                    self.entries[index].size = 0;
                }
                Ok(false)
            }
            other => {
                log::warn!(
                    "skipping {}: unknown file type {other:o}",
                    dir_entry.path().display()
                );
                Ok(false)
            }
        }
    }

    /// Assigns archive inode numbers in order and sets up hard-link groups:
    /// the names of one regular file share its inode number, their count is
    /// the link count, and only the last one carries the data.
    fn number_inodes(&mut self) {
        let mut groups: HashMap<(u64, u64), (u32, Vec<usize>)> = HashMap::new();
        let mut next_ino = 1u32;
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if entry.is_regular() && entry.src_nlink > 1 {
                let group = groups
                    .entry((entry.src_dev, entry.src_ino))
                    .or_insert_with(|| {
                        next_ino += 1;
                        (next_ino - 1, Vec::new())
                    });
                group.1.push(index);
                entry.ino = group.0;
            } else {
                entry.ino = next_ino;
                next_ino += 1;
            }
        }
        for (_, members) in groups.into_values() {
            let count = members.len();
            for (i, &member) in members.iter().enumerate() {
                let entry = &mut self.entries[member];
                entry.nlink = count as u32;
                entry.has_data = i + 1 == count;
            }
        }
    }

    /// The cache key: a hash over everything that determines the archive's
    /// bytes, plus what tells that a file's contents may have changed (size,
    /// mtime and ctime to the nanosecond, device and inode).
    pub(crate) fn cache_key(&self, opts: &PackOptions) -> String {
        let mut hasher = Sha256::new();
        hasher.update(crate::cache::FORMAT_VERSION.as_bytes());
        hasher.update([u8::from(opts.keep_owner)]);
        hasher.update(opts.mtime.to_le_bytes());
        for entry in &self.entries {
            let name = self.name(entry);
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name);
            let target = self.target(entry);
            hasher.update((target.len() as u64).to_le_bytes());
            hasher.update(target);
            let mut fields = [0u64; 13];
            fields[0] = u64::from(entry.mode);
            fields[1] = entry.size;
            fields[2] = entry.mtime.0 as u64;
            fields[3] = entry.mtime.1 as u64;
            fields[4] = entry.ctime.0 as u64;
            fields[5] = entry.ctime.1 as u64;
            fields[6] = entry.src_dev;
            fields[7] = entry.src_ino;
            fields[8] = u64::from(entry.rdev_major);
            fields[9] = u64::from(entry.rdev_minor);
            fields[10] = u64::from(entry.nlink);
            if opts.keep_owner {
                fields[11] = u64::from(entry.uid);
                fields[12] = u64::from(entry.gid);
            }
            for field in fields {
                hasher.update(field.to_le_bytes());
            }
        }
        let digest = hasher.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tree: &Tree) -> Vec<String> {
        tree.entries
            .iter()
            .map(|e| String::from_utf8(tree.name(e).to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn order_is_depth_first_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a-b"), b"x").unwrap();
        fs::write(root.join("a/b/c"), b"y").unwrap();
        fs::write(root.join("Z"), b"z").unwrap();
        let tree = Tree::scan(root).unwrap();
        assert_eq!(
            names(&tree),
            [
                ".",
                "Z",
                "a",
                "a/b",
                "a/b/c",
                "a-b",
                "dev",
                "dev/console",
                "dev/null"
            ]
        );
        let inos: Vec<u32> = tree.entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, (1..=9).collect::<Vec<_>>());
        // "." has a, dev; "a" has b.
        assert_eq!(tree.entries[0].nlink, 4);
        assert_eq!(tree.entries[2].nlink, 3);
    }

    #[test]
    fn existing_dev_nodes_are_not_added_twice() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("dev")).unwrap();
        fs::write(root.join("dev/null"), b"").unwrap();
        let tree = Tree::scan(root).unwrap();
        assert_eq!(names(&tree), [".", "dev", "dev/console", "dev/null"]);
        assert!(tree.entries[3].is_regular());
        assert_eq!(tree.entries[2].mode, S_IFCHR | 0o600);
        assert_eq!(
            (tree.entries[2].rdev_major, tree.entries[2].rdev_minor),
            (5, 1)
        );
    }

    #[test]
    fn hard_links_share_inode_and_data_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a"), b"data").unwrap();
        fs::hard_link(root.join("a"), root.join("c")).unwrap();
        fs::hard_link(root.join("a"), root.join("e")).unwrap();
        fs::write(root.join("b"), b"other").unwrap();
        let tree = Tree::scan(root).unwrap();
        let get = |n: &str| {
            tree.entries
                .iter()
                .find(|e| tree.name(e) == n.as_bytes())
                .unwrap()
        };
        let (a, b, c, e) = (get("a"), get("b"), get("c"), get("e"));
        assert_eq!((a.ino, c.ino, e.ino), (2, 2, 2));
        assert_eq!(b.ino, 3);
        assert_eq!((a.nlink, c.nlink, e.nlink, b.nlink), (3, 3, 3, 1));
        assert_eq!((a.has_data, c.has_data, e.has_data), (false, false, true));
    }

    #[test]
    fn missing_directory_is_named() {
        let err = Tree::scan(Path::new("/nonexistent/microrun-tree")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/microrun-tree"),
            "{err}"
        );
    }

    #[test]
    fn key_changes_with_contents_and_options() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"one").unwrap();
        let opts = PackOptions::default();
        let key1 = Tree::scan(dir.path()).unwrap().cache_key(&opts);
        assert_eq!(key1, Tree::scan(dir.path()).unwrap().cache_key(&opts));
        assert_eq!(key1.len(), 64);
        let other = PackOptions {
            mtime: 1,
            ..PackOptions::default()
        };
        assert_ne!(key1, Tree::scan(dir.path()).unwrap().cache_key(&other));
        fs::write(dir.path().join("f"), b"two!").unwrap();
        assert_ne!(key1, Tree::scan(dir.path()).unwrap().cache_key(&opts));
    }
}
