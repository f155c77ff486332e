//! The ACPI tables as a kernel reads them: RSDP and XSDT lead to every
//! table with good checksums, the FADT is hardware-reduced, the MADT has
//! the vCPUs and the I/O APIC, the DSDT's devices (parsed by a small AML
//! reader) have their windows and interrupts, sizes and bad input are
//! errors, the e820 map reserves the area, and `iasl` accepts the tables
//! where it is installed.

use super::*;
use crate::memory::{create_guest_memory, e820_map};

const MEM: u64 = 64 << 20;

fn slots(n: u32) -> Vec<VirtioMmioSlot> {
    (0..n)
        .map(|i| VirtioMmioSlot {
            addr: 0xd000_0000 + u64::from(i) * 0x1000,
            len: 0x1000,
            gsi: 5 + i,
        })
        .collect()
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Reads the table whose header is at `addr`, checking that it lies in
/// the table area and that its checksum is right.
fn table(mem: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let mut header = [0u8; 36];
    mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
    assert_eq!(&header[..4], signature, "table at {addr:#x}");
    let len = u64::from(u32_at(&header, 4));
    assert!(addr >= layout::ACPI_TABLES_START);
    assert!(addr + len <= layout::ACPI_RSDP_START);
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    assert_eq!(sum(&bytes), 0, "checksum of {signature:?}");
    bytes
}

struct Parsed {
    xsdt: Vec<u8>,
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn write_and_parse(vcpus: u8, devices: &[VirtioMmioSlot]) -> Parsed {
    let mem = create_guest_memory(MEM).unwrap();
    let info = write_acpi_tables(&mem, vcpus, devices).unwrap();
    assert_eq!(info.rsdp_addr, layout::ACPI_RSDP_START);
    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, GuestAddress(info.rsdp_addr))
        .unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 2 * 8);
    let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
    let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
    let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
    Parsed {
        xsdt,
        fadt,
        madt,
        dsdt,
    }
}

#[test]
fn rsdp_and_xsdt_lead_to_every_table_with_good_checksums() {
    let p = write_and_parse(1, &slots(1));
    assert_eq!(p.xsdt[8], 1, "XSDT revision");
    assert!(!p.dsdt.is_empty() && !p.madt.is_empty());
}

#[test]
fn fadt_is_hardware_reduced_and_points_to_the_dsdt() {
    let p = write_and_parse(2, &slots(2));
    let f = &p.fadt;
    assert_eq!(f.len(), 276, "ACPI 6 FADT length");
    assert_eq!(f[8], 6, "FADT major revision");
    assert_eq!(f[131], 5, "FADT minor revision");
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 4), 0, "PWR_BUTTON");
    assert_ne!(flags & (1 << 5), 0, "SLP_BUTTON");
    let iapc = u16_at(f, 109);
    assert_ne!(iapc & (1 << 1), 0, "8042 present");
    assert_ne!(iapc & (1 << 2), 0, "VGA not present");
    assert_ne!(iapc & (1 << 5), 0, "CMOS RTC not present");
    assert_eq!(u32_at(f, 40), 0, "no 32-bit DSDT pointer");
    assert_eq!(u64_at(f, 140), layout::ACPI_TABLES_START, "X_DSDT");
    assert_eq!(u32_at(f, 36), 0, "no FACS (hardware-reduced)");
    assert_eq!(u64_at(f, 132), 0, "no X_FACS");
}

#[test]
fn madt_has_one_local_apic_per_vcpu_and_the_io_apic() {
    for vcpus in [1u8, 4, 32] {
        let m = write_and_parse(vcpus, &[]).madt;
        assert_eq!(u32_at(&m, 36), layout::APIC_DEFAULT_PHYS_BASE);
        assert_eq!(u32_at(&m, 40), 0, "no PC-AT 8259s");
        let mut entries = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let len = usize::from(m[off + 1]);
            assert!(len >= 2 && off + len <= m.len());
            entries.push(&m[off..off + len]);
            off += len;
        }
        assert_eq!(entries.len(), usize::from(vcpus) + 1);
        for (id, e) in entries[..usize::from(vcpus)].iter().enumerate() {
            assert_eq!((e[0], e[1]), (0, 8), "local APIC entry");
            assert_eq!((e[2], e[3]), (id as u8, id as u8), "UID, APIC ID");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        let io = entries[usize::from(vcpus)];
        assert_eq!((io[0], io[1], io[2]), (1, 12, vcpus), "I/O APIC, ID");
        assert_eq!(u32_at(io, 4), layout::IO_APIC_DEFAULT_PHYS_BASE);
        assert_eq!(u32_at(io, 8), 0, "GSI base");
    }
}

/// The AML subset the DSDT uses, decoded independently of the crate.
#[derive(Debug, PartialEq)]
enum Value {
    Int(u64),
    Str(String),
    Buf(Vec<u8>),
}

