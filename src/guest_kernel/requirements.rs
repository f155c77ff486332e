//! The requirement table (one row per device kind: the kernel options it
//! needs, the modules that provide them, what a run does without it) and
//! the decision that checks a kernel's configuration against it.

use std::path::Path;

use initrd_tools::kernel_info::{KernelConfig, KernelInfoError, Tristate};
use vmm::DeviceKind;

use super::host_modules::{self, ModuleSource};
use super::{KernelPlan, Transport};

/// What a run does when the kernel cannot drive a device kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Without {
    /// Goes on without it: the UARTs carry the program's streams.
    Uarts,
    /// Fails, naming the options that asked for it and how to get it.
    Fail {
        /// The command-line options that ask for the device.
        options: &'static str,
        /// How to get a kernel that has it.
        fix: &'static str,
    },
}

/// What a kernel needs to drive one kind of virtio device (besides the
/// transport and a way to find the device, which every kind needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The kind.
    pub kind: DeviceKind,
    /// What a kernel without it lacks, after its name: "has no virtio
    /// console driver".
    pub lacks: &'static str,
    /// The kernel options it needs, each built in or a module.
    pub options: &'static [&'static str],
    /// The module that provides each option when it is a module (their
    /// dependencies come from `modules.dep`), in load order.
    pub modules: &'static [(&'static str, &'static str)],
    /// What a run does without it.
    pub without: Without,
}

/// The row of `kind`: one per device kind (a `match`, so a new kind
/// cannot be left without one).
pub fn requirement(kind: DeviceKind) -> Requirement {
    match kind {
        DeviceKind::Console => Requirement {
            kind,
            lacks: "has no virtio console driver",
            options: &["VIRTIO_CONSOLE"],
            modules: &[("VIRTIO_CONSOLE", "virtio_console")],
            without: Without::Uarts,
        },
        DeviceKind::Share => Requirement {
            kind,
            lacks: "cannot mount a 9p share",
            options: &["NET_9P", "NET_9P_VIRTIO", "9P_FS"],
            modules: &[("NET_9P_VIRTIO", "9pnet_virtio"), ("9P_FS", "9p")],
            without: Without::Fail {
                options: "--bind/--bind-ro",
                fix: "boot a kernel with 9p over virtio (the project kernel from \
                      scripts/build-kernel has it built in), or use another --engine (chroot \
                      needs no kernel)",
            },
        },
        DeviceKind::Net => Requirement {
            kind,
            lacks: "has no virtio network driver",
            options: &["NET", "INET", "VIRTIO_NET"],
            modules: &[("VIRTIO_NET", "virtio_net")],
            without: Without::Fail {
                options: "--net",
                fix: "boot a kernel with virtio-net (CONFIG_VIRTIO_NET), or use another \
                      --engine (chroot needs no kernel)",
            },
        },
        DeviceKind::Block => Requirement {
            kind,
            lacks: "cannot mount an EROFS root from a virtio disk",
            options: &["VIRTIO_BLK", "EROFS_FS", "OVERLAY_FS"],
            modules: &[
                ("VIRTIO_BLK", "virtio_blk"),
                ("EROFS_FS", "erofs"),
                ("OVERLAY_FS", "overlay"),
            ],
            without: Without::Fail {
                options: "--root disk",
                fix: "boot a kernel with virtio-blk, EROFS and overlayfs (built in or as \
                      modules), or boot the rootfs as an initrd (--root initrd)",
            },
        },
    }
}

/// The transports' own options and modules: (option, module).
fn transport_module(transport: Transport) -> (&'static str, &'static str) {
    match transport {
        Transport::Mmio => ("VIRTIO_MMIO", "virtio_mmio"),
        Transport::Pci => ("VIRTIO_PCI", "virtio_pci"),
    }
}

