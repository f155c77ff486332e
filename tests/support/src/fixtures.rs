//! Inputs that more than one package's tests build.

/// A minimal 64-bit relocatable ELF object with a `.modinfo` section
/// (`vermagic=<vermagic> SMP mod_unload`) and `filler` bytes of padding.
pub fn fake_module(vermagic: &str, filler: usize) -> Vec<u8> {
    let modinfo = format!("license=GPL\0vermagic={vermagic} SMP mod_unload \0name=x\0");
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let mut b = vec![0u8; 64];
    b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    b[0x10] = 1; // ET_REL
    b[0x12] = 62; // EM_X86_64
    let modinfo_off = b.len();
    b.extend(modinfo.as_bytes());
    let shstrtab_off = b.len();
    b.extend(shstrtab);
    b.resize(b.len() + filler, 0);
    let shoff = b.len();
    let section = |name: u32, kind: u32, off: usize, size: usize| {
        let mut sh = vec![0u8; 64];
        sh[0..4].copy_from_slice(&name.to_le_bytes());
        sh[4..8].copy_from_slice(&kind.to_le_bytes());
        sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        sh
    };
    b.extend(section(0, 0, 0, 0));
    b.extend(section(1, 1, modinfo_off, modinfo.len()));
    b.extend(section(10, 3, shstrtab_off, shstrtab.len()));
    b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    b[0x34] = 64;
    b[0x3a] = 64;
    b[0x3c] = 3;
    b[0x3e] = 2;
    b
}

/// The start of the packers' test trees (newc and EROFS): `bin/tool`
/// setuid 4755, `etc/secret` 0600, an empty file, and an empty directory
/// chain under a sticky, world-writable `empty`.
pub fn modes_tree(root: &std::path::Path) {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("empty/deeper/still-empty")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("etc/secret"), b"s3cret").unwrap();
    fs::set_permissions(root.join("etc/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("etc/empty-file"), b"").unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
}
