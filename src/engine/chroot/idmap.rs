//! The id maps of a run with `-u`: other ids than the caller's must exist
//! in the namespace, so it gets a range, written from outside it (a
//! process can map only its own id into a namespace it made).
//!
//! - As root: every id, as itself (`0 0 4294967295`), written by microrun.
//!   Shares are idmapped mounts ([`idmapped_share`]): the caller's files
//!   show as the guest user's, and what that user creates is the caller's.
//! - As an ordinary user: the caller's range from `/etc/subuid` and
//!   `/etc/subgid`, through the set-user-ID `newuidmap` and `newgidmap`
//!   (Debian's `uidmap`), as rootless podman does. The guest user is the
//!   caller itself (podman's `keep-id`): `0 S G`, `G UID 1`, `G+1 S+G
//!   COUNT-G`, so its files on a share are the caller's both ways, which
//!   an ordinary user cannot get from an idmapped mount.
//!
//! Inside, root is the namespace's root (the second line's S, or 0), and
//! the helper takes uid and gid 0 before anything else runs.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use super::{pipe, ChrootError};
use crate::user::Ids;

/// Every id but `u32::MAX` (no id).
const ALL_IDS: u32 = u32::MAX;

/// One line of an id map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    inside: u32,
    outside: u32,
    count: u32,
}

/// Who writes the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// microrun, as root.
    Direct,
    /// `newuidmap` and `newgidmap`.
    Helpers,
}

/// The uid and gid maps of a run's first user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IdMaps {
    uid: Vec<Extent>,
    gid: Vec<Extent>,
    writer: Writer,
}

/// The maps of a nested namespace, as the text of `uid_map` and `gid_map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NestedMaps {
    /// `uid_map`'s text.
    pub(super) uid: String,
    /// `gid_map`'s text.
    pub(super) gid: String,
}

/// A caller's subordinate range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u32,
    count: u32,
}

impl IdMaps {
    /// The maps for a caller (`uid`, `gid`, `name`) whose program runs as
    /// `guest`, with `/etc/subuid` and `/etc/subgid`'s text.
    fn plan(
        caller: Ids,
        name: &str,
        guest: Ids,
        subuid: &str,
        subgid: &str,
    ) -> Result<IdMaps, ChrootError> {
        if caller.uid == 0 {
            // Root running the program as root maps uid 0 alone, as without
            // -u: with every uid mapped, namespace root's capabilities would
            // reach every other user's files in a share (a capability
            // applies to an inode only when its owner is mapped; the shares
            // are idmapped only when the ids differ). Every gid stays
            // mapped, for the supplementary groups the rootfs gives root.
            let all = |count| {
                vec![Extent {
                    inside: 0,
                    outside: 0,
                    count,
                }]
            };
            let root_alone = guest.uid == 0 && guest.gid == 0;
            return Ok(IdMaps {
                uid: all(if root_alone { 1 } else { ALL_IDS }),
                gid: all(ALL_IDS),
                writer: Writer::Direct,
            });
        }
        let no_range = |file: &'static str| ChrootError::NoSubordinateIds {
            user: name.to_string(),
            file,
        };
        let uids = subordinate(subuid, name, caller.uid).ok_or_else(|| no_range("/etc/subuid"))?;
        let gids = subordinate(subgid, name, caller.uid).ok_or_else(|| no_range("/etc/subgid"))?;
        let uid = keep_id(caller.uid, guest.uid, uids).ok_or(ChrootError::OutsideRange {
            kind: "uid",
            id: guest.uid,
            count: uids.count,
        })?;
        let gid = keep_id(caller.gid, guest.gid, gids).ok_or(ChrootError::OutsideRange {
            kind: "gid",
            id: guest.gid,
            count: gids.count,
        })?;
        Ok(IdMaps {
            uid,
            gid,
            writer: Writer::Helpers,
        })
    }

    /// The maps for the calling process, whose program runs as `guest`.
    pub(super) fn for_caller(guest: Ids) -> Result<IdMaps, ChrootError> {
        // SAFETY: these calls only return the caller's ids.
        let caller = unsafe {
            Ids {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        };
        let name = user_name(caller.uid).unwrap_or_else(|| caller.uid.to_string());
        let read = |path| fs::read_to_string(path).unwrap_or_default();
        IdMaps::plan(
            caller,
            &name,
            guest,
            &read("/etc/subuid"),
            &read("/etc/subgid"),
        )
    }

    /// The uid and gid maps of a namespace nested in this one that has
    /// all its ids as themselves: one line per line here, since a line
    /// must lie within one line of the namespace above.
    pub(super) fn nested(&self) -> NestedMaps {
        let same = |map: &[Extent]| {
            map.iter()
                .map(|e| Extent {
                    outside: e.inside,
                    ..*e
                })
                .collect::<Vec<_>>()
        };
        NestedMaps {
            uid: map_text(&same(&self.uid)),
            gid: map_text(&same(&self.gid)),
        }
    }

    /// Writes the maps of `pid`'s user namespace.
    pub(super) fn write(&self, pid: libc::pid_t) -> Result<(), ChrootError> {
        match self.writer {
            Writer::Direct => {
                write_map(pid, "uid_map", &self.uid)?;
                write_map(pid, "gid_map", &self.gid)
            }
            Writer::Helpers => {
                run_helper("newuidmap", pid, &self.uid)?;
                run_helper("newgidmap", pid, &self.gid)
            }
        }
    }
}

