//! The merged tree as the EROFS writer's model ([`crate::erofs::Fs`]):
//! depth first from the root, names sorted bytewise, one inode per
//! regular file however many names it has (its link count), owners, modes
//! and mtimes from the tar headers, file data read from the layers (or
//! the spool) where the newc writer reads it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::entry::Leaf;
use super::merge::{Kind, MergedTree, NodeId, ROOT};
use super::spool::Sources;
use super::write::names_per_inode;
use super::ImageError;
use crate::erofs::{self, Fs, Inode, Source};
use crate::newc::{S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
use crate::pack::Sink;
use crate::PackStats;

/// Writes `tree` as an EROFS image to `file` (named `temp` in messages).
pub(crate) fn write(
    tree: &MergedTree,
    sources: &mut Sources,
    file: &File,
    temp: &Path,
) -> Result<PackStats, ImageError> {
    let fs = model(tree);
    let mut source = LayerData { tree, sources };
    let mut sink = Sink::new(file, Some(file.as_raw_fd()), temp);
    erofs::write_fs(&fs, &mut source, &mut sink)
}

fn model(tree: &MergedTree) -> Fs {
    let names = names_per_inode(tree);
    let mut fs = Fs::default();
    // The inode of each regular file's data, once made.
    let mut made: Vec<Option<u32>> = vec![None; tree.inodes.len()];
    let mut stack: Vec<(NodeId, u32)> = Vec::new();
    let root = new_inode(tree, ROOT, 0, &names, &mut fs);
    stack.push((ROOT, root));
    while let Some((dir, dir_inode)) = stack.pop() {
        let Kind::Dir(children) = &tree.node(dir).kind else {
            continue;
        };
        let mut subdirs = Vec::new();
        for (name, &child) in children {
            let inode = match tree.node(child).kind {
                Kind::File(data) => match made[data as usize] {
                    Some(inode) => inode,
                    None => {
                        let inode = new_inode(tree, child, dir_inode, &names, &mut fs);
                        made[data as usize] = Some(inode);
                        inode
                    }
                },
                _ => new_inode(tree, child, dir_inode, &names, &mut fs),
            };
            if let erofs::Kind::Dir { entries, .. } = &mut fs.inodes[dir_inode as usize].kind {
                entries.push((name.clone(), inode));
            }
            if matches!(tree.node(child).kind, Kind::Dir(_)) {
                subdirs.push((child, inode));
            }
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    fs
}

fn new_inode(tree: &MergedTree, id: NodeId, parent: u32, names: &[u32], fs: &mut Fs) -> u32 {
    let node = tree.node(id);
    let index = fs.inodes.len() as u32;
    let mut inode = Inode {
        mode: node.meta.perm,
        uid: node.meta.uid,
        gid: node.meta.gid,
        mtime: u64::from(node.meta.mtime),
        nlink: 1,
        ..Inode::default()
    };
    match &node.kind {
        Kind::Dir(children) => {
            let subdirs = children
                .values()
                .filter(|&&c| matches!(tree.node(c).kind, Kind::Dir(_)))
                .count();
            inode.mode |= S_IFDIR;
            inode.nlink = 2 + subdirs as u32;
            inode.kind = erofs::Kind::Dir {
                entries: Vec::new(),
                parent: if id == ROOT { index } else { parent },
            };
        }
        Kind::File(data) => {
            inode.mode |= S_IFREG;
            inode.nlink = names[*data as usize];
            inode.kind = erofs::Kind::File {
                size: tree.inodes[*data as usize].len,
                key: u64::from(*data),
                maybe_sparse: false,
            };
        }
        Kind::Leaf(Leaf::Symlink(target)) => {
            inode.mode |= S_IFLNK;
            inode.kind = erofs::Kind::Symlink(target.clone());
        }
        Kind::Leaf(Leaf::Device { kind, major, minor }) => {
            inode.mode |= kind;
            inode.rdev = (*major, *minor);
        }
        Kind::Leaf(Leaf::Fifo) => inode.mode |= S_IFIFO,
    }
    fs.inodes.push(inode);
    index
}

/// File data where the layers (or the spool) have it.
struct LayerData<'a> {
    tree: &'a MergedTree,
    sources: &'a mut Sources,
}

impl Source for LayerData<'_> {
    type Error = ImageError;

    fn open(&mut self, key: u64) -> Result<(&File, u64, &Path), ImageError> {
        let data = self.tree.inodes[key as usize];
        let (file, name) = self.sources.open(&data)?;
        Ok((file, data.offset, name))
    }
}
