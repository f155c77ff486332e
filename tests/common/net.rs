//! The `--net`, `--net-host` and `-p` cases shared by the engines, on a
//! copy of the `libs` rootfs with busybox's network applets. Every server
//! a case talks to listens on 127.0.0.1 of the machine running the test,
//! nothing else. A test file expands [`net_cases!`] with its engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::{assert_code, microrun, microrun_command, prerequisites, stderr, stdout, Engine};
use sha2::Digest;

/// Expands to one `#[test]` per `--net` case, run with `$engine`.
#[macro_export]
macro_rules! net_cases {
    ($engine:expr) => {
        #[test]
        fn net_host_fetches_10_mib_from_a_host_server() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::net_host_fetches_10_mib_from_a_host_server"
                ),
                common::net::fetch_from_host,
            );
        }
        #[test]
        fn publish_reaches_a_guest_tcp_server() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::publish_reaches_a_guest_tcp_server"),
                common::net::publish_tcp,
            );
        }
        #[test]
        fn publish_udp_reaches_a_guest_listener() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::publish_udp_reaches_a_guest_listener"),
                common::net::publish_udp,
            );
        }
        #[test]
        fn without_net_only_loopback_is_there() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::without_net_only_loopback_is_there"),
                common::net::only_loopback,
            );
        }
        #[test]
        fn net_without_net_host_does_not_reach_host_loopback() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::net_without_net_host_does_not_reach_host_loopback"
                ),
                common::net::no_host_loopback,
            );
        }
        #[test]
        fn net_without_passt_gives_125_naming_the_package() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::net_without_passt_gives_125_naming_the_package"
                ),
                common::net::without_passt,
            );
        }
        #[test]
        fn a_guest_flooding_the_network_stays_bounded() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::a_guest_flooding_the_network_stays_bounded"
                ),
                common::net::flood,
            );
        }
        #[test]
        fn dns_is_answered_by_the_hosts_resolver() {
            common::run_case(
                &$engine,
                concat!(module_path!(), "::dns_is_answered_by_the_hosts_resolver"),
                common::net::dns,
            );
        }
        #[test]
        fn bad_publish_specs_give_125_naming_the_spec() {
            common::run_case(
                &$engine,
                concat!(
                    module_path!(),
                    "::bad_publish_specs_give_125_naming_the_spec"
                ),
                common::net::bad_publish,
            );
        }
    };
}

/// Busybox applets the network cases use, besides the libs rootfs's.
const NET_APPLETS: [&str; 11] = [
    "grep",
    "dd",
    "wget",
    "nc",
    "httpd",
    "ip",
    "timeout",
    "mkdir",
    "sha256sum",
    "wc",
    "nslookup",
];

/// How long a case waits for a guest server or a datagram.
const GUEST_WAIT: Duration = Duration::from_secs(60);

/// The libs rootfs with the network applets, readable by anyone (the
/// chroot engine's unprivileged case), or `None` after saying why not.
pub fn net_rootfs(engine: &Engine) -> Option<&'static Path> {
    let libs = prerequisites(engine)?;
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    Some(ROOTFS.get_or_init(|| super::libs_copy(libs, "net", &NET_APPLETS)))
}

/// A case's rootfs, or `None` after saying why it cannot run: the
/// engine's program (passt for a VM, pasta for the chroot engine) missing
/// here is a skip of its own (the refusal itself is a case).
fn net_prerequisites(engine: &Engine) -> Option<&'static Path> {
    let root = net_rootfs(engine)?;
    let program = if engine.is_vm { "passt" } else { "pasta" };
    if which(program).is_none() {
        test_support::skip_unavailable!(
            "{program} is not installed: apt-get install passt (scripts/install-deps)"
        );
        return None;
    }
    Some(root)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// 10 MiB in no simple pattern.
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..10 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An HTTP/1.0 server on 127.0.0.1 that answers every request with
/// `body`, counting the connections it accepts; it serves until the test
/// process ends.
struct HostServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl HostServer {
    fn start(body: Vec<u8>) -> HostServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let body = Arc::clone(&body);
                std::thread::spawn(move || serve(stream, &body));
            }
        });
        HostServer { port, accepted }
    }
}

