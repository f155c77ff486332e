//! Assembling a rootfs directory from ELF binaries: each binary, its ELF
//! interpreter and every library it needs (transitively) are copied into the
//! directory at the path they have on the host.
//!
//! Libraries are found the way glibc's dynamic loader finds them, without
//! running anything: `DT_RPATH` of the object and of the objects that loaded
//! it (when the object has no `DT_RUNPATH`), then `DT_RUNPATH`, then
//! `/etc/ld.so.cache`, then the standard directories; `$ORIGIN`, `$LIB` and
//! `$PLATFORM` are expanded. `LD_LIBRARY_PATH` is ignored: the host's
//! environment must not change what goes into the guest. A candidate is
//! taken only when its ELF class and machine match the object's. Entries of
//! `ld.so.cache` for `glibc-hwcaps` subdirectories are skipped, so the
//! baseline build of a library is copied.
//!
//! Everything is resolved before anything is written: a missing library
//! leaves the directory untouched. Directories inside the rootfs are
//! followed the way `chroot` would see them (an absolute symlink points
//! inside the rootfs), so nothing is ever written outside it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use goblin::elf::header::{EI_CLASS, EI_DATA, ELFMAG, SELFMAG};
use goblin::elf::Elf;

/// Errors of assembling a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A binary, library or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A `--bin` (or a library it needs) is not an ELF file.
    #[error("{} is not an ELF file ({reason}): give executables built for Linux", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// An ELF file whose dependencies cannot be read: a `DT_NEEDED` name
    /// or the `PT_INTERP` path lies outside the file or its string table.
    #[error(
        "{} is a damaged ELF file ({reason}): the libraries it needs cannot be known; rebuild it or give another binary",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A needed library was found nowhere.
    #[error(
        "library {library} needed by {} was not found (searched its RPATH/RUNPATH, /etc/ld.so.cache and the standard directories): install it on the host",
        needed_by.display()
    )]
    LibraryNotFound {
        /// The `DT_NEEDED` name.
        library: String,
        /// The binary or library that needs it.
        needed_by: PathBuf,
    },
    /// The ELF interpreter named by a binary does not exist.
    #[error("interpreter {} of {} was not found: install it on the host", interpreter.display(), binary.display())]
    InterpreterNotFound {
        /// The `PT_INTERP` path.
        interpreter: PathBuf,
        /// The binary.
        binary: PathBuf,
    },
    /// The rootfs exists but is not a directory.
    #[error("{} is not a directory: give the rootfs directory", .0.display())]
    NotADirectory(PathBuf),
    /// Something inside the rootfs could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// What could not be written.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What [`assemble`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsReport {
    /// Host paths of the files copied (binaries, interpreters, libraries),
    /// in the order they were copied; each now exists at the same path
    /// inside the rootfs.
    pub copied: Vec<PathBuf>,
}

