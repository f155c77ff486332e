//! The fids one guest holds on one share, and how many it may hold.
//!
//! Every fid costs the VMM a descriptor (the `O_PATH` one the server
//! resolves names from) and a second one while it is open; a guest that
//! walks without clunking would otherwise take every descriptor the
//! process may have, and every later open in microrun would fail with
//! `EMFILE`. So each share admits at most [`FIDS_PER_SHARE`] fids and
//! answers a walk or an attach past that with `EMFILE`, and the process's
//! soft `RLIMIT_NOFILE` is raised (never past its hard limit) so that
//! every virtio slot's share at its limit still leaves [`VMM_RESERVE`]
//! descriptors to the VMM. Where the hard limit is too low for that, the
//! limit per share shrinks to fit (not under [`MIN_FIDS`]).
//!
//! The table mirrors the server's own: a fid is made by a whole walk to a
//! new fid and by an attach, and forgotten by a clunk, a remove (which
//! clunks, as the protocol says, whatever its outcome) and a version.

use std::collections::HashSet;

use super::policy::{t, u16_at, u32_at, HEADER_LEN};
use crate::layout;

/// The most fids one share admits (a Linux guest holds about one per open
/// file and per directory in use: `find` over a deep tree, or a build
/// with hundreds of files open, stays well under it).
pub const FIDS_PER_SHARE: usize = 1024;
/// The fewest, whatever the descriptor limit.
pub const MIN_FIDS: usize = 16;
/// Descriptors the VMM keeps for itself beside its shares.
pub const VMM_RESERVE: u64 = 256;
/// Descriptors one fid may hold: its path and its open file.
const DESCRIPTORS_PER_FID: u64 = 2;
/// Descriptors a share holds beside its fids: its root, the server's
/// `/proc`, and a directory or file reopened for the length of a request.
const SHARE_OVERHEAD: u64 = 4;

/// The Rwalk and Rclunk message types.
const RWALK: u8 = t::WALK + 1;
const RCLUNK: u8 = t::CLUNK + 1;

/// The guest's live fids on one share.
#[derive(Debug)]
pub struct Fids {
    live: HashSet<u32>,
    limit: usize,
}

impl Fids {
    /// An empty table admitting `limit` fids.
    pub fn new(limit: usize) -> Self {
        Self {
            live: HashSet::new(),
            limit,
        }
    }

    /// The most fids admitted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Fids held now.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether `fid` is held.
    pub fn contains(&self, fid: u32) -> bool {
        self.live.contains(&fid)
    }

    /// Whether a request that makes `fid` may go on: it is already held
    /// (the server refuses it then), or there is room for one more.
    pub fn admits(&self, fid: u32) -> bool {
        self.live.contains(&fid) || self.live.len() < self.limit
    }

    /// Records `fid` as held.
    pub fn insert(&mut self, fid: u32) {
        self.live.insert(fid);
    }

    /// Forgets `fid`.
    pub fn remove(&mut self, fid: u32) {
        self.live.remove(&fid);
    }

    /// Forgets every fid, returning them.
    pub fn drain(&mut self) -> Vec<u32> {
        self.live.drain().collect()
    }

    /// Records what the server's `reply` to `request` did to its fids
    /// (a walk and a clunk; the handler takes care of the others).
    pub fn note(&mut self, request: &[u8], reply: &[u8]) {
        let (Some(&kind), Some(&answer)) = (request.get(4), reply.get(4)) else {
            return;
        };
        match (kind, answer) {
            (t::WALK, RWALK) => {
                let Some((fid, newfid)) = walk_fids(request) else {
                    return;
                };
                let asked = u16_at(request, HEADER_LEN + 8);
                let walked = u16_at(reply, HEADER_LEN);
                if fid != newfid && asked.is_some() && asked == walked {
                    self.live.insert(newfid);
                }
            }
            (t::CLUNK, RCLUNK) => {
                if let Some(fid) = u32_at(request, HEADER_LEN) {
                    self.live.remove(&fid);
                }
            }
            _ => {}
        }
    }
}

/// The fid a walk request would make: its newfid, when that is not the
/// fid it starts from.
pub fn new_fid(request: &[u8]) -> Option<u32> {
    if request.get(4) != Some(&t::WALK) {
        return None;
    }
    walk_fids(request).and_then(|(fid, newfid)| (fid != newfid).then_some(newfid))
}

fn walk_fids(request: &[u8]) -> Option<(u32, u32)> {
    Some((
        u32_at(request, HEADER_LEN)?,
        u32_at(request, HEADER_LEN + 4)?,
    ))
}

