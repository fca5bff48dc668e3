//! Bad input against the instrumented C server (testsrv): malformed heads,
//! refused ids and failing handlers close the connection at once, exactly
//! once, with the right reason, and nothing after the bad packet runs.
mod common;
use common::*;
use mario::{AKG_CLOSED, AKG_ERROR};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const STX_HEX: &str = "8eb69af7";
/// How fast a bad frame must close the connection.
const CLOSE_WITHIN: Duration = Duration::from_millis(100);

/// A head with arbitrary fields, followed by `body`.
fn raw(stx: u32, pkglen: u16, id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Head {
        stx,
        pkglen,
        akg_id: id,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(body);
    v
}

/// Valid packets that must never be dispatched when they follow a bad one
/// in the same write: an ECHO and an INFO (each would produce a reply).
fn trailer() -> Vec<u8> {
    let mut v = frame(STX, ID_ECHO, b"must not be echoed");
    v.extend_from_slice(&frame(STX, ID_INFO, &[]));
    v
}

/// Reads until the server closes (EOF or reset) or `within` passes.
/// Returns whether it closed, when, and every byte received.
fn read_until_closed(c: &mut TcpStream, t0: Instant, within: Duration) -> (Option<Duration>, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return (None, got);
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return (Some(t0.elapsed()), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (Some(t0.elapsed()), got),
        }
    }
}

/// One case: a fresh connection does INFO (packets = 1), then `send`s its
/// frames (the close is timed from the last write). The server must close
/// it within `CLOSE_WITHIN`, sending at most a prefix of `reply` meanwhile, and log
/// exactly one close event with (`reason`, `packets`).
struct Case {
    name: &'static str,
    /// Writes, with a pause before each one after the first.
    writes: Vec<Vec<u8>>,
    reply: Vec<u8>,
    reason: u16,
    packets: u32,
}

impl Case {
    fn new(name: &'static str, bad: Vec<u8>) -> Case {
        let mut w = bad;
        w.extend_from_slice(&trailer());
        Case {
            name,
            writes: vec![w],
            reply: Vec::new(),
            reason: AKG_CLOSED,
            packets: 1,
        }
    }
}

/// Runs the cases one after another; returns the serial of each.
fn run_cases(p: &Proc, cases: &[Case]) -> Vec<u32> {
    let mut serials = Vec::new();
    for case in cases {
        let mut c = connect(p.port);
        let (serial, ..) = info(&mut c, STX);
        serials.push(serial);
        let mut t0 = Instant::now();
        for (i, w) in case.writes.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            t0 = Instant::now();
            // The server may already have closed (and reset) after an
            // earlier part: that is for the read below to see.
            let _ = c.write_all(w);
        }
        let (closed, got) = read_until_closed(&mut c, t0, Duration::from_secs(2));
        let closed = closed.unwrap_or_else(|| panic!("{}: not closed within 2 s", case.name));
        assert!(
            closed <= CLOSE_WITHIN,
            "{}: closed after {closed:?}, more than {CLOSE_WITHIN:?}",
            case.name
        );
        // Replies to packets before the bad one may or may not have been
        // flushed before the close; nothing else may arrive.
        assert!(
            case.reply.starts_with(&got),
            "{}: got {} reply bytes {:02x?}, want a prefix of the {} reply bytes",
            case.name,
            got.len(),
            &got[..got.len().min(64)],
            case.reply.len()
        );
        assert_eq!(
            p.wait_close_event(serial, Duration::from_secs(2)),
            Some((case.reason, case.packets)),
            "{}: close event (reason, packets) of serial {serial}",
            case.name
        );
    }
    // Settle, then each connection has exactly one close event.
    std::thread::sleep(Duration::from_millis(50));
    for (case, &serial) in cases.iter().zip(&serials) {
        assert_eq!(
            p.close_event_count(serial),
            1,
            "{}: close events of serial {serial}",
            case.name
        );
    }
    serials
}

