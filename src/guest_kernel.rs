//! What the guest kernel can drive, decided before it boots: whether the
//! guest gets the virtio-console (else the UARTs carry the program's
//! streams), how the kernel finds its virtio-mmio window (the command line
//! or ACPI), and which of the kernel's own modules guest-init must load
//! first when its virtio drivers are modules.
//!
//! The decision reads the kernel's release from its image and its build
//! configuration from beside it, `/boot` or `/lib/modules`
//! ([`initrd_tools::kernel_info`]):
//!
//! | `VIRTIO_MMIO`, `VIRTIO_CONSOLE` | discovery | result |
//! | --- | --- | --- |
//! | both `y` | `VIRTIO_MMIO_CMDLINE_DEVICES=y`, else `ACPI=y` | the console, no modules |
//! | either `m` | as above | the console and the modules, from `/lib/modules/<release>` |
//! | either unset | - | the UARTs |
//! | any | neither | the UARTs |
//! | no configuration found | both | the console, no modules |
//!
//! When the modules cannot be found or read, the run falls back to the
//! UARTs with a note saying why; so does `MICRORUN_VIRTIO=off`. Nothing here
//! fails a run except a `MICRORUN_VIRTIO` value that means nothing.
//!
//! Shares (`--bind`) need the transport too, and 9p over virtio
//! (`NET_9P`, `NET_9P_VIRTIO`, `9P_FS`; as modules, `9pnet_virtio` and `9p`
//! with what they depend on); where the kernel lacks them the plan says why
//! ([`VirtioPlan::share_problem`]), and the run fails, since a share has
//! nothing to fall back to.
//!
//! ```no_run
//! use microrun::guest_kernel::{plan, Transport};
//!
//! let plan = plan("/boot/vmlinuz-6.1.0-57-amd64".as_ref(), 1, Transport::Mmio)?;
//! for note in &plan.notes {
//!     println!("{note}");
//! }
//! assert!(plan.console && plan.acpi_discovery && plan.shares == 1);
//! # Ok::<(), microrun::guest_kernel::GuestKernelError>(())
//! ```

use std::path::Path;

use initrd_tools::kernel_info::{kernel_release, KernelConfig, KernelInfoError, Tristate};
use initrd_tools::modules::{ModuleFile, ModuleTree, ModulesError};
use vmm::layout::{VirtioMmioSlot, VIRTIO_SHARE_SLOTS};

use crate::binds::Bind;

/// The environment variable that turns the virtio-console off.
pub const VIRTIO_VAR: &str = "MICRORUN_VIRTIO";

/// The modules that give a kernel the virtio-console over virtio-mmio (or
/// virtio-pci).
const VIRTIO_MMIO_MODULE: &str = "virtio_mmio";
const VIRTIO_PCI_MODULE: &str = "virtio_pci";
const VIRTIO_CONSOLE_MODULE: &str = "virtio_console";
/// The modules that let a kernel mount a share (9p over virtio); their
/// dependencies (`9pnet`, `netfs`, ...) come from `modules.dep`.
const NET_9P_VIRTIO_MODULE: &str = "9pnet_virtio";
const NINE_P_FS_MODULE: &str = "9p";

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

/// How the guest gets its virtio devices, for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtioPlan {
    /// The bus the devices are planned on.
    pub transport: Transport,
    /// Offer the virtio-console (else the UARTs carry the program's
    /// streams, as they always did).
    pub console: bool,
    /// How many shares (virtio-9p devices, `--bind`) the guest gets: the
    /// number asked for, or 0 with [`VirtioPlan::share_problem`] saying why.
    pub shares: usize,
    /// Why the shares asked for cannot be given to this kernel: a run with
    /// `--bind` fails with it, since there is nothing to fall back to.
    pub share_problem: Option<String>,
    /// Announce the devices on the kernel command line: the kernel has
    /// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y`, or its configuration is
    /// unknown.
    pub cmdline_discovery: bool,
    /// Announce them in ACPI tables: the kernel has `CONFIG_ACPI=y` and no
    /// command-line devices, or its configuration is unknown.
    pub acpi_discovery: bool,
    /// Modules for guest-init to load, in load order.
    pub modules: Vec<GuestModule>,
    /// The console's ports may still hold output when the status line
    /// arrives (QEMU's virtio-serial): guest-init relays the program's
    /// output and reports the byte counts (`ports=virtio-relay`). Set by
    /// the engine, never cached.
    pub relay_output: bool,
    /// Why, one line per decision (logged at `-v`).
    pub notes: Vec<String>,
}

