use super::*;
use std::path::PathBuf;
use vmm::DeviceKind::{Console, Share};

/// The devices of a run with the console (or not) and `shares` shares.
fn wanted(console: bool, shares: usize) -> Vec<DeviceKind> {
    let console = console.then_some(Console);
    console
        .into_iter()
        .chain(std::iter::repeat_n(Share, shares))
        .collect()
}

/// The kinds a plan gives and how the kernel finds them.
fn offered(plan: &KernelPlan) -> (&[DeviceKind], bool, bool) {
    (
        plan.kinds.as_slice(),
        plan.cmdline_discovery,
        plan.acpi_discovery,
    )
}

/// Whether `plan` gives the guest no virtio device at all.
fn no_devices(plan: &KernelPlan) -> bool {
    plan.kinds.is_empty() && plan.modules.is_empty()
}

const RELEASE: &str = "9.9.9-test";

/// A bzImage head whose setup header names `release`.
fn bzimage(release: &str) -> Vec<u8> {
    let mut b = vec![0u8; 0x1000];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    let at = 0x600usize;
    b[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
    let text = format!("{release} (test@host) #1 SMP\0");
    b[at..at + text.len()].copy_from_slice(text.as_bytes());
    b
}

/// A module of release `vermagic`, as `ModuleFile::read` checks it.
fn fake_module(vermagic: &str) -> Vec<u8> {
    test_support::fixtures::fake_module(vermagic, 0)
}

/// A root with `boot/vmlinuz` (release [`RELEASE`]), optionally its
/// `boot/config-<release>`, and a Debian-like module tree.
struct Host {
    root: tempfile::TempDir,
}

impl Host {
    fn new(config: Option<&str>) -> Host {
        let host = Host {
            root: tempfile::tempdir().unwrap(),
        };
        host.write("boot/vmlinuz", &bzimage(RELEASE));
        if let Some(config) = config {
            host.write(&format!("boot/config-{RELEASE}"), config.as_bytes());
        }
        let modules = format!("lib/modules/{RELEASE}");
        let files = [
            ("kernel/drivers/virtio/virtio_ring.ko", ""),
            (
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
            ),
            (
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
            ),
            (
                "kernel/drivers/char/virtio_console.ko",
                "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
            ),
            ("kernel/fs/netfs/netfs.ko", ""),
            ("kernel/net/9p/9pnet.ko", ""),
            (
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko \
                 kernel/drivers/virtio/virtio_ring.ko",
            ),
            (
                "kernel/fs/9p/9p.ko",
                "kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko",
            ),
        ];
        let mut dep = String::new();
        for (file, deps) in files {
            host.write(&format!("{modules}/{file}"), &fake_module(RELEASE));
            dep.push_str(&format!("{file}: {deps}\n"));
        }
        host.write(&format!("{modules}/modules.dep"), dep.as_bytes());
        host
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn kernel(&self) -> PathBuf {
        self.root.path().join("boot/vmlinuz")
    }

    fn plan(&self) -> KernelPlan {
        self.plan_with(true, 0)
    }

    fn plan_with(&self, console: bool, shares: usize) -> KernelPlan {
        let wanted = wanted(console, shares);
        plan_under(
            self.root.path(),
            &self.kernel(),
            &wanted,
            Transport::Mmio,
            None,
        )
    }
}

/// Debian's 9p options, for [`DEBIAN`].
const NINE_P_MODULES: &str = "CONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_9P_FS=m\n";

#[test]
fn shares_bring_their_modules_after_the_transport() {
    let config = format!("{DEBIAN}{NINE_P_MODULES}");
    let host = Host::new(Some(&config));
    let plan = host.plan_with(true, 2);
    assert_eq!(plan.kinds, [Console, Share], "{:?}", plan.notes);
    assert_eq!(plan.refused, []);
    let names = names(&plan);
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
    assert!(at("virtio_mmio.ko") < at("9pnet_virtio.ko"), "{names:?}");
    assert!(at("9pnet.ko") < at("9pnet_virtio.ko"), "{names:?}");
    assert!(at("netfs.ko") < at("9p.ko"), "{names:?}");
    // Without the console, the shares still get the transport.
    let plan = host.plan_with(false, 1);
    assert_eq!(plan.kinds, [Share], "{:?}", plan.notes);
    let names = super::tests::names(&plan);
    assert!(names.contains(&"virtio_mmio.ko") && !names.contains(&"virtio_console.ko"));
    // Named on the command line: one device= per slot, the console's first.
    let config = config.replace(
        "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
    );
    let plan = Host::new(Some(&config)).plan_with(true, 2);
    let mmio = plan
        .modules
        .iter()
        .find(|m| m.file_name == "virtio_mmio.ko")
        .unwrap();
    assert_eq!(
        mmio.params,
        "device=4K@0xd0000000:5 device=4K@0xd0001000:6 device=4K@0xd0002000:7"
    );
}

#[test]
fn a_kernel_without_9p_says_why_it_cannot_share() {
    let plan = Host::new(Some(DEBIAN)).plan_with(true, 1);
    assert!(plan.drives(Console), "the console does not depend on 9p");
    assert!(!plan.drives(Share));
    let why = plan.refusal(Share).unwrap();
    assert!(
        why.contains("CONFIG_NET_9P, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS are not set"),
        "{why}"
    );
    let config = BUILT_IN.replace("CONFIG_VIRTIO_MMIO=y", "# CONFIG_VIRTIO_MMIO is not set");
    let plan = Host::new(Some(&format!("{config}{NINE_P_MODULES}"))).plan_with(true, 1);
    assert!(plan.refusal(Share).unwrap().contains("CONFIG_VIRTIO_MMIO"));
    // Modules that cannot be read: no console, and the shares say why.
    let host = Host::new(Some(&format!("{DEBIAN}{NINE_P_MODULES}")));
    host.write(
        &format!("lib/modules/{RELEASE}/kernel/fs/9p/9p.ko"),
        b"junk",
    );
    let plan = host.plan_with(true, 1);
    assert!(no_devices(&plan), "{:?}", plan.notes);
    assert!(plan.refusal(Share).is_some() && plan.refusal(Console).is_some());
}

const BUILT_IN: &str = "CONFIG_VIRTIO=y\nCONFIG_VIRTIO_MMIO=y\n\
    CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_CONSOLE=y\n\
    # CONFIG_ACPI is not set\n";
const DEBIAN: &str = "CONFIG_ACPI=y\nCONFIG_VIRTIO=m\nCONFIG_VIRTIO_MMIO=m\n\
    # CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_VIRTIO_CONSOLE=m\n";

fn names(plan: &KernelPlan) -> Vec<&str> {
    plan.modules.iter().map(|m| m.file_name.as_str()).collect()
}

#[test]
fn the_setting_is_on_off_or_an_error() {
    assert_eq!(parse_setting(None), Ok(VirtioSetting::On));
    assert_eq!(parse_setting(Some("")), Ok(VirtioSetting::On));
    assert_eq!(parse_setting(Some("on")), Ok(VirtioSetting::On));
    assert_eq!(parse_setting(Some("off")), Ok(VirtioSetting::Off));
    let err = parse_setting(Some("OFF")).unwrap_err().to_string();
    assert!(
        err.contains("MICRORUN_VIRTIO=\"OFF\"") && err.contains("`on`") && err.contains("`off`"),
        "{err}"
    );
    // No device asked for: nothing is read, nothing offered.
    let none = plan_under(
        Path::new("/nonexistent"),
        Path::new("/k"),
        &[],
        Transport::Pci,
        None,
    );
    assert!(no_devices(&none) && none.notes.is_empty());
    assert_eq!(none.transport, Transport::Pci);
    assert!(none.pci, "unknown configuration: PCI may be there");
}

#[test]
fn whether_the_kernel_has_pci_is_planned_even_without_devices() {
    let host = Host::new(Some(BUILT_IN));
    let plan = plan_under(host.root.path(), &host.kernel(), &[], Transport::Mmio, None);
    assert!(no_devices(&plan) && plan.notes.is_empty() && !plan.pci);
    let with_pci = format!("{BUILT_IN}\nCONFIG_PCI=y\n");
    let host = Host::new(Some(&with_pci));
    let plan = plan_under(host.root.path(), &host.kernel(), &[], Transport::Mmio, None);
    assert!(no_devices(&plan) && plan.notes.is_empty() && plan.pci);
    assert!(host.plan().pci);
}

#[test]
fn built_in_drivers_need_no_modules() {
    let host = Host::new(Some(BUILT_IN));
    let plan = host.plan();
    assert_eq!(
        offered(&plan),
        (&[Console][..], true, false),
        "{:?}",
        plan.notes
    );
    assert!(plan.modules.is_empty());
    // The project kernel's layout: `config` beside the bzImage.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bzImage"), bzimage("6.12.0-microrun")).unwrap();
    std::fs::write(dir.path().join("config"), BUILT_IN).unwrap();
    let plan = plan_under(
        dir.path(),
        &dir.path().join("bzImage"),
        &[Console],
        Transport::Mmio,
        None,
    );
    assert!(plan.drives(Console) && plan.cmdline_discovery && plan.modules.is_empty());
    assert!(
        plan.notes.iter().any(|n| n.contains("built in")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn module_drivers_are_shipped_in_load_order() {
    let host = Host::new(Some(DEBIAN));
    let plan = host.plan();
    assert_eq!(
        offered(&plan),
        (&[Console][..], false, true),
        "{:?}",
        plan.notes
    );
    assert_eq!(
        names(&plan),
        [
            "virtio_ring.ko",
            "virtio.ko",
            "virtio_mmio.ko",
            "virtio_console.ko"
        ]
    );
    assert!(plan.modules.iter().all(|m| m.params.is_empty()));
    assert!(plan.modules.iter().all(|m| m.bytes == fake_module(RELEASE)));
    let note = plan.notes.last().unwrap();
    assert!(
        note.contains("kernel 9.9.9-test: virtio drivers are modules; loading virtio_ring, virtio, virtio_mmio, virtio_console from ")
            && note.ends_with("lib/modules/9.9.9-test"),
        "{note}"
    );
}

#[test]
fn a_virtio_mmio_module_gets_the_device_as_a_parameter() {
    let config = DEBIAN.replace(
        "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
    );
    let plan = Host::new(Some(&config)).plan();
    assert!(plan.drives(Console) && plan.cmdline_discovery && !plan.acpi_discovery);
    let params: Vec<&str> = plan.modules.iter().map(|m| m.params.as_str()).collect();
    assert_eq!(params, ["", "", "device=4K@0xd0000000:5", ""]);
    // virtio_mmio built in, the console a module: only what it needs.
    let config = BUILT_IN.replace("CONFIG_VIRTIO_CONSOLE=y", "CONFIG_VIRTIO_CONSOLE=m");
    let host = Host::new(Some(&config));
    host.write(
        &format!("lib/modules/{RELEASE}/modules.dep"),
        b"kernel/drivers/char/virtio_console.ko:\n",
    );
    let plan = host.plan();
    assert_eq!(names(&plan), ["virtio_console.ko"], "{:?}", plan.notes);
    assert!(plan.modules[0].params.is_empty());
}

#[test]
fn missing_or_bad_modules_fall_back_to_the_uarts() {
    let check = |host: &Host, needle: &str| {
        let plan = host.plan();
        assert!(no_devices(&plan), "{:?}", plan.notes);
        assert!(plan.refusal(Console).is_some());
        let note = plan.notes.last().unwrap();
        assert!(
            note.contains("modules, but") && note.contains(needle) && note.contains("UARTs"),
            "{needle}: {note}"
        );
    };
    let host = Host::new(Some(DEBIAN));
    let modules = host.root.path().join("lib/modules").join(RELEASE);
    std::fs::write(
        modules.join("kernel/drivers/virtio/virtio.ko"),
        fake_module("1.0"),
    )
    .unwrap();
    check(&host, "1.0");
    std::fs::write(modules.join("kernel/drivers/virtio/virtio.ko"), b"garbage").unwrap();
    check(&host, "corrupt");
    std::fs::remove_file(modules.join("kernel/drivers/char/virtio_console.ko")).unwrap();
    check(&host, "virtio_console");
    std::fs::write(modules.join("modules.dep"), b"kernel/a.ko: kernel/b.ko\n").unwrap();
    check(&host, "virtio_mmio");
    std::fs::write(modules.join("modules.dep"), b"../../../etc/passwd.ko:\n").unwrap();
    check(&host, "outside");
    std::fs::remove_file(modules.join("modules.dep")).unwrap();
    check(&host, "depmod");
    std::fs::remove_dir_all(&modules).unwrap();
    check(&host, "does not exist");
    // A module name that would not be a plain file name.
    let host = Host::new(Some(DEBIAN));
    let modules = host.root.path().join("lib/modules").join(RELEASE);
    std::fs::write(modules.join("kernel/.x.ko"), fake_module(RELEASE)).unwrap();
    std::fs::write(
        modules.join("modules.dep"),
        b"kernel/drivers/virtio/virtio_mmio.ko: kernel/.x.ko\n\
          kernel/drivers/char/virtio_console.ko:\nkernel/.x.ko:\n",
    )
    .unwrap();
    check(&host, "not a plain file name");
}

#[test]
fn kernels_without_the_drivers_or_discovery_use_the_uarts() {
    for (config, needle) in [
        (
            DEBIAN.replace(
                "CONFIG_VIRTIO_CONSOLE=m",
                "# CONFIG_VIRTIO_CONSOLE is not set",
            ),
            "kernel 9.9.9-test has no virtio console driver (CONFIG_VIRTIO_CONSOLE is not set",
        ),
        (
            DEBIAN.replace("CONFIG_VIRTIO_CONSOLE=m\n", ""),
            "CONFIG_VIRTIO_CONSOLE is not set",
        ),
        (
            DEBIAN.replace("CONFIG_VIRTIO_MMIO=m", "CONFIG_VIRTIO_MMIO=n"),
            "CONFIG_VIRTIO_MMIO is not set",
        ),
        (
            DEBIAN.replace("CONFIG_ACPI=y", "# CONFIG_ACPI is not set"),
            "neither CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES nor CONFIG_ACPI",
        ),
        (
            DEBIAN.replace("CONFIG_VIRTIO_CONSOLE=m", "CONFIG_VIRTIO_CONSOLE=\"y\""),
            "CONFIG_VIRTIO_CONSOLE is not set",
        ),
    ] {
        let plan = Host::new(Some(&config)).plan();
        assert!(no_devices(&plan), "{config}");
        assert!(
            plan.notes.iter().any(|n| n.contains(needle)),
            "{needle}: {:?}",
            plan.notes
        );
    }
}

#[test]
fn an_unknown_configuration_offers_the_console_both_ways() {
    let plan = Host::new(None).plan();
    assert_eq!(offered(&plan), (&[Console][..], true, true));
    assert!(plan.modules.is_empty());
    assert!(
        plan.notes[0].contains("kernel 9.9.9-test: no build configuration found"),
        "{:?}",
        plan.notes
    );
    // Not a kernel at all, or not there: no release, no configuration.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a kernel").unwrap();
    for kernel in [junk, dir.path().join("absent")] {
        let plan = plan_under(dir.path(), &kernel, &[Console], Transport::Mmio, None);
        assert!(plan.drives(Console) && plan.cmdline_discovery && plan.acpi_discovery);
        assert!(
            plan.notes[0].contains(&*kernel.to_string_lossy()),
            "{:?}",
            plan.notes
        );
    }
    // A configuration that cannot be read (a directory) is unknown too.
    let host = Host::new(None);
    std::fs::create_dir_all(host.root.path().join(format!("boot/config-{RELEASE}"))).unwrap();
    let plan = host.plan();
    assert!(plan.drives(Console) && plan.cmdline_discovery && plan.acpi_discovery);
    // Modules with a kernel of unknown release cannot be found.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bzImage"), b"not a kernel").unwrap();
    std::fs::write(dir.path().join("config"), DEBIAN).unwrap();
    let plan = plan_under(
        dir.path(),
        &dir.path().join("bzImage"),
        &[Console],
        Transport::Mmio,
        None,
    );
    assert!(no_devices(&plan));
    assert!(
        plan.notes
            .last()
            .unwrap()
            .contains("cannot tell the release"),
        "{:?}",
        plan.notes
    );
}

#[test]
fn cached_plans_are_used_until_an_input_changes() {
    let host = Host::new(Some(DEBIAN));
    let cache = host.root.path().join("cache");
    let cached = || {
        plan_under(
            host.root.path(),
            &host.kernel(),
            &[Console],
            Transport::Mmio,
            Some(&cache),
        )
    };
    let fresh = host.plan();
    assert_eq!(fresh.modules.len(), 4);
    // One plan, and the kernel's release keyed by its metadata.
    let entries = || {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|name| name.rsplit('.').next().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(cached(), fresh);
    assert_eq!(entries(), ["plan", "release"]);
    assert_eq!(cached(), fresh, "from the cache");
    assert_eq!(entries(), ["plan", "release"]);
    // A module replaced by one of another release: not served stale.
    let modules = host.root.path().join("lib/modules").join(RELEASE);
    let virtio = modules.join("kernel/drivers/virtio/virtio.ko");
    std::fs::write(&virtio, fake_module("1.0")).unwrap();
    assert!(no_devices(&cached()));
    std::fs::write(&virtio, fake_module(RELEASE)).unwrap();
    assert_eq!(cached(), fresh);
    // A new configuration, a new module index: decided afresh.
    host.write(&format!("boot/config-{RELEASE}"), BUILT_IN.as_bytes());
    let built_in = cached();
    assert!(built_in.modules.is_empty() && built_in.cmdline_discovery);
    host.write(&format!("boot/config-{RELEASE}"), DEBIAN.as_bytes());
    assert_eq!(cached(), fresh);
    host.write(
        &format!("lib/modules/{RELEASE}/modules.dep"),
        b"kernel/drivers/virtio/virtio_mmio.ko:\nkernel/drivers/char/virtio_console.ko:\n",
    );
    assert_eq!(cached().modules.len(), 2);
    // A config that appears earlier in the search order counts too.
    host.write("boot/config", b"# CONFIG_VIRTIO_CONSOLE is not set\n");
    host.write(&format!("boot/config-{RELEASE}"), b"");
    std::fs::remove_file(host.root.path().join(format!("boot/config-{RELEASE}"))).unwrap();
    assert!(no_devices(&cached()));
    // Other devices, another transport: plans of their own.
    let entries = std::fs::read_dir(&cache).unwrap().count();
    let with_share = plan_under(
        host.root.path(),
        &host.kernel(),
        &[Console, Share],
        Transport::Pci,
        Some(&cache),
    );
    assert_eq!(with_share.transport, Transport::Pci);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), entries + 1);
}

#[test]
fn garbage_configurations_never_panic() {
    let host = Host::new(None);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words = [
        "CONFIG_VIRTIO_MMIO=",
        "CONFIG_VIRTIO_CONSOLE=",
        "CONFIG_ACPI=",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=",
        "y",
        "m",
        "n",
        "\n",
        "#",
        " is not set",
        "\0",
        "é",
    ];
    for _ in 0..200 {
        let text: String = (0..next() % 24)
            .map(|_| words[next() as usize % words.len()])
            .collect();
        host.write(&format!("boot/config-{RELEASE}"), text.as_bytes());
        let plan = host.plan();
        assert!(!plan.notes.is_empty());
        assert!(plan.drives(Console) || no_devices(&plan));
    }
}
