//! Reading newc archives back, the reader beside [`crate::newc`]'s
//! writer: a newc archive (or several concatenated, as the kernel takes
//! them) is indexed first, so a bad archive is a clear error before
//! anything is written, then extracted into a directory the way the kernel
//! unpacks an initramfs. The chroot engine extracts its rootfs with it, in
//! its rootless namespace, from a file ([`Archive::open`]) or from an
//! archive built in memory ([`Archive::from_file`] on a memfd).
//!
//! Only headers and symlink targets are held in memory; file data is
//! copied from the archive by offset during extraction, so a large image
//! does not pass through the caller's memory. What extraction without
//! privilege cannot keep is told by [`Archive::losses`]: owners other than
//! root (in a rootless user namespace only the caller's uid is mapped, to
//! 0), device nodes outside `/dev` (creating them needs privilege; the
//! chroot engine mounts `/dev` from the host) and sockets. FIFOs are
//! created; mtimes are not restored.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::image::compression_format;
use crate::regular_file::{self, Links};

/// Errors of reading and extracting an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive cannot be read, is not a regular file, or is not a
    /// well-formed newc archive (truncated, bad magic).
    #[error("cannot read cpio archive {}: {source}; give an uncompressed newc archive", path.display())]
    Read {
        /// The archive's path (or the name given to [`Archive::from_file`]).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The archive is compressed: only the kernel unpacks those.
    #[error("{} is a {format}-compressed archive: decompress it first (the result must be a newc cpio archive)", path.display())]
    Compressed {
        /// The archive's path (or the name given to [`Archive::from_file`]).
        path: PathBuf,
        /// The compression format.
        format: &'static str,
    },
    /// A member could not be written under the root.
    #[error("extracting /{}: {source}", member.display())]
    Extract {
        /// The member's path, relative to the root.
        member: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Files are copied through a buffer this large.
const COPY_CHUNK: usize = 256 * 1024;

/// One member of a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArchiveEntry {
    /// Relative, normalised path (no `..`, no leading `/`).
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Identity of the inode, to restore hard links.
    inode: (u32, u32, u32),
    nlink: u32,
    /// Where the data starts in the archive file, and its length.
    data_offset: u64,
    size: u64,
    /// A symlink's target (read while indexing: it is small).
    target: Vec<u8>,
}

/// An indexed archive, open for extraction.
#[derive(Debug)]
pub struct Archive {
    file: File,
    entries: Vec<ArchiveEntry>,
}

impl Archive {
    /// Opens and indexes the archive at `path`, which must be a regular
    /// file (a FIFO or a device is refused without blocking on it);
    /// compressed archives are refused (only the kernel unpacks those).
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        let file =
            regular_file::open(path, Links::Follow).map_err(|source| read_error(path, source))?;
        Archive::from_file(file, path)
    }

    /// Indexes the archive in `file`, an open regular file (a memfd
    /// holding an archive built in memory, say), from its start whatever
    /// its offset; `name` stands for it in errors. Compressed archives are
    /// refused, as by [`Archive::open`].
    pub fn from_file(file: File, name: &Path) -> Result<Archive, ArchiveError> {
        let archive_error = |source| read_error(name, source);
        let meta = file.metadata().map_err(archive_error)?;
        if !meta.is_file() {
            let kind = crate::describe_type(meta.file_type());
            return Err(archive_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{kind}, not a regular file"),
            )));
        }
        let mut reader = BufReader::new(file.try_clone().map_err(archive_error)?);
        reader.seek(SeekFrom::Start(0)).map_err(archive_error)?;
        let head = reader.fill_buf().map_err(archive_error)?;
        if let Some(format) = compression_format(head) {
            return Err(ArchiveError::Compressed {
                path: name.to_path_buf(),
                format,
            });
        }
        let entries = index(reader, meta.len()).map_err(archive_error)?;
        Ok(Archive { file, entries })
    }

    /// What extracting without privilege (as the chroot engine does, in a
    /// rootless user namespace with `/dev` mounted from the host) loses
    /// compared with a VM, for `-v`; `None` when nothing is.
    pub fn losses(&self) -> Option<String> {
        let mut other_owners = 0;
        let mut ids = BTreeSet::new();
        let mut devices = 0;
        let mut sockets = 0;
        for entry in &self.entries {
            if entry.uid != 0 || entry.gid != 0 {
                other_owners += 1;
                ids.insert(format!("{}:{}", entry.uid, entry.gid));
            }
            let in_dev = entry.path.starts_with("dev");
            match entry.mode & libc::S_IFMT {
                libc::S_IFCHR | libc::S_IFBLK if !in_dev => devices += 1,
                libc::S_IFSOCK => sockets += 1,
                _ => {}
            }
        }
        let mut lost = Vec::new();
        if other_owners > 0 {
            let ids: Vec<String> = ids.into_iter().take(8).collect();
            lost.push(format!(
                "{other_owners} entries owned by other users than root ({}) are owned by root here, \
                 as only the caller's uid is mapped in the user namespace",
                ids.join(", ")
            ));
        }
        if devices > 0 {
            lost.push(format!(
                "{devices} device nodes outside /dev are skipped (creating them needs privilege)"
            ));
        }
        if sockets > 0 {
            lost.push(format!("{sockets} sockets are skipped"));
        }
        (!lost.is_empty()).then(|| format!("{}; the VM engines keep them all", lost.join("; ")))
    }

    /// Writes the members under `root`, as the kernel unpacks an
    /// initramfs: a later member with the inode of an earlier one is a
    /// hard link to it. Device nodes and sockets are skipped.
    pub fn extract(&self, root: &Path) -> Result<(), ArchiveError> {
        self.extract_owned(root, false)
    }

    /// [`Archive::extract`], and with `owners` each member gets the owner
    /// and group the archive gives it (`lchown`, before its mode is set,
    /// since a change of owner clears set-id bits); an id the caller
    /// cannot give (unmapped in its user namespace: `EINVAL`) leaves the
    /// member the caller's.
    pub fn extract_owned(&self, root: &Path, owners: bool) -> Result<(), ArchiveError> {
        let own = |target: &Path, entry: &ArchiveEntry| -> io::Result<()> {
            if !owners {
                return Ok(());
            }
            match std::os::unix::fs::lchown(target, Some(entry.uid), Some(entry.gid)) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                other => other,
            }
        };
        let mut first_names: HashMap<(u32, u32, u32), PathBuf> = HashMap::new();
        let mut buf = vec![0u8; COPY_CHUNK];
        for entry in &self.entries {
            let target = root.join(&entry.path);
            let error = |source| ArchiveError::Extract {
                member: entry.path.clone(),
                source,
            };
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(error)?;
            }
            clear_the_way(&target, entry.mode).map_err(error)?;
            let permissions = fs::Permissions::from_mode(entry.mode & 0o7777);
            match entry.mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    match fs::create_dir(&target) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(error(e)),
                        _ => {}
                    }
                    own(&target, entry).map_err(error)?;
                    fs::set_permissions(&target, permissions).map_err(error)?;
                }
                libc::S_IFREG => {
                    let linked = entry.nlink > 1 && first_names.contains_key(&entry.inode);
                    if linked {
                        fs::hard_link(&first_names[&entry.inode], &target).map_err(error)?;
                    }
                    if !linked || entry.size > 0 {
                        let mut out = File::create(&target).map_err(error)?;
                        self.copy_data(entry, &mut out, &mut buf).map_err(error)?;
                    }
                    if !linked {
                        own(&target, entry).map_err(error)?;
                        fs::set_permissions(&target, permissions).map_err(error)?;
                        if entry.nlink > 1 {
                            first_names.insert(entry.inode, target);
                        }
                    }
                }
                libc::S_IFLNK => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(&entry.target), &target)
                        .map_err(error)?;
                    own(&target, entry).map_err(error)?;
                }
                libc::S_IFIFO => make_fifo(&target, entry.mode & 0o7777).map_err(error)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The data of the regular file `path` (absolute or relative to the
    /// archive's root), as the kernel would leave it (the last member of
    /// that name wins); `None` when there is none, or when the last is
    /// not a regular file. Refuses a file over `limit` bytes.
    pub fn read_file(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let Some(entry) = self.entries.iter().rev().find(|e| e.path == relative) else {
            return Ok(None);
        };
        if entry.mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(None);
        }
        if entry.size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {limit} bytes", path.display()),
            ));
        }
        let mut data = vec![0u8; entry.size as usize];
        self.file.read_exact_at(&mut data, entry.data_offset)?;
        Ok(Some(data))
    }

    fn copy_data(&self, entry: &ArchiveEntry, out: &mut File, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < entry.size {
            let want = buf.len().min((entry.size - done) as usize);
            let n = self
                .file
                .read_at(&mut buf[..want], entry.data_offset + done)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive changed while it was being extracted",
                ));
            }
            out.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

