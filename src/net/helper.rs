//! Starting passt or pasta as microrun's child: it dies with microrun
//! (`PR_SET_PDEATHSIG`), its messages go to `-v` (and the last of them into
//! the error when it ends before it is ready), and it is ready when it
//! writes its pid into a FIFO given as its pid file (`-P`), which both
//! write after setting up: a tap device made, a socket taken. The FIFO's
//! private directory is removed as soon as it is ready. Stopped and
//! reaped when dropped.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::NetError;

/// How long passt or pasta may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of its last lines are kept for an error, and how long each.
const KEPT_LINES: usize = 8;
const LINE_MAX: usize = 400;

/// A private directory for the readiness FIFO, removed when dropped
/// (by [`Helper::start`], once the helper is ready or has failed).
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// A new directory, mode 0700, under `$XDG_RUNTIME_DIR`, or the
    /// temporary directory where that is unset or not writable (a
    /// variable inherited from another user).
    pub fn new() -> Result<PrivateDir, NetError> {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        if let Some(dir) = runtime.and_then(|base| make_temp_dir(&base).ok()) {
            return Ok(dir);
        }
        make_temp_dir(&std::env::temp_dir())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// mkdtemp(3) of `base/microrun-net-XXXXXX`.
fn make_temp_dir(base: &Path) -> Result<PrivateDir, NetError> {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = base.join("microrun-net-XXXXXX").into_os_string().into_vec();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated, writable template that mkdtemp
    // fills in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(sys("mkdtemp"));
    }
    bytes.pop();
    Ok(PrivateDir(PathBuf::from(OsString::from_vec(bytes))))
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running passt or pasta.
pub struct Helper {
    name: String,
    child: Child,
    said: Arc<Mutex<Vec<String>>>,
}

impl Helper {
    /// Starts `program` with `args` (which name `ready`, from
    /// [`Helper::ready_path`], as the pid file), inheriting `inherit`
    /// besides its standard streams, and waits until it is ready. `dir`
    /// is removed before this returns, ready or not: nothing reads the
    /// FIFO again, and a helper let go by [`Helper::release`] would
    /// otherwise leave it behind.
    /// `fifo_owner`: the ids it has changed to when it opens its pid file
    /// (passt run as root; pasta gets `--runas 0:0`).
    pub fn start(
        program: &Path,
        args: Vec<OsString>,
        inherit: Option<RawFd>,
        dir: PrivateDir,
        fifo_owner: Option<(u32, u32)>,
    ) -> Result<Helper, NetError> {
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let ready_path = Self::ready_path(&dir);
        make_fifo(&ready_path, fifo_owner)?;
        // Opened before the child so that its open for writing never waits
        // for a reader.
        let ready = open_nonblocking(&ready_path)?;
        let mut command = Command::new(program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure calls only prctl, getppid and fcntl, which are
        // async-signal-safe, on a descriptor that stays open in the parent
        // until after the spawn.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != parent
                {
                    return Err(std::io::Error::other("microrun exited meanwhile"));
                }
                if let Some(fd) = inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        log::info!("starting {} {}", program.display(), shell_words(&args));
        let mut child = command.spawn().map_err(|source| NetError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let said = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let said = Arc::clone(&said);
            let label = name.clone();
            // Ends at the child's end (EOF); it only logs.
            let _ = std::thread::Builder::new()
                .name(format!("{name}-log"))
                .spawn(move || relay_messages(&label, stderr, &said));
        }
        let mut helper = Helper { name, child, said };
        let ready = helper.wait_ready(&ready);
        // Removed before anything else runs (the kvm engine's filters
        // come later and allow no unlink); on an error too.
        drop(dir);
        ready.map(|()| helper)
    }

    /// Where the pid file (the readiness FIFO) goes in `dir`.
    pub fn ready_path(dir: &PrivateDir) -> PathBuf {
        dir.path().join("ready")
    }

    /// Waits until the pid arrives in the FIFO, the child ends, or
    /// [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self, ready: &OwnedFd) -> Result<(), NetError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut got = Vec::new();
        loop {
            let mut poll = libc::pollfd {
                fd: ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a bounded wait.
            unsafe { libc::poll(&mut poll, 1, 20) };
            let mut buf = [0u8; 32];
            // SAFETY: `buf` is valid for writes of its length; the fd is
            // non-blocking.
            let n = unsafe { libc::read(ready.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got.extend_from_slice(&buf[..n as usize]);
                if got.contains(&b'\n') || got.len() >= 8 {
                    return Ok(());
                }
            } else if n == 0 && !got.is_empty() {
                // The writer closed after writing its pid.
                return Ok(());
            } else if n == 0 {
                // A writer came and went without a pid: no busy loop.
                std::thread::sleep(Duration::from_millis(5));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.not_ready(format!("exited ({status}) before it was ready")))
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(NetError::Sys {
                        call: "waitpid",
                        source,
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!(
                    "was not ready within {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// The error for a helper that did not get ready, with what it said
    /// (its messages arrive a moment after it exits, on its pipe).
    fn not_ready(&mut self, what: String) -> NetError {
        let until = Instant::now() + Duration::from_millis(500);
        while Arc::strong_count(&self.said) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines = self.said.lock().map(|l| l.join("; ")).unwrap_or_default();
        NetError::NotReady {
            program: self.name.clone(),
            what,
            said: if lines.is_empty() {
                String::new()
            } else {
                format!(": {lines}")
            },
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it go without killing or reaping it: for passt once the VM's
    /// end of its socket is closed (it then ends by itself, `--fd`
    /// implying `-1`), on a thread whose seccomp filter (the kvm engine's
    /// supervisor) allows neither `kill` nor `wait4`. microrun exits right
    /// after, and its zombie goes to init. Its private directory is gone
    /// already ([`Helper::start`]).
    pub fn release(self) {
        std::mem::forget(self);
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // It serves until killed (passt with --fd ends with the socket,
        // pasta never by itself).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts passt for a VM engine on one end of a new stream socket pair
/// (`--fd`) and returns it with the other end, the device's backend.
pub fn start_passt(net: &crate::plan::NetPlan) -> Result<(Helper, OwnedFd), NetError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if made != 0 {
        return Err(sys("socketpair"));
    }
    // SAFETY: socketpair succeeded: both descriptors are new and ours.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let dir = PrivateDir::new()?;
    let ready = Helper::ready_path(&dir);
    let runas = nobody_when_root();
    let args = super::passt_args(&net.network, theirs.as_raw_fd(), super::MTU, &ready, runas);
    let passt = Helper::start(&net.program, args, Some(theirs.as_raw_fd()), dir, runas)?;
    // Only passt holds its end now: its death is the device's end of file.
    drop(theirs);
    Ok((passt, ours))
}

/// Logs each line of the helper's stderr at `-v` and keeps the last few.
fn relay_messages(name: &str, stderr: impl Read, said: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than this is cut, the rest read as
        // further lines.
        match (&mut reader).take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            continue;
        }
        log::info!("{name}: {text}");
        if text.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if let Ok(mut kept) = said.lock() {
            if kept.len() == KEPT_LINES {
                kept.remove(0);
            }
            kept.push(text);
        }
    }
}

/// Makes the readiness FIFO, owned by `owner` when given (passt as root
/// opens its pid file after changing to it), in a directory that then lets
/// it through without letting anyone list it.
fn make_fifo(path: &Path, owner: Option<(u32, u32)>) -> Result<(), NetError> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| sys("mkfifo"))?;
    // SAFETY: `c` is a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(sys("mkfifo"));
    }
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    // SAFETY: `c` is a NUL-terminated path.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(sys("chown"));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).map_err(
        |source| NetError::Sys {
            call: "chmod",
            source,
        },
    )
}

/// As root: the ids passt changes to, `nobody`'s (65534 where the
/// system has no entry for it); `None` for an ordinary user, whom passt
/// stays.
fn nobody_when_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid only returns the caller's id.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: getpwnam returns null or a pointer to an entry that stays
    // valid until the next lookup; the two ids are copied out at once.
    let found = unsafe {
        let entry = libc::getpwnam(c"nobody".as_ptr());
        (!entry.is_null()).then(|| ((*entry).pw_uid, (*entry).pw_gid))
    };
    Some(found.unwrap_or((65534, 65534)))
}

fn open_nonblocking(path: &Path) -> Result<OwnedFd, NetError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| sys("open"))?;
    // SAFETY: `c` is a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(sys("open"));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sys(call: &'static str) -> NetError {
    NetError::Sys {
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// The arguments, space-separated, for `-v`.
fn shell_words(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `sh -c script` as a helper, with the FIFO's path as `$1`;
    /// also returns the FIFO's private directory.
    fn start_sh(script: &str) -> (Result<Helper, NetError>, PathBuf) {
        let dir = PrivateDir::new().unwrap();
        let path = dir.path().to_path_buf();
        let ready = Helper::ready_path(&dir);
        let args = vec!["-c".into(), script.into(), "sh".into(), ready.into()];
        let started = Helper::start(Path::new("/bin/sh"), args, None, dir, None);
        (started, path)
    }

    #[test]
    fn a_helper_is_ready_when_it_writes_its_pid_and_is_reaped_when_dropped() {
        let (helper, dir) = start_sh("echo $$ > \"$1\"; exec sleep 100");
        let helper = helper.unwrap();
        let pid = helper.pid();
        drop(helper);
        // Killed and reaped: no such process any more, not even a zombie.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists(), "the private directory is removed");
    }

    #[test]
    fn a_released_helper_leaves_no_private_directory() {
        let (helper, dir) = start_sh("echo $$ > \"$1\"; exec sleep 100");
        let helper = helper.unwrap();
        // Gone once it is ready, before the engine lets it go.
        assert!(!dir.exists(), "{} is left behind", dir.display());
        let pid = helper.pid();
        helper.release();
        assert!(!dir.exists(), "{} is left behind", dir.display());
        // Released, so ended here: no sleep outlives the test.
        // SAFETY: kill and waitpid on our own child, by its pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
        // And a helper that never gets ready leaves none either.
        let (failed, dir) = start_sh("exit 3");
        assert!(failed.is_err());
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    /// Set in the child of [`passt_ends_when_microrun_is_killed`].
    const PASST_CHILD: &str = "MICRORUN_TEST_PASST_CHILD";

    /// passt outlives no microrun killed with SIGKILL, also as root,
    /// where `--runas nobody` clears its `PR_SET_PDEATHSIG`: the kernel
    /// closes microrun's end of the socket, and passt (`--fd`, one
    /// connection) ends with it.
    #[test]
    fn passt_ends_when_microrun_is_killed() {
        const NAME: &str = "net::helper::tests::passt_ends_when_microrun_is_killed";
        let Ok(program) = crate::net::find_program("passt") else {
            test_support::skip_unavailable!("passt is not installed (apt-get install passt)");
            return;
        };
        if std::env::var_os(PASST_CHILD).is_some() {
            // As the kvm engine: passt on its socket, the VM's end held.
            let plan = crate::plan::NetPlan {
                network: crate::net::Network::default(),
                program,
            };
            let (passt, _socket) = start_passt(&plan).expect("start passt");
            println!("passt {}", passt.pid());
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(1);
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
            .env(PASST_CHILD, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The child prints passt's pid once it is ready (at most 10 s),
        // after libtest's `test NAME ... ` on the same line.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let pid = lines
            .find_map(|line| {
                line.ok()?
                    .rsplit_once("passt ")?
                    .1
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
            .expect("the child started passt");
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|s| !s.starts_with(" Z"))
            })
        };
        assert!(running(), "passt (pid {pid}) ended before microrun");
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let still = running();
        if still {
            // SAFETY: kill of the pid the child reported, to clean up.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        assert!(!still, "passt (pid {pid}) outlived microrun by 5 s");
    }

    #[test]
    fn a_helper_that_exits_early_is_an_error_with_its_last_words() {
        let err = start_sh("echo first >&2; echo 'no tap device' >&2; exit 3")
            .0
            .err()
            .expect("not ready");
        let text = err.to_string();
        assert!(
            text.starts_with("--net: sh exited (exit status: 3)"),
            "{text}"
        );
        assert!(text.ends_with(": first; no tap device"), "{text}");
    }
}
