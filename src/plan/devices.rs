//! The virtio devices a run asks for, each with the record guest-init
//! needs to use it: the one place a request becomes devices.

use std::path::Path;

use vmm::{BlockSpec, DeviceKind, DeviceSpec, NetSpec, SharedDir};

use crate::runconfig::{NetRecord, RootDisk, RunConfig, ShareMount};
use crate::spec::Request;
use crate::user::Ids;

/// One device the run asks for, and what tells guest-init to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The device, as the VMM builds it (QEMU's arguments are made from it
    /// too).
    pub spec: DeviceSpec,
    /// guest-init's side of it.
    pub record: Record,
}

/// What guest-init is told about a device in the run configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `ports=virtio`: the program's streams go over the console's ports.
    Ports,
    /// `mount=TAG rw|ro DEST`: mount the share.
    Mount(ShareMount),
    /// `root=erofs /dev/vda BYTES`: switch to the disk root (the overlay's
    /// size is set once the memory is known).
    Root(RootDisk),
    /// `net=ADDR/PREFIX GATEWAY MTU`: configure the interface.
    Net(NetRecord),
}

/// The guest's node of the root disk: the only virtio-blk disk.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// The devices `request` asks for, in the VM's order: the console (when
/// `console`: guest-init is there to open its ports and `MICRORUN_VIRTIO`
/// is not `off`), the root disk (when `disk`: the rootfs's EROFS image,
/// read-only), then one share per `--bind`/`--bind-ro`, then the network
/// interface with `--net`;
/// `owner`: the guest's ids the shares show the invoking user's files as
/// owned by (the kvm engine's server).
pub fn wanted(request: &Request, console: bool, disk: Option<&Path>, owner: Ids) -> Vec<Wanted> {
    let console = console.then_some(Wanted {
        spec: DeviceSpec::Console,
        record: Record::Ports,
    });
    let disk = disk.map(|image| Wanted {
        spec: DeviceSpec::Block(BlockSpec {
            path: image.to_path_buf(),
            read_only: true,
        }),
        record: Record::Root(RootDisk {
            device: ROOT_DEVICE.to_string(),
            tmpfs_bytes: 0,
        }),
    });
    let shares = request.binds.iter().enumerate().map(|(index, bind)| {
        let tag = share_tag(index);
        Wanted {
            spec: DeviceSpec::Share(SharedDir {
                source: bind.source.clone(),
                tag: tag.clone(),
                read_only: bind.read_only,
                guest_uid: owner.uid,
                guest_gid: owner.gid,
            }),
            record: Record::Mount(ShareMount {
                tag,
                dest: bind.dest.clone(),
                read_only: bind.read_only,
            }),
        }
    });
    let net = request.net.as_ref().map(|_| Wanted {
        spec: DeviceSpec::Net(NetSpec {
            mac: crate::net::GUEST_MAC,
            mtu: crate::net::MTU,
        }),
        record: Record::Net(NetRecord {
            address: crate::net::GUEST_ADDR,
            prefix: crate::net::GUEST_PREFIX,
            gateway: crate::net::GATEWAY,
            mtu: crate::net::MTU,
        }),
    });
    console
        .into_iter()
        .chain(disk)
        .chain(shares)
        .chain(net)
        .collect()
}

/// The kinds of `wanted`, one per device, in order.
pub fn kinds(wanted: &[Wanted]) -> Vec<DeviceKind> {
    wanted.iter().map(|w| w.spec.kind()).collect()
}

/// Tells guest-init, in `config`, about a device it gets.
pub fn record(config: &mut RunConfig, record: Record) {
    match record {
        Record::Ports => config.virtio_ports = true,
        Record::Mount(mount) => config.mounts.push(mount),
        Record::Root(root) => config.root = Some(root),
        Record::Net(net) => config.net = Some(net),
    }
}

/// The 9p mount tag of the `index`th share, as guest-init mounts it.
fn share_tag(index: usize) -> String {
    format!("microrun{index}")
}
