//! The seccomp filters stop what they do not allow: each case runs in a
//! child process (this test binary again), since the violation ends the
//! whole process with 125 and a line that names the thread and the call.

use std::os::fd::{IntoRawFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm::seccomp::{self, Descriptors, ThreadKind};

/// Set in the child; names the case to run there.
const CHILD_VAR: &str = "VMM_SECCOMP_TEST_CHILD";

/// Runs test `name` again in a child process with `CHILD_VAR` set, and
/// returns its exit code and stderr.
fn in_child(name: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD_VAR, name)
        .output()
        .expect("run the test binary again");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that a case ended with 125 and the line that names the
/// `thread` thread and its forbidden `call`.
fn assert_trapped(code: Option<i32>, stderr: &str, thread: &str, call: libc::c_long) {
    assert_eq!(code, Some(125), "{stderr}");
    let line = format!("the {thread} thread made system call {call}, which its filter forbids");
    assert!(stderr.contains(&line), "{stderr}");
}

fn is_child(name: &str) -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|v| v == name)
}

/// Case `name`: in the child, `call` on a thread of `kind` under its
/// filter, then exit 0 (reached only if the filter let `call` through);
/// here, the child's exit code and stderr.
fn case(name: &str, kind: ThreadKind, call: fn()) -> (Option<i32>, String) {
    case_with(name, kind, Descriptors::default, call)
}

/// [`case`] for a VM whose disks and socket `fds` opens (in the child,
/// before the filter is built, as `vmm::run` does).
fn case_with(
    name: &str,
    kind: ThreadKind,
    fds: fn() -> Descriptors,
    call: fn(),
) -> (Option<i32>, String) {
    if is_child(name) {
        run_filtered(kind, &fds(), call);
        std::process::exit(0);
    }
    in_child(name)
}

/// In the child: `call` on a thread of `kind` under its filter for `fds`;
/// returns only if the filter let it through.
fn run_filtered(kind: ThreadKind, fds: &Descriptors, call: fn()) {
    let filter = seccomp::filter_for(kind, fds).expect("compile the filter");
    let thread =
        seccomp::spawn("filtered".into(), kind, Some(filter), call).expect("install the filter");
    let _ = thread.join();
}

#[test]
fn a_vcpu_thread_cannot_open_a_file() {
    const NAME: &str = "a_vcpu_thread_cannot_open_a_file";
    let (code, stderr) = case(NAME, ThreadKind::Vcpu, || {
        let _ = std::fs::File::open("/proc/self/status");
    });
    assert_trapped(code, &stderr, "vCPU", libc::SYS_openat);
}

#[test]
fn a_vcpu_thread_cannot_start_a_process() {
    const NAME: &str = "a_vcpu_thread_cannot_start_a_process";
    let (code, stderr) = case(NAME, ThreadKind::Vcpu, || {
        // SAFETY: fork has no memory preconditions; the child, if one
        // were made, would exit at once.
        if unsafe { libc::fork() } == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    });
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("the vCPU thread made system call"),
        "{stderr}"
    );
}

#[test]
fn the_stdin_thread_reads_only_stdin() {
    const NAME: &str = "the_stdin_thread_reads_only_stdin";
    let (code, stderr) = case(NAME, ThreadKind::Stdin, || {
        let mut buf = [0u8; 1];
        // SAFETY: a read into a buffer of ours; fd 3 need not be open.
        unsafe { libc::read(3, buf.as_mut_ptr().cast(), 1) };
    });
    assert_trapped(code, &stderr, "stdin", libc::SYS_read);
}

#[test]
fn what_a_vcpu_thread_needs_is_allowed() {
    const NAME: &str = "what_a_vcpu_thread_needs_is_allowed";
    let (code, stderr) = case(NAME, ThreadKind::Vcpu, || {
        // Allocation, a lock, a sleep, a message on stderr.
        let v: Vec<u8> = vec![1; 1 << 20];
        let m = std::sync::Mutex::new(v.len());
        drop(m.lock());
        std::thread::sleep(std::time::Duration::from_millis(1));
        eprintln!("still here");
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("still here"), "{stderr}");
}

/// The image a vCPU thread serves a virtio-blk disk from, and another
/// file, both opened before the filter (a filtered thread opens nothing).
static DISK: AtomicI32 = AtomicI32::new(-1);
static OTHER: AtomicI32 = AtomicI32::new(-1);

/// A scratch file of 4 KiB, open for reading and writing.
fn scratch() -> RawFd {
    let file = tempfile::tempfile().expect("a scratch file");
    file.set_len(4096).unwrap();
    file.into_raw_fd()
}

/// Opens [`DISK`] and [`OTHER`]; the disk is writable when `writable`.
fn disk(writable: bool) -> Descriptors {
    DISK.store(scratch(), Ordering::Relaxed);
    OTHER.store(scratch(), Ordering::Relaxed);
    Descriptors {
        disks: vec![(DISK.load(Ordering::Relaxed), writable)],
        net_socket: None,
    }
}

/// `pread`, `pwrite` (512 bytes at 512) and `fdatasync` on `fd`, then
/// their results on stderr.
fn serve(fd: RawFd) {
    let mut buf = [7u8; 512];
    // SAFETY: `fd` is a scratch file open in this process; the buffer is
    // ours and as long as the lengths given.
    let (wrote, read, synced) = unsafe {
        (
            libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), 512),
            libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0),
            libc::fdatasync(fd),
        )
    };
    eprintln!("served: {wrote} {read} {synced}");
}

