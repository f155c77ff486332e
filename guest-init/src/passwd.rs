//! `USER[:GROUP]` resolved against the rootfs's own `/etc/passwd` and
//! `/etc/group` (their bytes; `user.rs` reads them): pure functions over
//! byte slices, no system calls, so that `tests/passwd.rs` runs them in a
//! std test crate.
//!
//! The rules (docker's and runc's):
//!
//! - `USER` is a name, looked up in `/etc/passwd`, or a decimal number,
//!   taken as it is: the entry with that uid gives the name, primary
//!   group and home when there is one; otherwise group 0 and home `/`;
//! - `GROUP`, when given, is a name from `/etc/group` or a number, and
//!   replaces the primary group;
//! - the supplementary groups are the primary group, then every group of
//!   `/etc/group` whose member list names the user, in file order, once
//!   each.
//!
//! Lines that do not have the fields of their file, or whose ids are not
//! numbers, are skipped, as glibc skips them.

/// One `/etc/passwd` entry's fields that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The login name.
    pub name: &'a [u8],
    /// The uid.
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// The home directory.
    pub home: &'a [u8],
}

/// Who the program runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The login name, when `/etc/passwd` has the user (`None`: a number
    /// without an entry).
    pub name: Option<&'a [u8]>,
    /// The home directory (`/` without an entry).
    pub home: &'a [u8],
}

/// A name that the rootfs's files do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown<'a> {
    /// Not in `/etc/passwd`.
    User(&'a [u8]),
    /// Not in `/etc/group`.
    Group(&'a [u8]),
}

/// A decimal id, below `u32::MAX` (which the kernel takes as "no id").
pub fn parse_id(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 10 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    u32::try_from(value).ok().filter(|&id| id != u32::MAX)
}

/// Splits `USER[:GROUP]` at its first `:`.
pub fn split_spec(spec: &[u8]) -> (&[u8], Option<&[u8]>) {
    match spec.iter().position(|&b| b == b':') {
        Some(colon) => (&spec[..colon], Some(&spec[colon + 1..])),
        None => (spec, None),
    }
}

/// The `/etc/passwd` entries of `file`, in order.
pub fn entries(file: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    file.split(|&b| b == b'\n').filter_map(|line| {
        let mut fields = line.split(|&b| b == b':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = parse_id(fields.next()?)?;
        let gid = parse_id(fields.next()?)?;
        let _gecos = fields.next()?;
        let home = fields.next()?;
        (!name.is_empty()).then_some(Entry {
            name,
            uid,
            gid,
            home,
        })
    })
}

/// The `/etc/group` lines of `file` as (name, gid, members), in order.
fn groups(file: &[u8]) -> impl Iterator<Item = (&[u8], u32, &[u8])> {
    file.split(|&b| b == b'\n').filter_map(|line| {
        let mut fields = line.split(|&b| b == b':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = parse_id(fields.next()?)?;
        let members = fields.next().unwrap_or(b"");
        (!name.is_empty()).then_some((name, gid, members))
    })
}

/// The user a spec's `USER` names: the first entry with that name, or,
/// for a number, with that uid.
pub fn find_user<'a>(passwd: &'a [u8], user: &[u8]) -> Option<Entry<'a>> {
    match parse_id(user) {
        Some(uid) => entries(passwd).find(|entry| entry.uid == uid),
        None => entries(passwd).find(|entry| entry.name == user),
    }
}

/// The gid of the group `name` (a name, or a number taken as it is).
pub fn find_group(group: &[u8], name: &[u8]) -> Option<u32> {
    parse_id(name).or_else(|| {
        groups(group)
            .find(|&(group_name, _, _)| group_name == name)
            .map(|(_, gid, _)| gid)
    })
}

/// Resolves `spec` (`USER[:GROUP]`) against the two files' bytes (empty
/// when a file does not exist).
pub fn resolve<'a>(
    spec: &'a [u8],
    passwd: &'a [u8],
    group: &'a [u8],
) -> Result<Resolved<'a>, Unknown<'a>> {
    let (user, group_name) = split_spec(spec);
    let mut resolved = match (find_user(passwd, user), parse_id(user)) {
        (Some(entry), _) => Resolved {
            uid: entry.uid,
            gid: entry.gid,
            name: Some(entry.name),
            home: if entry.home.is_empty() {
                b"/"
            } else {
                entry.home
            },
        },
        (None, Some(uid)) => Resolved {
            uid,
            gid: 0,
            name: None,
            home: b"/",
        },
        (None, None) => return Err(Unknown::User(user)),
    };
    if let Some(name) = group_name {
        resolved.gid = find_group(group, name).ok_or(Unknown::Group(name))?;
    }
    Ok(resolved)
}

