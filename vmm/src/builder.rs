//! Everything between creating the VM and running it: the kernel, initrd
//! and boot structures in guest memory, the devices on their buses (the
//! UARTs, the i8042, the I/O APIC, and the virtio devices of the device
//! list, each registered in its slot), the vCPUs, and the memory slots.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::devices::i8042::I8042;
use crate::devices::ioapic::IoApic;
use crate::devices::serial::{IrqTrigger, SerialDevice, StatusOutput};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::{Console, ConsoleInput, ConsoleOutputs};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{p9, MmioTransport, VirtioDevice};
use crate::devices::{bus::lock, Bus, Devices};
use crate::irqchip::KvmMsiSink;
use crate::kernel::BootProtocol;
use crate::memory::GuestMemory;
use crate::{acpi, initrd, irqchip, kernel, layout, mptable, seccomp, vcpu};
use crate::{
    host_err, kvm_err, DeviceKind, DeviceSpec, InitrdPart, IrqChip, VirtioOptions, VmmError,
};

/// Runs `set_up` (the rest of the setup) and, with KVM's in-kernel
/// irqchip, switches off PIT re-injection meanwhile, on a thread of its
/// own: that sometimes waits 12-20 ms for an SRCU grace period (see
/// [`irqchip::switch_off_pit_reinjection`]), and there the wait overlaps
/// the rest of the setup, which waits for another.
pub(crate) fn with_pit_switch<T>(
    kvm: &Kvm,
    vm: &VmFd,
    irqchip: IrqChip,
    set_up: impl FnOnce() -> Result<T, VmmError>,
) -> Result<T, VmmError> {
    match irqchip {
        // The split model has no PIT to switch off.
        IrqChip::Split => set_up(),
        IrqChip::Kernel => std::thread::scope(|scope| {
            let pit = std::thread::Builder::new()
                .name("pit".into())
                .spawn_scoped(scope, || irqchip::switch_off_pit_reinjection(kvm, vm));
            let built = set_up();
            let pit = match pit {
                Ok(thread) => thread
                    .join()
                    .unwrap_or(Err(irqchip::IrqChipError::PitThreadPanicked)),
                Err(_) => irqchip::switch_off_pit_reinjection(kvm, vm),
            };
            let built = built?;
            pit.map(|()| built).map_err(VmmError::from)
        }),
    }
}

/// What the guest boots, borrowed from [`crate::VmConfig`].
pub(crate) struct BootSpec<'a> {
    pub(crate) kernel: &'a Path,
    pub(crate) kernel_cached: bool,
    pub(crate) initrd: &'a [InitrdPart],
    pub(crate) cmdline: &'a str,
    pub(crate) mem_size: u64,
    pub(crate) vcpus: u8,
    pub(crate) irqchip: IrqChip,
    /// The virtio devices and how the kernel learns of them (the command
    /// line above already names them when it should).
    pub(crate) virtio: VirtioOptions,
    /// The seccomp filters, for the devices with a thread of their own
    /// (each share's worker installs `fs` on itself).
    pub(crate) filters: Option<&'a seccomp::Filters>,
}

/// What the devices serve from, open before the seccomp filters are
/// built, since the filters name their descriptors: the disk images (in
/// the list's order) and the network device's socket.
pub(crate) struct Backends {
    disks: VecDeque<Block>,
    net: Option<OwnedFd>,
}

impl Backends {
    /// Opens every [`DeviceSpec::Block`]'s image, each with its serial
    /// (`microrunN`, N counting the disks from 0), and takes `net`, the
    /// [`DeviceSpec::Net`]'s socket.
    pub(crate) fn open(virtio: &VirtioOptions, net: Option<OwnedFd>) -> Result<Self, VmmError> {
        let disks = virtio
            .devices
            .iter()
            .filter_map(|device| match device {
                DeviceSpec::Block(block) => Some(block),
                _ => None,
            })
            .enumerate()
            .map(|(n, block)| Block::open(&block.path, block.read_only, &format!("microrun{n}")))
            .collect::<Result<_, _>>()?;
        // A socket no device uses is closed unused (`VmConfig::net_backend`).
        let net = net.filter(|_| virtio.devices.iter().any(|d| d.kind() == DeviceKind::Net));
        Ok(Self { disks, net })
    }

