//! Runs mario-bench (as a subprocess, --json-only) in every mode against small
//! in-test servers and checks its counts against what the server saw.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

const STX: u32 = 0x8eb6_9af7;

/// What the test server counted.
#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
}

/// A thread-per-connection server answering every frame with a bare 8-byte
/// head (same stx and akg_id, pkglen 8). With `drop_every = n`, every n-th
/// accepted connection is closed at once without a reply.
fn server(drop_every: Option<u64>) -> (u16, Arc<Stats>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let n = st.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            if drop_every.is_some_and(|d| n % d == 0) {
                st.dropped.fetch_add(1, Ordering::SeqCst);
                let _ = c.shutdown(Shutdown::Both);
                drop(c);
                continue;
            }
            let st = st.clone();
            thread::spawn(move || serve(c, &st));
        }
    });
    (port, stats)
}

fn serve(mut c: TcpStream, st: &Stats) {
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 1 << 16];
    let mut have = 0;
    let mut out = Vec::new();
    loop {
        let n = match c.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut pos = 0;
        out.clear();
        while have - pos >= 8 {
            let h = &buf[pos..pos + 8];
            let stx = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
            let len = u16::from_ne_bytes([h[4], h[5]]) as usize;
            assert_eq!(stx, STX, "bad stx from mario-bench");
            assert!(len >= 8);
            if have - pos < len {
                break;
            }
            // reply: stx, pkglen 8, same akg_id
            out.extend_from_slice(&h[..4]);
            out.extend_from_slice(&8u16.to_ne_bytes());
            out.extend_from_slice(&h[6..8]);
            pos += len;
            // counted before the reply leaves, so it is in by the time the client has it
            st.answered.fetch_add(1, Ordering::SeqCst);
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
        if !out.is_empty() && c.write_all(&out).is_err() {
            return;
        }
    }
}

/// A thread-per-connection server echoing every frame unchanged (bw). With
/// `corrupt_every = n`, every n-th echo (over all connections) has its last
/// byte flipped.
fn echo_server(corrupt_every: Option<u64>) -> (u16, Arc<Stats>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            st.accepted.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            thread::spawn(move || echo(c, &st, corrupt_every));
        }
    });
    (port, stats)
}

fn echo(mut c: TcpStream, st: &Stats, corrupt_every: Option<u64>) {
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 1 << 16];
    let mut have = 0;
    loop {
        let n = match c.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut pos = 0;
        while have - pos >= 8 {
            let len = u16::from_ne_bytes([buf[pos + 4], buf[pos + 5]]) as usize;
            assert!(len >= 8);
            if have - pos < len {
                break;
            }
            let k = st.answered.fetch_add(1, Ordering::SeqCst) + 1;
            if corrupt_every.is_some_and(|e| k.is_multiple_of(e)) {
                buf[pos + len - 1] ^= 0x40;
            }
            pos += len;
        }
        if pos > 0 && c.write_all(&buf[..pos]).is_err() {
            return;
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
    }
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mario-bench"))
        .args(args)
        .output()
        .expect("run mario-bench")
}

/// Runs mario-bench, expects exit status 0 and exactly one stdout line: the JSON.
/// Runs `mario-bench MODE --addr 127.0.0.1:PORT OPTS --json-only --quiet`
/// (`opts`: space-separated; see [`run_json`]).
fn run_mode(mode: &str, port: u16, opts: &str) -> BTreeMap<String, Json> {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![mode, "--addr", &addr];
    args.extend(opts.split_whitespace());
    args.extend_from_slice(&["--json-only", "--quiet"]);
    run_json(&args)
}

fn run_json(args: &[&str]) -> BTreeMap<String, Json> {
    let out = bench(args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "mario-bench {args:?} failed: {stderr}\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json-only prints one line, got: {stdout}");
    match parse_json(lines[0]) {
        Json::Obj(m) => m,
        other => panic!("not an object: {other:?}"),
    }
}

// ---- a small JSON reader (objects, strings, numbers, null, booleans) ----

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Obj(BTreeMap<String, Json>),
}

fn parse_json(s: &str) -> Json {
    let b = s.as_bytes();
    let mut i = 0;
    let v = value(b, &mut i);
    ws(b, &mut i);
    assert_eq!(i, b.len(), "trailing garbage in {s}");
    v
}

