//! Builds the synthetic guests in `vmm/tests/guests/` with GNU `as` and `ld`,
//! as an ELF and as a minimal bzImage. Self-contained (std, tempfile and
//! test-support) so that other crates' tests can include it with `#[path]`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Collects what a VM writes to one of its outputs.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// Why synthetic guests cannot boot here, if they cannot: no usable
/// `/dev/kvm`, or binutils missing.
pub fn vm_skip_reason() -> Option<String> {
    if let vmm::KvmHost::Unavailable(why) = vmm::kvm_host() {
        return Some(why);
    }
    missing_tools()
}

/// Whether synthetic guests can boot here; where they cannot, the calling
/// test is reported unavailable (a skip, or a failure in strict mode: any
/// machine with KVM and binutils runs these) and should return.
#[track_caller]
pub fn can_boot_guests() -> bool {
    match vm_skip_reason() {
        Some(why) => {
            test_support::skip_unavailable!("{why}");
            false
        }
        None => true,
    }
}

/// How a synthetic guest is packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFormat {
    /// An ELF executable entered at `_start` in 64-bit mode.
    Elf,
    /// A minimal bzImage: setup header plus the flat code, 64-bit entry at +0x200.
    BzImage,
    /// An ELF executable whose `.note.Xen` section (the guest defines it)
    /// becomes a `PT_NOTE` segment, so that the VMM boots it by PVH.
    Pvh,
}

/// Where the guests are linked (and the bzImage's `code32_start`).
const LOAD_ADDRESS: u64 = 0x10_0000;

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// A short reason when `as`, `ld`, `objcopy` or `nm` is missing, for a skip.
pub fn missing_tools() -> Option<String> {
    for tool in ["as", "ld", "objcopy", "nm"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` (binutils) is not installed: install binutils (scripts/install-deps \
                 installs it with build-essential)"
            ));
        }
    }
    None
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles `tests/guests/<name>.S` and packages it; returns the kernel
/// file (in a directory under the target directory that is kept).
pub fn build_guest(name: &str, format: GuestFormat) -> PathBuf {
    build_guest_in(&guests_dir(), name, format)
}

/// [`build_guest`] for a caller in another package (which has another
/// `CARGO_MANIFEST_DIR`): `guests` is the path of `vmm/tests/guests`.
pub fn build_guest_in(guests: &Path, name: &str, format: GuestFormat) -> PathBuf {
    // Under the target directory (not /tmp) so that `cargo clean` removes them.
    let base = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("vmm-guest-")
        .tempdir_in(base)
        .expect("create a temporary directory")
        .keep();
    let object = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let script = dir.join("guest.ld");
    std::fs::write(&script, linker_script(format)).expect("write the linker script");
    run(Command::new("as")
        .arg("--64")
        .arg("-I")
        .arg(guests)
        .arg("-o")
        .arg(&object)
        .arg(guests.join(format!("{name}.S"))));
    run(Command::new("ld")
        .args([
            "-static",
            "-nostdlib",
            "--build-id=none",
            "-z",
            "noexecstack",
            "-T",
        ])
        .arg(&script)
        .arg("-o")
        .arg(&elf)
        .arg(&object));
    match format {
        GuestFormat::Elf | GuestFormat::Pvh => elf,
        GuestFormat::BzImage => {
            let flat = dir.join(format!("{name}.bin"));
            run(Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(&flat));
            let code = std::fs::read(&flat).expect("read the flat guest");
            let image = dir.join(format!("{name}.bzImage"));
            std::fs::write(&image, bzimage(&code)).expect("write the bzImage");
            image
        }
    }
}

/// Everything at [`LOAD_ADDRESS`] in one loadable segment; for
/// [`GuestFormat::Pvh`] the Xen note also goes in a `PT_NOTE` segment, where
/// a loader looks for the PVH entry.
fn linker_script(format: GuestFormat) -> String {
    let code = "*(.text*) *(.rodata*) *(.data*) *(.bss*)";
    let discard = "/DISCARD/ : { *(.note*) *(.comment*) *(.eh_frame*) }";
    match format {
        GuestFormat::Pvh => format!(
            "ENTRY(_start)\nPHDRS {{ text PT_LOAD FLAGS(7); note PT_NOTE FLAGS(4); }}\n\
             SECTIONS {{\n  . = {LOAD_ADDRESS:#x};\n  .text : {{ {code} }} :text\n  \
             .note.Xen : {{ *(.note.Xen) }} :text :note\n  {discard}\n}}\n"
        ),
        GuestFormat::Elf | GuestFormat::BzImage => format!(
            "ENTRY(_start)\nSECTIONS {{\n  . = {LOAD_ADDRESS:#x};\n  .text : {{ {code} }}\n  \
             {discard}\n}}\n"
        ),
    }
}

/// The address of `symbol` in the linked guest `elf` (a global label).
pub fn symbol_address(elf: &Path, symbol: &str) -> u64 {
    let out = Command::new("nm")
        .arg(elf)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm on {}: {e}", elf.display()));
    assert!(out.status.success(), "nm {} failed", elf.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [addr, _, name] if *name == symbol => u64::from_str_radix(addr, 16).ok(),
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no symbol {symbol} in {}", elf.display()))
}

/// Wraps flat code (loaded at 1 MiB, 64-bit entry at +0x200) in a bzImage
/// with one setup sector and boot protocol 2.15.
pub fn bzimage(code: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut image = vec![0u8; setup_len];
    let mut put =
        |offset: usize, bytes: &[u8]| image[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[SETUP_SECTS]);
    put(0x1f4, &(code.len().div_ceil(16) as u32).to_le_bytes()); // syssize
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // version 2.15
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &(LOAD_ADDRESS as u32).to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2048u32.to_le_bytes()); // cmdline_size
    let init_size = (code.len() as u32).next_multiple_of(4096);
    put(0x260, &init_size.to_le_bytes());
    image.extend_from_slice(code);
    // syssize counts 16-byte paragraphs: pad to a whole one, as kernels do.
    image.resize(setup_len + code.len().next_multiple_of(16), 0);
    image
}
