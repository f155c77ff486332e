//! The system calls of the terminal session: termios (raw mode and its
//! restoration), the window size, and the signals the session takes over.

use std::io;
use std::os::fd::RawFd;

/// The signals the session's thread handles (through a signalfd), blocked
/// in every other thread: the window size, and the signals that end
/// microrun, after which the terminal must be restored first.
pub const SIGNALS: [libc::c_int; 5] = [
    libc::SIGWINCH,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
];

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal `fd`, as (rows, columns).
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: a zeroed winsize is valid plain data.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives
    // across the call.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    ok.then_some((size.ws_row, size.ws_col))
}

/// The settings of the terminal `fd`.
pub fn get(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: a zeroed termios is valid plain data.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios into `termios`.
    if unsafe { libc::tcgetattr(fd, &mut termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(termios)
}

/// Applies `termios` to the terminal `fd` at once (async-signal-safe).
pub fn set(fd: RawFd, termios: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr reads one termios from the reference.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `saved` in raw mode: every key reaches the program as typed (no line
/// editing, no echo, no signals from Ctrl-C, Ctrl-Z or Ctrl-\, no flow
/// control, 8 bits). Output processing stays, so that microrun's own
/// messages keep their line ends.
pub fn raw(saved: &libc::termios) -> libc::termios {
    let mut raw = *saved;
    raw.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON
        | libc::IXOFF);
    raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    raw.c_cflag &= !(libc::CSIZE | libc::PARENB);
    raw.c_cflag |= libc::CS8;
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    raw
}

/// The set of [`SIGNALS`].
pub fn signal_set() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid storage; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

/// Changes the calling thread's signal mask (`how`: `SIG_BLOCK`,
/// `SIG_UNBLOCK`, `SIG_SETMASK`); returns the mask it had.
pub fn thread_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset_t is valid storage.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::pthread_sigmask(how, set, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// A signalfd for [`SIGNALS`] (close-on-exec, non-blocking).
pub fn signal_fd() -> io::Result<RawFd> {
    let set = signal_set();
    // SAFETY: `set` is a valid sigset_t; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The signals waiting on the signalfd `fd`, in order.
pub fn read_signals(fd: RawFd) -> Vec<libc::c_int> {
    let mut signals = Vec::new();
    loop {
        // SAFETY: a zeroed signalfd_siginfo is valid plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `len` bytes into `info`.
        let n = unsafe { libc::read(fd, (&raw mut info).cast(), len) };
        if n != len as isize {
            return signals;
        }
        signals.push(info.ssi_signo as libc::c_int);
    }
}

/// Ends the process by `signal`, as if it had never been handled: its
/// default action, unblocked in this thread (the only one that does not
/// block it), then raised. Falls back to `_exit(128 + signal)`.
pub fn die_by(signal: libc::c_int) -> ! {
    // SAFETY: a zeroed sigset_t is valid storage; resetting a signal to
    // its default action and raising it have no memory effects.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
        libc::_exit(128 + signal)
    }
}
