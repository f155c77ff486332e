//! What the guest kernel can drive, decided before it boots: which of the
//! virtio devices a run asks for it gets, how it finds their virtio-mmio
//! windows (the command line or ACPI), and which of the kernel's own
//! modules guest-init must load first when its drivers are modules.
//!
//! The decision reads the kernel's release from its image and its build
//! configuration from beside it, `/boot` or `/lib/modules`
//! ([`initrd_tools::kernel_info`]), and checks each device kind asked for
//! against its row of the requirement table ([`requirements::requirement`]:
//! kernel options, modules, what a run does without it):
//!
//! | the kind's options, and the transport | discovery | result |
//! | --- | --- | --- |
//! | all `y` | `VIRTIO_MMIO_CMDLINE_DEVICES=y`, else `ACPI=y` | the device, no modules |
//! | some `m` | as above | the device and the modules, from `/lib/modules/<release>` |
//! | any unset | - | refused: the console falls back to the UARTs, a share fails the run |
//! | any | neither | refused, likewise |
//! | no configuration found | both | every device, no modules |
//!
//! When the modules cannot be found or read, every device is refused with a
//! note saying why (the program's streams go over the UARTs). Nothing here
//! fails a run; [`crate::plan`] fails it when a device that has nothing to
//! fall back to is refused.
//!
//! ```no_run
//! use microrun::guest_kernel::{plan, Transport};
//! use vmm::DeviceKind;
//!
//! let kinds = [DeviceKind::Console, DeviceKind::Share];
//! let plan = plan("/boot/vmlinuz-6.1.0-57-amd64".as_ref(), &kinds, Transport::Mmio);
//! for note in &plan.notes {
//!     println!("{note}");
//! }
//! assert!(plan.drives(DeviceKind::Console) && plan.acpi_discovery);
//! ```

mod cache;
mod host_modules;
pub mod requirements;
#[cfg(test)]
mod tests;

use std::path::Path;

use vmm::DeviceKind;

pub(crate) use cache::{by_metadata, Stamp};
pub use requirements::{requirement, Requirement, Without};

/// The environment variable that turns the virtio-console off.
pub const VIRTIO_VAR: &str = "MICRORUN_VIRTIO";

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestKernelError {
    /// `MICRORUN_VIRTIO` has a value other than `on` or `off`.
    #[error(
        "{VIRTIO_VAR}={0:?} is not a setting: use `on` (the default: the virtio-console where the \
         kernel can drive it) or `off` (the program's streams over the UARTs)"
    )]
    Setting(String),
}

/// What `MICRORUN_VIRTIO` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioSetting {
    /// Unset, empty or `on`: the virtio-console where the kernel can drive it.
    On,
    /// `off`: always the UARTs.
    Off,
}

/// The setting named by `value` (of [`VIRTIO_VAR`]).
pub fn parse_setting(value: Option<&str>) -> Result<VirtioSetting, GuestKernelError> {
    match value {
        None | Some("") | Some("on") => Ok(VirtioSetting::On),
        Some("off") => Ok(VirtioSetting::Off),
        Some(other) => Err(GuestKernelError::Setting(other.to_string())),
    }
}

/// The setting of this process's environment.
pub fn setting_from_env() -> Result<VirtioSetting, GuestKernelError> {
    match std::env::var_os(VIRTIO_VAR) {
        None => Ok(VirtioSetting::On),
        Some(value) => parse_setting(Some(&value.to_string_lossy())),
    }
}

/// The bus the virtio devices sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// virtio-mmio: microrun's VMM, and QEMU's `microvm` machine.
    #[default]
    Mmio,
    /// virtio-pci: QEMU's `pc` machine, for kernels that find virtio-mmio
    /// devices only through ACPI (which QEMU's `microvm` gives only with
    /// its ACPI tables, under which such kernels do not boot under TCG).
    Pci,
}

/// One module guest-init loads, with `finit_module`, before the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestModule {
    /// `<name>.ko`, the name it gets in the initrd.
    pub file_name: String,
    /// The module's ELF bytes, decompressed.
    pub bytes: Vec<u8>,
    /// Its parameters (`device=4K@0xd0000000:5`), empty for none: a raw
    /// `finit_module` does not read `/proc/cmdline` as modprobe does.
    pub params: String,
}

