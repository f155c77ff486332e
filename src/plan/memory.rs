//! Guest memory for a VM run: the default for the kernel and initrd being
//! booted, the checks of `--mem`, and what to say when the kernel could
//! not unpack the initrd into the memory it had.
//!
//! Three needs, the largest wins (docs/initrd.md, "Guest memory"):
//! - the cookbook's rule, 3 × the initrd + 64 MiB;
//! - the kernel's image: a distribution kernel decompresses from 16 MiB
//!   and needs memory up to its `kernel_end` before it reads the memory
//!   map, then the initrd and 64 MiB to run;
//! - the unpacked rootfs: without `root=` a kernel with `CONFIG_TMPFS`
//!   (the project's and Debian's) unpacks the initramfs into a tmpfs
//!   limited to half of the memory it sees when it mounts it, which is the
//!   guest memory less the initrd (still held) and less what the kernel
//!   keeps for itself. Measured under QEMU (`stat -f /` in the guest, a
//!   4 MiB initrd): that reserve was 62.4, 67.1 and 76.6 MiB at 300, 553
//!   and 1100 MiB for Debian's 6.1 kernel (`kernel_end` 79.6 MiB), 19.3
//!   and 32.1 MiB at 300 and 1100 MiB for the project kernel (31.8 MiB):
//!   under `kernel_end` + 1/32 of the memory (the page structures take
//!   1/64) in every case. So a rootfs whose unpacked pages take U needs
//!   `kernel_end` + the initrd + 2U + 8 MiB, plus 1/32 of the total.
//!   Debian's kernel at the cookbook's rule has about 3 MiB less than the
//!   unpacked size of the archive: anything bigger than the archive
//!   (every file's last page) fails with "Initramfs unpacking failed:
//!   write error".

use std::path::Path;

use super::PlanError;
use crate::boot::BootInitrd;
use crate::guest_kernel::Stamp;
use crate::spec::Request;

const MIB: u64 = 1 << 20;
/// The least guest memory besides the initrd that microrun accepts: a
/// minimal kernel boots in 32 MiB (kernels/README.md), of which the
/// initrd's unpacked copy takes its share.
const MIN_MEM_BESIDES_INITRD: u64 = 16 * MIB;

/// Room for the running system beside the kernel image and the initrd,
/// the same 64 MiB the 3 × initrd rule gives it.
const RUNNING_ROOM: u64 = 64 * MIB;

/// Beside the tmpfs rule's measured terms: what the kernel allocates
/// before it unpacks (its slabs, the console) and guest-init's archive's
/// rounding.
const UNPACK_MARGIN: u64 = 8 * MIB;

/// The guest memory of a VM run, and what it was sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The guest memory: `--mem`, or `needed`.
    pub mem: u64,
    /// The default for this kernel and initrd ([`default_memory`]).
    pub needed: u64,
    /// The initrd's size (guest-init included).
    pub initrd: u64,
    /// The memory its files take once unpacked into a tmpfs; `None` for a
    /// compressed archive (only the kernel can tell).
    pub unpacked: Option<u64>,
}

/// Rounds up to 2 MiB, saturating.
fn round_up(bytes: u64) -> u64 {
    bytes
        .div_ceil(2 * MIB)
        .checked_mul(2 * MIB)
        .unwrap_or(!(2 * MIB - 1))
}

/// The memory a kernel whose image ends at `kernel_end` needs to unpack
/// an initrd of `initrd_len` bytes whose files take `unpacked` bytes of
/// tmpfs pages: `kernel_end` + the initrd + twice the unpacked files +
/// [`UNPACK_MARGIN`], and 1/32 of the whole for the kernel's page
/// structures (see the module's notes for the measurements).
pub fn tmpfs_need(kernel_end: u64, initrd_len: u64, unpacked: u64) -> u64 {
    let fixed = kernel_end
        .saturating_add(initrd_len)
        .saturating_add(unpacked.saturating_mul(2))
        .saturating_add(UNPACK_MARGIN);
    // mem - mem/32 >= fixed.
    round_up(fixed.saturating_mul(32).div_ceil(31).max(fixed))
}

