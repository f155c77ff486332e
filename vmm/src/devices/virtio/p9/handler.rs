//! One share's requests, answered, without the transport: microrun's
//! policy in front of the `p9` crate's server, the share's root held open
//! as a fid of the handler's own, and the guest's fids counted.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use seccompiler::BpfProgram;

use super::confine::{self, ConfineError, Confinement};
use super::fids::{self, Fids};
use super::policy::{self, name_at, t, u32_at, Policy, Verdict, HEADER_LEN, RLERROR, ROOT_FID};
use crate::seccomp::{self, ThreadKind};

/// Largest request read from a chain. The server negotiates at most
/// 64 KiB of payload plus its header (its `MAX_MESSAGE_SIZE`) and reads
/// no further into a request than that; anything past it is ignored.
const MAX_REQUEST: usize = 64 * 1024 + 64;
/// The largest message size the server takes (its `MAX_MESSAGE_SIZE`),
/// and the smallest (its `MIN_MESSAGE_SIZE`).
const MAX_MSIZE: u32 = 64 * 1024 + 24;
const MIN_MSIZE: u32 = 256;
/// The protocol the server speaks.
const VERSION: &[u8] = b"9P2000.L";
/// Tgetattr's mask for the basic fields, the qid among them.
const GETATTR_BASIC: u64 = 0x7ff;

/// What the handler does with one request.
enum Answer {
    /// `reply` holds the answer.
    Reply,
    /// Answer `Rlerror` with this errno.
    Error(u32),
    /// No answer.
    None,
}

/// One share's requests, answered: the policy in front of the server,
/// the share's root held open, the guest's fids counted, and the buffers
/// kept from one request to the next.
pub struct Handler {
    server: p9::Server,
    policy: Policy,
    /// The share's root, opened once; the server holds it as
    /// [`ROOT_FID`] and every attach is a walk from there.
    root: OwnedFd,
    fids: Fids,
    request: Vec<u8>,
    reply: Vec<u8>,
    /// Answers to the handler's own requests.
    internal: Vec<u8>,
}

impl Handler {
    /// A server for `root`, as `policy` says: opens the share's root and
    /// attaches the server to it (before any filter: it resolves a path).
    pub fn new(root: &Path, policy: Policy) -> std::io::Result<Self> {
        let path = CString::new(root.as_os_str().as_bytes())?;
        // SAFETY: a NUL-terminated path; the call returns a new
        // descriptor or -1.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just opened and nothing else owns it.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        // The server opens its root by path once, here: through our
        // descriptor, so it is the directory we hold whatever happened to
        // the path since.
        let through_fd = format!("/proc/self/fd/{fd}/.");
        // The invoking user's files look like root's in the guest, or
        // like those of the user the program runs as.
        let uid_map = BTreeMap::from([(policy.uid, policy.guest_uid)]);
        let gid_map = BTreeMap::from([(policy.gid, policy.guest_gid)]);
        let mut handler = Self {
            server: p9::Server::new(Path::new(&through_fd), uid_map, gid_map)?,
            policy,
            root,
            fids: Fids::new(fids::per_share_limit()),
            request: Vec::new(),
            reply: Vec::new(),
            internal: Vec::new(),
        };
        let mut version = MAX_MSIZE.to_le_bytes().to_vec();
        put_str(&mut version, VERSION);
        handler.call(t::VERSION, &version)?;
        let mut attach = ROOT_FID.to_le_bytes().to_vec();
        attach.extend(ROOT_FID.to_le_bytes());
        put_str(&mut attach, b"");
        put_str(&mut attach, b"");
        attach.extend(0u32.to_le_bytes());
        handler.call(t::ATTACH, &attach)?;
        Ok(handler)
    }

    /// The most fids the guest may hold on this share.
    pub fn fid_limit(&self) -> usize {
        self.fids.limit()
    }

    /// Confines the calling thread to this share, for good: drops its
    /// capabilities, restricts it with Landlock to the share's root
    /// (where the kernel has it), then installs `filter`, the
    /// file-system allow-list, when there is one. The worker does this
    /// first thing.
    pub fn confine(&self, filter: Option<&BpfProgram>) -> Result<Confinement, ConfineError> {
        confine::drop_capabilities()?;
        let landlock_abi = confine::landlock(self.root.as_fd(), self.policy.read_only)?;
        if let Some(filter) = filter {
            seccomp::install(ThreadKind::Fs, filter)?;
        }
        Ok(Confinement { landlock_abi })
    }

    /// Reads one request (at most `MAX_REQUEST` bytes of it), checks it
    /// and answers it; `None` when there is no answer to give (no header,
    /// or the server could not decode it).
    pub fn handle(&mut self, mut reader: impl Read) -> Option<&[u8]> {
        self.request.clear();
        self.reply.clear();
        if let Err(e) = reader
            .by_ref()
            .take(MAX_REQUEST as u64)
            .read_to_end(&mut self.request)
        {
            log::debug!("9p: request unreadable: {e}");
            return None;
        }
        if self.request.len() < HEADER_LEN {
            return None;
        }
        let answer = match self.request[4] {
            t::VERSION => self.version(),
            t::ATTACH => self.attach(),
            _ => self.serve(),
        };
        match answer {
            Answer::Reply => Some(&self.reply),
            Answer::Error(errno) => {
                self.reply.clear();
                self.reply
                    .extend_from_slice(&policy::error_reply(&self.request, errno));
                Some(&self.reply)
            }
            Answer::None => None,
        }
    }