    /// The descriptors the filters allow calls on.
    pub(crate) fn descriptors(&self) -> seccomp::Descriptors {
        seccomp::Descriptors {
            disks: self
                .disks
                .iter()
                .map(|disk| (disk.as_raw_fd(), !disk.read_only()))
                .collect(),
            net_socket: self.net.as_ref().map(AsRawFd::as_raw_fd),
        }
    }
}

/// Where the guest's console (ttyS0, the stderr port) and stdout (ttyS1,
/// the stdout port) go.
pub(crate) struct Outputs {
    pub(crate) console: Box<dyn Write + Send>,
    pub(crate) stdout: Box<dyn Write + Send>,
}

/// How long the image steps of the set-up took, for the caller's timings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SetupSteps {
    /// Reading the kernel into guest memory (with the command line).
    pub(crate) kernel_load: std::time::Duration,
    /// Copying the initrd's parts into guest memory.
    pub(crate) initrd_load: std::time::Duration,
}

/// Everything between creating the VM and running it: loads the kernel,
/// initrd and boot structures, creates the devices and vCPUs, then
/// registers guest memory. The vCPUs are created and configured (CPUID,
/// MSRs, FPU, local APIC) on a second thread while this one copies the
/// kernel and initrd: neither needs the other, and under some KVMs the
/// CPUID call alone takes milliseconds.
pub(crate) fn set_up_guest(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    spec: &BootSpec,
    uarts: Outputs,
    console_ports: Option<Outputs>,
    backends: Backends,
) -> Result<(VmDevices, Vec<VcpuFd>, SetupSteps), VmmError> {
    let (images, vcpus) = std::thread::scope(|scope| {
        let vcpus = std::thread::Builder::new()
            .name("vcpu-setup".into())
            .spawn_scoped(scope, || create_vcpus(kvm, vm, spec.vcpus));
        let images = load_images(mem, spec);
        let vcpus = match vcpus {
            Ok(thread) => thread.join().unwrap_or(Err(VmmError::Host {
                what: "create the vCPUs",
                source: std::io::Error::other("the vCPU set-up thread panicked"),
            })),
            // No thread: the same work, one after the other.
            Err(_) => create_vcpus(kvm, vm, spec.vcpus),
        };
        (images, vcpus)
    });
    let (kernel, steps) = images?;
    let vcpu_fds = vcpus?;
    for (id, fd) in vcpu_fds.iter().enumerate() {
        vcpu::set_boot_registers(fd, id as u8, kernel.entry, kernel.protocol)?;
    }
    let devices = create_devices(vm, mem, spec, uarts, console_ports, backends)?;
    // Last, because of how long KVM takes here: see `map_guest_memory`.
    map_guest_memory(vm, mem)?;
    Ok((devices, vcpu_fds, steps))
}

/// The kernel, its command line, the initrd and the boot structures (MP
/// table, ACPI tables, zero page or PVH start info, page tables) in guest
/// memory.
fn load_images(
    mem: &GuestMemory,
    spec: &BootSpec,
) -> Result<(kernel::LoadedKernel, SetupSteps), VmmError> {
    let started = std::time::Instant::now();
    let kernel = kernel::load_kernel(mem, spec.kernel, spec.mem_size, spec.kernel_cached)?;
    kernel::load_cmdline(mem, spec.cmdline, kernel.image.cmdline_max)?;
    let kernel_loaded = std::time::Instant::now();
    let initrd = initrd::load_initrd(
        mem,
        spec.initrd,
        kernel.end,
        kernel.image.initrd_addr_max,
        spec.mem_size,
    )?;
    let steps = SetupSteps {
        kernel_load: kernel_loaded - started,
        initrd_load: kernel_loaded.elapsed(),
    };
    // The MP table stays for kernels without ACPI; one with ACPI reads
    // the MADT instead.
    mptable::setup_mptable(mem, spec.vcpus)?;
    let acpi = spec
        .virtio
        .acpi
        .then(|| {
            let slots: Vec<_> = spec.virtio.assigned()?.iter().map(|(s, _)| *s).collect();
            acpi::write_acpi_tables(mem, spec.vcpus, &slots).map_err(VmmError::from)
        })
        .transpose()?;
    match kernel.protocol {
        BootProtocol::Linux64 => kernel::configure_zero_page(
            mem,
            &kernel,
            spec.cmdline.len(),
            initrd,
            spec.mem_size,
            acpi.as_ref(),
        )?,
        BootProtocol::Pvh => kernel::configure_pvh(mem, initrd, spec.mem_size, acpi.as_ref())?,
    }
    vcpu::setup_boot_tables(mem, kernel.protocol)?;
    Ok((kernel, steps))
}

