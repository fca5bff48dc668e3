//! Read and write timeouts and the output cap, against testsrv.
//!
//! The library closes an idle connection at the first one-second tick that
//! is at least `read_timeout` seconds after its last read, so between T and
//! T + 1 s after the last byte. The tests accept [T - 1, T + 1 + SLACK]:
//! SLACK covers scheduling on a loaded 2-core machine with sanitizer builds.
mod common;
use common::*;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const T: u64 = 2;
const SLACK: Duration = Duration::from_millis(500);
const REASON_TIMEOUT: u16 = 0xfffd;
const REASON_ERROR: u16 = 0xffff;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Asserts `d` lies in [t - 1, t + 1 + SLACK] seconds.
fn assert_window(what: &str, d: Duration, t: u64) {
    let lo = Duration::from_secs(t - 1);
    let hi = Duration::from_secs(t + 1) + SLACK;
    eprintln!("{what}: closed after {:.3} s (timeout {t} s)", secs(d));
    assert!(
        d >= lo && d <= hi,
        "{what}: closed {:.3} s after the last byte, want {:.1}..{:.1} s",
        secs(d),
        secs(lo),
        secs(hi)
    );
}

fn echo(c: &mut TcpStream, body: &[u8]) {
    c.write_all(&frame(STX, ID_ECHO, body)).unwrap();
    let (h, b) = read_frame(c).expect("ECHO reply");
    assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, body));
}

/// The number of `EV close` lines with `reason=<r>`.
fn closes_with_reason(p: &Proc, r: u16) -> usize {
    let key = format!(" reason={r} ");
    p.stdout()
        .lines()
        .filter(|l| l.starts_with("[INFO] EV close") && l.contains(&key))
        .count()
}

fn set_rcvbuf(s: &TcpStream, bytes: i32) {
    // SAFETY: valid int option value and size on an open socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUF");
}

#[test]
fn idle_connections_time_out() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_RTIMEOUT", "2")]);
    // One connection that sent a packet, one that never sent anything.
    let t_silent = Instant::now();
    let mut silent = connect(p.port);
    let mut c = connect(p.port);
    let t_last = Instant::now();
    let (serial, _, _, _) = info(&mut c, STX);

    let mut c2 = c.try_clone().unwrap();
    let waiter = std::thread::spawn(move || {
        let ok = closed_within(&mut c2, Duration::from_secs(T + 4));
        (ok, t_last.elapsed())
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(T + 4)),
        "silent connection not closed"
    );
    assert_window("silent connection", t_silent.elapsed(), T);
    let (ok, d) = waiter.join().unwrap();
    assert!(ok, "idle connection not closed within {} s", T + 4);
    assert_window("idle connection", d, T);

    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(2)),
        Some((REASON_TIMEOUT, 1))
    );
    // Both were closed as timeouts, and nothing else was closed.
    let t0 = Instant::now();
    while closes_with_reason(&p, REASON_TIMEOUT) < 2 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(closes_with_reason(&p, REASON_TIMEOUT), 2, "{}", p.stdout());
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), 2);
    assert_eq!(summary(&s.stdout, "closed"), 2);
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn active_connection_is_not_timed_out() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_RTIMEOUT", "2")]);
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    // An ECHO every 500 ms for 3T.
    let t0 = Instant::now();
    let mut n = 0u32;
    let mut last = Instant::now();
    while t0.elapsed() < Duration::from_secs(3 * T) {
        last = Instant::now();
        echo(&mut c, &n.to_ne_bytes());
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(n >= 10);
    assert_eq!(p.close_event(serial), None, "active connection was closed");
    // The timer still works once it goes quiet.
    assert!(
        closed_within(&mut c, Duration::from_secs(T + 4)),
        "not closed after going idle"
    );
    assert_window("connection idle after activity", last.elapsed(), T);
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(2)),
        Some((REASON_TIMEOUT, n + 1))
    );
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn zero_timeout_never_closes() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_RTIMEOUT", "0"), ("TS_WTIMEOUT", "0")]);
    let mut silent = connect(p.port);
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    std::thread::sleep(Duration::from_secs(4));
    assert!(!closed_within(&mut c, Duration::from_millis(50)));
    assert!(!closed_within(&mut silent, Duration::from_millis(50)));
    assert_eq!(info(&mut c, STX).0, serial);
    let (s2, _, _, _) = info(&mut silent, STX);
    assert_ne!(s2, serial);
    echo(&mut silent, b"still here");
    assert!(
        !p.stdout().contains("EV close"),
        "a connection was closed:\n{}",
        p.stdout()
    );
    drop((c, silent));
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), 2);
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

const OUTLIMIT: u64 = 262_144;

/// The server's RSS must not grow by more than this while a client refuses
/// to read (the requests below would queue 150 MB without a cap).
const RSS_GROWTH_KIB: u64 = 32 * 1024;

fn assert_cap_warning(p: &Proc) {
    let t0 = Instant::now();
    let found = || {
        p.stdout()
            .lines()
            .any(|l| l.contains("[WARN]") && l.contains("over its cap"))
    };
    while !found() && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        found(),
        "no '[WARN] ... over its cap' line:\n{}",
        tail(&p.stdout(), 20)
    );
}

