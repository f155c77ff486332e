//! The `--net`, `--net-host` and `-p` cases shared by the engines, on a
//! copy of the `libs` rootfs with busybox's network applets. Every server
//! a case talks to listens on 127.0.0.1 of the machine running the test,
//! nothing else. A test file expands [`net_cases!`] with its engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
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
const NET_APPLETS: [&str; 9] = [
    "dd",
    "wget",
    "nc",
    "httpd",
    "ip",
    "timeout",
    "mkdir",
    "sha256sum",
    "wc",
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

/// A case's rootfs, or `None` after saying why it cannot run: passt
/// missing here is a skip of its own (the refusal itself is a case).
fn net_prerequisites(engine: &Engine) -> Option<&'static Path> {
    let root = net_rootfs(engine)?;
    if which("passt").is_none() || which("pasta").is_none() {
        test_support::skip_unavailable!(
            "passt or pasta is not installed: apt-get install passt (scripts/install-deps)"
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

/// Without `--net`: only `lo`, up (127.0.0.1 answers in the guest), and
/// no route anywhere; the host's server gets no connection.
pub fn only_loopback(engine: &Engine) {
    let Some(root) = net_rootfs(engine) else {
        return;
    };
    let server = HostServer::start(b"host secret\n".to_vec());
    let script = format!(
        "ip -o link | while read n name rest; do echo $name; done; \
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
        if options.contains(&"--net") && which("passt").is_none() {
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
