//! The few system calls rustix keeps out of its public API: `fork`,
//! `execve`, `exit_group`, and `kill(-1, sig)`; and `clock_gettime`, whose
//! rustix version goes through the vDSO (several KiB of ELF parsing, for a
//! clock read a few hundred times at most).

use core::arch::asm;

use rustix::io::Errno;

const SYS_FORK: usize = 57;
const SYS_EXECVE: usize = 59;
const SYS_KILL: usize = 62;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_EXIT_GROUP: usize = 231;
const CLOCK_MONOTONIC: usize = 1;

/// Turns a raw system call return value into a result.
fn check(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        Err(Errno::from_raw_os_error(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// Creates a child process; returns `Some(pid)` in the parent and `None` in
/// the child.
///
/// # Safety
///
/// The process must be single-threaded (guest-init always is), so that the
/// child's copy of memory is consistent.
pub unsafe fn fork() -> Result<Option<i32>, Errno> {
    let ret: isize;
    // SAFETY: `fork` takes no arguments and touches no memory of ours; rcx
    // and r11 are clobbered by the `syscall` instruction.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_FORK => ret,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    check(ret).map(|pid| if pid == 0 { None } else { Some(pid as i32) })
}

/// Replaces the process image; returns only on failure.
///
/// # Safety
///
/// `path` must be a NUL-terminated string, `argv` and `envp` NULL-terminated
/// arrays of NUL-terminated strings.
pub unsafe fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> Errno {
    let ret: isize;
    // SAFETY: the caller guarantees the pointers are valid for the kernel to
    // read; the call writes no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_EXECVE => ret,
            in("rdi") path,
            in("rsi") argv,
            in("rdx") envp,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    match check(ret) {
        Err(errno) => errno,
        Ok(_) => Errno::INVAL,
    }
}

/// Ends the calling process with `code`.
pub fn exit_group(code: i32) -> ! {
    // SAFETY: `exit_group` does not return and reads no memory.
    unsafe {
        asm!(
            "syscall",
            in("rax") SYS_EXIT_GROUP,
            in("rdi") code,
            options(noreturn, nostack)
        );
    }
}

/// Sends `signal` to every process this one may signal, except itself: for
/// PID 1, every other process of its PID namespace.
pub fn kill_all(signal: i32) -> Result<(), Errno> {
    let ret: isize;
    // SAFETY: `kill` only takes integers and writes no memory.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_KILL => ret,
            in("rdi") -1isize,
            in("rsi") signal as isize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    check(ret).map(|_| ())
}

/// The monotonic clock, in nanoseconds (0 if it cannot be read, which the
/// kernel never does for CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    let mut ts = rustix::thread::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ret: isize;
    // SAFETY: `clock_gettime` writes one `struct timespec` (two 64-bit
    // integers, which is what rustix's Timespec is on x86-64) to the pointer,
    // which points at `ts`, alive and writable for the whole call.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_CLOCK_GETTIME => ret,
            in("rdi") CLOCK_MONOTONIC,
            in("rsi") &mut ts as *mut rustix::thread::Timespec,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    if check(ret).is_err() {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
