//! The maritcp LOGIN protocol, checked against any server on a loopback
//! port: shared by tests/maritcp.rs (the C sample server) and
//! tests/rust_api.rs (the same server written with the Rust API).
//!
//! LOGIN is `HEAD{stx 0x8eb69af7, pkglen 10, akg_id 0x6101}` + `uint16 uid`;
//! the reply is exactly the 8-byte `HEAD{stx, 8, 0x6101}`. A LOGIN of any
//! other length closes the connection without a reply.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Head, ID_LOGIN, STX, connect, frame};

/// A well-formed LOGIN for `uid`.
pub fn login(uid: u16) -> Vec<u8> {
    frame(STX, ID_LOGIN, &uid.to_ne_bytes())
}

/// The one correct reply to a LOGIN.
pub fn reply() -> [u8; 8] {
    Head {
        stx: STX,
        pkglen: 8,
        akg_id: ID_LOGIN,
    }
    .to_bytes()
}

/// Reads exactly one LOGIN reply (8 bytes) and checks it.
pub fn expect_reply(s: &mut TcpStream) {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).expect("LOGIN reply");
    assert_eq!(Head::parse(&b), Head::parse(&reply()), "LOGIN reply");
}

/// Asserts that nothing arrives on `s` for `d` and that it stays open.
pub fn expect_quiet(s: &mut TcpStream, d: Duration) {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => panic!("connection closed, expected it to stay open"),
        Ok(n) => panic!("unexpected {n} extra byte(s): {:02x?}", &b[..n]),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Err(e) => panic!("connection failed, expected it to stay open: {e}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// Reads until the peer closes (EOF or reset) and returns what arrived, or
/// `None` if it is still open after `within`.
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut b) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(got),
        }
    }
}

/// Asserts that the server closes `s` within `within` without sending a
/// byte.
pub fn expect_closed_silently(s: &mut TcpStream, within: Duration, what: &str) {
    match read_until_closed(s, within) {
        None => panic!("{what}: connection still open after {within:?}"),
        Some(b) => assert!(
            b.is_empty(),
            "{what}: got {} byte(s) before the close: {b:02x?}",
            b.len()
        ),
    }
}

/// One LOGIN is answered with exactly its 8-byte reply and nothing more;
/// the connection stays open and answers a second LOGIN.
pub fn check_login_exact(port: u16) {
    let mut s = connect(port);
    s.write_all(&login(42)).unwrap();
    expect_reply(&mut s);
    expect_quiet(&mut s, Duration::from_millis(300));
    s.write_all(&login(43)).unwrap();
    expect_reply(&mut s);
    expect_quiet(&mut s, Duration::from_millis(100));
}

/// LOGINs sent back to back in one write are each answered, in order;
/// a LOGIN split across writes is answered once complete, not before.
pub fn check_pipelined(port: u16) {
    let mut s = connect(port);
    let n = 64;
    let burst: Vec<u8> = (0..n).flat_map(|i| login(i as u16)).collect();
    s.write_all(&burst).unwrap();
    let mut all = vec![0u8; 8 * n];
    s.read_exact(&mut all).expect("pipelined replies");
    for (i, r) in all.chunks(8).enumerate() {
        assert_eq!(r, reply(), "reply #{i} of {n} pipelined LOGINs");
    }
    expect_quiet(&mut s, Duration::from_millis(200));

    // Split: head in two pieces, then the body byte by byte.
    let l = login(7);
    for (k, piece) in [&l[..3], &l[3..8], &l[8..9]].into_iter().enumerate() {
        s.write_all(piece).unwrap();
        if k == 0 {
            expect_quiet(&mut s, Duration::from_millis(100));
        } else {
            expect_quiet(&mut s, Duration::from_millis(50));
        }
    }
    s.write_all(&l[9..]).unwrap();
    expect_reply(&mut s);

    // One and a half LOGINs, then the rest with two more whole ones.
    let three: Vec<u8> = (0..3).flat_map(login).collect();
    s.write_all(&three[..15]).unwrap();
    expect_reply(&mut s);
    expect_quiet(&mut s, Duration::from_millis(100));
    s.write_all(&three[15..]).unwrap();
    expect_reply(&mut s);
    expect_reply(&mut s);
    expect_quiet(&mut s, Duration::from_millis(100));
}

