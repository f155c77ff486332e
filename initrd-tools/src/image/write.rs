//! Writing the merged tree as a newc archive, by the directory packer's
//! rules: depth first, each directory before its contents, names sorted
//! bytewise, `.` first; inode numbers 1, 2, … in that order, shared by the
//! names of a hard-linked file, whose data goes with its last name;
//! directory `nlink` = 2 + subdirectories. Owners, modes and mtimes are the
//! tar headers'. The same tree gives the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::layer::LayerError;
use super::merge::{Kind, Leaf, MergedTree, NodeId, ROOT};
use super::ImageError;
use crate::newc::{Header, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
use crate::pack::Sink;

/// The source id of the spool file.
const SPOOL: u32 = u32::MAX;

/// Where a regular file's data is: `len` bytes at `offset` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataRef {
    /// A layer file's index in [`Sources`], or the spool.
    pub source: u32,
    pub offset: u64,
    pub len: u64,
}

/// The files file data is read from when writing: each layer's file, and
/// the spool, an unnamed temporary file holding compressed layers' data.
pub(crate) struct Sources {
    layers: Vec<(File, PathBuf)>,
    spool_dir: PathBuf,
    spool: Option<BufWriter<File>>,
    spool_len: u64,
    spool_file: Option<File>,
}

impl Sources {
    /// Sources whose spool, when needed, is made in `spool_dir`.
    pub(crate) fn new(spool_dir: &Path) -> Self {
        Sources {
            layers: Vec::new(),
            spool_dir: spool_dir.to_path_buf(),
            spool: None,
            spool_len: 0,
            spool_file: None,
        }
    }

    /// The id the next layer file will get.
    pub(crate) fn next_layer_id(&self) -> u32 {
        self.layers.len() as u32
    }

    pub(crate) fn add_layer_file(&mut self, file: File, path: &Path) {
        self.layers.push((file, path.to_path_buf()));
    }

    /// Copies exactly `len` bytes of `data` into the spool.
    pub(crate) fn spool(
        &mut self,
        data: &mut impl Read,
        len: u64,
        name: &dyn Fn() -> String,
    ) -> Result<DataRef, LayerError> {
        let spool = match &mut self.spool {
            Some(spool) => spool,
            None => {
                let file = tempfile::tempfile_in(&self.spool_dir).map_err(LayerError::Spool)?;
                self.spool.insert(BufWriter::with_capacity(1 << 20, file))
            }
        };
        let offset = self.spool_len;
        let mut buf = [0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => return Err(LayerError::Truncated { entry: name() }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerError::Corrupt(e)),
            };
            spool.write_all(&buf[..n]).map_err(LayerError::Spool)?;
            left -= n as u64;
        }
        self.spool_len += len;
        Ok(DataRef {
            source: SPOOL,
            offset,
            len,
        })
    }

    /// The file `data` is in, positioned at its start, and its name.
    fn open(&mut self, data: &DataRef) -> Result<(&mut File, PathBuf), ImageError> {
        let (file, name) = if data.source == SPOOL {
            let name = self.spool_dir.join("(temporary file)");
            if let Some(spool) = self.spool.take() {
                let file = spool.into_inner().map_err(|e| ImageError::Write {
                    path: name.clone(),
                    source: e.into_error(),
                })?;
                self.spool_file = Some(file);
            }
            let file = self.spool_file.as_mut().ok_or_else(|| {
                ImageError::read(&name, io::Error::other("file data was never spooled"))
            })?;
            (file, name)
        } else {
            let (file, path) = &mut self.layers[data.source as usize];
            (file, path.clone())
        };
        file.seek(SeekFrom::Start(data.offset))
            .map_err(|e| ImageError::read(&name, e))?;
        Ok((file, name))
    }
}

/// Writes `tree` to `sink` (without the trailer); returns the number of
/// entries.
pub(crate) fn write_tree<W: Write>(
    tree: &MergedTree,
    sources: &mut Sources,
    sink: &mut Sink<W>,
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
fn names_per_inode(tree: &MergedTree) -> Vec<u32> {
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
            sink.file_data(file, data.len, &source_name)?;
        }
        sink.padding(u64::from(header.filesize))?;
        self.entries += 1;
        Ok(())
    }
}
