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
        // A refused client may already be reset when it writes.
        let _ = c.write_all(&frame(STX, ID_ECHO, b"x"));
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
    while t0.elapsed() < Duration::from_secs(8) {
        let mut c = connect(p.port);
        assert!(
            closed_within(&mut c, Duration::from_millis(500)),
            "an extra client was left hanging"
        );
        extra.push(c);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(extra.len() > 100, "only {} extra clients tried", extra.len());
    std::thread::sleep(Duration::from_secs(2));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    assert!(
        cpu < 0.05 * secs,
        "server used {cpu:.3} s of CPU in {secs:.1} s while out of descriptors"
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

/// Random garbage: closed within 100 ms, no handler run, one close each.
#[test]
fn garbage_streams_are_closed_without_running_handlers() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7")]);
    let mut rng = Rng::new(0x6a7b_a9e5);
    for round in 0..200 {
        let mut c = connect(p.port);
        let (serial, ..) = info(&mut c, STX);
        let mut junk = vec![0u8; rng.range(8, 3000)];
        rng.fill(&mut junk);
        // Make sure the first head is bad (a random stx matches 1 in 2^32).
        if junk[..4] == STX.to_ne_bytes() {
            junk[0] ^= 1;
        }
        let t0 = Instant::now();
        let _ = c.write_all(&junk);
        assert!(
            closed_within(&mut c, Duration::from_millis(100)),
            "round {round}: not closed"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(150),
            "round {round}: took {:?}",
            t0.elapsed()
        );
        assert_eq!(
            p.wait_close_event(serial, Duration::from_secs(2)),
            Some((0xfffe, 1)),
            "round {round}"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(
        summary(&s.stdout, "packets"),
        200,
        "only the INFO packets ran handlers"
    );
}

/// 10,000 cycles of connect / half a packet / reset, with the server
/// limited to 64 descriptors: descriptors and free slots return to their
/// baseline. testsrv keeps the default SIGPIPE disposition and survives
/// peers that reset while it writes.
#[test]
fn resets_leak_nothing_and_sigpipe_never_fires() {
    let p = Proc::testsrv_nofile(
        &[("TS_STX", "8eb69af7"), ("TS_CONNNUM", "16"), ("TS_WORKERS", "2")],
        64,
    );
    let pid = p.pid();
    let base = fd_count(pid);
    for i in 0..10_000u32 {
        let mut c = connect(p.port);
        let f = frame(STX, ID_ECHO, &i.to_ne_bytes());
        let _ = c.write_all(&f[..f.len() / 2]);
        reset(c);
        if i % 1000 == 999 {
            // Peers that reset while the server writes a large reply.
            let mut c = connect(p.port);
            let _ = c.write_all(&frame(STX, ID_FLOOD, &2000u32.to_ne_bytes()));
            std::thread::sleep(Duration::from_millis(2));
            reset(c);
        }
    }
    let t0 = Instant::now();
    while fd_count(pid) != base && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fd_count(pid), base, "descriptors did not return to baseline");
    // Every slot is free again: workers * connnum clients are served.
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut c = connect(p.port);
        c.write_all(&frame(STX, ID_ECHO, b"ok")).unwrap();
        read_frame(&mut c).expect("a slot was leaked");
        held.push(c);
    }
    drop(held);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    // A client that resets before the server accepts it may never be
    // accepted at all (the kernel drops it from the backlog); testsrv
    // itself fails the stop if connected != closed.
    let n = summary(&s.stdout, "connected");
    assert!((32..=10_000 + 10 + 32).contains(&n), "connected {n}");
    assert_eq!(summary(&s.stdout, "closed"), n);
}

/// A 100,000-packet pipelined burst is answered completely and in order.
#[test]
fn hundred_thousand_packet_burst() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7")]);
    let c = connect(p.port);
    let mut w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(100_000 * 12);
        for i in 0..100_000u32 {
            buf.extend_from_slice(&frame(STX, ID_ECHO, &i.to_ne_bytes()));
        }
        w.write_all(&buf).unwrap();
    });
    let mut r = std::io::BufReader::new(c);
    for i in 0..100_000u32 {
        let mut h = [0u8; 12];
        std::io::Read::read_exact(&mut r, &mut h).unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert_eq!(h[8..12], i.to_ne_bytes(), "reply {i} out of order");
    }
    sender.join().unwrap();
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

/// Every slot held by a trickling client (workernum * connnum of them): a
/// normal client is still served within 2 T, because a started packet must
/// complete within T.
#[test]
fn trickling_clients_cannot_starve_a_normal_one() {
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_RTIMEOUT", "2"),
        ("TS_WORKERS", "2"),
        ("TS_CONNNUM", "3"),
    ]);
    let t0 = Instant::now();
    let port = p.port;
    let tricklers: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                let f = frame(STX, ID_ECHO, &[1u8; 64]);
                for b in &f {
                    if c.write_all(std::slice::from_ref(b)).is_err() {
                        return;
                    }
                    if closed_within(&mut c, Duration::from_millis(1000)) {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The slots are full now: keep trying as a normal client would.
    let served = loop {
        let mut c = connect(p.port);
        let _ = c.write_all(&frame(STX, ID_ECHO, b"hello"));
        c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        if let Ok((h, b)) = read_frame(&mut c) {
            assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, &b"hello"[..]));
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(6), "never served");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        served <= Duration::from_secs(4) + Duration::from_millis(300),
        "served after {served:?} (> 2 T)"
    );
    for t in tricklers {
        t.join().unwrap();
    }
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
