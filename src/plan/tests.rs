//! The plan's decisions, on requests that need no real kernel: a kernel
//! file that is not one, with a build configuration beside it.

use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::binds::{parse_bind, Access};
use crate::spec::Rootfs;

/// A project-kernel-like configuration: everything built in, devices named
/// on the command line.
const BUILT_IN: &str = "CONFIG_VIRTIO=y\nCONFIG_VIRTIO_MMIO=y\n\
    CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_NET_9P=y\n\
    CONFIG_NET_9P_VIRTIO=y\nCONFIG_9P_FS=y\n# CONFIG_ACPI is not set\n";

/// A scratch directory with `bzImage` (not a kernel: no release, no
/// memory needs), `config` beside it, and a tiny newc archive `root.cpio`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(config: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bzImage"), b"not a kernel").unwrap();
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("root.cpio"), b"070701 a tiny archive").unwrap();
        std::fs::create_dir(dir.path().join("share")).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn request(&self, engine: Engine) -> Request {
        Request {
            rootfs: Rootfs::Cpio(self.path("root.cpio")),
            command: vec!["true".into()],
            env: vec![],
            workdir: None,
            timeout: None,
            forward_stdin: false,
            tty: false,
            stdin_terminal: None,
            no_init: false,
            binds: vec![],
            verbosity: Verbosity::Normal,
            started: Instant::now(),
            engine,
            kernel: Some(self.path("bzImage")),
            mem: None,
            cpus: 1,
            cmdline: Some("  foo=1 ".into()),
            accel: Accel::Tcg,
            user: None,
            root: None,
            net: None,
        }
    }

    fn with_share(&self, engine: Engine) -> Request {
        let share = format!("{}:/data", self.path("share").display());
        Request {
            binds: vec![parse_bind(&share, Access::ReadOnly).unwrap()],
            ..self.request(engine)
        }
    }
}

fn vm_of(plan: &Plan) -> &VmPlan {
    plan.vm().expect("a VM plan")
}

#[test]
fn the_kvm_engine_gets_the_devices_their_slots_and_guest_inits_records() {
    let scratch = Scratch::new(BUILT_IN);
    let plan = make(scratch.with_share(Engine::Kvm)).unwrap();
    assert_eq!(plan.engine(), Engine::Kvm);
    let vm = vm_of(&plan);
    assert_eq!(vm.devices.devices.len(), 2);
    assert_eq!(vm.devices.devices[0], vmm::DeviceSpec::Console);
    assert!(!vm.devices.acpi);
    assert_eq!(
        vm.cmdline.to_string(),
        "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
         console=ttyS0 reboot=k panic=-1 8250.nr_uarts=3 i8042.noaux i8042.nomux \
         i8042.nopnp i8042.dumbkbd pty.legacy_count=0 quiet loglevel=1 rdinit=/.microrun/init \
         init=/.microrun/init foo=1"
    );
    let config = &plan.run_config;
    assert!(config.virtio_ports && !config.relay_output);
    assert_eq!(config.mounts.len(), 1);
    assert_eq!(
        (
            config.mounts[0].tag.as_str(),
            config.mounts[0].dest.as_str()
        ),
        ("microrun0", "/data")
    );
    let vmm::DeviceSpec::Share(share) = &vm.devices.devices[1] else {
        panic!("{:?}", vm.devices);
    };
    assert_eq!(share.tag, config.mounts[0].tag);
    assert!(share.read_only && config.mounts[0].read_only);
    // The run configuration in guest-init's archive is the plan's.
    let archive = vm.initrd.init_archive.as_ref().unwrap();
    let encoded = config.encode().unwrap();
    assert!(archive.windows(encoded.len()).any(|w| w == encoded));
    // 3 x the initrd + 64 MiB, rounded to 2 MiB: this kernel says nothing.
    assert_eq!(vm.mem_size % (2 << 20), 0);
    assert!(vm.mem_size >= 64 << 20);
}