fn ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn value(b: &[u8], i: &mut usize) -> Json {
    ws(b, i);
    match b[*i] {
        b'{' => {
            *i += 1;
            let mut m = BTreeMap::new();
            ws(b, i);
            if b[*i] == b'}' {
                *i += 1;
                return Json::Obj(m);
            }
            loop {
                ws(b, i);
                let Json::Str(k) = value(b, i) else {
                    panic!("key expected at {i}")
                };
                ws(b, i);
                assert_eq!(b[*i], b':');
                *i += 1;
                let v = value(b, i);
                assert!(m.insert(k.clone(), v).is_none(), "duplicate key {k}");
                ws(b, i);
                match b[*i] {
                    b',' => *i += 1,
                    b'}' => {
                        *i += 1;
                        return Json::Obj(m);
                    }
                    c => panic!("unexpected '{}' at {i}", c as char),
                }
            }
        }
        b'"' => {
            *i += 1;
            let mut s = String::new();
            while b[*i] != b'"' {
                if b[*i] == b'\\' {
                    *i += 1;
                }
                s.push(b[*i] as char);
                *i += 1;
            }
            *i += 1;
            Json::Str(s)
        }
        b'n' => {
            assert_eq!(&b[*i..*i + 4], b"null");
            *i += 4;
            Json::Null
        }
        b't' => {
            *i += 4;
            Json::Bool(true)
        }
        b'f' => {
            *i += 5;
            Json::Bool(false)
        }
        _ => {
            let st = *i;
            while *i < b.len() && matches!(b[*i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                *i += 1;
            }
            let t = std::str::from_utf8(&b[st..*i]).unwrap();
            Json::Num(t.parse().unwrap_or_else(|_| panic!("bad number '{t}'")))
        }
    }
}

fn num(m: &BTreeMap<String, Json>, k: &str) -> f64 {
    match m.get(k) {
        Some(Json::Num(x)) => *x,
        other => panic!("key {k}: expected a number, got {other:?}"),
    }
}

fn int(m: &BTreeMap<String, Json>, k: &str) -> u64 {
    let x = num(m, k);
    assert!(x >= 0.0 && x.fract() == 0.0, "{k} = {x} is not a count");
    x as u64
}

fn obj<'a>(m: &'a BTreeMap<String, Json>, k: &str) -> &'a BTreeMap<String, Json> {
    match m.get(k) {
        Some(Json::Obj(o)) => o,
        other => panic!("key {k}: expected an object, got {other:?}"),
    }
}

const KINDS: [&str; 7] = ["connect", "eof", "reset", "timeout", "protocol", "io", "mismatch"];

/// Common checks: stable keys present, no server fields without --pid, error kinds add up.
fn common(m: &BTreeMap<String, Json>, mode: &str) {
    assert_eq!(m.get("mode"), Some(&Json::Str(mode.into())));
    for k in [
        "server_cpu_s",
        "server_cpu_us_per_op",
        "rss_before_kib",
        "rss_max_kib",
    ] {
        assert_eq!(m.get(k), Some(&Json::Null), "{k} without --pid");
    }
    for k in [
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "rate",
        "duration_s",
        "client_cpu_s",
    ] {
        assert!(num(m, k) >= 0.0, "{k}");
    }
    let kinds = obj(m, "errors_by_kind");
    let sum: u64 = KINDS.iter().map(|k| int(kinds, k)).sum();
    assert_eq!(sum, int(m, "errors"));
    assert!(num(m, "p50_us") <= num(m, "p99_us"));
    assert!(num(m, "p99_us") <= num(m, "p999_us"));
    assert!(num(m, "p999_us") <= num(m, "max_us"));
}

#[test]
fn rps_counts_every_request() {
    let (port, st) = server(None);
    let m = run_mode(
        "rps",
        port,
        "--conns 20 --depth 4 --duration 1 --warmup 0.5 --threads 2",
    );
    common(&m, "rps");
    assert_eq!(
        (int(&m, "conns"), int(&m, "depth"), int(&m, "threads")),
        (20, 4, 2)
    );
    assert_eq!(int(&m, "errors"), 0);
    let total = int(&m, "requests_total");
    assert_eq!(
        total,
        st.answered.load(Ordering::SeqCst),
        "every answered request is counted"
    );
    assert_eq!(int(&m, "sent_total"), total, "every request sent was answered");
    let req = int(&m, "requests");
    assert!(
        req > 0 && req < total,
        "measured {req} of {total} (warm-up excluded)"
    );
    assert_eq!(int(&m, "connections_total"), 20);
    assert_eq!(st.accepted.load(Ordering::SeqCst), 20);
    let rate = num(&m, "rate");
    let dur = num(&m, "duration_s");
    assert!((0.9..3.0).contains(&dur), "duration {dur}");
    assert!(
        (rate * dur - req as f64).abs() <= 1.0 + req as f64 * 1e-4,
        "{rate} x {dur} != {req}"
    );
    assert!(num(&m, "p50_us") > 0.0);
}