/// The map that makes `guest` the caller's `own` id and gives the rest of
/// the namespace's ids (0 to `range.count`) the subordinate range; `None`
/// when `guest` is past the range.
fn keep_id(own: u32, guest: u32, range: Range) -> Option<Vec<Extent>> {
    if guest == 0 {
        return Some(vec![
            Extent {
                inside: 0,
                outside: own,
                count: 1,
            },
            Extent {
                inside: 1,
                outside: range.start,
                count: range.count,
            },
        ]);
    }
    if guest > range.count {
        return None;
    }
    let mut map = vec![
        Extent {
            inside: 0,
            outside: range.start,
            count: guest,
        },
        Extent {
            inside: guest,
            outside: own,
            count: 1,
        },
    ];
    if range.count > guest {
        map.push(Extent {
            inside: guest + 1,
            outside: range.start + guest,
            count: range.count - guest,
        });
    }
    Some(map)
}

/// The first range of `/etc/subuid` or `/etc/subgid` (`text`) for the
/// user `name` or its `uid`.
fn subordinate(text: &str, name: &str, uid: u32) -> Option<Range> {
    let uid = uid.to_string();
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        if owner != name && owner != uid {
            return None;
        }
        let start = fields.next()?.parse().ok()?;
        let count: u32 = fields.next()?.parse().ok()?;
        (count > 0 && u32::checked_add(start, count).is_some()).then_some(Range { start, count })
    })
}

