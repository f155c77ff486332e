//! Boots synthetic guests under KVM and checks what the VMM delivers.
//! Runs where `/dev/kvm` is usable (also under kvm_pvm: the guests are tiny);
//! elsewhere each test prints `skipped (unavailable): <reason>` (a failure
//! in strict mode, `MICRORUN_REQUIRE_ALL=1`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{build_guest, symbol_address, Capture, GuestFormat};
use vmm::{InitrdPart, KvmHost, VmConfig, VmEnd, VmmError};

macro_rules! require_kvm {
    () => {
        if !common::can_boot_guests() {
            return;
        }
    };
}

struct Run {
    result: Result<vmm::Outcome, VmmError>,
    stdout: Capture,
    console: Capture,
}

fn config(kernel: &Path, cmdline: &str) -> VmConfig {
    VmConfig {
        kernel: kernel.to_path_buf(),
        kernel_cached: false,
        initrd: Vec::new(),
        cmdline: cmdline.into(),
        mem_size: 128 << 20,
        vcpus: 1,
        timeout: Some(Duration::from_secs(20)),
        forward_stdin: false,
        irqchip: vmm::IrqChip::default(),
        console: Box::new(std::io::sink()),
        stdout: Box::new(std::io::sink()),
        process_start: Instant::now(),
        // The filter would stay on the test's thread after the run.
        seccomp: false,
        virtio: vmm::VirtioOptions::default(),
        net_backend: None,
    }
}

fn boot(mut cfg: VmConfig) -> Run {
    let (stdout, console) = (Capture::default(), Capture::default());
    cfg.stdout = Box::new(stdout.clone());
    cfg.console = Box::new(console.clone());
    Run {
        result: vmm::run(cfg),
        stdout,
        console,
    }
}

fn end(run: &Run) -> VmEnd {
    match &run.result {
        Ok(outcome) => outcome.end.clone(),
        Err(e) => panic!("run failed: {e}"),
    }
}

fn error(run: Run) -> String {
    match run.result {
        Ok(outcome) => panic!("expected an error, got {:?}", outcome.end),
        Err(e) => e.to_string(),
    }
}

#[test]
fn exit_statuses_from_elf_and_bzimage() {
    require_kvm!();
    for format in [GuestFormat::Elf, GuestFormat::BzImage] {
        let kernel = build_guest("status", format);
        for status in [0u8, 1, 255] {
            let run = boot(config(&kernel, &status.to_string()));
            assert_eq!(end(&run), VmEnd::Status(status), "{format:?}");
            assert_eq!(end(&run).exit_code(), status);
        }
    }
}

#[test]
fn stdout_is_exact_and_console_is_separate() {
    require_kvm!();
    let kernel = build_guest("status", GuestFormat::BzImage);
    let run = boot(config(&kernel, "3"));
    assert_eq!(end(&run), VmEnd::Status(3));
    let mut expected: Vec<u8> = (0..=255u8).collect();
    expected.extend_from_slice(b"stdout-end\n");
    assert_eq!(run.stdout.bytes(), expected);
    assert_eq!(run.console.text(), "console: hello from the guest\n");
    let t = run.result.unwrap().timings;
    let (ready, first, init, status, exit) = (
        t.vm_ready.unwrap(),
        t.first_run.unwrap(),
        t.init_event.unwrap(),
        t.status.unwrap(),
        t.exit.unwrap(),
    );
    assert!(t.process_start <= ready && ready <= first && first <= init);
    assert!(init <= status && status <= exit);
}

/// (address, size, type) of one e820 entry.
type E820Entry = (u64, u64, u32);

/// Command line, initrd address, size and byte sum, and the e820 map.
fn parse_bootinfo(out: &str) -> (String, u64, u64, u32, Vec<E820Entry>) {
    let lines: Vec<&str> = out.lines().collect();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    let count = hex(lines[4]) as usize;
    let e820 = lines[5..5 + count]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (hex(f[0]), hex(f[1]), hex(f[2]) as u32)
        })
        .collect();
    (
        lines[0].to_string(),
        hex(lines[1]),
        hex(lines[2]),
        hex(lines[3]) as u32,
        e820,
    )
}