impl VirtioPlan {
    /// The UARTs only, for `why`.
    pub fn uarts(why: String) -> VirtioPlan {
        VirtioPlan {
            notes: vec![why],
            ..VirtioPlan::default()
        }
    }

    /// Falls back to the UARTs (dropping the modules), adding `why` to the
    /// notes; shares asked for are lost, with `why` as the problem.
    pub fn use_uarts(&mut self, why: String) {
        let notes = std::mem::take(&mut self.notes);
        let lost_shares = self.shares > 0 || self.share_problem.is_some();
        *self = VirtioPlan::uarts(why.clone());
        self.notes.splice(0..0, notes);
        if lost_shares {
            self.share_problem = Some(why);
        }
    }

    /// The slots of the devices planned, in the order the VMM places them:
    /// the console's, then one per share.
    pub fn slots(&self) -> Vec<VirtioMmioSlot> {
        vmm::layout::virtio_slots(self.console, self.shares)
    }

    /// The shares of `binds` this plan gives the guest (as many as
    /// [`VirtioPlan::shares`]), each with its mount tag.
    pub fn shared<'b>(&self, binds: &'b [Bind]) -> impl Iterator<Item = (String, &'b Bind)> {
        binds
            .iter()
            .take(self.shares)
            .enumerate()
            .map(|(index, bind)| (share_tag(index), bind))
    }

    /// The devices the kvm engine asks the VMM for, serving `binds` (as
    /// many as [`VirtioPlan::shares`]): the part of the plan it needs once
    /// the modules are in the initrd.
    pub fn devices(&self, binds: &[Bind]) -> vmm::VirtioOptions {
        let any = self.console || self.shares > 0;
        vmm::VirtioOptions {
            console: self.console,
            shares: self
                .shared(binds)
                .map(|(tag, bind)| vmm::SharedDir {
                    source: bind.source.clone(),
                    tag,
                    read_only: bind.read_only,
                })
                .collect(),
            cmdline: any && self.cmdline_discovery,
            acpi: any && self.acpi_discovery,
        }
    }
}

/// The 9p mount tag of the `index`th share, as guest-init mounts it.
fn share_tag(index: usize) -> String {
    format!("microrun{index}")
}

/// The plan for booting `kernel` with `shares` host directories on
/// `transport`, with the setting of `MICRORUN_VIRTIO`, cached in
/// `<cache dir>/virtio/` (see [`plan_under`]).
pub fn plan(
    kernel: &Path,
    shares: usize,
    transport: Transport,
) -> Result<VirtioPlan, GuestKernelError> {
    let setting = setting_from_env()?;
    let cache = initrd_tools::cache_dir().ok().map(|dir| dir.join("virtio"));
    Ok(plan_on(
        Path::new("/"),
        kernel,
        setting,
        shares,
        transport,
        cache.as_deref(),
    ))
}

/// [`plan`] with `/boot` and `/lib/modules` taken under `root`, the setting
/// given, and the cache in `cache` (none: always decide afresh).
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
    setting: VirtioSetting,
    shares: usize,
    cache: Option<&Path>,
) -> VirtioPlan {
    plan_on(root, kernel, setting, shares, Transport::Mmio, cache)
}

/// [`plan_under`] on `transport`.
pub fn plan_on(
    root: &Path,
    kernel: &Path,
    setting: VirtioSetting,
    shares: usize,
    transport: Transport,
    cache: Option<&Path>,
) -> VirtioPlan {
    let shares = shares.min(VIRTIO_SHARE_SLOTS.len());
    if setting == VirtioSetting::Off && shares == 0 {
        return VirtioPlan::uarts(format!(
            "{VIRTIO_VAR}=off: the program's streams go over the UARTs"
        ));
    }
    let release = kernel_release(kernel);
    let key = cache.map(|_| {
        let mut key = plan_cache::key(root, kernel, release.as_deref().ok());
        key.push_str(&format!(
            "setting {setting:?} shares {shares} transport {transport:?}\n"
        ));
        key
    });
    if let (Some(dir), Some(key)) = (cache, &key) {
        if let Some(plan) = plan_cache::load(dir, key) {
            return plan;
        }
    }
    let (mut plan, sources) = decide(root, kernel, release, setting, shares, transport);
    plan.transport = transport;
    if let (Some(dir), Some(key), Some(sources)) = (cache, &key, sources) {
        plan_cache::store(dir, key, &plan, &sources);
    }
    plan
}

