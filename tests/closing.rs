//! Nothing is lost when a connection closes (C API, `tests/c/testsrv.c`):
//! every close that the application or the peer asks for delivers every
//! byte queued before it, then FIN, however large (up to the output cap),
//! as long as the peer reads; a peer that stops reading is cut off by the
//! write timeout with a reset; a write in the close callback of a graceful
//! close is the last data before FIN, and is refused in an abort.
//!
//! The byte counts are exact: FLOOD n=20000 queues 20,000 frames of 1,500
//! bytes, 30,000,000 bytes, far more than one `send` takes.

mod common;
use common::*;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const STX_HEX: &str = "8eb69af7";
/// A 64 MiB output cap: FLOOD n=20000 fits.
const BIG_CAP: &str = "67108864";
const FLOOD_N: u32 = 20_000;
const FRAME: usize = 1500;
const ID_BYE: u16 = 0x000a;

fn flood(n: u32) -> Vec<u8> {
    frame(STX, ID_FLOOD, &n.to_ne_bytes())
}

/// What [`read_floods`] read: the byte count, how the stream ended (Ok:
/// FIN; Err: a reset or a timeout), and the frames after the FLOOD ones.
type Floods = (usize, io::Result<()>, Vec<(u16, Vec<u8>)>);

/// Reads until end of stream, checking that the stream is FLOOD frames,
/// then any other frames (a last word).
fn read_floods(s: &mut TcpStream, within: Duration) -> Floods {
    s.set_read_timeout(Some(within)).unwrap();
    let mut total = 0;
    let mut others = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                total += n;
                pending.extend_from_slice(&buf[..n]);
                let mut off = 0;
                while let Some(h) = Head::parse(&pending[off..]) {
                    let len = h.pkglen as usize;
                    if pending.len() - off < len {
                        break;
                    }
                    assert_eq!(h.stx, STX, "bad frame at byte {}", total - pending.len() + off);
                    if h.akg_id == ID_FLOOD {
                        assert_eq!(len, FRAME);
                        assert!(others.is_empty(), "a FLOOD frame after the last word");
                    } else {
                        others.push((h.akg_id, pending[off + 8..off + len].to_vec()));
                    }
                    off += len;
                }
                pending.drain(..off);
            }
            Err(e) => break Err(e),
        }
    };
    assert!(
        pending.is_empty() || end.is_err(),
        "{} bytes of a torn frame before FIN",
        pending.len()
    );
    (total, end, others)
}

fn one_worker(extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![("TS_STX", STX_HEX), ("TS_WORKERS", "1"), ("TS_OUTLIMIT", BIG_CAP)];
    env.extend_from_slice(extra);
    Proc::testsrv(&env)
}

/// The serial of the connection (testsrv INFO).
fn serial(s: &mut TcpStream) -> u32 {
    info(s, STX).0
}

/// Section 1: the close is asked for right after 30 MB of replies were
/// queued; every initiator must deliver them all, then FIN.
#[test]
fn every_graceful_close_delivers_everything_queued_then_fin() {
    let p = one_worker(&[]);
    // (what follows FLOOD in the same write, the close reason testsrv logs)
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("close_err_conn in a handler", frame(STX, ID_CLOSE0, &[]), 0xfffe),
        ("close_conn + return -1", frame(STX, ID_CLOSEM1, &[]), 0xfffe),
        ("a handler returning -1", frame(STX, ID_FAIL, &[]), 0xffff),
        (
            "close_conn from another thread",
            frame(STX, ID_SUB, &[0, 0, 0, 0, 1, 0, 0, 0]),
            0xfffe,
        ),
    ];
    for (what, then, reason) in cases {
        let mut s = connect(p.port);
        let serial = serial(&mut s);
        let mut w = flood(FLOOD_N);
        w.extend_from_slice(&then);
        s.write_all(&w).unwrap();
        let (n, end, _) = read_floods(&mut s, Duration::from_secs(20));
        assert_eq!(n, FLOOD_N as usize * FRAME, "{what}: bytes before the end");
        assert!(end.is_ok(), "{what}: ended with {end:?}, not FIN");
        let ev = p
            .wait_close_event(serial, Duration::from_secs(5))
            .expect("close event");
        assert_eq!(ev.0, reason, "{what}: close reason");
    }
    p.stop_clean();
}

