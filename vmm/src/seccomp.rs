//! seccomp filters for the VMM's threads: one allow-list per kind of
//! thread, compiled with rust-vmm's `seccompiler` and installed by each
//! thread on itself after set-up and before the guest runs (the shape of
//! Cloud Hypervisor's `seccomp_filters.rs` and Firecracker's per-thread
//! filters).
//!
//! A thread that makes a system call outside its list gets `SIGSYS`
//! (`SECCOMP_RET_TRAP`); the handler here writes one line that names the
//! thread and the system call number the kernel reports, and ends the
//! process with 125. The lists hold what the threads do once the guest
//! runs, nothing that opens files, maps new executable memory, creates
//! processes or talks to the network. The descriptors a VM's threads read
//! and write besides their own streams (the disk images, the network
//! device's socket) are open before the filters are built, which name
//! them ([`Descriptors`]): a vCPU thread reads only the disks, writes only
//! the writable ones, and the network threads read and send only on the
//! socket.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule or the filter was refused by seccompiler.
    #[error("cannot build the seccomp filter of the {kind} thread: {source}")]
    Build {
        /// The thread kind's name.
        kind: &'static str,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The filter could not be compiled to BPF.
    #[error("cannot compile the seccomp filter of the {kind} thread: {source}")]
    Compile {
        /// The thread kind's name.
        kind: &'static str,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error(
        "cannot install the seccomp filter of the {kind} thread: {source} \
         (MICRORUN_SECCOMP=off runs without the filters)"
    )]
    Install {
        /// The thread kind's name.
        kind: &'static str,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
    /// sigaction failed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The kinds of thread, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that runs [`crate::run`]: it supervises the vCPUs
    /// (deadline, kicks, events) and tears the VM down.
    Supervisor,
    /// A vCPU: `KVM_RUN` and the device models it drives (a virtio-blk
    /// disk's reads and writes among them).
    Vcpu,
    /// An output queue's writer ([`crate::output::OutputSink`]).
    Output,
    /// The stdin forwarder: reads fd 0 into the UART, whose interrupt it
    /// then raises.
    Stdin,
    /// A share's 9p server ([`crate::devices::virtio::p9`]): file-system
    /// calls on the descriptors it holds (never from `AT_FDCWD`), and the
    /// device's interrupt.
    Fs,
    /// A direction of the network device ([`crate::devices::virtio::net`]):
    /// `read` and `send` on its socket, and the device's interrupt.
    Net,
}

impl ThreadKind {
    /// For messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Supervisor => "supervisor",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Output => "output",
            ThreadKind::Stdin => "stdin",
            ThreadKind::Fs => "9p",
            ThreadKind::Net => "net",
        }
    }
}

/// The descriptors a VM's threads may use besides their standard
/// streams, known before the filters are built: each filter allows its
/// reads, writes and shutdowns on these alone, and leaves a call out
/// altogether when none is given (no `pwrite64` without a writable disk,
/// no `read` for the network threads without a socket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptors {
    /// Each disk image's descriptor, and whether it is open for writing.
    pub disks: Vec<(RawFd, bool)>,
    /// The network device's socket (the backend to passt).
    pub net_socket: Option<RawFd>,
}

impl Descriptors {
    /// The disks' descriptors, all or only the writable ones.
    fn disks(&self, writable_only: bool) -> Vec<RawFd> {
        self.disks
            .iter()
            .filter(|(_, writable)| *writable || !writable_only)
            .map(|(fd, _)| *fd)
            .collect()
    }
}

/// Whether the filters are wanted: yes unless `MICRORUN_SECCOMP=off`
/// (for debugging; the contract fixes the command line, so this is an
/// environment variable, like `MICRORUN_IRQCHIP`).
pub fn wanted() -> bool {
    std::env::var_os("MICRORUN_SECCOMP").is_none_or(|v| v != "off")
}

// The KVM ioctls the threads issue once the guest runs, as the kernel's
// <linux/kvm.h> defines them (_IO/_IOR/_IOW/_IOWR on KVMIO, 0xAE, with the
// argument's size); `ioctl_numbers_match_their_definitions` checks them.
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_GET_LAPIC: u64 = 0x8400_ae8e;
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
const KVM_GET_IRQCHIP: u64 = 0xc208_ae62;

