//! The booted kernel's own modules, found on the host: when a kernel has its
//! virtio drivers as modules (Debian's `CONFIG_VIRTIO_MMIO=m`, ...), the
//! guest needs those `.ko` files, and their dependencies, before it can use
//! the devices. This module finds them the way `modprobe` would, without
//! running it, by reading the files `depmod` writes in
//! `/lib/modules/<release>`:
//!
//! - `modules.dep`: `path/to/mod.ko: dep1.ko dep2.ko ...`, every module
//!   with the full list of the modules it needs;
//! - `modules.alias`: `alias <glob> <module>`, so that `fs-9p`,
//!   `virtio:d00000003v*` or `acpi*:LNRO0005:*` name modules;
//! - `modules.softdep`: `softdep <module> pre: ... post: ...`;
//! - `modules.builtin` and `modules.builtin.modinfo`: modules, and aliases of
//!   modules, that are built into the kernel: nothing to load.
//!
//! [`ModuleTree::resolve`] gives the files in load order (each module after
//! everything it needs, no duplicates); [`ModuleFile::read`] returns a
//! module's bytes, decompressed on the host from `.ko.xz`, `.ko.zst` or
//! `.ko.gz`, after checking that it was built for the kernel's release.
//! Names compare the way `modprobe` compares them: `-` and `_` are the same.
//!
//! Everything in `/lib/modules` is untrusted input: index files and modules
//! are read with size limits, decompression is bounded in output and
//! memory, and paths from the index never leave the tree.
//!
//! ```no_run
//! use initrd_tools::modules::ModuleTree;
//! let tree = ModuleTree::for_release("6.1.0-57-amd64")?;
//! for module in tree.resolve(&["virtio_mmio", "virtio:d00000003v00001AF4"])? {
//!     let bytes = module.read()?;
//!     println!("{} {} bytes", module.file_name(), bytes.len());
//! }
//! # Ok::<(), initrd_tools::modules::ModulesError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::kernel_info::is_valid_release;

mod file;
mod glob;

pub use file::{Compression, ModuleFile, MAX_MODULE_BYTES};
use glob::{glob_match, normalize_alias, normalize_name};

/// Errors finding, resolving or reading kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A release that cannot name a directory (`/`, `..`, ...).
    #[error("{0:?} is not a kernel release: expected something like 6.1.0-57-amd64")]
    InvalidRelease(String),
    /// The kernel's module directory does not exist.
    #[error(
        "no modules for this kernel: {} does not exist (install the modules of kernel {release}, \
         or boot a kernel with its virtio drivers built in)",
        dir.display()
    )]
    NoModulesDir {
        /// The directory looked for.
        dir: PathBuf,
        /// The release it was derived from, or the directory's name.
        release: String,
    },
    /// An index file or module could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `modules.dep` is missing from the module directory.
    #[error("{} is missing: run `depmod {release}` as root to create it", path.display())]
    IndexMissing {
        /// The file looked for.
        path: PathBuf,
        /// The directory's release.
        release: String,
    },
    /// An index line that names a file outside the module directory.
    #[error("{}: entry {entry:?} points outside {}: rebuild the index with depmod", index.display(), dir.display())]
    PathOutsideTree {
        /// The index file.
        index: PathBuf,
        /// The offending entry.
        entry: String,
        /// The module directory.
        dir: PathBuf,
    },
    /// A file larger than the limit for its kind.
    #[error("{} is {size} bytes, more than the {max} accepted for a kernel module or index", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or the decompressed size reached).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A wanted name is neither a module, an alias, nor built in.
    #[error(
        "no module or alias {name} in {} (modules.dep, modules.alias, modules.builtin): \
         this kernel lacks the driver",
        dir.display()
    )]
    NotFound {
        /// The name or alias asked for.
        name: String,
        /// The module directory.
        dir: PathBuf,
    },
    /// Modules that depend on each other in a circle (or a chain longer
    /// than any real one).
    #[error(
        "modules.dep in {} has a dependency cycle or an endless chain: {chain}: rebuild it \
         with depmod",
        dir.display()
    )]
    Cycle {
        /// The modules in the cycle, `a -> b -> a`.
        chain: String,
        /// The module directory.
        dir: PathBuf,
    },
    /// A dependency that `modules.dep` names but has no line for.
    #[error(
        "modules.dep in {} names {name} as a dependency of {needed_by} but has no entry for it: \
         rebuild it with depmod",
        dir.display()
    )]
    DanglingDependency {
        /// The missing module.
        name: String,
        /// The module that needs it.
        needed_by: String,
        /// The module directory.
        dir: PathBuf,
    },
    /// A module that `modules.dep` lists but whose file is gone.
    #[error(
        "module {name} is listed in modules.dep but {} is missing: reinstall the kernel's \
         modules or run depmod",
        path.display()
    )]
    ModuleFileMissing {
        /// The module.
        name: String,
        /// The file modules.dep names.
        path: PathBuf,
    },
    /// A compressed module that does not decompress.
    #[error("{} is corrupt: {detail} (reinstall the kernel's modules)", path.display())]
    Corrupt {
        /// The module file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A module built for another kernel.
    #[error(
        "{} was built for kernel {found}, not {expected}: the module directory does not \
         match the kernel",
        path.display()
    )]
    VersionMismatch {
        /// The module file.
        path: PathBuf,
        /// The release in its `vermagic`.
        found: String,
        /// The kernel's release.
        expected: String,
    },
}

