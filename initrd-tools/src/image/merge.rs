//! The merged tree: layers applied in order, as overlayfs shows them, kept
//! as metadata only (file data stays where the layers have it).
//!
//! Each layer is applied in two steps, as the OCI layer rules ask
//! (whiteouts hide only what lower layers have):
//!
//! 1. Whiteouts: `D/.wh.NAME` removes `D/NAME`, and `D/.wh..wh..opq`
//!    removes everything in `D`, of the layers below. `D` is looked up
//!    without following symlinks; a whiteout whose directory or name does
//!    not exist is ignored (nothing to hide).
//! 2. Everything else, in tar order. A non-directory replaces whatever has
//!    its name (a directory with all it holds, too); a directory replaces a
//!    non-directory and merges with a directory (taking the new entry's
//!    metadata). Missing parent directories are created (0755, root,
//!    mtime 0). A parent that is a symlink is followed inside the tree, as a
//!    chroot would (absolute targets start at the tree's root, `..` stops
//!    there), so no entry lands outside the tree; a parent that is neither
//!    is an error. A hard link shares the inode of its target, a file of
//!    this layer or a lower one (a hard link to a symlink, device or FIFO
//!    is a copy of it).

use std::collections::BTreeMap;

use super::entry::{normalise, Action, DataRef, LayerEntry, LayerError, Leaf, Meta};
use super::quote;
use crate::newc::S_IFMT;
use crate::tree::DEV_NODES;

/// A node's index in [`MergedTree::nodes`].
pub(crate) type NodeId = u32;

/// The root directory's id.
pub(crate) const ROOT: NodeId = 0;

/// How many symlinks one path may run through (Linux's limit).
const MAX_LINKS: u32 = 40;

/// What a node is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A directory: its children by name, sorted bytewise.
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    /// A regular file: its index in [`MergedTree::inodes`], shared by hard
    /// links.
    File(u32),
    Leaf(Leaf),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

/// The tree all layers so far make, as metadata.
#[derive(Debug)]
pub(crate) struct MergedTree {
    /// Every node ever made; removed ones stay, unreachable.
    pub nodes: Vec<Node>,
    /// The data of each regular file's inode.
    pub inodes: Vec<DataRef>,
}

