//! Kernel loading: validation with clear errors, then the image into guest
//! memory (a bzImage through linux-loader; an ELF vmlinux's segments read,
//! or mapped where the file is a cache entry), then the boot information the
//! kernel reads at entry (zero page or PVH start info).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::acpi::AcpiInfo;
use crate::layout;
use crate::memory::{self, GuestMemory};

/// Errors loading a kernel or writing its boot information.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel file does not exist.
    #[error("kernel {0} not found (pass an existing file with --kernel or MICRORUN_KERNEL)")]
    NotFound(PathBuf),
    /// The kernel file exists but cannot be read.
    #[error(
        "cannot read kernel {0}: permission denied (Ubuntu installs /boot/vmlinuz-* readable by \
         root only: run as root, make a readable copy, or pass another kernel with --kernel)"
    )]
    PermissionDenied(PathBuf),
    /// The path names a FIFO, a directory, a device...
    #[error(
        "kernel {path} is {kind}: a kernel must be a regular file (a bzImage or an ELF vmlinux)"
    )]
    NotRegular {
        /// The kernel path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Any other failure opening or reading the file.
    #[error("cannot read kernel {path}: {source}")]
    Read {
        /// The kernel file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("kernel {0} is an empty file")]
    Empty(PathBuf),
    /// The file ends before the sizes its header declares.
    #[error("kernel {path} is truncated: {detail}")]
    Truncated {
        /// The kernel file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// Neither a bzImage nor an ELF file.
    #[error(
        "{0} is not a kernel: expected a bzImage (\"HdrS\" at offset 0x202) or an x86-64 ELF vmlinux"
    )]
    NotAKernel(PathBuf),
    /// A bzImage that lacks the 64-bit boot protocol.
    #[error(
        "kernel {0} is a 32-bit-only bzImage (boot protocol before 2.12 or no XLF_KERNEL_64): \
         use a 64-bit x86 kernel"
    )]
    Bzimage32Only(PathBuf),
    /// An ELF file that is not an x86-64 little-endian executable.
    #[error("kernel {path} is an ELF file but not an x86-64 kernel: {detail}")]
    UnsupportedElf {
        /// The kernel file.
        path: PathBuf,
        /// Which check failed.
        detail: String,
    },
    /// The kernel does not fit in guest memory.
    #[error(
        "guest memory of {mem_size} bytes is too small for kernel {path}: it needs memory up to \
         {needed:#x} ({} MiB); raise --mem",
        needed.div_ceil(1 << 20)
    )]
    MemoryTooSmall {
        /// The kernel file.
        path: PathBuf,
        /// The end address the kernel needs.
        needed: u64,
        /// The configured memory size.
        mem_size: u64,
    },
    /// The kernel would end past the memory below the 32-bit MMIO gap,
    /// where it must be loaded whatever the memory size.
    #[error(
        "kernel {path} needs memory up to {needed:#x} ({} MiB), but a kernel must fit below \
         {limit:#x} (the 32-bit MMIO gap) whatever --mem is: use a smaller kernel (a compressed \
         bzImage rather than a vmlinux, or one built with fewer features)",
        needed.div_ceil(1 << 20)
    )]
    TooLarge {
        /// The kernel file.
        path: PathBuf,
        /// The end address the kernel needs.
        needed: u64,
        /// The end of the memory a kernel can use.
        limit: u64,
    },
    /// linux-loader rejected the image after validation.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The kernel file.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// An ELF segment cannot be loaded.
    #[error("cannot load kernel {path}: a segment at file offset {offset:#x}: {source}")]
    Segment {
        /// The kernel file.
        path: PathBuf,
        /// Where the segment starts in the file.
        offset: u64,
        /// What failed.
        source: memory::MemoryError,
    },
    /// The command line exceeds what the kernel accepts.
    #[error("kernel command line is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit (without the terminating NUL).
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, RBX = `hvm_start_info`.
    Pvh,
}

/// What the file's header says, checked before anything is loaded.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// The kernel file.
    pub path: PathBuf,
    /// bzImage setup header, if the file is a bzImage.
    pub setup_header: Option<setup_header>,
    /// The end (exclusive) of the memory the kernel needs before it reads
    /// the memory map: a bzImage's decompression extent, an ELF's segments.
    pub load_end: u64,
    /// Longest command line the kernel accepts (without NUL).
    pub cmdline_max: usize,
    /// Highest address the initrd may end at (inclusive), per the kernel.
    pub initrd_addr_max: u64,
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Entry point.
    pub entry: GuestAddress,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// First address past the kernel.
    pub end: u64,
    /// The header checked before loading.
    pub image: KernelImage,
}