/// The plan for `wanted` on `transport`, and the metadata of the module
/// files read for it (`None` when the modules could not be read: not worth
/// caching).
pub(super) fn decide(
    root: &Path,
    kernel: &Path,
    release: Result<String, KernelInfoError>,
    wanted: &[DeviceKind],
    transport: Transport,
) -> (KernelPlan, Option<Vec<ModuleSource>>) {
    let name = match &release {
        Ok(release) => format!("kernel {release}"),
        Err(_) => format!("kernel {}", kernel.display()),
    };
    let kinds = distinct(wanted);
    let config = KernelConfig::find_under(root, kernel, release.as_deref().unwrap_or(""));
    let config = match config {
        Ok(Some(config)) => config,
        // Nothing to drive and nothing known of the kernel: nothing to
        // say, and it may have PCI.
        _ if kinds.is_empty() => {
            let plan = KernelPlan {
                pci: true,
                ..KernelPlan::default()
            };
            return (plan, Some(Vec::new()));
        }
        Ok(None) => {
            let why = "no build configuration found".to_string();
            return (unknown_config(&name, why, kinds), Some(Vec::new()));
        }
        Err(e) => {
            return (
                unknown_config(&name, e.to_string(), kinds),
                Some(Vec::new()),
            )
        }
    };
    let source = config.source().display().to_string();
    let is_set = |option: &str| {
        matches!(
            config.option(option),
            Some(Tristate::Yes | Tristate::Module)
        )
    };
    let mut plan = KernelPlan {
        pci: is_set("PCI"),
        ..KernelPlan::default()
    };
    if kinds.is_empty() {
        // Nothing to drive: only what the kernel is (its PCI).
        return (plan, Some(Vec::new()));
    }
    let transport_problem = find_transport(&config, &name, &source, transport, &mut plan);
    for kind in kinds {
        let row = requirement(kind);
        let problem = transport_problem.clone().or_else(|| {
            let missing: Vec<&str> = row
                .options
                .iter()
                .copied()
                .filter(|option| !is_set(option))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "{name} {} (CONFIG_{} {} not set in {source})",
                    row.lacks,
                    missing.join(", CONFIG_"),
                    if missing.len() == 1 { "is" } else { "are" }
                )
            })
        });
        match problem {
            None => plan.kinds.push(kind),
            Some(why) => {
                if row.without == Without::Uarts {
                    plan.notes
                        .push(format!("{why}: the program's streams go over the UARTs"));
                }
                plan.refused.push((kind, why));
            }
        }
    }
    let module = |option: &str| config.option(option) == Some(Tristate::Module);
    let (bus_option, bus_module) = transport_module(transport);
    let mut modules: Vec<&str> = Vec::new();
    if !plan.kinds.is_empty() && module(bus_option) {
        modules.push(bus_module);
    }
    for kind in &plan.kinds {
        let row = requirement(*kind);
        modules.extend(
            row.modules
                .iter()
                .filter(|(option, _)| module(option))
                .map(|(_, module)| *module),
        );
    }
    if modules.is_empty() {
        if !plan.kinds.is_empty() {
            plan.notes
                .push(format!("{name}: the virtio drivers are built in"));
        }
        return (plan, Some(Vec::new()));
    }
    let modules_gone = |plan: &mut KernelPlan, e: &dyn std::fmt::Display| {
        plan.refuse_all(format!(
            "{name}: the virtio drivers are modules, but {e}; the program's streams go over the \
             UARTs"
        ));
    };
    let release = match release {
        Ok(release) => release,
        Err(e) => {
            modules_gone(&mut plan, &e);
            return (plan, None);
        }
    };
    let modules_parent = root.join("lib/modules");
    let present = wanted.iter().filter(|k| plan.drives(**k)).count();
    let mmio_params = mmio_module_params(plan.cmdline_discovery, present);
    match host_modules::read(
        &modules_parent,
        &release,
        &modules,
        ("virtio_mmio", &mmio_params),
    ) {
        Ok(read) => {
            let (modules, sources): (Vec<_>, Vec<_>) = read.into_iter().unzip();
            let names: Vec<&str> = modules
                .iter()
                .map(|m| m.file_name.trim_end_matches(".ko"))
                .collect();
            plan.notes.push(format!(
                "{name}: virtio drivers are modules; loading {} from {}",
                names.join(", "),
                modules_parent.join(&release).display()
            ));
            plan.modules = modules;
            (plan, Some(sources))
        }
        Err(e) => {
            modules_gone(&mut plan, &e);
            (plan, None)
        }
    }
}

