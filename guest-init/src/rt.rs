//! The freestanding runtime: process entry, the memory functions the
//! compiler expects, and a panic handler that never lets PID 1 exit.
//!
//! There is no libc in this binary, so `_start` and `memcpy` & co. must come
//! from here. The kernel panics when PID 1 exits, so a panic reports what it
//! can and then stops the machine instead of returning.

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use crate::channels::GlobalState;
use crate::console::Line;
use crate::end::finish;

// The kernel enters with the stack pointer at `argc`, followed by the argv
// pointers, a NULL, the environment pointers and a NULL. The stack is
// 16-byte aligned there; `call` pushes the return address, which is exactly
// what the C ABI expects at the entry of `entry`.
global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

/// Finds the environment on the initial stack and hands over to `main`.
///
/// # Safety
///
/// Must only be called from `_start`, with the stack pointer the kernel
/// gave the process.
unsafe extern "C" fn entry(stack: *const usize) -> ! {
    // SAFETY: the kernel's initial stack holds argc, then argc argument
    // pointers and a NULL, then the NULL-terminated environment pointers.
    let envp = unsafe {
        let argc = *stack;
        stack.add(1 + argc + 1) as *const *const u8
    };
    crate::main(envp)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut line = Line::new();
    line.text(b"microrun: guest-init internal error");
    if let Some(location) = info.location() {
        line.text(b" at ")
            .text(location.file().as_bytes())
            .text(b":")
            .num(u64::from(location.line()));
    }
    line.send(GlobalState::console());
    // 125 is what microrun itself exits with when something on its side
    // failed; reporting it beats leaving the host waiting for a status.
    finish(125)
}

// The memory functions below use `rep` string instructions rather than
// loops, so the compiler cannot turn their bodies back into calls to
// themselves.

/// Copies `n` bytes from `src` to `dest`, which must not overlap.
///
/// # Safety
///
/// Both ranges must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; `rep movsb` copies
    // exactly rcx bytes forwards (the direction flag is clear per the ABI).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
///
/// Both ranges must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Copying forwards never overwrites source bytes not yet copied.
        // SAFETY: same contract as ours.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: the caller guarantees both ranges are valid. With the direction
    // flag set, `rep movsb` copies backwards from the last byte, which is
    // correct when dest overlaps the end of src; the flag is cleared again
    // because the ABI requires it clear.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dest
}

/// Sets `n` bytes at `dest` to `value`.
///
/// # Safety
///
/// The range must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; `rep stosb` stores al
    // into exactly rcx bytes forwards.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") value as u8,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Compares `n` bytes; returns the difference of the first unequal pair.
///
/// # Safety
///
/// Both ranges must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees both ranges are valid.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only (zero when equal).
///
/// # Safety
///
/// Both ranges must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as ours.
    unsafe { memcmp(a, b, n) }
}

/// The length of a NUL-terminated string (`CStr::from_ptr` calls it).
///
/// # Safety
///
/// `s` must point at a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL within the string's allocation, and
    // the loop stops there.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

/// Unwinding personality routine. With `panic = "abort"` nothing unwinds,
/// but the precompiled `core` still refers to this symbol in builds without
/// LTO (the dev profile); it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