/// Section 2: the peer's half-close is the end of its input, not of the
/// connection: every reply to what it sent is delivered, then FIN. (A new
/// connection's first request, FIN right behind it, as a client does.)
#[test]
fn half_close_gets_every_reply_then_fin() {
    let p = one_worker(&[]);
    for _ in 0..3 {
        let mut s = connect(p.port);
        s.write_all(&flood(FLOOD_N)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (n, end, _) = read_floods(&mut s, Duration::from_secs(20));
        assert_eq!(n, FLOOD_N as usize * FRAME);
        assert!(end.is_ok(), "ended with {end:?}, not FIN");
    }
    let stopped = p.stop_clean();
    assert_eq!(
        stopped.stdout.matches("reason=65534 ").count(),
        3,
        "three closes as closed"
    );
}

/// A read timeout that fires while output is still queued (the client
/// sends nothing more and has not read yet) closes gracefully: nothing is
/// lost.
#[test]
fn read_timeout_with_output_queued_delivers_everything() {
    let p = one_worker(&[("TS_RTIMEOUT", "1")]);
    let mut s = connect(p.port);
    let serial = serial(&mut s);
    s.write_all(&flood(FLOOD_N)).unwrap();
    // The read timeout (more than 1 s without a byte) closes it meanwhile.
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(5)).unwrap().0,
        0xfffd
    );
    let (n, end, _) = read_floods(&mut s, Duration::from_secs(20));
    assert_eq!(n, FLOOD_N as usize * FRAME);
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
    p.stop_clean();
}

/// A peer that reads nothing after the close is cut off by the write
/// timeout with a reset, and the descriptor goes away.
#[test]
fn a_peer_that_stops_reading_is_reset_by_the_write_timeout() {
    let p = one_worker(&[("TS_WTIMEOUT", "1")]);
    let fds0 = fd_count(p.pid());
    let mut s = connect(p.port);
    let serial = serial(&mut s);
    let mut w = flood(FLOOD_N);
    w.extend_from_slice(&frame(STX, ID_CLOSE0, &[]));
    s.write_all(&w).unwrap();
    assert!(p.wait_close_event(serial, Duration::from_secs(5)).is_some());
    // The descriptor lives on while the output waits...
    assert!(
        fd_count(p.pid()) > fds0,
        "the descriptor went away with output unsent"
    );
    // ... until the write timeout (1 s without progress, checked each tick).
    assert!(
        wait_for(Duration::from_secs(5), || fd_count(p.pid()) == fds0),
        "descriptors {} after the write timeout, {fds0} before",
        fd_count(p.pid())
    );
    let (n, end, _) = read_floods(&mut s, Duration::from_secs(5));
    assert!(n < FLOOD_N as usize * FRAME, "all {n} bytes arrived");
    assert_eq!(end.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
    let s = p.stop_clean();
    assert!(
        s.stdout.contains("the peer read nothing for 1 s"),
        "no reset logged"
    );
}

/// `mario_stop_server` delivers what connections had queued (within its
/// 3 s deadline) before it closes them.
#[test]
fn server_stop_delivers_queued_output() {
    let p = one_worker(&[]);
    let mut s = connect(p.port);
    let serial = serial(&mut s);
    s.write_all(&flood(FLOOD_N)).unwrap();
    // The reply has started: the 30 MB are queued.
    let mut first = [0u8; FRAME];
    s.read_exact(&mut first).unwrap();
    // Read on slowly (about 1.2 s for all of it) while the server stops.
    let reader = std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (n, end) = read_until_end(&mut s, 256 * 1024, Duration::from_millis(10), |_| {});
        (n + FRAME, end)
    });
    let t0 = Instant::now();
    let stopped = p.stop_clean();
    let (n, end) = reader.join().unwrap();
    assert_eq!(n, FLOOD_N as usize * FRAME);
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(
        stopped
            .stdout
            .contains(&format!("EV close serial={serial} reason=65534 ")),
        "closed by the stop"
    );
}

