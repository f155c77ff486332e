//! The KVM probe: what kind of KVM this host offers ([`kvm_host`]), and
//! the advice a caller gets when `/dev/kvm` cannot be opened.

use std::path::Path;

use kvm_ioctls::Kvm;

use crate::VmmError;

/// What kind of KVM this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// Hardware virtualization.
    Hardware,
    /// KVM that emulates guest kernel code (e.g. `kvm_pvm`); the text says why.
    Emulated(String),
    /// No usable `/dev/kvm`; the text says why and what to do.
    Unavailable(String),
}

const KVM_DEVICE: &str = "/dev/kvm";

/// Probes `/dev/kvm` and the loaded KVM module.
pub fn kvm_host() -> KvmHost {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
    {
        return KvmHost::Unavailable(kvm_open_advice(
            e.raw_os_error().unwrap_or(0),
            &e.to_string(),
        ));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return KvmHost::Emulated(
            "KVM here is kvm_pvm, a software emulator (/sys/module/kvm_pvm exists): guest kernel code runs at about 1 MIPS".into(),
        );
    }
    KvmHost::Hardware
}

/// Opens `/dev/kvm` for [`crate::run`], with the same advice as
/// [`kvm_host`] when it cannot.
pub(crate) fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| VmmError::KvmUnavailable(kvm_open_advice(e.errno(), &e.to_string())))
}

fn kvm_open_advice(errno: i32, error: &str) -> String {
    match errno {
        libc::ENOENT => format!(
            "{KVM_DEVICE} does not exist: load kvm_intel or kvm_amd (with virtualization enabled), or use --engine qemu"
        ),
        libc::EACCES | libc::EPERM => format!(
            "no access to {KVM_DEVICE}: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again)"
        ),
        _ => format!("cannot open {KVM_DEVICE}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_advice_names_the_kvm_group() {
        assert!(kvm_open_advice(libc::EACCES, "").contains("kvm group"));
        assert!(kvm_open_advice(libc::ENOENT, "").contains("does not exist"));
    }
}
