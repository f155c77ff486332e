//! Input that once made `microrun` panic, hang, give advice that could not
//! help or replace what it should write to: FIFOs where files are
//! expected, durations and vCPU counts out of range, an initrd too large
//! for any memory size, `pack -o /dev/stdout`. No case creates a VM, so
//! these run on any machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Long enough for a debug build on a loaded machine, short enough that a
/// run blocked for ever fails the test quickly.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `microrun ARGS` (stdin from /dev/null, a private cache, no
/// MICRORUN_* from the caller) and kills it if it has not ended within
/// [`LIMIT`].
fn microrun(cache: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_microrun"))
        .args(args)
        .env_remove("MICRORUN_KERNEL")
        .env_remove("MICRORUN_IRQCHIP")
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start microrun");
    let start = Instant::now();
    while child.try_wait().expect("wait for microrun").is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap microrun");
            panic!(
                "microrun {args:?} still running after {LIMIT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect microrun's output")
}

/// Asserts exit 125 and one `microrun: error: ...` line that contains
/// each of `needles` and none of `absent`.
fn assert_usage_error(out: &Output, needles: &[&str], absent: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert!(err.starts_with("microrun: error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    for word in absent {
        assert!(!err.contains(word), "{word:?} in: {err}");
    }
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::write(dir.path().join("root/hello"), b"hello\n").unwrap();
        // Never booted: every case fails before the kernel is read.
        std::fs::write(dir.path().join("vmlinuz"), b"not a kernel").unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let status = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(status.success(), "mkfifo {}", path.display());
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let kernel = self.path("vmlinuz");
        let mut all: Vec<&std::ffi::OsStr> = vec!["--kernel".as_ref(), kernel.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        microrun(&self.path("cache"), &all)
    }
}

#[test]
fn a_fifo_as_rootfs_or_kernel_is_refused_at_once() {
    let s = Scratch::new();
    let rootfs = s.fifo("rootfs-fifo");
    for engine in ["kvm", "chroot", "qemu"] {
        let out = s.run(&["--engine", engine, rootfs.to_str().unwrap()]);
        assert_usage_error(
            &out,
            &[
                rootfs.to_str().unwrap(),
                "a FIFO",
                "directory or a regular file",
            ],
            &[],
        );
    }
    let kernel = s.fifo("kernel-fifo");
    let root = s.path("root");
    let out = microrun(
        &s.path("cache"),
        &["--kernel".as_ref(), kernel.as_os_str(), root.as_os_str()],
    );
    assert_usage_error(
        &out,
        &[kernel.to_str().unwrap(), "a FIFO, not a regular file"],
        &[],
    );
}

#[test]
fn an_initrd_no_memory_size_can_hold_is_called_too_large() {
    let s = Scratch::new();
    // A sparse "cpio" of 3 GiB: never read, only its size matters.
    let huge = s.path("huge.cpio");
    let file = std::fs::File::create(&huge).unwrap();
    std::io::Write::write_all(&mut &file, b"070701").unwrap();
    file.set_len(3 << 30).unwrap();
    for mem in [None, Some("1G"), Some("64G")] {
        let mut args = vec!["-q"];
        if let Some(mem) = mem {
            args.extend(["--mem", mem]);
        }
        args.push(huge.to_str().unwrap());
        let out = s.run(&args);
        assert_usage_error(
            &out,
            &["3072 MiB", "whatever --mem is", "smaller"],
            &["raise --mem"],
        );
    }
}

#[test]
fn durations_out_of_range_are_refused_without_a_panic() {
    let s = Scratch::new();
    let root = s.path("root");
    let too_long = [
        "10000000000000000000",
        "99999999999999999999999999",
        "31536001",
        "8761h",
    ];
    let cases = too_long
        .map(|value| (value, "at most"))
        .into_iter()
        .chain(["0", "0s", "0ms", "0.0"].map(|value| (value, "more than 0")));
    for (value, why) in cases {
        for engine in ["kvm", "chroot", "qemu"] {
            let args = ["--engine", engine, "--timeout", value];
            let out = s.run(&[&args[..], &[root.to_str().unwrap()]].concat());
            assert_usage_error(&out, &["--timeout", value, why], &["panicked"]);
        }
    }
}

#[test]
fn bad_shares_are_refused_before_any_engine_starts() {
    let s = Scratch::new();
    let root = s.path("root");
    let root = root.to_str().unwrap();
    let missing = format!("{}:/x", s.path("missing").display());
    let file = format!("{}:/x", s.path("vmlinuz").display());
    let relative = format!("{root}:x");
    let top = format!("{root}:/");
    let here = format!("{root}:/a");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--bind", &missing],
            &["--bind", "missing", "No such file"],
        ),
        (&["--bind-ro", &file], &["--bind-ro", "not a directory"]),
        (&["--bind", &relative], &["\"x\"", "not absolute", "/DIR"]),
        (&["--bind-ro", &top], &["\"/\"", "root"]),
        (
            &["--bind", &here, "--bind-ro", &here],
            &["both put a share at /a", "own DST"],
        ),
    ];
    for engine in ["kvm", "chroot", "qemu"] {
        for (options, needles) in &cases {
            let mut args = vec!["--engine", engine];
            args.extend_from_slice(options);
            args.push(root);
            assert_usage_error(&s.run(&args), needles, &["panicked"]);
        }
    }
    let out = s.run(&["--no-init", "--bind", &here, root]);
    assert_usage_error(&out, &["--bind", "drop --no-init"], &[]);
}