#[derive(Debug)]
struct AmlDevice {
    name: String,
    objects: Vec<(String, Value)>,
}

impl AmlDevice {
    fn get(&self, name: &str) -> Option<&Value> {
        self.objects.iter().find(|o| o.0 == name).map(|o| &o.1)
    }
}

/// PkgLength: (value, bytes it takes).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let follow = usize::from(b[0] >> 6);
    if follow == 0 {
        return (usize::from(b[0] & 0x3f), 1);
    }
    let mut value = usize::from(b[0] & 0x0f);
    for i in 0..follow {
        value |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (value, follow + 1)
}

/// A data object at `b`: (value, bytes it takes).
fn data_object(b: &[u8]) -> (Value, usize) {
    match b[0] {
        0x00 => (Value::Int(0), 1),
        0x01 => (Value::Int(1), 1),
        0x0a => (Value::Int(u64::from(b[1])), 2),
        0x0b => (Value::Int(u64::from(u16_at(b, 1))), 3),
        0x0c => (Value::Int(u64::from(u32_at(b, 1))), 5),
        0x0e => (Value::Int(u64_at(b, 1)), 9),
        0x0d => {
            let nul = b.iter().position(|c| *c == 0).unwrap();
            (
                Value::Str(String::from_utf8(b[1..nul].to_vec()).unwrap()),
                nul + 1,
            )
        }
        0x11 => {
            let (len, n) = pkg_length(&b[1..]);
            let (size, m) = data_object(&b[1 + n..]);
            let Value::Int(size) = size else {
                panic!("buffer size")
            };
            let data = b[1 + n + m..1 + len].to_vec();
            assert_eq!(data.len() as u64, size);
            (Value::Buf(data), 1 + len)
        }
        op => panic!("unexpected data object opcode {op:#x}"),
    }
}

/// The devices of the DSDT's single `Scope (\_SB_)`.
fn dsdt_devices(dsdt: &[u8]) -> Vec<AmlDevice> {
    let aml = &dsdt[36..];
    assert_eq!(aml[0], 0x10, "ScopeOp");
    let (len, n) = pkg_length(&aml[1..]);
    assert_eq!(1 + len, aml.len(), "the scope is the whole DSDT body");
    assert_eq!(&aml[1 + n..1 + n + 5], b"\\_SB_");
    let mut devices = Vec::new();
    let mut off = 1 + n + 5;
    while off < aml.len() {
        assert_eq!(&aml[off..off + 2], &[0x5b, 0x82], "DeviceOp");
        let (len, n) = pkg_length(&aml[off + 2..]);
        let end = off + 2 + len;
        let mut at = off + 2 + n;
        let name = String::from_utf8(aml[at..at + 4].to_vec()).unwrap();
        at += 4;
        let mut objects = Vec::new();
        while at < end {
            assert_eq!(aml[at], 0x08, "NameOp");
            let obj = String::from_utf8(aml[at + 1..at + 5].to_vec()).unwrap();
            let (value, used) = data_object(&aml[at + 5..end]);
            objects.push((obj, value));
            at += 5 + used;
        }
        assert_eq!(at, end);
        devices.push(AmlDevice { name, objects });
        off = end;
    }
    devices
}

#[derive(Debug, PartialEq)]
enum Resource {
    Mem32Fixed {
        writable: bool,
        base: u32,
        len: u32,
    },
    Irq {
        flags: u8,
        gsi: u32,
    },
    Io {
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
}

/// Decodes a resource template (ACPI 6.5 section 6.4) up to its end tag.
fn resources(buf: &[u8]) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let tag = buf[off];
        if tag & 0x80 != 0 {
            let len = usize::from(u16_at(buf, off + 1));
            let d = &buf[off + 3..off + 3 + len];
            out.push(match tag {
                0x86 => Resource::Mem32Fixed {
                    writable: d[0] == 1,
                    base: u32_at(d, 1),
                    len: u32_at(d, 5),
                },
                0x89 => {
                    assert_eq!(d[1], 1, "one interrupt");
                    Resource::Irq {
                        flags: d[0],
                        gsi: u32_at(d, 2),
                    }
                }
                t => panic!("unexpected large resource {t:#x}"),
            });
            off += 3 + len;
        } else {
            let (kind, len) = (tag >> 3, usize::from(tag & 7));
            let d = &buf[off + 1..off + 1 + len];
            match kind {
                0x0f => {
                    assert_eq!(off + 2, buf.len(), "end tag last");
                    return out;
                }
                0x08 => out.push(Resource::Io {
                    min: u16_at(d, 1),
                    max: u16_at(d, 3),
                    align: d[5],
                    len: d[6],
                }),
                k => panic!("unexpected small resource {k:#x}"),
            }
            off += 1 + len;
        }
    }
}

