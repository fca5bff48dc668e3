//! Framing against the instrumented C server (testsrv) over loopback: every
//! packet size, long pipelines, every split point, random cuts of random
//! streams, and the default stx.
mod common;
use common::*;
use mario::{AKG_CLOSED, DEFAULT_STX};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const STX_HEX: &str = "8eb69af7";

fn seed() -> u64 {
    let s = std::env::var("MARIO_TEST_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(0x6d61_7269_6f5f_7463);
    eprintln!("MARIO_TEST_SEED=0x{s:x}");
    s
}

fn echo(body: &[u8]) -> Vec<u8> {
    frame(STX, ID_ECHO, body)
}

/// A deterministic body of `len` bytes whose first 4 bytes (when there is
/// room) carry `tag`.
fn tagged_body(tag: u32, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(tag * 7) as u8)
        .collect();
    let t = tag.to_le_bytes();
    let n = len.min(4);
    b[..n].copy_from_slice(&t[..n]);
    b
}

/// First offset where `got` and `want` differ, with some context.
fn first_diff(got: &[u8], want: &[u8]) -> String {
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = i.saturating_sub(8);
    format!(
        "first difference at byte {i} (lengths {} / {}): got {:02x?} want {:02x?}",
        got.len(),
        want.len(),
        &got[lo..(i + 16).min(got.len())],
        &want[lo..(i + 16).min(want.len())]
    )
}

/// Sends `writes` on a clone of `c` from another thread (pausing after
/// those with a pause) while this thread reads back exactly `want.len()`
/// bytes; returns what was read.
fn stream_through(c: &mut TcpStream, writes: Vec<(Vec<u8>, Option<Duration>)>, want_len: usize) -> Vec<u8> {
    let writer = spawn_writes(c, writes);
    let mut got = vec![0u8; want_len];
    let mut have = 0;
    while have < want_len {
        match c.read(&mut got[have..]) {
            Ok(0) => panic!("server closed after {have} of {want_len} bytes"),
            Ok(n) => have += n,
            Err(e) => panic!("read after {have} of {want_len} bytes: {e}"),
        }
    }
    writer.join().expect("writer thread");
    got
}

/// Waits for `serial`'s close event and checks it.
fn expect_close(p: &Proc, serial: u32, reason: u16, packets: u32) {
    assert_eq!(
        p.wait_close_event(serial, Duration::from_secs(5)),
        Some((reason, packets)),
        "close event of serial {serial}"
    );
}

#[test]
fn every_packet_size_is_echoed_exactly() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let mut c = connect(p.port);
    let (serial, ..) = info(&mut c, STX);
    let frames: Vec<Vec<u8>> = (0..=1492usize).map(|n| echo(&tagged_body(n as u32, n))).collect();
    let want: Vec<u8> = frames.concat();
    // Batches of 50 packets per write.
    let writes: Vec<(Vec<u8>, Option<Duration>)> = frames.chunks(50).map(|b| (b.concat(), None)).collect();
    let got = stream_through(&mut c, writes, want.len());
    assert!(got == want, "echo stream differs: {}", first_diff(&got, &want));
    // Nothing more than one reply per packet: the next frame is INFO's.
    let (s2, ..) = info(&mut c, STX);
    assert_eq!(s2, serial);
    drop(c);
    expect_close(&p, serial, AKG_CLOSED, 1 + 1493 + 1);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn ten_thousand_pipelined_packets_in_one_write() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let mut c = connect(p.port);
    let (serial, ..) = info(&mut c, STX);
    let mut rng = Rng::new(0x1000_0001);
    let mut all = Vec::new();
    let mut offsets = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        let len = match i % 4 {
            0 => rng.range(4, 32),
            1 => rng.range(4, 1492),
            2 => rng.range(1400, 1492),
            _ => rng.range(4, 300),
        };
        let mut body = vec![0u8; len];
        rng.fill(&mut body);
        body[..4].copy_from_slice(&i.to_le_bytes());
        offsets.push(all.len());
        all.extend_from_slice(&echo(&body));
    }
    let total = all.len();
    let got = stream_through(&mut c, vec![(all.clone(), None)], total);
    if got != all {
        let d = got.iter().zip(&all).position(|(a, b)| a != b).unwrap();
        let idx = offsets.partition_point(|&o| o <= d) - 1;
        panic!(
            "reply stream differs inside packet {idx}: {}",
            first_diff(&got, &all)
        );
    }
    let (s2, ..) = info(&mut c, STX);
    assert_eq!(s2, serial);
    drop(c);
    expect_close(&p, serial, AKG_CLOSED, 1 + 10_000 + 1);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "packets"), 10_002);
}

