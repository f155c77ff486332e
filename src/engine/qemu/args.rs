//! QEMU's command line for a plan: a pure function of the plan and the
//! descriptors QEMU inherits, so that every argument is unit-tested.

use std::ffi::OsString;
use std::os::fd::RawFd;

use vmm::DeviceSpec;

use super::Accel;
use crate::guest_kernel::Transport;
use crate::plan::{KernelCmdline, Reboot, VmPlan};

/// The descriptors QEMU inherits, by what they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fds {
    /// The initrd (a memfd).
    pub initrd: RawFd,
    /// ttyS0's pipe.
    pub console: RawFd,
    /// ttyS1's socket (stdout out, stdin in).
    pub ttys1: RawFd,
    /// ttyS2's pipe: the status channel.
    pub status: RawFd,
    /// The console's stdout and stderr ports' pipes (with a console).
    pub ports: Option<[RawFd; 2]>,
    /// QEMU's end of the stream socket to passt (with `--net`).
    pub net: Option<RawFd>,
}

/// The benchmark's knob for QEMU's `-netdev user[,OPTIONS]` instead of passt.
const NETDEV_VAR: &str = "MICRORUN_QEMU_NETDEV";

/// Whether `vm` runs on `-M microvm`: it has virtio-mmio devices, which
/// exist only there (with `acpi=off`, QEMU names them on the command line
/// itself).
pub fn microvm(vm: &VmPlan) -> bool {
    !vm.devices.devices.is_empty() && vm.transport == Transport::Mmio
}

/// The kernel command line QEMU is given: the plan's, adapted to the
/// machine. `microvm` has no keyboard controller to reset through
/// (`reboot=k` would boot the kernel again), so a triple fault ends it;
/// and QEMU appends its own `virtio_mmio.device=` arguments there, at
/// addresses of its own, so the plan's are left out.
pub fn cmdline(vm: &VmPlan) -> KernelCmdline {
    let mut cmdline = vm.cmdline.clone();
    if microvm(vm) {
        cmdline.reboot = Reboot::TripleFault;
        cmdline.devices.clear();
    }
    cmdline
}

