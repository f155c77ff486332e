//! Writing a tree as an uncompressed EROFS image, the read-only file
//! system a guest mounts from a virtio-blk disk instead of unpacking an
//! initrd into its memory (issue 25).
//!
//! The trees are the newc writer's: a directory as the packer scans it
//! ([`pack_dir`], [`cached_pack`]), or an image's merged layers
//! ([`crate::image::Image::cached_convert_erofs`]). Both become one model,
//! [`Fs`] (inodes in depth-first order, directories with their entries),
//! which `write` lays out and writes in one pass (the layout, holes and
//! what decides compact or extended inodes are described there). What the
//! image holds, by the packer's rules: every file type (sockets too),
//! modes, hard links (one inode, every name), device numbers, owners
//! (root unless [`PackOptions::keep_owner`]; an image's own owners), the
//! extended attributes the source has in the `user.`, `trusted.`,
//! `security.` (so `security.capability`) and POSIX ACL namespaces (a
//! directory's read with `llistxattr` ([`dir_xattrs`]), an image's from its layers' PAX
//! `SCHILY.xattr.*` records),
//! mtimes (a directory's entries all get [`PackOptions::mtime`], an
//! image's keep their tar mtimes), and `dev/console`, `dev/null` added
//! when missing. The same tree gives the same bytes.
//!
//! Cached images sit beside the newc archives, under the same key:
//! `<cache>/initrd/<key>.erofs`, written atomically; a cached one whose
//! superblock is not this writer's (magic, block size, the volume name
//! that carries this format's version) or whose length is not the block
//! count it claims is written again.

mod dir_xattrs;
mod format;
mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::newc::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crate::tree::Tree;
use crate::{cache, InitrdError, PackOptions, PackStats};
pub(crate) use write::{write_fs, Source};

/// The suffix of cached EROFS images, beside the `.cpio` archives.
pub const CACHE_SUFFIX: &str = ".erofs";

/// The volume name of every image this writer makes: the format's version,
/// so a cached image of an older layout is written again. It must end in
/// a NUL within its 16 bytes: Linux refuses a name without one
/// (`bad volume name without NIL terminator`, EUCLEAN).
pub(crate) const VOLUME_NAME: &[u8; 16] = b"microrun-erofs1\0";
const _: () = assert!(VOLUME_NAME[15] == 0, "Linux needs the volume name's NUL");

/// Errors of writing an EROFS image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// Scanning the tree, reading a file, writing the image or using the
    /// cache failed.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// A file's extended attributes could not be read.
    #[error("cannot read the extended attributes of {}: {source}; check that the file is readable, or leave it out of the tree", path.display())]
    Xattrs {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An extended attribute too large for an EROFS inode.
    #[error("the extended attribute {name} has {size} bytes, more than an EROFS inode holds (a name of 255 bytes after its prefix, a value of 65535, 256 KiB in all): remove it from the file")]
    XattrTooLarge {
        /// The attribute.
        name: String,
        /// Its size.
        size: usize,
    },
    /// A name no directory entry can hold.
    #[error("the name {name} cannot be stored: {why}; rename or remove that file")]
    BadName {
        /// The name, quoted.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The image would pass the 16 TiB that 32-bit block numbers reach.
    #[error("the image would take {blocks} blocks of 4 KiB, more than EROFS addresses (2^32): leave large files out of the tree")]
    TooLarge {
        /// Blocks needed.
        blocks: u64,
    },
}

/// An extended attribute: its full name (`security.capability`) and value.
pub(crate) type Xattr = (Box<[u8]>, Box<[u8]>);

/// One inode of the tree to write.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inode {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub nlink: u32,
    /// Major and minor, for device nodes.
    pub rdev: (u32, u32),
    pub kind: Kind,
    /// Extended attributes.
    pub xattrs: Vec<Xattr>,
}

/// What an inode holds.
#[derive(Debug, Clone, Default)]
pub(crate) enum Kind {
    /// A directory: its entries (name, inode index), and its parent's index
    /// (its own for the root).
    Dir {
        entries: Vec<(Box<[u8]>, u32)>,
        parent: u32,
    },
    /// A regular file: its size, what [`Source::open`] takes to find its
    /// data, and whether it may have holes worth mapping.
    File {
        size: u64,
        key: u64,
        maybe_sparse: bool,
    },
    Symlink(Box<[u8]>),
    /// A device node, FIFO or socket.
    #[default]
    Special,
}