/// What every thread needs: memory allocation, locks and condition
/// variables, sleeping, signals (the vCPU kick and this module's own),
/// closing what it owns, and ending.
/// (`mmap` and `mprotect` are in [`rules`]: never executable.)
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The file-system calls of [`ThreadKind::Fs`] on a descriptor alone.
const FS_FD_CALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

/// The file-system calls of [`ThreadKind::Fs`] that resolve a name, each
/// with the arguments that are directory descriptors: the p9 server
/// resolves every name from a descriptor it holds (a fid's, or `/proc`'s
/// for `self/fd/N`), never from the working directory, so `AT_FDCWD` is
/// refused there. (An absolute name ignores the descriptor; Landlock,
/// which the worker puts itself under, is what keeps those in the share.)
const FS_AT_CALLS: &[(libc::c_long, &[u8])] = &[
    (libc::SYS_openat, &[0]),
    (libc::SYS_newfstatat, &[0]),
    (libc::SYS_statx, &[0]),
    (libc::SYS_readlinkat, &[0]),
    (libc::SYS_mkdirat, &[0]),
    (libc::SYS_unlinkat, &[0]),
    (libc::SYS_renameat, &[0, 2]),
    (libc::SYS_renameat2, &[0, 2]),
    (libc::SYS_linkat, &[0, 2]),
    (libc::SYS_fchmodat, &[0]),
    (libc::SYS_fchownat, &[0]),
    (libc::SYS_utimensat, &[0]),
];

/// `syscall(arg0 == value)` as a rule.
fn arg_is(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// One rule per allowed value of argument `index`.
fn any_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values.iter().map(|&v| arg_is(index, v)).collect()
}

/// Allows `call` with its first argument one of `fds` and `more` true
/// too; leaves it out of `map` when `fds` is empty (an empty rule list
/// would allow it on any descriptor).
fn on_fds(
    map: &mut BTreeMap<i64, Vec<SeccompRule>>,
    call: libc::c_long,
    fds: &[RawFd],
    more: &[SeccompCondition],
) -> Result<(), seccompiler::BackendError> {
    let rules = fds
        .iter()
        .map(|&fd| {
            let mut conditions = vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                fd as u32 as u64,
            )?];
            conditions.extend_from_slice(more);
            SeccompRule::new(conditions)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !rules.is_empty() {
        map.insert(call, rules);
    }
    Ok(())
}

/// `shutdown(socket, SHUT_RDWR)`, which dropping the network device
/// makes, on the network device's socket alone (nothing without one).
fn shutdown_net_socket(
    map: &mut BTreeMap<i64, Vec<SeccompRule>>,
    fds: &Descriptors,
) -> Result<(), seccompiler::BackendError> {
    let rdwr = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::SHUT_RDWR as u64,
    )?;
    let socket: Vec<RawFd> = fds.net_socket.into_iter().collect();
    on_fds(map, libc::SYS_shutdown, &socket, &[rdwr])
}