#[test]
fn cpus_out_of_range_name_the_real_range() {
    let s = Scratch::new();
    let root = s.path("root");
    for value in ["0", "33", "256", "many"] {
        let out = s.run(&["--cpus", value, root.to_str().unwrap()]);
        assert_usage_error(&out, &["--cpus", value, "1 to 32"], &["0..=255"]);
    }
}

#[test]
fn pack_streams_to_dev_stdout() {
    let s = Scratch::new();
    let root = s.path("root");
    let pack = |stdout: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_microrun"))
            .args([
                "pack".as_ref(),
                root.as_os_str(),
                "-o".as_ref(),
                "/dev/stdout".as_ref(),
            ])
            .env("SOURCE_DATE_EPOCH", "0")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .expect("run microrun pack")
    };
    let piped = pack(Stdio::piped());
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let archive = piped.stdout;
    assert!(archive.starts_with(b"070701") && archive.len() % 4 == 0);
    assert!(archive.windows(10).any(|w| w == b"TRAILER!!!"));
    // Through the caller's descriptor: appended, as `>>` asked.
    let log = s.path("log");
    std::fs::write(&log, b"old\n").unwrap();
    let append = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let out = pack(Stdio::from(append));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = b"old\n".to_vec();
    expected.extend_from_slice(&archive);
    assert_eq!(std::fs::read(&log).unwrap(), expected);
    assert!(std::fs::symlink_metadata("/dev/stdout")
        .unwrap()
        .file_type()
        .is_symlink());
}

/// `-t` without a terminal on stdin (here /dev/null) is refused before
/// anything starts, in every engine, as docker refuses it; `-i` alone is
/// not.
#[test]
fn tty_without_a_terminal_on_stdin_is_refused() {
    let s = Scratch::new();
    let root = s.path("root");
    for engine in ["kvm", "chroot", "qemu"] {
        for flags in [&["-t"][..], &["-it"], &["--tty", "--interactive"]] {
            let mut args = vec!["--engine", engine];
            args.extend_from_slice(flags);
            args.extend([root.to_str().unwrap(), "--", "sh"]);
            let out = s.run(&args);
            assert_usage_error(&out, &["-t/--tty", "stdin is not a terminal"], &[]);
        }
    }
    // -i alone gets past that point: the fake kernel is what stops it.
    let out = s.run(&["--engine", "kvm", "-i", root.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not a terminal"), "{err}");
}

#[test]
fn root_disk_where_it_cannot_work_is_refused_before_any_engine_starts() {
    let s = Scratch::new();
    let root = s.path("root");
    let root = root.to_str().unwrap();
    let out = s.run(&["--engine", "chroot", "--root", "disk", root]);
    assert_usage_error(&out, &["--root disk", "chroot engine"], &["panicked"]);
    let out = s.run(&["--engine", "kvm", "--no-init", "--root", "disk", root]);
    assert_usage_error(&out, &["--root disk", "drop --no-init"], &["panicked"]);
    let out = s.run(&["--engine", "kvm", "--root", "floppy", root]);
    assert_usage_error(&out, &["--root", "floppy", "initrd", "disk"], &["panicked"]);
}
