//! Tests of the module finder (`modules/mod.rs`).

use super::file::vermagic_release;
use super::*;
use std::io::Write;
use test_support::fixtures::fake_module;

const RELEASE: &str = "9.9.9-test";

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// zstd with a content checksum, as the `zstd` tool Kbuild runs writes it.
fn zst(bytes: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A module tree like Debian's for the virtio, 9p and kvm modules, with
/// some files compressed, an alias file with globs, built-in modules and
/// soft dependencies.
struct FakeTree {
    root: tempfile::TempDir,
}

impl FakeTree {
    fn dir(&self) -> PathBuf {
        self.root.path().join(RELEASE)
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.dir().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn tree(&self) -> ModuleTree {
        ModuleTree::for_release_under(self.root.path(), RELEASE).unwrap()
    }
}

const MODULES: &[(&str, &str)] = &[
    ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_ring.ko:"),
    ("kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko"),
    ("kernel/drivers/virtio/virtio_mmio.ko.xz", "kernel/drivers/virtio/virtio_mmio.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
    ("kernel/drivers/char/virtio_console.ko.zst", "kernel/drivers/char/virtio_console.ko.zst: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
    ("kernel/fs/netfs/netfs.ko", "kernel/fs/netfs/netfs.ko:"),
    ("kernel/fs/fscache/fscache.ko", "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko"),
    ("kernel/net/9p/9pnet.ko.gz", "kernel/net/9p/9pnet.ko.gz:"),
    ("kernel/net/9p/9pnet_virtio.ko", "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko.gz kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"),
    ("kernel/fs/9p/9p.ko", "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko.gz kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko"),
    ("kernel/virt/lib/irqbypass.ko", "kernel/virt/lib/irqbypass.ko:"),
    ("kernel/drivers/crypto/ccp/ccp.ko", "kernel/drivers/crypto/ccp/ccp.ko:"),
    ("kernel/arch/x86/kvm/kvm.ko", "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko"),
    ("kernel/arch/x86/kvm/kvm-amd.ko", "kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko"),
    ("kernel/crypto/crc32c_generic.ko", "kernel/crypto/crc32c_generic.ko:"),
    ("kernel/fs/jbd2/jbd2.ko", "kernel/fs/jbd2/jbd2.ko:"),
    ("kernel/fs/ext4/ext4.ko", "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko"),
    ("kernel/fs/after.ko", "kernel/fs/after.ko:"),
];

fn fake_tree() -> FakeTree {
    let t = FakeTree {
        root: tempfile::tempdir().unwrap(),
    };
    let mut dep = String::new();
    for (file, line) in MODULES {
        let elf = fake_module(RELEASE, 100);
        let bytes = match Compression::of(file.rsplit('/').next().unwrap()).unwrap().0 {
            Compression::None => elf,
            Compression::Xz => xz(&elf),
            Compression::Zstd => zst(&elf),
            Compression::Gzip => gz(&elf),
        };
        t.write(file, &bytes);
        dep.push_str(line);
        dep.push('\n');
    }
    t.write("modules.dep", dep.as_bytes());
    t.write(
        "modules.alias",
        b"# Aliases extracted from modules themselves.\n\
          alias virtio:d00000003v* virtio_console\n\
          alias virtio:d00000009v* 9pnet_virtio\n\
          alias acpi*:LNRO0005:* virtio_mmio\n\
          alias of:N*T*Cvirtio,mmio virtio_mmio\n\
          alias fs-9p 9p\n\
          alias crypto-crc32c crc32c_generic\n\
          alias cpu:type:x86,ven*fam*mod*:feature:*0[0-9A-F]C2* kvm_amd\n\
          alias rng rng_core\n",
    );
    t.write(
        "modules.softdep",
        b"softdep jbd2 pre: crypto-crc32c missing-one post: after\n",
    );
    t.write(
        "modules.builtin",
        b"kernel/drivers/char/hw_random/rng-core.ko\nkernel/lib/crc16.ko\n",
    );
    t.write(
        "modules.builtin.modinfo",
        b"virtio_blk.license=GPL\0virtio_blk.alias=virtio:d00000002v*\0unix.alias=net-pf-1\0",
    );
    t
}

fn names(files: &[ModuleFile]) -> Vec<&str> {
    files.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn dependencies_come_first_without_duplicates() {
    let t = fake_tree();
    let tree = t.tree();
    let files = tree.resolve(&["virtio_mmio", "virtio_console"]).unwrap();
    assert_eq!(
        names(&files),
        ["virtio_ring", "virtio", "virtio_mmio", "virtio_console"]
    );
    assert_eq!(files[2].compression, Compression::Xz);
    assert_eq!(files[2].file_name(), "virtio_mmio.ko");
    assert_eq!(
        files[2].path,
        t.dir().join("kernel/drivers/virtio/virtio_mmio.ko.xz")
    );
    assert_eq!(
        names(&tree.resolve(&["kvm-amd"]).unwrap()),
        ["irqbypass", "kvm", "ccp", "kvm_amd"]
    );
    assert_eq!(
        names(&tree.resolve(&["9p", "9pnet_virtio"]).unwrap()),
        [
            "netfs",
            "fscache",
            "9pnet",
            "9p",
            "virtio_ring",
            "virtio",
            "9pnet_virtio"
        ]
    );
    assert_eq!(
        names(&resolve(&t.dir(), &["kvm_amd", "kvm"]).unwrap()),
        ["irqbypass", "kvm", "ccp", "kvm_amd"]
    );
}

#[test]
fn aliases_match_as_globs_and_builtins_need_nothing() {
    let t = fake_tree();
    let tree = t.tree();
    let one = |name: &str| tree.lookup(name);
    let modules = |m: &[&str]| Lookup::Modules(m.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        one("virtio:d00000003v00001AF4"),
        modules(&["virtio_console"])
    );
    assert_eq!(one("virtio:d00000003v*"), modules(&["virtio_console"]));
    assert_eq!(one("acpi:LNRO0005:"), modules(&["virtio_mmio"]));
    assert_eq!(one("of:NvirtioTCvirtio,mmio"), modules(&["virtio_mmio"]));
    assert_eq!(one("fs-9p"), modules(&["9p"]));
    assert_eq!(one("fs_9p"), modules(&["9p"]));
    assert_eq!(
        one("cpu:type:x86,ven0002fam0019mod0001:feature:,00C2,"),
        modules(&["kvm_amd"])
    );
    assert_eq!(
        one("cpu:type:x86,ven0002fam0019mod0001:feature:,00G2,"),
        Lookup::NotFound
    );
    assert_eq!(one("rng-core"), Lookup::Builtin);
    assert_eq!(one("rng"), Lookup::Builtin, "an alias of a built-in module");
    assert_eq!(one("crc16"), Lookup::Builtin);
    assert_eq!(one("virtio:d00000002v00001AF4"), Lookup::Builtin);
    assert_eq!(one("virtio_blk"), Lookup::Builtin);
    assert_eq!(one("nonexistent"), Lookup::NotFound);
    assert_eq!(
        names(&tree.resolve(&["virtio_blk", "fs-9p", "crc16"]).unwrap()),
        ["netfs", "fscache", "9pnet", "9p"]
    );
    let err = tree.resolve(&["virtio_mmio", "nonexistent"]).unwrap_err();
    assert!(matches!(err, ModulesError::NotFound { ref name, .. } if name == "nonexistent"));
    assert!(
        err.to_string().contains(&*t.dir().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn soft_dependencies_load_around_the_module() {
    let t = fake_tree();
    assert_eq!(
        names(&t.tree().resolve(&["ext4"]).unwrap()),
        ["crc32c_generic", "jbd2", "after", "ext4"]
    );
}

#[test]
fn modules_decompress_and_carry_the_kernel_release() {
    let t = fake_tree();
    let files = t
        .tree()
        .resolve(&["virtio_console", "virtio_mmio", "9pnet"])
        .unwrap();
    let want = fake_module(RELEASE, 100);
    for f in &files {
        assert_eq!(f.read().unwrap(), want, "{}", f.path.display());
    }
    assert_eq!(vermagic_release(&want).as_deref(), Some(RELEASE));
    // Opened without a release: versions are not checked.
    t.write("kernel/fs/netfs/netfs.ko", &fake_module("1.2.3-other", 0));
    let unchecked = ModuleTree::open(&t.dir()).unwrap();
    assert!(unchecked.resolve(&["netfs"]).unwrap()[0].read().is_ok());
    let err = t.tree().resolve(&["netfs"]).unwrap()[0].read().unwrap_err();
    assert!(
        matches!(err, ModulesError::VersionMismatch { ref found, ref expected, .. }
            if found == "1.2.3-other" && expected == RELEASE),
        "{err}"
    );
}

#[test]
fn the_xz_tool_makes_modules_as_kbuild_does() {
    let t = fake_tree();
    let elf = fake_module(RELEASE, 5000);
    let out = std::process::Command::new("xz")
        .args(["--check=crc32", "--lzma2=dict=1MiB", "--stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&elf)?;
            child.wait_with_output()
        });
    let Ok(out) = out else {
        println!("skipped: no xz tool (apt-get install xz-utils)");
        return;
    };
    assert!(out.status.success());
    t.write("kernel/drivers/virtio/virtio_mmio.ko.xz", &out.stdout);
    let files = t.tree().resolve(&["virtio_mmio"]).unwrap();
    assert_eq!(files[2].read().unwrap(), elf);
}

#[test]
fn corrupt_or_oversized_modules_are_errors() {
    let t = fake_tree();
    let tree = t.tree();
    let file = |name: &str| {
        tree.resolve(&[name])
            .unwrap()
            .into_iter()
            .find(|f| f.name == name)
            .unwrap()
    };
    let elf = fake_module(RELEASE, 100);
    let mut truncated = xz(&elf);
    truncated.truncate(truncated.len() / 2);
    let mut flipped = zst(&elf);
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let mut bad_gz = gz(&elf);
    let end = bad_gz.len() - 6;
    bad_gz[end] ^= 0xff; // the CRC32 of the data
    for (rel, name, bytes) in [
        (
            "kernel/drivers/virtio/virtio_mmio.ko.xz",
            "virtio_mmio",
            truncated,
        ),
        (
            "kernel/drivers/char/virtio_console.ko.zst",
            "virtio_console",
            flipped,
        ),
        ("kernel/net/9p/9pnet.ko.gz", "9pnet", bad_gz),
        (
            "kernel/drivers/virtio/virtio_mmio.ko.xz",
            "virtio_mmio",
            zst(&elf),
        ),
        ("kernel/fs/netfs/netfs.ko", "netfs", b"not an ELF".to_vec()),
        (
            "kernel/fs/netfs/netfs.ko",
            "netfs",
            xz(b"\x7fELF but no sections"),
        ),
    ] {
        t.write(rel, &bytes);
        let err = file(name).read().unwrap_err();
        assert!(matches!(err, ModulesError::Corrupt { .. }), "{name}: {err}");
        assert!(err.to_string().contains(rel), "{err}");
    }
    // A small file that decompresses past the limit stops at the limit.
    let bomb = fake_module(RELEASE, 3 << 20);
    t.write("kernel/drivers/char/virtio_console.ko.zst", &zst(&bomb));
    let err = file("virtio_console").read_at_most(1 << 20).unwrap_err();
    assert!(
        matches!(err, ModulesError::TooLarge { size, max: 1048576, .. } if size == (1 << 20) + 1),
        "{err}"
    );
    std::fs::remove_file(t.dir().join("kernel/fs/jbd2/jbd2.ko")).unwrap();
    assert!(matches!(
        tree.resolve(&["ext4"]),
        Err(ModulesError::ModuleFileMissing { ref name, .. }) if name == "jbd2"
    ));
}

#[test]
fn bad_trees_and_indexes_are_errors() {
    let t = fake_tree();
    assert!(matches!(
        ModuleTree::for_release_under(t.root.path(), "../etc"),
        Err(ModulesError::InvalidRelease(_))
    ));
    let err = ModuleTree::for_release_under(t.root.path(), "1.0-absent").unwrap_err();
    assert!(matches!(err, ModulesError::NoModulesDir { .. }));
    assert!(err.to_string().contains("1.0-absent"), "{err}");

    let dep = t.dir().join("modules.dep");
    for (text, check) in [
        ("kernel/a.ko:\n../../../etc/passwd.ko:\n", "outside"),
        ("kernel/a.ko: kernel/not-a-module\n", "outside"),
        ("/etc/evil.ko:\n", "outside"),
        (
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n",
            "cycle",
        ),
        (
            "kernel/a.ko: kernel/gone.ko\n",
            "names gone as a dependency of a",
        ),
    ] {
        std::fs::write(&dep, text).unwrap();
        std::fs::write(t.dir().join("kernel/a.ko"), fake_module(RELEASE, 0)).unwrap();
        std::fs::write(t.dir().join("kernel/b.ko"), fake_module(RELEASE, 0)).unwrap();
        let err = t
            .tree_result()
            .and_then(|tree| tree.resolve(&["a"]))
            .unwrap_err();
        assert!(err.to_string().contains(check), "{text}: {err}");
    }
    let deep: String = (0..300)
        .map(|i| format!("kernel/m{i}.ko: kernel/m{}.ko\n", i + 1))
        .collect();
    std::fs::write(&dep, deep).unwrap();
    let err = t.tree().resolve(&["m0"]).unwrap_err();
    assert!(matches!(err, ModulesError::Cycle { .. }), "{err}");

    std::fs::remove_file(&dep).unwrap();
    let err = ModuleTree::open(&t.dir()).unwrap_err();
    assert!(matches!(err, ModulesError::IndexMissing { .. }));
    assert!(err.to_string().contains("depmod 9.9.9-test"), "{err}");
}

impl FakeTree {
    fn tree_result(&self) -> Result<ModuleTree, ModulesError> {
        ModuleTree::for_release_under(self.root.path(), RELEASE)
    }
}

#[test]
fn garbage_never_panics_the_parsers() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let module = fake_module(RELEASE, 0);
    for len in 0..module.len() {
        let _ = vermagic_release(&module[..len]);
    }
    for _ in 0..2000 {
        let mut m = module.clone();
        for _ in 0..4 {
            let at = next() as usize % m.len();
            m[at] = next() as u8;
        }
        let _ = vermagic_release(&m);
        let alphabet = b"ab*?[]!^-\\";
        let pick = |n: u64| alphabet[n as usize % alphabet.len()];
        let pattern: Vec<u8> = (0..next() % 12).map(|_| pick(next())).collect();
        let text: Vec<u8> = (0..next() % 12).map(|_| pick(next())).collect();
        let _ = glob_match(&pattern, &text);
    }
}

/// Every module's `modules.dep` dependencies come before it, once.
fn check_order(tree: &ModuleTree, files: &[ModuleFile]) {
    let mut seen = HashSet::new();
    for f in files {
        for dep in &tree.deps[&f.name].deps {
            assert!(seen.contains(dep), "{} before its dependency {dep}", f.name);
        }
        assert!(seen.insert(f.name.clone()), "{} twice", f.name);
    }
}

#[test]
fn debian_tree_gives_modprobes_order() {
    let release = "6.1.0-57-amd64";
    let Ok(tree) = ModuleTree::for_release(release) else {
        println!("skipped: /lib/modules/{release} is not installed (linux-image-amd64)");
        return;
    };
    let expect: &[(&str, &[&str])] = &[
        ("virtio_mmio", &["virtio_ring", "virtio", "virtio_mmio"]),
        ("acpi:LNRO0005:", &["virtio_ring", "virtio", "virtio_mmio"]),
        (
            "virtio_console",
            &["virtio_ring", "virtio", "virtio_console"],
        ),
        (
            "virtio:d00000003v00001AF4",
            &["virtio_ring", "virtio", "virtio_console"],
        ),
        (
            "9pnet_virtio",
            &["virtio_ring", "virtio", "9pnet", "9pnet_virtio"],
        ),
        ("9p", &["netfs", "fscache", "9pnet", "9p"]),
        ("fs-9p", &["netfs", "fscache", "9pnet", "9p"]),
        ("kvm-amd", &["irqbypass", "kvm", "ccp", "kvm_amd"]),
    ];
    for (name, modules) in expect {
        let files = tree.resolve(&[name]).unwrap();
        assert_eq!(names(&files), *modules, "{name}");
        for f in &files {
            f.read().unwrap();
        }
    }
    // Cross-check with modprobe itself where it is installed.
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match modprobe {
        None => println!("skipped: modprobe comparison (no modprobe; apt-get install kmod)"),
        Some(modprobe) => {
            for name in expect
                .iter()
                .map(|e| e.0)
                .chain(["crc32c", "ext4", "virtio_blk"])
            {
                let out = std::process::Command::new(modprobe)
                    .args([
                        "--show-depends",
                        "-C",
                        "/var/empty",
                        "-S",
                        release,
                        "--",
                        name,
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let theirs: Vec<PathBuf> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("insmod "))
                    .map(|p| PathBuf::from(p.trim()))
                    .collect();
                let ours: Vec<PathBuf> = tree
                    .resolve(&[name])
                    .unwrap()
                    .into_iter()
                    .map(|f| f.path)
                    .collect();
                assert_eq!(ours, theirs, "{name}");
            }
        }
    }
    // The order holds for every module of the tree.
    for name in tree.deps.keys() {
        check_order(&tree, &tree.resolve(&[name]).unwrap());
    }
}