/// Creates `count` vCPUs and configures what does not depend on the
/// kernel (CPUID with the TSC-deadline timer, MSRs, FPU, local APIC).
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8) -> Result<Vec<VcpuFd>, VmmError> {
    let mut supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get the supported CPUID"))?;
    // KVM emulates the TSC-deadline timer but cannot know whether the VMM's
    // LAPIC model has it, so it leaves the bit to the VMM. Linux needs it to
    // run without a PIT (the split model has none).
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        vcpu::advertise_tsc_deadline(&mut supported_cpuid);
    }
    let mut vcpu_fds = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create a vCPU"))?;
        vcpu::configure_vcpu_state(&fd, id, count, &supported_cpuid)?;
        vcpu_fds.push(fd);
    }
    Ok(vcpu_fds)
}

pub(crate) fn create_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("set the identity map address"))?;
    Ok(vm)
}

/// Registers guest memory with KVM, one slot per region.
///
/// This is the last step before the vCPUs run, and that order is deliberate:
/// with the in-kernel irqchip, KVM frees the I/O bus replaced by each
/// in-kernel device (PIC, I/O APIC, PIT) after an SRCU grace period that is
/// not expedited, and a memory slot change waits for that grace period to
/// end (one to two timer ticks, 4-8 ms at HZ=250). Everything done before
/// it overlaps with that wait. (The split irqchip has no such wait.)
fn map_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by `mem`, which outlives the VM's use of it: every vCPU
        // thread is joined before `run` returns and drops `mem`.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

pub(crate) type ConsoleUart = SerialDevice<Box<dyn Write + Send>>;

/// The devices, and the UART that stdin feeds.
pub(crate) struct VmDevices {
    pub(crate) map: Arc<Devices>,
    console: Arc<Mutex<ConsoleUart>>,
    pub(crate) stdout: Arc<Mutex<ConsoleUart>>,
    /// The virtio-console's stdin port, when there is one.
    pub(crate) console_input: Option<ConsoleInput>,
    vm: Arc<VmFd>,
}

impl VmDevices {
    /// The interrupt state of the UARTs and their I/O APIC pins, for a
    /// guest that hangs (say, waiting for an interrupt that never came).
    pub(crate) fn describe_interrupts(&self) -> String {
        let pin = |irq: u32| -> String {
            let entry = match &self.map.ioapic {
                Some(ioapic) => lock(ioapic).redirection_entry(irq as usize),
                None => {
                    let mut chip = kvm_bindings::kvm_irqchip {
                        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
                        ..Default::default()
                    };
                    self.vm.get_irqchip(&mut chip).ok().map(|()| {
                        // SAFETY: for KVM_IRQCHIP_IOAPIC, KVM fills the
                        // `ioapic` member of the union.
                        unsafe { chip.chip.ioapic.redirtbl[irq as usize].bits }
                    })
                }
            };
            entry.map_or("unknown".into(), |e| format!("{e:#x}"))
        };
        format!(
            "ttyS0 {} (I/O APIC pin 4 {}); ttyS1 {} (pin 3 {})",
            lock(&self.console).describe(),
            pin(layout::SERIAL_CONSOLE_IRQ),
            lock(&self.stdout).describe(),
            pin(layout::SERIAL_STDOUT_IRQ)
        )
    }
}