/// The plan, and the metadata of the module files read for it (`None`
/// when the modules could not be read: not worth caching).
fn decide(
    root: &Path,
    kernel: &Path,
    release: Result<String, KernelInfoError>,
    setting: VirtioSetting,
    shares: usize,
    transport: Transport,
) -> (VirtioPlan, Option<Vec<ModuleSource>>) {
    let name = match &release {
        Ok(release) => format!("kernel {release}"),
        Err(_) => format!("kernel {}", kernel.display()),
    };
    let want_console = setting == VirtioSetting::On;
    let config = KernelConfig::find_under(root, kernel, release.as_deref().unwrap_or(""));
    let config = match config {
        Ok(Some(config)) => config,
        Ok(None) => {
            let why = "no build configuration found".to_string();
            return (
                unknown_config(&name, why, want_console, shares),
                Some(Vec::new()),
            );
        }
        Err(e) => {
            let plan = unknown_config(&name, e.to_string(), want_console, shares);
            return (plan, Some(Vec::new()));
        }
    };
    let source = config.source().display().to_string();
    let is_set = |option: &str| {
        matches!(
            config.option(option),
            Some(Tristate::Yes | Tristate::Module)
        )
    };
    let mut plan = VirtioPlan::default();
    // Every device needs the transport and a way for the kernel to find it.
    let transport_problem = if transport == Transport::Pci {
        if config.option("PCI") != Some(Tristate::Yes) || !is_set("VIRTIO_PCI") {
            Some(format!(
                "{name} has no virtio-pci transport (CONFIG_PCI=y and CONFIG_VIRTIO_PCI are \
                 needed, in {source})"
            ))
        } else {
            plan.notes
                .push(format!("{name}: virtio devices on PCI (CONFIG_VIRTIO_PCI)"));
            None
        }
    } else if !is_set("VIRTIO_MMIO") {
        Some(format!(
            "{name} has no virtio-mmio transport (CONFIG_VIRTIO_MMIO is not set in {source})"
        ))
    } else if config.option("VIRTIO_MMIO_CMDLINE_DEVICES") == Some(Tristate::Yes) {
        plan.cmdline_discovery = true;
        plan.notes.push(format!(
            "{name}: virtio devices are announced on the command line \
             (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y)"
        ));
        None
    } else if config.option("ACPI") == Some(Tristate::Yes) {
        plan.acpi_discovery = true;
        plan.notes.push(format!(
            "{name}: virtio devices are announced in ACPI (CONFIG_ACPI=y, no \
             CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)"
        ));
        None
    } else {
        Some(format!(
            "{name} cannot find a virtio-mmio device: neither \
             CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES nor CONFIG_ACPI is set in {source}"
        ))
    };
    if want_console {
        let problem = transport_problem.clone().or_else(|| {
            (!is_set("VIRTIO_CONSOLE")).then(|| {
                format!(
                    "{name} has no virtio console driver (CONFIG_VIRTIO_CONSOLE is not set in \
                     {source})"
                )
            })
        });
        match problem {
            Some(why) => plan
                .notes
                .push(format!("{why}: the program's streams go over the UARTs")),
            None => plan.console = true,
        }
    } else {
        plan.notes.push(format!(
            "{VIRTIO_VAR}=off: the program's streams go over the UARTs"
        ));
    }
    if shares > 0 {
        let problem = transport_problem.or_else(|| {
            let missing: Vec<&str> = ["NET_9P", "NET_9P_VIRTIO", "9P_FS"]
                .into_iter()
                .filter(|option| !is_set(option))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "{name} cannot mount a 9p share: CONFIG_{} not set in {source}",
                    missing.join(", CONFIG_") + if missing.len() == 1 { " is" } else { " are" }
                )
            })
        });
        match problem {
            Some(why) => plan.share_problem = Some(why),
            None => plan.shares = shares,
        }
    }
    let module = |option: &str| config.option(option) == Some(Tristate::Module);
    let mut wanted: Vec<&str> = Vec::new();
    let (bus_option, bus_module) = match transport {
        Transport::Mmio => ("VIRTIO_MMIO", VIRTIO_MMIO_MODULE),
        Transport::Pci => ("VIRTIO_PCI", VIRTIO_PCI_MODULE),
    };
    if (plan.console || plan.shares > 0) && module(bus_option) {
        wanted.push(bus_module);
    }
    if plan.console && module("VIRTIO_CONSOLE") {
        wanted.push(VIRTIO_CONSOLE_MODULE);
    }
    if plan.shares > 0 {
        if module("NET_9P_VIRTIO") {
            wanted.push(NET_9P_VIRTIO_MODULE);
        }
        if module("9P_FS") {
            wanted.push(NINE_P_FS_MODULE);
        }
    }
    if wanted.is_empty() {
        if plan.console || plan.shares > 0 {
            plan.notes
                .push(format!("{name}: the virtio drivers are built in"));
        }
        return (plan, Some(Vec::new()));
    }
    let release = match release {
        Ok(release) => release,
        Err(e) => {
            plan.use_uarts(format!(
                "{name}: the virtio drivers are modules, but {e}; the program's streams go over \
                 the UARTs"
            ));
            return (plan, None);
        }
    };
    let modules_parent = root.join("lib/modules");
    let mmio_params = mmio_module_params(&plan);
    match host_modules(&modules_parent, &release, &wanted, &mmio_params) {
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
            plan.use_uarts(format!(
                "{name}: the virtio drivers are modules, but {e}; the program's streams go \
                 over the UARTs"
            ));
            (plan, None)
        }
    }
}

