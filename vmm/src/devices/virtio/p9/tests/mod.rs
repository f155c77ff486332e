//! The 9p device's request handling against a real directory, with a
//! minimal 9P2000.L client: a session, confinement, `--bind-ro`, hostile
//! requests, and the whole session on a thread confined as the worker
//! confines itself. What a guest cannot do to the host beyond that is in
//! [`host`].

mod host;

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::confine::Confinement;
use super::*;
use crate::devices::virtio::test_util::XorShift;
use crate::seccomp::{self, ThreadKind};

const RW: Policy = Policy {
    read_only: false,
    uid: 0,
    gid: 0,
    guest_uid: 0,
    guest_gid: 0,
};

use policy::{t, RLERROR};

/// A request builder.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn s(self, text: &str) -> Self {
        let mut m = self.u16(text.len() as u16);
        m.0.extend(text.as_bytes());
        m
    }
    fn bytes(mut self, data: &[u8]) -> Self {
        self.0.extend(data);
        self
    }
}

/// The T-message of `kind` with `body`, tag 1.
fn request(kind: u8, body: Msg) -> Vec<u8> {
    let mut out = ((7 + body.0.len()) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend(1u16.to_le_bytes());
    out.extend(body.0);
    out
}

/// One share being served, and a client to it.
struct Session {
    handler: Handler,
}

impl Session {
    fn new(root: &Path, policy: Policy) -> Session {
        Session::start(Handler::new(root, policy).unwrap())
    }

    /// A version and an attach (fid 0) to `handler`'s share.
    fn start(handler: Handler) -> Session {
        let mut s = Session { handler };
        let reply = s.call(t::VERSION, Msg::default().u32(8192).s("9P2000.L"));
        assert_eq!(reply[4], t::VERSION + 1);
        assert_eq!(s.attach(0), 0);
        s
    }

    /// Attaches `fid` to the share's root.
    fn attach(&mut self, fid: u32) -> u32 {
        self.errno(
            t::ATTACH,
            Msg::default().u32(fid).u32(!0).s("root").s("").u32(0),
        )
    }

    /// The whole answer to a request, or empty for none.
    fn raw(&mut self, msg: &[u8]) -> Vec<u8> {
        self.handler
            .handle(msg)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn call(&mut self, kind: u8, body: Msg) -> Vec<u8> {
        self.raw(&request(kind, body))
    }

    /// The errno of an Rlerror answer, 0 for any other answer.
    fn errno(&mut self, kind: u8, body: Msg) -> u32 {
        let reply = self.call(kind, body);
        if reply[4] == RLERROR {
            u32::from_le_bytes(reply[7..11].try_into().unwrap())
        } else {
            assert_eq!(reply[4], kind + 1, "{reply:?}");
            0
        }
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> u32 {
        let mut body = Msg::default().u32(fid).u32(newfid).u16(names.len() as u16);
        for name in names {
            body = body.s(name);
        }
        self.errno(t::WALK, body)
    }

    fn create(&mut self, dir: u32, name: &str, flags: u32) -> u32 {
        self.create_mode(dir, name, flags, 0o644)
    }

    fn create_mode(&mut self, dir: u32, name: &str, flags: u32, mode: u32) -> u32 {
        let body = Msg::default().u32(dir).s(name).u32(flags).u32(mode).u32(0);
        self.errno(t::LCREATE, body)
    }

    fn clunk(&mut self, fid: u32) -> u32 {
        self.errno(t::CLUNK, Msg::default().u32(fid))
    }

    /// Tsetattr of `valid` (mode 0x1, uid 0x2, gid 0x4) on `fid`.
    fn setattr(&mut self, fid: u32, valid: u32, mode: u32, uid: u32, gid: u32) -> u32 {
        let body = Msg::default()
            .u32(fid)
            .u32(valid)
            .u32(mode)
            .u32(uid)
            .u32(gid)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0);
        self.errno(t::SETATTR, body)
    }

    fn write(&mut self, fid: u32, data: &[u8]) -> u32 {
        let body = Msg::default()
            .u32(fid)
            .u64(0)
            .u32(data.len() as u32)
            .bytes(data);
        self.errno(t::WRITE, body)
    }

    fn read(&mut self, fid: u32) -> Vec<u8> {
        let reply = self.call(t::READ, Msg::default().u32(fid).u64(0).u32(4096));
        assert_eq!(reply[4], t::READ + 1, "{reply:?}");
        reply[11..].to_vec()
    }

    /// (uid, gid) the guest sees for `fid`.
    fn owner(&mut self, fid: u32) -> (u32, u32) {
        let reply = self.call(t::GETATTR, Msg::default().u32(fid).u64(!0));
        assert_eq!(reply[4], t::GETATTR + 1, "{reply:?}");
        // valid[8] qid[13] mode[4] uid[4] gid[4], after the header.
        let at = 7 + 8 + 13 + 4;
        let word = |at: usize| u32::from_le_bytes(reply[at..at + 4].try_into().unwrap());
        (word(at), word(at + 4))
    }
}

fn me() -> Policy {
    // SAFETY: these calls only return the caller's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Policy {
        read_only: false,
        uid,
        gid,
        guest_uid: 0,
        guest_gid: 0,
    }
}

/// A share `share/` inside a scratch directory that also holds `secret`,
/// outside the share, and `share/out`, a symlink to it.
fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    fs::create_dir(share.join("sub")).unwrap();
    fs::write(share.join("sub/hello"), b"hello from the host\n").unwrap();
    fs::write(dir.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("../secret", share.join("out")).unwrap();
    (dir, share)
}

/// Creates, writes and reads back a file, then reads the host's one; a
/// run of what a build step does.
fn session_round_trip(share: &Path, policy: Policy) {
    build_step(&mut Session::new(share, policy));
    check_artifact(share, policy);
}

/// The guest's side of [`session_round_trip`].
fn build_step(s: &mut Session) {
    assert_eq!(s.owner(0), (0, 0), "the invoking user's files are root's");
    assert_eq!(s.walk(0, 1, &["sub", "hello"]), 0);
    assert_eq!(s.errno(t::LOPEN, Msg::default().u32(1).u32(0)), 0);
    assert_eq!(s.read(1), b"hello from the host\n");
    assert_eq!(s.walk(0, 2, &[]), 0);
    let created = s.create(2, "artifact", libc::O_WRONLY as u32);
    assert_eq!(created, 0);
    assert_eq!(s.write(2, b"built\n"), 0);
    assert_eq!(s.errno(t::CLUNK, Msg::default().u32(2)), 0);
    assert_eq!(
        s.errno(t::MKDIR, Msg::default().u32(0).s("dir").u32(0o755).u32(0)),
        0
    );
    let rename = Msg::default().u32(0).s("artifact").u32(0).s("renamed");
    assert_eq!(s.errno(t::RENAMEAT, rename), 0);
    assert_eq!(s.walk(0, 3, &[]), 0);
    assert_eq!(
        s.errno(
            t::LOPEN,
            Msg::default().u32(3).u32(libc::O_DIRECTORY as u32)
        ),
        0
    );
    let listing = s.call(t::READDIR, Msg::default().u32(3).u64(0).u32(4096));
    assert_eq!(listing[4], t::READDIR + 1);
    assert_eq!(
        s.errno(
            t::UNLINKAT,
            Msg::default()
                .u32(0)
                .s("dir")
                .u32(libc::AT_REMOVEDIR as u32)
        ),
        0
    );
}

/// The host's side of [`session_round_trip`].
fn check_artifact(share: &Path, policy: Policy) {
    let host = share.join("renamed");
    assert_eq!(fs::read(&host).unwrap(), b"built\n");
    let meta = fs::metadata(&host).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (policy.uid, policy.gid));
    assert!(!share.join("dir").exists());
}