/// Section 3, C: `bufferevent_write` in the close callback of a graceful
/// close (any reason) returns 0 and its bytes are the last before FIN; in
/// an abort (output over the cap) it returns -1 and the connection is
/// reset.
#[test]
fn a_write_in_the_close_callback_is_the_last_data_or_refused() {
    let p = one_worker(&[("TS_LASTWORD", "1"), ("TS_RTIMEOUT", "1")]);
    let bye = |others: &[(u16, Vec<u8>)]| others.to_vec() == vec![(ID_BYE, b"bye".to_vec())];
    // (what the client does, the reason)
    type Act = fn(&mut TcpStream);
    let cases: [(&str, Act, u16); 4] = [
        (
            "close_err_conn",
            |s| s.write_all(&frame(STX, ID_CLOSE0, &[])).unwrap(),
            0xfffe,
        ),
        (
            "handler failure",
            |s| s.write_all(&frame(STX, ID_FAIL, &[])).unwrap(),
            0xffff,
        ),
        (
            "peer half-close",
            |s| s.shutdown(Shutdown::Write).unwrap(),
            0xfffe,
        ),
        ("read timeout", |_| {}, 0xfffd),
    ];
    for (what, act, reason) in cases {
        let mut s = connect(p.port);
        let serial = serial(&mut s);
        s.write_all(&flood(100)).unwrap();
        act(&mut s);
        let (n, end, others) = read_floods(&mut s, Duration::from_secs(10));
        assert_eq!(n, 100 * FRAME + 11, "{what}");
        assert!(end.is_ok(), "{what}: ended with {end:?}");
        assert!(bye(&others), "{what}: {others:?}");
        let ev = p.wait_close_event(serial, Duration::from_secs(5));
        assert_eq!(ev.map(|e| e.0), Some(reason), "{what}: close reason");
        let line = p.close_event(serial).unwrap_or_default();
        assert!(line.ends_with("lastword=0"), "{what}: {line}");
    }
    p.stop_clean();

    // Abort: 1,000 frames against a 100,000-byte cap, never read.
    let p = Proc::testsrv(&[
        ("TS_STX", STX_HEX),
        ("TS_WORKERS", "1"),
        ("TS_OUTLIMIT", "100000"),
        ("TS_LASTWORD", "1"),
    ]);
    let mut s = connect(p.port);
    let serial = serial(&mut s);
    s.write_all(&flood(1000)).unwrap();
    let (_, reason_line) = loop {
        if let Some(l) = p.close_event(serial) {
            break ((), l);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(reason_line.contains("reason=65535 "), "{reason_line}");
    assert!(reason_line.ends_with("lastword=-1"), "{reason_line}");
    let (n, end, others) = read_floods(&mut s, Duration::from_secs(5));
    assert!(n <= 100_000, "{n} bytes past the cap");
    assert!(
        others.is_empty(),
        "the last word went out in an abort: {others:?}"
    );
    assert_eq!(end.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
    p.stop_clean();
}

/// Section 2 with the sample server: 750,000 pipelined LOGINs, then the
/// client's FIN, while the client reads its replies at its own pace (64 KiB
/// a millisecond): every reply arrives, then FIN.
#[test]
fn maritcp_answers_every_pipelined_login_before_a_half_close() {
    const LOGINS: usize = 750_000;
    let p = Proc::maritcp("TIMEOUT 30\nWORKERNUM 2\nCONNNUM 64\n", false);
    let s = connect(p.port);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let one = frame(STX, ID_LOGIN, &7u16.to_ne_bytes());
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 10_000).collect();
        for _ in 0..LOGINS / 10_000 {
            w.write_all(&batch).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (got, end) = read_until_end(&mut s, 64 * 1024, Duration::from_millis(1), |_| {});
    writer.join().unwrap();
    assert_eq!(got, LOGINS * 8, "reply bytes");
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
    p.stop_clean();
}

/// Reads slowly (16 KiB every 10 ms, about 1.6 MB/s) to the end.
fn slow_read(s: &mut TcpStream) -> (usize, io::Result<()>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    read_until_end(s, 16 * 1024, Duration::from_millis(10), |_| {})
}

/// Input that arrives after the close, while the kernel still holds
/// replies the peer has not read (4 MB at 1.6 MB/s), must not turn into a
/// reset that destroys them: the socket stays open until the peer has
/// acknowledged every byte.
#[test]
fn late_input_after_a_close_does_not_reset_undelivered_replies() {
    let p = one_worker(&[]);
    for delay in [300, 1200, 2200] {
        let mut s = connect(p.port);
        let mut w = flood(2700);
        w.extend_from_slice(&frame(STX, ID_CLOSE0, &[]));
        s.write_all(&w).unwrap();
        let mut late = s.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            let _ = late.write_all(&frame(STX, ID_ECHO, b"late"));
        });
        let (n, end) = slow_read(&mut s);
        t.join().unwrap();
        assert_eq!(n, 2700 * FRAME, "late input after {delay} ms");
        assert!(
            end.is_ok(),
            "late input after {delay} ms: ended with {end:?}, not FIN"
        );
    }
    p.stop_clean();
}

/// The stop's delivery survives a peer that keeps sending (a heartbeat
/// every 200 ms) while it reads its last replies.
#[test]
fn server_stop_delivers_to_a_peer_that_keeps_sending() {
    let p = one_worker(&[]);
    let mut s = connect(p.port);
    s.write_all(&flood(2700)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut hb = s.try_clone().unwrap();
    let beat = std::thread::spawn(move || {
        for _ in 0..20 {
            if hb.write_all(&frame(STX, ID_ECHO, b"hb")).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let stopper = std::thread::spawn(move || p.stop_clean());
    let (n, end) = slow_read(&mut s);
    beat.join().unwrap();
    stopper.join().unwrap();
    // The flood, then the echoes of the heartbeats served before the stop
    // (10 bytes each).
    assert!(
        n >= 2700 * FRAME && (n - 2700 * FRAME).is_multiple_of(10),
        "{n} bytes"
    );
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
}

/// Thousands of connections finishing their close at once (more than the
/// 4,096 the worker used to keep open after FIN) do not make a later
/// close reset: each keeps its place in `connnum` until it is done.
#[test]
fn many_closes_at_once_do_not_cut_a_later_one() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX), ("TS_WORKERS", "1"), ("TS_CONNNUM", "8192")]);
    let held: Vec<TcpStream> = (0..4500)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
            c.write_all(&frame(STX, ID_CLOSE0, &[])).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A small receive buffer: the replies wait in the server's kernel.
    let s = connect_small_rcvbuf(p.port);
    let mut s = s;
    s.write_all(&flood(300)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut w = frame(STX, ID_CLOSE0, &[]);
    for _ in 0..200 {
        w.extend_from_slice(&frame(STX, ID_ECHO, &[b'p'; 1000]));
    }
    s.write_all(&w).unwrap();
    let (n, end) = slow_read(&mut s);
    assert_eq!(n, 300 * FRAME);
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
    drop(held);
    p.stop_clean();
}

/// In the close callback, a last write that would pass the output cap is
/// refused (-1, a warning logged) and the close stays graceful: what was
/// queued before arrives, then FIN.
#[test]
fn an_over_cap_last_write_is_refused_and_the_close_stays_graceful() {
    let p = Proc::testsrv(&[
        ("TS_STX", STX_HEX),
        ("TS_WORKERS", "1"),
        ("TS_OUTLIMIT", "1500"),
        ("TS_LASTWORD", "1"),
    ]);
    let mut s = connect(p.port);
    let serial = serial(&mut s);
    let mut w = flood(1);
    w.extend_from_slice(&frame(STX, ID_CLOSE0, &[]));
    s.write_all(&w).unwrap();
    let (n, end, others) = read_floods(&mut s, Duration::from_secs(5));
    assert_eq!((n, others.len()), (FRAME, 0));
    assert!(end.is_ok(), "ended with {end:?}, not FIN");
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(5)).unwrap().0,
        0xfffe
    );
    assert!(p.close_event(serial).unwrap().ends_with("lastword=-1"));
    let stopped = p.stop_clean();
    assert!(
        stopped.stdout.contains("a last write to closing connection"),
        "no warning"
    );
}

/// Packets that reach the server just before the client's reset are still
/// read and handled: the kernel keeps what it received before the RST, so
/// the worker reads it (rather than closing on `EPOLLERR` unread, as a
/// bare epoll loop may).
#[test]
fn packets_sent_just_before_a_reset_are_handled() {
    let srv = one_worker(&[]);
    const CONNS: usize = 20;
    for _ in 0..CONNS {
        let mut s = connect(srv.port);
        let mut burst = Vec::new();
        for _ in 0..3 {
            burst.extend_from_slice(&frame(STX, ID_ECHO, b"before the reset"));
        }
        s.write_all(&burst).unwrap();
        reset(s);
    }
    assert!(
        wait_for(Duration::from_secs(5), || srv
            .stdout()
            .matches("EV close")
            .count()
            == CONNS),
        "{}",
        tail(&srv.stdout(), 20)
    );
    let out = srv.stop_clean().stdout;
    let closes: Vec<&str> = out.lines().filter(|l| l.contains("EV close")).collect();
    assert_eq!(closes.len(), CONNS);
    for l in closes {
        assert!(
            l.contains(" packets=3 "),
            "a packet sent before the reset was lost: {l}"
        );
    }
}