/// Descriptors one share at `fids` fids may hold.
fn descriptors_for(fids: usize) -> u64 {
    fids as u64 * DESCRIPTORS_PER_FID + SHARE_OVERHEAD
}

/// The soft descriptor limit at which every virtio slot can hold a share
/// at [`FIDS_PER_SHARE`] and the VMM still has [`VMM_RESERVE`].
pub fn descriptors_wanted() -> u64 {
    VMM_RESERVE + layout::VIRTIO_MMIO_SLOTS.len() as u64 * descriptors_for(FIDS_PER_SHARE)
}

/// The fids each share may hold under the soft descriptor limit `soft`.
pub fn limit_for(soft: u64) -> usize {
    let per_slot = soft.saturating_sub(VMM_RESERVE) / layout::VIRTIO_MMIO_SLOTS.len() as u64;
    let fids = per_slot.saturating_sub(SHARE_OVERHEAD) / DESCRIPTORS_PER_FID;
    usize::try_from(fids)
        .unwrap_or(usize::MAX)
        .clamp(MIN_FIDS, FIDS_PER_SHARE)
}

/// Raises the soft descriptor limit towards [`descriptors_wanted`] (as
/// far as the hard limit allows) and returns the fids a share may hold.
pub fn per_share_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the structure it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return MIN_FIDS;
    }
    let wanted = descriptors_wanted().min(limit.rlim_max);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the structure; raising the soft limit up
        // to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    let fids = limit_for(limit.rlim_cur);
    if fids < FIDS_PER_SHARE {
        log::debug!(
            "9p: RLIMIT_NOFILE of {} (hard {}) leaves {fids} fids per share of {FIDS_PER_SHARE}; \
             `ulimit -n {}` gives them all",
            limit.rlim_cur,
            limit.rlim_max,
            descriptors_wanted()
        );
    }
    fids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(fid: u32, newfid: u32, names: u16) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0, t::WALK, 1, 0];
        m.extend(fid.to_le_bytes());
        m.extend(newfid.to_le_bytes());
        m.extend(names.to_le_bytes());
        m
    }

    fn rwalk(qids: u16) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0, RWALK, 1, 0];
        m.extend(qids.to_le_bytes());
        m
    }

    #[test]
    fn only_a_whole_walk_to_a_new_fid_makes_one() {
        let mut fids = Fids::new(2);
        fids.note(&walk(0, 1, 2), &rwalk(1));
        assert!(fids.is_empty(), "a partial walk makes no fid");
        fids.note(&walk(0, 0, 1), &rwalk(1));
        assert!(fids.is_empty(), "a walk in place makes no fid");
        fids.note(&walk(0, 1, 0), &rwalk(0));
        fids.note(&walk(0, 2, 1), &[0, 0, 0, 0, 7, 1, 0, 2, 0, 0, 0]);
        assert!(fids.contains(1) && !fids.contains(2), "{fids:?}");
        assert!(fids.admits(1) && fids.admits(2));
        fids.insert(2);
        assert!(!fids.admits(3), "full");
        assert!(fids.admits(2), "held: the server answers it");
        let mut clunk = vec![0, 0, 0, 0, t::CLUNK, 1, 0];
        clunk.extend(2u32.to_le_bytes());
        fids.note(&clunk, &[0, 0, 0, 0, RCLUNK, 1, 0]);
        assert_eq!(fids.len(), 1);
        assert_eq!(new_fid(&walk(0, 5, 1)), Some(5));
        assert_eq!(new_fid(&walk(5, 5, 1)), None);
        assert_eq!(new_fid(&walk(0, 5, 1)[..10]), None);
    }

    #[test]
    fn the_limit_leaves_the_vmm_its_reserve() {
        assert_eq!(limit_for(u64::MAX), FIDS_PER_SHARE);
        assert_eq!(limit_for(descriptors_wanted()), FIDS_PER_SHARE);
        assert!(limit_for(descriptors_wanted() - 1) < FIDS_PER_SHARE);
        assert_eq!(limit_for(0), MIN_FIDS);
        for soft in [1024, 4096, 8192] {
            let fids = limit_for(soft);
            let shares = layout::VIRTIO_MMIO_SLOTS.len() as u64 * descriptors_for(fids);
            assert!(shares + VMM_RESERVE <= soft, "{soft}: {fids}");
        }
        assert_eq!(limit_for(1024), 52);
    }
}