#[test]
fn a_build_step_reads_the_share_and_writes_an_artifact() {
    let (_dir, share) = scratch();
    session_round_trip(&share, me());
}

#[test]
fn the_guest_user_sees_the_invoking_users_files_as_its_own() {
    let (_dir, share) = scratch();
    let policy = Policy {
        guest_uid: 1000,
        guest_gid: 1001,
        ..me()
    };
    let mut s = Session::new(&share, policy);
    assert_eq!(s.owner(0), (1000, 1001));
    assert_eq!(s.walk(0, 1, &[]), 0);
    assert_eq!(s.create(1, "made", libc::O_WRONLY as u32), 0);
    assert_eq!(s.owner(1), (1000, 1001));
    // On the host, the file is the invoking user's.
    let meta = fs::metadata(share.join("made")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (policy.uid, policy.gid));
}

/// Runs `body` with a handler of `share` on a thread confined as the
/// worker confines itself (with the file-system filter when `filtered`),
/// and returns what the confinement did.
fn confined<T: Send + 'static>(
    share: &Path,
    policy: Policy,
    filtered: bool,
    body: impl FnOnce(Handler, Confinement) -> T + Send + 'static,
) -> T {
    let handler = Handler::new(share, policy).unwrap();
    let filter = filtered.then(|| seccomp::filter(ThreadKind::Fs).unwrap());
    std::thread::spawn(move || {
        let how = handler.confine(filter.as_ref()).unwrap();
        body(handler, how)
    })
    .join()
    .unwrap()
}

#[test]
fn the_session_runs_on_a_thread_confined_as_the_worker() {
    // A call outside the filter's list ends this test process with 125
    // (SIGSYS); one Landlock refuses fails the round trip.
    let (_dir, share) = scratch();
    let policy = me();
    confined(&share, policy, true, move |handler, _| {
        let mut s = Session::start(handler);
        build_step(&mut s);
        // A rename across directories (Landlock's REFER right).
        assert_eq!(s.walk(0, 4, &["sub"]), 0);
        let across = Msg::default().u32(4).s("hello").u32(0).s("moved");
        assert_eq!(s.errno(t::RENAMEAT, across), 0);
    });
    check_artifact(&share, policy);
    assert!(share.join("moved").exists());
}