/// The allow-list of `kind` for a VM whose disks and socket are `fds`:
/// system call number to the rules of which one must match (an empty list
/// allows every call).
fn rules(
    kind: ThreadKind,
    fds: &Descriptors,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&n| (n, Vec::new())).collect();
    // Memory, but no executable memory.
    let not_exec = SeccompRule::new(vec![SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?;
    map.insert(libc::SYS_mmap, vec![not_exec.clone()]);
    map.insert(libc::SYS_mprotect, vec![not_exec]);
    // Rust's runtime checks that an fd it closes is open (F_GETFD).
    map.insert(libc::SYS_fcntl, vec![arg_is(1, libc::F_GETFD as u64)?]);
    // Anything may report a problem on stderr (this module's handler too).
    let stderr_only = vec![arg_is(0, 2)?];
    match kind {
        ThreadKind::Supervisor => {
            map.insert(libc::SYS_write, Vec::new());
            map.insert(libc::SYS_tgkill, Vec::new());
            // Dropping the network device shuts its socket down, which
            // ends its threads' waits.
            shutdown_net_socket(&mut map, fds)?;
            map.insert(
                libc::SYS_ioctl,
                any_of(1, &[KVM_GET_IRQCHIP, libc::TCGETS])?,
            );
        }
        ThreadKind::Vcpu => {
            map.insert(libc::SYS_write, stderr_only);
            // A vCPU left behind at the end (stuck in KVM_RUN, then
            // back) may hold the devices last, and drop the network
            // device: its socket is shut down then, as by the supervisor.
            shutdown_net_socket(&mut map, fds)?;
            map.insert(
                libc::SYS_ioctl,
                any_of(
                    1,
                    &[
                        KVM_RUN,
                        KVM_GET_REGS,
                        KVM_GET_SREGS,
                        KVM_GET_LAPIC,
                        KVM_GET_MP_STATE,
                        KVM_IRQ_LINE,
                        KVM_SIGNAL_MSI,
                    ],
                )?,
            );
            // A virtio-blk disk is served on the vCPU thread that notifies
            // it: reads at offsets of the images, writes and the flush of
            // the writable ones (none: neither call is allowed at all).
            on_fds(&mut map, libc::SYS_pread64, &fds.disks(false), &[])?;
            let writable = fds.disks(true);
            on_fds(&mut map, libc::SYS_pwrite64, &writable, &[])?;
            on_fds(&mut map, libc::SYS_fdatasync, &writable, &[])?;
        }
        ThreadKind::Output => {
            map.insert(libc::SYS_write, Vec::new());
            map.insert(libc::SYS_writev, Vec::new());
        }
        ThreadKind::Stdin => {
            map.insert(libc::SYS_write, stderr_only);
            map.insert(libc::SYS_read, vec![arg_is(0, 0)?]);
            // Filling the receive FIFO raises the UART's interrupt.
            map.insert(libc::SYS_ioctl, any_of(1, &[KVM_IRQ_LINE, KVM_SIGNAL_MSI])?);
        }
        ThreadKind::Net => {
            map.insert(libc::SYS_write, stderr_only);
            // The used rings' and the link's interrupts.
            map.insert(libc::SYS_ioctl, any_of(1, &[KVM_IRQ_LINE, KVM_SIGNAL_MSI])?);
            // Frames from and to the backend's socket, and no other
            // descriptor: a connected socket's `send` (no address).
            let socket: Vec<RawFd> = fds.net_socket.into_iter().collect();
            on_fds(&mut map, libc::SYS_read, &socket, &[])?;
            let send = [
                SeccompCondition::new(
                    3,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    libc::MSG_NOSIGNAL as u64,
                )?,
                SeccompCondition::new(4, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0)?,
            ];
            on_fds(&mut map, libc::SYS_sendto, &socket, &send)?;
        }
        ThreadKind::Fs => {
            map.insert(libc::SYS_write, stderr_only);
            // The used ring's interrupt.
            map.insert(libc::SYS_ioctl, any_of(1, &[KVM_IRQ_LINE, KVM_SIGNAL_MSI])?);
            // What the p9 server calls: on descriptors it holds, and names
            // (the guest's single names, checked before) relative to them.
            for call in FS_FD_CALLS {
                map.insert(*call, Vec::new());
            }
            for (call, dirfds) in FS_AT_CALLS {
                let not_cwd = dirfds
                    .iter()
                    .map(|&index| {
                        SeccompCondition::new(
                            index,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Ne,
                            libc::AT_FDCWD as u32 as u64,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                map.insert(*call, vec![SeccompRule::new(not_cwd)?]);
            }
            // try_clone and fdopendir (which sets FD_CLOEXEC), besides
            // Rust's F_GETFD.
            map.insert(
                libc::SYS_fcntl,
                any_of(
                    1,
                    &[
                        libc::F_GETFD as u64,
                        libc::F_SETFD as u64,
                        libc::F_GETFL as u64,
                        libc::F_DUPFD_CLOEXEC as u64,
                    ],
                )?,
            );
        }
    }
    Ok(map)
}

/// The compiled filter of `kind` for a VM without disks or network
/// device (what the threads of other kinds need: they use neither).
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    filter_for(kind, &Descriptors::default())
}

/// The compiled filter of `kind` for a VM whose disks and network socket
/// are `fds`.
pub fn filter_for(kind: ThreadKind, fds: &Descriptors) -> Result<BpfProgram, SeccompError> {
    let name = kind.name();
    let rules = rules(kind, fds).map_err(|source| SeccompError::Build { kind: name, source })?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|source| SeccompError::Build { kind: name, source })?;
    filter
        .try_into()
        .map_err(|source| SeccompError::Compile { kind: name, source })
}

/// The filters of the threads that [`crate::run`] starts and runs on,
/// compiled once before any is installed.
#[derive(Clone)]
pub struct Filters {
    /// [`ThreadKind::Supervisor`]'s.
    pub supervisor: BpfProgram,
    /// [`ThreadKind::Vcpu`]'s.
    pub vcpu: BpfProgram,
    /// [`ThreadKind::Output`]'s.
    pub output: BpfProgram,
    /// [`ThreadKind::Stdin`]'s.
    pub stdin: BpfProgram,
    /// [`ThreadKind::Fs`]'s.
    pub fs: BpfProgram,
    /// [`ThreadKind::Net`]'s.
    pub net: BpfProgram,
}

impl Filters {
    /// Every kind's filter, for a VM whose disks and network socket are
    /// `fds` (open before: the filters name them).
    pub fn compile(fds: &Descriptors) -> Result<Self, SeccompError> {
        Ok(Self {
            supervisor: filter_for(ThreadKind::Supervisor, fds)?,
            vcpu: filter_for(ThreadKind::Vcpu, fds)?,
            output: filter_for(ThreadKind::Output, fds)?,
            stdin: filter_for(ThreadKind::Stdin, fds)?,
            fs: filter_for(ThreadKind::Fs, fds)?,
            net: filter_for(ThreadKind::Net, fds)?,
        })
    }
}

thread_local! {
    /// The calling thread's kind once its filter is installed, for the
    /// SIGSYS handler (const-initialised: no allocation in the handler).
    static INSTALLED: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Installs `program`, the filter of `kind`, on the calling thread: from
/// here on, and in every thread it starts, only what it allows runs.
pub fn install(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    install_handler()?;
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })?;
    INSTALLED.with(|k| k.set(Some(kind)));
    Ok(())
}

/// The SIGSYS handler, once per process.
fn install_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // glibc's free() in a thread's own arena shrinks the arena's heap
        // once its top passes the trim threshold, and the first shrink in a
        // process opens /proc/sys/vm/overcommit_memory: an openat that no
        // filter allows, on any thread that frees much (the 9p server). With
        // the threshold at its maximum no heap is trimmed (freed memory is
        // kept for reuse; whole heaps are still unmapped), so free() makes
        // no system call a filter refuses.
        // SAFETY: mallopt only sets a malloc parameter; it is called before
        // any filter exists and is thread-safe in glibc.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // `extern "C"` function with the SA_SIGINFO signature, and it only
        // calls async-signal-safe functions (write, _exit).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
            }
        }
    });
    result
}