/// Copies `bins`, their interpreters and the libraries they need into `dir`
/// (created when missing), each at its host path. Relative `bins` are
/// taken from the current directory and copied at their absolute path.
/// With `init`, `/init` in `dir` becomes a symlink to that binary (which is
/// copied too).
pub fn assemble(
    dir: &Path,
    bins: &[PathBuf],
    init: Option<&Path>,
) -> Result<RootfsReport, RootfsError> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(RootfsError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RootfsError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let absolute = |p: &Path| {
        std::path::absolute(p).map_err(|source| RootfsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut roots = Vec::new();
    for bin in bins {
        roots.push(absolute(bin)?);
    }
    // `--init` names a binary on the host (one of `bins`, or one already in
    // `dir`), or a guest path that exists only inside `dir`.
    let guest_only_init = init
        .filter(|p| p.is_absolute() && !p.exists())
        .and_then(|p| {
            let relative = p.strip_prefix("/").ok()?;
            dir.join(relative).exists().then(|| p.to_path_buf())
        });
    let init = match &guest_only_init {
        Some(_) => None,
        None => init.map(absolute).transpose()?,
    };
    if let Some(init) = &init {
        if !roots.contains(init) {
            roots.push(init.clone());
        }
    }

    let cache = LdCache::load(Path::new("/etc/ld.so.cache"));
    let files = resolve(&roots, &cache)?;

    fs::create_dir_all(dir).map_err(|source| RootfsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let root = fs::canonicalize(dir).map_err(|source| RootfsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut copied = Vec::with_capacity(files.len());
    for file in files {
        // A binary already inside the rootfs (put there by the user) stays
        // where it is: only what it needs is copied in.
        if guest_path(&root, &file).is_none() {
            copy_into(&root, &file)?;
            copied.push(file);
        }
    }
    if let Some(init) = init {
        let target = guest_path(&root, &init).unwrap_or(init);
        link_init(&root, &target)?;
    } else if let Some(target) = guest_only_init {
        link_init(&root, &target)?;
    }
    Ok(RootfsReport { copied })
}

/// An ELF object's identity for matching libraries: class, data and machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfKind {
    class: u8,
    data: u8,
    machine: u16,
}

impl ElfKind {
    fn is_64(self) -> bool {
        self.class == goblin::elf::header::ELFCLASS64
    }

    /// Debian's multiarch directory name for this kind, when known.
    fn multiarch(self) -> Option<&'static str> {
        use goblin::elf::header::{EM_386, EM_AARCH64, EM_ARM, EM_RISCV, EM_X86_64};
        match (self.machine, self.is_64()) {
            (EM_X86_64, true) => Some("x86_64-linux-gnu"),
            (EM_386, false) => Some("i386-linux-gnu"),
            (EM_AARCH64, true) => Some("aarch64-linux-gnu"),
            (EM_ARM, false) => Some("arm-linux-gnueabihf"),
            (EM_RISCV, true) => Some("riscv64-linux-gnu"),
            _ => None,
        }
    }

    fn platform(self) -> Option<&'static str> {
        use goblin::elf::header::{EM_386, EM_AARCH64, EM_X86_64};
        match self.machine {
            EM_X86_64 => Some("x86_64"),
            EM_386 => Some("i686"),
            EM_AARCH64 => Some("aarch64"),
            _ => None,
        }
    }

    /// The loader's standard directories, most specific first.
    fn default_dirs(self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(tuple) = self.multiarch() {
            dirs.push(Path::new("/lib").join(tuple));
            dirs.push(Path::new("/usr/lib").join(tuple));
        }
        let bits = if self.is_64() { "64" } else { "32" };
        dirs.push(PathBuf::from(format!("/lib{bits}")));
        dirs.push(PathBuf::from(format!("/usr/lib{bits}")));
        dirs.push(PathBuf::from("/lib"));
        dirs.push(PathBuf::from("/usr/lib"));
        dirs
    }
}

fn elf_kind(bytes: &[u8]) -> Option<ElfKind> {
    if bytes.len() < 20 || &bytes[..SELFMAG] != ELFMAG {
        return None;
    }
    let data = bytes[EI_DATA];
    let machine = match data {
        goblin::elf::header::ELFDATA2LSB => u16::from_le_bytes([bytes[18], bytes[19]]),
        goblin::elf::header::ELFDATA2MSB => u16::from_be_bytes([bytes[18], bytes[19]]),
        _ => return None,
    };
    Some(ElfKind {
        class: bytes[EI_CLASS],
        data,
        machine,
    })
}

/// The kind of the ELF file at `path`, or None when it is not a readable ELF.
fn file_kind(path: &Path) -> Option<ElfKind> {
    let mut head = [0u8; 20];
    let mut file = File::open(path).ok()?;
    file.read_exact(&mut head).ok()?;
    elf_kind(&head)
}

/// `/etc/ld.so.cache`: library names to paths, in the cache's order.
#[derive(Debug, Default)]
struct LdCache {
    entries: HashMap<String, Vec<PathBuf>>,
}

impl LdCache {
    /// Reads the cache; a missing or unreadable cache is empty, as for the
    /// loader.
    fn load(path: &Path) -> LdCache {
        match fs::read(path) {
            Ok(bytes) => LdCache::parse(&bytes),
            Err(e) => {
                log::debug!("no loader cache {}: {e}", path.display());
                LdCache::default()
            }
        }
    }

    /// Parses the "glibc-ld.so.cache1.1" format, alone or after the old
    /// "ld.so-1.7.0" table.
    fn parse(bytes: &[u8]) -> LdCache {
        const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
        const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
        const HWCAP_EXTENSION: u64 = 1 << 62;
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let mut cache = LdCache::default();
        let base = if bytes.starts_with(NEW_MAGIC) {
            0
        } else if bytes.starts_with(OLD_MAGIC) {
            let Some(old_count) = u32_at(12) else {
                return cache;
            };
            (16 + old_count as usize * 12).next_multiple_of(8)
        } else {
            return cache;
        };
        if !bytes.get(base..).is_some_and(|b| b.starts_with(NEW_MAGIC)) {
            return cache;
        }
        let Some(count) = u32_at(base + 20) else {
            return cache;
        };
        let string_at = |offset: u32| {
            let start = base + offset as usize;
            let rest = bytes.get(start..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            std::str::from_utf8(&rest[..end]).ok()
        };
        for i in 0..count as usize {
            let at = base + 48 + i * 24;
            let (Some(key), Some(value), Some(hwcap)) =
                (u32_at(at + 4), u32_at(at + 8), u64_at(at + 16))
            else {
                break;
            };
            if hwcap & HWCAP_EXTENSION != 0 {
                continue;
            }
            if let (Some(key), Some(value)) = (string_at(key), string_at(value)) {
                cache
                    .entries
                    .entry(key.to_string())
                    .or_default()
                    .push(PathBuf::from(value));
            }
        }
        cache
    }
}

/// What one ELF object asks of the dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfNeeds {
    kind: ElfKind,
    /// The `PT_INTERP` path (up to its first NUL), for a dynamic executable.
    pub interpreter: Option<PathBuf>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// The `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// The `DT_RPATH` entries, unexpanded.
    pub rpath: Vec<String>,
    /// The `DT_RUNPATH` entries, unexpanded.
    pub runpath: Vec<String>,
}

/// Reads what the ELF object `bytes` (the file `path`, for messages) needs:
/// its interpreter, soname, needed libraries and search paths. A `DT_NEEDED`
/// entry or interpreter that cannot be read is an error, never skipped: a
/// rootfs without that library would fail only when the guest runs.
pub fn read_elf_needs(path: &Path, bytes: &[u8]) -> Result<ElfNeeds, RootfsError> {
    let not_elf = |reason: String| RootfsError::NotElf {
        path: path.to_path_buf(),
        reason,
    };
    let damaged = |reason: String| RootfsError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let kind = elf_kind(bytes).ok_or_else(|| not_elf("no ELF magic number".into()))?;
    let elf = Elf::parse(bytes).map_err(|e| not_elf(e.to_string()))?;

    let mut interpreter = None;
    for ph in &elf.program_headers {
        if ph.p_type != goblin::elf::program_header::PT_INTERP {
            continue;
        }
        let segment = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| damaged("its PT_INTERP segment lies outside the file".into()))?;
        // The path ends at the first NUL, as the kernel reads it.
        let path_bytes = segment.split(|&b| b == 0).next().unwrap_or_default();
        if path_bytes.is_empty() {
            return Err(damaged("its PT_INTERP path is empty".into()));
        }
        interpreter = Some(PathBuf::from(std::ffi::OsStr::from_bytes(path_bytes)));
    }

    let mut needed = Vec::new();
    let entries = elf.dynamic.as_ref().map_or(&[][..], |d| &d.dyns[..]);
    for entry in entries {
        if entry.d_tag != goblin::elf::dynamic::DT_NEEDED {
            continue;
        }
        let name = usize::try_from(entry.d_val)
            .ok()
            .and_then(|offset| elf.dynstrtab.get_at(offset))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                damaged(format!(
                    "a DT_NEEDED entry names offset {:#x}, which is not a string of its dynamic \
                     string table",
                    entry.d_val
                ))
            })?;
        needed.push(name.to_string());
    }
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    Ok(ElfNeeds {
        kind,
        interpreter,
        soname: elf.soname.map(str::to_string),
        needed,
        rpath: strings(&elf.rpaths),
        runpath: strings(&elf.runpaths),
    })
}