/// The `virtio_mmio` module's parameters: one `device=` per slot when the
/// devices are announced on the command line (a module loaded by
/// `finit_module` does not read `/proc/cmdline`), none for ACPI.
fn mmio_module_params(plan: &VirtioPlan) -> String {
    if !plan.cmdline_discovery {
        return String::new();
    }
    plan.slots()
        .iter()
        .map(|slot| format!("device={}", slot.cmdline_device()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan for a kernel whose configuration is unknown (`why`): offer the
/// devices both ways; guest-init falls back to the UARTs after a bounded
/// wait if no port appears, and fails the run if a share cannot be
/// mounted.
fn unknown_config(name: &str, why: String, console: bool, shares: usize) -> VirtioPlan {
    VirtioPlan {
        transport: Transport::Mmio,
        console,
        shares,
        share_problem: None,
        cmdline_discovery: true,
        acpi_discovery: true,
        modules: Vec::new(),
        relay_output: false,
        notes: vec![format!(
            "{name}: {why}; offering the virtio devices, announced on the command line and in \
             ACPI (guest-init uses the UARTs if no port appears)"
        )],
    }
}

/// The modules `wanted` and what they need, from `<parent>/<release>`, read;
/// or why not.
fn host_modules(
    parent: &Path,
    release: &str,
    wanted: &[&str],
    mmio_params: &str,
) -> Result<Vec<(GuestModule, ModuleSource)>, String> {
    let tree = ModuleTree::for_release_under(parent, release).map_err(|e| e.to_string())?;
    tree.resolve(wanted)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|file| guest_module(file, mmio_params))
        .collect()
}

fn guest_module(
    file: &ModuleFile,
    mmio_params: &str,
) -> Result<(GuestModule, ModuleSource), String> {
    // The name becomes part of a path in the initrd and of a run-config
    // record; modules.dep is untrusted.
    if !is_plain_module_name(&file.name) {
        return Err(format!(
            "{} has a module name ({:?}) that is not a plain file name",
            file.path.display(),
            file.name
        ));
    }
    let params = if file.name == VIRTIO_MMIO_MODULE {
        mmio_params.to_string()
    } else {
        String::new()
    };
    // Taken before reading: a file that changes meanwhile misses next time.
    let source = ModuleSource {
        path: file.path.clone(),
        stat: plan_cache::stat_line(&file.path),
    };
    let module = GuestModule {
        file_name: file.file_name(),
        bytes: file.read().map_err(|e: ModulesError| e.to_string())?,
        params,
    };
    Ok((module, source))
}

/// Where a module's bytes came from, as the cache checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModuleSource {
    /// The file on the host.
    path: std::path::PathBuf,
    /// Its metadata ([`plan_cache::stat_line`]) before it was read.
    stat: String,
}

/// Whether `name` is 1 to 64 characters from `[A-Za-z0-9_.+-]`, not
/// starting with a dot: a safe file name (module names are `[a-z0-9_]`).
fn is_plain_module_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
}