/// Offset of `si_syscall` in x86-64's `siginfo_t` (after si_signo,
/// si_errno, si_code, padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut line = Line::default();
    line.push(b"microrun: seccomp: the ");
    let kind = INSTALLED.with(|k| k.get());
    line.push(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    line.push(b" thread made system call ");
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO);
    // for SECCOMP_RET_TRAP it carries the call's number at this offset.
    let number = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    line.number(number);
    line.push(
        b", which its filter forbids: a bug in microrun (MICRORUN_SECCOMP=off runs without the filters)\n",
    );
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(125);
    }
}

/// A fixed buffer for the handler's message (no allocation in a handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, n: i32) {
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let mut v = i64::from(n).unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// Starts a thread named `name` that first installs `filter` (when given)
/// as a `kind` thread, then runs `body`. Returns once the filter is in
/// place; a filter that cannot be installed is an error and `body` never
/// runs (the thread then ends with `None`).
pub fn spawn<T, F>(
    name: String,
    kind: ThreadKind,
    filter: Option<BpfProgram>,
    body: F,
) -> std::io::Result<std::thread::JoinHandle<Option<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (handle, pending) = spawn_unconfirmed(name, kind, filter, body)?;
    pending.confirm()?;
    Ok(handle)
}

/// [`spawn`], without waiting for the filter: the caller confirms it
/// later ([`PendingFilter::confirm`]), before anything the filter guards
/// may happen (for the VMM, before the guest runs). Starting several
/// threads this way costs one wait for all instead of one each, which on
/// a busy host is a scheduling delay each.
pub fn spawn_unconfirmed<T, F>(
    name: String,
    kind: ThreadKind,
    filter: Option<BpfProgram>,
    body: F,
) -> std::io::Result<(std::thread::JoinHandle<Option<T>>, PendingFilter)>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (installed, result) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let ready = filter.map_or(Ok(()), |f| install(kind, &f));
        let ok = ready.is_ok();
        let _ = installed.send(ready);
        // Without its filter the thread does nothing.
        ok.then(body)
    })?;
    Ok((handle, PendingFilter { result, kind }))
}