/// A tree to write: `inodes[0]` is the root directory, the others in
/// depth-first order (each directory before its contents).
#[derive(Debug, Default)]
pub(crate) struct Fs {
    pub inodes: Vec<Inode>,
}

/// A name from the tree, for a message.
pub(crate) fn quote(name: &[u8]) -> String {
    crate::image::quote(name)
}

/// Writes the tree at `dir` as an EROFS image to the file `out` (through
/// a temporary file beside it, renamed at the end; mode 0644), by the
/// packer's rules (see the module comment).
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<PackStats, ErofsError> {
    let canonical_dir = std::fs::canonicalize(dir).map_err(|e| InitrdError::read(dir, e))?;
    let (path, out_dir) = match crate::output_target(out)? {
        crate::Output::Replace { path, dir } => (path, dir),
        crate::Output::Stream(_) => {
            return Err(InitrdError::OutputType {
                path: out.to_path_buf(),
                kind: "a stream",
            }
            .into())
        }
    };
    if out_dir.starts_with(&canonical_dir) {
        return Err(InitrdError::OutputInsideTree {
            out: out.to_path_buf(),
            dir: dir.to_path_buf(),
        }
        .into());
    }
    let tree = Tree::scan_all(dir)?;
    crate::write_replacing(&path, &out_dir, crate::OUTPUT_MODE, |file, temp| {
        write_tree(&tree, opts, file, temp)
    })
}

/// The path of the cached EROFS image of the tree at `dir`
/// (`<cache>/initrd/<key>.erofs`, the key of its newc archive), written
/// only when no good image of this exact tree state is cached.
pub fn cached_pack(dir: &Path, opts: &PackOptions) -> Result<PathBuf, ErofsError> {
    let cache_dir = crate::cache_dir()?;
    cache::check_outside(&cache_dir, dir)?;
    let tree = Tree::scan_all(dir)?;
    let key = tree.cache_key(opts);
    let (path, initrd_dir) = match cache::slot(&cache_dir, &key, dir, CACHE_SUFFIX)? {
        cache::Slot::Hit(path) => return Ok(path),
        cache::Slot::Miss { path, dir } => (path, dir),
    };
    let stats = crate::write_replacing(&path, &initrd_dir, cache::ENTRY_MODE, |file, temp| {
        write_tree(&tree, opts, file, temp)
    })?;
    log::debug!(
        "{}: wrote {} inodes, {} bytes, into {}",
        dir.display(),
        stats.entries,
        stats.bytes,
        path.display()
    );
    cache::evict(&initrd_dir, CACHE_SUFFIX, cache::KEEP);
    Ok(path)
}

/// Whether the open cache entry `file` is a whole image of this writer's:
/// its superblock's magic, block size and volume name, and a length of
/// the block count it claims.
pub(crate) fn cached_image_ok(file: &File) -> bool {
    let mut sb = [0u8; format::SUPER_LEN];
    if file
        .read_exact_at(&mut sb, format::SUPER_OFFSET as u64)
        .is_err()
    {
        return false;
    }
    let Some(summary) = format::read_super(&sb) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    &sb[64..80] == VOLUME_NAME && len == u64::from(summary.blocks) * format::BLOCK
}

fn write_tree(
    tree: &Tree,
    opts: &PackOptions,
    file: &File,
    temp: &Path,
) -> Result<PackStats, ErofsError> {
    let fs = from_tree(tree, opts)?;
    let mut source = DirSource {
        tree,
        path: Vec::new(),
        open: HashMap::new(),
    };
    let mut sink = crate::pack::Sink::new(file, Some(file.as_raw_fd()), temp);
    write_fs(&fs, &mut source, &mut sink)
}

