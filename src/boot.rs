//! The rootfs as an engine takes it (a directory packed, an image
//! converted, a cpio file checked, each cached where it is made) and
//! guest-init's own archive: the material [`crate::plan`] puts in a plan.

use std::io::Read;
use std::path::{Path, PathBuf};

use initrd_tools::image::compression_format;
use initrd_tools::newc::NewcWriter;
use initrd_tools::PackOptions;

use crate::embedded::GUEST_INIT;
use crate::guest_kernel::GuestModule;
use crate::runconfig::{RunConfig, CONFIG_PATH, INIT_PATH, MODULES_DIR};
use crate::spec::Rootfs;

/// The directory of guest-init and its run configuration in the guest.
const INIT_DIR: &str = ".microrun";
/// Where the guest's network files (`resolv.conf`, `hosts`) are in
/// guest-init's archive, with `--net`.
pub const NET_FILES_DIR: &str = "/.microrun/etc";

/// Why the boot material could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Packing the rootfs directory failed.
    #[error(transparent)]
    Pack(#[from] initrd_tools::InitrdError),
    /// Converting the rootfs image failed.
    #[error(transparent)]
    Image(#[from] initrd_tools::image::ImageError),
    /// Writing the rootfs directory as an EROFS image failed.
    #[error(transparent)]
    Erofs(#[from] initrd_tools::erofs::ErofsError),
    /// The run configuration cannot be encoded.
    #[error(transparent)]
    RunConfig(#[from] crate::runconfig::RunConfigError),
    /// The initrd file given as ROOTFS cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The ROOTFS path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initrd file given as ROOTFS is not an archive the kernel unpacks.
    #[error("{path} is not a cpio archive (newc, or compressed with gzip, xz, zstd, lz4 or bzip2); pass a directory or a `microrun pack` output")]
    NotAnInitrd {
        /// The ROOTFS path.
        path: PathBuf,
    },
    /// A cpio ROOTFS asked to boot from a disk.
    #[error("{path} is a cpio archive, which boots as the initrd it is: give the directory or image it was made from for --root disk")]
    CpioOnDisk {
        /// The ROOTFS path.
        path: PathBuf,
    },
    /// Building the guest-init archive in memory failed.
    #[error("cannot build the guest-init archive: {0}")]
    InitArchive(std::io::Error),
}

/// The initrd of one run: the rootfs archive, then (unless `--no-init`)
/// the guest-init archive. Kept as parts so the rootfs archive is read
/// straight from the cache into guest memory.
#[derive(Debug)]
pub struct BootInitrd {
    /// The rootfs archive (cached pack, or the user's file); `None` when
    /// the rootfs boots from a disk.
    pub rootfs: Option<PathBuf>,
    /// The rootfs archive's size in bytes.
    pub rootfs_len: u64,
    /// guest-init, its run configuration and their directory, as a newc
    /// archive; `None` with `--no-init`.
    pub init_archive: Option<Vec<u8>>,
}

impl BootInitrd {
    /// Total size in guest memory, with the 4-byte alignment between parts.
    pub fn len(&self) -> u64 {
        let init = self.init_archive.as_ref().map_or(0, |a| a.len() as u64);
        self.rootfs_len.next_multiple_of(4) + init
    }

    /// Whether the initrd is empty (never, for a valid rootfs).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the chroot engine builds its root from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedRootfs {
    /// A rootfs directory, used in place (never written to).
    Dir(PathBuf),
    /// A newc archive: the user's cpio file, or a converted image.
    Archive(PathBuf),
}

/// The rootfs as one archive for a VM's initrd, and its size: a directory
/// packed into a newc archive in the cache (`initrd_tools::cached_pack`:
/// an unchanged tree is not repacked), an image's layers merged into one
/// (`Image::cached_convert`, keyed by the manifest digest), a cpio file
/// used as given after a magic check.
pub fn initrd_archive(rootfs: &Rootfs) -> Result<(PathBuf, u64), BootError> {
    let path = match rootfs {
        Rootfs::Dir(dir) => initrd_tools::cached_pack(dir, &PackOptions::from_env()?)?,
        Rootfs::Image(image) => image.cached_convert()?,
        Rootfs::Cpio(path) => {
            check_initrd_magic(path)?;
            path.clone()
        }
    };
    let len = std::fs::metadata(&path)
        .map_err(|source| BootError::ReadInitrd {
            path: path.clone(),
            source,
        })?
        .len();
    Ok((path, len))
}

/// The rootfs as an EROFS image for the disk root, in the cache beside
/// its newc archive (`initrd_tools::erofs::cached_pack` for a directory,
/// `Image::cached_convert_erofs` for an image: written once, checked on
/// every use). A cpio ROOTFS has none (the plan refuses it before).
pub fn disk_image(rootfs: &Rootfs) -> Result<PathBuf, BootError> {
    Ok(match rootfs {
        Rootfs::Dir(dir) => initrd_tools::erofs::cached_pack(dir, &PackOptions::from_env()?)?,
        Rootfs::Image(image) => image.cached_convert_erofs()?,
        Rootfs::Cpio(path) => return Err(BootError::CpioOnDisk { path: path.clone() }),
    })
}

/// The rootfs for the chroot engine: a directory in place, an image
/// converted (as for a VM), a cpio file as given (the engine indexes it).
pub fn chroot_rootfs(rootfs: &Rootfs) -> Result<PreparedRootfs, BootError> {
    Ok(match rootfs {
        Rootfs::Dir(dir) => PreparedRootfs::Dir(dir.clone()),
        Rootfs::Cpio(path) => PreparedRootfs::Archive(path.clone()),
        Rootfs::Image(image) => PreparedRootfs::Archive(image.cached_convert()?),
    })
}

/// Where the `index`th module (from 0, in load order) lies in the initrd:
/// `/.microrun/modules/NN-<name>.ko`.
pub fn module_path(index: usize, module: &GuestModule) -> String {
    format!("{MODULES_DIR}/{index:02}-{}", module.file_name)
}

/// The second archive: `/.microrun/init`, `/.microrun/run` and, when there
/// are `modules`, `/.microrun/modules/NN-<name>.ko` for each.
///
/// With `network` (`--net`), the guest's `/etc/resolv.conf` and
/// `/etc/hosts` come along under [`NET_FILES_DIR`]: guest-init moves them
/// into `/etc` in a VM, the chroot engine mounts them over the rootfs's.
pub fn init_archive(
    config: &RunConfig,
    modules: &[GuestModule],
    network: Option<&crate::net::Network>,
) -> Result<Vec<u8>, BootError> {
    let encoded = config.encode()?;
    let modules_len: usize = modules.iter().map(|m| m.bytes.len() + 256).sum();
    let build = || -> std::io::Result<Vec<u8>> {
        let mut w = NewcWriter::new(Vec::with_capacity(GUEST_INIT.len() + modules_len + 1024));
        w.add_dir(INIT_DIR, 0o755)?;
        w.add_file(&INIT_PATH[1..], 0o755, GUEST_INIT)?;
        w.add_file(&CONFIG_PATH[1..], 0o644, &encoded)?;
        if !modules.is_empty() {
            w.add_dir(&MODULES_DIR[1..], 0o755)?;
        }
        for (index, module) in modules.iter().enumerate() {
            w.add_file(&module_path(index, module)[1..], 0o644, &module.bytes)?;
        }
        if let Some(network) = network {
            w.add_dir(&NET_FILES_DIR[1..], 0o755)?;
            let resolv = crate::net::resolv_conf();
            let hosts = crate::net::hosts(network.host_loopback);
            w.add_file(
                &format!("{}/resolv.conf", &NET_FILES_DIR[1..]),
                0o644,
                resolv.as_bytes(),
            )?;
            w.add_file(
                &format!("{}/hosts", &NET_FILES_DIR[1..]),
                0o644,
                hosts.as_bytes(),
            )?;
        }
        w.finish()
    };
    build().map_err(BootError::InitArchive)
}

/// Rejects files the kernel would not unpack, before booting them.
fn check_initrd_magic(path: &Path) -> Result<(), BootError> {
    let mut head = [0u8; 6];
    let read_err = |source| BootError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = vmm::regular_file::open(path).map_err(read_err)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(read_err)? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    let newc = head.starts_with(b"070701") || head.starts_with(b"070702");
    if newc || compression_format(head).is_some() {
        Ok(())
    } else {
        Err(BootError::NotAnInitrd {
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runconfig::ModuleLoad;

    #[test]
    fn initrd_files_are_checked_before_booting() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.cpio");
        std::fs::write(&good, b"070701rest").unwrap();
        check_initrd_magic(&good).unwrap();
        let bad = dir.path().join("b.cpio");
        std::fs::write(&bad, b"hello world").unwrap();
        let err = check_initrd_magic(&bad).unwrap_err().to_string();
        assert!(
            err.contains("b.cpio") && err.contains("not a cpio"),
            "{err}"
        );
        let empty = dir.path().join("c.cpio");
        std::fs::write(&empty, b"").unwrap();
        assert!(check_initrd_magic(&empty).is_err());
        // The rootfs as each engine takes it.
        let (path, len) = initrd_archive(&Rootfs::Cpio(good.clone())).unwrap();
        assert_eq!((path, len), (good.clone(), 10));
        assert!(initrd_archive(&Rootfs::Cpio(bad)).is_err());
        assert_eq!(
            chroot_rootfs(&Rootfs::Dir(dir.path().into())).unwrap(),
            PreparedRootfs::Dir(dir.path().into())
        );
        assert_eq!(
            chroot_rootfs(&Rootfs::Cpio(good.clone())).unwrap(),
            PreparedRootfs::Archive(good)
        );
    }

    #[test]
    fn the_init_archive_carries_guest_init_and_the_run_config() {
        let config = RunConfig {
            argv: vec!["/bin/echo".into(), "hi".into()],
            ..RunConfig::default()
        };
        let archive = init_archive(&config, &[], None).unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
        let find = |needle: &[u8]| archive.windows(needle.len()).any(|w| w == needle);
        assert!(find(b".microrun/init\0"));
        assert!(find(b".microrun/run\0"));
        assert!(find(b"arg=/bin/echo\0arg=hi\0"));
        assert!(find(&GUEST_INIT[..64]));
    }

    /// The archive's members: (name, mode, contents).
    fn members(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut reader = archive;
        loop {
            let mut member = cpio::NewcReader::new(reader).unwrap();
            if member.entry().is_trailer() {
                return out;
            }
            let (name, mode) = (member.entry().name().to_string(), member.entry().mode());
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            out.push((name, mode, data));
            reader = member.finish().unwrap();
        }
    }

    #[test]
    fn modules_lie_in_the_init_archive_where_module_path_says() {
        let module = |name: &str| GuestModule {
            file_name: format!("{name}.ko"),
            bytes: format!("\x7fELF {name}").into_bytes(),
            params: String::new(),
        };
        let modules = [module("virtio_ring"), module("virtio")];
        let config = RunConfig {
            argv: vec!["true".into()],
            modules: modules
                .iter()
                .enumerate()
                .map(|(index, m)| ModuleLoad {
                    path: module_path(index, m),
                    params: m.params.clone(),
                })
                .collect(),
            ..RunConfig::default()
        };
        let archive = init_archive(&config, &modules, None).unwrap();
        let entries = members(&archive);
        let names: Vec<&str> = entries.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            [
                ".microrun",
                ".microrun/init",
                ".microrun/run",
                ".microrun/modules",
                ".microrun/modules/00-virtio_ring.ko",
                ".microrun/modules/01-virtio.ko",
            ]
        );
        for (index, module) in modules.iter().enumerate() {
            let (_, mode, data) = &entries[4 + index];
            assert_eq!(mode & 0o7777, 0o644);
            assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
            assert_eq!(data, &module.bytes);
            assert!(config.modules[index].path.ends_with(&names[4 + index][9..]));
        }
        assert_eq!(entries[3].1 & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(entries[2].2, config.encode().unwrap());
        // No modules: no modules directory.
        let bare = RunConfig {
            argv: vec!["true".into()],
            ..RunConfig::default()
        };
        let entries = members(&init_archive(&bare, &[], None).unwrap());
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].2, b"arg=true\0");
    }
}