/// QEMU's arguments (without the program name) for `vm` with the resolved
/// accelerator `accel` (`Kvm` or `Tcg`), the descriptors `fds`, and
/// forwarded stdin going to the console's stdin port when `stdin_port`.
pub fn args(vm: &VmPlan, accel: Accel, fds: Fds, stdin_port: bool) -> Vec<OsString> {
    let microvm = microvm(vm);
    let mut a = Args(Vec::new());
    a.push([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    a.push(["-M", if microvm { "microvm,acpi=off" } else { "pc" }]);
    match accel {
        Accel::Kvm => a.push(["-accel", "kvm", "-cpu", "host"]),
        _ => a.push(["-accel", "tcg", "-cpu", "max"]),
    }
    a.push(["-m".into(), format!("{}M", vm.mem_size.div_ceil(1 << 20))]);
    // One socket per vCPU: QEMU's BIOS lists only each socket's first CPU
    // in the MP table, which is all a kernel without ACPI reads.
    a.push(["-smp".into(), format!("{0},sockets={0}", vm.cpus)]);
    a.push(["-kernel".into(), vm.kernel.clone().into_os_string()]);
    a.push(["-initrd".into(), fd_path(fds.initrd)]);
    a.push(["-append".into(), cmdline(vm).to_string()]);
    // ttyS0, ttyS1, ttyS2 in this order: 0x3f8/IRQ4, 0x2f8/IRQ3, 0x3e8/IRQ4.
    // microvm creates only the first -serial; the others are ISA devices.
    let uart = |n: u8| -> [String; 2] {
        match (n, microvm) {
            (0, _) | (_, false) => ["-serial".into(), format!("chardev:ttyS{n}")],
            (_, true) => {
                let (port, irq) = if n == 1 { ("0x2f8", 3) } else { ("0x3e8", 4) };
                [
                    "-device".into(),
                    format!("isa-serial,chardev=ttyS{n},iobase={port},irq={irq}"),
                ]
            }
        }
    };
    a.push(["-chardev".into(), file_chardev("ttyS0", fds.console)]);
    a.push(uart(0));
    a.push([
        "-chardev".into(),
        format!("socket,id=ttyS1,fd={},server=off", fds.ttys1),
    ]);
    a.push(uart(1));
    a.push(["-chardev".into(), file_chardev("ttyS2", fds.status)]);
    a.push(uart(2));
    let bus_device = |device: &str| match vm.transport {
        Transport::Mmio => format!("{device}-device"),
        Transport::Pci => format!("{device}-pci"),
    };
    let mut shares = 0;
    let mut disks = 0;
    for device in &vm.devices.devices {
        match device {
            DeviceSpec::Console => {
                let [out, err, inp] = vmm::layout::VIRTIO_CONSOLE_PORTS;
                let [out_fd, err_fd] = fds.ports.unwrap_or([-1, -1]);
                a.push([
                    "-device".into(),
                    format!("{},max_ports=4", bus_device("virtio-serial")),
                ]);
                a.push(["-chardev".into(), file_chardev("port0", out_fd)]);
                a.push([
                    "-device".into(),
                    format!("virtserialport,chardev=port0,name={out}"),
                ]);
                a.push(["-chardev".into(), file_chardev("port1", err_fd)]);
                a.push([
                    "-device".into(),
                    format!("virtserialport,chardev=port1,name={err}"),
                ]);
                // QEMU's own stdin is the stdin port's: its end of file is
                // the port's.
                a.push([
                    "-chardev",
                    if stdin_port {
                        "stdio,id=port2,signal=off"
                    } else {
                        "null,id=port2"
                    },
                ]);
                a.push([
                    "-device".into(),
                    format!("virtserialport,chardev=port2,name={inp}"),
                ]);
            }
            DeviceSpec::Share(share) => {
                let index = shares;
                shares += 1;
                let head = format!(
                    "local,id=share{index},security_model=none,{}path=",
                    readonly(share.read_only)
                );
                a.push(["-fsdev".into(), with_path(head, &share.source)]);
                a.push([
                    "-device".into(),
                    format!(
                        "{},fsdev=share{index},mount_tag={}",
                        bus_device("virtio-9p"),
                        share.tag
                    ),
                ]);
            }
            // --net: the device's frames go to passt over a connected
            // stream socket QEMU inherits (`-netdev stream`, QEMU 7.2,
            // the framing passt's --fd speaks); the MTU pinned as passt
            // is told (-m).
            DeviceSpec::Net(net) => {
                // MICRORUN_QEMU_NETDEV=user[,OPTIONS] (scripts/bench-net's
                // peer only, docs/BENCHMARKS.md): QEMU's own user-mode
                // stack, whose defaults are the guest view --net
                // --net-host gives (10.0.2.15, gateway 10.0.2.2 = the
                // host's loopback, DNS 10.0.2.3); passt then idles, and
                // ports are forwarded by OPTIONS (hostfwd=...), not -p.
                let knob = std::env::var(NETDEV_VAR).ok();
                let netdev =
                    if let Some(user) = knob.filter(|v| v.split(',').next() == Some("user")) {
                        format!("{user},id=net0")
                    } else {
                        format!(
                            "stream,id=net0,server=off,addr.type=fd,addr.str={}",
                            fds.net.unwrap_or(-1)
                        )
                    };
                a.push(["-netdev".into(), netdev]);
                let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
                a.push([
                    "-device".into(),
                    format!(
                        "{},netdev=net0,mac={mac},host_mtu={}",
                        bus_device("virtio-net"),
                        net.mtu
                    ),
                ]);
            }
            DeviceSpec::Block(block) => {
                let head = format!(
                    "if=none,id=disk{disks},format=raw,{}file=",
                    readonly(block.read_only)
                );
                a.push(["-drive".into(), with_path(head, &block.path)]);
                a.push([
                    "-device".into(),
                    format!("{},drive=disk{disks}", bus_device("virtio-blk")),
                ]);
                disks += 1;
            }
        }
    }
    a.0
}

/// An argument list being built.
struct Args(Vec<OsString>);

impl Args {
    fn push<S: Into<OsString>, const N: usize>(&mut self, args: [S; N]) {
        self.0.extend(args.map(Into::into));
    }
}

/// A path QEMU opens to reach an inherited descriptor (the outer VM of the
/// nested lane has no `/dev/fd`).
fn fd_path(fd: RawFd) -> OsString {
    format!("/proc/self/fd/{fd}").into()
}

/// A `file` chardev `id` writing to the inherited descriptor `fd`.
fn file_chardev(id: &str, fd: RawFd) -> String {
    format!("file,id={id},path=/proc/self/fd/{fd}")
}

/// QEMU's read-only option, as the head of a list of options takes it.
fn readonly(read_only: bool) -> &'static str {
    if read_only {
        "readonly=on,"
    } else {
        ""
    }
}

/// `head` followed by `path` as a QEMU option value.
fn with_path(head: String, path: &std::path::Path) -> OsString {
    let mut option = OsString::from(head);
    option.push(option_value(path));
    option
}

/// `path` as a QEMU option value: a comma is written twice.
fn option_value(path: &std::path::Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::BootInitrd;
    use vmm::{BlockSpec, SharedDir, VirtioOptions};

    fn vm(devices: Vec<DeviceSpec>, transport: Transport) -> VmPlan {
        VmPlan {
            prepared: Default::default(),
            kernel: "/k/bzImage".into(),
            initrd: BootInitrd {
                rootfs: Some("/r.cpio".into()),
                rootfs_len: 4,
                init_archive: None,
            },
            mem_size: (100 << 20) + 1,
            sizing: crate::plan::memory::Sizing {
                mem: (100 << 20) + 1,
                needed: 100 << 20,
                initrd: 4,
                unpacked: Some(0),
            },
            cpus: 2,
            devices: VirtioOptions {
                acpi: false,
                devices,
            },
            transport,
            cmdline: KernelCmdline {
                devices: vec!["virtio_mmio.device=4K@0xd0000000:5".into()],
                guest_init: true,
                user: Some("foo=1".into()),
                ..KernelCmdline::default()
            },
            net: None,
        }
    }

    const FDS: Fds = Fds {
        initrd: 10,
        console: 11,
        ttys1: 12,
        status: 13,
        ports: Some([14, 15]),
        net: Some(16),
    };

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_uarts_alone_boot_on_pc_with_the_plans_command_line() {
        let args = text(&args(&vm(vec![], Transport::Mmio), Accel::Tcg, FDS, false));
        assert_eq!(
            args,
            "-nodefaults -no-user-config -display none -no-reboot -M pc -accel tcg -cpu max \
             -m 101M -smp 2,sockets=2 -kernel /k/bzImage -initrd /proc/self/fd/10 \
             -append virtio_mmio.device=4K@0xd0000000:5 console=ttyS0 reboot=k panic=-1 \
             8250.nr_uarts=3 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
             pty.legacy_count=0 rdinit=/.microrun/init init=/.microrun/init foo=1 \
             -chardev file,id=ttyS0,path=/proc/self/fd/11 -serial chardev:ttyS0 \
             -chardev socket,id=ttyS1,fd=12,server=off -serial chardev:ttyS1 \
             -chardev file,id=ttyS2,path=/proc/self/fd/13 -serial chardev:ttyS2"
        );
    }

    #[test]
    fn virtio_mmio_devices_take_microvm_which_names_them_itself() {
        let share = DeviceSpec::Share(SharedDir {
            source: "/a,b".into(),
            tag: "microrun0".into(),
            read_only: true,
            guest_uid: 0,
            guest_gid: 0,
        });
        let plan = vm(vec![DeviceSpec::Console, share], Transport::Mmio);
        let args = text(&args(&plan, Accel::Kvm, FDS, true));
        for part in [
            "-M microvm,acpi=off -accel kvm -cpu host",
            "-append console=ttyS0 reboot=t panic=-1",
            "-serial chardev:ttyS0 -chardev socket,id=ttyS1,fd=12,server=off \
             -device isa-serial,chardev=ttyS1,iobase=0x2f8,irq=3",
            "-device isa-serial,chardev=ttyS2,iobase=0x3e8,irq=4",
            "-device virtio-serial-device,max_ports=4 \
             -chardev file,id=port0,path=/proc/self/fd/14 \
             -device virtserialport,chardev=port0,name=microrun.stdout \
             -chardev file,id=port1,path=/proc/self/fd/15 \
             -device virtserialport,chardev=port1,name=microrun.stderr \
             -chardev stdio,id=port2,signal=off \
             -device virtserialport,chardev=port2,name=microrun.stdin",
            "-fsdev local,id=share0,security_model=none,readonly=on,path=/a,,b \
             -device virtio-9p-device,fsdev=share0,mount_tag=microrun0",
        ] {
            assert!(args.contains(part), "{part}\nin: {args}");
        }
        assert!(!args.contains("virtio_mmio.device="), "{args}");
        // The plan itself is not changed.
        assert!(plan.cmdline.to_string().contains("reboot=k"));
    }

    #[test]
    fn pci_devices_stay_on_pc_with_the_plans_reboot() {
        let share = DeviceSpec::Share(SharedDir {
            source: "/s".into(),
            tag: "microrun0".into(),
            read_only: false,
            guest_uid: 0,
            guest_gid: 0,
        });
        let plan = vm(vec![DeviceSpec::Console, share], Transport::Pci);
        let args = text(&args(&plan, Accel::Tcg, FDS, false));
        assert!(args.contains("-M pc "), "{args}");
        assert!(args.contains("reboot=k"), "{args}");
        assert!(args.contains("-device virtio-serial-pci,max_ports=4"));
        assert!(args.contains("-chardev null,id=port2"));
        assert!(args.contains(
            "-fsdev local,id=share0,security_model=none,path=/s \
             -device virtio-9p-pci,fsdev=share0,mount_tag=microrun0"
        ));
    }

    #[test]
    fn the_network_device_streams_to_passt_on_the_inherited_socket() {
        let net = DeviceSpec::Net(vmm::NetSpec {
            mac: [0x02, 0x6d, 0x72, 0, 0, 1],
            mtu: 65520,
        });
        let mmio = text(&args(
            &vm(vec![net.clone()], Transport::Mmio),
            Accel::Tcg,
            FDS,
            false,
        ));
        assert!(mmio.contains("-M microvm,acpi=off"), "{mmio}");
        assert!(
            mmio.ends_with(
                "-netdev stream,id=net0,server=off,addr.type=fd,addr.str=16 \
                 -device virtio-net-device,netdev=net0,mac=02:6d:72:00:00:01,host_mtu=65520"
            ),
            "{mmio}"
        );
        let pci = text(&args(
            &vm(vec![net], Transport::Pci),
            Accel::Tcg,
            FDS,
            false,
        ));
        assert!(
            pci.contains("-device virtio-net-pci,netdev=net0,mac=02:6d:72:00:00:01,host_mtu=65520"),
            "{pci}"
        );
    }

    #[test]
    fn a_disk_is_a_raw_drive_read_only_unless_asked() {
        let disk = |path: &str, read_only| {
            DeviceSpec::Block(BlockSpec {
                path: path.into(),
                read_only,
            })
        };
        let plan = vm(
            vec![disk("/c/a,b.erofs", true), disk("/w.img", false)],
            Transport::Mmio,
        );
        let args = text(&args(&plan, Accel::Tcg, FDS, false));
        assert!(
            args.contains(
                "-drive if=none,id=disk0,format=raw,readonly=on,file=/c/a,,b.erofs \
                 -device virtio-blk-device,drive=disk0 \
                 -drive if=none,id=disk1,format=raw,file=/w.img \
                 -device virtio-blk-device,drive=disk1"
            ),
            "{args}"
        );
    }
}