/// The caller's login name, from the host's user database (for
/// `/etc/subuid`, which names users).
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data, valid when zeroed.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; getpwuid_r
    // writes the entry's strings into `buf`.
    let r = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn map_text(map: &[Extent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

fn write_map(pid: libc::pid_t, file: &str, map: &[Extent]) -> Result<(), ChrootError> {
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, map_text(map)).map_err(|e| ChrootError::Setup(format!("writing {path}: {e}")))
}

fn run_helper(helper: &'static str, pid: libc::pid_t, map: &[Extent]) -> Result<(), ChrootError> {
    let mut command = Command::new(helper);
    command.arg(pid.to_string());
    for e in map {
        command.args([
            e.inside.to_string(),
            e.outside.to_string(),
            e.count.to_string(),
        ]);
    }
    let output = command.output().map_err(|source| ChrootError::MapHelper {
        helper,
        detail: source.to_string(),
    })?;
    if !output.status.success() {
        return Err(ChrootError::MapHelper {
            helper,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A user namespace that maps the caller's ids (`caller`) to `guest`'s,
/// for an idmapped mount: made by a child that unshares and waits while
/// microrun (root) writes its maps and opens it.
fn idmap_namespace(caller: Ids, guest: Ids) -> Result<OwnedFd, ChrootError> {
    let (wait_read, wait_write) = pipe()?;
    // SAFETY: the child only calls unshare, read and _exit, which are
    // async-signal-safe.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(super::sys_error("fork"));
    }
    if child == 0 {
        drop(wait_write);
        // SAFETY: unshare changes only this process's namespace.
        let code = if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            let mut byte = [0u8; 1];
            // SAFETY: a valid one-byte buffer; returns at EOF.
            unsafe { libc::read(wait_read.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            0
        } else {
            1
        };
        // SAFETY: ends the forked child without running the parent's
        // exit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(wait_read);
    // The child has unshared once its namespace differs from ours.
    let ours = fs::read_link("/proc/self/ns/user").ok();
    let theirs = format!("/proc/{child}/ns/user");
    let result = (|| {
        for _ in 0..1000 {
            if fs::read_link(&theirs).ok() != ours {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let one = |inside, outside| {
            vec![Extent {
                inside,
                outside,
                count: 1,
            }]
        };
        write_map(child, "uid_map", &one(caller.uid, guest.uid))?;
        write_map(child, "gid_map", &one(caller.gid, guest.gid))?;
        let ns = fs::File::open(&theirs)
            .map_err(|e| ChrootError::Setup(format!("opening {theirs}: {e}")))?;
        Ok(OwnedFd::from(ns))
    })();
    drop(wait_write);
    let mut status = 0;
    // SAFETY: `child` is ours; `status` is a valid out-pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    result
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A detached copy of the share `source` whose files owned by the caller
/// (root) show as the guest user's and whose new files are the caller's:
/// `open_tree(OPEN_TREE_CLONE)` and `mount_setattr(MOUNT_ATTR_IDMAP)`,
/// made here because idmapping a host file system needs root's
/// `CAP_SYS_ADMIN` in the first user namespace. PID 1 moves it into the
/// new root (`move_mount`).
pub(super) fn idmapped_share(
    source: &std::path::Path,
    guest: Ids,
    userns: &OwnedFd,
) -> Result<OwnedFd, ChrootError> {
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(source.as_os_str()))
        .map_err(|e| ChrootError::Setup(e.to_string()))?;
    let failed = |what: &str, error: io::Error| {
        ChrootError::Setup(format!(
            "{what} for the share {} (shown as owned by {}:{}): {error}",
            source.display(),
            guest.uid,
            guest.gid,
        ))
    };
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: a NUL-terminated path; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(failed("open_tree", io::Error::last_os_error()));
    }
    // SAFETY: the descriptor was just opened and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    super::root::mount_setattr(
        tree.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
        MOUNT_ATTR_IDMAP,
        userns.as_raw_fd() as u64,
    )
    .map_err(|e| {
        failed(
            "mount_setattr(MOUNT_ATTR_IDMAP) (its file system may not support idmapped mounts)",
            e,
        )
    })?;
    Ok(tree)
}

/// The idmapped copies of the shares' sources, in order, when root runs
/// the program as another user; empty otherwise.
pub(super) fn idmapped_shares(
    sources: &[&std::path::Path],
    guest: Ids,
) -> Result<Vec<OwnedFd>, ChrootError> {
    // SAFETY: these calls only return the caller's ids.
    let caller = unsafe {
        Ids {
            uid: libc::geteuid(),
            gid: libc::getegid(),
        }
    };
    if sources.is_empty() || caller.uid != 0 || caller == guest {
        return Ok(Vec::new());
    }
    let userns = idmap_namespace(caller, guest)?;
    sources
        .iter()
        .map(|source| idmapped_share(source, guest, &userns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(inside: u32, outside: u32, count: u32) -> Extent {
        Extent {
            inside,
            outside,
            count,
        }
    }

    const SUB: &str = "# comment\nother:200000:65536\ndev:100000:65536\n1000:300000:10\n";

    #[test]
    fn root_maps_every_id_as_itself() {
        let root = Ids { uid: 0, gid: 0 };
        let guest = Ids {
            uid: 1000,
            gid: 100,
        };
        let maps = IdMaps::plan(root, "root", guest, "", "").unwrap();
        assert_eq!(maps.uid, [line(0, 0, u32::MAX)]);
        assert_eq!(maps.writer, Writer::Direct);
        assert_eq!(maps.nested().uid, "0 0 4294967295\n");
    }

    #[test]
    fn root_running_as_root_maps_root_alone() {
        let root = Ids { uid: 0, gid: 0 };
        let maps = IdMaps::plan(root, "root", root, "", "").unwrap();
        assert_eq!(maps.uid, [line(0, 0, 1)]);
        assert_eq!(maps.gid, [line(0, 0, u32::MAX)]);
        assert_eq!(maps.writer, Writer::Direct);
    }

    #[test]
    fn an_ordinary_user_is_the_guest_user_and_the_rest_is_its_range() {
        let caller = Ids {
            uid: 1000,
            gid: 1000,
        };
        let guest = Ids {
            uid: 1000,
            gid: 100,
        };
        let maps = IdMaps::plan(caller, "dev", guest, SUB, SUB).unwrap();
        assert_eq!(
            maps.uid,
            [
                line(0, 100000, 1000),
                line(1000, 1000, 1),
                line(1001, 101000, 64536)
            ]
        );
        assert_eq!(
            maps.gid,
            [
                line(0, 100000, 100),
                line(100, 1000, 1),
                line(101, 100100, 65436)
            ]
        );
        assert_eq!(maps.writer, Writer::Helpers);
        let nested = maps.nested();
        assert_eq!(nested.uid, "0 0 1000\n1000 1000 1\n1001 1001 64536\n");
        assert_eq!(nested.gid, "0 0 100\n100 100 1\n101 101 65436\n");
        assert_eq!(
            map_text(&maps.uid),
            "0 100000 1000\n1000 1000 1\n1001 101000 64536\n"
        );
        // Root in the guest: the caller stays root, as without -u.
        let root = IdMaps::plan(caller, "dev", Ids { uid: 0, gid: 0 }, SUB, SUB).unwrap();
        assert_eq!(root.uid, [line(0, 1000, 1), line(1, 100000, 65536)]);
        // The last id of the range: no third line.
        let last = keep_id(
            1000,
            10,
            Range {
                start: 5,
                count: 10,
            },
        )
        .unwrap();
        assert_eq!(last, [line(0, 5, 10), line(10, 1000, 1)]);
    }

    #[test]
    fn a_range_is_found_by_name_or_uid_and_must_be_there() {
        assert_eq!(
            subordinate(SUB, "nobody", 1000),
            Some(Range {
                start: 300000,
                count: 10
            })
        );
        let caller = Ids {
            uid: 1001,
            gid: 1001,
        };
        let err = IdMaps::plan(caller, "ghost", caller, SUB, SUB).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/etc/subuid") && text.contains("ghost"),
            "{text}"
        );
        assert!(text.contains("usermod --add-subuids"), "{text}");
        let err = IdMaps::plan(caller, "dev", Ids { uid: 70000, gid: 0 }, SUB, SUB).unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