/// An object to load: its path, who needs it, and the RPATH directories
/// inherited from the objects that loaded it.
struct Pending {
    path: PathBuf,
    needed_by: Option<PathBuf>,
    inherited_rpath: Rc<Vec<PathBuf>>,
}

/// Finds every file to copy: the roots, their interpreters and all the
/// libraries they need, breadth first as the loader loads them.
fn resolve(roots: &[PathBuf], cache: &LdCache) -> Result<Vec<PathBuf>, RootfsError> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    // Like the loader, a name is resolved once and then reused.
    let mut loaded: HashMap<String, PathBuf> = HashMap::new();
    let mut queue: VecDeque<Pending> = roots
        .iter()
        .map(|root| Pending {
            path: root.clone(),
            needed_by: None,
            inherited_rpath: Rc::new(Vec::new()),
        })
        .collect();
    while let Some(pending) = queue.pop_front() {
        if !seen.insert(pending.path.clone()) {
            continue;
        }
        let bytes = fs::read(&pending.path).map_err(|source| RootfsError::Read {
            path: pending.path.clone(),
            source,
        })?;
        let needs = read_elf_needs(&pending.path, &bytes)?;
        let kind = needs.kind;
        files.push(pending.path.clone());

        if let Some(interpreter) = needs.interpreter {
            if !interpreter.is_file() {
                return Err(RootfsError::InterpreterNotFound {
                    interpreter,
                    binary: pending.path.clone(),
                });
            }
            // The loader is already loaded when libc names it as needed:
            // it matches by name, so it is not looked up again.
            if let Some(name) = interpreter.file_name().and_then(|n| n.to_str()) {
                loaded
                    .entry(name.to_string())
                    .or_insert(interpreter.clone());
            }
            if seen.insert(interpreter.clone()) {
                files.push(interpreter);
            }
        }
        if let Some(soname) = needs.soname {
            loaded.entry(soname).or_insert(pending.path.clone());
        }

        // $ORIGIN of the main program is its real directory; of a library,
        // the directory it was found in.
        let origin = if pending.needed_by.is_none() {
            fs::canonicalize(&pending.path).unwrap_or_else(|_| pending.path.clone())
        } else {
            pending.path.clone()
        };
        let origin = origin.parent().unwrap_or(Path::new("/")).to_path_buf();
        let expand = |list: &[String]| -> Vec<PathBuf> {
            list.iter()
                .flat_map(|l| l.split(':'))
                .filter(|d| !d.is_empty())
                .filter_map(|d| expand_dst(d, &origin, kind))
                .collect()
        };
        let runpath = expand(&needs.runpath);
        let mut rpath = Vec::new();
        if needs.runpath.is_empty() {
            rpath = expand(&needs.rpath);
            rpath.extend(pending.inherited_rpath.iter().cloned());
        }
        let child_rpath = if needs.runpath.is_empty() {
            Rc::new(rpath.clone())
        } else {
            Rc::clone(&pending.inherited_rpath)
        };

        for library in &needs.needed {
            if let Some(found) = loaded.get(library) {
                queue.push_back(Pending {
                    path: found.clone(),
                    needed_by: Some(pending.path.clone()),
                    inherited_rpath: Rc::clone(&child_rpath),
                });
                continue;
            }
            let found = find_library(library, kind, &rpath, &runpath, cache).ok_or_else(|| {
                RootfsError::LibraryNotFound {
                    library: library.to_string(),
                    needed_by: pending.path.clone(),
                }
            })?;
            loaded.insert(library.to_string(), found.clone());
            queue.push_back(Pending {
                path: found,
                needed_by: Some(pending.path.clone()),
                inherited_rpath: Rc::clone(&child_rpath),
            });
        }
    }
    Ok(files)
}