/// Fills `out` with the groups the program gets (`setgroups`): the
/// primary group, then each group whose member list names the user, once
/// each; returns how many, or `None` when they do not fit.
pub fn supplementary(resolved: &Resolved<'_>, group: &[u8], out: &mut [u32]) -> Option<usize> {
    let mut len = 0;
    let mut push = |gid: u32, out: &mut [u32]| -> Option<()> {
        if out[..len].contains(&gid) {
            return Some(());
        }
        *out.get_mut(len)? = gid;
        len += 1;
        Some(())
    };
    push(resolved.gid, out)?;
    if let Some(name) = resolved.name {
        for (_, gid, members) in groups(group) {
            if members.split(|&b| b == b',').any(|member| member == name) {
                push(gid, out)?;
            }
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        \n\
        short:x:5\n\
        bad:x:notanumber:1::/home/bad:/bin/sh\n\
        builder:x:1000:100:Builder,,,:/home/builder:/bin/bash\n\
        twin:x:1000:7::/twin:/bin/sh\n\
        nohome:x:1001:1001:::/bin/sh";
    const GROUP: &[u8] = b"root:x:0:\n\
        users:x:100:\n\
        wheel:x:10:root,builder\n\
        staff:x:50:other,builder,more\n\
        builders:x:60:builderx\n\
        broken:x\n\
        audio:x:29:builder";

    fn ok(spec: &'static [u8]) -> Resolved<'static> {
        resolve(spec, PASSWD, GROUP).unwrap_or_else(|e| panic!("{spec:?}: {e:?}"))
    }

    #[test]
    fn ids_are_decimal_and_below_the_no_id_value() {
        assert_eq!(parse_id(b"0"), Some(0));
        assert_eq!(parse_id(b"0042"), Some(42));
        assert_eq!(parse_id(b"4294967294"), Some(u32::MAX - 1));
        for bad in [&b""[..], b"4294967295", b"99999999999", b"-1", b"1a", b" 1"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_name_gives_its_entry() {
        let builder = ok(b"builder");
        assert_eq!((builder.uid, builder.gid), (1000, 100));
        assert_eq!(builder.name, Some(&b"builder"[..]));
        assert_eq!(builder.home, b"/home/builder");
        assert_eq!(ok(b"root").home, b"/root");
        // The last line needs no newline; an empty home is /.
        let nohome = ok(b"nohome");
        assert_eq!((nohome.uid, nohome.home), (1001, &b"/"[..]));
    }

    #[test]
    fn a_number_is_taken_as_it_is() {
        // The first entry with that uid.
        let first = ok(b"1000");
        assert_eq!((first.gid, first.name), (100, Some(&b"builder"[..])));
        // No entry: group 0, home /, no name.
        let bare = ok(b"4242");
        assert_eq!(
            bare,
            Resolved {
                uid: 4242,
                gid: 0,
                name: None,
                home: b"/"
            }
        );
        let with_group = ok(b"4242:4343");
        assert_eq!((with_group.uid, with_group.gid), (4242, 4343));
        // Without the files at all, numbers still work.
        assert_eq!(
            resolve(b"7:8", b"", b"").map(|r| (r.uid, r.gid)),
            Ok((7, 8))
        );
    }

    #[test]
    fn a_group_replaces_the_primary_group() {
        assert_eq!(ok(b"builder:staff").gid, 50);
        assert_eq!(ok(b"builder:0").gid, 0);
        assert_eq!(ok(b"1000:wheel").gid, 10);
    }

    #[test]
    fn unknown_names_are_reported_as_such() {
        assert_eq!(
            resolve(b"nobody", PASSWD, GROUP),
            Err(Unknown::User(b"nobody"))
        );
        assert_eq!(
            resolve(b"builder:nogroup", PASSWD, GROUP),
            Err(Unknown::Group(b"nogroup"))
        );
        // Malformed lines are never matched, by name or by number.
        assert_eq!(
            resolve(b"short", PASSWD, GROUP),
            Err(Unknown::User(b"short"))
        );
        assert_eq!(resolve(b"bad", PASSWD, GROUP), Err(Unknown::User(b"bad")));
        assert_eq!(
            resolve(b"root:broken", PASSWD, GROUP),
            Err(Unknown::Group(b"broken"))
        );
        assert_eq!(resolve(b"root", b"", b""), Err(Unknown::User(b"root")));
    }

    #[test]
    fn supplementary_groups_are_the_primary_then_memberships() {
        let mut out = [0u32; 8];
        let n = supplementary(&ok(b"builder"), GROUP, &mut out).unwrap();
        // Not `builders` (a member named builderx), audio on the last line.
        assert_eq!(&out[..n], [100, 10, 50, 29]);
        // The primary group once, when it is also a membership.
        let n = supplementary(&ok(b"builder:staff"), GROUP, &mut out).unwrap();
        assert_eq!(&out[..n], [50, 10, 29]);
        // A number without an entry has no name to be a member by.
        let n = supplementary(&ok(b"4242:5"), GROUP, &mut out).unwrap();
        assert_eq!(&out[..n], [5]);
        // Too many for the room given.
        let mut small = [0u32; 2];
        assert_eq!(supplementary(&ok(b"builder"), GROUP, &mut small), None);
    }
}