#[test]
fn rps_long_bodies_and_default_depth() {
    // 1000-byte bodies: requests and pipelined replies cross read boundaries
    let (port, st) = server(None);
    let m = run_mode(
        "rps",
        port,
        "--conns 3 --depth 8 --body 1000 --duration 0.5 --warmup 0",
    );
    common(&m, "rps");
    assert_eq!(int(&m, "errors"), 0);
    assert_eq!(int(&m, "requests_total"), st.answered.load(Ordering::SeqCst));
    // no warm-up: only the drain (at most conns x depth) is left out
    let (req, total) = (int(&m, "requests"), int(&m, "requests_total"));
    assert!(req + 24 >= total && req <= total, "{req} of {total}");
    assert_eq!(num(&m, "warmup_s"), 0.0);
}

#[test]
fn cps_counts_every_connection() {
    let (port, st) = server(None);
    let m = run_mode("cps", port, "--concurrency 10 --duration 1 --warmup 0.3 --rst");
    common(&m, "cps");
    assert_eq!(int(&m, "concurrency"), 10);
    assert_eq!(int(&m, "errors"), 0);
    let total = int(&m, "connections_total");
    assert_eq!(
        total,
        st.accepted.load(Ordering::SeqCst),
        "connections = what the server accepted"
    );
    assert_eq!(int(&m, "cycles_total"), total);
    assert_eq!(int(&m, "requests_total"), st.answered.load(Ordering::SeqCst));
    assert_eq!(int(&m, "requests_total"), total);
    let c = int(&m, "connections");
    assert!(c > 0 && c < total, "measured {c} of {total}");
}

#[test]
fn hold_keeps_every_connection() {
    let (port, st) = server(None);
    let m = run_mode(
        "hold",
        port,
        "--conns 200 --churn 40 --sends 100 --duration 1.5 --threads 2",
    );
    common(&m, "hold");
    assert_eq!(int(&m, "held"), 200);
    assert_eq!(int(&m, "failures_total"), 0);
    assert_eq!(int(&m, "errors"), 0);
    assert_eq!(obj(&m, "failures"), obj(&m, "errors_by_kind"));
    assert_eq!(int(&m, "setup_failures"), 0);
    // paced: 100 sends and 40 reopens a second over the measured window
    let dur = num(&m, "duration_s");
    let req = int(&m, "requests") as f64;
    assert!(
        req > 50.0 * dur && req <= 100.0 * dur + 2.0,
        "about {} sends answered, got {req}",
        100.0 * dur
    );
    let re = int(&m, "reconnects");
    assert!(
        re as f64 > 20.0 * dur && re as f64 <= 40.0 * dur + 2.0,
        "about {} reopens, got {re}",
        40.0 * dur
    );
    assert!((num(&m, "rate") - req / dur).abs() < 0.1);
    assert_eq!(int(&m, "requests_total"), st.answered.load(Ordering::SeqCst));
    assert_eq!(int(&m, "sent_total"), int(&m, "requests_total"));
    assert_eq!(int(&m, "connections_total"), st.accepted.load(Ordering::SeqCst));
    assert!(int(&m, "connections_total") >= 200 + re);
    assert!(num(&m, "churn_p50_us") > 0.0);
}

#[test]
fn hold_counts_dropped_connections() {
    let (port, st) = server(Some(10));
    let m = run_mode("hold", port, "--conns 100 --churn 0 --sends 50 --duration 1");
    common(&m, "hold");
    assert_eq!(st.accepted.load(Ordering::SeqCst), 100);
    assert_eq!(st.dropped.load(Ordering::SeqCst), 10);
    assert_eq!(int(&m, "held"), 90);
    assert_eq!(int(&m, "failures_total"), 10);
    assert_eq!(int(&m, "setup_failures"), 10);
    let f = obj(&m, "failures");
    assert_eq!(int(f, "eof") + int(f, "reset") + int(f, "connect"), 10, "{f:?}");
    assert_eq!(int(&m, "requests_total"), st.answered.load(Ordering::SeqCst));
    assert!(int(&m, "requests") > 0);
}