/// The default guest memory and how it was chosen: the largest of 3 × the
/// initrd + 64 MiB (`initrd_tools::guest_memory_for_initrd`), the memory
/// the kernel's image needs before it reads the memory map (`kernel_end`,
/// see `vmm::kernel::KernelImage::load_end`) + the initrd + 64 MiB, and,
/// when the unpacked size is known, [`tmpfs_need`]. A distribution kernel
/// decompresses from 16 MiB and needs 64 MiB there (Debian 6.1: up to
/// 79.6 MiB), so the 3 × rule alone leaves it none for a small initrd and
/// too little tmpfs for a big one.
pub fn default_memory(
    kernel_end: Option<u64>,
    initrd_len: u64,
    unpacked: Option<u64>,
) -> (u64, String) {
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    let by_initrd = initrd_tools::guest_memory_for_initrd(initrd_len);
    let rule = format!(
        "3 x initrd ({:.1} MiB) + 64 MiB = {} MiB",
        mib(initrd_len),
        by_initrd >> 20
    );
    let Some(kernel_end) = kernel_end else {
        return (by_initrd, format!("{} MiB: {rule}", by_initrd >> 20));
    };
    let by_kernel = round_up(
        kernel_end
            .saturating_add(initrd_len)
            .saturating_add(RUNNING_ROOM),
    );
    let by_tmpfs = unpacked.map_or(0, |u| tmpfs_need(kernel_end, initrd_len, u));
    if by_tmpfs > by_kernel.max(by_initrd) {
        let unpacked = unpacked.unwrap_or_default();
        return (
            by_tmpfs,
            format!(
                "{} MiB: the kernel unpacks the initrd ({:.1} MiB) into a tmpfs of half its \
                 memory, and its files take {:.1} MiB there; with the kernel (up to {:.1} MiB) \
                 that needs {} MiB ({rule} would be too little)",
                by_tmpfs >> 20,
                mib(initrd_len),
                mib(unpacked),
                mib(kernel_end),
                by_tmpfs >> 20
            ),
        );
    }
    if by_kernel <= by_initrd {
        return (
            by_initrd,
            format!(
                "{} MiB: {rule} (the kernel needs memory up to {:.1} MiB)",
                by_initrd >> 20,
                mib(kernel_end)
            ),
        );
    }
    (
        by_kernel,
        format!(
            "{} MiB: the kernel needs memory up to {:.1} MiB to decompress and start, then the \
             initrd ({:.1} MiB) and 64 MiB to run ({rule} would be too little)",
            by_kernel >> 20,
            mib(kernel_end),
            mib(initrd_len)
        ),
    )
}

/// What the cache keeps for an archive whose unpacked size is unknown.
const COMPRESSED: &str = "compressed";

/// The memory the initrd's files take once unpacked into a tmpfs, the
/// rootfs archive's and guest-init's, counted from their headers
/// (`initrd_tools::unpacked`); `None` when the rootfs archive is
/// compressed or cannot be read (the kernel then says what it makes of
/// it).
pub fn unpacked_size(initrd: &BootInitrd) -> Option<u64> {
    let started = std::time::Instant::now();
    let rootfs = initrd.rootfs.as_deref()?;
    // Counted once per archive: looked up by its metadata afterwards (a
    // cached image's archive has thousands of headers).
    let count = || {
        initrd_tools::unpacked::tmpfs_bytes_of_archive(rootfs)
            .map(|bytes| bytes.map_or_else(|| COMPRESSED.to_string(), |b| b.to_string()))
    };
    let counted = match initrd_tools::cache::subdir(initrd_tools::cache::FACTS_DIR) {
        Ok(dir) => {
            // The cache's archives (`dir`'s siblings) are marked used
            // (their mtime) on every run.
            let stamp = match dir.parent() {
                Some(cache) if rootfs.starts_with(cache) => Stamp::CacheEntry,
                _ => Stamp::Metadata,
            };
            crate::guest_kernel::by_metadata(&dir, rootfs, stamp, "pages", count)
        }
        Err(_) => count(),
    };
    let rootfs = match counted.as_deref().map(str::parse::<u64>) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            log::debug!("memory: the rootfs archive is compressed: its unpacked size is unknown");
            return None;
        }
        Err(e) => {
            log::debug!("memory: the unpacked size of the rootfs archive is unknown: {e}");
            return None;
        }
    };
    let init = match &initrd.init_archive {
        Some(archive) => initrd_tools::unpacked::tmpfs_bytes_of(archive).ok()?,
        None => 0,
    };
    log::debug!(
        "memory: the initrd's files counted in {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Some(rootfs.saturating_add(init))
}

