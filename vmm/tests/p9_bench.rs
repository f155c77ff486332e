//! What a share's request handling costs, without a guest: many
//! Twalk/Tlopen/Tread/Tclunk rounds (and Tlcreate/Twrite/Tunlinkat ones)
//! through the 9p handler, on a thread as the worker runs: unconfined,
//! with the seccomp filter alone (what the worker had before Landlock),
//! and confined as the worker confines itself (capabilities dropped,
//! Landlock, the seccomp filter). `scripts/bench-share` needs a guest
//! that runs Linux user space, which only the nested lane has; this
//! measures the host side directly.
//!
//! Ignored by default (it prints timings, it checks nothing a unit test
//! does not):
//! `cargo test --release -p vmm --test p9_bench -- --ignored --nocapture`.
//! `P9_BENCH_ROUNDS` sets the rounds per measure (default 20000),
//! `P9_BENCH_REPEATS` the measures per mode (default 9).

use std::path::Path;
use std::time::{Duration, Instant};

use vmm::devices::virtio::p9::policy::{t, Policy};
use vmm::devices::virtio::p9::Handler;
use vmm::seccomp::{self, ThreadKind};

/// The T-message of `kind` with `body`, tag 1.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(kind);
    m.extend(1u16.to_le_bytes());
    m.extend(body);
    m
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as u16).to_le_bytes());
    out.extend(text.as_bytes());
}

/// Sends `msg` and checks that the answer is not an error.
fn ok(handler: &mut Handler, msg: &[u8]) {
    let reply = handler.handle(msg).expect("an answer");
    assert_eq!(
        reply[4],
        msg[4] + 1,
        "request {} answered {reply:?}",
        msg[4]
    );
}

fn start(handler: &mut Handler) {
    let mut version = 65560u32.to_le_bytes().to_vec();
    string(&mut version, "9P2000.L");
    ok(handler, &message(t::VERSION, &version));
    let mut attach = 0u32.to_le_bytes().to_vec();
    attach.extend(u32::MAX.to_le_bytes());
    string(&mut attach, "root");
    string(&mut attach, "");
    attach.extend(0u32.to_le_bytes());
    ok(handler, &message(t::ATTACH, &attach));
}

/// `rounds` of walk to `path`, open, read 4 KiB, clunk.
fn read_rounds(handler: &mut Handler, path: &[&str], rounds: u32) -> Duration {
    let mut walk = 0u32.to_le_bytes().to_vec();
    walk.extend(1u32.to_le_bytes());
    walk.extend((path.len() as u16).to_le_bytes());
    for name in path {
        string(&mut walk, name);
    }
    let walk = message(t::WALK, &walk);
    let open = message(t::LOPEN, &[1, 0, 0, 0, 0, 0, 0, 0]);
    let mut read = 1u32.to_le_bytes().to_vec();
    read.extend(0u64.to_le_bytes());
    read.extend(4096u32.to_le_bytes());
    let read = message(t::READ, &read);
    let clunk = message(t::CLUNK, &1u32.to_le_bytes());
    let began = Instant::now();
    for _ in 0..rounds {
        for msg in [&walk, &open, &read, &clunk] {
            ok(handler, msg);
        }
    }
    began.elapsed()
}

/// `rounds` of clone the root, create, write 4 KiB, clunk, unlink.
fn create_rounds(handler: &mut Handler, rounds: u32) -> Duration {
    let mut clone = 0u32.to_le_bytes().to_vec();
    clone.extend(1u32.to_le_bytes());
    clone.extend(0u16.to_le_bytes());
    let clone = message(t::WALK, &clone);
    let mut create = 1u32.to_le_bytes().to_vec();
    string(&mut create, "new");
    create.extend((libc::O_WRONLY as u32).to_le_bytes());
    create.extend(0o644u32.to_le_bytes());
    create.extend(0u32.to_le_bytes());
    let create = message(t::LCREATE, &create);
    let mut write = 1u32.to_le_bytes().to_vec();
    write.extend(0u64.to_le_bytes());
    write.extend(4096u32.to_le_bytes());
    write.extend([7u8; 4096]);
    let write = message(t::WRITE, &write);
    let clunk = message(t::CLUNK, &1u32.to_le_bytes());
    let mut unlink = 0u32.to_le_bytes().to_vec();
    string(&mut unlink, "new");
    unlink.extend(0u32.to_le_bytes());
    let unlink = message(t::UNLINKAT, &unlink);
    let began = Instant::now();
    for _ in 0..rounds {
        for msg in [&clone, &create, &write, &clunk, &unlink] {
            ok(handler, msg);
        }
    }
    began.elapsed()
}

/// How the measuring thread is confined.
#[derive(Clone, Copy)]
enum Mode {
    Unconfined,
    Filtered,
    Worker,
}

/// Microseconds per round of each workload, on a thread of its own,
/// confined as `mode` says.
fn measure(share: &Path, mode: Mode, rounds: u32) -> [f64; 3] {
    // SAFETY: these calls only return the caller's ids.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let policy = Policy {
        read_only: false,
        uid,
        gid,
        guest_uid: 0,
        guest_gid: 0,
    };
    let mut handler = Handler::new(share, policy).unwrap();
    let filter = seccomp::filter(ThreadKind::Fs).unwrap();
    std::thread::spawn(move || {
        match mode {
            Mode::Unconfined => {}
            Mode::Filtered => seccomp::install(ThreadKind::Fs, &filter).unwrap(),
            Mode::Worker => {
                let how = handler.confine(Some(&filter)).unwrap();
                assert!(how.landlock_abi.is_some(), "no Landlock here");
            }
        }
        start(&mut handler);
        let per_round = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(rounds);
        [
            per_round(read_rounds(&mut handler, &["hello"], rounds)),
            per_round(read_rounds(
                &mut handler,
                &["d1", "d2", "d3", "d4", "d5", "d6", "hello"],
                rounds,
            )),
            per_round(create_rounds(&mut handler, rounds)),
        ]
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
fn p9_requests_with_and_without_confinement() {
    let rounds = std::env::var("P9_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path();
    std::fs::write(share.join("hello"), [1u8; 4096]).unwrap();
    let deep = share.join("d1/d2/d3/d4/d5/d6");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("hello"), [1u8; 4096]).unwrap();
    let names = ["read (depth 1)", "read (depth 7)", "create+write+unlink"];
    let modes = [Mode::Unconfined, Mode::Filtered, Mode::Worker];
    let mut runs: Vec<Vec<[f64; 3]>> = Vec::new();
    // Interleaved, so that a busy machine weighs on every mode alike.
    let repeats = std::env::var("P9_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    for _ in 0..repeats {
        runs.push(modes.iter().map(|&m| measure(share, m, rounds)).collect());
    }
    println!(
        "µs per round, fastest (and median) of {} runs of {rounds}: unconfined, \
         seccomp filter alone, worker (no capabilities, Landlock, seccomp filter)",
        runs.len()
    );
    for (i, name) in names.iter().enumerate() {
        let sorted = |mode: usize| {
            let mut v: Vec<f64> = runs.iter().map(|r| r[mode][i]).collect();
            v.sort_by(f64::total_cmp);
            (v[0], v[v.len() / 2])
        };
        let [open, filtered, worker] = [0, 1, 2].map(sorted);
        println!(
            "{name:20} {:7.2} ({:7.2}) {:7.2} ({:7.2}) {:7.2} ({:7.2})  \
             worker vs filter alone {:+.1}%",
            open.0,
            open.1,
            filtered.0,
            filtered.1,
            worker.0,
            worker.1,
            (worker.0 / filtered.0 - 1.0) * 100.0
        );
    }
}