#[test]
fn bw_counts_every_packet_and_byte() {
    let (port, st) = echo_server(None);
    let m = run_mode(
        "bw",
        port,
        "--conns 6 --depth 4 --size 600 --duration 1 --warmup 0.3 --threads 2",
    );
    common(&m, "bw");
    assert_eq!(
        (
            int(&m, "conns"),
            int(&m, "depth"),
            int(&m, "size"),
            int(&m, "threads")
        ),
        (6, 4, 600, 2)
    );
    assert_eq!(int(&m, "errors"), 0);
    assert_eq!(int(&m, "failures_total"), 0);
    assert_eq!(int(&m, "mismatches"), 0);
    assert_eq!(obj(&m, "failures"), obj(&m, "errors_by_kind"));
    let total = int(&m, "packets_total");
    assert_eq!(total, st.answered.load(Ordering::SeqCst), "every echo is counted");
    assert_eq!(int(&m, "sent_total"), total, "every packet sent was echoed");
    assert_eq!(int(&m, "connections_total"), 6);
    let (pk, dur) = (int(&m, "packets"), num(&m, "duration_s"));
    assert!(pk > 0 && pk < total, "measured {pk} of {total}");
    assert!((num(&m, "rate") * dur - pk as f64).abs() <= 1.0 + pk as f64 * 1e-4);
    // Bytes in the window: whole packets, give or take the packets in flight
    // when it opened and closed (6 x 4 each way).
    let (out, inn) = (int(&m, "bytes_out"), int(&m, "bytes_in"));
    for (what, b) in [("bytes_out", out), ("bytes_in", inn)] {
        assert!(
            b.abs_diff(pk * 600) <= 2 * 24 * 600,
            "{what} {b} for {pk} packets"
        );
    }
    let g = |b: u64| b as f64 * 8.0 / dur / 1e9;
    assert!((num(&m, "gbit_out") - g(out)).abs() < 1e-3);
    assert!((num(&m, "gbit_in") - g(inn)).abs() < 1e-3);
    assert_eq!(m.get("server_cpu_s_per_gb"), Some(&Json::Null), "without --pid");
}

#[test]
fn bw_counts_mismatched_echoes() {
    // One echo in 200 has a byte flipped: each is a failure, its connection is
    // closed and opened again.
    let (port, st) = echo_server(Some(200));
    let m = run_mode("bw", port, "--conns 4 --size 100 --duration 1 --warmup 0");
    common(&m, "bw");
    let bad = int(&m, "mismatches");
    assert!(bad > 0, "no mismatch counted");
    assert_eq!(int(obj(&m, "failures"), "mismatch"), bad);
    assert_eq!(int(&m, "failures_total"), int(&m, "errors"));
    let corrupted = st.answered.load(Ordering::SeqCst) / 200;
    assert!(
        bad <= corrupted,
        "{bad} mismatches for {corrupted} corrupted echoes"
    );
    assert!(int(&m, "connections_total") > 4, "closed and opened again");
    assert_eq!(int(&m, "connections_total"), st.accepted.load(Ordering::SeqCst));
    assert!(int(&m, "packets") > 0);
}

#[test]
fn human_table_then_json() {
    let (port, _st) = server(None);
    let addr = format!("127.0.0.1:{port}");
    let out = bench(&[
        "rps",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() > 3, "{stdout}");
    assert!(lines[0].starts_with("mario-bench rps"));
    assert!(matches!(parse_json(lines.last().unwrap()), Json::Obj(_)));
    assert!(out.stderr.is_empty(), "--quiet: no progress");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &[][..],
        &["rps"][..],
        &["nope", "--addr", "127.0.0.1:1"][..],
        &["rps", "--addr", "127.0.0.1:1", "--depth", "0"][..],
        &["cps", "--addr", "127.0.0.1:1", "--conns", "5"][..],
        &["hold", "--addr", "127.0.0.1:1", "--bogus"][..],
        &["bw", "--addr", "127.0.0.1:1", "--size", "8"][..],
        &["bw", "--addr", "127.0.0.1:1", "--body", "8"][..],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn no_server_exit_2() {
    // a port nobody listens on
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for mode in ["rps", "cps", "hold", "bw"] {
        let out = bench(&[mode, "--addr", &addr, "--duration", "1", "--json-only", "--quiet"]);
        assert_eq!(out.status.code(), Some(2), "{mode}");
        assert!(out.stdout.is_empty());
    }
}