/// Largest index file read (Debian's `modules.alias` is 1.3 MB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The index files [`ModuleTree::open`] reads from a module directory
/// (`modules.dep` must exist; the others may not), for a cache of what it
/// found to tell when it is stale.
pub const INDEX_FILES: [&str; 5] = [
    "modules.dep",
    "modules.alias",
    "modules.softdep",
    "modules.builtin",
    "modules.builtin.modinfo",
];
/// Longest dependency chain followed (real chains are under 10).
const MAX_DEPTH: usize = 256;

/// What a wanted name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Loadable modules (an alias may match several), by name.
    Modules(Vec<String>),
    /// Built into the kernel: nothing to load.
    Builtin,
    /// Unknown to this kernel.
    NotFound,
}

/// `modules.alias`, normalized, kept as one string with the byte ranges of
/// each line's glob and module (26,000 lines on Debian: one allocation, not
/// two per line).
#[derive(Debug, Clone, Default)]
struct AliasIndex {
    text: String,
    /// (glob start, glob end, module start, module end) in file order.
    entries: Vec<(usize, usize, usize, usize)>,
}

impl AliasIndex {
    fn parse(text: &str) -> AliasIndex {
        let text = normalize_alias(text);
        let base = text.as_ptr() as usize;
        let range = |word: &str| {
            let start = word.as_ptr() as usize - base;
            (start, start + word.len())
        };
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(glob), Some(module)) => {
                        let (g0, g1) = range(glob);
                        let (m0, m1) = range(module);
                        Some((g0, g1, m0, m1))
                    }
                    _ => None,
                }
            })
            .collect();
        AliasIndex { text, entries }
    }

    /// (glob, module) pairs in file order.
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|&(g0, g1, m0, m1)| (&self.text[g0..g1], &self.text[m0..m1]))
    }
}

#[derive(Debug, Clone)]
struct DepEntry {
    path: PathBuf,
    compression: Compression,
    deps: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct SoftDeps {
    pre: Vec<String>,
    post: Vec<String>,
}

/// A kernel's module directory (`/lib/modules/<release>`), its indexes read.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    dir: PathBuf,
    release: Option<String>,
    deps: HashMap<String, DepEntry>,
    aliases: AliasIndex,
    softdeps: HashMap<String, SoftDeps>,
    builtin: HashSet<String>,
    /// (normalized glob) of built-in modules.
    builtin_aliases: Vec<String>,
}

/// The module files of `wanted` (names or aliases) and everything they need,
/// in load order, from the module directory `modules_dir`.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<ModuleFile>, ModulesError> {
    ModuleTree::open(modules_dir)?.resolve(wanted)
}

impl ModuleTree {
    /// The tree of kernel `release`: `/lib/modules/<release>`. Modules read
    /// from it must carry that release in their `vermagic`.
    pub fn for_release(release: &str) -> Result<ModuleTree, ModulesError> {
        Self::for_release_under(Path::new("/lib/modules"), release)
    }

    /// [`ModuleTree::for_release`] with another parent than `/lib/modules`.
    pub fn for_release_under(parent: &Path, release: &str) -> Result<ModuleTree, ModulesError> {
        if !is_valid_release(release) {
            return Err(ModulesError::InvalidRelease(release.to_string()));
        }
        let mut tree = Self::open(&parent.join(release))?;
        tree.release = Some(release.to_string());
        Ok(tree)
    }