/// The guest memory: `--mem`, checked, or the default for this kernel and
/// initrd ([`default_memory`]).
pub fn memory(request: &Request, kernel: &Path, initrd: &BootInitrd) -> Result<Sizing, PlanError> {
    // The initrd must lie below the 32-bit MMIO gap beside the kernel,
    // however much memory there is above it.
    let never_fits = initrd.len().saturating_add(MIN_MEM_BESIDES_INITRD);
    if never_fits > vmm::layout::MMIO_GAP_START {
        return Err(PlanError::InitrdTooLarge { len: initrd.len() });
    }
    // A kernel that cannot be inspected is reported by the engine that
    // boots it (the kvm engine names the problem; QEMU has its own words).
    let image = vmm::kernel::inspect(kernel).ok();
    let unpacked = unpacked_size(initrd);
    let (needed, why) = default_memory(image.as_ref().map(|i| i.load_end), initrd.len(), unpacked);
    let mem = match request.mem {
        Some(mem) => mem,
        None => {
            log::info!("memory: {why}");
            needed
        }
    };
    // Checked here so both VM engines refuse alike (QEMU alone would take
    // `-m 0` as its default, or fail as a guest that never reported).
    if mem < initrd.len() + MIN_MEM_BESIDES_INITRD {
        return Err(PlanError::MemoryTooSmall {
            mem,
            initrd: initrd.len(),
            default: needed,
        });
    }
    Ok(Sizing {
        mem,
        needed,
        initrd: initrd.len(),
        unpacked,
    })
}

/// Beside the kernel and guest-init's archive, what a disk-root guest
/// gets: the program, the page cache of the image's files, and the
/// overlay's tmpfs, which takes half of the memory at most and only what
/// is written.
pub const DISK_ROOT_ROOM: u64 = 128 * MIB;

/// The default memory with the disk root, which the image's size does not
/// change: the kernel's image (`kernel_end`, or 64 MiB when unknown), the
/// initrd (guest-init's archive and modules) and [`DISK_ROOT_ROOM`].
pub fn disk_root_default(kernel_end: Option<u64>, initrd_len: u64) -> (u64, String) {
    let kernel = kernel_end.unwrap_or(RUNNING_ROOM);
    let mem = round_up(
        kernel
            .saturating_add(initrd_len)
            .saturating_add(DISK_ROOT_ROOM),
    );
    let why = format!(
        "{} MiB: the rootfs is on a disk; the kernel (up to {:.1} MiB), guest-init's archive \
         ({:.1} MiB) and 128 MiB for the program, the page cache and the overlay",
        mem >> 20,
        kernel as f64 / MIB as f64,
        initrd_len as f64 / MIB as f64
    );
    (mem, why)
}

/// The guest memory with the disk root: `--mem`, checked, or
/// [`disk_root_default`]; `initrd_len` is guest-init's archive's.
pub fn disk_root_memory(
    request: &Request,
    kernel: &Path,
    initrd_len: u64,
) -> Result<Sizing, PlanError> {
    let image = vmm::kernel::inspect(kernel).ok();
    let (needed, why) = disk_root_default(image.as_ref().map(|i| i.load_end), initrd_len);
    let mem = match request.mem {
        Some(mem) => mem,
        None => {
            log::info!("memory: {why}");
            needed
        }
    };
    if mem < initrd_len + MIN_MEM_BESIDES_INITRD {
        return Err(PlanError::MemoryTooSmall {
            mem,
            initrd: initrd_len,
            default: needed,
        });
    }
    Ok(Sizing {
        mem,
        needed,
        initrd: initrd_len,
        unpacked: None,
    })
}

/// What to say when the kernel reported that it could not unpack the
/// initrd (`kernel_said`: its words after "Initramfs unpacking failed: "),
/// with the memory to give.
pub fn unpack_failed(sizing: &Sizing, kernel_said: &str) -> String {
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    let files = match sizing.unpacked {
        Some(u) => format!(", {:.1} MiB of files", mib(u)),
        None => String::new(),
    };
    let fix = if sizing.needed > sizing.mem && sizing.unpacked.is_some() {
        format!("give --mem {}M", sizing.needed >> 20)
    } else {
        // A compressed rootfs unpacks to an unknown size, or the count
        // held and something else took the memory: at least twice as much.
        let more = round_up(sizing.mem.saturating_mul(2)).max(sizing.needed);
        let why = if sizing.unpacked.is_none() {
            " (the rootfs archive is compressed: only the kernel knows its unpacked size)"
        } else {
            ""
        };
        format!(
            "give more than --mem {}M, for example --mem {}M{why}",
            sizing.mem >> 20,
            more >> 20
        )
    };
    format!(
        "the kernel could not unpack the rootfs ({:.1} MiB initrd{files}) into {} MiB of guest \
         memory (\"Initramfs unpacking failed: {kernel_said}\"): {fix}",
        mib(sizing.initrd),
        sizing.mem >> 20
    )
}
