//! What microrun adds in front of the `p9` crate's server, message by
//! message, before the server sees it: confinement and `--bind-ro`.
//!
//! The server resolves every name with one `openat(parent, name,
//! O_PATH | O_NOFOLLOW)` from a descriptor it already holds, starting from
//! the share's root, and opens files through `/proc/self/fd` (a symlink's
//! descriptor opens as `ELOOP`, never as its target). So a name that is a
//! single component keeps the guest inside the tree whatever the host does
//! to it meanwhile: no path is ever resolved again from the top, and no
//! symlink is followed. What the server does not refuse itself is a name
//! with a `/` or one that climbs (`..`); every message that carries a name
//! is checked here, and such a name is answered `EINVAL`.
//!
//! A read-only share answers `EROFS` to every message that changes
//! anything, and to an open for writing, truncating or appending.
//!
//! Ownership, as in a rootless container that maps the guest's root to
//! the invoking user: the server shows the invoking user's files as
//! root's (its id maps), and every `chown` is turned into one to the
//! invoking user, whatever owner the guest asked for. So `tar x`, `cp -a`
//! and `install -o` succeed in the guest (they would report an `EPERM` to
//! root as an error), and nothing the guest makes belongs to anyone else
//! on the host, also when microrun runs as root.
//!
//! No setuid or setgid file: the setuid and setgid bits are cleared from
//! every mode the guest gives (create, mkdir, mknod, setattr).
//!
//! The handler holds the share's root as a fid of its own,
//! [`ROOT_FID`] (the protocol's "no fid", which no client uses as one);
//! a request that names it is answered `EBADF`.

/// The errno values this policy answers with.
pub const EINVAL: u32 = libc::EINVAL as u32;
/// A change to a read-only share.
pub const EROFS: u32 = libc::EROFS as u32;
/// A fid that is not the guest's.
pub const EBADF: u32 = libc::EBADF as u32;
/// The share's fids are all in use.
pub const EMFILE: u32 = libc::EMFILE as u32;

/// The handler's own fid for the share's root: `P9_NOFID`, which a client
/// sends only where no fid is meant (an attach's afid).
pub const ROOT_FID: u32 = u32::MAX;

/// The 9P2000.L request types this module looks into (Linux's
/// `include/net/9p/9p.h`); an answer's type is its request's plus one.
pub mod t {
    /// Tlopen: open a fid.
    pub const LOPEN: u8 = 12;
    /// Tlcreate: create and open a file.
    pub const LCREATE: u8 = 14;
    /// Tsymlink.
    pub const SYMLINK: u8 = 16;
    /// Tmknod.
    pub const MKNOD: u8 = 18;
    /// Trename.
    pub const RENAME: u8 = 20;
    /// Tgetattr.
    pub const GETATTR: u8 = 24;
    /// Tsetattr: mode, owner, size, times.
    pub const SETATTR: u8 = 26;
    /// Txattrwalk.
    pub const XATTRWALK: u8 = 30;
    /// Txattrcreate.
    pub const XATTRCREATE: u8 = 32;
    /// Treaddir.
    pub const READDIR: u8 = 40;
    /// Tlink: a hard link.
    pub const LINK: u8 = 70;
    /// Tmkdir.
    pub const MKDIR: u8 = 72;
    /// Trenameat.
    pub const RENAMEAT: u8 = 74;
    /// Tunlinkat.
    pub const UNLINKAT: u8 = 76;
    /// Tversion: the session's start.
    pub const VERSION: u8 = 100;
    /// Tauth.
    pub const AUTH: u8 = 102;
    /// Tattach: the share's root as a fid.
    pub const ATTACH: u8 = 104;
    /// Tflush.
    pub const FLUSH: u8 = 108;
    /// Twalk: names to a new fid.
    pub const WALK: u8 = 110;
    /// Tread.
    pub const READ: u8 = 116;
    /// Twrite.
    pub const WRITE: u8 = 118;
    /// Tclunk: forget a fid.
    pub const CLUNK: u8 = 120;
    /// Tremove.
    pub const REMOVE: u8 = 122;
}

