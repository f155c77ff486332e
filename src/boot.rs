//! What a VM engine boots: the kernel, the initrd parts and the kernel
//! command line. The kvm and qemu engines boot exactly the same thing.

use std::io::Read;
use std::path::{Path, PathBuf};

use initrd_tools::image::compression_format;
use initrd_tools::newc::NewcWriter;
use initrd_tools::PackOptions;

use crate::embedded::GUEST_INIT;
use crate::guest_kernel::{GuestModule, VirtioPlan};
use crate::runconfig::{ModuleLoad, RunConfig, ShareMount, CONFIG_PATH, INIT_PATH, MODULES_DIR};
use crate::spec::{Rootfs, RunSpec, Verbosity};

/// The directory of guest-init and its run configuration in the guest.
const INIT_DIR: &str = ".microrun";

/// The arguments every boot gets, each for a reason (see kernels/README.md):
/// the console on ttyS0; a reset (not a reboot loop or a hang) when the
/// guest restarts or panics; exactly the three UARTs; no probing for the
/// i8042's mouse port, multiplexer or PnP entry. (Arguments a kernel does
/// not know are handed to init, so nothing kernel-specific goes here.)
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=3 \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Why the boot material could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Packing the rootfs directory failed.
    #[error(transparent)]
    Pack(#[from] initrd_tools::InitrdError),
    /// Converting the rootfs image failed.
    #[error(transparent)]
    Image(#[from] initrd_tools::image::ImageError),
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
    /// Building the guest-init archive in memory failed.
    #[error("cannot build the guest-init archive: {0}")]
    InitArchive(std::io::Error),
}

/// The initrd of one run: the rootfs archive, then (unless `--no-init`)
/// the guest-init archive. Kept as parts so the rootfs archive is read
/// straight from the cache into guest memory.
#[derive(Debug)]
pub struct BootInitrd {
    /// The rootfs archive (cached pack, or the user's file).
    pub rootfs: PathBuf,
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

/// Packs or converts (or finds in the cache) the rootfs and builds the
/// guest-init archive for `spec`, with the ports and the modules of the
/// `virtio` plan.
pub fn prepare_initrd(spec: &RunSpec, virtio: &VirtioPlan) -> Result<BootInitrd, BootError> {
    let rootfs = match &spec.rootfs {
        Rootfs::Dir(dir) => initrd_tools::cached_pack(dir, &PackOptions::from_env()?)?,
        Rootfs::Image(image) => image.cached_convert()?,
        Rootfs::Cpio(path) => {
            check_initrd_magic(path)?;
            path.clone()
        }
    };
    let rootfs_len = std::fs::metadata(&rootfs)
        .map_err(|source| BootError::ReadInitrd {
            path: rootfs.clone(),
            source,
        })?
        .len();
    let init_archive = if spec.no_init {
        None
    } else {
        Some(init_archive(&vm_run_config(spec, virtio), &virtio.modules)?)
    };
    Ok(BootInitrd {
        rootfs,
        rootfs_len,
        init_archive,
    })
}

/// The run configuration guest-init reads, from the engine-neutral spec:
/// the program's streams on the UARTs (or the chroot engine's pipes), no
/// modules.
pub fn run_config(spec: &RunSpec) -> RunConfig {
    RunConfig {
        argv: spec.command.clone(),
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        forward_stdin: spec.forward_stdin,
        virtio_ports: false,
        relay_output: false,
        modules: Vec::new(),
        mounts: Vec::new(),
    }
}

/// The run configuration of a VM run: [`run_config`], the virtio ports when
/// the plan offers the console, and the plan's modules at the paths
/// [`init_archive`] gives them.
pub fn vm_run_config(spec: &RunSpec, virtio: &VirtioPlan) -> RunConfig {
    RunConfig {
        virtio_ports: virtio.console,
        relay_output: virtio.relay_output,
        modules: virtio
            .modules
            .iter()
            .enumerate()
            .map(|(index, module)| ModuleLoad {
                path: module_path(index, module),
                params: module.params.clone(),
            })
            .collect(),
        mounts: virtio
            .shared(&spec.binds)
            .map(|(tag, bind)| ShareMount {
                tag,
                dest: bind.dest.clone(),
                read_only: bind.read_only,
            })
            .collect(),
        ..run_config(spec)
    }
}

/// Where the `index`th module (from 0, in load order) lies in the initrd:
/// `/.microrun/modules/NN-<name>.ko`.
pub fn module_path(index: usize, module: &GuestModule) -> String {
    format!("{MODULES_DIR}/{index:02}-{}", module.file_name)
}

/// The second archive: `/.microrun/init`, `/.microrun/run` and, when there
/// are `modules`, `/.microrun/modules/NN-<name>.ko` for each.
pub fn init_archive(config: &RunConfig, modules: &[GuestModule]) -> Result<Vec<u8>, BootError> {
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
        w.finish()
    };
    build().map_err(BootError::InitArchive)
}

/// The kernel command line: the base arguments, quiet unless `-v`,
/// guest-init as `rdinit` unless `--no-init`, then the user's `--cmdline`.
pub fn kernel_cmdline(spec: &RunSpec, user: Option<&str>) -> String {
    let mut cmdline = String::from(BASE_CMDLINE);
    if spec.verbosity != Verbosity::Verbose {
        // loglevel=1 keeps panics (KERN_EMERG) but drops the boot chatter
        // that would otherwise mix into the program's stderr.
        cmdline.push_str(" quiet loglevel=1");
    }
    if !spec.no_init {
        cmdline.push_str(" rdinit=");
        cmdline.push_str(INIT_PATH);
    }
    if let Some(extra) = user.map(str::trim).filter(|s| !s.is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
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
    use std::time::Instant;

    fn spec(no_init: bool, verbosity: Verbosity) -> RunSpec {
        RunSpec {
            rootfs: Rootfs::Dir("/nonexistent".into()),
            command: vec![],
            env: vec![],
            workdir: None,
            timeout: None,
            forward_stdin: false,
            no_init,
            binds: Vec::new(),
            verbosity,
            started: Instant::now(),
        }
    }

    #[test]
    fn cmdline_is_quiet_by_default_and_appends_the_users_args_last() {
        let c = kernel_cmdline(&spec(false, Verbosity::Normal), Some("foo=1"));
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains(" quiet loglevel=1"));
        assert!(c.contains(" rdinit=/.microrun/init"));
        assert!(c.ends_with(" foo=1"));
        let v = kernel_cmdline(&spec(true, Verbosity::Verbose), None);
        assert!(!v.contains("quiet") && !v.contains("rdinit"));
    }

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
    }

    #[test]
    fn the_init_archive_carries_guest_init_and_the_run_config() {
        let mut s = spec(false, Verbosity::Normal);
        s.command = vec!["/bin/echo".into(), "hi".into()];
        let archive = init_archive(&run_config(&s), &[]).unwrap();
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
    fn modules_lie_in_the_init_archive_where_the_run_config_says() {
        let module = |name: &str, params: &str| GuestModule {
            file_name: format!("{name}.ko"),
            bytes: format!("\x7fELF {name}").into_bytes(),
            params: params.into(),
        };
        let plan = VirtioPlan {
            console: true,
            acpi_discovery: true,
            modules: vec![
                module("virtio_ring", ""),
                module("virtio", ""),
                module("virtio_mmio", "device=4K@0xd0000000:5"),
                module("virtio_console", ""),
            ],
            ..VirtioPlan::default()
        };
        let mut s = spec(false, Verbosity::Normal);
        s.command = vec!["true".into()];
        let config = vm_run_config(&s, &plan);
        let archive = init_archive(&config, &plan.modules).unwrap();
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
                ".microrun/modules/02-virtio_mmio.ko",
                ".microrun/modules/03-virtio_console.ko",
            ]
        );
        for (index, module) in plan.modules.iter().enumerate() {
            let (_, mode, data) = &entries[4 + index];
            assert_eq!(mode & 0o7777, 0o644);
            assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
            assert_eq!(data, &module.bytes);
        }
        assert_eq!(entries[3].1 & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(
            entries[2].2,
            b"arg=true\0ports=virtio\0\
              module=/.microrun/modules/00-virtio_ring.ko\0\
              module=/.microrun/modules/01-virtio.ko\0\
              module=/.microrun/modules/02-virtio_mmio.ko device=4K@0xd0000000:5\0\
              module=/.microrun/modules/03-virtio_console.ko\0"
        );
        // The UARTs: no ports record, no modules directory.
        let uarts = VirtioPlan::uarts("off".into());
        let archive = init_archive(&vm_run_config(&s, &uarts), &uarts.modules).unwrap();
        let entries = members(&archive);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].2, b"arg=true\0");
        assert_eq!(vm_run_config(&s, &uarts), run_config(&s));
    }
}
