//! What a guest cannot do to the host through a share: leave a setuid or
//! setgid file, use another user's files (when microrun runs as root),
//! redirect a share nested in another, take the process's descriptors, or
//! reach anything outside the share even past the server's own checks.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// The mode bits of the host file `path`, file type excluded.
fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn nothing_the_guest_does_leaves_a_setuid_or_setgid_file() {
    let (_dir, share) = scratch();
    let policy = me();
    let mut s = Session::new(&share, policy);
    assert_eq!(s.walk(0, 1, &[]), 0);
    assert_eq!(s.create_mode(1, "tool", libc::O_WRONLY as u32, 0o4755), 0);
    let dir = Msg::default().u32(0).s("group").u32(0o2775).u32(0);
    assert_eq!(s.errno(t::MKDIR, dir), 0);
    // chown to someone else and chmod 06755, as one request and as two.
    assert_eq!(s.walk(0, 2, &["sub", "hello"]), 0);
    assert_eq!(s.setattr(2, 0x7, 0o6755, 4242, 4242), 0);
    assert_eq!(s.walk(0, 3, &["group"]), 0);
    assert_eq!(s.setattr(3, 0x6, 0, 4242, 4242), 0);
    assert_eq!(s.setattr(3, 0x1, 0o6775, 0, 0), 0);
    // The guest's root owns them all; the invoking user does on the host.
    assert_eq!(s.owner(2), (0, 0));
    assert_eq!(s.owner(3), (0, 0));
    for name in ["tool", "group", "sub/hello"] {
        let path = share.join(name);
        let mode = mode_of(&path);
        assert_eq!(mode & 0o6000, 0, "{name}: {mode:o}");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (policy.uid, policy.gid), "{name}");
    }
    assert_eq!(mode_of(&share.join("tool")) & 0o700, 0o700);
    assert_eq!(mode_of(&share.join("sub/hello")), 0o755);
    assert_eq!(mode_of(&share.join("group")), 0o775);
}

#[test]
fn as_root_the_server_honours_other_users_permissions() {
    if !nix_is_root() {
        return test_support::skip_not_applicable!(
            "an unprivileged server has no privilege to give up (run as root)"
        );
    }
    let (_dir, share) = scratch();
    let theirs = share.join("theirs");
    fs::write(&theirs, b"private").unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
    let their_dir = share.join("their-dir");
    fs::create_dir(&their_dir).unwrap();
    std::os::unix::fs::chown(&their_dir, Some(4242), Some(4242)).unwrap();
    confined(&share, me(), false, |handler, _| {
        let mut s = Session::start(handler);
        assert_eq!(s.walk(0, 1, &["theirs"]), 0);
        let eacces = libc::EACCES as u32;
        let eperm = libc::EPERM as u32;
        assert_eq!(s.errno(t::LOPEN, Msg::default().u32(1).u32(0)), eacces);
        assert_eq!(s.setattr(1, 0x1, 0o644, 0, 0), eperm, "chmod");
        assert_eq!(
            s.setattr(1, 0x2, 0, 0, 0),
            eperm,
            "chown to the guest's root"
        );
        assert_eq!(s.walk(0, 2, &["their-dir"]), 0);
        assert_eq!(s.create(2, "mine", libc::O_WRONLY as u32), eacces);
        // Root's own files are still root's to use.
        assert_eq!(s.walk(0, 3, &["sub", "hello"]), 0);
        assert_eq!(s.errno(t::LOPEN, Msg::default().u32(3).u32(2)), 0);
    });
    let meta = fs::metadata(&theirs).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (4242, 0o600));
    assert!(!their_dir.join("mine").exists());
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid only returns the caller's id.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_share_nested_in_another_cannot_be_redirected_out_of_it() {
    // Share A holds `up -> ../outside`; share B is A's b/c. Through A the
    // guest moves b away and puts `up` in its place; B attached again
    // must still be the directory it was, not outside/c. In both orders
    // of making the shares.
    for a_first in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = a.join("b/c");
        fs::create_dir_all(&b).unwrap();
        fs::create_dir_all(dir.path().join("outside/c")).unwrap();
        std::os::unix::fs::symlink("../outside", a.join("up")).unwrap();
        let (mut share_a, mut share_b) = if a_first {
            let share_a = Session::new(&a, me());
            (share_a, Session::new(&b, me()))
        } else {
            let share_b = Session::new(&b, me());
            (Session::new(&a, me()), share_b)
        };
        let rename = |from: &str, to: &str| Msg::default().u32(0).s(from).u32(0).s(to);
        assert_eq!(share_a.errno(t::RENAMEAT, rename("b", "b.away")), 0);
        assert_eq!(share_a.errno(t::RENAMEAT, rename("up", "b")), 0);
        // A second mount of B's tag: a new session, a new attach.
        let reply = share_b.call(t::VERSION, Msg::default().u32(8192).s("9P2000.L"));
        assert_eq!(reply[4], t::VERSION + 1);
        assert_eq!(share_b.attach(5), 0);
        assert_eq!(share_b.create(5, "planted", libc::O_WRONLY as u32), 0);
        assert!(
            !dir.path().join("outside/c/planted").exists(),
            "a_first {a_first}: B followed the path out of A"
        );
        assert!(a.join("b.away/c/planted").exists(), "a_first {a_first}");
    }
}