/// The model of a scanned directory tree.
fn from_tree(tree: &Tree, opts: &PackOptions) -> Result<Fs, ErofsError> {
    let mut fs = Fs::default();
    // The directories above the entry being added: (entry index, inode).
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut linked: HashMap<u32, u32> = HashMap::new();
    let mut xattrs = dir_xattrs::read_tree(tree)?;
    for (index, entry) in tree.entries.iter().enumerate() {
        let name = tree.name(entry);
        let (parent_name, base) = match name.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&name[..slash], &name[slash + 1..]),
            None if index == 0 => (&b""[..], &b""[..]),
            None => (&b"."[..], name),
        };
        while let Some(&(dir_entry, _)) = stack.last() {
            if tree.name(&tree.entries[dir_entry]) == parent_name {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().map_or(0, |&(_, inode)| inode);
        if index > 0 && stack.is_empty() {
            // The scan lists every entry after its directory.
            return Err(InitrdError::read(
                &tree.root,
                io::Error::other("the scanned tree is out of order"),
            )
            .into());
        }
        if entry.is_regular() && entry.src_nlink > 1 {
            if let Some(&inode) = linked.get(&entry.ino) {
                add_entry(&mut fs, parent, base, inode);
                continue;
            }
        }
        let xattrs = std::mem::take(&mut xattrs[index]);
        let (uid, gid) = if opts.keep_owner {
            (entry.uid, entry.gid)
        } else {
            (0, 0)
        };
        let kind = match entry.mode & S_IFMT {
            S_IFDIR => Kind::Dir {
                entries: Vec::new(),
                parent,
            },
            S_IFREG => Kind::File {
                size: entry.size,
                key: index as u64,
                maybe_sparse: entry.src_blocks.saturating_mul(512) < entry.size,
            },
            S_IFLNK => Kind::Symlink(tree.target(entry).into()),
            _ => Kind::Special,
        };
        let inode = fs.inodes.len() as u32;
        fs.inodes.push(Inode {
            mode: entry.mode,
            uid,
            gid,
            mtime: u64::from(opts.mtime),
            mtime_nsec: 0,
            nlink: entry.nlink,
            rdev: (entry.rdev_major, entry.rdev_minor),
            kind,
            xattrs,
        });
        if index > 0 {
            add_entry(&mut fs, parent, base, inode);
        }
        if entry.is_regular() && entry.src_nlink > 1 {
            linked.insert(entry.ino, inode);
        }
        if entry.mode & S_IFMT == S_IFDIR {
            stack.push((index, inode));
        }
    }
    Ok(fs)
}

fn add_entry(fs: &mut Fs, parent: u32, name: &[u8], inode: u32) {
    if let Kind::Dir { entries, .. } = &mut fs.inodes[parent as usize].kind {
        entries.push((name.into(), inode));
    }
}

/// The path of `entry` in the scanned directory, into `path`.
fn source_path(tree: &Tree, entry: &crate::tree::Entry, path: &mut Vec<u8>) {
    path.clear();
    path.extend_from_slice(tree.root.as_os_str().as_bytes());
    let name = tree.name(entry);
    if name != b"." {
        path.push(b'/');
        path.extend_from_slice(name);
    }
}

/// File data from the scanned directory: each file opened once, kept
/// open from its first piece to its last.
struct DirSource<'t> {
    tree: &'t Tree,
    path: Vec<u8>,
    open: HashMap<u64, File>,
}

impl Source for DirSource<'_> {
    type Error = ErofsError;

    fn open(&mut self, key: u64) -> Result<(&File, u64, &Path), ErofsError> {
        source_path(self.tree, &self.tree.entries[key as usize], &mut self.path);
        let path = Path::new(OsStr::from_bytes(&self.path));
        let file = match self.open.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| InitrdError::read(path, e))?,
            ),
        };
        Ok((file, 0, path))
    }

    fn close(&mut self, key: u64) {
        self.open.remove(&key);
    }

    fn data_map(
        &mut self,
        key: u64,
        size: u64,
        chunk_bits: u8,
    ) -> Result<Option<Vec<bool>>, ErofsError> {
        let (file, _, path) = self.open(key)?;
        let map = map_data(file, size, chunk_bits).map_err(|e| InitrdError::read(path, e));
        // Opened again when its data is written: a tree of many sparse
        // files never holds them all open.
        self.close(key);
        Ok(map?)
    }
}

/// Which of the `1 << chunk_bits` chunks of `file` (of `size` bytes) hold
/// data, by `SEEK_DATA`; `None` where the file system cannot tell.
fn map_data(file: &File, size: u64, chunk_bits: u8) -> io::Result<Option<Vec<bool>>> {
    let chunk = 1u64 << chunk_bits;
    let mut map = vec![false; size.div_ceil(chunk) as usize];
    let mut offset = 0u64;
    while offset < size {
        // SAFETY: lseek on an open descriptor; the writer reads by offset,
        // so moving its position is harmless.
        let found = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, libc::SEEK_DATA) };
        if found < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No data after `offset`.
                Some(libc::ENXIO) => Ok(Some(map)),
                Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(None),
                _ => Err(e),
            };
        }
        let found = found as u64;
        if found >= size {
            break;
        }
        let index = found / chunk;
        map[index as usize] = true;
        offset = (index + 1) * chunk;
    }
    Ok(Some(map))
}