#[test]
fn flood_over_the_output_cap_is_closed() {
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_RTIMEOUT", "0"),
        ("TS_OUTLIMIT", &OUTLIMIT.to_string()),
    ]);
    let pid = p.pid();
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    let rss0 = rss_kib(pid);
    // 100,000 frames of 1500 bytes: 150 MB if nothing stopped it.
    c.write_all(&frame(STX, ID_FLOOD, &100_000u32.to_ne_bytes()))
        .unwrap();
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(5)),
        Some((REASON_ERROR, 2))
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "client not disconnected"
    );
    let rss1 = rss_kib(pid);
    assert!(
        rss1 < rss0 + RSS_GROWTH_KIB,
        "server RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert_cap_warning(&p);
    // The server is fine afterwards.
    let mut d = connect(p.port);
    echo(&mut d, b"after");
    drop(d);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn pipelined_requests_without_reading_hit_the_cap() {
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_RTIMEOUT", "0"),
        ("TS_OUTLIMIT", &OUTLIMIT.to_string()),
    ]);
    let pid = p.pid();
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    set_rcvbuf(&c, 4096);
    let rss0 = rss_kib(pid);
    // ECHO requests of 1500 bytes, written without ever reading, until the
    // server gives up on us (at most 150 MB, at most 20 s).
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let writer = std::thread::spawn(move || {
        let req = frame(STX, ID_ECHO, &[0x5a; 1492]);
        let batch: Vec<u8> = req.iter().copied().cycle().take(req.len() * 40).collect();
        let t0 = Instant::now();
        let mut sent = 0usize;
        while sent < 150 << 20 && t0.elapsed() < Duration::from_secs(20) {
            match w.write_all(&batch) {
                Ok(()) => sent += batch.len(),
                Err(e) => return (sent, Some(e.kind())),
            }
        }
        (sent, None)
    });
    let ev = p.wait_close_event(serial, Duration::from_secs(20));
    let (sent, err) = writer.join().unwrap();
    let rss1 = rss_kib(pid);
    assert_eq!(
        ev.map(|e| e.0),
        Some(REASON_ERROR),
        "sent {sent} bytes, writer ended with {err:?}"
    );
    assert!(
        matches!(
            err,
            Some(io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
        ),
        "the writer should fail once the server closed: {err:?} after {sent} bytes"
    );
    assert!(
        rss1 < rss0 + RSS_GROWTH_KIB,
        "server RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert_cap_warning(&p);
    drop(c);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn stalled_output_hits_the_write_timeout() {
    const WT: u64 = 2;
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_RTIMEOUT", "0"),
        ("TS_WTIMEOUT", &WT.to_string()),
        ("TS_OUTLIMIT", &(64u64 << 20).to_string()),
    ]);
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    // 20,000 frames of 1500 bytes (30 MB): far more than the socket buffers
    // hold, and under the output cap. The client never reads.
    let t0 = Instant::now();
    c.write_all(&frame(STX, ID_FLOOD, &20_000u32.to_ne_bytes()))
        .unwrap();
    let ev = p.wait_close_event(serial, Duration::from_secs(WT + 5));
    let d = t0.elapsed();
    assert_eq!(ev, Some((REASON_TIMEOUT, 2)), "stalled output not timed out");
    assert_window("stalled output", d, WT);
    // Reading now drains what was sent, then EOF.
    assert!(
        closed_within(&mut c, Duration::from_secs(10)),
        "client not disconnected"
    );
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

/// A write timeout must not close a connection whose output is pending
/// for longer than the timeout but keeps draining (slowly).
#[test]
fn write_timeout_spares_a_slow_reader() {
    const FRAMES: u32 = 12_000;
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_RTIMEOUT", "0"),
        ("TS_WTIMEOUT", "1"),
        ("TS_OUTLIMIT", &(64u64 << 20).to_string()),
    ]);
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    // 18 MB of output, read 200 frames (300 KB) every 50 ms: about 3 s, the
    // kernel buffers hold about 5 MB, so output waits in the library for
    // about 2 s, never stalled for a whole second.
    let t0 = Instant::now();
    c.write_all(&frame(STX, ID_FLOOD, &FRAMES.to_ne_bytes())).unwrap();
    let mut r = io::BufReader::with_capacity(1 << 16, c.try_clone().unwrap());
    let mut hb = [0u8; 8];
    let mut body = vec![0u8; 1492];
    for n in 0..FRAMES {
        if n % 200 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = r.read_exact(&mut hb) {
            panic!(
                "frame {n} after {:?}: {e}; {:?}",
                t0.elapsed(),
                p.wait_close_event(serial, Duration::from_secs(1))
            );
        }
        let h = Head::parse(&hb).unwrap();
        assert_eq!((h.akg_id, h.pkglen), (ID_FLOOD, 1500));
        r.read_exact(&mut body)
            .unwrap_or_else(|e| panic!("frame {n}: {e}"));
    }
    assert!(
        t0.elapsed() > Duration::from_millis(1500),
        "the output drained too fast to test anything"
    );
    assert_eq!(
        p.close_event(serial),
        None,
        "a slowly draining connection was timed out"
    );
    assert_eq!(info(&mut c, STX).0, serial);
    drop((r, c));
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