#[test]
fn a_guest_holds_at_most_the_fid_limit_and_gets_emfile_past_it() {
    let (_dir, share) = scratch();
    let mut s = Session::new(&share, me());
    let limit = s.handler.fid_limit() as u32;
    assert!(limit as usize >= fids::MIN_FIDS);
    // Fid 0 is the attach; walk the rest.
    for fid in 1..limit {
        assert_eq!(s.walk(0, fid, &["sub"]), 0, "fid {fid}");
    }
    let emfile = policy::EMFILE;
    assert_eq!(s.walk(0, limit, &["sub"]), emfile);
    assert_eq!(s.walk(0, limit, &[]), emfile, "a clone makes a fid too");
    assert_eq!(s.attach(limit), emfile);
    // A walk in place makes no fid; a fid in use is the server's EBADF.
    assert_eq!(s.walk(1, 1, &["hello"]), 0);
    assert_eq!(s.walk(0, 2, &[]), libc::EBADF as u32);
    // A clunk makes room for one; a remove clunks too.
    assert_eq!(s.clunk(2), 0);
    assert_eq!(s.walk(0, limit, &[]), 0);
    assert_ne!(s.errno(t::REMOVE, Msg::default().u32(3)), 0);
    assert_eq!(
        s.walk(3, 3, &[]),
        libc::EBADF as u32,
        "the remove clunked it"
    );
    assert_eq!(s.walk(0, limit + 1, &["sub"]), 0);
    // A new session clunks every fid.
    let reply = s.call(t::VERSION, Msg::default().u32(8192).s("9P2000.L"));
    assert_eq!(reply[4], t::VERSION + 1);
    assert_eq!(s.walk(1, 9, &[]), libc::EBADF as u32);
    assert_eq!(s.attach(0), 0);
    for fid in 1..limit {
        assert_eq!(s.walk(0, fid, &[]), 0, "fid {fid} after the version");
    }
    assert_eq!(s.walk(0, limit, &[]), emfile);
    // And the process still opens files.
    fs::File::open(share.join("sub/hello")).unwrap();
}

#[test]
fn the_handlers_root_fid_is_out_of_the_guests_reach() {
    let (_dir, share) = scratch();
    let mut s = Session::new(&share, me());
    assert_eq!(s.clunk(!0), policy::EBADF);
    assert_eq!(s.walk(!0, 1, &["sub"]), policy::EBADF);
    assert_eq!(s.attach(!0), policy::EBADF);
    assert_eq!(s.attach(0), libc::EBADF as u32, "fid 0 is in use");
    assert_eq!(s.attach(1), 0);
    assert_eq!(s.walk(1, 2, &["sub", "hello"]), 0);
    // The answer to an attach is the root's qid.
    let reply = s.call(t::ATTACH, Msg::default().u32(7).u32(!0).s("").s("").u32(0));
    let ino = fs::metadata(&share).unwrap().ino();
    assert_eq!(reply[..7], [20, 0, 0, 0, t::ATTACH + 1, 1, 0]);
    assert_eq!(reply[7], 0x80, "a directory");
    assert_eq!(reply[12..20], ino.to_le_bytes());
}

/// Whether the kernel has Landlock; a skip (a failure in strict mode)
/// where it has not.
fn landlock_here() -> bool {
    let here = confine::landlock_abi().is_some();
    if !here {
        test_support::skip_unavailable!(
            "the kernel has no Landlock (Linux 5.13+ with `landlock` in `lsm=`)"
        );
    }
    here
}

#[test]
fn the_worker_reaches_nothing_outside_its_share() {
    if !landlock_here() {
        return;
    }
    let (dir, share) = scratch();
    let outside = dir.path().to_path_buf();
    let share_dir = fs::File::open(&share).unwrap();
    let inside = share.clone();
    let denied = |result: std::io::Result<()>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{what}: {err}");
    };
    confined(&share, me(), false, move |handler, how| {
        assert!(how.landlock_abi.is_some());
        let secret = outside.join("secret");
        denied(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&secret)
                .map(drop),
            "open outside for writing",
        );
        denied(fs::read(&secret).map(drop), "read outside");
        denied(fs::remove_file(&secret), "unlink outside");
        denied(fs::create_dir(outside.join("made")), "mkdir outside");
        // EXDEV where only the right to move across directories is
        // missing, so that `mv` copies, which is then refused.
        let moved = fs::rename(inside.join("sub/hello"), outside.join("taken"));
        assert!(moved.is_err(), "rename out of the share");
        let path = std::ffi::CString::new(secret.as_os_str().as_bytes()).unwrap();
        // SAFETY: openat with a descriptor of ours and a C string; an
        // absolute name ignores the descriptor.
        let fd = unsafe { libc::openat(share_dir.as_raw_fd(), path.as_ptr(), libc::O_RDONLY) };
        assert_eq!(fd, -1, "an absolute name through a share descriptor");
        // Inside, everything a session does still works.
        let mut s = Session::start(handler);
        assert_eq!(s.walk(0, 1, &["sub", "hello"]), 0);
        assert_eq!(s.errno(t::LOPEN, Msg::default().u32(1).u32(0)), 0);
        assert_eq!(s.read(1), b"hello from the host\n");
        assert_eq!(s.walk(0, 2, &[]), 0);
        assert_eq!(s.create(2, "new", libc::O_WRONLY as u32), 0);
        fs::write(inside.join("new"), b"ok").unwrap();
    });
    assert_eq!(fs::read(dir.path().join("secret")).unwrap(), b"secret");
    assert!(!dir.path().join("made").exists());
}

#[test]
fn a_read_only_shares_worker_can_write_nothing_even_past_the_policy() {
    if !landlock_here() {
        return;
    }
    let (_dir, share) = scratch();
    let inside = share.clone();
    let read_only = Policy {
        read_only: true,
        ..me()
    };
    confined(&share, read_only, false, move |_handler, _| {
        assert_eq!(
            fs::read(inside.join("sub/hello")).unwrap(),
            b"hello from the host\n"
        );
        let err = fs::write(inside.join("sub/hello"), b"changed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        let err = fs::write(inside.join("new"), b"made").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    });
    assert!(!share.join("new").exists());
}