/// `conns` connections at once, each sending `per_conn` LOGINs one by one
/// from `threads` client threads: every LOGIN is answered exactly once.
pub fn check_many_connections(port: u16, threads: usize, conns: usize, per_conn: usize) {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut socks: Vec<TcpStream> = (0..conns / threads).map(|_| connect(port)).collect();
                for round in 0..per_conn {
                    for (i, s) in socks.iter_mut().enumerate() {
                        s.write_all(&login((t * 1000 + i + round) as u16)).unwrap();
                    }
                    for s in socks.iter_mut() {
                        expect_reply(s);
                    }
                }
                for s in socks.iter_mut().take(3) {
                    expect_quiet(s, Duration::from_millis(50));
                }
                socks.len()
            })
        })
        .collect();
    let total: usize = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert_eq!(total, conns - conns % threads);
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

/// A LOGIN whose pkglen is `pkglen` (not 10), with that many bytes sent,
/// closes the connection within a second and gets no reply.
pub fn check_wrong_length(port: u16, pkglen: u16) {
    let mut s = connect(port);
    let body = vec![0x5au8; pkglen as usize - 8];
    let f = frame(STX, ID_LOGIN, &body);
    assert_eq!(f.len(), pkglen as usize);
    s.write_all(&f).unwrap();
    expect_closed_silently(
        &mut s,
        Duration::from_secs(1),
        &format!("LOGIN with pkglen {pkglen}"),
    );
}

/// After good LOGINs, a wrong one closes the connection; what arrives
/// before the close is whole replies to the good ones, at most.
pub fn check_wrong_length_after_good(port: u16) {
    let mut s = connect(port);
    s.write_all(&login(1)).unwrap();
    expect_reply(&mut s);
    let mut burst = login(2);
    burst.extend_from_slice(&frame(STX, ID_LOGIN, &[1, 2, 3]));
    burst.extend_from_slice(&login(3));
    s.write_all(&burst).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(1)).expect("closed within 1 s after a bad LOGIN");
    assert!(
        got.is_empty() || got == reply(),
        "before the close only the reply to the one good LOGIN may arrive, got {got:02x?}"
    );
}

/// Frames the framework itself refuses: each closes the connection within
/// a second, with no reply.
pub fn check_bad_frames(port: u16) {
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "wrong stx".into(),
            frame(0x1234_5678, ID_LOGIN, &1u16.to_ne_bytes()),
        ),
        (
            "default stx".into(),
            frame(0xffff_ffff, ID_LOGIN, &1u16.to_ne_bytes()),
        ),
        ("unregistered id".into(), frame(STX, 0x1234, &[0, 0])),
        ("id 0".into(), frame(STX, 0, &[])),
    ];
    for id in 0xfffcu16..=0xffff {
        cases.push((format!("reserved id {id:#x}"), frame(STX, id, &[])));
    }
    let mut short = frame(STX, ID_LOGIN, &[]);
    short[4..6].copy_from_slice(&7u16.to_ne_bytes());
    cases.push(("pkglen 7".into(), short));
    let mut zero = frame(STX, ID_LOGIN, &[]);
    zero[4..6].copy_from_slice(&0u16.to_ne_bytes());
    cases.push(("pkglen 0".into(), zero));
    cases.push(("pkglen 1501".into(), frame(STX, ID_LOGIN, &[0u8; 1493])));
    for (what, bytes) in cases {
        let mut s = connect(port);
        s.write_all(&bytes).unwrap();
        expect_closed_silently(&mut s, Duration::from_secs(1), &what);
    }
    // The server still works.
    check_login_exact(port);
}

/// Every protocol check, in one go.
pub fn check_all(port: u16) {
    check_login_exact(port);
    check_pipelined(port);
    for len in [8, 9, 11, 12] {
        check_wrong_length(port, len);
    }
    check_wrong_length_after_good(port);
    check_bad_frames(port);
    check_many_connections(port, 4, 200, 5);
    check_login_exact(port);
}