/// Every kind in `wanted` once, in the order of first appearance.
fn distinct(wanted: &[DeviceKind]) -> Vec<DeviceKind> {
    let mut kinds = Vec::new();
    for kind in wanted {
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    kinds
}

/// Checks that the kernel has `transport` and a way to find a device on
/// it, setting the plan's discovery and notes; returns why not.
fn find_transport(
    config: &KernelConfig,
    name: &str,
    source: &str,
    transport: Transport,
    plan: &mut KernelPlan,
) -> Option<String> {
    let is_set = |option: &str| {
        matches!(
            config.option(option),
            Some(Tristate::Yes | Tristate::Module)
        )
    };
    if transport == Transport::Pci {
        if config.option("PCI") != Some(Tristate::Yes) || !is_set("VIRTIO_PCI") {
            return Some(format!(
                "{name} has no virtio-pci transport (CONFIG_PCI=y and CONFIG_VIRTIO_PCI are \
                 needed, in {source})"
            ));
        }
        plan.notes
            .push(format!("{name}: virtio devices on PCI (CONFIG_VIRTIO_PCI)"));
        return None;
    }
    if !is_set("VIRTIO_MMIO") {
        return Some(format!(
            "{name} has no virtio-mmio transport (CONFIG_VIRTIO_MMIO is not set in {source})"
        ));
    }
    if config.option("VIRTIO_MMIO_CMDLINE_DEVICES") == Some(Tristate::Yes) {
        plan.cmdline_discovery = true;
        plan.notes.push(format!(
            "{name}: virtio devices are announced on the command line \
             (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y)"
        ));
        return None;
    }
    if config.option("ACPI") == Some(Tristate::Yes) {
        plan.acpi_discovery = true;
        plan.notes.push(format!(
            "{name}: virtio devices are announced in ACPI (CONFIG_ACPI=y, no \
             CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)"
        ));
        return None;
    }
    Some(format!(
        "{name} cannot find a virtio-mmio device: neither CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES nor \
         CONFIG_ACPI is set in {source}"
    ))
}

/// The `virtio_mmio` module's parameters for `devices` devices: one
/// `device=` per slot (from the slot allocator) when the devices are
/// announced on the command line (a module loaded by `finit_module` does
/// not read `/proc/cmdline`), none for ACPI.
fn mmio_module_params(cmdline_discovery: bool, devices: usize) -> String {
    if !cmdline_discovery {
        return String::new();
    }
    vmm::layout::virtio_slots(devices)
        .unwrap_or_default()
        .iter()
        .map(|slot| format!("device={}", slot.cmdline_device()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan for a kernel whose configuration is unknown (`why`): offer the
/// devices both ways; guest-init falls back to the UARTs after a bounded
/// wait if no port appears, and fails the run if a share cannot be
/// mounted.
fn unknown_config(name: &str, why: String, kinds: Vec<DeviceKind>) -> KernelPlan {
    KernelPlan {
        kinds,
        cmdline_discovery: true,
        acpi_discovery: true,
        // It may have PCI; `pci=off` costs a kernel without it nothing.
        pci: true,
        notes: vec![format!(
            "{name}: {why}; offering the virtio devices, announced on the command line and in \
             ACPI (guest-init uses the UARTs if no port appears)"
        )],
        ..KernelPlan::default()
    }
}
