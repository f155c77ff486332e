//! Writing the merged tree as a newc archive, by the directory packer's
//! rules: depth first, each directory before its contents, names sorted
//! bytewise, `.` first; inode numbers 1, 2, … in that order, shared by the
//! names of a hard-linked file, whose data goes with its last name;
//! directory `nlink` = 2 + subdirectories. Owners, modes and mtimes are the
//! tar headers'. The same tree gives the same bytes.

use std::io::Write;
use std::path::Path;

use super::entry::{unusable_path, Leaf};
use super::merge::{Kind, MergedTree, NodeId, ROOT};
use super::spool::Sources;
use super::{quote, ImageError};
use crate::newc::{Header, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
use crate::pack::Sink;

/// Writes `tree` to `sink` (without the trailer); returns the number of
/// entries. A path no file can have (symbolic links followed inside the
/// tree can make one of entries that each could) is an error about
/// `image`.
pub(crate) fn write_tree<W: Write>(
    tree: &MergedTree,
    sources: &mut Sources,
    sink: &mut Sink<W>,
    image: &Path,
) -> Result<u64, ImageError> {
    let names = names_per_inode(tree);
    let mut writer = TreeWriter {
        tree,
        names,
        ino_of: vec![0; tree.inodes.len()],
        written: vec![0; tree.inodes.len()],
        next_ino: 1,
        entries: 0,
    };
    writer.entry(ROOT, b".", sources, sink)?;
    let mut path: Vec<u8> = Vec::new();
    let mut stack = vec![(children(tree, ROOT), 0usize)];
    while let Some((iter, base)) = stack.last_mut() {
        let base = *base;
        let Some((name, &id)) = iter.next() else {
            stack.pop();
            continue;
        };
        path.truncate(base);
        if base > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        if let Some(why) = unusable_path(&path) {
            return Err(ImageError::UnusablePath {
                path: image.to_path_buf(),
                entry: quote(&path),
                why,
            });
        }
        writer.entry(id, &path, sources, sink)?;
        if matches!(tree.node(id).kind, Kind::Dir(_)) {
            stack.push((children(tree, id), path.len()));
        }
    }
    Ok(writer.entries)
}

type Children<'t> = std::collections::btree_map::Iter<'t, Box<[u8]>, NodeId>;

fn children(tree: &MergedTree, dir: NodeId) -> Children<'_> {
    static EMPTY: std::collections::BTreeMap<Box<[u8]>, NodeId> = std::collections::BTreeMap::new();
    match &tree.node(dir).kind {
        Kind::Dir(children) => children.iter(),
        _ => EMPTY.iter(),
    }
}

/// How many reachable names each inode has.
pub(crate) fn names_per_inode(tree: &MergedTree) -> Vec<u32> {
    let mut names = vec![0u32; tree.inodes.len()];
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        match &tree.node(id).kind {
            Kind::Dir(children) => stack.extend(children.values().copied()),
            Kind::File(inode) => names[*inode as usize] += 1,
            _ => {}
        }
    }
    names
}

struct TreeWriter<'t> {
    tree: &'t MergedTree,
    names: Vec<u32>,
    ino_of: Vec<u32>,
    written: Vec<u32>,
    next_ino: u32,
    entries: u64,
}

impl TreeWriter<'_> {
    fn new_ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino - 1
    }

    fn entry<W: Write>(
        &mut self,
        id: NodeId,
        name: &[u8],
        sources: &mut Sources,
        sink: &mut Sink<W>,
    ) -> Result<(), ImageError> {
        let node = self.tree.node(id);
        let mut header = Header {
            mode: node.meta.perm,
            uid: node.meta.uid,
            gid: node.meta.gid,
            nlink: 1,
            mtime: node.meta.mtime,
            ..Header::default()
        };
        let mut data = None;
        match &node.kind {
            Kind::Dir(children) => {
                let subdirs = children
                    .values()
                    .filter(|&&c| matches!(self.tree.node(c).kind, Kind::Dir(_)))
                    .count();
                header.ino = self.new_ino();
                header.mode |= S_IFDIR;
                header.nlink = 2 + subdirs as u32;
            }
            Kind::File(inode) => {
                let inode = *inode as usize;
                if self.ino_of[inode] == 0 {
                    self.ino_of[inode] = self.new_ino();
                }
                self.written[inode] += 1;
                header.ino = self.ino_of[inode];
                header.mode |= S_IFREG;
                header.nlink = self.names[inode];
                if self.written[inode] == self.names[inode] {
                    let file_data = self.tree.inodes[inode];
                    // Layers refuse files of 4 GiB or more.
                    header.filesize = file_data.len as u32;
                    data = Some(file_data);
                }
            }
            Kind::Leaf(leaf) => {
                header.ino = self.new_ino();
                match leaf {
                    Leaf::Symlink(target) => {
                        header.mode |= S_IFLNK;
                        // Layers refuse targets longer than PATH_MAX.
                        header.filesize = target.len() as u32;
                    }
                    Leaf::Device { kind, major, minor } => {
                        header.mode |= kind;
                        header.rdev_major = *major;
                        header.rdev_minor = *minor;
                    }
                    Leaf::Fifo => header.mode |= S_IFIFO,
                }
            }
        }
        sink.entry_header(&header, name)?;
        if let Kind::Leaf(Leaf::Symlink(target)) = &node.kind {
            sink.space(target.len())?.copy_from_slice(target);
        }
        if let Some(data) = data {
            let (file, source_name) = sources.open(&data)?;
            sink.file_data(file, data.offset, data.len, source_name)?;
        }
        sink.padding(u64::from(header.filesize))?;
        self.entries += 1;
        Ok(())
    }
}