#[test]
fn a_packet_split_at_every_offset_is_answered_once() {
    const CONNS: usize = 4;
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let port = p.port;
    let handles: Vec<_> = (0..CONNS)
        .map(|k| {
            thread::spawn(move || {
                let mut c = connect(port);
                let (serial, ..) = info(&mut c, STX);
                let mut n = 0u32;
                for off in (1..1500usize).filter(|o| o % CONNS == k) {
                    let pkt = echo(&tagged_body(off as u32, 1492));
                    assert_eq!(pkt.len(), 1500);
                    c.write_all(&pkt[..off]).unwrap();
                    // Make sure the server sees the first part on its own
                    // around the head and for a regular subset of offsets;
                    // the rest go as back-to-back writes (TCP_NODELAY).
                    if off <= 9 || off >= 1491 || off % 16 == 0 {
                        thread::sleep(Duration::from_millis(2));
                    }
                    c.write_all(&pkt[off..]).unwrap();
                    let (h, b) = read_frame(&mut c).unwrap_or_else(|e| panic!("offset {off}: {e}"));
                    assert_eq!((h.stx, h.pkglen, h.akg_id), (STX, 1500, ID_ECHO), "offset {off}");
                    assert!(b == pkt[8..], "offset {off}: {}", first_diff(&b, &pkt[8..]));
                    n += 1;
                }
                let (s2, ..) = info(&mut c, STX);
                assert_eq!(s2, serial);
                (serial, n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let (serial, n) = h.join().expect("split thread");
        total += n;
        // Sockets are closed by now (dropped in the thread).
        expect_close(&p, serial, AKG_CLOSED, n + 2);
    }
    assert_eq!(total, 1499);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "packets"), 1499 + 2 * CONNS as u64);
}

#[test]
fn random_streams_cut_at_random_points_echo_exactly() {
    const CONNS: u64 = 6;
    const ROUNDS: usize = 30;
    let seed = seed();
    let p = Proc::testsrv(&[("TS_STX", STX_HEX)]);
    let port = p.port;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CONNS)
        .map(|k| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut c = connect(port);
                let (serial, ..) = info(&mut c, STX);
                let mut packets = 0u32;
                for round in 0..ROUNDS {
                    let n = rng.range(100, 600);
                    let mut stream = Vec::new();
                    for _ in 0..n {
                        let len = match rng.range(0, 3) {
                            0 => rng.range(8, 40),
                            1 => rng.range(1450, 1500),
                            _ => rng.range(8, 1500),
                        };
                        let mut body = vec![0u8; len - 8];
                        rng.fill(&mut body);
                        stream.extend_from_slice(&echo(&body));
                    }
                    packets += n as u32;
                    let writes = random_writes(&mut rng, &stream, 40_000, 25);
                    let nwrites = writes.len();
                    let got = stream_through(&mut c, writes, stream.len());
                    assert!(
                        got == stream,
                        "seed 0x{seed:x} connection {k} round {round} ({n} packets, {nwrites} writes): {}",
                        first_diff(&got, &stream)
                    );
                }
                let (s2, ..) = info(&mut c, STX);
                assert_eq!(s2, serial, "seed 0x{seed:x}");
                (serial, packets)
            })
        })
        .collect();
    let mut total = 0u64;
    for h in handles {
        let (serial, n) = h
            .join()
            .unwrap_or_else(|_| panic!("seed 0x{seed:x}: stream thread failed"));
        expect_close(&p, serial, AKG_CLOSED, n + 2);
        total += u64::from(n) + 2;
    }
    eprintln!("random streams: {total} packets in {:?}", t0.elapsed());
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "packets"), total, "seed 0x{seed:x}");
}

#[test]
fn default_stx_applies_when_none_is_registered() {
    // No TS_STX: regist_stx is never called.
    let p = Proc::testsrv(&[]);
    let mut c = connect(p.port);
    let (serial, ..) = info(&mut c, DEFAULT_STX);
    c.write_all(&frame(DEFAULT_STX, ID_ECHO, b"default stx")).unwrap();
    let (h, b) = read_frame(&mut c).unwrap();
    assert_eq!(
        (h.stx, h.akg_id, b.as_slice()),
        (DEFAULT_STX, ID_ECHO, &b"default stx"[..])
    );
    drop(c);
    expect_close(&p, serial, AKG_CLOSED, 2);

    // The original's accidental stx 0 is refused.
    let mut c = connect(p.port);
    let (serial, ..) = info(&mut c, DEFAULT_STX);
    c.write_all(&frame(0, ID_ECHO, b"zero stx")).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)), "stx 0 not refused");
    expect_close(&p, serial, AKG_CLOSED, 1);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "packets"), 3);
    assert!(
        s.stderr
            .lines()
            .any(|l| l.contains("[ERROR] ") && l.contains("pkg error")),
        "no pkg error line for stx 0:\n{}",
        s.stderr
    );
}
