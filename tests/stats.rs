//! Statistics of the C ABI against the ASan test server (tests/c/testsrv.c):
//! a scripted session counted exactly (connects, packets, refusals, closes
//! by reason, timeouts, bytes in and out, output queued back to 0), read
//! over HTTP from `mario_serve_metrics` (parsed by the Prometheus client's
//! own parser, `make venv`) and, after the stop, from `mario_get_stats` /
//! `mario_get_worker_stats` (testsrv prints them; it also checks their
//! size-versioning and `mario_format_prometheus` itself, each broken
//! promise a VIOLATION). Every wait is bounded.

mod common;
mod scrape;

use common::*;
use scrape::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The `STATS worker=W ...` line testsrv printed after the stop, as
/// numbers by field name.
fn final_stats(stdout: &str, worker: &str) -> HashMap<String, u64> {
    let prefix = format!("STATS worker={worker} ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", tail(stdout, 20)));
    line[prefix.len()..]
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Checks a final `STATS` line against `w` (and `refused`, if given).
fn check_final(line: &HashMap<String, u64>, w: &Want, refused: Option<u64>, workers: u64) {
    let mut want = vec![
        ("connections", w.connections),
        ("accepted", w.accepted),
        ("closed", w.closed),
        ("timeouts", w.timeouts),
        ("errors", w.errors),
        ("packets_in", w.packets_in),
        ("bytes_in", w.bytes_in),
        ("bytes_out", w.bytes_out),
        ("out_queued", 0),
        ("stalls", 0),
        ("pool_queued", 0),
        ("log_dropped", 0),
        ("workers", workers),
        ("stalled_workers", 0),
    ];
    if let Some(r) = refused {
        want.push(("refused", r));
    }
    for (k, v) in want {
        assert_eq!(line.get(k), Some(&v), "{k} in {line:?}");
    }
}

/// Waits (5 s at most) until the scrape says what `want` and `refused` say.
fn wait_scrape(addr: &str, want: &[Want], refused: u64, what: &str) {
    let mut last = Vec::new();
    let ok = wait_for(Duration::from_secs(5), || {
        last = mismatches(&samples(&get(addr).body), want, refused);
        last.is_empty()
    });
    assert!(ok, "{what}: /metrics differs:\n{}", last.join("\n"));
}

/// Frames of 1,500 bytes a FLOOD asks for: 15 MB, far more than the
/// kernel's socket buffers take (they grow to a few MB even when the peer
/// reads nothing), under the output cap of [`OUTLIMIT`].
const FLOOD: u32 = 10_000;
/// testsrv's output cap for the floods: 32 MiB.
const OUTLIMIT: &str = "33554432";

/// `mario_output_queued_bytes` summed over the workers.
fn queued(maddr: &str) -> u64 {
    samples(&get(maddr).body)
        .iter()
        .filter(|(k, _)| k.starts_with("mario_output_queued_bytes "))
        .map(|(_, v)| *v)
        .sum()
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read the flood");
}

