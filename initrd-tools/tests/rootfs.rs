//! Assembling a rootfs from real binaries and running it under chroot.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use initrd_tools::rootfs::{assemble, RootfsError};
use test_support::skip_unavailable;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn cc(args: &[&str], cwd: &Path) {
    let output = Command::new("cc")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cc {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `args` inside `root` with chroot (through `unshare -r` when not root).
fn in_chroot(root: &Path, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        Command::new("chroot")
    } else {
        let mut c = Command::new("unshare");
        c.args(["-r", "chroot"]);
        c
    };
    cmd.arg(root).args(args).output().unwrap()
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap())
}

/// A program whose library is found through an absolute RUNPATH, and whose
/// library needs another one found through `$ORIGIN` in the library's own
/// RUNPATH. (`$ORIGIN` in the executable itself needs /proc/self/exe, which
/// a bare chroot lacks.) Returns the program and both libraries.
fn build_program(work: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let bin = work.join("opt/app/bin");
    let lib = work.join("opt/app/lib");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(lib.join("dep")).unwrap();
    fs::write(
        work.join("dep.c"),
        "const char *dep_word(void) { return \"libgreet\"; }\n",
    )
    .unwrap();
    fs::write(
        work.join("greet.c"),
        "#include <stdio.h>\nconst char *dep_word(void);\nvoid greet(void) { printf(\"greetings from %s\\n\", dep_word()); }\n",
    )
    .unwrap();
    fs::write(
        work.join("hello.c"),
        "#include <stdio.h>\nvoid greet(void);\nint main(void) { puts(\"hello from init\"); greet(); return 7; }\n",
    )
    .unwrap();
    cc(
        &[
            "-shared",
            "-fPIC",
            "-o",
            "opt/app/lib/dep/libdep.so",
            "dep.c",
        ],
        work,
    );
    cc(
        &[
            "-shared",
            "-fPIC",
            "-o",
            "opt/app/lib/libgreet.so",
            "greet.c",
            "-Lopt/app/lib/dep",
            "-ldep",
            "-Wl,-rpath,$ORIGIN/dep",
        ],
        work,
    );
    let runpath = format!("-Wl,-rpath,{}", lib.display());
    cc(
        &[
            "-o",
            "opt/app/bin/hello",
            "hello.c",
            "-Lopt/app/lib",
            "-lgreet",
            &runpath,
        ],
        work,
    );
    (
        bin.join("hello"),
        lib.join("libgreet.so"),
        lib.join("dep/libdep.so"),
    )
}