fn read_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn read_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
}

fn read_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

fn open_kernel(path: &Path) -> Result<File, KernelError> {
    crate::regular_file::open(path).map_err(|source| {
        if let Some(kind) = crate::regular_file::not_regular_kind(&source) {
            return KernelError::NotRegular {
                path: path.to_path_buf(),
                kind,
            };
        }
        match source.kind() {
            ErrorKind::NotFound => KernelError::NotFound(path.to_path_buf()),
            ErrorKind::PermissionDenied => KernelError::PermissionDenied(path.to_path_buf()),
            _ => KernelError::Read {
                path: path.to_path_buf(),
                source,
            },
        }
    })
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
fn read_at<R: Read + Seek>(
    file: &mut R,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, KernelError> {
    let io = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(done)
}

/// Opens and checks the kernel at `path` without loading it: what a caller
/// needs to size guest memory before building a VM.
pub fn inspect(path: &Path) -> Result<KernelImage, KernelError> {
    let mut file = open_kernel(path)?;
    inspect_kernel(path, &mut file)
}

/// Checks the kernel's header and computes where it will live, so that
/// bad input gets a precise error before anything is loaded. `file` is the
/// kernel (a `File`, or bytes in a `Cursor`), `path` its name for messages.
pub fn inspect_kernel<R: Read + Seek>(
    path: &Path,
    file: &mut R,
) -> Result<KernelImage, KernelError> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|source| KernelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if len == 0 {
        return Err(KernelError::Empty(path.to_path_buf()));
    }
    let mut head = [0u8; 0x1000];
    let head_len = read_at(file, path, 0, &mut head)?;
    let head = &head[..head_len];
    if head.starts_with(b"\x7fELF") {
        inspect_elf(path, file, head, len)
    } else if head_len >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        inspect_bzimage(path, head, len)
    } else {
        Err(KernelError::NotAKernel(path.to_path_buf()))
    }
}