/// Waits until `text()` has exactly one line matching `f`; panics showing
/// `what` otherwise.
fn one_line(text: impl Fn() -> String, what: &str, f: impl Fn(&str) -> bool) {
    let t0 = Instant::now();
    loop {
        let t = text();
        let n = t.lines().filter(|l| f(l)).count();
        if n == 1 {
            return;
        }
        if n > 1 || t0.elapsed() > Duration::from_secs(3) {
            panic!("{n} lines for {what} (want exactly 1):\n{t}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finish(p: Proc, serials: &[u32]) {
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    let n = serials.len() as u64;
    assert_eq!(summary(&s.stdout, "connected"), n);
    assert_eq!(summary(&s.stdout, "closed"), n);
    for &serial in serials {
        let key = format!("EV close serial={serial} ");
        assert_eq!(
            s.stdout.lines().filter(|l| l.contains(&key)).count(),
            1,
            "serial {serial}"
        );
    }
}

#[test]
fn malformed_heads_close_at_once() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let echo_body = vec![0x5a; 100];
    let cases = vec![
        Case::new("wrong stx", raw(0x1234_5678, 108, ID_ECHO, &echo_body)),
        Case::new("pkglen 0", raw(STX, 0, ID_ECHO, &[])),
        Case::new("pkglen 7", raw(STX, 7, ID_ECHO, &[])),
        Case::new("pkglen 1501", raw(STX, 1501, ID_ECHO, &[0x11; 1493])),
        Case::new("pkglen 0xffff", raw(STX, 0xffff, ID_ECHO, &[])),
        // The bad head arrives in two parts.
        Case {
            writes: vec![
                raw(0x0bad_0bad, 8, ID_ECHO, &[])[..5].to_vec(),
                [&raw(0x0bad_0bad, 8, ID_ECHO, &[])[5..], &trailer()[..]].concat(),
            ],
            ..Case::new("wrong stx, split head", Vec::new())
        },
    ];
    let serials = run_cases(&p, &cases);
    // One error line each, on stderr.
    let err = |l: &str| l.contains("[ERROR] ") && l.contains("pkg error");
    one_line(|| p.stderr(), "wrong stx", |l| err(l) && l.contains("12345678"));
    one_line(
        || p.stderr(),
        "wrong stx, split",
        |l| err(l) && l.contains("bad0bad"),
    );
    for len in [0u16, 7, 1501, 0xffff] {
        let key = format!("pkglen: {len} ");
        one_line(|| p.stderr(), &key, |l| err(l) && l.contains(&key));
    }
    assert!(!p.stdout().contains("pkg error"), "pkg error logged on stdout");
    finish(p, &serials);
}

#[test]
fn refused_ids_close_at_once() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    // Each with a distinct valid length so that its warning is recognisable.
    let ids: [(u16, usize); 5] = [(0x0100, 12), (0xfffc, 8), (0xfffd, 9), (0xfffe, 10), (0xffff, 11)];
    let names = [
        "unregistered 0x0100",
        "reserved 0xfffc",
        "reserved 0xfffd",
        "reserved 0xfffe",
        "reserved 0xffff",
    ];
    let cases: Vec<Case> = ids
        .iter()
        .zip(names)
        .map(|(&(id, len), name)| Case::new(name, frame(STX, id, &vec![0x42; len - 8])))
        .collect();
    let serials = run_cases(&p, &cases);
    // One warning each, on stdout.
    for (id, len) in ids {
        let key = format!("invalid akg_id: {id} len {len}");
        one_line(|| p.stdout(), &key, |l| l.contains("[WARN] ") && l.contains(&key));
    }
    assert!(
        !p.stderr().contains("invalid akg_id"),
        "invalid akg_id logged on stderr"
    );
    finish(p, &serials);
}

#[test]
fn failing_and_closing_handlers() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let handler = |name, id, reason| Case {
        reason,
        packets: 2,
        ..Case::new(name, frame(STX, id, b"bye"))
    };
    let cases = vec![
        // close_err_conn (twice) and return 0: closed, the packet counted.
        handler("CLOSE0", ID_CLOSE0, AKG_CLOSED),
        // close_conn(closed) and return -1: still closed.
        handler("CLOSEM1", ID_CLOSEM1, AKG_CLOSED),
        // return -1 without closing: error.
        handler("FAIL", ID_FAIL, AKG_ERROR),
    ];
    let serials = run_cases(&p, &cases);
    finish(p, &serials);
}

#[test]
fn packets_before_a_bad_one_run_and_those_after_do_not() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let e1 = frame(STX, ID_ECHO, b"first");
    let e2 = frame(STX, ID_ECHO, &[0x77; 1000]);
    let bads: [(&'static str, Vec<u8>); 4] = [
        ("echo, echo, wrong stx", raw(0xdead_beef, 8, ID_ECHO, &[])),
        ("echo, echo, pkglen 1501", raw(STX, 1501, ID_ECHO, &[])),
        ("echo, echo, reserved id", frame(STX, 0xfffe, &[])),
        ("echo, echo, unregistered id", frame(STX, 0x0200, &[])),
    ];
    let mut cases: Vec<Case> = bads
        .into_iter()
        .map(|(name, bad)| Case {
            reply: [&e1[..], &e2[..]].concat(),
            packets: 3,
            ..Case::new(name, [&e1[..], &e2[..], &bad[..]].concat())
        })
        .collect();
    // A failing handler in the middle of a batch.
    cases.push(Case {
        reply: [&e1[..], &e2[..]].concat(),
        packets: 4,
        reason: AKG_ERROR,
        ..Case::new(
            "echo, echo, FAIL",
            [&e1[..], &e2[..], &frame(STX, ID_FAIL, &[])[..]].concat(),
        )
    });
    let serials = run_cases(&p, &cases);
    finish(p, &serials);
}