#[test]
fn the_qemu_engine_relays_and_no_init_or_verbose_change_the_command_line() {
    let scratch = Scratch::new(BUILT_IN);
    let plan = make(scratch.request(Engine::Qemu)).unwrap();
    assert!(plan.run_config.relay_output && plan.run_config.virtio_ports);
    assert_eq!(vm_of(&plan).transport, Transport::Mmio);
    let request = Request {
        no_init: true,
        verbosity: Verbosity::Verbose,
        cmdline: None,
        ..scratch.request(Engine::Kvm)
    };
    let plan = make(request).unwrap();
    let vm = vm_of(&plan);
    assert!(vm.devices.devices.is_empty() && vm.initrd.init_archive.is_none());
    assert_eq!(
        vm.cmdline.to_string(),
        "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=3 i8042.noaux i8042.nomux \
         i8042.nopnp i8042.dumbkbd pty.legacy_count=0"
    );
}

#[test]
fn refusals_are_made_before_anything_runs() {
    let scratch = Scratch::new(BUILT_IN);
    let error = |request: Request| make(request).unwrap_err().to_string();
    let no_cpus = Request {
        cpus: 0,
        ..scratch.request(Engine::Qemu)
    };
    assert!(error(no_cpus).contains("--cpus 0"));
    let no_init = Request {
        no_init: true,
        ..scratch.with_share(Engine::Kvm)
    };
    assert!(error(no_init).contains("drop --no-init"));
    let chroot = Request {
        no_init: true,
        ..scratch.request(Engine::Chroot)
    };
    assert!(error(chroot).contains("--no-init needs a VM engine"));
    let small = Request {
        mem: Some(1 << 20),
        ..scratch.request(Engine::Kvm)
    };
    assert!(error(small).contains("is too small"));
    // --root disk of a cpio ROOTFS; --root initrd is today's plan.
    let disk = Request {
        root: Some(crate::spec::RootChoice::Disk),
        ..scratch.request(Engine::Qemu)
    };
    assert!(error(disk).contains("a cpio ROOTFS is booted as the initrd it is"));
    let initrd = Request {
        root: Some(crate::spec::RootChoice::Initrd),
        ..scratch.request(Engine::Qemu)
    };
    make(initrd).unwrap();
    // A kernel without 9p: a share has nothing to fall back to.
    let no_9p = Scratch::new(&BUILT_IN.replace("CONFIG_9P_FS=y", "# CONFIG_9P_FS is not set"));
    let message = error(no_9p.with_share(Engine::Kvm));
    assert!(
        message.contains("cannot mount a 9p share")
            && message.contains("CONFIG_9P_FS is not set")
            && message.contains("--bind/--bind-ro cannot work here"),
        "{message}"
    );
    // ... while the console falls back to the UARTs.
    let no_console = Scratch::new(&BUILT_IN.replace(
        "CONFIG_VIRTIO_CONSOLE=y",
        "# CONFIG_VIRTIO_CONSOLE is not set",
    ));
    let plan = make(no_console.with_share(Engine::Kvm)).unwrap();
    let vm = vm_of(&plan);
    assert_eq!(vm.devices.devices.len(), 1);
    assert!(!plan.run_config.virtio_ports);
    assert!(vm
        .cmdline
        .to_string()
        .starts_with("virtio_mmio.device=4K@0xd0000000:5 console=ttyS0"));
}