fn read_error(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// What the kernel's unpacker does before it creates a member
/// (`clean_path` in init/initramfs.c), so that a later archive (guest-init's,
/// over the rootfs) replaces what is there rather than writing through it:
/// a directory member removes a non-directory in its way; any other member
/// removes what is at its path, a directory only when empty (else the
/// member cannot be created, and the error says so). Symlinks are removed,
/// never followed.
fn clear_the_way(target: &Path, mode: u32) -> io::Result<()> {
    let existing = match fs::symlink_metadata(target) {
        Ok(existing) => existing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match (existing.is_dir(), mode & libc::S_IFMT == libc::S_IFDIR) {
        (true, true) => Ok(()),
        (true, false) => fs::remove_dir(target),
        (false, _) => fs::remove_file(target),
    }
}

fn make_fifo(path: &Path, mode: u32) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string the kernel only reads.
    if unsafe { libc::mkfifo(path.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the members of the newc archive `bytes` (or several concatenated)
/// would be extracted, relative to the new root and in order, without
/// writing anything; members that would leave the root are not there. For
/// tests and fuzzing.
pub fn member_paths(bytes: &[u8]) -> io::Result<Vec<PathBuf>> {
    let entries = index(io::Cursor::new(bytes), bytes.len() as u64)?;
    Ok(entries.into_iter().map(|entry| entry.path).collect())
}

/// Indexes the members of `reader` (an archive file of `len` bytes),
/// seeking over file data.
fn index<R: BufRead + Seek>(mut reader: R, len: u64) -> io::Result<Vec<ArchiveEntry>> {
    let mut entries = Vec::new();
    loop {
        // Concatenated archives are separated by zero padding.
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(entries);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros < buf.len() {
                reader.consume(zeros);
                break;
            }
            let all = buf.len();
            reader.consume(all);
        }
        let mut member = cpio::NewcReader::new(reader)?;
        if member.entry().is_trailer() {
            reader = member.finish()?;
            continue;
        }
        let entry = member.entry();
        let path = normalise_member_path(entry.name());
        let mode = entry.mode();
        let (uid, gid, nlink) = (entry.uid(), entry.gid(), entry.nlink());
        let inode = (entry.ino(), entry.dev_major(), entry.dev_minor());
        let size = u64::from(entry.file_size());
        let name = entry.name().to_string();
        let data_offset = member.offset()?;
        if data_offset + size > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive is truncated in {name}"),
            ));
        }
        let mut target = Vec::new();
        if mode & libc::S_IFMT == libc::S_IFLNK {
            member.by_ref().take(size).read_to_end(&mut target)?;
        }
        reader = member.skip()?;
        if let Some(path) = path {
            entries.push(ArchiveEntry {
                path,
                mode,
                uid,
                gid,
                inode,
                nlink,
                data_offset,
                size,
                target,
            });
        }
    }
}

