//! The kernel command line, built once in the plan as parts and written out
//! only when an engine boots it: the virtio-mmio devices first (from the
//! slot allocator, as the VM's devices are placed), then microrun's own
//! arguments, then the user's `--cmdline`, last.

use std::fmt;

use crate::runconfig::INIT_PATH;

/// The arguments every boot gets besides the reboot method, each for a
/// reason (see kernels/README.md): the console on ttyS0; a reset (not a
/// reboot loop or a hang) when the guest panics; exactly the three UARTs;
/// no probing for the i8042's mouse port, multiplexer or PnP entry; no
/// BSD (legacy) pseudo-terminals, which a kernel built with them would
/// register 256 pairs of at boot.
/// (Arguments a kernel does not know are handed to init, so nothing
/// kernel-specific goes here.)
const CONSOLE: &str = "console=ttyS0";
const BASE: &str =
    "panic=-1 8250.nr_uarts=3 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd pty.legacy_count=0";

/// How the guest's `reboot` (and a panic, with `panic=-1`) ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reboot {
    /// `reboot=k`: through the i8042's reset line, which microrun's VMM
    /// and QEMU's `pc` machine have.
    #[default]
    Keyboard,
    /// `reboot=t`: a triple fault, for a machine without a keyboard
    /// controller to reset through (QEMU's `microvm`, where `reboot=k`
    /// would boot the kernel again).
    TripleFault,
}

/// The kernel command line of one run, in parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelCmdline {
    /// `virtio_mmio.device=` arguments naming the devices, from the slot
    /// allocator; empty when the kernel finds them another way (or the
    /// machine names them itself, as QEMU's `microvm` does).
    pub devices: Vec<String>,
    /// The reboot method.
    pub reboot: Reboot,
    /// `quiet loglevel=1` (unless `-v`): panics (KERN_EMERG) still show,
    /// the boot chatter that would mix into the program's stderr does not.
    pub quiet: bool,
    /// Start guest-init (`rdinit=` and `init=`), unless `--no-init`.
    pub guest_init: bool,
    /// `pci=off`: the kernel may have PCI but the machine has no PCI
    /// device (the kvm engine's VMM has no PCI bus), so it need not probe.
    pub pci_off: bool,
    /// The user's `--cmdline`, trimmed; last, so that it can override any
    /// of the above.
    pub user: Option<String>,
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Before anything else: a `--` in the user's arguments would hand
        // what follows it to init.
        for device in &self.devices {
            write!(f, "{device} ")?;
        }
        let reboot = match self.reboot {
            Reboot::Keyboard => "k",
            Reboot::TripleFault => "t",
        };
        write!(f, "{CONSOLE} reboot={reboot} {BASE}")?;
        if self.pci_off {
            f.write_str(" pci=off")?;
        }
        if self.quiet {
            f.write_str(" quiet loglevel=1")?;
        }
        if self.guest_init {
            // init= too: with it, a kernel that cannot start guest-init
            // (an initrd unpacked only in part) panics, which ends the VM,
            // instead of falling back to the rootfs's /sbin/init or
            // /bin/sh, which would wait on the console for ever.
            write!(f, " rdinit={INIT_PATH} init={INIT_PATH}")?;
        }
        if let Some(user) = &self.user {
            write!(f, " {user}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_come_in_their_order_with_the_users_last() {
        let mut cmdline = KernelCmdline {
            devices: vec!["virtio_mmio.device=4K@0xd0000000:5".into()],
            reboot: Reboot::Keyboard,
            quiet: true,
            guest_init: true,
            pci_off: false,
            user: Some("foo=1 -- x".into()),
        };
        assert_eq!(
            cmdline.to_string(),
            "virtio_mmio.device=4K@0xd0000000:5 console=ttyS0 reboot=k panic=-1 \
             8250.nr_uarts=3 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
             pty.legacy_count=0 quiet loglevel=1 rdinit=/.microrun/init init=/.microrun/init foo=1 -- x"
        );
        cmdline.pci_off = true;
        assert!(cmdline
            .to_string()
            .contains("pty.legacy_count=0 pci=off quiet"));
        cmdline.pci_off = false;
        cmdline.devices.clear();
        cmdline.reboot = Reboot::TripleFault;
        cmdline.quiet = false;
        cmdline.guest_init = false;
        cmdline.user = None;
        assert_eq!(
            cmdline.to_string(),
            "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=3 i8042.noaux i8042.nomux \
             i8042.nopnp i8042.dumbkbd pty.legacy_count=0"
        );
    }
}