#[test]
fn guest_sees_cmdline_initrd_and_e820() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let file_part = dir.path().join("part.bin");
    let file_bytes: Vec<u8> = (0..3001u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file_part, &file_bytes).unwrap();
    let bytes_part = vec![0xabu8; 5];
    for format in [GuestFormat::Elf, GuestFormat::BzImage] {
        let kernel = build_guest("bootinfo", format);
        let mut cfg = config(&kernel, "console=ttyS0 hello=world");
        cfg.initrd = vec![
            InitrdPart::Bytes(bytes_part.clone()),
            InitrdPart::File(file_part.clone()),
        ];
        let mem_size = 64u64 << 20;
        cfg.mem_size = mem_size;
        let run = boot(cfg);
        assert_eq!(end(&run), VmEnd::Status(0));
        let (cmdline, addr, size, sum, e820) = parse_bootinfo(&run.stdout.text());
        assert_eq!(cmdline, "console=ttyS0 hello=world");
        // Parts are 4-byte aligned: 5 bytes, 3 of padding, then the file.
        let mut expected = bytes_part.clone();
        expected.extend_from_slice(&[0; 3]);
        expected.extend_from_slice(&file_bytes);
        assert_eq!(size, expected.len() as u64);
        assert_eq!(sum, expected.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(addr % 4096, 0);
        assert!(
            addr + size <= mem_size && addr + size > mem_size - 8192,
            "initrd as high as possible"
        );
        let ram: Vec<_> = e820.iter().filter(|e| e.2 == 1).collect();
        assert_eq!(ram.first().unwrap().0, 0);
        let last = ram.last().unwrap();
        assert_eq!(last.0 + last.1, mem_size);
        let covered: u64 = e820.iter().map(|e| e.1).sum();
        assert_eq!(covered + (0x10_0000 - 0xa_0000), mem_size);
    }
}

/// What the PVH guest printed: the command line, the start info's version,
/// the module count, the first module's address, size and byte sum, and
/// the memory map.
struct PvhInfo {
    cmdline: String,
    version: u64,
    modules: u64,
    module: (u64, u64, u32),
    memmap: Vec<E820Entry>,
}

fn parse_pvh(out: &str) -> PvhInfo {
    let lines: Vec<&str> = out.lines().collect();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let count = hex(lines[6]) as usize;
    assert_eq!(lines.len(), 7 + count, "{out}");
    let memmap = lines[7..7 + count]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (hex(f[0]), hex(f[1]), hex(f[2]) as u32)
        })
        .collect();
    PvhInfo {
        cmdline: lines[0].to_string(),
        version: hex(lines[1]),
        modules: hex(lines[2]),
        module: (hex(lines[3]), hex(lines[4]), hex(lines[5]) as u32),
        memmap,
    }
}

#[test]
fn pvh_guest_sees_start_info_cmdline_initrd_and_memmap() {
    require_kvm!();
    let kernel = build_guest("pvh", GuestFormat::Pvh);
    let mut cfg = config(&kernel, "console=ttyS0 pvh=yes");
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 253) as u8).collect();
    cfg.initrd = vec![InitrdPart::Bytes(initrd.clone())];
    let mem_size = 64u64 << 20;
    cfg.mem_size = mem_size;
    let run = boot(cfg);
    // Status 1 means a wrong magic; a guest entered in 64-bit mode instead
    // of by PVH would not get as far as reporting.
    assert_eq!(end(&run), VmEnd::Status(0), "stdout: {}", run.stdout.text());
    let info = parse_pvh(&run.stdout.text());
    assert_eq!(info.cmdline, "console=ttyS0 pvh=yes");
    assert!(info.version >= 1, "the memory map needs version 1");
    assert_eq!(info.modules, 1);
    let (addr, size, sum) = info.module;
    assert_eq!(size, initrd.len() as u64);
    assert_eq!(sum, initrd.iter().map(|b| u32::from(*b)).sum::<u32>());
    assert_eq!(addr % 4096, 0);
    assert!(
        addr + size <= mem_size && addr + size > mem_size - 8192,
        "initrd as high as possible: {addr:#x}+{size:#x}"
    );
    let ram: Vec<_> = info.memmap.iter().filter(|e| e.2 == 1).collect();
    assert_eq!(ram.first().unwrap().0, 0);
    let last = ram.last().unwrap();
    assert_eq!(last.0 + last.1, mem_size);
    assert!(ram.iter().any(|e| e.0 <= addr && addr + size <= e.0 + e.1));
    let covered: u64 = info.memmap.iter().map(|e| e.1).sum();
    assert_eq!(covered + (0x10_0000 - 0xa_0000), mem_size);
}

