//! vCPU setup (CPUID, MSRs, registers, FPU, LAPIC) and the run loop.
//!
//! The exit handling is [`handle_exit`], a plain function from a `VcpuExit`
//! and the device bus to an [`ExitAction`], so tests drive it with
//! synthetic exits and no KVM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::bus::lock;
use crate::devices::{BusEvent, Devices};
use crate::exit_counts::{ExitCounts, ExitReason};
use crate::kernel::BootProtocol;
use crate::layout;
use crate::memory::GuestMemory;
use crate::VmEnd;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("cannot {what} for vCPU {id}: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    #[error("KVM set only {set} of {wanted} boot MSRs on vCPU {id}")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// How many were accepted.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// Writing the boot GDT or page tables failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const GDT_CODE64: u64 = 0xa09b;
const GDT_CODE32: u64 = 0xc09b;
const GDT_DATA: u64 = 0xc093;
const GDT_TSS: u64 = 0x808b;
/// The G flag in [`gdt_entry`]'s `flags`: the limit counts 4 KiB pages.
const GDT_GRANULARITY: u64 = 0x8000;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const CPUID_KVM_SIGNATURE: u32 = 0x4000_0000;
const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn segment(entry: u64, index: u16) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    let (code, tss) = match protocol {
        BootProtocol::Linux64 => (GDT_CODE64, gdt_entry(GDT_TSS, 0, 0xfffff)),
        // The PVH ABI asks for a 32-bit TSS with base 0 and limit 0x67 (byte
        // granular): the size of a 32-bit TSS.
        BootProtocol::Pvh => (GDT_CODE32, gdt_entry(GDT_TSS & !GDT_GRANULARITY, 0, 0x67)),
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        tss,
    ]
}

/// Writes the boot GDT, an empty IDT and the identity-mapping page tables
/// (first GiB, 2 MiB pages) into guest memory.
pub fn setup_boot_tables(mem: &GuestMemory, protocol: BootProtocol) -> Result<(), VcpuError> {
    let err = |what| move |source| VcpuError::GuestMemory { what, source };
    for (i, entry) in boot_gdt(protocol).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + 8 * i as u64))
            .map_err(err("the boot GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(err("the boot IDT"))?;
    mem.write_obj(layout::PDPTE_START | 0x3, GuestAddress(layout::PML4_START))
        .map_err(err("the page tables"))?;
    mem.write_obj(layout::PDE_START | 0x3, GuestAddress(layout::PDPTE_START))
        .map_err(err("the page tables"))?;
    let mut pde = [0u8; 4096];
    for (i, slot) in pde.chunks_exact_mut(8).enumerate() {
        // Present, writable, 2 MiB page.
        slot.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pde, GuestAddress(layout::PDE_START))
        .map_err(err("the page tables"))
}

/// Adjusts KVM's supported CPUID for vCPU `id` of `count`: APIC IDs, the
/// logical processor count, the hypervisor bit, and the KVM leaves.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let mut has_kvm_leaf = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= CPUID_HYPERVISOR_BIT;
            }
            0xb | 0x1f => entry.edx = u32::from(id),
            CPUID_KVM_SIGNATURE => has_kvm_leaf = true,
            _ => {}
        }
    }
    if !has_kvm_leaf {
        let sig = b"KVMKVMKVM\0\0\0";
        let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
        // A full CpuId cannot grow; the guest then simply sees no KVM leaves.
        let _ = cpuid.push(kvm_cpuid_entry2 {
            function: CPUID_KVM_SIGNATURE,
            eax: CPUID_KVM_SIGNATURE + 1,
            ebx: word(0),
            ecx: word(4),
            edx: word(8),
            ..Default::default()
        });
    }
    cpuid
}

/// CPUID.1:ECX bit 24: the local APIC timer has TSC-deadline mode.
const CPUID_TSC_DEADLINE_BIT: u32 = 1 << 24;

/// Advertises the local APIC's TSC-deadline timer mode in leaf 1.
pub fn advertise_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 {
            entry.ecx |= CPUID_TSC_DEADLINE_BIT;
        }
    }
}

fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Configures vCPU `id` to enter the kernel at `entry` by `protocol`:
/// [`configure_vcpu_state`], then [`set_boot_registers`].
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported_cpuid: &CpuId,
    entry: GuestAddress,
    protocol: BootProtocol,
) -> Result<(), VcpuError> {
    configure_vcpu_state(vcpu, id, count, supported_cpuid)?;
    set_boot_registers(vcpu, id, entry, protocol)
}

/// What vCPU `id` needs whatever kernel it boots: CPUID, MSRs, FPU and
/// local APIC. (CPUID is the slow one, milliseconds under some KVMs, so
/// the builder does this while the kernel is being loaded.)
pub fn configure_vcpu_state(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported_cpuid: &CpuId,
) -> Result<(), VcpuError> {
    let kvm = |what| move |source| VcpuError::Kvm { id, what, source };
    vcpu.set_cpuid2(&vcpu_cpuid(supported_cpuid, id, count))
        .map_err(kvm("set CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
        id,
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    if set != entries.len() {
        return Err(VcpuError::Msrs {
            id,
            set,
            wanted: entries.len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU state"))?;

    let mut lapic = vcpu.get_lapic().map_err(kvm("get LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
        let value = (value & !0x700) | (mode << 8);
        for (dst, src) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set LAPIC"))
}

/// Points vCPU `id` at the kernel's `entry`, in the registers and mode
/// `protocol` enters it with.
pub fn set_boot_registers(
    vcpu: &VcpuFd,
    id: u8,
    entry: GuestAddress,
    protocol: BootProtocol,
) -> Result<(), VcpuError> {
    let kvm = |what| move |source| VcpuError::Kvm { id, what, source };
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = layout::PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(kvm("set registers"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("get special registers"))?;
    let gdt = boot_gdt(protocol);
    let (code, data, tss) = (segment(gdt[1], 1), segment(gdt[2], 2), segment(gdt[3], 3));
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set special registers"))
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// Timestamp a status-channel event, then run again.
    Event(String),
    /// The VM is over.
    End(VmEnd),
    /// The guest cannot go on; the text says which exit. The loop adds the
    /// guest RIP and instruction bytes.
    GuestFault(String),
}

/// Maps one vCPU exit to what the run loop should do, doing the device I/O.
pub fn handle_exit(exit: VcpuExit<'_>, devices: &Devices) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => bus_action(devices.pio.write(port.into(), data)),
        VcpuExit::IoIn(port, data) => {
            devices.pio.read(port.into(), data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => bus_action(devices.mmio.write(addr, data)),
        VcpuExit::MmioRead(addr, data) => {
            devices.mmio.read(addr, data);
            ExitAction::Continue
        }
        VcpuExit::IoapicEoi(vector) => {
            if let Some(ioapic) = &devices.ioapic {
                lock(ioapic).end_of_interrupt(vector);
            }
            ExitAction::Continue
        }
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::End(VmEnd::Shutdown),
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_RESET => {
            ExitAction::End(VmEnd::Reset)
        }
        VcpuExit::SystemEvent(..) => ExitAction::End(VmEnd::Shutdown),
        VcpuExit::InternalError => ExitAction::GuestFault("KVM_EXIT_INTERNAL_ERROR".into()),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::GuestFault(format!(
            "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
        )),
        other => ExitAction::GuestFault(format!("unexpected vCPU exit {other:?}")),
    }
}

fn bus_action(event: Option<BusEvent>) -> ExitAction {
    match event {
        Some(BusEvent::Status(code)) => ExitAction::End(VmEnd::Status(code)),
        Some(BusEvent::Reset) => ExitAction::End(VmEnd::Reset),
        Some(BusEvent::Event(name)) => ExitAction::Event(name),
        None => ExitAction::Continue,
    }
}

/// Messages from vCPU threads to the thread that waits for the VM's end.
/// The channel is bounded and these are dropped when it is full; the end
/// itself goes into [`VcpuContext::ended`].
#[derive(Debug)]
pub enum VcpuMessage {
    /// vCPU 0 is about to enter the guest for the first time.
    FirstRun(Instant),
    /// The status channel received `@name`.
    Event(String, Instant),
    /// [`VcpuContext::ended`] has been filled.
    Ended,
}

/// The end of the VM as the first vCPU to see it reported it.
#[derive(Debug)]
pub struct VcpuEnd {
    /// How the VM ended.
    pub end: VmEnd,
    /// When.
    pub at: Instant,
    /// Which vCPU saw it; its thread returns right after.
    pub vcpu: u8,
}

/// What a vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    /// The devices.
    pub devices: Arc<Devices>,
    /// Set when the VM is over; the thread returns at its next exit.
    pub stop: Arc<AtomicBool>,
    /// Where the thread reports events (never blocking: full means dropped).
    pub events: SyncSender<VcpuMessage>,
    /// Where the first vCPU to see the end puts it.
    pub ended: Arc<Mutex<Option<VcpuEnd>>>,
    /// Set before `stop` when the VM timed out: each vCPU then says (at
    /// debug level, `-v`) where the guest was, for a guest that hangs.
    pub timed_out: Arc<AtomicBool>,
    /// Guest memory, to show instruction bytes on a guest error.
    pub mem: GuestMemory,
    /// The run's exit counts, which the thread adds its own to when it
    /// stops.
    pub exits: Arc<Mutex<ExitCounts>>,
}

/// Walks the guest's 4-level page tables to find the physical address of `va`.
fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR_MASK;
    for shift in [39u32, 30, 21, 12] {
        let entry: u64 = mem
            .read_obj(GuestAddress(table + ((va >> shift) & 0x1ff) * 8))
            .ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let page_mask = (1u64 << shift) - 1;
        if shift == 12 || ((shift == 30 || shift == 21) && entry & 0x80 != 0) {
            return Some((entry & ADDR_MASK & !page_mask) | (va & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

fn describe_guest_fault(vcpu: &mut VcpuFd, mem: &GuestMemory, what: &str, id: u8) -> String {
    let mut what = what.to_string();
    if what == "KVM_EXIT_INTERNAL_ERROR" {
        // SAFETY: after an exit of reason KVM_EXIT_INTERNAL_ERROR, `internal`
        // is the union member KVM filled in.
        let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
        what = format!("{what} (suberror {suberror}: 1 = emulation failure)");
    }
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return format!("vCPU {id}: {what}; registers unavailable");
    };
    let rip = regs.rip;
    let phys = if sregs.cr0 & X86_CR0_PG != 0 {
        translate(mem, sregs.cr3, rip)
    } else {
        Some(sregs.cs.base.wrapping_add(rip))
    };
    let bytes = phys.and_then(|p| {
        let mut buf = [0u8; 16];
        mem.read_slice(&mut buf, GuestAddress(p)).ok().map(|_| buf)
    });
    let bytes = match bytes {
        Some(b) => b
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => "unreadable".into(),
    };
    format!("vCPU {id}: {what} at RIP {rip:#x}; instruction bytes: {bytes}")
}

/// Runs vCPU `id` until the VM ends or `ctx.stop` is set (the thread is
/// then kicked out of `KVM_RUN` with a signal).
pub fn run_vcpu(mut vcpu: VcpuFd, id: u8, ctx: VcpuContext) {
    let mut exits = ExitCounts::default();
    run_until_end(&mut vcpu, id, &ctx, &mut exits);
    lock(&ctx.exits).add(&exits);
    if ctx.timed_out.load(Ordering::Acquire) {
        log::debug!("at the timeout, {}", describe_stopped_vcpu(&vcpu, id));
    }
}

fn run_until_end(vcpu: &mut VcpuFd, id: u8, ctx: &VcpuContext, exits: &mut ExitCounts) {
    if id == 0 {
        let _ = ctx.events.try_send(VcpuMessage::FirstRun(Instant::now()));
    }
    while !ctx.stop.load(Ordering::Acquire) {
        let action = match vcpu.run() {
            Ok(exit) => {
                exits.record_exit(&exit);
                handle_exit(exit, &ctx.devices)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exits.record(ExitReason::Interrupted, 0);
                ExitAction::Continue
            }
            Err(e) => ExitAction::End(VmEnd::GuestError(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        let end = match action {
            ExitAction::Continue => continue,
            ExitAction::Event(name) => {
                let _ = ctx
                    .events
                    .try_send(VcpuMessage::Event(name, Instant::now()));
                continue;
            }
            ExitAction::End(end) => end,
            ExitAction::GuestFault(what) => {
                VmEnd::GuestError(describe_guest_fault(vcpu, &ctx.mem, &what, id))
            }
        };
        let at = Instant::now();
        lock(&ctx.ended).get_or_insert(VcpuEnd { end, at, vcpu: id });
        let _ = ctx.events.try_send(VcpuMessage::Ended);
        return;
    }
}

/// Where a stopped vCPU was: its RIP, whether it took interrupts, and the
/// vectors its local APIC holds pending (IRR) and in service (ISR).
fn describe_stopped_vcpu(vcpu: &VcpuFd, id: u8) -> String {
    const RFLAGS_IF: u64 = 1 << 9;
    let mut out = format!("vCPU {id}:");
    if let Ok(regs) = vcpu.get_regs() {
        out.push_str(&format!(
            " RIP {:#x}, interrupts {}",
            regs.rip,
            if regs.rflags & RFLAGS_IF != 0 {
                "on"
            } else {
                "off"
            }
        ));
    }
    if let Ok(mp) = vcpu.get_mp_state() {
        out.push_str(&format!(", mp_state {}", mp.mp_state));
    }
    if let Ok(lapic) = vcpu.get_lapic() {
        let reg = |offset: usize| {
            let b = &lapic.regs[offset..offset + 4];
            u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
        };
        let vectors = |base: usize| {
            (0..8)
                .flat_map(|i| {
                    let word = reg(base + 0x10 * i);
                    (0..32)
                        .filter(move |bit| word & (1 << bit) != 0)
                        .map(move |bit| i * 32 + bit)
                })
                .map(|v| format!("{v:#x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            ", LAPIC TPR {:#x}, IRR [{}], ISR [{}]",
            reg(0x80),
            vectors(0x200),
            vectors(0x100)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::i8042::I8042;
    use crate::devices::serial::{IrqTrigger, SerialDevice, StatusOutput};
    use crate::devices::{Bus, BusDevice};
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    fn bus() -> Devices {
        let mut pio = Bus::new();
        let irq = IrqTrigger::Fd(EventFd::new(0).unwrap());
        let status = SerialDevice::new(irq, StatusOutput::default());
        pio.insert(
            Arc::new(Mutex::new(status)),
            layout::SERIAL_STATUS_PORT.into(),
            8,
        )
        .unwrap();
        pio.insert(Arc::new(Mutex::new(I8042)), layout::I8042_PORT.into(), 5)
            .unwrap();
        Devices {
            pio,
            mmio: Bus::new(),
            ioapic: None,
        }
    }

    #[test]
    fn status_line_ends_the_vm() {
        let bus = bus();
        let port = layout::SERIAL_STATUS_PORT;
        assert_eq!(
            handle_exit(VcpuExit::IoOut(port, b"@"), &bus),
            ExitAction::Continue
        );
        for b in b"init" {
            handle_exit(VcpuExit::IoOut(port, &[*b]), &bus);
        }
        assert_eq!(
            handle_exit(VcpuExit::IoOut(port, b"\n"), &bus),
            ExitAction::Event("init".into())
        );
        handle_exit(VcpuExit::IoOut(port, b"7"), &bus);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(port, b"\n"), &bus),
            ExitAction::End(VmEnd::Status(7))
        );
    }

    #[test]
    fn reset_shutdown_and_errors() {
        let bus = bus();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), &bus),
            ExitAction::End(VmEnd::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[1]), &bus),
            ExitAction::Continue
        );
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x1234, &mut data), &bus),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &bus),
            ExitAction::End(VmEnd::Shutdown)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &bus),
            ExitAction::GuestFault(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), &bus),
            ExitAction::GuestFault(m) if m.contains("0x7")
        ));
    }

    #[test]
    fn mmio_and_eoi_exits_reach_the_ioapic() {
        use crate::devices::ioapic::testing::{write_reg, Recorder};
        use crate::devices::ioapic::IoApic;

        let rec = Recorder::default();
        let ioapic = Arc::new(Mutex::new(IoApic::new(1, Box::new(rec.clone()))));
        let base = u64::from(layout::IO_APIC_DEFAULT_PHYS_BASE);
        let mut mmio = Bus::new();
        mmio.insert(ioapic.clone(), base, layout::IO_APIC_MMIO_LEN)
            .unwrap();
        let devices = Devices {
            pio: Bus::new(),
            mmio,
            ioapic: Some(ioapic.clone()),
        };
        // The guest programs pin 4 level-triggered, vector 0x30, by MMIO exits.
        for (offset, value) in [(0x00u64, 0x18u32), (0x10, 0x30 | (1 << 15))] {
            let action = handle_exit(
                VcpuExit::MmioWrite(base + offset, &value.to_le_bytes()),
                &devices,
            );
            assert_eq!(action, ExitAction::Continue);
        }
        let mut data = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(base + 0x10, &mut data), &devices);
        assert_eq!(u32::from_le_bytes(data), 0x30 | (1 << 15));
        // A UART wired to pin 4 interrupts (enabling THRE raises it at
        // once); the pin then waits for the EOI.
        let mut uart = SerialDevice::new(
            IrqTrigger::Pin(ioapic.clone(), 4),
            Box::new(std::io::sink()) as Box<dyn std::io::Write + Send>,
        );
        let mut iir = [0u8];
        uart.write(1, &[0x02]); // IER: transmitter empty
        uart.write(0, b"x");
        uart.read(2, &mut iir); // the driver acknowledges
        uart.write(0, b"y");
        assert_eq!(rec.sent.lock().unwrap().len(), 1);
        handle_exit(VcpuExit::IoapicEoi(0x30), &devices);
        uart.read(2, &mut iir);
        uart.write(0, b"z");
        assert_eq!(rec.sent.lock().unwrap().len(), 2);
        // MMIO outside any device reads as all ones.
        handle_exit(VcpuExit::MmioRead(0xfed0_0000, &mut data), &devices);
        assert_eq!(data, [0xff; 4]);
        // Writes through the window helper land in the same registers.
        write_reg(&mut *lock(&ioapic), 0, 0x18, 0x10000);
        assert_eq!(lock(&ioapic).redirection_entry(4), Some(0x10000));
    }

    #[test]
    fn tsc_deadline_bit_goes_into_leaf_1_only() {
        let entries = [1u32, 6].map(|function| kvm_cpuid_entry2 {
            function,
            ecx: 0x8000_0001,
            ..Default::default()
        });
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        advertise_tsc_deadline(&mut cpuid);
        let ecx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.ecx).collect();
        assert_eq!(ecx, [0x8100_0001, 0x8000_0001]);
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(gdt_entry(GDT_CODE64, 0, 0xfffff), 1);
        assert_eq!(
            (code.l, code.db, code.g, code.present, code.s),
            (1, 0, 1, 1, 1)
        );
        assert_eq!(
            (code.limit, code.base, code.selector, code.type_),
            (0xffff_ffff, 0, 8, 0xb)
        );
        let data = segment(gdt_entry(GDT_DATA, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
    }

    #[test]
    fn pvh_gdt_matches_the_pvh_abi() {
        let gdt = boot_gdt(BootProtocol::Pvh);
        let code = segment(gdt[1], 1);
        assert_eq!(
            (code.l, code.db, code.base, code.limit, code.type_),
            (0, 1, 0, 0xffff_ffff, 0xb)
        );
        let data = segment(gdt[2], 2);
        assert_eq!((data.db, data.base, data.limit), (1, 0, 0xffff_ffff));
        // A busy 32-bit TSS, base 0, limit 0x67.
        let tss = segment(gdt[3], 3);
        assert_eq!(
            (tss.type_, tss.s, tss.present, tss.base, tss.limit, tss.g),
            (0xb, 0, 1, 0, 0x67, 0)
        );
    }
}