#[test]
fn a_vcpu_thread_may_serve_a_disk_it_holds_open() {
    const NAME: &str = "a_vcpu_thread_may_serve_a_disk_it_holds_open";
    let (code, stderr) = case_with(
        NAME,
        ThreadKind::Vcpu,
        || disk(true),
        || serve(DISK.load(Ordering::Relaxed)),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("served: 512 512 0"), "{stderr}");
}

#[test]
fn a_vcpu_thread_reads_no_descriptor_but_its_disks() {
    const NAME: &str = "a_vcpu_thread_reads_no_descriptor_but_its_disks";
    let (code, stderr) = case_with(
        NAME,
        ThreadKind::Vcpu,
        || disk(true),
        || {
            let mut buf = [0u8; 512];
            let fd = OTHER.load(Ordering::Relaxed);
            // SAFETY: a read into a buffer of ours, from a file open here.
            unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        },
    );
    assert_trapped(code, &stderr, "vCPU", libc::SYS_pread64);
}

#[test]
fn a_vcpu_thread_writes_nothing_with_only_read_only_disks() {
    const NAME: &str = "a_vcpu_thread_writes_nothing_with_only_read_only_disks";
    let (code, stderr) = case_with(
        NAME,
        ThreadKind::Vcpu,
        || disk(false),
        || {
            // The disk itself: reads pass, the write is the first refused.
            serve(DISK.load(Ordering::Relaxed))
        },
    );
    assert_trapped(code, &stderr, "vCPU", libc::SYS_pwrite64);
}

#[test]
fn a_vcpu_thread_without_disks_flushes_nothing() {
    const NAME: &str = "a_vcpu_thread_without_disks_flushes_nothing";
    let (code, stderr) = case(NAME, ThreadKind::Vcpu, || {
        // SAFETY: fdatasync has no memory arguments; fd 2 is open.
        unsafe { libc::fdatasync(2) };
    });
    assert_trapped(code, &stderr, "vCPU", libc::SYS_fdatasync);
}

/// The network device's socket, opened before the filter.
static SOCKET: AtomicI32 = AtomicI32::new(-1);

/// Opens [`SOCKET`] (one end of a socket pair; the other is leaked, so
/// that the socket stays connected) and [`OTHER`].
fn net() -> Descriptors {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    std::mem::forget(theirs);
    SOCKET.store(ours.into_raw_fd(), Ordering::Relaxed);
    OTHER.store(scratch(), Ordering::Relaxed);
    Descriptors {
        disks: Vec::new(),
        net_socket: Some(SOCKET.load(Ordering::Relaxed)),
    }
}

#[test]
fn the_net_threads_read_no_descriptor_but_their_socket() {
    const NAME: &str = "the_net_threads_read_no_descriptor_but_their_socket";
    let (code, stderr) = case_with(NAME, ThreadKind::Net, net, || {
        let mut buf = [0u8; 16];
        // SAFETY: a send from and a read into buffers of ours, on
        // descriptors open here (the send fills the socket's buffer a
        // little; the scratch file's read returns at once).
        unsafe {
            let sent = libc::send(
                SOCKET.load(Ordering::Relaxed),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            );
            eprintln!("sent {sent}");
            libc::read(OTHER.load(Ordering::Relaxed), buf.as_mut_ptr().cast(), 16);
        }
    });
    assert!(stderr.contains("sent 16"), "{stderr}");
    assert_trapped(code, &stderr, "net", libc::SYS_read);
}

#[test]
fn a_vcpu_thread_shuts_down_no_socket_but_the_network_devices() {
    const NAME: &str = "a_vcpu_thread_shuts_down_no_socket_but_the_network_devices";
    let (code, stderr) = case_with(NAME, ThreadKind::Vcpu, net, || {
        // SAFETY: shutdown of descriptors open here (the other is no
        // socket: ENOTSOCK, were the call let through).
        unsafe {
            let ours = libc::shutdown(SOCKET.load(Ordering::Relaxed), libc::SHUT_RDWR);
            eprintln!("shut down {ours}");
            libc::shutdown(OTHER.load(Ordering::Relaxed), libc::SHUT_RDWR);
        }
    });
    assert!(stderr.contains("shut down 0"), "{stderr}");
    assert_trapped(code, &stderr, "vCPU", libc::SYS_shutdown);
}

