//! Tests of the rootfs assembler (`rootfs.rs`).

use super::*;

fn host_kind() -> ElfKind {
    file_kind(Path::new("/proc/self/exe")).expect("the test binary is ELF")
}

#[test]
fn dst_expansion() {
    let kind = host_kind();
    let origin = Path::new("/opt/app/bin");
    assert_eq!(
        expand_dst("$ORIGIN/../lib", origin, kind),
        Some(PathBuf::from("/opt/app/bin/../lib"))
    );
    assert_eq!(
        expand_dst("${ORIGIN}/x", origin, kind),
        Some(PathBuf::from("/opt/app/bin/x"))
    );
    assert_eq!(
        expand_dst("/usr/lib", origin, kind),
        Some(PathBuf::from("/usr/lib"))
    );
    assert_eq!(expand_dst("$UNKNOWN/lib", origin, kind), None);
    assert_eq!(expand_dst("${ORIGIN", origin, kind), None);
}

#[test]
fn ld_so_cache_finds_libc() {
    let cache = LdCache::load(Path::new("/etc/ld.so.cache"));
    if cache.entries.is_empty() {
        eprintln!("skipped: no /etc/ld.so.cache on this host");
        return;
    }
    let libc = cache
        .entries
        .get("libc.so.6")
        .expect("libc.so.6 in the cache");
    assert!(libc.iter().any(|p| p.exists()), "{libc:?}");
}

#[test]
fn ld_so_cache_rejects_garbage() {
    assert!(LdCache::parse(b"not a cache").entries.is_empty());
    assert!(LdCache::parse(b"glibc-ld.so.cache1.1\xff\xff\xff\xff")
        .entries
        .is_empty());
    assert!(LdCache::parse(b"").entries.is_empty());
}

#[test]
fn symlinks_in_the_rootfs_stay_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    // An absolute link would escape a plain join; inside a chroot it
    // points to <root>/usr/lib.
    std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("usr/lib/up")).unwrap();
    let parent = parent_in_root(&root, Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
    assert_eq!(parent, root.join("usr/lib/x86_64-linux-gnu"));
    let parent = parent_in_root(&root, Path::new("/lib/up/etc/x")).unwrap();
    assert_eq!(parent, root.join("etc"));
}

#[test]
fn not_elf_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    let rootfs = dir.path().join("rootfs");
    let err = assemble(&rootfs, std::slice::from_ref(&script), None).unwrap_err();
    assert!(matches!(err, RootfsError::NotElf { .. }), "{err}");
    assert!(err.to_string().contains("script.sh"), "{err}");
    assert!(!rootfs.exists());
}

#[test]
fn missing_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = assemble(dir.path(), &[PathBuf::from("/nonexistent/bin/x")], None).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/bin/x"), "{err}");
}

/// This test binary (a dynamic x86-64 executable) with `patch` applied
/// to its bytes, written as `name` in `dir`.
fn patched_self(dir: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>, &Elf)) -> PathBuf {
    let bytes = fs::read("/proc/self/exe").unwrap();
    let mut copy = bytes.clone();
    patch(&mut copy, &Elf::parse(&bytes).unwrap());
    let path = dir.join(name);
    fs::write(&path, copy).unwrap();
    path
}

#[test]
fn a_corrupt_dt_needed_is_an_error_not_a_missing_library() {
    let dir = tempfile::tempdir().unwrap();
    let binary = patched_self(dir.path(), "bad-needed", |bytes, elf| {
        let dynamic = elf
            .program_headers
            .iter()
            .find(|ph| ph.p_type == goblin::elf::program_header::PT_DYNAMIC)
            .expect("the test binary is dynamic");
        let start = dynamic.p_offset as usize;
        let entry = (start..start + dynamic.p_filesz as usize)
            .step_by(16)
            .find(|&at| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) == 1)
            .expect("a DT_NEEDED entry");
        bytes[entry + 8..entry + 16].copy_from_slice(&0x7fff_ffffu64.to_le_bytes());
    });
    let rootfs = dir.path().join("rootfs");
    let err = assemble(&rootfs, std::slice::from_ref(&binary), None).unwrap_err();
    assert!(matches!(err, RootfsError::Damaged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bad-needed") && text.contains("DT_NEEDED"),
        "{text}"
    );
    assert!(!rootfs.exists());
}

#[test]
fn the_interpreter_path_ends_at_its_first_nul() {
    let dir = tempfile::tempdir().unwrap();
    let binary = patched_self(dir.path(), "nul-interp", |bytes, elf| {
        let interp = elf
            .program_headers
            .iter()
            .find(|ph| ph.p_type == goblin::elf::program_header::PT_INTERP)
            .expect("the test binary has an interpreter");
        // A short path, a NUL, then junk up to the segment's end.
        let (start, len) = (interp.p_offset as usize, interp.p_filesz as usize);
        let segment = &mut bytes[start..start + len];
        segment.fill(b'x');
        segment[..5].copy_from_slice(b"/bin\0");
    });
    let needs = read_elf_needs(&binary, &fs::read(&binary).unwrap()).unwrap();
    assert_eq!(needs.interpreter, Some(PathBuf::from("/bin")));
    // Through assemble: the cut path is looked up (a directory, so not
    // found), and the message shows no junk.
    let err = assemble(&dir.path().join("rootfs"), &[binary], None).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RootfsError::InterpreterNotFound { .. }),
        "{text}"
    );
    assert!(
        text.contains("interpreter /bin of") && !text.contains("xxx"),
        "{text}"
    );
}