/// Expands `$ORIGIN`, `$LIB` and `$PLATFORM` (also in `${…}` form) in one
/// RPATH/RUNPATH entry; None when a token cannot be expanded (the loader
/// drops such entries too).
fn expand_dst(dir: &str, origin: &Path, kind: ElfKind) -> Option<PathBuf> {
    let lib = match kind.multiarch() {
        Some(tuple) => format!("lib/{tuple}"),
        None if kind.is_64() => "lib64".to_string(),
        None => "lib".to_string(),
    };
    let origin = origin.to_str()?;
    let mut out = String::new();
    let mut rest = dir;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}')?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        match name {
            "ORIGIN" => out.push_str(origin),
            "LIB" => out.push_str(&lib),
            "PLATFORM" => out.push_str(kind.platform()?),
            _ => return None,
        }
        rest = after;
    }
    out.push_str(rest);
    Some(PathBuf::from(out))
}

fn find_library(
    name: &str,
    kind: ElfKind,
    rpath: &[PathBuf],
    runpath: &[PathBuf],
    cache: &LdCache,
) -> Option<PathBuf> {
    let matches = |path: &Path| file_kind(path) == Some(kind);
    if name.contains('/') {
        let path = PathBuf::from(name);
        return matches(&path).then_some(path);
    }
    let in_dirs = |dirs: &[PathBuf]| dirs.iter().map(|d| d.join(name)).find(|p| matches(p));
    in_dirs(rpath)
        .or_else(|| in_dirs(runpath))
        .or_else(|| {
            cache
                .entries
                .get(name)
                .and_then(|paths| paths.iter().find(|p| matches(p)).cloned())
        })
        .or_else(|| in_dirs(&kind.default_dirs()))
}