/// The cache of plans: one file per key in `<cache dir>/virtio/`, named by
/// a hash of the key and holding the key itself, so that a collision is a
/// miss. Everything read back is checked; any surprise is a miss, and any
/// failure to write is only logged: the cache is an optimisation.
mod plan_cache {
    use std::collections::hash_map::DefaultHasher;
    use std::fs;
    use std::hash::{Hash, Hasher};
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::MetadataExt as _;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use initrd_tools::kernel_info::KernelConfig;
    use initrd_tools::modules::INDEX_FILES;
    use initrd_tools::InitrdError;

    use super::{GuestModule, ModuleSource, VirtioPlan};

    /// Changes whenever the decision or this format changes.
    const FORMAT: &str = "microrun-virtio-plan-v2";
    /// How many plans the cache keeps.
    const KEEP: usize = 16;
    /// Largest entry read back (a few modules of a few hundred KiB each).
    const MAX_ENTRY_BYTES: u64 = 64 << 20;

    /// `path` and its metadata, or why there is none, on one line.
    pub(super) fn stat_line(path: &Path) -> String {
        match fs::metadata(path) {
            Ok(m) => format!(
                "{} {}:{} {} {}.{} {}.{}",
                path.display(),
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
            Err(e) => format!("{} {:?}", path.display(), e.kind()),
        }
    }

    /// What a plan for `kernel` depends on besides its modules: the kernel,
    /// the places its configuration may be, and its module indexes.
    pub(super) fn key(root: &Path, kernel: &Path, release: Option<&str>) -> String {
        let mut key = format!(
            "{FORMAT} {}\nroot {}\n{}\n",
            env!("CARGO_PKG_VERSION"),
            root.display(),
            stat_line(kernel)
        );
        let release = release.unwrap_or("");
        for candidate in KernelConfig::candidates(root, kernel, release) {
            key.push_str(&stat_line(&candidate));
            key.push('\n');
        }
        if !release.is_empty() {
            let dir = root.join("lib/modules").join(release);
            key.push_str(&stat_line(&dir));
            key.push('\n');
            for index in INDEX_FILES {
                key.push_str(&stat_line(&dir.join(index)));
                key.push('\n');
            }
        }
        key
    }

    fn entry_path(dir: &Path, key: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        dir.join(format!("{:016x}.plan", hasher.finish()))
    }

    /// The cached plan for `key` whose modules are unchanged, if any.
    pub(super) fn load(dir: &Path, key: &str) -> Option<VirtioPlan> {
        let path = entry_path(dir, key);
        let file = fs::File::open(&path).ok()?;
        if file.metadata().ok()?.len() > MAX_ENTRY_BYTES {
            return None;
        }
        // From the file just measured, bounded all the same (it may grow).
        let mut bytes = Vec::new();
        file.take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_ENTRY_BYTES {
            return None;
        }
        let plan = decode(&bytes, key)?;
        log::debug!("virtio: plan from the cache, {}", path.display());
        initrd_tools::cache::touch(&path);
        Some(plan)
    }

    /// Caches `plan` (made from modules with `sources`) under `key`, the
    /// way the initrd cache writes and evicts its archives.
    pub(super) fn store(dir: &Path, key: &str, plan: &VirtioPlan, sources: &[ModuleSource]) {
        let path = entry_path(dir, key);
        let write = || -> Result<(), InitrdError> {
            fs::create_dir_all(dir).map_err(|source| InitrdError::Cache {
                path: dir.to_path_buf(),
                source,
            })?;
            initrd_tools::write_atomically_with(&path, dir, |mut file, _| {
                file.write_all(&encode(key, plan, sources))
                    .map_err(|source| InitrdError::Write {
                        path: path.clone(),
                        source,
                    })
            })
        };
        match write() {
            Ok(()) => initrd_tools::cache::evict_entries(dir, ".plan", KEEP, Duration::ZERO),
            Err(e) => log::debug!("virtio: cannot cache the plan in {}: {e}", dir.display()),
        }
    }

    /// Appends `bytes`, prefixed with their length (8 bytes, little-endian).
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    fn encode(key: &str, plan: &VirtioPlan, sources: &[ModuleSource]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, key.as_bytes());
        out.extend([
            u8::from(plan.console),
            u8::from(plan.cmdline_discovery),
            u8::from(plan.acpi_discovery),
            u8::from(plan.transport == super::Transport::Pci),
        ]);
        put(&mut out, &(plan.shares as u64).to_le_bytes());
        put(
            &mut out,
            plan.share_problem.as_deref().unwrap_or("").as_bytes(),
        );
        put(&mut out, &(plan.notes.len() as u64).to_le_bytes());
        for note in &plan.notes {
            put(&mut out, note.as_bytes());
        }
        put(&mut out, &(plan.modules.len() as u64).to_le_bytes());
        for (module, source) in plan.modules.iter().zip(sources) {
            put(&mut out, module.file_name.as_bytes());
            put(&mut out, module.params.as_bytes());
            put(&mut out, source.path.as_os_str().as_encoded_bytes());
            put(&mut out, source.stat.as_bytes());
            put(&mut out, &module.bytes);
        }
        out
    }

