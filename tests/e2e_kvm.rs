//! The shared end-to-end cases through microrun's own VMM, booting a real
//! kernel. They need a KVM that runs Linux guests: on hardware KVM they run
//! here; on a host whose KVM emulates guest kernel code (kvm_pvm, see
//! shared/PLATFORM.md) they run in the nested-KVM lane (`common::nested`,
//! one outer VM for the whole binary); without /dev/kvm each case reports
//! itself skipped (unavailable) with the reason, a failure in strict mode
//! (`MICRORUN_REQUIRE_ALL=1`).

#[macro_use]
mod common;

use std::path::PathBuf;

use common::Engine;

const ENGINE: Engine = Engine {
    name: "kvm",
    args: &["--engine", "kvm"],
    env: &[],
    is_vm: true,
    unavailable: kvm_cannot_run_linux,
    kernel,
    nested: true,
    no_stdin_eof: None,
    slow_stdout: None,
    no_shares: None,
};

fn kvm_cannot_run_linux() -> Option<String> {
    match vmm::kvm_host() {
        vmm::KvmHost::Hardware => kernel()
            .is_none()
            .then(|| "no kernel: run scripts/build-kernel".to_string()),
        vmm::KvmHost::Emulated(why) => {
            Some(format!("this host's KVM cannot run a Linux guest: {why}"))
        }
        vmm::KvmHost::Unavailable(why) => Some(why),
    }
}

/// The project kernel when built, else the host's (discovery's choice).
fn kernel() -> Option<PathBuf> {
    common::project_kernel()
}

/// One `#[test]` per named shared case (`common::NAME`), run with
/// `$engine`: for a module that takes some of the cases, not all.
macro_rules! shared_cases {
    ($engine:ident: $($name:ident),+) => {
        $(
            #[test]
            fn $name() {
                common::run_case(
                    &$engine,
                    concat!(module_path!(), "::", stringify!($name)),
                    common::$name,
                );
            }
        )+
    };
}

e2e_cases!(ENGINE);
user_cases!(ENGINE);
tty_cases!(ENGINE);
net_cases!(ENGINE);
disk_root_cases!(ENGINE);

/// The same cases with KVM's in-kernel PIC, I/O APIC and PIT instead of the
/// default split irqchip.
mod in_kernel_irqchip {
    use super::*;

    const ENGINE: Engine = Engine {
        name: "kvm with MICRORUN_IRQCHIP=kernel",
        env: &[("MICRORUN_IRQCHIP", "kernel")],
        ..super::ENGINE
    };

    e2e_cases!(ENGINE);
}

/// The project kernel's vmlinux from the cache, whose segments the VMM
/// maps into guest memory instead of copying them (`vmm::memory`).
mod cached_vmlinux {
    use super::*;

    const ENGINE: Engine = Engine {
        name: "kvm with the project vmlinux from the cache (mapped)",
        kernel: project_vmlinux,
        unavailable,
        ..super::ENGINE
    };

    fn project_vmlinux() -> Option<PathBuf> {
        common::project_vmlinux()
    }

    /// Without the vmlinux the case would boot the default kernel instead.
    fn unavailable() -> Option<String> {
        match project_vmlinux() {
            None => Some("no project vmlinux in the cache: run scripts/build-kernel".into()),
            Some(_) => kvm_cannot_run_linux(),
        }
    }

    shared_cases!(
        ENGINE: libs_init_says_hello,
        binary_stdout_arrives_unchanged
    );
}

/// With `MICRORUN_VIRTIO=off` the VM has no virtio-console and the UARTs
/// carry the program's streams, as they do for a kernel without virtio.
mod uarts {
    use super::*;

    const ENGINE: Engine = Engine {
        name: "kvm with MICRORUN_VIRTIO=off",
        env: &[("MICRORUN_VIRTIO", "off")],
        no_stdin_eof: Some("a serial port has no end of file"),
        slow_stdout: Some("64 MiB over a UART takes too long"),
        ..super::ENGINE
    };

    shared_cases!(
        ENGINE: libs_init_says_hello,
        binary_stdout_16k_arrives_unchanged,
        binary_stdout_64k_arrives_unchanged,
        binary_stdout_arrives_unchanged,
        stderr_is_separate,
        stdin_is_forwarded
    );
}