#[test]
fn a_terminal_needs_one_on_stdin_and_in_a_vm_the_virtio_console() {
    let scratch = Scratch::new(BUILT_IN);
    let tty = |request: Request| Request {
        tty: true,
        forward_stdin: true,
        stdin_terminal: Some((30, 100)),
        ..request
    };
    for engine in [Engine::Kvm, Engine::Qemu, Engine::Chroot] {
        let no_terminal = Request {
            stdin_terminal: None,
            ..tty(scratch.request(engine))
        };
        assert!(
            matches!(make(no_terminal), Err(PlanError::TtyWithoutTerminal)),
            "{engine:?}"
        );
    }
    let plan = make(tty(scratch.request(Engine::Kvm))).unwrap();
    assert_eq!(plan.run_config.tty, Some((30, 100)));
    assert!(plan.terminal && plan.run_config.virtio_ports);
    // -t without -i: a terminal in the guest, microrun's left alone.
    let plan = make(Request {
        forward_stdin: false,
        ..tty(scratch.request(Engine::Kvm))
    })
    .unwrap();
    assert!(!plan.terminal && plan.run_config.tty.is_some());

    let no_console = Scratch::new(&BUILT_IN.replace(
        "CONFIG_VIRTIO_CONSOLE=y",
        "# CONFIG_VIRTIO_CONSOLE is not set",
    ));
    let message = make(tty(no_console.request(Engine::Kvm)))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("-t/--tty is unavailable") && message.contains("VIRTIO_CONSOLE"),
        "{message}"
    );
    let no_init = Request {
        no_init: true,
        ..tty(scratch.request(Engine::Qemu))
    };
    let message = make(no_init).unwrap_err().to_string();
    assert!(message.contains("--no-init"), "{message}");
}

#[test]
fn the_chroot_engine_gets_the_rootfs_in_place_and_guest_inits_archive() {
    let scratch = Scratch::new(BUILT_IN);
    let request = Request {
        rootfs: Rootfs::Dir(scratch.path("share")),
        ..scratch.with_share(Engine::Chroot)
    };
    let plan = make(request).unwrap();
    let Target::Chroot(root) = &plan.target else {
        panic!("{:?}", plan.target);
    };
    assert_eq!(root.rootfs, PreparedRootfs::Dir(scratch.path("share")));
    assert_eq!(root.binds.len(), 1);
    assert!(plan.run_config.mounts.is_empty() && !plan.run_config.virtio_ports);
    assert!(root.init_archive.starts_with(b"070701"));
    assert!(plan.vm().is_none());
}

#[test]
fn working_directories_are_absolute_without_dotdot() {
    for good in ["/", "/src", "/a/./b", "/a/..b"] {
        check_workdir(good, true).unwrap();
    }
    for (bad, given) in [
        ("src", true),
        ("/a/../b", false),
        ("..", true),
        ("/..", false),
    ] {
        let message = check_workdir(bad, given).unwrap_err().to_string();
        let origin = if given { "-w" } else { "WorkingDir" };
        assert!(
            message.contains(origin) && message.contains(bad),
            "{message}"
        );
    }
    let scratch = Scratch::new(BUILT_IN);
    let request = Request {
        workdir: Some("/x/../y".into()),
        ..scratch.request(Engine::Kvm)
    };
    assert!(make(request)
        .unwrap_err()
        .to_string()
        .contains("-w \"/x/../y\""));
}

#[test]
fn irqchip_names() {
    assert_eq!(parse_irqchip(None).unwrap(), IrqChip::Split);
    assert_eq!(parse_irqchip(Some("split")).unwrap(), IrqChip::Split);
    assert_eq!(parse_irqchip(Some("kernel")).unwrap(), IrqChip::Kernel);
    let e = parse_irqchip(Some("pic")).unwrap_err().to_string();
    assert!(
        e.contains("MICRORUN_IRQCHIP") && e.contains("kernel"),
        "{e}"
    );
}