    /// Reads an entry back field by field; `None` on anything unexpected.
    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = self.0.split_at_checked(n)?;
            self.0 = rest;
            Some(head)
        }

        fn field(&mut self) -> Option<&'a [u8]> {
            let len = u64::from_le_bytes(self.bytes(8)?.try_into().ok()?);
            self.bytes(usize::try_from(len).ok()?)
        }

        fn text(&mut self) -> Option<String> {
            String::from_utf8(self.field()?.to_vec()).ok()
        }

        fn count(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.field()?.try_into().ok()?))
        }

        fn flag(&mut self) -> Option<bool> {
            match self.bytes(1)? {
                [0] => Some(false),
                [1] => Some(true),
                _ => None,
            }
        }
    }

    fn decode(bytes: &[u8], key: &str) -> Option<VirtioPlan> {
        let mut r = Reader(bytes);
        if r.field()? != key.as_bytes() {
            return None;
        }
        let mut plan = VirtioPlan {
            console: r.flag()?,
            cmdline_discovery: r.flag()?,
            acpi_discovery: r.flag()?,
            transport: if r.flag()? {
                super::Transport::Pci
            } else {
                super::Transport::Mmio
            },
            shares: usize::try_from(r.count()?).ok()?,
            share_problem: Some(r.text()?).filter(|p| !p.is_empty()),
            ..VirtioPlan::default()
        };
        for _ in 0..r.count()? {
            plan.notes.push(r.text()?);
        }
        for _ in 0..r.count()? {
            let file_name = r.text()?;
            let params = r.text()?;
            let path = PathBuf::from(r.text()?);
            let stat = r.text()?;
            if stat_line(&path) != stat {
                return None;
            }
            plan.modules.push(GuestModule {
                file_name,
                params,
                bytes: r.field()?.to_vec(),
            });
        }
        r.0.is_empty().then_some(plan)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn entries_round_trip_and_garbage_is_a_miss() {
            let dir = tempfile::tempdir().unwrap();
            let module = dir.path().join("m.ko");
            fs::write(&module, b"\x7fELF").unwrap();
            let plan = VirtioPlan {
                console: true,
                acpi_discovery: true,
                modules: vec![GuestModule {
                    file_name: "m.ko".into(),
                    bytes: b"\x7fELF".to_vec(),
                    params: "a=1".into(),
                }],
                notes: vec!["one".into(), "two".into()],
                ..VirtioPlan::default()
            };
            let sources = [ModuleSource {
                path: module.clone(),
                stat: stat_line(&module),
            }];
            let bytes = encode("k", &plan, &sources);
            assert_eq!(decode(&bytes, "k").as_ref(), Some(&plan));
            assert_eq!(decode(&bytes, "other"), None);
            for len in 0..bytes.len() {
                assert_eq!(decode(&bytes[..len], "k"), None, "{len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode(&longer, "k"), None);
            for at in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 0x80;
                let _ = decode(&flipped, "k");
            }
            // A module changed since: a miss.
            fs::write(&module, b"\x7fELF changed").unwrap();
            assert_eq!(decode(&bytes, "k"), None);

            let cache = dir.path().join("cache");
            store(&cache, "k", &plan, &sources);
            assert_eq!(load(&cache, "k"), None, "the module changed");
            let sources = [ModuleSource {
                path: module.clone(),
                stat: stat_line(&module),
            }];
            store(&cache, "k", &plan, &sources);
            assert_eq!(load(&cache, "k").as_ref(), Some(&plan));
            for n in 0..KEEP + 4 {
                store(&cache, &format!("k{n}"), &plan, &sources);
            }
            let count = fs::read_dir(&cache).unwrap().count();
            assert_eq!(count, KEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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

    /// A minimal relocatable ELF with `.modinfo` naming `vermagic`, as
    /// `ModuleFile::read` checks it.
    fn fake_module(vermagic: &str) -> Vec<u8> {
        let modinfo = format!("license=GPL\0vermagic={vermagic} SMP mod_unload \0name=x\0");
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut b = vec![0u8; 64];
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[0x10] = 1; // ET_REL
        b[0x12] = 62; // EM_X86_64
        let modinfo_off = b.len();
        b.extend(modinfo.as_bytes());
        let shstrtab_off = b.len();
        b.extend(shstrtab);
        let shoff = b.len();
        let section = |name: u32, kind: u32, off: usize, size: usize| {
            let mut sh = vec![0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            sh
        };
        b.extend(section(0, 0, 0, 0));
        b.extend(section(1, 1, modinfo_off, modinfo.len()));
        b.extend(section(10, 3, shstrtab_off, shstrtab.len()));
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x34] = 64;
        b[0x3a] = 64;
        b[0x3c] = 3;
        b[0x3e] = 2;
        b
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

        fn plan(&self) -> VirtioPlan {
            self.plan_with(VirtioSetting::On, 0)
        }

        fn plan_with(&self, setting: VirtioSetting, shares: usize) -> VirtioPlan {
            plan_under(self.root.path(), &self.kernel(), setting, shares, None)
        }
    }

    /// Debian's 9p options, for [`DEBIAN`].
    const NINE_P_MODULES: &str = "CONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_9P_FS=m\n";

    #[test]
    fn shares_bring_their_modules_after_the_transport() {
        let config = format!("{DEBIAN}{NINE_P_MODULES}");
        let host = Host::new(Some(&config));
        let plan = host.plan_with(VirtioSetting::On, 2);
        assert_eq!((plan.console, plan.shares), (true, 2), "{:?}", plan.notes);
        assert_eq!(plan.share_problem, None);
        let names = names(&plan);
        let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
        assert!(at("virtio_mmio.ko") < at("9pnet_virtio.ko"), "{names:?}");
        assert!(at("9pnet.ko") < at("9pnet_virtio.ko"), "{names:?}");
        assert!(at("netfs.ko") < at("9p.ko"), "{names:?}");
        assert_eq!(plan.slots().len(), 3);
        // Without the console, the shares still get the transport.
        let plan = host.plan_with(VirtioSetting::Off, 1);
        assert_eq!((plan.console, plan.shares), (false, 1), "{:?}", plan.notes);
        let names = super::tests::names(&plan);
        assert!(names.contains(&"virtio_mmio.ko") && !names.contains(&"virtio_console.ko"));
        // Named on the command line: one device= per slot, the console's first.
        let config = config.replace(
            "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
        );
        let plan = Host::new(Some(&config)).plan_with(VirtioSetting::On, 2);
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
        let plan = Host::new(Some(DEBIAN)).plan_with(VirtioSetting::On, 1);
        assert!(plan.console, "the console does not depend on 9p");
        assert_eq!(plan.shares, 0);
        let why = plan.share_problem.unwrap();
        assert!(
            why.contains("CONFIG_NET_9P, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS are not set"),
            "{why}"
        );
        let config = BUILT_IN.replace("CONFIG_VIRTIO_MMIO=y", "# CONFIG_VIRTIO_MMIO is not set");
        let plan =
            Host::new(Some(&format!("{config}{NINE_P_MODULES}"))).plan_with(VirtioSetting::On, 1);
        assert!(plan.share_problem.unwrap().contains("CONFIG_VIRTIO_MMIO"));
        // Modules that cannot be read: no console, and the shares say why.
        let host = Host::new(Some(&format!("{DEBIAN}{NINE_P_MODULES}")));
        host.write(
            &format!("lib/modules/{RELEASE}/kernel/fs/9p/9p.ko"),
            b"junk",
        );
        let plan = host.plan_with(VirtioSetting::On, 1);
        assert!(!plan.console && plan.shares == 0, "{:?}", plan.notes);
        assert!(plan.share_problem.is_some());
    }

    const BUILT_IN: &str = "CONFIG_VIRTIO=y\nCONFIG_VIRTIO_MMIO=y\n\
        CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_CONSOLE=y\n\
        # CONFIG_ACPI is not set\n";
    const DEBIAN: &str = "CONFIG_ACPI=y\nCONFIG_VIRTIO=m\nCONFIG_VIRTIO_MMIO=m\n\
        # CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_VIRTIO_CONSOLE=m\n";

    fn names(plan: &VirtioPlan) -> Vec<&str> {
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
            err.contains("MICRORUN_VIRTIO=\"OFF\"")
                && err.contains("`on`")
                && err.contains("`off`"),
            "{err}"
        );
        let off = plan_under(
            Path::new("/nonexistent"),
            Path::new("/k"),
            VirtioSetting::Off,
            0,
            None,
        );
        assert_eq!(off.devices(&[]), vmm::VirtioOptions::default());
        assert!(off.modules.is_empty());
        assert!(
            off.notes[0].contains("MICRORUN_VIRTIO=off"),
            "{:?}",
            off.notes
        );
    }

    #[test]
    fn built_in_drivers_need_no_modules() {
        let host = Host::new(Some(BUILT_IN));
        let plan = host.plan();
        assert_eq!(
            plan.devices(&[]),
            vmm::VirtioOptions {
                console: true,
                shares: Vec::new(),
                cmdline: true,
                acpi: false
            },
            "{:?}",
            plan.notes
        );
        assert!(plan.modules.is_empty());
        assert_eq!(
            plan.devices(&[]).kernel_cmdline("quiet"),
            "virtio_mmio.device=4K@0xd0000000:5 quiet"
        );
        // The project kernel's layout: `config` beside the bzImage.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bzImage"), bzimage("6.12.0-microrun")).unwrap();
        std::fs::write(dir.path().join("config"), BUILT_IN).unwrap();
        let plan = plan_under(
            dir.path(),
            &dir.path().join("bzImage"),
            VirtioSetting::On,
            0,
            None,
        );
        assert!(plan.console && plan.cmdline_discovery && plan.modules.is_empty());
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
            plan.devices(&[]),
            vmm::VirtioOptions {
                console: true,
                shares: Vec::new(),
                cmdline: false,
                acpi: true
            },
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
        assert_eq!(plan.devices(&[]).kernel_cmdline("quiet"), "quiet");
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
        assert!(plan.console && plan.cmdline_discovery && !plan.acpi_discovery);
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
            assert_eq!(
                plan.devices(&[]),
                vmm::VirtioOptions::default(),
                "{:?}",
                plan.notes
            );
            assert!(plan.modules.is_empty());
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
            assert_eq!(plan.devices(&[]), vmm::VirtioOptions::default(), "{config}");
            assert!(plan.modules.is_empty());
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
        assert_eq!(
            plan.devices(&[]),
            vmm::VirtioOptions {
                console: true,
                shares: Vec::new(),
                cmdline: true,
                acpi: true
            }
        );
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
            let plan = plan_under(dir.path(), &kernel, VirtioSetting::On, 0, None);
            assert!(plan.console && plan.cmdline_discovery && plan.acpi_discovery);
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
        assert!(plan.console && plan.cmdline_discovery && plan.acpi_discovery);
        // Modules with a kernel of unknown release cannot be found.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bzImage"), b"not a kernel").unwrap();
        std::fs::write(dir.path().join("config"), DEBIAN).unwrap();
        let plan = plan_under(
            dir.path(),
            &dir.path().join("bzImage"),
            VirtioSetting::On,
            0,
            None,
        );
        assert_eq!(plan.devices(&[]), vmm::VirtioOptions::default());
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
                VirtioSetting::On,
                0,
                Some(&cache),
            )
        };
        let fresh = host.plan();
        assert_eq!(fresh.modules.len(), 4);
        assert_eq!(cached(), fresh);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        assert_eq!(cached(), fresh, "from the cache");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        // A module replaced by one of another release: not served stale.
        let modules = host.root.path().join("lib/modules").join(RELEASE);
        let virtio = modules.join("kernel/drivers/virtio/virtio.ko");
        std::fs::write(&virtio, fake_module("1.0")).unwrap();
        assert_eq!(cached().devices(&[]), vmm::VirtioOptions::default());
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
        assert_eq!(cached().devices(&[]), vmm::VirtioOptions::default());
        // MICRORUN_VIRTIO=off never looks at the cache.
        let off = plan_under(
            host.root.path(),
            &host.kernel(),
            VirtioSetting::Off,
            0,
            Some(&cache),
        );
        assert!(off.notes[0].contains("off"));
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
            assert!(plan.console || plan.devices(&[]) == vmm::VirtioOptions::default());
        }
    }
}