/// The interrupt line of ISA IRQ `irq`: an irqfd for KVM's in-kernel
/// irqchip, or the matching pin of the VMM's I/O APIC (the MP table routes
/// ISA IRQ n to pin n).
fn irq_line(
    vm: &Arc<VmFd>,
    ioapic: Option<&Arc<Mutex<IoApic>>>,
    irq: u32,
) -> Result<IrqTrigger, VmmError> {
    if let Some(ioapic) = ioapic {
        return Ok(IrqTrigger::Pin(ioapic.clone(), irq as usize));
    }
    Ok(IrqTrigger::Line(vm.clone(), irq))
}

/// Creates the devices: the UARTs and the i8042 on the port bus; on the
/// MMIO bus the I/O APIC (split irqchip) and each device of the list in
/// its slot, one arm per [`DeviceSpec`] variant.
fn create_devices(
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    spec: &BootSpec,
    uarts: Outputs,
    console_ports: Option<Outputs>,
    backends: Backends,
) -> Result<VmDevices, VmmError> {
    let Outputs { console, stdout } = uarts;
    let ioapic = (spec.irqchip == IrqChip::Split).then(|| {
        // The I/O APIC's ID follows the vCPUs' APIC IDs, as in the MP table.
        let sink = Box::new(KvmMsiSink(vm.clone()));
        Arc::new(Mutex::new(IoApic::new(spec.vcpus, sink)))
    });
    let irq4 = irq_line(vm, ioapic.as_ref(), layout::SERIAL_CONSOLE_IRQ)?;
    let irq3 = irq_line(vm, ioapic.as_ref(), layout::SERIAL_STDOUT_IRQ)?;
    // ttyS0 and ttyS2 share IRQ 4, so they share its line.
    let irq4_status = match &irq4 {
        IrqTrigger::Fd(fd) => {
            IrqTrigger::Fd(fd.try_clone().map_err(host_err("clone an event fd"))?)
        }
        IrqTrigger::Pin(ioapic, pin) => IrqTrigger::Pin(ioapic.clone(), *pin),
        IrqTrigger::Line(vm, irq) => IrqTrigger::Line(vm.clone(), *irq),
    };
    let console = Arc::new(Mutex::new(SerialDevice::new(irq4, console)));
    let stdout = Arc::new(Mutex::new(SerialDevice::new(irq3, stdout)));
    let status = Arc::new(Mutex::new(SerialDevice::new(
        irq4_status,
        StatusOutput::default(),
    )));
    let mut pio = Bus::new();
    let uart_len = u64::from(layout::SERIAL_PORT_LEN);
    pio.insert(
        console.clone(),
        layout::SERIAL_CONSOLE_PORT.into(),
        uart_len,
    )?;
    pio.insert(stdout.clone(), layout::SERIAL_STDOUT_PORT.into(), uart_len)?;
    pio.insert(status, layout::SERIAL_STATUS_PORT.into(), uart_len)?;
    pio.insert(
        Arc::new(Mutex::new(I8042)),
        layout::I8042_PORT.into(),
        layout::I8042_PORT_LEN.into(),
    )?;
    // Port 0x80 (POST codes, used as an I/O delay) needs no device: the bus
    // ignores writes to empty ports.
    let mut mmio = Bus::new();
    if let Some(ioapic) = &ioapic {
        mmio.insert(
            ioapic.clone(),
            layout::IO_APIC_DEFAULT_PHYS_BASE.into(),
            layout::IO_APIC_MMIO_LEN,
        )?;
    }
    // SAFETY: these calls only return the caller's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut virtio = VirtioBus {
        vm,
        mem,
        ioapic: ioapic.as_ref(),
        mmio: &mut mmio,
    };
    let mut console_ports = console_ports;
    let Backends {
        mut disks,
        net: mut net_backend,
    } = backends;
    let mut console_input = None;
    for (slot, device) in spec.virtio.assigned()? {
        match device {
            DeviceSpec::Console => {
                // The outputs have one console: a second one in the list
                // gets none, and its slot stays empty.
                let Some(outputs) = console_ports.take() else {
                    continue;
                };
                let console = Console::new(ConsoleOutputs {
                    stdout: outputs.stdout,
                    stderr: outputs.console,
                });
                console_input = Some(console.input());
                virtio.register(slot, console)?;
            }
            DeviceSpec::Share(share) => {
                let policy = p9::policy::Policy {
                    read_only: share.read_only,
                    uid,
                    gid,
                    guest_uid: share.guest_uid,
                    guest_gid: share.guest_gid,
                };
                let device = p9::NineP::new(
                    &share.source,
                    &share.tag,
                    policy,
                    spec.filters.map(|f| f.fs.clone()),
                )?;
                virtio.register(slot, device)?;
            }
            DeviceSpec::Net(spec_net) => {
                // `run` checked there is one interface and its backend.
                let backend = net_backend.take().ok_or(VmmError::NetBackendMissing)?;
                let filter = spec.filters.map(|f| f.net.clone());
                let device = Net::new(spec_net.clone(), backend, filter)?;
                virtio.register(slot, device)?;
            }
            DeviceSpec::Block(_) => {
                // `Backends::open` opened one per Block spec, in order.
                let device = disks.pop_front().ok_or(VmmError::DiskNotOpened)?;
                virtio.register(slot, device)?;
            }
        }
    }
    Ok(VmDevices {
        map: Arc::new(Devices { pio, mmio, ioapic }),
        console,
        stdout,
        console_input,
        vm: vm.clone(),
    })
}