/// `Rlerror`, the answer to a refused request.
pub const RLERROR: u8 = 7;
/// `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;

/// Open flags (Linux values, which 9P2000.L uses) that write.
const WRITE_FLAGS: u32 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;
/// Added to every open: a FIFO or a device in the share must never hold
/// the server (and so every request after it) in `open` or `read`.
const NONBLOCK: u32 = libc::O_NONBLOCK as u32;

const SETATTR_MODE: u32 = 0x1;
const SETATTR_UID: u32 = 0x2;
const SETATTR_GID: u32 = 0x4;
/// Cleared from every mode the guest gives.
const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// How one share is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `--bind-ro`.
    pub read_only: bool,
    /// The invoking user, who owns what the guest creates.
    pub uid: u32,
    /// The invoking user's group.
    pub gid: u32,
    /// Whom the guest sees the invoking user's files as owned by: root,
    /// or the user the program runs as (`-u`), so that it can write to
    /// its share. Only what the guest is shown: the files stay the
    /// invoking user's, and so does what the guest creates.
    pub guest_uid: u32,
    /// The group the guest sees the invoking user's group as.
    pub guest_gid: u32,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the server (perhaps rewritten in place).
    Serve,
    /// Answer it with this errno, without the server.
    Refuse(u32),
    /// Not even a header: there is no tag to answer.
    Drop,
}

/// Checks (and where needed rewrites) the request `msg`, a whole
/// T-message from its size field on.
pub fn check(msg: &mut [u8], policy: &Policy) -> Verdict {
    if msg.len() < HEADER_LEN {
        return Verdict::Drop;
    }
    let kind = msg[4];
    if policy.read_only && changes_something(kind) {
        return Verdict::Refuse(EROFS);
    }
    let body = HEADER_LEN;
    // Where the mode of a new file, directory or node is, once the name
    // before it is known to be whole.
    let mut mode_at = None;
    let names_ok = match kind {
        // fid[4] newfid[4] nwname[2] wname[s]...
        t::WALK => walk_names_ok(msg, body + 8),
        // fid[4] name[s] flags[4] mode[4] gid[4]
        // dfid[4] name[s] mode[4] ...
        t::LCREATE | t::MKDIR | t::MKNOD => name_at(msg, body + 4).is_some_and(|(name, end)| {
            mode_at = Some(if kind == t::LCREATE { end + 4 } else { end });
            is_plain_name(name)
        }),
        // fid[4] name[s] ...
        t::SYMLINK | t::UNLINKAT => {
            name_at(msg, body + 4).is_some_and(|(name, _)| is_plain_name(name))
        }
        // fid[4] newfid[4] name[s]: an xattr name is not a path, only its
        // presence is checked.
        t::XATTRWALK => name_at(msg, body + 8).is_some(),
        // fid[4] dfid[4] name[s]
        t::RENAME | t::LINK => name_at(msg, body + 8).is_some_and(|(name, _)| is_plain_name(name)),
        // olddirfid[4] oldname[s] newdirfid[4] newname[s]
        t::RENAMEAT => name_at(msg, body + 4).is_some_and(|(old, end)| {
            is_plain_name(old) && name_at(msg, end + 4).is_some_and(|(new, _)| is_plain_name(new))
        }),
        _ => true,
    };
    if !names_ok {
        return Verdict::Refuse(EINVAL);
    }
    if names_root_fid(msg) {
        return Verdict::Refuse(EBADF);
    }
    match kind {
        // fid[4] flags[4]
        t::LOPEN => {
            let Some(flags) = u32_at(msg, body + 4) else {
                return Verdict::Serve;
            };
            if policy.read_only && flags & WRITE_FLAGS != 0 {
                return Verdict::Refuse(EROFS);
            }
            put_u32(msg, body + 4, flags | NONBLOCK);
        }
        // fid[4] valid[4] mode[4] uid[4] gid[4] ...
        t::SETATTR => {
            let valid = u32_at(msg, body + 4).unwrap_or(0);
            if valid & SETATTR_MODE != 0 {
                mode_at = Some(body + 8);
            }
            for (bit, at, host) in [
                (SETATTR_UID, body + 12, policy.uid),
                (SETATTR_GID, body + 16, policy.gid),
            ] {
                if valid & bit != 0 {
                    put_u32(msg, at, host);
                }
            }
        }
        _ => {}
    }
    if let Some(at) = mode_at {
        if let Some(mode) = u32_at(msg, at) {
            put_u32(msg, at, mode & !SETID_BITS);
        }
    }
    Verdict::Serve
}