/// A thread's filter that may not be in place yet ([`spawn_unconfirmed`]).
#[derive(Debug)]
pub struct PendingFilter {
    result: std::sync::mpsc::Receiver<Result<(), SeccompError>>,
    kind: ThreadKind,
}

impl PendingFilter {
    /// Waits until the thread has its filter; an error when it could not
    /// install it (the thread then runs nothing and ends).
    pub fn confirm(self) -> std::io::Result<()> {
        match self.result.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(_) => Err(std::io::Error::other(format!(
                "the {} thread ended before installing its seccomp filter",
                self.kind.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
    }

    #[test]
    fn ioctl_numbers_match_their_definitions() {
        use kvm_bindings::*;
        use std::mem::size_of;
        let (w, r) = (1, 2);
        assert_eq!(KVM_RUN, ioc(0, 0x80, 0));
        assert_eq!(KVM_GET_REGS, ioc(r, 0x81, size_of::<kvm_regs>()));
        assert_eq!(KVM_GET_SREGS, ioc(r, 0x83, size_of::<kvm_sregs>()));
        assert_eq!(KVM_GET_LAPIC, ioc(r, 0x8e, size_of::<kvm_lapic_state>()));
        assert_eq!(KVM_GET_MP_STATE, ioc(r, 0x98, size_of::<kvm_mp_state>()));
        assert_eq!(KVM_IRQ_LINE, ioc(w, 0x61, size_of::<kvm_irq_level>()));
        assert_eq!(KVM_SIGNAL_MSI, ioc(w, 0xa5, size_of::<kvm_msi>()));
        assert_eq!(KVM_GET_IRQCHIP, ioc(w | r, 0x62, size_of::<kvm_irqchip>()));
    }

    #[test]
    fn every_filter_compiles() {
        Filters::compile(&Descriptors::default()).unwrap();
        Filters::compile(&Descriptors {
            disks: vec![(5, false), (6, true)],
            net_socket: Some(7),
        })
        .unwrap();
    }

    #[test]
    fn calls_on_descriptors_are_allowed_only_on_the_given_ones() {
        let calls = |kind, fds: &Descriptors| {
            let map = rules(kind, fds).unwrap();
            [
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_fdatasync,
                libc::SYS_shutdown,
                libc::SYS_read,
                libc::SYS_sendto,
            ]
            .map(|call| map.get(&call).map(Vec::len))
        };
        let none = Descriptors::default();
        assert_eq!(calls(ThreadKind::Vcpu, &none), [None; 6]);
        assert_eq!(calls(ThreadKind::Net, &none), [None; 6]);
        assert_eq!(calls(ThreadKind::Supervisor, &none), [None; 6]);
        let read_only = Descriptors {
            disks: vec![(5, false)],
            net_socket: None,
        };
        assert_eq!(
            calls(ThreadKind::Vcpu, &read_only),
            [Some(1), None, None, None, None, None]
        );
        let all = Descriptors {
            disks: vec![(5, false), (6, true)],
            net_socket: Some(7),
        };
        assert_eq!(
            calls(ThreadKind::Vcpu, &all),
            [Some(2), Some(1), Some(1), Some(1), None, None]
        );
        assert_eq!(
            calls(ThreadKind::Net, &all),
            [None, None, None, None, Some(1), Some(1)]
        );
    }

    #[test]
    fn the_handler_writes_numbers_in_decimal() {
        let mut line = Line::default();
        line.number(0);
        line.push(b" ");
        line.number(257);
        line.push(b" ");
        line.number(-1);
        assert_eq!(&line.buf[..line.len], b"0 257 -1");
    }
}