#[test]
fn assembled_rootfs_runs_under_chroot() {
    if !have("cc") || !have("chroot") || (!is_root() && !have("unshare")) {
        skip_unavailable!(
            "needs cc (build-essential; scripts/install-deps), chroot and, as non-root, unshare"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let work_path = fs::canonicalize(work.path()).unwrap();
    let (hello, libgreet, libdep) = build_program(&work_path);
    let root = work_path.join("rootfs");
    let sh = PathBuf::from("/bin/sh");
    let report = assemble(&root, &[sh.clone(), hello.clone()], Some(&hello)).unwrap();

    assert_eq!(report.copied[0], sh);
    assert!(report.copied.contains(&hello));
    // Found through RUNPATH and $ORIGIN, at the paths the loader will open.
    let canonical: Vec<PathBuf> = report
        .copied
        .iter()
        .map(|p| fs::canonicalize(p).unwrap())
        .collect();
    assert!(canonical.contains(&libgreet), "{:?}", report.copied);
    assert!(canonical.contains(&libdep), "{:?}", report.copied);
    // Each file once, the interpreter included.
    let mut unique = canonical.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), canonical.len(), "{:?}", report.copied);
    assert!(report
        .copied
        .iter()
        .any(|p| p.to_string_lossy().contains("libc.so")));
    for path in &report.copied {
        assert!(
            inside(&root, path).is_file(),
            "{} missing in the rootfs",
            path.display()
        );
    }
    assert_eq!(fs::read_link(root.join("init")).unwrap(), hello);

    let output = in_chroot(&root, &["/init"]);
    if !output.status.success() && output.status.code() != Some(7) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("Operation not permitted") {
            skip_unavailable!(
                "chroot is not permitted here (run as root, or allow user namespaces): {stderr}"
            );
            return;
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from init\ngreetings from libgreet\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(7));

    let output = in_chroot(&root, &["/bin/sh", "-c", "echo sh works; exit 3"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "sh works\n");
    assert_eq!(output.status.code(), Some(3));

    // Assembling again over the same directory works (files are replaced).
    assemble(&root, std::slice::from_ref(&hello), Some(&hello)).unwrap();
    assert_eq!(in_chroot(&root, &["/init"]).status.code(), Some(7));
}

#[test]
fn missing_library_names_library_and_binary() {
    if !have("cc") {
        skip_unavailable!("needs cc (build-essential; scripts/install-deps)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let work_path = fs::canonicalize(work.path()).unwrap();
    let (hello, libgreet, _) = build_program(&work_path);
    fs::remove_file(&libgreet).unwrap();
    let root = work_path.join("rootfs");
    let err = assemble(&root, std::slice::from_ref(&hello), None).unwrap_err();
    assert!(matches!(err, RootfsError::LibraryNotFound { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("libgreet.so"), "{message}");
    assert!(message.contains(&*hello.to_string_lossy()), "{message}");
    // Nothing was written.
    assert!(!root.exists());
}

#[test]
fn static_binary_is_copied_alone() {
    let busybox = Path::new("/bin/busybox");
    let is_static = fs::read(busybox).ok().and_then(|b| {
        goblin::elf::Elf::parse(&b)
            .ok()
            .map(|e| e.interpreter.is_none() && e.libraries.is_empty())
    });
    if is_static != Some(true) {
        skip_unavailable!("no static /bin/busybox (Debian's busybox-static; scripts/install-deps)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    let report = assemble(&root, &[busybox.to_path_buf()], None).unwrap();
    assert_eq!(report.copied, [busybox.to_path_buf()]);
    let mut entries: Vec<_> = walk(&root);
    entries.sort();
    assert_eq!(entries, ["bin", "bin/busybox"]);
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// The cookbook's way: the program is put into the rootfs first, then
/// `assemble` adds what it needs and points /init at its guest path.
#[test]
fn binary_already_in_the_rootfs_stays_and_init_gets_its_guest_path() {
    if !have("cc") {
        skip_unavailable!("no C compiler (cc: build-essential; scripts/install-deps)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    fs::write(
        work.path().join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n",
    )
    .unwrap();
    let root = work.path().join("libs");
    fs::create_dir_all(root.join("bin")).unwrap();
    cc(&["-o", "libs/bin/hello", "hello.c"], work.path());
    let hello = root.join("bin/hello");
    let report = assemble(&root, std::slice::from_ref(&hello), Some(&hello)).unwrap();
    assert!(!report.copied.contains(&hello), "{:?}", report.copied);
    assert!(!report.copied.is_empty(), "the C library was not copied");
    assert_eq!(
        fs::read_link(root.join("init")).unwrap(),
        Path::new("/bin/hello")
    );
    // Nothing was copied to the binary's host path inside the rootfs.
    let host_copy = inside(&root, &fs::canonicalize(&hello).unwrap());
    assert!(!host_copy.exists(), "{} exists", host_copy.display());
    let output = in_chroot(&root, &["/init"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\n");
    // The same, naming /init by its guest path, as the cookbook does.
    fs::remove_file(root.join("init")).unwrap();
    assemble(
        &root,
        std::slice::from_ref(&hello),
        Some(Path::new("/bin/hello")),
    )
    .unwrap();
    assert_eq!(
        fs::read_link(root.join("init")).unwrap(),
        Path::new("/bin/hello")
    );
}
