//! What the user asked for ([`Request`], from the command line), which
//! [`crate::plan::make`] turns into the run's plan, and what every engine
//! hands back ([`RunOutcome`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use initrd_tools::image::{Detected, Image, ImageError};

use crate::engine::qemu::Accel;

/// What microrun says when `--timeout` ends a run, whatever the engine.
pub const TIMEOUT_REASON: &str =
    "--timeout expired; the guest was stopped (raise --timeout if the program needs longer)";

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// The kvm engine where this host's KVM can run a Linux guest, else the
    /// qemu engine (TCG), with one line saying why.
    #[default]
    Auto,
    /// microrun's own KVM microVM.
    Kvm,
    /// No VM: user, mount, PID and IPC namespaces with the rootfs as root.
    Chroot,
    /// QEMU (`-M pc`), with KVM where usable and TCG otherwise.
    Qemu,
}

/// `--root`: how a VM gets the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootChoice {
    /// As an initrd the kernel unpacks into guest memory.
    Initrd,
    /// As a read-only EROFS image on a virtio-blk disk, under a tmpfs
    /// overlay that vanishes with the VM.
    Disk,
}

/// Where the guest's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A directory, packed into a newc cpio on the fly (and cached).
    Dir(PathBuf),
    /// An existing cpio initrd file, used as given.
    Cpio(PathBuf),
    /// A container image or a rootfs tar, converted into a newc cpio (and
    /// cached); its configuration gives the run's defaults.
    Image(Box<Image>),
}

impl Rootfs {
    /// What `path` holds, told by its content (never its name): the one
    /// place a ROOTFS argument is classified. An image is opened (index,
    /// manifest and configuration read and checked) but not converted.
    pub fn detect(path: &Path) -> Result<Rootfs, ImageError> {
        Ok(match initrd_tools::image::detect(path)? {
            Detected::Directory => Rootfs::Dir(path.to_path_buf()),
            Detected::Cpio => Rootfs::Cpio(path.to_path_buf()),
            Detected::Image(image) => Rootfs::Image(image),
        })
    }
}

/// How much microrun says on stderr besides the guest's own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// Default: warnings and errors; the kernel boots quietly.
    #[default]
    Normal,
    /// `-v`: the kernel log and microrun's own progress.
    Verbose,
}

/// One run of one command in one rootfs, as the command line asks for it:
/// nothing decided yet (see [`crate::plan`]).
#[derive(Debug, Clone)]
pub struct Request {
    /// The guest's root filesystem.
    pub rootfs: Rootfs,
    /// The command and its arguments; empty means the rootfs's `/init`.
    pub command: Vec<String>,
    /// Extra environment for the command, in order.
    pub env: Vec<(String, String)>,
    /// The command's working directory inside the guest.
    pub workdir: Option<String>,
    /// Stop the run (exit 124) after this long.
    pub timeout: Option<Duration>,
    /// Forward microrun's stdin to the command's stdin (`-i`, or stdin is
    /// a pipe or a file).
    pub forward_stdin: bool,
    /// `-t`: give the command a terminal.
    pub tty: bool,
    /// The size of the terminal microrun's stdin is, as (rows, columns);
    /// `None` when stdin is not a terminal.
    pub stdin_terminal: Option<(u16, u16)>,
    /// Boot the initrd exactly as given, without guest-init.
    pub no_init: bool,
    /// Host directories shared with the guest (`--bind`, `--bind-ro`).
    pub binds: Vec<crate::binds::Bind>,
    /// How chatty microrun is.
    pub verbosity: Verbosity,
    /// When microrun started, the origin of every timing.
    pub started: Instant,
    /// What runs the guest.
    pub engine: Engine,
    /// `--kernel` or `MICRORUN_KERNEL` (VM engines).
    pub kernel: Option<PathBuf>,
    /// `--mem`, in bytes (VM engines).
    pub mem: Option<u64>,
    /// `--cpus` (VM engines).
    pub cpus: u8,
    /// `--cmdline`: appended to the kernel command line (VM engines).
    pub cmdline: Option<String>,
    /// `--accel` (the qemu engine).
    pub accel: Accel,
    /// `-u/--user`, or the image's `User`: who the program runs as (root
    /// when `None`).
    pub user: Option<crate::user::UserSpec>,
    /// `--root`; `None` lets the plan choose by the rootfs's kind and size
    /// ([`crate::plan::root`]).
    pub root: Option<RootChoice>,
    /// `--net` (with `--net-host` and `-p`): the guest's network; `None`:
    /// loopback only.
    pub net: Option<crate::net::Network>,
}

/// Points in time of a run, each `None` when the run never got there.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// The engine is set up (VM built, namespace made) and about to start
    /// the guest.
    pub ready: Option<Instant>,
    /// guest-init reported `@init`: the kernel has booted.
    pub init: Option<Instant>,
    /// The status line arrived: the program has ended.
    pub status: Option<Instant>,
    /// Everything is torn down.
    pub end: Option<Instant>,
    /// Where the set-up's time went, for `--timings`.
    pub setup_steps: SetupSteps,
}

/// The host-side set-up of a run, step by step (the kvm engine's, up to
/// the first `KVM_RUN`); a step not measured is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SetupSteps {
    /// Parsing the command line and planning, except the two steps below:
    /// the rootfs, the kernel and what it drives.
    pub plan: Option<Duration>,
    /// Finding the rootfs archive (packed, converted or checked) in the
    /// cache.
    pub rootfs: Option<Duration>,
    /// Reading the kernel into guest memory.
    pub kernel_load: Option<Duration>,
    /// Building guest-init's archive and copying the initrd into guest
    /// memory.
    pub initrd: Option<Duration>,
    /// The rest: KVM, guest memory, the VM, devices, vCPUs and threads.
    pub memory_and_devices: Option<Duration>,
}

impl SetupSteps {
    /// The rows, in order, with their labels.
    pub fn rows(&self) -> [(&'static str, Option<Duration>); 5] {
        [
            ("plan", self.plan),
            ("rootfs cache lookup", self.rootfs),
            ("kernel load", self.kernel_load),
            ("initrd assembly", self.initrd),
            ("memory and devices", self.memory_and_devices),
        ]
    }
}

/// How a run ended, as every engine reports it.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// microrun's exit code (see the contract's table).
    pub exit_code: u8,
    /// Why, when the code is microrun's own (124, 125), for stderr.
    pub reason: Option<String>,
    /// When each phase ended.
    pub times: PhaseTimes,
    /// What the kernel said after "Initramfs unpacking failed: " on its
    /// console, when it did (the VM engines watch it:
    /// [`crate::console_watch`]).
    pub unpack_failure: Option<String>,
}