fn serve(mut stream: TcpStream, body: &[u8]) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    // The request line and headers, up to the empty line.
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" || line == "\n" {
            break;
        }
        line.clear();
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// A free port on 127.0.0.1 for `-p` (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--net --net-host`: the guest downloads 10 MiB from a server on the
/// host's 127.0.0.1 through host.microrun.internal, bytes checked.
pub fn fetch_from_host(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let body = payload();
    let want = format!("{:x}", sha2::Sha256::digest(&body));
    let server = HostServer::start(body);
    let step = format!(
        "wget -q -O /tmp/f http://host.microrun.internal:{}/file && wc -c < /tmp/f && \
         sha256sum /tmp/f",
        server.port
    );
    let output = microrun(engine, &["--net", "--net-host"], root, &["sh", "-c", &step]);
    assert_code(&output, 0);
    let out = stdout(&output);
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim), Some("10485760"), "{out}");
    let sum = lines.next().unwrap_or_default();
    assert!(sum.starts_with(&want), "{out}");
    assert!(server.accepted.load(Ordering::SeqCst) >= 1);
}

/// Spawns microrun with `options` running `script` in the guest, its
/// stdout piped, and waits until the guest prints `ready`.
fn spawn_guest(engine: &Engine, options: &[&str], root: &Path, script: &str) -> Child {
    let mut command = microrun_command(engine, options, root, &["sh", "-c", script]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn microrun");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep reading, so the guest never blocks on its stdout.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    match rx.recv_timeout(GUEST_WAIT) {
        Ok(line) if line.trim() == "ready" => child,
        other => {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the guest did not get ready ({other:?}); stderr: {}",
                stderr(&output)
            );
        }
    }
}

/// `-p HOSTPORT:80`: a guest `busybox httpd` on port 80 (below 1024)
/// answers a request made to 127.0.0.1:HOSTPORT on the host.
pub fn publish_tcp(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let port = free_port();
    let publish = format!("{port}:80");
    let script = "mkdir -p /tmp/www && echo published > /tmp/www/index.html && \
                  httpd -p 80 -h /tmp/www && echo ready && sleep 600";
    let mut guest = spawn_guest(engine, &["--net", "-p", &publish], root, script);
    let deadline = Instant::now() + GUEST_WAIT;
    let answer = loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if answer.contains("published") => break answer,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => {
                let _ = guest.kill();
                panic!("no answer through -p {publish}: {other:?}");
            }
        }
    };
    let _ = guest.kill();
    let _ = guest.wait();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("published\n"), "{answer}");
}