/// The virtio-mmio side of the MMIO bus while the devices are created.
struct VirtioBus<'a> {
    vm: &'a Arc<VmFd>,
    mem: &'a GuestMemory,
    ioapic: Option<&'a Arc<Mutex<IoApic>>>,
    mmio: &'a mut Bus,
}

impl VirtioBus<'_> {
    /// The one call that registers a virtio device: its interrupt line on
    /// the slot's GSI, its virtio-mmio transport, and the transport on the
    /// bus at the slot's window.
    fn register<D>(&mut self, slot: layout::VirtioMmioSlot, device: D) -> Result<(), VmmError>
    where
        D: VirtioDevice + Send + 'static,
    {
        let line = Arc::new(irq_line(self.vm, self.ioapic, slot.gsi)?);
        let transport = MmioTransport::new(device, self.mem.clone(), line)?;
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), slot.addr, slot.len)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockSpec, NetSpec};

    #[test]
    fn the_filters_are_given_every_disk_and_the_socket_a_device_uses() {
        let (ro, rw) = (
            tempfile::NamedTempFile::new().unwrap(),
            tempfile::NamedTempFile::new().unwrap(),
        );
        for file in [&ro, &rw] {
            file.as_file().set_len(4096).unwrap();
        }
        let disk = |file: &tempfile::NamedTempFile, read_only| {
            DeviceSpec::Block(BlockSpec {
                path: file.path().to_owned(),
                read_only,
            })
        };
        let net = DeviceSpec::Net(NetSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        });
        let socket = || OwnedFd::from(std::os::unix::net::UnixStream::pair().unwrap().0);
        let options = |devices| VirtioOptions {
            devices,
            acpi: false,
        };
        let virtio = options(vec![
            DeviceSpec::Console,
            disk(&ro, true),
            net,
            disk(&rw, false),
        ]);
        let backends = Backends::open(&virtio, Some(socket())).unwrap();
        let fds = backends.descriptors();
        let disks: Vec<_> = backends.disks.iter().map(|d| d.as_raw_fd()).collect();
        assert_eq!(fds.disks, [(disks[0], false), (disks[1], true)]);
        assert_eq!(fds.net_socket, backends.net.as_ref().map(|s| s.as_raw_fd()));
        assert!(fds.net_socket.is_some());
        // A socket no device uses is not the filters' (it is closed).
        let backends = Backends::open(&options(vec![disk(&ro, true)]), Some(socket())).unwrap();
        assert_eq!(backends.descriptors().net_socket, None);
    }
}