/// Whether request `msg` names [`ROOT_FID`] where it takes a fid. Every
/// 9P2000.L request but Tversion, Tauth, Tflush and Tattach (which the
/// handler answers itself) starts with a fid; a walk, an xattr walk, a
/// link and a rename carry a second after it, a renameat after its first
/// name.
fn names_root_fid(msg: &[u8]) -> bool {
    let body = HEADER_LEN;
    let kind = msg[4];
    if matches!(kind, t::VERSION | t::AUTH | t::FLUSH | t::ATTACH) {
        return false;
    }
    let second = match kind {
        t::WALK | t::XATTRWALK | t::LINK | t::RENAME => Some(body + 4),
        t::RENAMEAT => name_at(msg, body + 4).map(|(_, end)| end),
        _ => None,
    };
    [Some(body), second]
        .into_iter()
        .flatten()
        .any(|at| u32_at(msg, at) == Some(ROOT_FID))
}

/// The `Rlerror` answering request `msg` with `errno`.
pub fn error_reply(msg: &[u8], errno: u32) -> [u8; HEADER_LEN + 4] {
    let mut out = [0u8; HEADER_LEN + 4];
    out[..4].copy_from_slice(&((HEADER_LEN + 4) as u32).to_le_bytes());
    out[4] = RLERROR;
    out[5..7].copy_from_slice(&msg[5..7]);
    out[7..].copy_from_slice(&errno.to_le_bytes());
    out
}

fn changes_something(kind: u8) -> bool {
    matches!(
        kind,
        t::WRITE
            | t::LCREATE
            | t::SYMLINK
            | t::MKNOD
            | t::RENAME
            | t::SETATTR
            | t::XATTRCREATE
            | t::LINK
            | t::MKDIR
            | t::RENAMEAT
            | t::UNLINKAT
            | t::REMOVE
    )
}

/// A name the server may resolve: one component, not `.` or `..`, no NUL.
fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn walk_names_ok(msg: &[u8], at: usize) -> bool {
    let Some(count) = u16_at(msg, at) else {
        return false;
    };
    let mut at = at + 2;
    for _ in 0..count {
        match name_at(msg, at) {
            Some((name, end)) if is_plain_name(name) => at = end,
            _ => return false,
        }
    }
    true
}

/// The string (`len[2] bytes`) at `at` and the offset after it.
pub(super) fn name_at(msg: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = usize::from(u16_at(msg, at)?);
    let start = at + 2;
    let name = msg.get(start..start.checked_add(len)?)?;
    Some((name, start + len))
}

pub(super) fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(msg.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(msg.get(at..at + 4)?.try_into().ok()?))
}