#[test]
fn default_memory_makes_room_for_the_kernel_when_the_initrd_rule_does_not() {
    const MIB: u64 = 1 << 20;
    // No kernel information: the 3 x initrd + 64 MiB rule.
    assert_eq!(default_memory(None, 4 * MIB, None).0, 76 * MIB);
    // The project kernel (16 MiB + 13.7 MiB) with the libs example.
    let (mem, why) = default_memory(Some(0x100_0000 + 0xdb_8000), 4 * MIB, None);
    assert_eq!(mem, 98 * MIB, "{why}");
    // Debian's kernel: up to 79.6 MiB before it reads the memory map.
    let (mem, why) = default_memory(Some(0x100_0000 + 0x3f9_8000), 4 * MIB, None);
    assert_eq!(mem, 148 * MIB);
    assert!(
        why.contains("79.6 MiB") && why.contains("too little"),
        "{why}"
    );
    // A large initrd: the 3 x rule is the larger one and stays.
    let (mem, why) = default_memory(Some(80 * MIB), 346 * MIB, None);
    assert_eq!(mem, (3 * 346 + 64) * MIB);
    assert!(why.starts_with("1102 MiB: 3 x initrd"), "{why}");
    assert_eq!(
        default_memory(Some(u64::MAX), u64::MAX, Some(u64::MAX)).0 % (2 * MIB),
        0
    );
}

#[test]
fn default_memory_gives_the_tmpfs_twice_the_unpacked_files() {
    use super::memory::{tmpfs_need, unpack_failed, Sizing};
    const MIB: u64 = 1 << 20;
    let debian = Some(0x100_0000 + 0x3f9_8000);
    // The e2e case: Debian's kernel, a 60.5 MiB initrd whose files take
    // 67.9 MiB of pages; the 3 x rule's 246 MiB failed ("write error").
    let initrd = 63_483_916;
    let unpacked = 17_393 * 4096;
    assert_eq!(default_memory(debian, initrd, None).0, 246 * MIB);
    let (mem, why) = default_memory(debian, initrd, Some(unpacked));
    assert_eq!(mem, 294 * MIB, "{why}");
    assert!(
        why.contains("67.9 MiB") && why.contains("too little"),
        "{why}"
    );
    // The measured reserve (MiB) is below the rule's at every size
    // measured: Debian's kernel (kernel_end 79.6 MiB) and the project's
    // (31.8 MiB) at the memory given.
    for (kernel_end, mem, reserve) in [
        (79.6, 300.0, 62.4),
        (79.6, 553.0, 67.1),
        (79.6, 1100.0, 76.6),
        (31.8, 300.0, 19.3),
        (31.8, 1100.0, 32.1),
    ] {
        let rule: f64 = kernel_end + mem / 32.0;
        assert!(rule > reserve, "{rule} <= {reserve}");
    }
    // The mission's libs rootfs keeps the 3 x rule, with either kernel.
    let libs = 4 * MIB;
    let project = Some(0x100_0000 + 0xdb_8000);
    assert_eq!(default_memory(project, libs, Some(libs + MIB)).0, 98 * MIB);
    assert_eq!(default_memory(None, libs, Some(libs + MIB)).0, 76 * MIB);
    assert_eq!(default_memory(debian, libs, Some(libs + MIB)).0, 148 * MIB);
    // The rule itself: 2 MiB steps, 1/32 on top, saturating.
    assert_eq!(tmpfs_need(0, 0, 0), 10 * MIB);
    assert_eq!(tmpfs_need(0, 0, 31 * MIB), 74 * MIB);
    assert_eq!(tmpfs_need(u64::MAX, 1, 1) % (2 * MIB), 0);

    // The message names the sizes and a --mem that the rule says works.
    let sizing = Sizing {
        mem: 246 * MIB,
        needed: 294 * MIB,
        initrd,
        unpacked: Some(unpacked),
    };
    let said = unpack_failed(&sizing, "write error");
    assert!(
        said.contains("(60.5 MiB initrd, 67.9 MiB of files) into 246 MiB")
            && said.contains("write error")
            && said.ends_with("give --mem 294M"),
        "{said}"
    );
    // Given as much as the rule asks: twice as much.
    let enough = Sizing {
        mem: 300 * MIB,
        ..sizing
    };
    let said = unpack_failed(&enough, "write error");
    assert!(
        said.ends_with("than --mem 300M, for example --mem 600M"),
        "{said}"
    );
    // A compressed rootfs: its unpacked size is unknown, so never less
    // than twice what failed, whatever the default.
    let compressed = Sizing {
        mem: 100 * MIB,
        unpacked: None,
        ..sizing
    };
    let said = unpack_failed(&compressed, "junk in compressed archive");
    assert!(
        said.contains("(60.5 MiB initrd) into 100 MiB")
            && said.contains("for example --mem 294M (the rootfs archive is compressed"),
        "{said}"
    );
}