/// The path of an entry, for messages.
/// The path of an entry, for messages: quoted and bounded ([`quote`]).
fn display(components: &[Box<[u8]>]) -> String {
    let mut path = Vec::new();
    for component in components {
        path.push(b'/');
        path.extend_from_slice(component);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    quote(&path)
}

impl MergedTree {
    /// An empty tree: a root directory, 0755, owned by root.
    pub(crate) fn new() -> Self {
        MergedTree {
            nodes: vec![Node {
                meta: Meta::root_owned(0o755),
                kind: Kind::Dir(BTreeMap::new()),
            }],
            inodes: Vec::new(),
        }
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.node(dir).kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    /// Puts `node` at `dir/name`, replacing what was there.
    fn insert(&mut self, dir: NodeId, name: Box<[u8]>, node: Node) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node);
        if let Kind::Dir(children) = &mut self.nodes[dir as usize].kind {
            children.insert(name, id);
        }
        id
    }

    /// Applies one layer's entries (see the module comment for the rules).
    pub(crate) fn apply(&mut self, entries: Vec<LayerEntry>) -> Result<(), LayerError> {
        for entry in &entries {
            match entry.action {
                Action::Whiteout => {
                    if let Some((name, parents)) = entry.path.split_last() {
                        if let Some(dir) = self.find_dir_nofollow(parents) {
                            if let Kind::Dir(children) = &mut self.nodes[dir as usize].kind {
                                children.remove(name);
                            }
                        }
                    }
                }
                Action::Opaque => {
                    if let Some(dir) = self.find_dir_nofollow(&entry.path) {
                        if let Kind::Dir(children) = &mut self.nodes[dir as usize].kind {
                            children.clear();
                        }
                    }
                }
                _ => {}
            }
        }
        for entry in entries {
            self.add(entry)?;
        }
        Ok(())
    }

    fn add(&mut self, entry: LayerEntry) -> Result<(), LayerError> {
        let Some((name, parents)) = entry.path.split_last() else {
            return match entry.action {
                Action::Dir => {
                    self.nodes[ROOT as usize].meta = entry.meta;
                    Ok(())
                }
                Action::Whiteout | Action::Opaque => Ok(()),
                _ => Err(LayerError::Unsupported {
                    entry: quote(b"/"),
                    what: "the root of the tree must be a directory".to_string(),
                }),
            };
        };
        let with_meta = |kind| {
            Some(Node {
                meta: entry.meta,
                kind,
            })
        };
        let node = match &entry.action {
            Action::Whiteout | Action::Opaque => return Ok(()),
            Action::Dir => None,
            // A hard link is its target's node: the same inode and metadata.
            Action::HardLink(target) => Some(self.hard_link_target(&entry.path, target)?),
            Action::File(data) => {
                self.inodes.push(*data);
                with_meta(Kind::File(self.inodes.len() as u32 - 1))
            }
            Action::Leaf(leaf) => with_meta(Kind::Leaf(leaf.clone())),
        };
        let dir = self
            .resolve_dir(parents, true, &entry.path)?
            .ok_or_else(|| LayerError::NotADirectory {
                entry: display(&entry.path),
                component: display(parents),
            })?;
        let node = match node {
            Some(node) => node,
            None => match self.child(dir, name) {
                Some(existing) if matches!(self.node(existing).kind, Kind::Dir(_)) => {
                    self.nodes[existing as usize].meta = entry.meta;
                    return Ok(());
                }
                _ => Node {
                    meta: entry.meta,
                    kind: Kind::Dir(BTreeMap::new()),
                },
            },
        };
        self.insert(dir, name.clone(), node);
        Ok(())
    }

    /// What a hard link at `entry` to `target` becomes: the same inode for
    /// a regular file, a copy for a symlink, device or FIFO.
    fn hard_link_target(
        &mut self,
        entry: &[Box<[u8]>],
        target: &[Box<[u8]>],
    ) -> Result<Node, LayerError> {
        let error = |why| LayerError::HardLink {
            entry: display(entry),
            target: display(target),
            why,
        };
        let Some((name, parents)) = target.split_last() else {
            return Err(error("is the root directory"));
        };
        let dir = match self.resolve_dir(parents, false, target) {
            Ok(Some(dir)) => dir,
            Ok(None) | Err(LayerError::NotADirectory { .. }) => {
                return Err(error("does not exist in this layer or a lower one"))
            }
            Err(e) => return Err(e),
        };
        let id = self
            .child(dir, name)
            .ok_or_else(|| error("does not exist in this layer or a lower one"))?;
        match &self.node(id).kind {
            Kind::Dir(_) => Err(error("is a directory")),
            _ => Ok(self.node(id).clone()),
        }
    }

    /// Resolves `components` as directories from the root, the way a
    /// chroot would (symlinks followed inside the tree); missing ones are
    /// created when `create`, else `Ok(None)`. `entry` is for messages.
    fn resolve_dir(
        &mut self,
        components: &[Box<[u8]>],
        create: bool,
        entry: &[Box<[u8]>],
    ) -> Result<Option<NodeId>, LayerError> {
        let mut stack: Vec<NodeId> = vec![ROOT];
        let mut pending: Vec<Box<[u8]>> = components.iter().rev().cloned().collect();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            match &*name {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = stack[stack.len() - 1];
            let Some(id) = self.child(dir, &name) else {
                if !create {
                    return Ok(None);
                }
                let id = self.insert(
                    dir,
                    name,
                    Node {
                        meta: Meta::root_owned(0o755),
                        kind: Kind::Dir(BTreeMap::new()),
                    },
                );
                stack.push(id);
                continue;
            };
            match &self.node(id).kind {
                Kind::Dir(_) => stack.push(id),
                Kind::Leaf(Leaf::Symlink(target)) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(LayerError::SymlinkLoop {
                            entry: display(entry),
                        });
                    }
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push(part.into());
                    }
                }
                _ => {
                    return Err(LayerError::NotADirectory {
                        entry: display(entry),
                        component: String::from_utf8_lossy(&name).into_owned(),
                    })
                }
            }
        }
        Ok(Some(stack[stack.len() - 1]))
    }

    /// The directory at `components`, without following symlinks.
    fn find_dir_nofollow(&self, components: &[Box<[u8]>]) -> Option<NodeId> {
        let mut dir = ROOT;
        for name in components {
            dir = self.child(dir, name)?;
            if !matches!(self.node(dir).kind, Kind::Dir(_)) {
                return None;
            }
        }
        Some(dir)
    }

    /// `dev/console` and `dev/null`, when the tree lacks them, by the
    /// directory packer's rule (a `dev` that is not a directory is left
    /// alone).
    pub(crate) fn add_console_nodes(&mut self) {
        let dev = match self.child(ROOT, b"dev") {
            None => self.insert(
                ROOT,
                (*b"dev").into(),
                Node {
                    meta: Meta::root_owned(0o755),
                    kind: Kind::Dir(BTreeMap::new()),
                },
            ),
            Some(id) if matches!(self.node(id).kind, Kind::Dir(_)) => id,
            Some(_) => return,
        };
        for (name, mode, major, minor) in DEV_NODES {
            if self.child(dev, name.as_bytes()).is_none() {
                self.insert(
                    dev,
                    name.as_bytes().into(),
                    Node {
                        meta: Meta::root_owned(mode & !S_IFMT),
                        kind: Kind::Leaf(Leaf::Device {
                            kind: mode & S_IFMT,
                            major,
                            minor,
                        }),
                    },
                );
            }
        }
    }

    /// Creates the directory `path` (an image's `WorkingDir`) when missing,
    /// as `docker run` does; left alone when something else has its name.
    pub(crate) fn ensure_dir(&mut self, path: &str) {
        let Some(components) = normalise(path.as_bytes()) else {
            return;
        };
        if let Err(e) = self.resolve_dir(&components, true, &components) {
            log::debug!("not creating the working directory {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Vec<Box<[u8]>> {
        normalise(text.as_bytes()).unwrap()
    }

    fn entry(text: &str, action: Action) -> LayerEntry {
        LayerEntry {
            path: path(text),
            meta: Meta::root_owned(0o644),
            action,
        }
    }

    fn symlink(text: &str, target: &str) -> LayerEntry {
        entry(text, Action::Leaf(Leaf::Symlink(target.as_bytes().into())))
    }

    fn file(text: &str, offset: u64) -> LayerEntry {
        entry(
            text,
            Action::File(DataRef {
                source: 0,
                offset,
                len: 1,
            }),
        )
    }

    /// Every reachable path with a short description of what it is.
    fn listing(tree: &MergedTree) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((id, name)) = stack.pop() {
            if let Kind::Dir(children) = &tree.node(id).kind {
                for (child, &child_id) in children.iter().rev() {
                    stack.push((
                        child_id,
                        format!("{name}/{}", String::from_utf8_lossy(child)),
                    ));
                }
            }
            let what = match &tree.node(id).kind {
                Kind::Dir(_) => "dir".to_string(),
                Kind::File(inode) => format!("file@{}", tree.inodes[*inode as usize].offset),
                Kind::Leaf(Leaf::Symlink(t)) => format!("-> {}", String::from_utf8_lossy(t)),
                Kind::Leaf(Leaf::Device { .. }) => "dev".to_string(),
                Kind::Leaf(Leaf::Fifo) => "fifo".to_string(),
            };
            if !name.is_empty() {
                out.push(format!("{name} {what}"));
            }
        }
        out
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let mut tree = MergedTree::new();
        tree.apply(vec![
            entry("a", Action::Dir),
            file("a/x", 1),
            file("a/y", 2),
            entry("d", Action::Dir),
            file("d/old", 3),
            file("keep", 4),
        ])
        .unwrap();
        tree.apply(vec![
            // The same layer's a/x survives its whiteout.
            file("a/x", 5),
            entry("a/x", Action::Whiteout),
            entry("a/y", Action::Whiteout),
            entry("nothing/here", Action::Whiteout),
            file("d/new", 6),
            entry("d", Action::Opaque),
        ])
        .unwrap();
        assert_eq!(
            listing(&tree),
            [
                "/a dir",
                "/a/x file@5",
                "/d dir",
                "/d/new file@6",
                "/keep file@4"
            ]
        );
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_tree() {
        let mut tree = MergedTree::new();
        tree.apply(vec![
            entry("usr/bin", Action::Dir),
            symlink("bin", "usr/bin"),
            symlink("up", "../../../usr"),
            symlink("abs", "/usr/bin"),
            symlink("loop", "loop"),
        ])
        .unwrap();
        tree.apply(vec![file("bin/a", 1), file("up/b", 2), file("abs/c", 3)])
            .unwrap();
        let list = listing(&tree);
        assert!(list.contains(&"/usr/bin/a file@1".to_string()), "{list:?}");
        assert!(list.contains(&"/usr/b file@2".to_string()), "{list:?}");
        assert!(list.contains(&"/usr/bin/c file@3".to_string()), "{list:?}");
        let err = tree.apply(vec![file("loop/x", 4)]).unwrap_err();
        assert!(matches!(err, LayerError::SymlinkLoop { .. }), "{err}");
        let err = tree.apply(vec![file("usr/bin/a/x", 4)]).unwrap_err();
        assert!(matches!(err, LayerError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks() {
        let mut tree = MergedTree::new();
        tree.apply(vec![
            entry("real", Action::Dir),
            file("real/f", 1),
            symlink("link", "real"),
        ])
        .unwrap();
        tree.apply(vec![
            entry("link/f", Action::Whiteout),
            entry("link", Action::Opaque),
        ])
        .unwrap();
        assert!(listing(&tree).contains(&"/real/f file@1".to_string()));
    }

    #[test]
    fn files_and_directories_replace_each_other() {
        let mut tree = MergedTree::new();
        tree.apply(vec![file("x", 1)]).unwrap();
        tree.apply(vec![entry("x", Action::Dir), file("x/y", 2)])
            .unwrap();
        assert_eq!(listing(&tree), ["/x dir", "/x/y file@2"]);
        tree.apply(vec![file("x", 3)]).unwrap();
        assert_eq!(listing(&tree), ["/x file@3"]);
    }

    #[test]
    fn hard_links_share_inodes_across_layers() {
        let mut tree = MergedTree::new();
        tree.apply(vec![file("a", 1), symlink("s", "a")]).unwrap();
        tree.apply(vec![
            entry("b", Action::HardLink(path("a"))),
            entry("t", Action::HardLink(path("s"))),
        ])
        .unwrap();
        let list = listing(&tree);
        assert_eq!(list, ["/a file@1", "/b file@1", "/s -> a", "/t -> a"]);
        assert_eq!(tree.inodes.len(), 1);
        for (target, why) in [("missing", "does not exist"), ("", "root")] {
            let err = tree
                .apply(vec![entry("c", Action::HardLink(path(target)))])
                .unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn console_nodes_and_workdir_are_added_when_missing() {
        let mut tree = MergedTree::new();
        tree.add_console_nodes();
        tree.ensure_dir("/srv/app");
        assert_eq!(
            listing(&tree),
            [
                "/dev dir",
                "/dev/console dev",
                "/dev/null dev",
                "/srv dir",
                "/srv/app dir"
            ]
        );
        let mut tree = MergedTree::new();
        tree.apply(vec![file("dev", 1)]).unwrap();
        tree.add_console_nodes();
        assert_eq!(listing(&tree), ["/dev file@1"]);
    }
}