fn crs(dev: &AmlDevice) -> Vec<Resource> {
    match dev.get("_CRS") {
        Some(Value::Buf(b)) => resources(b),
        other => panic!("{}: _CRS is {other:?}", dev.name),
    }
}

/// Extended interrupt flags: consumer, edge.
const EDGE_HIGH_EXCLUSIVE: u8 = 0b0011;
const EDGE_HIGH_SHARED: u8 = 0b1011;
/// `EisaId ("PNP0501")` and `EisaId ("PNP0303")`, as the ASL compiler encodes them.
const EISA_PNP0501: u64 = 0x0105_d041;
const EISA_PNP0303: u64 = 0x0303_d041;

#[test]
fn dsdt_has_one_lnro0005_device_per_slot_with_its_window_and_gsi() {
    let devices_in = slots(3);
    let dsdt = write_and_parse(1, &devices_in).dsdt;
    assert_eq!(dsdt[8], 2, "DSDT revision 2: 64-bit integers");
    let devices = dsdt_devices(&dsdt);
    let mut names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), devices.len(), "unique device names");
    let virtio: Vec<&AmlDevice> = devices
        .iter()
        .filter(|d| d.get("_HID") == Some(&Value::Str("LNRO0005".into())))
        .collect();
    assert_eq!(virtio.len(), 3);
    for (i, (dev, slot)) in virtio.iter().zip(&devices_in).enumerate() {
        assert_eq!(dev.name, format!("V{i:03}"));
        assert_eq!(dev.get("_UID"), Some(&Value::Int(i as u64)));
        assert_eq!(dev.get("_CCA"), Some(&Value::Int(1)));
        assert_eq!(
            crs(dev),
            vec![
                Resource::Mem32Fixed {
                    writable: true,
                    base: slot.addr as u32,
                    len: slot.len as u32,
                },
                Resource::Irq {
                    flags: EDGE_HIGH_EXCLUSIVE,
                    gsi: slot.gsi,
                },
            ]
        );
    }
}

#[test]
fn dsdt_describes_the_uarts_and_the_i8042_as_a_pc_does() {
    let devices = dsdt_devices(&write_and_parse(1, &[]).dsdt);
    let uarts: Vec<(Option<&Value>, Vec<Resource>)> = devices
        .iter()
        .filter(|d| d.get("_HID") == Some(&Value::Int(EISA_PNP0501)))
        .map(|d| (d.get("_UID"), crs(d)))
        .collect();
    let uart = |port: u16, flags: u8, gsi: u32| {
        vec![
            Resource::Io {
                min: port,
                max: port,
                align: 1,
                len: 8,
            },
            Resource::Irq { flags, gsi },
        ]
    };
    assert_eq!(
        uarts,
        vec![
            (Some(&Value::Int(1)), uart(0x3f8, EDGE_HIGH_SHARED, 4)),
            (Some(&Value::Int(2)), uart(0x2f8, EDGE_HIGH_EXCLUSIVE, 3)),
            (Some(&Value::Int(3)), uart(0x3e8, EDGE_HIGH_SHARED, 4)),
        ]
    );
    let kbd: Vec<&AmlDevice> = devices
        .iter()
        .filter(|d| d.get("_HID") == Some(&Value::Int(EISA_PNP0303)))
        .collect();
    assert_eq!(kbd.len(), 1);
    let io = |port| Resource::Io {
        min: port,
        max: port,
        align: 1,
        len: 1,
    };
    assert_eq!(
        crs(kbd[0]),
        vec![
            io(0x60),
            io(0x64),
            Resource::Irq {
                flags: EDGE_HIGH_EXCLUSIVE,
                gsi: 1
            }
        ]
    );
}

#[test]
fn tables_for_32_vcpus_and_8_devices_fit_their_area() {
    let p = write_and_parse(32, &slots(8));
    assert_eq!(dsdt_devices(&p.dsdt).len(), 8 + 4);
    let tables = build(
        32,
        &slots(8),
        layout::ACPI_TABLES_START,
        layout::ACPI_TABLES_SIZE,
        layout::ACPI_RSDP_START,
    )
    .unwrap();
    let (addr, bytes, _) = &tables.blobs[3];
    assert!(addr + bytes.len() as u64 <= layout::ACPI_RSDP_START);
    // The MP table's KiB is untouched.
    assert!(tables.blobs.iter().all(|b| b.0 >= layout::BASE_MEMORY_END));
}