#[test]
fn nothing_outside_the_share_is_reachable() {
    let (dir, share) = scratch();
    let mut s = Session::new(&share, RW);
    assert_eq!(s.walk(0, 1, &[".."]), policy::EINVAL);
    assert_eq!(s.walk(0, 1, &["sub", ".."]), policy::EINVAL);
    assert_eq!(s.walk(0, 1, &["../secret"]), policy::EINVAL);
    assert_eq!(s.create(0, "../escaped", 0), policy::EINVAL);
    assert_eq!(s.create(0, "/tmp/escaped", 0), policy::EINVAL);
    // The symlink is walked to as itself; opening it never follows it.
    assert_eq!(s.walk(0, 2, &["out"]), 0);
    assert_eq!(
        s.errno(t::LOPEN, Msg::default().u32(2).u32(0)),
        libc::ELOOP as u32
    );
    assert_eq!(
        s.errno(
            t::LOPEN,
            Msg::default()
                .u32(2)
                .u32(libc::O_WRONLY as u32 | libc::O_TRUNC as u32)
        ),
        libc::ELOOP as u32
    );
    // Nor does walking through it: the walk stops at the link (one qid
    // of two, and no new fid).
    let through = Msg::default().u32(0).u32(3).u16(2).s("out").s("x");
    let reply = s.call(t::WALK, through);
    assert_eq!(
        (reply[4], &reply[7..9]),
        (t::WALK + 1, &1u16.to_le_bytes()[..])
    );
    assert_eq!(
        s.errno(t::LOPEN, Msg::default().u32(3).u32(0)),
        libc::EBADF as u32
    );
    // And the server makes no symlink the guest could aim outside.
    let symlink = Msg::default().u32(0).s("link").s("/etc").u32(0);
    assert_ne!(s.errno(t::SYMLINK, symlink), 0);
    assert_eq!(fs::read(dir.path().join("secret")).unwrap(), b"secret");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_read_only_share_refuses_writes_and_stays_unchanged() {
    let (_dir, share) = scratch();
    let mut s = Session::new(
        &share,
        Policy {
            read_only: true,
            ..me()
        },
    );
    assert_eq!(s.walk(0, 1, &["sub", "hello"]), 0);
    assert_eq!(
        s.errno(t::LOPEN, Msg::default().u32(1).u32(libc::O_RDWR as u32)),
        policy::EROFS
    );
    assert_eq!(s.errno(t::LOPEN, Msg::default().u32(1).u32(0)), 0);
    assert_eq!(s.read(1), b"hello from the host\n");
    assert_eq!(s.walk(0, 2, &[]), 0);
    assert_eq!(s.create(2, "new", libc::O_WRONLY as u32), policy::EROFS);
    assert_eq!(
        s.errno(t::UNLINKAT, Msg::default().u32(0).s("sub").u32(0)),
        policy::EROFS
    );
    assert_eq!(
        fs::read(share.join("sub/hello")).unwrap(),
        b"hello from the host\n"
    );
    assert!(!share.join("new").exists());
}

#[test]
fn garbage_requests_get_errors_and_never_escape() {
    let (dir, share) = scratch();
    let mut s = Session::new(&share, me());
    let mut rng = XorShift(0x5eed_9e37);
    let kinds = [
        t::WALK,
        t::LOPEN,
        t::LCREATE,
        t::MKDIR,
        t::RENAMEAT,
        t::UNLINKAT,
        t::READ,
        t::WRITE,
        t::READDIR,
        t::CLUNK,
        t::GETATTR,
        rng.next() as u8,
    ];
    for round in 0..20_000 {
        let len = rng.below(64) as usize;
        let mut msg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 7 {
            // Mostly well-framed, so the server looks at the body.
            if rng.below(4) != 0 {
                msg[..4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            msg[4] = kinds[rng.below(kinds.len() as u64) as usize];
            // Small fids, so some refer to the root or what was walked.
            for at in (7..len.min(15)).step_by(4) {
                if rng.below(2) == 0 && at + 4 <= len {
                    msg[at..at + 4].copy_from_slice(&(rng.below(4) as u32).to_le_bytes());
                }
            }
        }
        let reply = s.raw(&msg);
        if len < 7 {
            assert!(reply.is_empty(), "round {round}");
        }
    }
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "only the share and the secret: {names:?}");
    assert_eq!(fs::read(dir.path().join("secret")).unwrap(), b"secret");
}

#[test]
fn the_configuration_space_holds_the_tag() {
    let dir = tempfile::tempdir().unwrap();
    let device = NineP::new(dir.path(), "microrun0", RW, None).unwrap();
    let mut data = [0u8; 11];
    device.read_config(0, &mut data);
    assert_eq!(&data, b"\x09\x00microrun0");
    assert_eq!(device.device_type(), VIRTIO_ID_9P);
    assert_eq!(device.features(), VIRTIO_9P_F_MOUNT_TAG);
    assert!(NineP::new(dir.path(), "", RW, None).is_err());
    assert!(NineP::new(dir.path(), &"x".repeat(MAX_TAG_LEN + 1), RW, None).is_err());
}
