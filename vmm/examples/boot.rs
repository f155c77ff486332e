//! A tiny driver for benchmarks and manual checks:
//! `boot KERNEL [--mem MIB] [--cpus N] [--cmdline TEXT] [--initrd FILE] [--timeout-ms MS] [--stdin] [--irqchip split|kernel] [--no-seccomp] [--virtio-console cmdline|acpi] [--timings]`.
//! Exits with the VM's exit code (125 on a VMM error).

use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let process_start = Instant::now();
    let mut args = std::env::args().skip(1);
    let mut config = vmm::VmConfig {
        kernel: Default::default(),
        kernel_cached: false,
        initrd: Vec::new(),
        cmdline: String::new(),
        mem_size: 128 << 20,
        vcpus: 1,
        timeout: None,
        forward_stdin: false,
        irqchip: vmm::IrqChip::Split,
        console: Box::new(std::io::stderr()),
        stdout: Box::new(std::io::stdout()),
        process_start,
        seccomp: true,
        virtio: vmm::VirtioOptions::default(),
        net_backend: None,
    };
    let mut timings = false;
    let mut cmdline_devices = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--mem" => config.mem_size = value().parse::<u64>().unwrap_or(128) << 20,
            "--cpus" => config.vcpus = value().parse().unwrap_or(0),
            "--cmdline" => config.cmdline = value(),
            "--initrd" => config.initrd.push(vmm::InitrdPart::File(value().into())),
            "--timeout-ms" => {
                config.timeout = Some(Duration::from_millis(value().parse().unwrap_or(1000)))
            }
            "--stdin" => config.forward_stdin = true,
            "--no-seccomp" => config.seccomp = false,
            "--irqchip" => {
                config.irqchip = match value().as_str() {
                    "kernel" => vmm::IrqChip::Kernel,
                    _ => vmm::IrqChip::Split,
                }
            }
            "--virtio-console" => {
                let acpi = value() == "acpi";
                config.virtio = vmm::VirtioOptions {
                    devices: vec![vmm::DeviceSpec::Console],
                    acpi,
                };
                cmdline_devices = !acpi;
            }
            "--timings" => timings = true,
            _ => config.kernel = arg.into(),
        }
    }
    if cmdline_devices {
        let mut words = config.virtio.cmdline_devices();
        words.push(config.cmdline);
        config.cmdline = words.join(" ");
    }
    match vmm::run(config) {
        Ok(outcome) => {
            if timings {
                let t = outcome.timings;
                let since = |i: Option<Instant>| {
                    i.map_or("-".into(), |i| format!("{:?}", i - t.process_start))
                };
                eprintln!(
                    "vm_ready {} first_run {} init {} status {} exit {}",
                    since(t.vm_ready),
                    since(t.first_run),
                    since(t.init_event),
                    since(t.status),
                    since(t.exit)
                );
            }
            if !matches!(outcome.end, vmm::VmEnd::Status(_)) {
                eprintln!("boot: {}", outcome.end.describe());
            }
            ExitCode::from(outcome.end.exit_code())
        }
        Err(e) => {
            eprintln!("boot: error: {e}");
            ExitCode::from(125)
        }
    }
}