#[test]
fn a_scripted_session_is_counted_exactly_scraped_and_reported() {
    let maddr = format!("127.0.0.1:{}", free_port());
    let p = Proc::testsrv(&[
        ("TS_WORKERS", "2"),
        ("TS_CONNNUM", "2"),
        ("TS_RTIMEOUT", "3"),
        ("TS_STX", "8eb69af7"),
        ("TS_METRICS", &maddr),
        ("TS_OUTLIMIT", OUTLIMIT),
    ]);
    // Before any client: every family typed, every sample 0, parsed by
    // the Prometheus client.
    let parsed = parse_with_prometheus_client(&maddr);
    assert_eq!(parsed.status, 200);
    assert!(
        parsed.content_type.starts_with("text/plain; version=0.0.4"),
        "{parsed:?}"
    );
    assert_eq!(parsed.families.len(), 12, "{:?}", parsed.families);
    for (name, (kind, n)) in &parsed.families {
        assert!(name.starts_with("mario_"), "{name}");
        assert!(kind == "counter" || kind == "gauge", "{name} {kind}");
        let per_worker = if name == "mario_connections_closed" { 3 } else { 1 };
        assert_eq!(*n, 2 * per_worker, "{name}: one sample per worker");
    }
    assert!(parsed.samples.values().all(|&v| v == 0), "{parsed:?}");
    assert!(parsed.samples.keys().all(|k| k.contains("worker=")));

    let mut want = [Want::default(); 2];
    // 1. Four clients fill both workers (CONNNUM 2 each); INFO (8 bytes
    // in, 20 out) tells each one's worker.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut s = connect(p.port);
        let (_, _, wi, _) = info(&mut s, STX);
        let w = &mut want[wi as usize];
        w.connections += 1;
        w.accepted_with_info();
        conns.push((s, wi as usize));
    }
    let workers: Vec<usize> = conns.iter().map(|c| c.1).collect();
    // 2. Three more are refused: reset right after accept.
    for _ in 0..3 {
        let mut s = connect(p.port);
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "a connection over CONNNUM was not refused"
        );
    }
    let refused = 3;
    // 3. Echoes of 8, 18, 108 and 1008 bytes on each.
    for (k, (s, _)) in conns.iter_mut().enumerate() {
        for len in [0usize, 10, 100, 1000] {
            let f = frame(STX, ID_ECHO, &vec![b'e'; len]);
            s.write_all(&f).unwrap();
            let (h, b) = read_frame(s).expect("echo");
            assert_eq!((h.akg_id, b.len()), (ID_ECHO, len));
            let w = &mut want[workers[k]];
            w.packets_in += 1;
            w.bytes_in += f.len() as u64;
            w.bytes_out += f.len() as u64;
        }
    }
    wait_scrape(&maddr, &want, refused, "after the echoes");
    let parsed = parse_with_prometheus_client(&maddr);
    assert_eq!(mismatches(&parsed.samples, &want, refused), Vec::<String>::new());
    // 4. Closes: CLOSE0 (closed), FAIL (error), the client's FIN (closed),
    // and the fourth left idle (timeout after 3 s).
    let mut it = conns.into_iter().map(|(s, _)| s);
    let (mut a, mut b, mut c, mut d) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    a.write_all(&frame(STX, ID_CLOSE0, &[])).unwrap();
    assert!(closed_within(&mut a, Duration::from_secs(5)));
    want[workers[0]].closed += 1;
    b.write_all(&frame(STX, ID_FAIL, &[])).unwrap();
    assert!(closed_within(&mut b, Duration::from_secs(5)));
    want[workers[1]].errors += 1;
    for k in [0, 1] {
        let w = &mut want[workers[k]];
        w.packets_in += 1;
        w.bytes_in += 8;
    }
    half_close(&c);
    assert!(closed_within(&mut c, Duration::from_secs(5)));
    want[workers[2]].closed += 1;
    for k in [0, 1, 2] {
        want[workers[k]].connections -= 1;
    }
    // Once their places are free, a fifth client: it times out too.
    wait_scrape(&maddr, &want, refused, "after three closes");
    let mut e = connect(p.port);
    let (_, _, we, _) = info(&mut e, STX);
    want[we as usize].accepted_with_info();
    assert!(closed_within(&mut d, Duration::from_secs(8)), "no read timeout");
    assert!(closed_within(&mut e, Duration::from_secs(8)), "no read timeout");
    want[workers[3]].timeouts += 1;
    want[workers[3]].connections -= 1;
    want[we as usize].timeouts += 1;
    wait_scrape(&maddr, &want, refused, "after the timeouts");
    // 5. Output the client does not read stays queued in the library, then
    // is all counted as sent once it reads it: on an open connection, and
    // on one closed right after (CLOSE0: delivered from the closing set).
    for close in [false, true] {
        let mut g = connect_small_rcvbuf(p.port);
        let n = FLOOD;
        let mut req = frame(STX, ID_FLOOD, &n.to_ne_bytes());
        if close {
            req.extend_from_slice(&frame(STX, ID_CLOSE0, &[]));
        }
        g.write_all(&req).unwrap();
        assert!(
            wait_for(Duration::from_secs(5), || queued(&maddr) > 1_000_000),
            "output not read by the client is not counted as queued"
        );
        read_n(&mut g, n as usize * 1500);
        // Find g's worker from the counts: the one whose accepted grew.
        let s = samples(&get(&maddr).body);
        let wg = (0..2)
            .find(|&i| {
                s[&key("mario_connections_accepted_total", &[("worker", &i.to_string())])] > want[i].accepted
            })
            .expect("the flood's worker");
        let w = &mut want[wg];
        w.accepted += 1;
        w.packets_in += 1 + u64::from(close);
        w.bytes_in += req.len() as u64;
        w.bytes_out += u64::from(n) * 1500;
        if close {
            w.closed += 1;
            assert!(closed_within(&mut g, Duration::from_secs(5)));
        } else {
            w.connections += 1;
            wait_scrape(&maddr, &want, refused, "after a flood read to its end");
            half_close(&g);
            assert!(closed_within(&mut g, Duration::from_secs(5)));
            want[wg].connections -= 1;
            want[wg].closed += 1;
        }
        wait_scrape(&maddr, &want, refused, "after a flood");
    }
    let parsed = parse_with_prometheus_client(&maddr);
    assert_eq!(mismatches(&parsed.samples, &want, refused), Vec::<String>::new());
    // 404 and 405 on the same endpoint.
    assert_eq!(request(&maddr, "GET / HTTP/1.1\r\n\r\n").unwrap().status, 404);
    assert_eq!(
        request(&maddr, "DELETE /metrics HTTP/1.1\r\n\r\n")
            .unwrap()
            .status,
        405
    );
    // After the stop, mario_get_stats and mario_get_worker_stats say the
    // same (nothing was open at the stop).
    let s = p.stop_clean();
    let mut total = Want::default();
    for (i, w) in want.iter().enumerate() {
        check_final(&final_stats(&s.stdout, &i.to_string()), w, None, 1);
        total.connections += w.connections;
        total.accepted += w.accepted;
        total.closed += w.closed;
        total.timeouts += w.timeouts;
        total.errors += w.errors;
        total.packets_in += w.packets_in;
        total.bytes_in += w.bytes_in;
        total.bytes_out += w.bytes_out;
    }
    check_final(&final_stats(&s.stdout, "all"), &total, Some(refused), 2);
    assert_eq!(
        (total.accepted, total.timeouts, total.errors, total.closed),
        (7, 2, 1, 4)
    );
}