#[test]
fn pvh_guest_without_initrd_has_no_modules() {
    require_kvm!();
    let kernel = build_guest("pvh", GuestFormat::Pvh);
    let run = boot(config(&kernel, ""));
    assert_eq!(end(&run), VmEnd::Status(0), "stdout: {}", run.stdout.text());
    let out = run.stdout.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["", "00000001", "00000000"], "{out}");
}

#[test]
fn instruction_kvm_cannot_run_is_a_guest_error() {
    require_kvm!();
    let kernel = build_guest("fault", GuestFormat::Elf);
    let rip = symbol_address(&kernel, "fault");
    let run = boot(config(&kernel, ""));
    let mut stderr = std::io::stderr();
    match vmm::kvm_host() {
        KvmHost::Emulated(why) => {
            let _ = writeln!(
                stderr,
                "checking the guest-error path: popcnt at CPL0 fails under emulated KVM ({why})"
            );
            let VmEnd::GuestError(msg) = end(&run) else {
                panic!("expected a guest error, got {:?}", end(&run));
            };
            assert_eq!(VmEnd::GuestError(msg.clone()).exit_code(), 125);
            assert!(msg.contains("KVM_EXIT_INTERNAL_ERROR"), "{msg}");
            assert!(msg.contains(&format!("RIP {rip:#x}")), "{msg}");
            // popcnt %eax, %ecx
            assert!(msg.contains("instruction bytes: f3 0f b8 c8"), "{msg}");
        }
        _ => {
            let _ = writeln!(
                stderr,
                "checking that popcnt runs natively under hardware KVM (the guest-error path \
                 needs emulated KVM)"
            );
            assert_eq!(end(&run), VmEnd::Status(3));
        }
    }
}

#[test]
fn guest_finds_every_vcpu_in_the_mp_table() {
    require_kvm!();
    let kernel = build_guest("cpus", GuestFormat::Elf);
    for vcpus in [1u8, 3] {
        let mut cfg = config(&kernel, "");
        cfg.vcpus = vcpus;
        let run = boot(cfg);
        assert_eq!(end(&run), VmEnd::Status(0));
        let ids: Vec<String> = (0..vcpus).map(|i| format!("{i:08x}")).collect();
        assert_eq!(run.stdout.text().lines().collect::<Vec<_>>(), ids);
    }
}

#[test]
fn timeout_stops_a_spinning_guest() {
    require_kvm!();
    let kernel = build_guest("spin", GuestFormat::Elf);
    let mut cfg = config(&kernel, "");
    cfg.vcpus = 2;
    cfg.timeout = Some(Duration::from_millis(300));
    let start = Instant::now();
    let run = boot(cfg);
    let elapsed = start.elapsed();
    assert_eq!(end(&run), VmEnd::Timeout);
    assert_eq!(end(&run).exit_code(), 124);
    assert!(elapsed < Duration::from_millis(1300), "took {elapsed:?}");
}