fn put_u32(msg: &mut [u8], at: usize, value: u32) {
    if let Some(field) = msg.get_mut(at..at + 4) {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Policy = Policy {
        read_only: false,
        uid: 1000,
        gid: 100,
        guest_uid: 0,
        guest_gid: 0,
    };
    const RO: Policy = Policy {
        read_only: true,
        ..RW
    };

    /// A T-message: header, then `body`.
    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = ((HEADER_LEN + body.len()) as u32).to_le_bytes().to_vec();
        m.push(kind);
        m.extend(7u16.to_le_bytes());
        m.extend(body);
        m
    }

    fn s(text: &[u8]) -> Vec<u8> {
        let mut out = (text.len() as u16).to_le_bytes().to_vec();
        out.extend(text);
        out
    }

    fn walk(names: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![0u8; 8];
        body.extend((names.len() as u16).to_le_bytes());
        for name in names {
            body.extend(s(name));
        }
        msg(t::WALK, &body)
    }

    #[test]
    fn names_that_climb_or_span_directories_are_refused() {
        assert_eq!(check(&mut walk(&[b"a", b"b"]), &RW), Verdict::Serve);
        assert_eq!(check(&mut walk(&[]), &RW), Verdict::Serve);
        for bad in [&b".."[..], b".", b"a/b", b"/etc", b"", b"a\0b"] {
            assert_eq!(check(&mut walk(&[b"a", bad]), &RW), Verdict::Refuse(EINVAL));
            let mut body = vec![0u8; 4];
            body.extend(s(bad));
            body.extend([0u8; 12]);
            for kind in [t::LCREATE, t::MKDIR, t::SYMLINK, t::MKNOD, t::UNLINKAT] {
                assert_eq!(check(&mut msg(kind, &body), &RW), Verdict::Refuse(EINVAL));
            }
            let mut link = vec![0u8; 8];
            link.extend(s(bad));
            assert_eq!(
                check(&mut msg(t::LINK, &link), &RW),
                Verdict::Refuse(EINVAL)
            );
            let mut ren = vec![0u8; 4];
            ren.extend(s(b"ok"));
            ren.extend([0u8; 4]);
            ren.extend(s(bad));
            assert_eq!(
                check(&mut msg(t::RENAMEAT, &ren), &RW),
                Verdict::Refuse(EINVAL)
            );
        }
        // Truncated: refused, never read past the end.
        let mut cut = walk(&[b"abc"]);
        cut.truncate(cut.len() - 1);
        assert_eq!(check(&mut cut, &RW), Verdict::Refuse(EINVAL));
        assert_eq!(check(&mut [0u8; 3], &RW), Verdict::Drop);
    }

    #[test]
    fn a_read_only_share_refuses_every_change() {
        for kind in [
            t::WRITE,
            t::LCREATE,
            t::SYMLINK,
            t::MKNOD,
            t::RENAME,
            t::SETATTR,
            t::XATTRCREATE,
            t::LINK,
            t::MKDIR,
            t::RENAMEAT,
            t::UNLINKAT,
            t::REMOVE,
        ] {
            assert_eq!(check(&mut msg(kind, &[0; 32]), &RO), Verdict::Refuse(EROFS));
        }
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_TRUNC, libc::O_APPEND] {
            let mut body = vec![0u8; 4];
            body.extend((flags as u32).to_le_bytes());
            assert_eq!(
                check(&mut msg(t::LOPEN, &body), &RO),
                Verdict::Refuse(EROFS)
            );
            assert_eq!(check(&mut msg(t::LOPEN, &body), &RW), Verdict::Serve);
        }
        let mut read = msg(t::LOPEN, &[0; 8]);
        assert_eq!(check(&mut read, &RO), Verdict::Serve);
        assert_eq!(
            u32_at(&read, HEADER_LEN + 4),
            Some(NONBLOCK),
            "opens never block"
        );
    }

    /// A Tsetattr body: valid, mode, uid, gid, then the times.
    fn setattr(valid: u32, mode: u32, uid: u32, gid: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        b.extend(valid.to_le_bytes());
        b.extend(mode.to_le_bytes());
        b.extend(uid.to_le_bytes());
        b.extend(gid.to_le_bytes());
        b.extend([0u8; 40]);
        msg(t::SETATTR, &b)
    }

    #[test]
    fn every_chown_becomes_chown_to_the_invoking_user() {
        for (uid, gid) in [(0, 0), (5, 7), (1000, 100), (u32::MAX, u32::MAX)] {
            let mut m = setattr(SETATTR_UID | SETATTR_GID, 0, uid, gid);
            assert_eq!(check(&mut m, &RW), Verdict::Serve);
            assert_eq!(u32_at(&m, HEADER_LEN + 12), Some(1000), "{uid}");
            assert_eq!(u32_at(&m, HEADER_LEN + 16), Some(100), "{gid}");
        }
        let mut other = setattr(SETATTR_UID, 0, 5, 0);
        check(&mut other, &RW);
        assert_eq!(u32_at(&other, HEADER_LEN + 12), Some(1000));
        assert_eq!(
            u32_at(&other, HEADER_LEN + 16),
            Some(0),
            "GID not asked for"
        );
    }

    #[test]
    fn no_mode_the_guest_gives_keeps_setuid_or_setgid() {
        // (valid, mode given, mode the server gets)
        for (valid, given, served) in [
            (SETATTR_MODE, 0o106_755, 0o100_755),
            (SETATTR_MODE, 0o41_777, 0o41_777), // the sticky bit stays
            (SETATTR_UID, 0o6755, 0o6755),      // no mode asked for
        ] {
            let mut m = setattr(valid, given, 0, 0);
            assert_eq!(check(&mut m, &RW), Verdict::Serve);
            assert_eq!(u32_at(&m, HEADER_LEN + 8), Some(served), "{given:o}");
        }
        // Tlcreate: fid, name, flags, mode, gid; Tmkdir and Tmknod: dfid,
        // name, mode, ...
        for (kind, before) in [(t::LCREATE, 4), (t::MKDIR, 0), (t::MKNOD, 0)] {
            let mut body = vec![0u8; 4];
            body.extend(s(b"file"));
            body.extend(vec![0xaa; before]);
            let at = HEADER_LEN + body.len();
            body.extend(0o6755u32.to_le_bytes());
            body.extend([0u8; 12]);
            let mut m = msg(kind, &body);
            assert_eq!(check(&mut m, &RW), Verdict::Serve, "{kind}");
            assert_eq!(u32_at(&m, at), Some(0o755), "{kind}");
            assert_eq!(m[at - before..at], vec![0xaa; before][..], "{kind}");
        }
    }

    #[test]
    fn the_handlers_root_fid_is_not_the_guests() {
        let root = ROOT_FID.to_le_bytes();
        let mut walk_from = walk(&[]);
        walk_from[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&root);
        assert_eq!(check(&mut walk_from, &RW), Verdict::Refuse(EBADF));
        let mut walk_to = walk(&[]);
        walk_to[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&root);
        assert_eq!(check(&mut walk_to, &RW), Verdict::Refuse(EBADF));
        for kind in [t::CLUNK, t::LOPEN, t::READ, t::GETATTR, t::REMOVE] {
            let mut body = root.to_vec();
            body.extend([0u8; 16]);
            assert_eq!(check(&mut msg(kind, &body), &RW), Verdict::Refuse(EBADF));
        }
        let mut ren = vec![0u8; 4];
        ren.extend(s(b"a"));
        ren.extend(root);
        ren.extend(s(b"b"));
        assert_eq!(
            check(&mut msg(t::RENAMEAT, &ren), &RW),
            Verdict::Refuse(EBADF)
        );
        // An attach's afid is "no fid"; a flush names a tag.
        let mut attach = vec![0u8; 4];
        attach.extend(root);
        assert_eq!(check(&mut msg(t::ATTACH, &attach), &RW), Verdict::Serve);
        assert_eq!(
            check(&mut msg(t::FLUSH, &[0xff, 0xff]), &RW),
            Verdict::Serve
        );
    }

    #[test]
    fn refusals_answer_with_the_requests_tag() {
        let m = msg(t::WRITE, &[]);
        let reply = error_reply(&m, EROFS);
        assert_eq!(reply[..4], 11u32.to_le_bytes());
        assert_eq!(reply[4], RLERROR);
        assert_eq!(reply[5..7], 7u16.to_le_bytes());
        assert_eq!(reply[7..], EROFS.to_le_bytes());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::devices::virtio::test_util::XorShift(0x9e37_79b9);
        for _ in 0..20_000 {
            let len = rng.below(48) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len > 4 {
                m[4] = [t::WALK, t::RENAMEAT, t::LOPEN, t::SETATTR, t::LINK][rng.below(5) as usize];
            }
            let _ = check(&mut m, &RW);
            let _ = check(&mut m, &RO);
        }
    }
}