    /// Any request but a version or an attach: the policy's, then the
    /// server's.
    fn serve(&mut self) -> Answer {
        let kind = self.request[4];
        let answer = match policy::check(&mut self.request, &self.policy) {
            Verdict::Drop => Answer::None,
            Verdict::Refuse(errno) => Answer::Error(errno),
            Verdict::Serve => match fids::new_fid(&self.request) {
                Some(fid) if !self.fids.admits(fid) => Answer::Error(policy::EMFILE),
                _ => match self
                    .server
                    .handle_message(&mut &self.request[..], &mut self.reply)
                {
                    Ok(()) => {
                        self.fids.note(&self.request, &self.reply);
                        Answer::Reply
                    }
                    Err(e) => {
                        log::debug!("9p: request not answered: {e}");
                        Answer::None
                    }
                },
            },
        };
        // A remove clunks its fid whatever its outcome (the server keeps
        // it: it answers every remove EOPNOTSUPP, Linux unlinks instead).
        if kind == t::REMOVE {
            if let Some(fid) = u32_at(&self.request, HEADER_LEN) {
                self.clunk(fid);
            }
        }
        answer
    }

    /// Tversion (msize[4] version[s]): a new session. The server keeps
    /// its own, with the share's root; the guest's fids are clunked.
    fn version(&mut self) -> Answer {
        let Some(msize) = u32_at(&self.request, HEADER_LEN) else {
            return Answer::Error(policy::EINVAL);
        };
        if msize < MIN_MSIZE {
            return Answer::Error(policy::EINVAL);
        }
        for fid in self.fids.drain() {
            let _ = self.call(t::CLUNK, &fid.to_le_bytes());
        }
        let asked = name_at(&self.request, HEADER_LEN + 4).map(|(text, _)| text);
        let mut body = msize.min(MAX_MSIZE).to_le_bytes().to_vec();
        put_str(
            &mut body,
            if asked == Some(VERSION) {
                VERSION
            } else {
                b"unknown"
            },
        );
        self.reply = frame(t::VERSION + 1, tag(&self.request), &body);
        Answer::Reply
    }

    /// Tattach (fid[4] afid[4] uname[s] aname[s] n_uname[4]): the fid
    /// becomes a copy of the share's root, never a lookup of its path.
    fn attach(&mut self) -> Answer {
        let Some(fid) = u32_at(&self.request, HEADER_LEN) else {
            return Answer::Error(policy::EINVAL);
        };
        if fid == ROOT_FID {
            return Answer::Error(policy::EBADF);
        }
        if !self.fids.admits(fid) {
            return Answer::Error(policy::EMFILE);
        }
        // A walk of no names from the root: a copy of its descriptor.
        let mut walk = ROOT_FID.to_le_bytes().to_vec();
        walk.extend(fid.to_le_bytes());
        walk.extend(0u16.to_le_bytes());
        if let Err(e) = self.call(t::WALK, &walk) {
            return Answer::Error(errno_of(&e));
        }
        self.fids.insert(fid);
        let mut getattr = fid.to_le_bytes().to_vec();
        getattr.extend(GETATTR_BASIC.to_le_bytes());
        if let Err(e) = self.call(t::GETATTR, &getattr) {
            self.clunk(fid);
            return Answer::Error(errno_of(&e));
        }
        // Rgetattr: header, valid[8], qid[13].
        let Some(qid) = self.internal.get(HEADER_LEN + 8..HEADER_LEN + 21) else {
            self.clunk(fid);
            return Answer::Error(policy::EINVAL);
        };
        self.reply = frame(t::ATTACH + 1, tag(&self.request), qid);
        Answer::Reply
    }

    /// Clunks `fid` in the server, if the guest holds it.
    fn clunk(&mut self, fid: u32) {
        if fid != ROOT_FID && self.fids.contains(fid) {
            self.fids.remove(fid);
            let _ = self.call(t::CLUNK, &fid.to_le_bytes());
        }
    }

    /// Sends the server a request of the handler's own; its answer is in
    /// `internal`, an `Rlerror` becomes the error.
    fn call(&mut self, kind: u8, body: &[u8]) -> std::io::Result<()> {
        let request = frame(kind, 0, body);
        self.internal.clear();
        self.server
            .handle_message(&mut &request[..], &mut self.internal)?;
        match self.internal.get(4) {
            Some(&answer) if answer == kind + 1 => Ok(()),
            Some(&RLERROR) => {
                let errno = u32_at(&self.internal, HEADER_LEN).unwrap_or(libc::EIO as u32);
                Err(std::io::Error::from_raw_os_error(errno as i32))
            }
            _ => Err(std::io::Error::other(format!(
                "the 9p server answered request {kind} with something else"
            ))),
        }
    }
}

/// The errno to answer the guest for an error of the server's.
fn errno_of(e: &std::io::Error) -> u32 {
    e.raw_os_error().map_or(libc::EIO as u32, |n| n as u32)
}

/// A message of `kind` with `tag` and `body`.
fn frame(kind: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut out = ((HEADER_LEN + body.len()) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend(tag.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn tag(msg: &[u8]) -> u16 {
    u16::from_le_bytes([msg[5], msg[6]])
}

fn put_str(out: &mut Vec<u8>, text: &[u8]) {
    out.extend((text.len() as u16).to_le_bytes());
    out.extend_from_slice(text);
}