#[test]
fn an_engine_given_is_kept_and_no_probe_runs() {
    for engine in [Engine::Kvm, Engine::Qemu, Engine::Chroot] {
        let chosen = choose_engine(engine, || panic!("probed KVM"), || panic!("probed QEMU"));
        assert_eq!(chosen.unwrap(), (engine, None));
    }
}

#[test]
fn auto_takes_kvm_where_it_runs_linux_and_says_nothing() {
    let chosen = choose_engine(Engine::Auto, || KvmHost::Hardware, || false).unwrap();
    assert_eq!(chosen, (Engine::Kvm, None));
}

#[test]
fn auto_falls_back_to_qemu_with_the_reason() {
    let emulated = KvmHost::Emulated("KVM here is kvm_pvm".into());
    let (engine, note) = choose_engine(Engine::Auto, || emulated, || true).unwrap();
    assert_eq!(engine, Engine::Qemu);
    let note = note.unwrap();
    assert!(
        note.contains("qemu engine") && note.contains("kvm_pvm"),
        "{note}"
    );
    assert!(!note.contains('\n'), "one line: {note}");

    let no_access = KvmHost::Unavailable("no access to /dev/kvm: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again)".into());
    let (engine, note) = choose_engine(Engine::Auto, || no_access, || true).unwrap();
    assert_eq!(engine, Engine::Qemu);
    assert!(note.unwrap().contains("usermod -aG kvm"));
}

#[test]
fn auto_with_neither_engine_names_both_fixes() {
    let missing = KvmHost::Unavailable("/dev/kvm does not exist".into());
    let err = choose_engine(Engine::Auto, || missing, || false).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/dev/kvm does not exist"), "{text}");
    assert!(text.contains("apt-get install qemu-system-x86"), "{text}");
}

/// A newc archive at `path` holding `/etc/passwd` and `/etc/group`.
fn rootfs_with_users(path: &std::path::Path) {
    let mut writer = initrd_tools::newc::NewcWriter::new(Vec::new());
    writer.add_dir("etc", 0o755).unwrap();
    writer
        .add_file(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/root:/bin/sh\nbuilder:x:1000:100::/home/b:/bin/sh\n",
        )
        .unwrap();
    writer
        .add_file("etc/group", 0o644, b"root:x:0:\nstaff:x:50:builder\n")
        .unwrap();
    std::fs::write(path, writer.finish().unwrap()).unwrap();
}

