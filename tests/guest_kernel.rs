//! The virtio plan for the kernels installed on this machine: Debian's
//! (its virtio drivers are modules, found by ACPI) and the project kernel
//! (`scripts/build-kernel`'s cache). Each check is skipped, with the
//! reason, where its kernel is not installed. The time a plan takes is
//! printed: it is paid on every run, before the VM boots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microrun::guest_kernel::{plan_under, VirtioPlan, VirtioSetting};

const DEBIAN_RELEASE: &str = "6.1.0-57-amd64";

/// The plan for `kernel`, after printing how long it takes without a
/// cache, and from one (best of 5 each).
fn timed_plan(kernel: &Path) -> VirtioPlan {
    let cache = tempfile::tempdir().unwrap();
    let best = |cache: Option<&Path>| {
        let mut best = Duration::MAX;
        let mut plan = VirtioPlan::default();
        for _ in 0..5 {
            let started = Instant::now();
            plan = plan_under(Path::new("/"), kernel, VirtioSetting::On, 0, cache);
            best = best.min(started.elapsed());
        }
        (plan, best)
    };
    let (plan, uncached) = best(None);
    let (from_cache, cached) = best(Some(cache.path()));
    assert_eq!(from_cache, plan);
    println!(
        "plan for {}: {:.2} ms, {:.2} ms from the cache (best of 5)",
        kernel.display(),
        uncached.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3
    );
    for note in &plan.notes {
        println!("  {note}");
    }
    plan
}

#[test]
fn debian_kernel_loads_its_virtio_modules_and_finds_the_console_by_acpi() {
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{DEBIAN_RELEASE}"));
    let config = PathBuf::from(format!("/boot/config-{DEBIAN_RELEASE}"));
    let modules = PathBuf::from(format!("/lib/modules/{DEBIAN_RELEASE}"));
    if let Some(missing) = [&kernel, &config, &modules]
        .into_iter()
        .find(|p| !p.exists())
    {
        println!(
            "skipped: {} does not exist (apt-get install linux-image-{DEBIAN_RELEASE})",
            missing.display()
        );
        return;
    }
    let plan = timed_plan(&kernel);
    assert!(plan.console, "{:?}", plan.notes);
    assert!(plan.acpi_discovery && !plan.cmdline_discovery);
    let names: Vec<&str> = plan.modules.iter().map(|m| m.file_name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    // Each after what it needs: virtio needs virtio_ring; both drivers need virtio.
    assert!(
        position("virtio_ring.ko") < position("virtio.ko"),
        "{names:?}"
    );
    assert!(
        position("virtio.ko") < position("virtio_mmio.ko"),
        "{names:?}"
    );
    assert!(
        position("virtio.ko") < position("virtio_console.ko"),
        "{names:?}"
    );
    for module in &plan.modules {
        assert!(module.bytes.starts_with(b"\x7fELF"), "{}", module.file_name);
        assert!(module.params.is_empty(), "{}", module.file_name);
    }
    print_steps(&kernel);
}

/// How long each step of a plan takes, for `kernel`.
fn print_steps(kernel: &Path) {
    use initrd_tools::kernel_info::{kernel_release, KernelConfig};
    use initrd_tools::modules::ModuleTree;
    let mut at = Instant::now();
    let mut step = |what: &str| {
        println!("  {what}: {:.2} ms", at.elapsed().as_secs_f64() * 1e3);
        at = Instant::now();
    };
    let release = kernel_release(kernel).unwrap();
    step("release");
    KernelConfig::find(kernel, &release).unwrap().unwrap();
    step("configuration");
    let tree = ModuleTree::for_release(&release).unwrap();
    step("module indexes");
    let files = tree.resolve(&["virtio_mmio", "virtio_console"]).unwrap();
    step("resolve");
    for file in &files {
        file.read().unwrap();
    }
    step("read modules");
}

#[test]
fn project_kernel_plan() {
    let Some(home) = std::env::var_os("HOME") else {
        println!("skipped: no HOME, so no project kernel cache");
        return;
    };
    let kernel = Path::new(&home).join(".cache/microrun/kernels/default/bzImage");
    if !kernel.exists() || !kernel.with_file_name("config").exists() {
        println!(
            "skipped: {} and its config do not exist (scripts/build-kernel)",
            kernel.display()
        );
        return;
    }
    let plan = timed_plan(&kernel);
    // Its configuration is known: it either builds the drivers in (and
    // announces the console on the command line) or has none.
    assert!(plan.modules.is_empty(), "{:?}", plan.notes);
    assert!(!plan.acpi_discovery, "{:?}", plan.notes);
    assert_eq!(plan.console, plan.cmdline_discovery, "{:?}", plan.notes);
}