    /// Reads the indexes of the module directory `dir`, whatever its name;
    /// module versions are not checked.
    pub fn open(dir: &Path) -> Result<ModuleTree, ModulesError> {
        let dir_release = || {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        if !dir.is_dir() {
            return Err(ModulesError::NoModulesDir {
                dir: dir.to_path_buf(),
                release: dir_release(),
            });
        }
        let dep_path = dir.join("modules.dep");
        let Some(dep_text) = read_index(&dep_path)? else {
            return Err(ModulesError::IndexMissing {
                path: dep_path,
                release: dir_release(),
            });
        };
        let mut tree = ModuleTree {
            dir: dir.to_path_buf(),
            release: None,
            deps: HashMap::new(),
            aliases: AliasIndex::default(),
            softdeps: HashMap::new(),
            builtin: HashSet::new(),
            builtin_aliases: Vec::new(),
        };
        tree.parse_dep(&dep_path, &dep_text)?;
        if let Some(text) = read_index(&dir.join("modules.alias"))? {
            tree.aliases = AliasIndex::parse(&text);
        }
        if let Some(text) = read_index(&dir.join("modules.softdep"))? {
            for line in text.lines() {
                tree.parse_softdep(line);
            }
        }
        if let Some(text) = read_index(&dir.join("modules.builtin"))? {
            for line in text.lines() {
                let file = line.trim().rsplit('/').next().unwrap_or_default();
                if let Some((_, stem)) = Compression::of(file) {
                    tree.builtin.insert(normalize_name(stem));
                }
            }
        }
        if let Some(text) = read_index(&dir.join("modules.builtin.modinfo"))? {
            for entry in text.split('\0') {
                let Some((module, rest)) = entry.split_once('.') else {
                    continue;
                };
                tree.builtin.insert(normalize_name(module));
                if let Some(alias) = rest.strip_prefix("alias=") {
                    tree.builtin_aliases.push(normalize_alias(alias));
                }
            }
        }
        Ok(tree)
    }

    fn parse_dep(&mut self, index: &Path, text: &str) -> Result<(), ModulesError> {
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let (name, path, compression) = self.module_path(index, module.trim())?;
            // A dependency needs only its name: it has a line of its own,
            // whose path is checked there.
            let dep_names = deps
                .split_whitespace()
                .map(|dep| {
                    let file = dep.rsplit('/').next().unwrap_or_default();
                    Compression::of(file)
                        .map(|(_, stem)| normalize_name(stem))
                        .ok_or_else(|| ModulesError::PathOutsideTree {
                            index: index.to_path_buf(),
                            entry: dep.to_string(),
                            dir: self.dir.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.deps.insert(
                name,
                DepEntry {
                    path,
                    compression,
                    deps: dep_names,
                },
            );
        }
        Ok(())
    }

    /// (name, absolute path, compression) of an index entry, which must stay
    /// inside the tree.
    fn module_path(
        &self,
        index: &Path,
        entry: &str,
    ) -> Result<(String, PathBuf, Compression), ModulesError> {
        let outside = || ModulesError::PathOutsideTree {
            index: index.to_path_buf(),
            entry: entry.to_string(),
            dir: self.dir.clone(),
        };
        let rel = Path::new(entry);
        let rel = if rel.is_absolute() {
            // Old depmod versions wrote absolute paths.
            rel.strip_prefix(&self.dir).map_err(|_| outside())?
        } else {
            rel
        };
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(outside());
        }
        let file = rel
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        let (compression, stem) = Compression::of(&file).ok_or_else(outside)?;
        Ok((normalize_name(stem), self.dir.join(rel), compression))
    }

    fn parse_softdep(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            return;
        }
        let Some(module) = words.next() else {
            return;
        };
        let entry = self.softdeps.entry(normalize_name(module)).or_default();
        let mut list: Option<&mut Vec<String>> = None;
        for word in words {
            match word {
                "pre:" => list = Some(&mut entry.pre),
                "post:" => list = Some(&mut entry.post),
                name => {
                    if let Some(list) = list.as_deref_mut() {
                        list.push(name.to_string());
                    }
                }
            }
        }
    }

    /// The module directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `name` (a module name or an alias such as `fs-9p` or
    /// `virtio:d00000003v00001AF4`) stands for, in modprobe's order: a
    /// module of `modules.dep`, a built-in module, the modules whose
    /// `modules.alias` globs match, a built-in module's alias.
    pub fn lookup(&self, name: &str) -> Lookup {
        let module = normalize_name(name);
        if self.deps.contains_key(&module) {
            return Lookup::Modules(vec![module]);
        }
        if self.builtin.contains(&module) {
            return Lookup::Builtin;
        }
        let alias = normalize_alias(name);
        let mut found: Vec<String> = Vec::new();
        let mut builtin = false;
        for (glob, module) in self.aliases.iter() {
            if glob_match(glob.as_bytes(), alias.as_bytes()) && !found.iter().any(|f| f == module) {
                if self.deps.contains_key(module) {
                    found.push(module.to_string());
                } else {
                    builtin |= self.builtin.contains(module);
                }
            }
        }
        if !found.is_empty() {
            return Lookup::Modules(found);
        }
        if builtin {
            return Lookup::Builtin;
        }
        if self
            .builtin_aliases
            .iter()
            .any(|glob| glob_match(glob.as_bytes(), alias.as_bytes()))
        {
            return Lookup::Builtin;
        }
        Lookup::NotFound
    }

    /// The files of `wanted` (module names or aliases) and of every module
    /// they need, in load order: each module after its dependencies (and
    /// its `pre:` soft dependencies), each once. Built-in names add nothing;
    /// an unknown name is an error. Files are checked to exist, not read.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<ModuleFile>, ModulesError> {
        let mut order = Vec::new();
        let mut state: HashMap<String, bool> = HashMap::new(); // false: in progress
        let mut stack = Vec::new();
        for name in wanted {
            match self.lookup(name) {
                Lookup::Builtin => {}
                Lookup::NotFound => {
                    return Err(ModulesError::NotFound {
                        name: name.to_string(),
                        dir: self.dir.clone(),
                    })
                }
                Lookup::Modules(modules) => {
                    for module in modules {
                        self.visit(&module, &mut state, &mut stack, &mut order)?;
                    }
                }
            }
        }
        order
            .into_iter()
            .filter_map(|name| self.deps.get(&name).map(|entry| (name, entry)))
            .map(|(name, entry)| {
                if !entry.path.is_file() {
                    return Err(ModulesError::ModuleFileMissing {
                        name,
                        path: entry.path.clone(),
                    });
                }
                Ok(ModuleFile {
                    name,
                    path: entry.path.clone(),
                    compression: entry.compression,
                    release: self.release.clone(),
                })
            })
            .collect()
    }

    /// Soft dependencies that name loadable modules (unknown or built-in
    /// ones are skipped, as modprobe does not fail on them; so are those
    /// already being loaded, which cannot come first).
    fn soft(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .flat_map(|n| match self.lookup(n) {
                Lookup::Modules(m) => m,
                _ => Vec::new(),
            })
            .collect()
    }

    fn visit(
        &self,
        module: &str,
        state: &mut HashMap<String, bool>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        match state.get(module) {
            Some(true) => return Ok(()),
            Some(false) => {
                let from = stack.iter().position(|m| m == module).unwrap_or(0);
                let mut chain = stack[from..].to_vec();
                chain.push(module.to_string());
                return Err(ModulesError::Cycle {
                    chain: chain.join(" -> "),
                    dir: self.dir.clone(),
                });
            }
            None => {}
        }
        if stack.len() >= MAX_DEPTH {
            return Err(ModulesError::Cycle {
                chain: format!("{} ... (deeper than {MAX_DEPTH})", stack.join(" -> ")),
                dir: self.dir.clone(),
            });
        }
        // Only names of modules.dep reach here (from lookup, or through the
        // dependency check below).
        let Some(entry) = self.deps.get(module) else {
            return Err(ModulesError::NotFound {
                name: module.to_string(),
                dir: self.dir.clone(),
            });
        };
        if let Some(dep) = entry.deps.iter().find(|d| !self.deps.contains_key(*d)) {
            return Err(ModulesError::DanglingDependency {
                name: dep.clone(),
                needed_by: module.to_string(),
                dir: self.dir.clone(),
            });
        }
        state.insert(module.to_string(), false);
        stack.push(module.to_string());
        let soft = self.softdeps.get(module).cloned().unwrap_or_default();
        for pre in self.soft(&soft.pre) {
            if !state.contains_key(&pre) {
                self.visit(&pre, state, stack, order)?;
            }
        }
        // depmod lists a module's dependencies so that loading them from
        // the last to the first works; visiting each one's own dependencies
        // first makes the order right whatever the list's order.
        for dep in entry.deps.iter().rev() {
            self.visit(dep, state, stack, order)?;
        }
        stack.pop();
        state.insert(module.to_string(), true);
        order.push(module.to_string());
        for post in self.soft(&soft.post) {
            if !state.contains_key(&post) {
                self.visit(&post, state, stack, order)?;
            }
        }
        Ok(())
    }
}

/// An index file's text, `None` when it does not exist.
fn read_index(path: &Path) -> Result<Option<String>, ModulesError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ModulesError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let read_err = |source| ModulesError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_INDEX_BYTES {
        return Err(ModulesError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_INDEX_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_INDEX_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests;