/// The member's path relative to the root, or `None` for the root itself
/// and for names that would leave it.
fn normalise_member_path(name: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!path.as_os_str().is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    struct Member<'a> {
        name: &'a str,
        mode: u32,
        ino: u32,
        nlink: u32,
        uid: u32,
        data: &'a [u8],
    }

    fn member(
        name: &'static str,
        mode: u32,
        ino: u32,
        nlink: u32,
        data: &'static [u8],
    ) -> Member<'static> {
        Member {
            name,
            mode,
            ino,
            nlink,
            uid: 0,
            data,
        }
    }

    fn newc(members: &[Member]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in members {
            let mut w = cpio::NewcBuilder::new(m.name)
                .mode(m.mode)
                .ino(m.ino)
                .nlink(m.nlink)
                .uid(m.uid)
                .write(&mut out, m.data.len() as u32);
            io::Write::write_all(&mut w, m.data).unwrap();
            w.finish().unwrap();
        }
        cpio::newc::trailer(&mut out).unwrap();
        out
    }

    fn archive_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn archives_index_with_normalised_paths_and_concatenation() {
        let mut bytes = newc(&[
            member(".", 0o40755, 1, 2, b""),
            member("./bin", 0o40755, 2, 2, b""),
            member("bin/sh", 0o120777, 3, 1, b"busybox"),
            member("../escape", 0o100644, 4, 1, b"x"),
        ]);
        bytes.extend_from_slice(&[0; 7]);
        bytes.extend(newc(&[member("/init", 0o100755, 5, 1, b"#!/bin/sh\n")]));
        let entries = index(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["bin", "bin/sh", "init"]);
        assert_eq!(entries[1].target, b"busybox");
        assert_eq!(entries[2].mode, 0o100755);
        assert_eq!(entries[2].size, 10);
        let init = entries[2].data_offset as usize;
        assert_eq!(&bytes[init..init + 10], b"#!/bin/sh\n");
    }

    #[test]
    fn truncated_and_compressed_archives_are_errors() {
        let bytes = newc(&[member("init", 0o100755, 5, 1, b"#!/bin/sh\n")]);
        assert!(index(Cursor::new(&bytes[..40]), 40).is_err());
        // The header is complete, the data is not.
        assert!(index(Cursor::new(&bytes[..120]), 120).is_err());
        let text = b"not an archive at all, no";
        assert!(index(Cursor::new(&text[..]), text.len() as u64).is_err());
        let (_dir, gz) = archive_file(&[0x1f, 0x8b, 8, 0, 0, 0]);
        let err = Archive::open(&gz).unwrap_err().to_string();
        assert!(err.contains("gzip-compressed"), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo, 0o600).unwrap();
        let err = Archive::open(&fifo).unwrap_err();
        assert!(matches!(err, ArchiveError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains("a FIFO, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn an_open_file_is_indexed_from_its_start() {
        let bytes = newc(&[member("init", 0o100755, 5, 1, b"#!/bin/sh\n")]);
        let mut file = tempfile::tempfile().unwrap();
        // Left at its end, as after building the archive in it.
        file.write_all(&bytes).unwrap();
        let archive = Archive::from_file(file, Path::new("the init archive")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        archive.extract(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("init")).unwrap(), b"#!/bin/sh\n");
        let gz = tempfile::tempfile().unwrap();
        (&gz).write_all(&[0x1f, 0x8b, 8, 0]).unwrap();
        let err = Archive::from_file(gz, Path::new("the init archive")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the init archive is a gzip-compressed"),
            "{err}"
        );
    }

    #[test]
    fn a_file_is_read_as_the_last_member_of_its_name_leaves_it() {
        let bytes = newc(&[
            member("etc/passwd", 0o100644, 1, 1, b"old\n"),
            member("etc/passwd", 0o100644, 2, 1, b"root:x:0:0::/:/bin/sh\n"),
            member("etc/group", 0o120777, 3, 1, b"/elsewhere"),
            member("big", 0o100644, 4, 1, b"0123456789"),
        ]);
        let (_dir, path) = archive_file(&bytes);
        let archive = Archive::open(&path).unwrap();
        let read = |name: &str| archive.read_file(Path::new(name), 8);
        assert_eq!(
            archive.read_file(Path::new("/etc/passwd"), 100).unwrap(),
            Some(b"root:x:0:0::/:/bin/sh\n".to_vec())
        );
        assert_eq!(read("/etc/group").unwrap(), None);
        assert_eq!(read("/etc/shadow").unwrap(), None);
        assert!(read("big").is_err());
    }

    #[test]
    fn owners_are_restored_only_when_asked() {
        // SAFETY: geteuid only returns the caller's id.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: giving files to other owners needs root");
            return;
        }
        let mut owned = member("f", 0o104755, 1, 1, b"x");
        owned.uid = 1234;
        let bytes = newc(&[owned]);
        let (_dir, path) = archive_file(&bytes);
        let archive = Archive::open(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        let plain = tempfile::tempdir().unwrap();
        archive.extract(plain.path()).unwrap();
        assert_eq!(fs::metadata(plain.path().join("f")).unwrap().uid(), 0);
        let kept = tempfile::tempdir().unwrap();
        archive.extract_owned(kept.path(), true).unwrap();
        let meta = fs::metadata(kept.path().join("f")).unwrap();
        // The owner, and the mode set after it (set-id bits survive).
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (1234, 0o4755));
    }

    #[test]
    fn extraction_restores_files_links_fifos_and_modes() {
        let bytes = newc(&[
            member("bin", 0o40755, 2, 2, b""),
            member("bin/a", 0o100755, 3, 2, b""),
            member("bin/b", 0o100755, 3, 2, b"data"),
            member("bin/sh", 0o120777, 4, 1, b"a"),
            member("dev/console", 0o20600, 5, 1, b""),
            member("run/fifo", 0o10600, 6, 1, b""),
            member("big", 0o100600, 7, 1, &[9; 3 * COPY_CHUNK / 2]),
        ]);
        let (_dir, path) = archive_file(&bytes);
        let archive = Archive::open(&path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        archive.extract(dir.path()).unwrap();
        let a = dir.path().join("bin/a");
        assert_eq!(fs::read(&a).unwrap(), b"data");
        assert_eq!(fs::read(dir.path().join("bin/sh")).unwrap(), b"data");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&a) & 0o7777, 0o755);
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&fs::metadata(&a).unwrap()),
            2
        );
        assert!(!dir.path().join("dev/console").exists());
        let fifo = dir.path().join("run/fifo");
        assert_eq!(mode(&fifo) & libc::S_IFMT, libc::S_IFIFO);
        assert_eq!(
            fs::read(dir.path().join("big")).unwrap(),
            vec![9; 3 * COPY_CHUNK / 2]
        );
    }

    #[test]
    fn members_replace_what_is_in_their_way_as_the_kernel_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir(&outside).unwrap();
        // A dangling symlink where a directory goes, a symlink leading out
        // where a file goes, a read-only file, a directory where a file goes.
        std::os::unix::fs::symlink("/nonexistent", root.join(".microrun")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/link")).unwrap();
        fs::write(root.join("ro"), b"old").unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("full/x")).unwrap();
        let bytes = newc(&[
            member(".microrun", 0o40755, 2, 2, b""),
            member(".microrun/init", 0o100755, 3, 1, b"init"),
            member("etc/link", 0o100644, 4, 1, b"file"),
            member("ro", 0o100644, 5, 1, b"new"),
            member("empty", 0o100644, 6, 1, b"was a directory"),
        ]);
        let (_a, path) = archive_file(&bytes);
        Archive::open(&path).unwrap().extract(&root).unwrap();
        assert!(fs::symlink_metadata(root.join(".microrun"))
            .unwrap()
            .is_dir());
        assert_eq!(fs::read(root.join(".microrun/init")).unwrap(), b"init");
        assert!(fs::symlink_metadata(root.join("etc/link"))
            .unwrap()
            .is_file());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written out"
        );
        assert_eq!(fs::read(root.join("ro")).unwrap(), b"new");
        assert_eq!(fs::read(root.join("empty")).unwrap(), b"was a directory");
        // A directory that is not empty stays, and the member says why.
        let bytes = newc(&[member("full", 0o100644, 7, 1, b"")]);
        let (_b, path) = archive_file(&bytes);
        let error = Archive::open(&path).unwrap().extract(&root).unwrap_err();
        assert!(error.to_string().contains("/full"), "{error}");
        assert!(root.join("full/x").is_dir());
    }

    #[test]
    fn losses_name_other_owners_and_devices_outside_dev() {
        let mut apt = member("var/cache/apt", 0o40755, 2, 2, b"");
        apt.uid = 42;
        let bytes = newc(&[
            member("dev/null", 0o20666, 1, 1, b""),
            apt,
            member("lib/udev/devices/loop0", 0o60660, 3, 1, b""),
        ]);
        let (_dir, path) = archive_file(&bytes);
        let losses = Archive::open(&path).unwrap().losses().unwrap();
        assert!(
            losses.contains("1 entries owned by other users than root (42:0)"),
            "{losses}"
        );
        assert!(losses.contains("1 device nodes outside /dev"), "{losses}");
        let bytes = newc(&[member("dev/null", 0o20666, 1, 1, b"")]);
        let (_dir, path) = archive_file(&bytes);
        assert_eq!(Archive::open(&path).unwrap().losses(), None);
    }
}
