//! Host stdin reaches ttyS1's receive side (through the `boot` example).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn stdin_is_forwarded_to_ttys1() {
    if !common::can_boot_guests() {
        return;
    }
    let kernel = common::build_guest("echo", common::GuestFormat::Elf);
    let example = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", "boot", "--manifest-path"])
        .arg(format!("{example}/Cargo.toml"))
        .status()
        .expect("run cargo");
    assert!(status.success());
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{example}/../target"));
    let mut child = Command::new(format!("{target}/debug/examples/boot"))
        .arg(&kernel)
        .args(["--stdin", "--timeout-ms", "20000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the boot example");
    // More than one 64-byte FIFO's worth, to exercise the back-pressure.
    let input: String = (0..300)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect::<String>()
        + ".";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), input);
}
