//! A share's 9p request handling (microrun's policy in front of the `p9`
//! server) on arbitrary requests: the input is cut into messages by their
//! own size fields and sent, after a version and an attach, to one server
//! of a scratch share. No panic, no answer larger than a message may be,
//! and nothing beside the share changes (the scratch directory holds the
//! share and one file outside it, which must keep its bytes).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::p9::policy::{t, Policy};
use vmm::devices::virtio::p9::Handler;

#[path = "scratch.rs"]
mod scratch;

/// The scratch directory: `share/` (served) and `outside` (not).
fn scratch() -> &'static Path {
    scratch::dir("p9", |dir| {
        std::fs::create_dir_all(dir.join("share/sub")).unwrap();
        std::fs::write(dir.join("share/sub/file"), b"inside").unwrap();
        std::fs::write(dir.join("outside"), b"outside").unwrap();
        std::os::unix::fs::symlink("../outside", dir.join("share/link")).unwrap();
    })
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(kind);
    m.extend(1u16.to_le_bytes());
    m.extend(body);
    m
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let policy = Policy {
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        uid: 0,
        gid: 0,
        guest_uid: 0,
        guest_gid: 0,
    };
    let mut handler = Handler::new(&dir.join("share"), policy).unwrap();
    let mut version = 8192u32.to_le_bytes().to_vec();
    version.extend(8u16.to_le_bytes());
    version.extend(b"9P2000.L");
    handler.handle(&message(t::VERSION, &version)[..]);
    let mut attach = vec![0u8; 4];
    attach.extend(u32::MAX.to_le_bytes());
    attach.extend([0, 0, 0, 0]);
    attach.extend(0u32.to_le_bytes());
    handler.handle(&message(t::ATTACH, &attach)[..]);
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 4 {
        let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let take = size.clamp(4, rest.len());
        if let Some(reply) = handler.handle(&rest[..take]) {
            assert!(
                reply.len() <= 64 * 1024 + 64,
                "answer of {} bytes",
                reply.len()
            );
        }
        rest = &rest[take..];
    }
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "share"],
        "something was made beside the share"
    );
    assert_eq!(std::fs::read(dir.join("outside")).unwrap(), b"outside");
});