#[test]
fn no_thread_maps_executable_memory() {
    const NAME: &str = "no_thread_maps_executable_memory";
    let (code, stderr) = case(NAME, ThreadKind::Output, || {
        // SAFETY: an anonymous mapping of our own, never used.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
    });
    assert_trapped(code, &stderr, "output", libc::SYS_mmap);
}

#[test]
fn the_stdin_thread_may_raise_the_uarts_interrupt() {
    const NAME: &str = "the_stdin_thread_may_raise_the_uarts_interrupt";
    let (code, stderr) = case(NAME, ThreadKind::Stdin, || {
        // KVM_IRQ_LINE and KVM_SIGNAL_MSI on a closed fd: EBADF, not
        // SIGSYS, when the filter lets them through.
        for request in [0x4008_ae61u64, 0x4020_aea5] {
            // SAFETY: fd -1 is never open; the kernel returns EBADF
            // before it looks at the argument.
            unsafe { libc::ioctl(-1, request as _, std::ptr::null_mut::<u8>()) };
        }
        eprintln!("still here");
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("still here"), "{stderr}");
}

#[test]
fn the_fs_thread_opens_nothing_by_path() {
    const NAME: &str = "the_fs_thread_opens_nothing_by_path";
    let (code, stderr) = case(NAME, ThreadKind::Fs, || {
        // open() is openat(AT_FDCWD, ...): never what the p9 server does.
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/etc/shadow");
    });
    assert_trapped(code, &stderr, "9p", libc::SYS_openat);
}

#[test]
fn the_fs_thread_unlinks_nothing_by_path() {
    const NAME: &str = "the_fs_thread_unlinks_nothing_by_path";
    let (code, stderr) = case(NAME, ThreadKind::Fs, || {
        // SAFETY: a constant C string; the file need not exist.
        unsafe { libc::unlinkat(libc::AT_FDCWD, c"/elsewhere/file".as_ptr(), 0) };
    });
    assert_trapped(code, &stderr, "9p", libc::SYS_unlinkat);
}

#[test]
fn the_fs_thread_may_resolve_names_from_descriptors() {
    const NAME: &str = "the_fs_thread_may_resolve_names_from_descriptors";
    let (code, stderr) = case(NAME, ThreadKind::Fs, || {
        // fd 2 is no directory: ENOTDIR, not SIGSYS, when the filter lets
        // the calls through.
        // SAFETY: constant C strings and a descriptor that is open.
        unsafe {
            libc::openat(2, c"name".as_ptr(), libc::O_RDONLY);
            libc::unlinkat(2, c"name".as_ptr(), 0);
            libc::renameat(2, c"a".as_ptr(), 2, c"b".as_ptr());
            libc::mkdirat(2, c"dir".as_ptr(), 0o755);
        }
        eprintln!("still here");
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("still here"), "{stderr}");
}

/// glibc gives each thread an arena of its own; freeing much of one shrinks
/// its heap, and the first shrink in a process reads
/// /proc/sys/vm/overcommit_memory (an openat no filter allows). The 9p
/// thread allocates and frees as it serves: freeing must not trap.
#[test]
fn a_filtered_thread_may_free_what_it_allocated() {
    const NAME: &str = "a_filtered_thread_may_free_what_it_allocated";
    let (code, stderr) = case(NAME, ThreadKind::Fs, || {
        let chunks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1024]).collect();
        drop(chunks);
        eprintln!("still here");
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("still here"), "{stderr}");
}

#[test]
fn the_net_threads_send_only_on_their_connected_socket() {
    const NAME: &str = "the_net_threads_send_only_on_their_connected_socket";
    let (code, stderr) = case(NAME, ThreadKind::Net, || {
        // A datagram to an address: sendto with a destination.
        // SAFETY: a zeroed address of the right size; fd 2 is no socket,
        // so the call would fail with ENOTSOCK if the filter let it by.
        unsafe {
            let addr: libc::sockaddr_un = std::mem::zeroed();
            libc::sendto(
                2,
                [0u8].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
        }
    });
    assert_trapped(code, &stderr, "net", libc::SYS_sendto);
}

#[test]
fn the_net_threads_open_nothing() {
    const NAME: &str = "the_net_threads_open_nothing";
    let (code, stderr) = case(NAME, ThreadKind::Net, || {
        let _ = std::fs::File::open("/etc/passwd");
    });
    assert_trapped(code, &stderr, "net", libc::SYS_openat);
}