fn inspect_bzimage(path: &Path, head: &[u8], len: u64) -> Result<KernelImage, KernelError> {
    let truncated = |detail: String| KernelError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let hdr_end = 0x1f1 + std::mem::size_of::<setup_header>();
    if head.len() < hdr_end {
        return Err(truncated(format!(
            "{len} bytes, shorter than the {hdr_end}-byte setup header"
        )));
    }
    let mut hdr = setup_header::default();
    hdr.as_mut_slice().copy_from_slice(&head[0x1f1..hdr_end]);
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < 0x020c || xloadflags & 1 == 0 {
        return Err(KernelError::Bzimage32Only(path.to_path_buf()));
    }
    if hdr.loadflags & 1 == 0 {
        return Err(KernelError::NotAKernel(path.to_path_buf()));
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (setup_sects + 1) * 512;
    let syssize = u64::from(hdr.syssize) * 16;
    if len < setup_size + syssize {
        return Err(truncated(format!(
            "{len} bytes, but its header declares {setup_size} bytes of setup code and {syssize} \
             bytes of kernel"
        )));
    }
    let payload = len - setup_size;
    let cmdline_max = (hdr.cmdline_size as usize).max(255);
    Ok(KernelImage {
        path: path.to_path_buf(),
        load_end: bzimage_extent_end(&hdr, payload),
        setup_header: Some(hdr),
        cmdline_max,
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
    })
}

/// The end of the memory a bzImage needs before it reads the memory map:
/// the compressed image as loaded at 1 MiB, and `init_size` bytes from the
/// address it decompresses to. That address is `pref_address` (the
/// kernel's `LOAD_PHYSICAL_ADDR`, 16 MiB in distribution kernels) for a
/// kernel that is not relocatable, and for a relocatable one the load
/// address rounded up to `kernel_alignment` but never below
/// `pref_address` (arch/x86/boot/compressed/head_64.S). A Debian kernel
/// thus needs memory up to 16 MiB + 63.6 MiB, far above 1 MiB + init_size.
fn bzimage_extent_end(hdr: &setup_header, payload: u64) -> u64 {
    let loaded_end = layout::HIMEM_START + payload;
    // (Protocol 2.12, checked before, has both pref_address and
    // kernel_alignment.)
    let pref_address = hdr.pref_address;
    let alignment = u64::from(hdr.kernel_alignment).max(1);
    let aligned_load = if hdr.relocatable_kernel != 0 && alignment.is_power_of_two() {
        layout::HIMEM_START.next_multiple_of(alignment)
    } else {
        layout::HIMEM_START
    };
    let runtime_start = pref_address.max(aligned_load);
    let decompressed_end = runtime_start.saturating_add(u64::from(hdr.init_size));
    loaded_end.max(decompressed_end)
}

fn inspect_elf<R: Read + Seek>(
    path: &Path,
    file: &mut R,
    head: &[u8],
    len: u64,
) -> Result<KernelImage, KernelError> {
    let unsupported = |detail: &str| KernelError::UnsupportedElf {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let truncated = |detail: String| KernelError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    if head.len() < 64 {
        return Err(truncated(format!(
            "{len} bytes, shorter than an ELF header"
        )));
    }
    if head[4] != 2 {
        return Err(unsupported("not a 64-bit ELF (ELFCLASS64)"));
    }
    if head[5] != 1 {
        return Err(unsupported("not little-endian"));
    }
    if read_u16(head, 18) != 62 {
        return Err(unsupported("machine is not x86-64 (EM_X86_64)"));
    }
    let phoff = read_u64(head, 32);
    let phentsize = u64::from(read_u16(head, 54));
    let phnum = u64::from(read_u16(head, 56));
    if phnum == 0 || phentsize != 56 {
        return Err(unsupported("no 64-bit program headers"));
    }
    let ph_end = phoff.saturating_add(phnum * phentsize);
    if ph_end > len {
        return Err(truncated(format!(
            "{len} bytes, but its program headers end at {ph_end}"
        )));
    }
    let mut phdrs = vec![0u8; (phnum * phentsize) as usize];
    read_at(file, path, phoff, &mut phdrs)?;
    let mut load_end = 0u64;
    for ph in phdrs.chunks_exact(56) {
        const PT_LOAD: u32 = 1;
        if read_u32(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr) = (read_u64(ph, 8), read_u64(ph, 24));
        let (filesz, memsz) = (read_u64(ph, 32), read_u64(ph, 40));
        let seg_end = offset.saturating_add(filesz);
        if seg_end > len {
            return Err(truncated(format!(
                "{len} bytes, but a segment ends at file offset {seg_end}"
            )));
        }
        if paddr < layout::HIMEM_START {
            return Err(unsupported(
                "a segment loads below 1 MiB, over the boot structures",
            ));
        }
        load_end = load_end.max(paddr.saturating_add(memsz));
    }
    if load_end == 0 {
        return Err(unsupported("no loadable segment"));
    }
    Ok(KernelImage {
        path: path.to_path_buf(),
        setup_header: None,
        load_end,
        cmdline_max: layout::CMDLINE_MAX_SIZE_ELF - 1,
        initrd_addr_max: layout::MMIO_GAP_START - 1,
    })
}

/// Validates the kernel at `path` and loads it into `mem` of `mem_size`
/// bytes. With `cached` (the file is a cache entry, never changed in place)
/// an ELF vmlinux's segments are mapped rather than copied
/// ([`memory::load_file`]).
pub fn load_kernel(
    mem: &GuestMemory,
    path: &Path,
    mem_size: u64,
    cached: bool,
) -> Result<LoadedKernel, KernelError> {
    let mut file = open_kernel(path)?;
    load_kernel_from(mem, path, &mut file, mem_size, cached)
}

/// [`load_kernel`] of an open `file` (named `path` in messages); with
/// `cached`, `file` must not be truncated while `mem` lives.
pub fn load_kernel_from(
    mem: &GuestMemory,
    path: &Path,
    file: &mut File,
    mem_size: u64,
    cached: bool,
) -> Result<LoadedKernel, KernelError> {
    let image = inspect_kernel(path, file)?;
    if image.load_end > layout::MMIO_GAP_START {
        return Err(KernelError::TooLarge {
            path: path.to_path_buf(),
            needed: image.load_end,
            limit: layout::MMIO_GAP_START,
        });
    }
    if image.load_end > memory::low_memory_end(mem_size) {
        return Err(KernelError::MemoryTooSmall {
            path: path.to_path_buf(),
            needed: image.load_end,
            mem_size,
        });
    }
    memory::advise_huge_pages(
        mem,
        layout::HIMEM_START,
        image.load_end.saturating_sub(layout::HIMEM_START),
    );
    if image.setup_header.is_some() {
        let result = BzImage::load(mem, Some(GuestAddress(layout::HIMEM_START)), file, None)
            .map_err(|source| KernelError::Load {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(LoadedKernel {
            entry: GuestAddress(result.kernel_load.0 + layout::BZIMAGE_64BIT_ENTRY_OFFSET),
            protocol: BootProtocol::Linux64,
            end: image.load_end,
            image,
        })
    } else {
        let (entry, protocol) = load_elf(mem, path, file, cached)?;
        Ok(LoadedKernel {
            entry,
            protocol,
            end: image.load_end,
            image,
        })
    }
}

/// Loads the PT_LOAD segments of the ELF vmlinux in `file` (already
/// checked by [`inspect_elf`]) at their physical addresses; returns the
/// entry: the PVH entry where a `XEN_ELFNOTE_PHYS32_ENTRY` note gives one,
/// else the ELF entry for the 64-bit boot protocol.
fn load_elf(
    mem: &GuestMemory,
    path: &Path,
    file: &mut File,
    map: bool,
) -> Result<(GuestAddress, BootProtocol), KernelError> {
    let mut head = [0u8; 64];
    if read_at(file, path, 0, &mut head)? < head.len() {
        return Err(KernelError::Truncated {
            path: path.to_path_buf(),
            detail: "shorter than an ELF header".into(),
        });
    }
    let entry = read_u64(&head, 24);
    if entry < layout::HIMEM_START {
        return Err(KernelError::UnsupportedElf {
            path: path.to_path_buf(),
            detail: format!("its entry point {entry:#x} is below 1 MiB"),
        });
    }
    let (phoff, phnum) = (read_u64(&head, 32), usize::from(read_u16(&head, 56)));
    let mut phdrs = vec![0u8; phnum * 56];
    if read_at(file, path, phoff, &mut phdrs)? < phdrs.len() {
        return Err(KernelError::Truncated {
            path: path.to_path_buf(),
            detail: "its program headers are cut short".into(),
        });
    }
    let mut pvh_entry = None;
    for ph in phdrs.chunks_exact(56) {
        const PT_LOAD: u32 = 1;
        const PT_NOTE: u32 = 4;
        let (offset, paddr, filesz) = (read_u64(ph, 8), read_u64(ph, 24), read_u64(ph, 32));
        match read_u32(ph, 0) {
            PT_LOAD => {
                memory::load_file(mem, file, offset, paddr, filesz, map).map_err(|source| {
                    KernelError::Segment {
                        path: path.to_path_buf(),
                        offset,
                        source,
                    }
                })?;
            }
            PT_NOTE if pvh_entry.is_none() => {
                // Notes are small; a segment larger than this is not read.
                const NOTES_MAX: u64 = 64 << 10;
                let mut notes = vec![0u8; filesz.min(NOTES_MAX) as usize];
                let got = read_at(file, path, offset, &mut notes)?;
                pvh_entry = pvh_note(&notes[..got]);
            }
            _ => {}
        }
    }
    Ok(match pvh_entry {
        Some(entry) => (GuestAddress(entry.into()), BootProtocol::Pvh),
        None => (GuestAddress(entry), BootProtocol::Linux64),
    })
}

/// The 32-bit PVH entry point in an ELF note segment's bytes: the
/// descriptor of a note named "Xen" of type `XEN_ELFNOTE_PHYS32_ENTRY`
/// (18). Each note is a 12-byte header (name size, descriptor size, type)
/// and then its name and descriptor, each padded to 4 bytes.
fn pvh_note(notes: &[u8]) -> Option<u32> {
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let mut at = 0usize;
    while at.checked_add(12)? <= notes.len() {
        let namesz = read_u32(notes, at) as usize;
        let descsz = read_u32(notes, at + 4) as usize;
        let kind = read_u32(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.next_multiple_of(4))?;
        let next = desc_at.checked_add(descsz.next_multiple_of(4))?;
        // The whole note must lie inside the segment.
        let fits = desc_at
            .checked_add(descsz)
            .is_some_and(|end| end <= notes.len());
        if kind == XEN_ELFNOTE_PHYS32_ENTRY
            && fits
            && notes.get(name_at..name_at + namesz) == Some(b"Xen\0".as_slice())
            && descsz >= 4
        {
            return notes.get(desc_at..desc_at + 4).map(|d| read_u32(d, 0));
        }
        at = next;
    }
    None
}

/// Writes the NUL-terminated command line at [`layout::CMDLINE_START`].
pub fn load_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<(), KernelError> {
    if cmdline.len() > max {
        return Err(KernelError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains('\0') {
        return Err(KernelError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|source| KernelError::GuestMemory {
            what: "the command line",
            source,
        })
}

/// The e820 map for `mem_size` bytes, with the ACPI tables' range
/// reserved when there are tables.
fn e820_map(mem_size: u64, acpi: Option<&AcpiInfo>) -> Vec<(u64, u64, u32)> {
    let mut map = memory::e820_map(mem_size);
    if let Some(acpi) = acpi {
        acpi.reserve_in_e820(&mut map);
    }
    map
}

/// Fills the zero page for the Linux 64-bit boot protocol; with `acpi`,
/// it points the kernel at the RSDP and reserves the tables.
pub fn configure_zero_page(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
    acpi: Option<&AcpiInfo>,
) -> Result<(), KernelError> {
    let hdr = match kernel.image.setup_header {
        Some(hdr) => hdr,
        None => setup_header {
            boot_flag: layout::KERNEL_BOOT_FLAG_MAGIC,
            header: layout::KERNEL_HDR_MAGIC,
            kernel_alignment: layout::KERNEL_MIN_ALIGNMENT_BYTES,
            ..Default::default()
        },
    };
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = layout::KERNEL_LOADER_OTHER;
    params.hdr.code32_start = layout::HIMEM_START as u32;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem_size, acpi);
    if let Some(acpi) = acpi {
        params.acpi_rsdp_addr = acpi.rsdp_addr;
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|source| KernelError::GuestMemory {
            what: "the zero page",
            source,
        })
}

// Local copies so that they can be `ByteValued` (the orphan rule forbids
// implementing it on linux-loader's types here).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: plain-old-data C struct without padding-dependent invariants.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: plain-old-data C struct.
unsafe impl ByteValued for ModlistEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: plain-old-data C struct.
unsafe impl ByteValued for MemmapEntry {}

/// Fills the PVH start info, module list (the initrd) and memory map.
pub fn configure_pvh(
    mem: &GuestMemory,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
    acpi: Option<&AcpiInfo>,
) -> Result<(), KernelError> {
    const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
    let write_err = |what| move |source| KernelError::GuestMemory { what, source };
    let map = e820_map(mem_size, acpi);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind,
            reserved: 0,
        });
        mem.write_obj(
            entry,
            GuestAddress(layout::PVH_MEMMAP_START + 24 * i as u64),
        )
        .map_err(write_err("the PVH memory map"))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: acpi.map_or(0, |a| a.rsdp_addr),
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(layout::PVH_MODLIST_START))
            .map_err(write_err("the PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    mem.write_obj(StartInfo(info), GuestAddress(layout::PVH_INFO_START))
        .map_err(write_err("the PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn inspect(bytes: &[u8]) -> Result<KernelImage, KernelError> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        inspect_kernel(Path::new("k"), &mut f)
    }

    fn bzimage(version: u16, xloadflags: u16, payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; 1024 + payload];
        b[0x1f1] = 1;
        b[0x1f4..0x1f8].copy_from_slice(&((payload as u32).div_ceil(16)).to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x211] = 1;
        b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        b
    }

    #[test]
    fn a_bzimage_needs_init_size_from_where_it_decompresses() {
        let mut b = bzimage(0x20f, 1, 64);
        // Debian's 6.1 kernel: relocatable, 2 MiB aligned, pref_address
        // 16 MiB, init_size 0x3f98000.
        b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[0x234] = 1;
        b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&0x3f9_8000u32.to_le_bytes());
        assert_eq!(inspect(&b).unwrap().load_end, 0x100_0000 + 0x3f9_8000);
        // Not relocatable: it always runs at pref_address.
        b[0x234] = 0;
        assert_eq!(inspect(&b).unwrap().load_end, 0x100_0000 + 0x3f9_8000);
        // Relocatable with pref_address below the aligned load address.
        b[0x234] = 1;
        b[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(inspect(&b).unwrap().load_end, 0x20_0000 + 0x3f9_8000);
        // Neither field set: the image as loaded at 1 MiB is all it needs.
        assert_eq!(
            inspect(&bzimage(0x20f, 1, 64)).unwrap().load_end,
            0x10_0000 + 64
        );
    }

    #[test]
    fn header_checks() {
        assert!(matches!(inspect(b""), Err(KernelError::Empty(_))));
        assert!(matches!(
            inspect(b"#!/bin/sh\n"),
            Err(KernelError::NotAKernel(_))
        ));
        assert!(inspect(&bzimage(0x20f, 1, 64)).is_ok());
        assert!(matches!(
            inspect(&bzimage(0x20f, 0, 64)),
            Err(KernelError::Bzimage32Only(_))
        ));
        assert!(matches!(
            inspect(&bzimage(0x206, 1, 64)),
            Err(KernelError::Bzimage32Only(_))
        ));
        let mut short = bzimage(0x20f, 1, 64);
        short.truncate(1024 + 10);
        assert!(matches!(
            inspect(&short),
            Err(KernelError::Truncated { .. })
        ));
        assert!(matches!(
            inspect(b"\x7fELF\x02\x01"),
            Err(KernelError::Truncated { .. })
        ));
        let mut elf32 = vec![0u8; 64];
        elf32[..6].copy_from_slice(b"\x7fELF\x01\x01");
        assert!(matches!(
            inspect(&elf32),
            Err(KernelError::UnsupportedElf { .. })
        ));
    }

    /// An ELF note: header, name and descriptor, each padded to 4 bytes.
    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn the_pvh_entry_is_found_among_notes_and_garbage_finds_none() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6]);
        notes.extend(note(b"Xen\0", 17, &0x1234u32.to_le_bytes()));
        notes.extend(note(b"Xen\0", 18, &0x0100_0abcu32.to_le_bytes()));
        assert_eq!(pvh_note(&notes), Some(0x0100_0abc));
        // Cut anywhere, or with sizes that point past the end: no entry,
        // no panic.
        for len in 0..notes.len() - 4 {
            assert_eq!(pvh_note(&notes[..len]), None, "cut at {len}");
        }
        let mut huge = note(b"Xen\0", 18, &[0; 4]);
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_note(&huge), None);
        huge[0..4].copy_from_slice(&4u32.to_le_bytes());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_note(&huge), None);
    }

    /// `bytes` as the file `k` in `dir`.
    fn file_of(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join("k");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_kernel_past_the_mmio_gap_is_too_large_whatever_the_memory() {
        // init_size (at 0x260) says the kernel needs 3 GiB once unpacked.
        let mut image = bzimage(0x20f, 1, 64);
        image[0x260..0x264].copy_from_slice(&0xc000_0000u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        for mem_size in [64 << 20, 8 << 30] {
            let mem = memory::create_guest_memory(mem_size).unwrap();
            let err = load_kernel(&mem, &file_of(&dir, &image), mem_size, false).unwrap_err();
            assert!(matches!(err, KernelError::TooLarge { .. }), "{err}");
            let text = err.to_string();
            assert!(
                !text.contains("raise --mem") && text.contains("smaller kernel"),
                "{text}"
            );
        }
        // One that fits below the gap gets the advice to raise --mem.
        image[0x260..0x264].copy_from_slice(&(256u32 << 20).to_le_bytes());
        let mem = memory::create_guest_memory(64 << 20).unwrap();
        let err = load_kernel(&mem, &file_of(&dir, &image), 64 << 20, false).unwrap_err();
        assert!(err.to_string().contains("raise --mem"), "{err}");
    }

    #[test]
    fn a_fifo_as_kernel_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = crate::regular_file::testing::make_fifo(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mem = memory::create_guest_memory(64 << 20).unwrap();
            let _ = tx.send(load_kernel(&mem, &fifo, 64 << 20, true).map(|_| ()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("load_kernel blocked on a FIFO");
        let err = result.unwrap_err();
        assert!(
            matches!(err, KernelError::NotRegular { kind: "a FIFO", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("fifo") && err.to_string().contains("regular file"));
    }
}
