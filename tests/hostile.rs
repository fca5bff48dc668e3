//! Hostile clients: slow senders and descriptor exhaustion.
mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// A client trickling one byte every T/2 cannot hold its slot: a packet
/// must complete within the read timeout T of its first byte.
#[test]
fn slowloris_is_closed_within_the_read_timeout() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_RTIMEOUT", "2")]);
    let mut c = connect(p.port);
    let (serial, ..) = info(&mut c, STX);
    let f = frame(STX, ID_ECHO, &[7u8; 20]);
    let t0 = Instant::now();
    let mut closed_at = None;
    for b in &f {
        if c.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        if closed_within(&mut c, Duration::from_millis(1000)) {
            closed_at = Some(t0.elapsed());
            break;
        }
    }
    let at = closed_at.expect("a trickling client was never closed");
    assert!(
        at <= Duration::from_secs(3) + Duration::from_millis(300),
        "closed after {at:?}, want <= T + 1 s"
    );
    assert!(
        at >= Duration::from_millis(1900),
        "closed after {at:?}, before the timeout"
    );
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(2)),
        Some((0xfffd, 1))
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(p.close_event_count(serial), 1);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

/// Out of descriptors: extra clients are refused at once (not left
/// hanging), the server does not spin, logs about it at most once a
/// second, and serves again as soon as descriptors free up.
#[test]
fn out_of_descriptors_refuses_without_spinning() {
    let p = Proc::testsrv_nofile(&[("TS_STX", "8eb69af7"), ("TS_CONNNUM", "1000")], 64);
    let pid = p.pid();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let mut c = connect(p.port);
        c.write_all(&frame(STX, ID_ECHO, b"x")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match read_frame(&mut c) {
            Ok(_) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    assert!(
        held.len() >= 40 && refused >= 100,
        "held {} refused {refused}",
        held.len()
    );
    let cpu0 = cpu_seconds(pid);
    // More clients arrive while the server is out of descriptors.
    let t0 = Instant::now();
    let mut extra = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        extra.push(connect(p.port));
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut extra {
        assert!(
            closed_within(c, Duration::from_millis(500)),
            "an extra client was left hanging"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(pid) - cpu0;
    assert!(
        cpu < 0.05 * 5.0,
        "server used {cpu:.3} s of CPU in 5 s while out of descriptors"
    );
    // At most one log line a second about it (the run so far took ~5 s
    // plus the initial flood).
    let lines = p.stderr().lines().filter(|l| l.contains("accept:")).count();
    let secs = t0.elapsed().as_secs() as usize + 3;
    assert!(
        lines >= 1 && lines <= secs,
        "{lines} log lines about EMFILE in ~{secs} s"
    );
    // Free descriptors: a new client is served within 100 ms.
    drop(held);
    drop(extra);
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    let mut c = connect(p.port);
    c.write_all(&frame(STX, ID_ECHO, b"back")).unwrap();
    let (h, b) = read_frame(&mut c).expect("served again once descriptors are free");
    assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, &b"back"[..]));
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "took {:?}",
        t1.elapsed()
    );
    drop(c);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