#[test]
fn reset_without_status_is_125() {
    require_kvm!();
    let kernel = build_guest("reset", GuestFormat::BzImage);
    let run = boot(config(&kernel, ""));
    assert_eq!(end(&run), VmEnd::Reset);
    assert_eq!(end(&run).exit_code(), 125);
    assert_eq!(run.console.text(), "r");
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_kernels_are_clear_errors() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(build_guest("status", GuestFormat::BzImage)).unwrap();
    let elf = std::fs::read(build_guest("status", GuestFormat::Elf)).unwrap();
    let missing = dir.path().join("nope");
    let empty = write_file(dir.path(), "empty", b"");
    let text = write_file(dir.path(), "text", b"#!/bin/sh\necho not a kernel\n");
    let truncated = write_file(dir.path(), "trunc", &good[..good.len() - 100]);
    let truncated_elf = write_file(dir.path(), "trunc.elf", &elf[..elf.len() / 2]);
    let mut old = good.clone();
    old[0x236] = 0; // no XLF_KERNEL_64
    let old = write_file(dir.path(), "bz32", &old);
    let cases: [(&Path, &str); 6] = [
        (&missing, "not found"),
        (&empty, "empty"),
        (&text, "not a kernel"),
        (&truncated, "truncated"),
        (&truncated_elf, "truncated"),
        (&old, "32-bit-only"),
    ];
    for (path, needle) in cases {
        let msg = error(boot(config(path, "0")));
        assert!(
            msg.contains(needle) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
}

#[test]
fn unreadable_kernel_mentions_ubuntu() {
    require_kvm!();
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if is_root.unwrap_or(true) {
        test_support::skip_not_applicable!("running as root, which can read any file");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "vmlinuz", b"x");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let msg = error(boot(config(&path, "0")));
    assert!(
        msg.contains("permission denied") && msg.contains("Ubuntu"),
        "{msg}"
    );
}

#[test]
fn bad_sizes_are_clear_errors() {
    require_kvm!();
    let kernel = build_guest("status", GuestFormat::Elf);
    let mut cfg = config(&kernel, "0");
    cfg.mem_size = 8 << 20;
    cfg.initrd = vec![InitrdPart::Bytes(vec![0; 9 << 20])];
    let msg = error(boot(cfg));
    assert!(
        msg.contains(&(9u64 << 20).to_string()) && msg.contains(&(8u64 << 20).to_string()),
        "{msg}"
    );

    let mut cfg = config(&kernel, "0");
    cfg.mem_size = 4096;
    assert!(error(boot(cfg)).contains("too small"));

    // A kernel that needs more memory than configured.
    let dir = tempfile::tempdir().unwrap();
    let mut big = std::fs::read(build_guest("status", GuestFormat::BzImage)).unwrap();
    big[0x260..0x264].copy_from_slice(&(64u32 << 20).to_le_bytes()); // init_size
    let big = write_file(dir.path(), "big", &big);
    let mut cfg = config(&big, "0");
    cfg.mem_size = 32 << 20;
    let msg = error(boot(cfg));
    assert!(msg.contains("too small for kernel"), "{msg}");

    for vcpus in [0u8, 255] {
        let mut cfg = config(&kernel, "0");
        cfg.vcpus = vcpus;
        assert!(error(boot(cfg)).contains("vCPUs"));
    }
}

#[test]
fn a_hostile_virtio_driver_cannot_break_the_vmm() {
    require_kvm!();
    // The guest reports 0 once it is done (1 or 2: no console in the
    // window): the VMM answered every access.
    survives_the_hostile_driver(with_console("virtio_garbage"));
}

#[test]
fn a_hostile_net_driver_cannot_break_the_vmm_while_passt_floods_it() {
    require_kvm!();
    let kernel = build_guest("virtio_net_garbage", GuestFormat::Elf);
    let (ours, passt) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cfg = config(&kernel, "");
    let mtu = 1500;
    cfg.virtio = vmm::VirtioOptions {
        devices: vec![vmm::DeviceSpec::Net(vmm::NetSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu,
        })],
        acpi: false,
    };
    cfg.net_backend = Some(ours.into());
    cfg.cmdline = with_devices(&cfg);
    // passt: frames of every size in, whatever comes out read and checked.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (passt, done) = (passt.try_clone().unwrap(), done.clone());
        passt.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut wire = Vec::new();
            for len in [14usize, 60, 1514, 1515, 9000] {
                wire.extend((len as u32).to_be_bytes());
                wire.extend(std::iter::repeat_n(0xa5, len));
            }
            let mut at = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match (&passt).write(&wire[at..]) {
                    Ok(n) => at = (at + n) % wire.len(),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let read = std::thread::spawn(move || {
        use std::io::Read;
        let mut passt = passt;
        let mut lengths = Vec::new();
        let mut prefix = [0u8; 4];
        while passt.read_exact(&mut prefix).is_ok() {
            let len = u32::from_be_bytes(prefix) as usize;
            lengths.push(len);
            let mut frame = vec![0u8; len.min(1 << 20)];
            if passt.read_exact(&mut frame).is_err() {
                break;
            }
        }
        lengths
    });
    survives_the_hostile_driver(cfg);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    // The device's end of the socket closed with the VM.
    let lengths = read.join().unwrap();
    // The MTU, the Ethernet header and a VLAN tag at most.
    let max = usize::from(mtu)
        + vmm::devices::virtio::net::ETH_HLEN
        + vmm::devices::virtio::net::VLAN_HLEN;
    assert!(
        lengths.iter().all(|len| (14..=max).contains(len)),
        "frames out of range: {lengths:?}"
    );
}

#[test]
fn a_virtio_driver_breaking_the_queue_rules_is_refused() {
    require_kvm!();
    let run = boot(with_console("virtio_rules"));
    // 0: a queue with its driver area at 0 was refused at DRIVER_OK
    // (DEVICE_NEEDS_RESET, a configuration interrupt), and both chains
    // came back; only the plain one was read.
    assert_eq!(
        end(&run),
        VmEnd::Status(0),
        "console: {}",
        run.console.text()
    );
    assert_eq!(run.stdout.text(), "direct\n");
}

#[test]
fn a_driver_reads_a_read_only_disk_and_cannot_write_it() {
    require_kvm!();
    let kernel = build_guest("virtio_blk", GuestFormat::Elf);
    let mut image = vec![0u8; 64 * 512];
    let line = b"sector two: hello from the disk\n";
    image[1024..1024 + line.len()].copy_from_slice(line);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &image).unwrap();
    let mut cfg = config(&kernel, "");
    cfg.virtio = vmm::VirtioOptions {
        devices: vec![vmm::DeviceSpec::Block(vmm::BlockSpec {
            path: file.path().to_owned(),
            read_only: true,
        })],
        acpi: false,
    };
    cfg.cmdline = with_devices(&cfg);
    // Without the filters, and with them (the vCPU's allows `pread64` on
    // the image's descriptor alone, and no `pwrite64`: the disk is
    // read-only), on a thread of its own that keeps the supervisor's.
    for seccomp in [false, true] {
        let mut cfg = config(&kernel, &cfg.cmdline);
        cfg.virtio = vmm::VirtioOptions {
            devices: vec![vmm::DeviceSpec::Block(vmm::BlockSpec {
                path: file.path().to_owned(),
                read_only: true,
            })],
            acpi: false,
        };
        cfg.seccomp = seccomp;
        let run = std::thread::spawn(move || boot(cfg)).join().unwrap();
        // 0: the capacity, the read, the serial, and IOERR for the write
        // and for the read past the end.
        assert_eq!(
            end(&run),
            VmEnd::Status(0),
            "seccomp {seccomp}; console: {}",
            run.console.text()
        );
        assert_eq!(
            run.stdout.text(),
            "sector two: hello from the disk\nmicrorun0"
        );
        assert!(
            std::fs::read(file.path()).unwrap() == image,
            "the image changed"
        );
    }
}

/// A configuration for the synthetic guest `name` with a virtio console, the VM's only
/// virtio device (so in the first slot).
fn with_console(name: &str) -> VmConfig {
    let kernel = build_guest(name, GuestFormat::Elf);
    let mut cfg = config(&kernel, "");
    cfg.virtio = vmm::VirtioOptions {
        devices: vec![vmm::DeviceSpec::Console],
        acpi: false,
    };
    cfg.cmdline = with_devices(&cfg);
    cfg
}

/// `cfg`'s command line with its virtio devices named in front, as a
/// kernel with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` finds them.
fn with_devices(cfg: &vmm::VmConfig) -> String {
    let mut words = cfg.virtio.cmdline_devices();
    words.push(cfg.cmdline.clone());
    words.join(" ")
}

/// Boots a hostile driver (`virtio_garbage.inc`) for at most two minutes
/// and checks it got to the end of its rounds: status 0.
fn survives_the_hostile_driver(mut cfg: vmm::VmConfig) {
    cfg.timeout = Some(Duration::from_secs(120));
    let run = boot(cfg);
    assert_eq!(
        end(&run),
        VmEnd::Status(0),
        "console: {}",
        run.console.text()
    );
}

#[test]
fn a_hostile_9p_driver_cannot_break_the_vmm_or_leave_its_share() {
    require_kvm!();
    let kernel = build_guest("virtio_9p_garbage", GuestFormat::Elf);
    let scratch = tempfile::tempdir().unwrap();
    let share = scratch.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(scratch.path().join("outside"), b"outside").unwrap();
    let mut cfg = config(&kernel, "");
    cfg.virtio = vmm::VirtioOptions {
        devices: vec![vmm::DeviceSpec::Share(vmm::SharedDir {
            source: share,
            tag: "garbage".into(),
            read_only: false,
            guest_uid: 0,
            guest_gid: 0,
        })],
        acpi: false,
    };
    cfg.cmdline = with_devices(&cfg);
    // (The 9p thread's seccomp filter is tested with a whole session in
    // the device's unit tests.)
    survives_the_hostile_driver(cfg);
    let mut names: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "share"]);
    assert_eq!(
        std::fs::read(scratch.path().join("outside")).unwrap(),
        b"outside"
    );
}
