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

e2e_cases!(ENGINE);
user_cases!(ENGINE);
tty_cases!(ENGINE);
net_cases!(ENGINE);

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

    #[test]
    fn libs_init_says_hello() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::libs_init_says_hello"),
            common::libs_init_says_hello,
        );
    }

    #[test]
    fn binary_stdout_16k_arrives_unchanged() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::binary_stdout_16k_arrives_unchanged"),
            common::binary_stdout_16k_arrives_unchanged,
        );
    }

    #[test]
    fn binary_stdout_64k_arrives_unchanged() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::binary_stdout_64k_arrives_unchanged"),
            common::binary_stdout_64k_arrives_unchanged,
        );
    }

    #[test]
    fn binary_stdout_arrives_unchanged() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::binary_stdout_arrives_unchanged"),
            common::binary_stdout_arrives_unchanged,
        );
    }

    #[test]
    fn stderr_is_separate() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::stderr_is_separate"),
            common::stderr_is_separate,
        );
    }

    #[test]
    fn stdin_is_forwarded() {
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::stdin_is_forwarded"),
            common::stdin_is_forwarded,
        );
    }
}