#[test]
fn the_user_goes_to_guest_init_and_names_the_kvm_engines_share_owner() {
    let scratch = Scratch::new(BUILT_IN);
    rootfs_with_users(&scratch.path("users.cpio"));
    let with_user = |engine, spec: &str| Request {
        rootfs: Rootfs::Cpio(scratch.path("users.cpio")),
        user: Some(crate::user::UserSpec::parse(spec, "-u").unwrap()),
        ..scratch.with_share(engine)
    };
    let plan = make(with_user(Engine::Kvm, "builder:staff")).unwrap();
    assert_eq!(plan.run_config.user.as_deref(), Some("builder:staff"));
    let shares: Vec<_> = vm_of(&plan)
        .devices
        .devices
        .iter()
        .filter_map(|d| match d {
            vmm::DeviceSpec::Share(share) => Some((share.guest_uid, share.guest_gid)),
            _ => None,
        })
        .collect();
    assert_eq!(shares, [(1000, 50)]);
    // QEMU's server has no id map: its shares keep root.
    let plan = make(with_user(Engine::Qemu, "builder")).unwrap();
    assert!(vm_of(&plan).devices.devices.iter().all(|d| match d {
        vmm::DeviceSpec::Share(share) => (share.guest_uid, share.guest_gid) == (0, 0),
        _ => true,
    }));
    // A name the rootfs does not have is refused before anything runs,
    // and -u needs guest-init.
    let message = make(with_user(Engine::Kvm, "ghost"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("\"ghost\"") && message.contains("/etc/passwd"),
        "{message}"
    );
    let no_init = Request {
        binds: vec![],
        no_init: true,
        ..with_user(Engine::Kvm, "builder")
    };
    assert!(make(no_init)
        .unwrap_err()
        .to_string()
        .contains("-u needs guest-init"));
    // The chroot engine gets the ids for its maps.
    let plan = make(with_user(Engine::Chroot, "1000")).unwrap();
    let Target::Chroot(root) = &plan.target else {
        panic!("{:?}", plan.target);
    };
    assert_eq!(
        root.user,
        Some(Ids {
            uid: 1000,
            gid: 100
        })
    );
}

/// The scratch kernel's configuration with the disk root's drivers.
fn with_disk_drivers() -> String {
    format!("{BUILT_IN}CONFIG_VIRTIO_BLK=y\nCONFIG_EROFS_FS=y\nCONFIG_OVERLAY_FS=y\n")
}

#[test]
fn the_disk_root_gets_a_read_only_disk_the_root_record_and_fixed_memory() {
    let scratch = Scratch::new(&with_disk_drivers());
    let rootfs = scratch.path("tree");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(rootfs.join("big"), vec![1u8; 3 << 20]).unwrap();
    let disk = |rootfs: &std::path::Path, engine| Request {
        rootfs: Rootfs::Dir(rootfs.to_path_buf()),
        root: Some(crate::spec::RootChoice::Disk),
        ..scratch.request(engine)
    };
    for engine in [Engine::Kvm, Engine::Qemu] {
        let plan = make(disk(&rootfs, engine)).unwrap();
        let vm = vm_of(&plan);
        // Console, then the disk: read-only, the tree's EROFS image.
        let image = match &vm.devices.devices[..] {
            [vmm::DeviceSpec::Console, vmm::DeviceSpec::Block(block)] => {
                assert!(block.read_only);
                block.path.clone()
            }
            other => panic!("devices {other:?}"),
        };
        assert!(image.to_string_lossy().ends_with(".erofs"), "{image:?}");
        assert_eq!(std::fs::metadata(&image).unwrap().len() % 4096, 0);
        // No rootfs archive: guest-init's alone, with the root record.
        assert!(vm.initrd.rootfs.is_none());
        let root = plan.run_config.root.as_ref().unwrap();
        assert_eq!(root.device, "/dev/vda");
        assert_eq!(root.tmpfs_bytes, vm.mem_size / 2);
        // Not a kernel image: 64 MiB for it, the archive and 128 MiB.
        let init = vm.initrd.len();
        assert_eq!(
            vm.mem_size,
            (64 * MIB_T + init + 128 * MIB_T).next_multiple_of(2 * MIB_T)
        );
        let archive = vm.initrd.init_archive.as_ref().unwrap();
        let record = format!("root=erofs /dev/vda {}", vm.mem_size / 2);
        assert!(
            archive
                .windows(record.len())
                .any(|w| w == record.as_bytes()),
            "{record}"
        );
    }
    // A bigger tree: the same memory, where the initrd would need more.
    let small = vm_of(&make(disk(&rootfs, Engine::Kvm)).unwrap()).mem_size;
    std::fs::write(rootfs.join("bigger"), vec![2u8; 80 << 20]).unwrap();
    let first = vm_of(&make(disk(&rootfs, Engine::Kvm)).unwrap()).mem_size;
    assert_eq!(first, small);
    let initrd = Request {
        root: Some(crate::spec::RootChoice::Initrd),
        ..disk(&rootfs, Engine::Kvm)
    };
    assert!(vm_of(&make(initrd).unwrap()).mem_size > first);
}

const MIB_T: u64 = 1 << 20;

#[test]
fn a_kernel_without_the_disk_drivers_refuses_root_disk() {
    let scratch = Scratch::new(BUILT_IN);
    let rootfs = scratch.path("tree");
    std::fs::create_dir(&rootfs).unwrap();
    let request = Request {
        rootfs: Rootfs::Dir(rootfs),
        root: Some(crate::spec::RootChoice::Disk),
        ..scratch.request(Engine::Kvm)
    };
    let err = make(request).unwrap_err().to_string();
    assert!(
        err.contains("cannot mount an EROFS root") && err.contains("--root initrd"),
        "{err}"
    );
}

/// Whether passt is missing here, said as a skip: the plan looks for it.
fn passt_missing() -> bool {
    let missing = crate::net::find_program("passt").is_err();
    if missing {
        test_support::skip_unavailable!("passt is not installed (apt-get install passt)");
    }
    missing
}

/// A request with `--net` (and `-p specs`) for `engine`.
fn with_net(scratch: &Scratch, engine: Engine, specs: &[String]) -> Request {
    Request {
        net: crate::net::Network::from_options(true, false, specs).unwrap(),
        ..scratch.request(engine)
    }
}

#[test]
fn net_gives_a_vm_the_device_last_and_guest_init_its_record_and_files() {
    if passt_missing() {
        return;
    }
    let scratch = Scratch::new(&format!(
        "{BUILT_IN}CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_VIRTIO_NET=y\n"
    ));
    let plan = make(with_net(&scratch, Engine::Kvm, &[])).unwrap();
    let vm = vm_of(&plan);
    assert_eq!(
        vm.devices.devices.last(),
        Some(&vmm::DeviceSpec::Net(vmm::NetSpec {
            mac: crate::net::GUEST_MAC,
            mtu: crate::net::MTU,
        }))
    );
    assert!(vm.net.as_ref().unwrap().program.ends_with("passt"));
    let record = plan.run_config.net.as_ref().unwrap();
    assert_eq!(
        (record.address, record.prefix, record.gateway, record.mtu),
        (
            crate::net::GUEST_ADDR,
            crate::net::GUEST_PREFIX,
            crate::net::GATEWAY,
            crate::net::MTU
        )
    );
    let archive = vm.initrd.init_archive.as_ref().unwrap();
    let resolv = crate::net::resolv_conf();
    assert!(archive
        .windows(resolv.len())
        .any(|w| w == resolv.as_bytes()));
}

#[test]
fn net_is_refused_by_a_kernel_without_virtio_net_and_without_guest_init() {
    if passt_missing() {
        return;
    }
    let scratch = Scratch::new(BUILT_IN);
    let err = make(with_net(&scratch, Engine::Kvm, &[])).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::Refused {
                options: "--net",
                ..
            }
        ),
        "{err}"
    );
    let no_init = Request {
        no_init: true,
        ..with_net(&scratch, Engine::Qemu, &[])
    };
    assert!(matches!(make(no_init), Err(PlanError::NetNeedsInit)));
}

#[test]
fn a_published_port_in_use_is_refused_before_anything_starts() {
    if passt_missing() {
        return;
    }
    let scratch = Scratch::new(BUILT_IN);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("{}:80", taken.local_addr().unwrap().port());
    let err = make(with_net(
        &scratch,
        Engine::Qemu,
        std::slice::from_ref(&spec),
    ))
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("-p {spec}: ")),
        "{err}"
    );
}
