//! Limits that used to overflow: timeouts up to the type's maximum work in
//! both APIs (the deadline arithmetic saturates), a frame encoder never
//! panics and refuses what the framing cannot carry, and settings out of
//! range are refused when the server is built, with a message naming them.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mario::{Server, Verdict};

const ID_SEND: u16 = 0x0020;

/// Echo over `s` works (the connection is open and served).
fn echo_ok(s: &mut TcpStream) -> bool {
    let f = frame(STX, ID_ECHO, b"ping");
    if s.write_all(&f).is_err() {
        return false;
    }
    let mut got = vec![0u8; f.len()];
    s.read_exact(&mut got).is_ok() && got == f
}

#[test]
fn rust_timeouts_up_to_u32_max_never_fire() {
    let cases = [
        (u32::MAX, 0),
        (0, u32::MAX),
        (u32::MAX, u32::MAX),
        (u32::MAX - 1, u32::MAX - 1),
    ];
    let running: Vec<_> = cases
        .iter()
        .map(|&(rt, wt)| {
            let r = Running::start(
                Server::builder()
                    .workers(1)
                    .stx(STX)
                    .read_timeout(rt)
                    .write_timeout(wt)
                    .on_packet(ID_ECHO, |c, _, p| {
                        c.send(p.bytes());
                        Ok(Verdict::Continue)
                    }),
            );
            let mut s = r.connect();
            assert!(echo_ok(&mut s));
            (r, s)
        })
        .collect();
    // Two ticks: an overflowed deadline would have fired by now.
    std::thread::sleep(Duration::from_millis(2500));
    for ((r, mut s), (rt, wt)) in running.into_iter().zip(cases) {
        assert!(echo_ok(&mut s), "read {rt} write {wt}: closed");
        r.stop();
    }
}

#[test]
fn c_timeouts_up_to_int_max_never_fire() {
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_WORKERS", "1"),
        ("TS_RTIMEOUT", "2147483647"),
        ("TS_WTIMEOUT", "2147483647"),
        ("TS_OUTLIMIT", "67108864"),
    ]);
    let mut s = connect(p.port);
    assert!(echo_ok(&mut s));
    // Output pending and not read for two ticks: no write timeout either.
    s.write_all(&frame(STX, ID_FLOOD, &5000u32.to_ne_bytes()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let mut all = vec![0u8; 5000 * 1500];
    s.read_exact(&mut all).unwrap();
    assert!(echo_ok(&mut s));
    p.stop_clean();
}

/// `send_packet` never panics: a body that would pass `MAX_PKG_LEN` (or
/// 65,535 bytes) is refused with a warning and the connection stays open.
#[test]
fn send_packet_refuses_what_the_framing_cannot_carry() {
    let results: Arc<Mutex<Vec<(usize, bool)>>> = Arc::default();
    let r2 = results.clone();
    let r = Running::start(
        Server::builder()
            .workers(1)
            .stx(STX)
            .on_packet(ID_SEND, move |c, _, _| {
                for len in [0, 1492, 1493, 65527, 65528, 1 << 20] {
                    r2.lock()
                        .unwrap()
                        .push((len, c.send_packet(ID_SEND, &vec![7u8; len])));
                }
                Ok(Verdict::Continue)
            })
            .on_packet(ID_ECHO, |c, _, p| {
                c.send(p.bytes());
                Ok(Verdict::Continue)
            }),
    );
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_SEND, &[])).unwrap();
    let (h0, b0) = read_frame(&mut s).unwrap();
    let (h1, b1) = read_frame(&mut s).unwrap();
    assert_eq!((h0.pkglen, b0.len(), h1.pkglen, b1.len()), (8, 0, 1500, 1492));
    assert!(echo_ok(&mut s), "the connection is still served");
    assert_eq!(
        *results.lock().unwrap(),
        vec![
            (0, true),
            (1492, true),
            (1493, false),
            (65527, false),
            (65528, false),
            (1 << 20, false)
        ]
    );
    r.stop();
}

#[test]
fn settings_out_of_range_are_refused_when_built() {
    let cases: Vec<(&str, mario::ServerBuilder, &str)> = vec![
        (
            "no worker",
            Server::builder().workers(0),
            "workers is 0, must be 1..=256",
        ),
        (
            "257 workers",
            Server::builder().workers(257),
            "workers is 257, must be 1..=256",
        ),
        (
            "no connection",
            Server::builder().conns_per_worker(0),
            "connections per worker is 0",
        ),
        (
            "2^20 + 1 connections",
            Server::builder().conns_per_worker((1 << 20) + 1),
            "must be 1..=1048576",
        ),
        (
            "no output",
            Server::builder().output_limit(0),
            "output limit is 0 bytes",
        ),
    ];
    for (what, b, msg) in cases {
        match b.build() {
            Ok(_) => panic!("{what}: built"),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}");
                assert!(e.to_string().contains(msg), "{what}: {e}");
            }
        }
    }
    // The limits themselves are accepted.
    for b in [
        Server::builder().workers(256),
        Server::builder().conns_per_worker(1 << 20),
        Server::builder().output_limit(u32::MAX as usize),
    ] {
        drop(b.build().expect("a setting at its limit"));
    }
}

#[test]
fn c_init_server_refuses_settings_out_of_range() {
    ensure_built();
    for (workers, connnum, msg) in [
        ("0", "16", "workers is 0"),
        ("257", "16", "workers is 257, must be 1..=256"),
        ("1", "0", "connections per worker is 0"),
        ("1", "1048577", "must be 1..=1048576"),
    ] {
        let out = std::process::Command::new(root().join("target/ctests/testsrv"))
            .env("TS_PORT", free_port().to_string())
            .env("TS_WORKERS", workers)
            .env("TS_CONNNUM", connnum)
            .env("ASAN_OPTIONS", ASAN_OPTIONS)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "workers {workers} connnum {connnum}: {err}"
        );
        assert!(err.contains("init_server: ") && err.contains(msg), "{err}");
    }
}