/// The directory inside `root` (canonical) where the guest sees the parent
/// of the absolute `guest_path`, created when missing. Symlinks are followed
/// as inside a chroot: absolute targets and `..` stay within `root`.
fn parent_in_root(root: &Path, guest_path: &Path) -> Result<PathBuf, RootfsError> {
    let parent = guest_path.parent().unwrap_or(Path::new("/"));
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, parent);
    let mut host = root.to_path_buf();
    let mut links = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            if host != root {
                host.pop();
            }
            continue;
        }
        let next = host.join(&component);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.is_dir() => host = next,
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                let target = fs::read_link(&next).map_err(|source| RootfsError::Read {
                    path: next.clone(),
                    source,
                })?;
                if links > 40 {
                    return Err(RootfsError::Write {
                        path: next,
                        source: io::Error::from_raw_os_error(libc::ELOOP),
                    });
                }
                if target.is_absolute() {
                    host = root.to_path_buf();
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => {
                return Err(RootfsError::Write {
                    path: next,
                    source: io::Error::from_raw_os_error(libc::ENOTDIR),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&next).map_err(|source| RootfsError::Write {
                    path: next.clone(),
                    source,
                })?;
                fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).map_err(
                    |source| RootfsError::Write {
                        path: next.clone(),
                        source,
                    },
                )?;
                host = next;
            }
            Err(source) => return Err(RootfsError::Read { path: next, source }),
        }
    }
    Ok(host)
}

/// Puts the components of `path` (`.`, `/` dropped) at the front of
/// `pending`, keeping their order.
fn push_components(pending: &mut VecDeque<OsString>, path: &Path) {
    let components: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    for component in components.into_iter().rev() {
        pending.push_front(component);
    }
}

/// Copies the host file `path` (following symlinks) to the same path inside
/// `root`, through a temporary file and a rename.
fn copy_into(root: &Path, path: &Path) -> Result<(), RootfsError> {
    let parent = parent_in_root(root, path)?;
    let name = path.file_name().ok_or_else(|| RootfsError::Read {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dest = parent.join(name);
    let write_error = |source| RootfsError::Write {
        path: dest.clone(),
        source,
    };
    let mut source = File::open(path).map_err(|source| RootfsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = source
        .metadata()
        .map_err(|source| RootfsError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    let mut temp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempfile_in(&parent)
        .map_err(write_error)?;
    io::copy(&mut source, temp.as_file_mut()).map_err(write_error)?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(write_error)?;
    temp.persist(&dest).map_err(|e| write_error(e.error))?;
    Ok(())
}

/// The guest path of `path` when it already lies inside `root` (canonical).
fn guest_path(root: &Path, path: &Path) -> Option<PathBuf> {
    let canonical = fs::canonicalize(path).ok()?;
    let inside = canonical.strip_prefix(root).ok()?;
    Some(Path::new("/").join(inside))
}

/// Makes `/init` in `root` a symlink to the guest path `target`.
fn link_init(root: &Path, target: &Path) -> Result<(), RootfsError> {
    let dest = root.join("init");
    let write_error = |source| RootfsError::Write {
        path: dest.clone(),
        source,
    };
    let temp = root.join(format!(".init-{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp).map_err(write_error)?;
    if let Err(e) = fs::rename(&temp, &dest) {
        let _ = fs::remove_file(&temp);
        return Err(write_error(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
