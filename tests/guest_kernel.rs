//! The kernel plan for the kernels installed on this machine: Debian's
//! (its virtio drivers are modules, found by ACPI) and the project kernel
//! (`scripts/build-kernel`'s cache). Each check is skipped, with the
//! reason, where its kernel is not installed: unavailable, so a failure in
//! strict mode (`MICRORUN_REQUIRE_ALL=1`), since scripts/test installs
//! Debian's kernel and builds the project kernel. The time a plan takes is
//! printed: it is paid on every run, before the VM boots.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microrun::guest_kernel::{plan_under, KernelPlan, Transport};
use test_support::skip_unavailable;
use vmm::DeviceKind;

/// The plan for `kernel`, after printing how long it takes without a
/// cache, and from one (best of 5 each).
fn timed_plan(kernel: &Path) -> KernelPlan {
    let cache = tempfile::tempdir().unwrap();
    let best = |cache: Option<&Path>| {
        let mut best = Duration::MAX;
        let mut plan = KernelPlan::default();
        for _ in 0..5 {
            let started = Instant::now();
            let console = [DeviceKind::Console];
            plan = plan_under(Path::new("/"), kernel, &console, Transport::Mmio, cache);
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
    // The newest one, as the nested lane picks it: not a release named
    // here, which scripts/install-deps's linux-image-amd64 moves past.
    let Some(kernel) = common::nested::outer_kernel() else {
        skip_unavailable!(
            "no Debian kernel with its modules (/boot/vmlinuz-*-amd64, /lib/modules): \
             install linux-image-amd64 (scripts/install-deps)"
        );
        return;
    };
    let release = kernel.to_string_lossy().replace("/boot/vmlinuz-", "");
    let config = PathBuf::from(format!("/boot/config-{release}"));
    if !config.is_file() {
        skip_unavailable!(
            "{} does not exist: reinstall linux-image-{release}",
            config.display()
        );
        return;
    }
    let plan = timed_plan(&kernel);
    assert!(plan.drives(DeviceKind::Console), "{:?}", plan.notes);
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
    // Where scripts/build-kernel puts it (XDG_CACHE_HOME's cache, else
    // HOME's), with its configuration beside it.
    let Some(kernel) = common::project_kernel().filter(|k| k.with_file_name("config").is_file())
    else {
        skip_unavailable!(
            "the project kernel and its config are not in the cache: run scripts/build-kernel"
        );
        return;
    };
    let plan = timed_plan(&kernel);
    // Its configuration is known: it either builds the drivers in (and
    // announces the console on the command line) or has none.
    assert!(plan.modules.is_empty(), "{:?}", plan.notes);
    assert!(!plan.acpi_discovery, "{:?}", plan.notes);
    assert_eq!(
        plan.drives(DeviceKind::Console),
        plan.cmdline_discovery,
        "{:?}",
        plan.notes
    );
}
