//! Which root a VM boots (issue 25): the rootfs as an initrd, which the
//! kernel unpacks into guest memory (the default, and the cookbook's way),
//! or as a read-only EROFS image on a virtio-blk disk under a tmpfs
//! overlay, whose cost in boot time and memory does not grow with the
//! image.
//!
//! `--root initrd|disk` forces either. Without it: the initrd for a
//! directory or a cpio ROOTFS and for images up to [`DISK_THRESHOLD`] of
//! unpacked files (as [`initrd_tools::image::Image::unpacked_estimate`]
//! estimates them, without converting), the disk above it. The chroot
//! engine and `--no-init` (without guest-init nothing mounts the disk)
//! always take the rootfs their own way.

use super::PlanError;
use crate::boot::BootError;
use crate::spec::{RootChoice, Rootfs};

/// Images whose files take more than this unpacked boot from the disk
/// when `--root` is not given: 16 MiB, where the disk root gets faster
/// than the initrd root (`scripts/bench-image`, docs/BENCHMARKS.md, "Image
/// size"): the two are even at 9 MiB, and the disk root is faster from
/// 24-25 MiB on under both VM engines (qemu under TCG: 1.43 against 1.98 s
/// of CPU; kvm in the nested lane: 3.5-4.4 against 4.3-5.1 s), its memory
/// lower at every size measured. The initrd's cost grows with every MiB
/// (35 ms of CPU per MiB under TCG), the disk root's does not.
pub const DISK_THRESHOLD: u64 = 16 << 20;

/// The root a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// The rootfs archive, unpacked by the kernel.
    Initrd,
    /// An EROFS image of the rootfs on a read-only virtio-blk disk.
    Disk,
}

/// Why `--root disk` cannot be had, and what to do instead.
fn refuse(why: &'static str) -> PlanError {
    PlanError::RootDisk(why)
}

/// The root for a run of `rootfs` with `asked` (`--root`), in a VM
/// (`vm`) with guest-init or without (`no_init`); `unpacked` estimates an
/// image's unpacked files (called only when the choice depends on it).
pub fn choose(
    asked: Option<RootChoice>,
    rootfs: &Rootfs,
    vm: bool,
    no_init: bool,
    unpacked: impl FnOnce() -> Result<u64, PlanError>,
) -> Result<RootKind, PlanError> {
    match asked {
        Some(RootChoice::Initrd) => Ok(RootKind::Initrd),
        Some(RootChoice::Disk) if !vm => Err(refuse(
            "the chroot engine runs the rootfs from a directory, not from a disk; drop --root \
             disk or use --engine qemu or kvm",
        )),
        Some(RootChoice::Disk) if no_init => Err(refuse(
            "guest-init mounts the disk root, and --no-init leaves it out; drop --no-init or \
             --root disk",
        )),
        Some(RootChoice::Disk) => match rootfs {
            Rootfs::Cpio(_) => Err(refuse(
                "a cpio ROOTFS is booted as the initrd it is; give the directory or the image it \
                 was made from for --root disk",
            )),
            Rootfs::Dir(_) | Rootfs::Image(_) => Ok(RootKind::Disk),
        },
        None => match rootfs {
            Rootfs::Image(_) if vm && !no_init && unpacked()? > DISK_THRESHOLD => {
                Ok(RootKind::Disk)
            }
            _ => Ok(RootKind::Initrd),
        },
    }
}

/// [`choose`]'s estimate for `rootfs`: an image's unpacked files.
pub fn unpacked_estimate(rootfs: &Rootfs) -> Result<u64, PlanError> {
    match rootfs {
        Rootfs::Image(image) => image
            .unpacked_estimate()
            .map_err(|e| PlanError::Initrd(BootError::from(e))),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn choose_for(
        asked: Option<RootChoice>,
        rootfs: &Rootfs,
        vm: bool,
        no_init: bool,
        unpacked: u64,
    ) -> Result<RootKind, PlanError> {
        choose(asked, rootfs, vm, no_init, || Ok(unpacked))
    }

    /// A plain rootfs tar of one file, as an image (and its directory).
    fn image() -> (tempfile::TempDir, Rootfs) {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("rootfs.tar");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/hello", &b"hi"[..])
            .unwrap();
        std::fs::write(&tar, builder.into_inner().unwrap()).unwrap();
        let rootfs = Rootfs::detect(&tar).unwrap();
        assert!(matches!(rootfs, Rootfs::Image(_)), "{rootfs:?}");
        (dir, rootfs)
    }

    #[test]
    fn big_images_boot_from_the_disk_and_the_rest_from_the_initrd() {
        let (_dir, image) = image();
        let dir = Rootfs::Dir(PathBuf::from("/srv/rootfs"));
        let cpio = Rootfs::Cpio(PathBuf::from("/srv/rootfs.cpio"));
        let big = DISK_THRESHOLD + 1;
        // (rootfs, in a VM, without guest-init, unpacked) -> root.
        let cases = [
            (&image, true, false, big, RootKind::Disk),
            (&image, true, false, DISK_THRESHOLD, RootKind::Initrd),
            (&dir, true, false, big, RootKind::Initrd),
            (&cpio, true, false, big, RootKind::Initrd),
            // No VM, or no guest-init: their own way, whatever the size.
            (&image, false, false, big, RootKind::Initrd),
            (&image, true, true, big, RootKind::Initrd),
        ];
        for (rootfs, vm, no_init, unpacked, want) in cases {
            let got = choose_for(None, rootfs, vm, no_init, unpacked).unwrap();
            assert_eq!(got, want, "{rootfs:?} vm {vm} no_init {no_init} {unpacked}");
        }
        // The size is only looked at for an image in a VM with guest-init.
        let never = || -> Result<u64, PlanError> { panic!("estimated") };
        choose(None, &dir, true, false, never).unwrap();
    }

    #[test]
    fn root_forces_either_where_it_can_work() {
        let (_dir, image) = image();
        let dir = Rootfs::Dir(PathBuf::from("/srv/rootfs"));
        let cpio = Rootfs::Cpio(PathBuf::from("/srv/rootfs.cpio"));
        let initrd = Some(RootChoice::Initrd);
        let disk = Some(RootChoice::Disk);
        assert_eq!(
            choose_for(initrd, &image, true, false, u64::MAX).unwrap(),
            RootKind::Initrd
        );
        assert_eq!(
            choose_for(disk, &dir, true, false, 0).unwrap(),
            RootKind::Disk
        );
        assert_eq!(
            choose_for(disk, &image, true, false, 0).unwrap(),
            RootKind::Disk
        );
        for (rootfs, vm, no_init, names) in [
            (&cpio, true, false, "cpio ROOTFS"),
            (&dir, false, false, "chroot engine"),
            (&dir, true, true, "--no-init"),
        ] {
            let err = choose_for(disk, rootfs, vm, no_init, 0).unwrap_err();
            assert!(err.to_string().contains(names), "{err}");
            assert!(err.to_string().contains("--root disk"), "{err}");
        }
    }
}