#[test]
fn tables_too_large_for_the_area_are_an_error() {
    let err = build(32, &slots(8), 0x1000, 512, 0x2000)
        .err()
        .expect("tables larger than 512 bytes");
    assert!(matches!(err, AcpiError::TooLarge { available: 512, .. }));
    assert!(err.to_string().contains("use fewer devices"), "{err}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mem = create_guest_memory(MEM).unwrap();
    let write = |vcpus, devs: &[VirtioMmioSlot]| write_acpi_tables(&mem, vcpus, devs);
    assert!(matches!(write(0, &[]), Err(AcpiError::CpuCount(0))));
    assert!(matches!(write(33, &[]), Err(AcpiError::CpuCount(33))));
    let slot = |addr, len, gsi| VirtioMmioSlot { addr, len, gsi };
    assert!(matches!(
        write(1, &[slot(0xffff_f000, 0x2000, 5)]),
        Err(AcpiError::SlotOutside32Bit { index: 0, .. })
    ));
    assert!(matches!(
        write(1, &[slot(u64::MAX, 2, 5)]),
        Err(AcpiError::SlotOutside32Bit { .. })
    ));
    assert!(matches!(
        write(1, &[slot(0xd000_0000, 0, 5)]),
        Err(AcpiError::SlotOutside32Bit { .. })
    ));
    assert!(matches!(
        write(1, &[slot(0xd000_0000, 0x1000, 24)]),
        Err(AcpiError::GsiOutOfRange { gsi: 24, .. })
    ));
    assert!(matches!(
        write(
            1,
            &[slot(0xd000_0000, 0x1000, 5), slot(0xd000_0800, 0x1000, 6)]
        ),
        Err(AcpiError::SlotsOverlap {
            first: 0,
            second: 1
        })
    ));
    let many: Vec<VirtioMmioSlot> = (0..=MAX_VIRTIO_SLOTS as u64)
        .map(|i| slot(0x1000 * i, 0x1000, 5))
        .collect();
    assert!(matches!(
        write(1, &many),
        Err(AcpiError::TooManyDevices { count: 1001 })
    ));
}

#[test]
fn the_tables_are_reserved_in_e820_next_to_the_mp_table() {
    let mem = create_guest_memory(MEM).unwrap();
    let info = write_acpi_tables(&mem, 1, &slots(1)).unwrap();
    let mut map = e820_map(MEM);
    info.reserve_in_e820(&mut map);
    assert_eq!(
        map,
        vec![
            (0, layout::MPTABLE_START, layout::E820_RAM),
            (
                layout::MPTABLE_START,
                layout::HIMEM_START - layout::MPTABLE_START,
                layout::E820_RESERVED
            ),
            (
                layout::HIMEM_START,
                MEM - layout::HIMEM_START,
                layout::E820_RAM
            ),
        ]
    );
    assert!(info.reserved.contains(&info.rsdp_addr));
    // Reserving over RAM cuts the RAM entry in two.
    let mut map = vec![(0, 0x10_0000, layout::E820_RAM)];
    AcpiInfo {
        rsdp_addr: 0,
        reserved: 0x4000..0x8000,
    }
    .reserve_in_e820(&mut map);
    assert_eq!(
        map,
        vec![
            (0, 0x4000, layout::E820_RAM),
            (0x4000, 0x4000, layout::E820_RESERVED),
            (0x8000, 0xf_8000, layout::E820_RAM),
        ]
    );
}
/// Disassembles every table with the ACPICA compiler and compiles the
/// DSDT back, which proves the AML is well-formed. Skipped without
/// `iasl` (Debian package `acpica-tools`, installed by
/// `scripts/install-deps`).
#[test]
fn iasl_accepts_the_tables() {
    let iasl_present = std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !iasl_present {
        println!("skipped: iasl not found (apt-get install acpica-tools)");
        return;
    }
    let p = write_and_parse(4, &slots(3));
    let dir = tempfile::tempdir().unwrap();
    let iasl = |args: &[&str]| {
        let out = std::process::Command::new("iasl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl {args:?}:\n{text}");
        text
    };
    for (name, bytes) in [
        ("dsdt", &p.dsdt),
        ("facp", &p.fadt),
        ("apic", &p.madt),
        ("xsdt", &p.xsdt),
    ] {
        std::fs::write(dir.path().join(format!("{name}.dat")), bytes).unwrap();
        iasl(&["-d", &format!("{name}.dat")]);
    }
    let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
    for needle in [
        "Device (V002)",
        "\"LNRO0005\"",
        "Memory32Fixed (ReadWrite,",
        "0xD0002000",
        "EisaId (\"PNP0501\")",
        "EisaId (\"PNP0303\")",
    ] {
        assert!(dsl.contains(needle), "{needle} not in:\n{dsl}");
    }
    let facp = std::fs::read_to_string(dir.path().join("facp.dsl")).unwrap();
    assert!(facp.contains("Hardware Reduced (V5) : 1"), "{facp}");
    let compiled = iasl(&["-p", "recompiled", "dsdt.dsl"]);
    assert!(compiled.contains("0 Errors"), "{compiled}");
}
