//! Builds guest-init (release, freestanding) so that `src/embedded.rs` can
//! embed it in the microrun binary.
//!
//! The nested cargo uses its own target directory under `OUT_DIR`: the outer
//! cargo holds the lock on its target directory for the whole build, so
//! sharing it would deadlock. The nested cargo gets an explicit `--target`
//! so that guest-init's link flags (`-nostartfiles -static -nostdlib`) never
//! reach its dependencies' build scripts, and an environment cleaned of what
//! the outer cargo set for this build script (flags for another target,
//! clippy's wrapper, a target directory).

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The only target this toolchain has; guest-init is x86-64 Linux code
/// whatever the host is.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Variables that would make the nested build differ from a plain
/// `cargo build --release -p guest-init`, or break it.
const CLEARED_VARS: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    // clippy-driver (`cargo clippy`) must not lint and half-build guest-init.
    "RUSTC_WORKSPACE_WRAPPER",
    // `cargo llvm-cov` and the like: coverage needs a profiler runtime that a
    // freestanding binary does not have.
    "CARGO_LLVM_COV",
    "LLVM_PROFILE_FILE",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("guest-init-target");

    for path in [
        "guest-init/src",
        "guest-init/Cargo.toml",
        "guest-init/Cargo.lock",
        "guest-init/build.rs",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(path).display()
        );
    }

    let mut command = Command::new(&cargo);
    command
        .current_dir(&manifest_dir)
        .args(["build", "--release", "--locked", "--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(manifest_dir.join("guest-init/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer cargo parses this script's stdout; keep the nested
        // cargo's output off it.
        .stdout(Stdio::from(std::io::stderr()));
    // guest-init/Cargo.toml optimises for size (measured: 31 KiB at
    // opt-level 3, 23 KiB at "s", 26 KiB at "z").
    for var in CLEARED_VARS {
        command.env_remove(var);
    }
    // The jobserver variables (CARGO_MAKEFLAGS, MAKEFLAGS) stay: the nested
    // cargo then shares the outer build's job slots instead of adding its own.

    let status = command.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build guest-init: {e}; set CARGO to the cargo binary",
            PathBuf::from(&cargo).display()
        )
    });
    if !status.success() {
        panic!(
            "building guest-init failed ({status}); its errors are above. Reproduce with: \
             cargo build --release --manifest-path guest-init/Cargo.toml --target {GUEST_TARGET}"
        );
    }

    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-init");
    let embedded = out_dir.join("guest-init");
    std::fs::copy(&built, &embedded).unwrap_or_else(|e| {
        panic!(
            "cannot copy the built guest-init from {} to {}: {e}",
            built.display(),
            embedded.display()
        )
    });
}
