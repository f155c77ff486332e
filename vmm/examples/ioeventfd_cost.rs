//! What registering a KVM ioeventfd per virtqueue would add to a VM's
//! set-up (issue 13's question: QueueNotify as a plain MMIO exit, or an
//! ioeventfd per queue as Firecracker does). For each of ROUNDS fresh VMs
//! (split irqchip, as microrun's default), times registering QUEUES
//! ioeventfds on the console's QueueNotify address, then a memory slot
//! change (the step that waits for KVM's SRCU grace periods).
//! `ioeventfd_cost [QUEUES] [ROUNDS]` prints the median of each.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, Kvm};
use vmm_sys_util::eventfd::EventFd;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let queues: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let kvm = Kvm::new().expect("open /dev/kvm");
    let notify = vmm::layout::VIRTIO_MMIO_SLOTS[0].addr + 0x50;
    let mem = vmm::memory::create_guest_memory(64 << 20).expect("guest memory");
    let (mut register, mut slot, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let with_eventfds = round % 2 == 0;
        let vm = kvm.create_vm().expect("create a VM");
        vmm::irqchip::create(&kvm, &vm, vmm::IrqChip::Split).expect("split irqchip");
        let fds: Vec<EventFd> = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let t0 = Instant::now();
        if with_eventfds {
            // One per queue, told apart by the value written (the queue's
            // index), as Firecracker registers them.
            for (queue, fd) in fds.iter().enumerate() {
                vm.register_ioevent(fd, &IoEventAddress::Mmio(notify), queue as u32)
                    .expect("register an ioeventfd");
            }
        }
        let t1 = Instant::now();
        // As vmm's own (private: the mapping must outlive the VM, which a
        // safe public function could not promise).
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        for (i, region) in mem.iter().enumerate() {
            let desc = kvm_userspace_memory_region {
                slot: i as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes
            // that outlives the VM (dropped at the end of this iteration).
            unsafe { vm.set_user_memory_region(desc) }.expect("map memory");
        }
        let t2 = Instant::now();
        if with_eventfds {
            register.push(t1 - t0);
            slot.push(t2 - t1);
        } else {
            baseline.push(t2 - t1);
        }
    }
    println!(
        "{queues} ioeventfds: register median {:?}; memory slot after them {:?}, without them {:?} ({rounds} VMs each)",
        median(register),
        median(slot),
        median(baseline)
    );
}