/// What one kernel gets of the virtio devices a run asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelPlan {
    /// The bus the devices are planned on.
    pub transport: Transport,
    /// The kinds asked for that this kernel can drive, in the order asked.
    pub kinds: Vec<DeviceKind>,
    /// The kinds asked for that it cannot drive, each with why.
    pub refused: Vec<(DeviceKind, String)>,
    /// Announce the devices on the kernel command line: the kernel has
    /// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y`, or its configuration is
    /// unknown.
    pub cmdline_discovery: bool,
    /// Announce them in ACPI tables: the kernel has `CONFIG_ACPI=y` and no
    /// command-line devices, or its configuration is unknown.
    pub acpi_discovery: bool,
    /// Modules for guest-init to load, in load order.
    pub modules: Vec<GuestModule>,
    /// The kernel may have PCI (`CONFIG_PCI`, or its configuration is
    /// unknown): a VM without a PCI bus boots it with `pci=off`, so that it
    /// does not probe for one (a kernel without PCI hands the argument to
    /// init's environment, where guest-init ignores it).
    pub pci: bool,
    /// Why, one line per decision (logged at `-v`).
    pub notes: Vec<String>,
}

impl KernelPlan {
    /// No virtio device, for `why`.
    pub fn none(why: String) -> KernelPlan {
        KernelPlan {
            notes: vec![why],
            ..KernelPlan::default()
        }
    }

    /// Whether the kernel gets devices of `kind`.
    pub fn drives(&self, kind: DeviceKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Why the kernel cannot drive `kind`, when it was asked for and cannot.
    pub fn refusal(&self, kind: DeviceKind) -> Option<&str> {
        self.refused
            .iter()
            .find(|(refused, _)| *refused == kind)
            .map(|(_, why)| why.as_str())
    }

    /// Refuses every kind (dropping the modules) for `why`, added to the
    /// notes: the modules the devices need cannot be shipped.
    pub fn refuse_all(&mut self, why: String) {
        let kinds = std::mem::take(&mut self.kinds);
        self.refused
            .extend(kinds.into_iter().map(|kind| (kind, why.clone())));
        self.modules.clear();
        self.cmdline_discovery = false;
        self.acpi_discovery = false;
        self.notes.push(why);
    }
}

/// The plan for booting `kernel` with the devices `wanted` (one entry per
/// device, in the VM's order: the `virtio_mmio` module's parameters name
/// their slots) on `transport`, cached in `<cache dir>/virtio/` (see
/// [`plan_under`]).
pub fn plan(kernel: &Path, wanted: &[DeviceKind], transport: Transport) -> KernelPlan {
    // The cache is only an optimisation: one that is not the user's alone
    // (or cannot be made) is left unused, with the reason.
    let cache = match initrd_tools::cache::subdir("virtio") {
        Ok(dir) => Some(dir),
        Err(e) => {
            log::warn!("{e}; deciding the virtio plan without the cache");
            None
        }
    };
    plan_under(Path::new("/"), kernel, wanted, transport, cache.as_deref())
}

/// [`plan`] with `/boot` and `/lib/modules` taken under `root`, and the
/// cache in `cache` (none: always decide afresh).
///
/// Reading a distribution kernel's configuration and module indexes takes
/// some 25 ms, on every run; a cached plan, with the modules' bytes, takes
/// well under one. It is used while the kernel, every place its
/// configuration may be, the module indexes and the modules themselves
/// have the same metadata (device, inode, size, mtime and ctime) as when
/// it was made. Plans whose modules could not be read are not cached.
pub fn plan_under(
    root: &Path,
    kernel: &Path,
    wanted: &[DeviceKind],
    transport: Transport,
    cache: Option<&Path>,
) -> KernelPlan {
    let release = match cache {
        Some(dir) => cache::release(dir, kernel),
        None => initrd_tools::kernel_info::kernel_release(kernel),
    };
    let key = cache.map(|_| cache::key(root, kernel, release.as_deref().ok(), wanted, transport));
    if let (Some(dir), Some(key)) = (cache, &key) {
        if let Some(plan) = cache::load(dir, key) {
            return plan;
        }
    }
    let (mut plan, sources) = requirements::decide(root, kernel, release, wanted, transport);
    plan.transport = transport;
    if let (Some(dir), Some(key), Some(sources)) = (cache, &key, sources) {
        cache::store(dir, key, &plan, &sources);
    }
    plan
}