/// A connection the peer resets while the library still holds its output:
/// the output is dropped, and no longer counted as queued (open, and
/// closed but still delivering).
#[test]
fn output_dropped_by_a_reset_is_no_longer_queued() {
    let maddr = format!("127.0.0.1:{}", free_port());
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_METRICS", &maddr),
        ("TS_OUTLIMIT", OUTLIMIT),
    ]);
    for close in [false, true] {
        let mut g = connect_small_rcvbuf(p.port);
        let mut req = frame(STX, ID_FLOOD, &FLOOD.to_ne_bytes());
        if close {
            req.extend_from_slice(&frame(STX, ID_CLOSE0, &[]));
        }
        g.write_all(&req).unwrap();
        assert!(wait_for(Duration::from_secs(5), || queued(&maddr) > 1_000_000));
        reset(g);
        assert!(
            wait_for(Duration::from_secs(5), || queued(&maddr) == 0),
            "output dropped by a reset still counted: {}",
            queued(&maddr)
        );
    }
    let s = p.stop_clean();
    let total = final_stats(&s.stdout, "all");
    assert_eq!(total["out_queued"], 0);
    assert_eq!(total["accepted"], 2);
    // The open one ends as an error (its socket failed), the other was
    // closed by CLOSE0 before the reset.
    assert_eq!((total["errors"], total["closed"]), (1, 1), "{total:?}");
}

/// `mario_serve_metrics` refuses an address in use: testsrv exits 5.
#[test]
fn an_address_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    ensure_built();
    let mut child = std::process::Command::new(root().join("target/ctests/testsrv"))
        .env("TS_PORT", free_port().to_string())
        .env("TS_METRICS", &addr)
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("testsrv did not exit: mario_serve_metrics took an address in use");
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.unwrap().code(), Some(5), "{err}");
    assert!(
        err.contains("METRICS_REFUSED")
            && err.contains(&format!("mario_serve_metrics: cannot listen on \"{addr}\"")),
        "{err}"
    );
    drop(taken);
}

/// The thread of `pid` named `name`, if any.
fn thread_named(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
}

/// A thread's context switches (voluntary and not): how often it ran.
fn switches(pid: u32, tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

/// An idle endpoint costs nothing: its thread blocks without a timeout
/// once no client is left (not one wake-up in 2 s), yet answers the next.
#[test]
fn an_idle_endpoint_never_wakes_up() {
    let maddr = format!("127.0.0.1:{}", free_port());
    let p = Proc::testsrv(&[("TS_METRICS", &maddr)]);
    assert_eq!(get(&maddr).status, 200);
    let tid = thread_named(p.pid(), "mario-metrics").expect("a thread named mario-metrics");
    // Let it see the client's close.
    std::thread::sleep(Duration::from_millis(300));
    let before = switches(p.pid(), &tid);
    std::thread::sleep(Duration::from_secs(2));
    let after = switches(p.pid(), &tid);
    assert_eq!(after, before, "the idle metrics thread woke up");
    assert_eq!(get(&maddr).status, 200);
    p.stop_clean();
}