/// `-p HOSTPORT:5353/udp`: datagrams sent to 127.0.0.1:HOSTPORT reach a
/// guest `nc -u -l`.
pub fn publish_udp(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let port = free_port();
    let publish = format!("{port}:5353/udp");
    let script = "echo ready; nc -u -l -p 5353 | head -n 1";
    let mut guest = spawn_guest(engine, &["--net", "-p", &publish], root, script);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + GUEST_WAIT;
    // Until the guest has its line and ends (head, then nc on the next
    // datagram's SIGPIPE).
    let status = loop {
        let _ = socket.send_to(b"over udp\n", ("127.0.0.1", port));
        if let Some(status) = guest.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = guest.kill();
            panic!("the guest got no datagram through -p {publish}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    let _ = guest.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
}

/// Without `--net`: only `lo` is up (127.0.0.1 answers in the guest; a
/// kernel's tunnel devices such as `sit0` stay down), and there is no
/// route anywhere; the host's server gets no connection.
pub fn only_loopback(engine: &Engine) {
    let Some(root) = net_rootfs(engine) else {
        return;
    };
    let server = HostServer::start(b"host secret\n".to_vec());
    let script = format!(
        "ip -o link | grep -E '[<,]UP[,>]' | while read n name rest; do echo $name; done; \
         ip route; \
         httpd -p 127.0.0.1:8080 -h / && (echo | nc 127.0.0.1 8080 >/dev/null && echo lo-answers); \
         nc 10.0.2.2 {port} </dev/null 2>&1; nc 192.0.2.1 {port} </dev/null 2>&1; true",
        port = server.port
    );
    let output = microrun(engine, &[], root, &["sh", "-c", &script]);
    assert_code(&output, 0);
    let out = stdout(&output);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo:"), "{out}");
    assert_eq!(lines.next(), Some("lo-answers"), "{out}");
    assert!(
        out.matches("Network is unreachable").count() == 2,
        "no route out without --net: {out}"
    );
    assert!(!out.contains("secret"));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

/// `--net` without `--net-host`: the gateway is not the host's loopback
/// and the guest's own 127.0.0.1 is its own: the host's server gets no
/// connection.
pub fn no_host_loopback(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let server = HostServer::start(b"host secret\n".to_vec());
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc 10.0.2.2 {port} 2>&1; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc 127.0.0.1 {port} 2>&1; echo done",
        port = server.port
    );
    let output = microrun(engine, &["--net"], root, &["sh", "-c", &script]);
    assert_code(&output, 0);
    let out = stdout(&output);
    assert!(out.ends_with("done\n"), "{out}");
    assert!(!out.contains("secret"), "{out}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

/// The DNS case's resolver: an address of the network namespace the case
/// makes (TEST-NET-2), not a loopback one, which passt drops.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// The name the DNS case looks up: only the case's resolver knows it.
const PROBE_NAME: &str = "probe.microrun.test";
/// The address the case's resolver answers for [`PROBE_NAME`] (TEST-NET-1).
const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// The most queries the case's resolver records.
const MAX_QUERIES: usize = 64;

/// `--net`: the guest's resolver (10.0.2.3, which passt and pasta forward
/// to the host's first resolver) answers a name that only the case's own
/// resolver knows. passt of 2023-03 drops a loopback resolver, so that
/// resolver cannot listen on 127.0.0.1: the case runs microrun in a
/// network namespace of its own (root only: CI runs as root), whose only
/// interface is a tap device that nothing reads, with [`RESOLVER`] and the
/// default route (passt needs one to enable IPv4), and in a mount
/// namespace in which `/etc/resolv.conf` names [`RESOLVER`]. The resolver
/// is this process, on that address; nothing outside the namespace is
/// involved.
pub fn dns(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    if let Some(why) = namespace_unavailable() {
        if super::nested::inside() {
            // The lane's outer VM has neither iproute2 nor the tun module;
            // the forwarding is passt's, the same as the qemu engine's.
            test_support::skip_not_applicable!("in the nested lane: {why}");
        } else {
            test_support::skip_unavailable!("{why}");
        }
        return;
    }
    let command = microrun_command(engine, &["--net"], root, &["nslookup", PROBE_NAME]);
    // A network namespace belongs to a thread; the processes that thread
    // starts inherit it.
    let (output, asked) =
        std::thread::scope(|s| s.spawn(|| in_a_network_namespace(command)).join().unwrap());
    assert_code(&output, 0);
    let out = stdout(&output);
    assert!(out.contains("10.0.2.3"), "the guest's resolver: {out}");
    assert!(
        out.contains(&format!("Address: {PROBE_ADDR}")),
        "no answer for {PROBE_NAME}: {out}"
    );
    assert!(
        asked.iter().any(|name| name == PROBE_NAME),
        "the case's resolver was not asked for {PROBE_NAME}: {asked:?}"
    );
}

/// Why the DNS case cannot build its network namespace here, if it cannot.
fn namespace_unavailable() -> Option<String> {
    // SAFETY: geteuid only returns the caller's id.
    if unsafe { libc::geteuid() } != 0 {
        return Some("a network namespace with a tap device needs root (CI runs as root)".into());
    }
    if let Some(tool) = ["ip", "unshare", "sh"]
        .into_iter()
        .find(|t| which(t).is_none())
    {
        return Some(format!(
            "{tool} is not installed: apt-get install iproute2 util-linux (scripts/install-deps)"
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun here: load the tun module (modprobe tun)".into());
    }
    None
}

/// Runs `command` in a new network namespace (this thread's) with
/// [`RESOLVER`] on a tap device and this process answering DNS there, and
/// in a new mount namespace (`unshare -m`) where `/etc/resolv.conf` names
/// it. Returns its output and the names the resolver was asked for.
fn in_a_network_namespace(command: std::process::Command) -> (std::process::Output, Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread, which
    // this case started and ends, into a new network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let tap = "mrdns0";
    let address = format!("{RESOLVER}/24");
    let steps: [&[&str]; 5] = [
        &["link", "set", "lo", "up"],
        &["tuntap", "add", tap, "mode", "tap"],
        &["addr", "add", &address, "dev", tap],
        &["link", "set", tap, "up"],
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            tap,
            "onlink",
        ],
    ];
    for args in steps {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {}: {status}", args.join(" "));
    }
    let socket = UdpSocket::bind((RESOLVER, 53)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(resolv.path(), format!("nameserver {RESOLVER}\n")).unwrap();
    // Readable by passt, which reads it after taking nobody's ids.
    std::fs::set_permissions(resolv.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .args(["-m", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(resolv.path())
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let resolver = s.spawn(|| {
            let mut asked = Vec::new();
            let mut query = [0u8; 512];
            while !done.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut query) else {
                    continue;
                };
                if let Some((name, answer)) = dns_answer(&query[..n]) {
                    if asked.len() < MAX_QUERIES {
                        asked.push(name);
                    }
                    let _ = socket.send_to(&answer, from);
                }
            }
            asked
        });
        let output = wrapped.output().expect("run unshare");
        done.store(true, Ordering::SeqCst);
        (output, resolver.join().unwrap())
    })
}

/// The answer to one DNS query: [`PROBE_ADDR`] for an A query of
/// [`PROBE_NAME`], no records for any other question (such as nslookup's
/// AAAA query), with the name asked; `None` for what is not a query with
/// one question.
fn dns_answer(query: &[u8]) -> Option<(String, Vec<u8>)> {
    let count = |at: usize| Some(u16::from_be_bytes(query.get(at..at + 2)?.try_into().ok()?));
    if query.len() < 12 || query[2] & 0x80 != 0 || count(4)? != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).into_owned());
        at += 1 + len;
    }
    let qtype = count(at + 1)?;
    let end = at + 5;
    query.get(..end)?;
    let name = labels.join(".");
    let hit = qtype == 1 && name.eq_ignore_ascii_case(PROBE_NAME);
    // The id, then: a response, recursion desired and available, no error;
    // one question, one answer or none.
    let mut answer = query[..2].to_vec();
    answer.extend([0x81, 0x80, 0, 1, 0, u8::from(hit), 0, 0, 0, 0]);
    answer.extend(&query[12..end]);
    if hit {
        // The question's name (a pointer to offset 12), A, IN, TTL 60 s.
        answer.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        answer.extend(PROBE_ADDR.octets());
    }
    Some((name, answer))
}

/// `--net` with a PATH that has no passt or pasta: 125 before anything
/// starts, naming the Debian package.
pub fn without_passt(engine: &Engine) {
    let Some(root) = net_rootfs(engine) else {
        return;
    };
    let empty = tempfile::tempdir().unwrap();
    let mut command = microrun_command(engine, &["--net"], root, &["true"]);
    command.env("PATH", empty.path());
    let output = command.output().unwrap();
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(err.contains("package `passt`"), "{err}");
}

/// `-p` without `--net`, a malformed `-p`, and a host port already in
/// use: 125, naming the spec, before anything starts.
pub fn bad_publish(engine: &Engine) {
    let Some(root) = net_rootfs(engine) else {
        return;
    };
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = format!("{}:80", taken.local_addr().unwrap().port());
    let cases: [(&[&str], &str); 3] = [
        (&["-p", "8080:80"], "-p 8080:80 needs --net"),
        (&["--net", "-p", "80/sctp"], "-p 80/sctp:"),
        (
            &["--net", "-p", &in_use],
            &format!("-p {in_use}: cannot listen"),
        ),
    ];
    for (options, want) in cases {
        let program = if engine.is_vm { "passt" } else { "pasta" };
        if options.contains(&"--net") && which(program).is_none() {
            continue;
        }
        let output = microrun(engine, options, root, &["true"]);
        assert_code(&output, 125);
        assert!(
            stderr(&output).contains(want),
            "{options:?}: {}",
            stderr(&output)
        );
    }
}

/// As an ordinary user (the chroot engine's rootless case): the fetch
/// through `--net-host` works the same, with pasta as that user.
pub fn fetch_as_an_ordinary_user(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let Some((name, uid, gid)) = super::user::user_with_a_range() else {
        test_support::skip_unavailable!(
            "no ordinary user to run as (scripts/test-user adds microrun-test)"
        );
        return;
    };
    let server = HostServer::start(payload());
    let step = format!(
        "wget -q -O /tmp/f http://host.microrun.internal:{}/file && wc -c < /tmp/f",
        server.port
    );
    let Some(output) = super::user::microrun_as(
        uid,
        gid,
        &["--net", "--net-host"],
        root,
        &["sh", "-c", &step],
    ) else {
        test_support::skip_unavailable!("{name} is not this process's user, and this is not root");
        return;
    };
    assert_code(&output, 0);
    assert_eq!(stdout(&output).trim(), "10485760");
}

/// A guest that sends 16 MiB of UDP as fast as it can to a host socket
/// that never reads (through `--net-host`, so every datagram reaches the
/// host's loopback) ends normally and in time, and microrun's memory
/// stays bounded meanwhile: below the guest's memory (which the kvm
/// engine maps) plus 128 MiB, whatever the flood.
pub fn flood(engine: &Engine) {
    let Some(root) = net_prerequisites(engine) else {
        return;
    };
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let script = format!(
        "dd if=/dev/zero bs=8192 count=2048 2>/dev/null | nc -u 10.0.2.2 {port}; echo survived"
    );
    let mem = "256M";
    let mut command = microrun_command(
        engine,
        &["--net", "--net-host", "--mem", mem],
        root,
        &["sh", "-c", &script],
    );
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn microrun");
    let status_path = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(rss);
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the flooding guest did not end within 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(out, "survived\n", "{err}");
    let bound_kib = (256 + 128) * 1024;
    assert!(
        peak_kib < bound_kib,
        "microrun's RSS reached {peak_kib} KiB during the flood (bound {bound_kib} KiB)"
    );
    drop(sink);
}
