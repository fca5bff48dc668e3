//! Connection lifecycle against the instrumented C server (testsrv): the
//! callback order on many connections with every kind of ending, slot
//! reuse, and no byte of a slot's previous client reaching the next one.
mod common;
use common::*;
use mario::{AKG_CLOSED, AKG_ERROR};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const STX_HEX: &str = "8eb69af7";

/// One `EV close` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CloseEv {
    reason: u16,
    packets: u32,
    worker: u16,
    slot: u32,
}

/// Every `EV close` line of `stdout`, by serial (all lines kept).
fn close_events(stdout: &str) -> HashMap<u32, Vec<CloseEv>> {
    let mut m: HashMap<u32, Vec<CloseEv>> = HashMap::new();
    for l in stdout.lines().filter(|l| l.contains("EV close ")) {
        let field = |name: &str| -> u64 {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {l}"))
        };
        m.entry(field("serial=") as u32).or_default().push(CloseEv {
            reason: field("reason=") as u16,
            packets: field("packets=") as u32,
            worker: field("worker=") as u16,
            slot: field("slot=") as u32,
        });
    }
    m
}

fn echo(body: &[u8]) -> Vec<u8> {
    frame(STX, ID_ECHO, body)
}

fn sub(count: u32, close: bool) -> Vec<u8> {
    let mut b = count.to_ne_bytes().to_vec();
    b.extend_from_slice(&u32::from(close).to_ne_bytes());
    frame(STX, ID_SUB, &b)
}

fn body_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b[..4].try_into().unwrap())
}

/// True once the server has closed `c` (EOF or reset) within `within`;
/// every frame received meanwhile is handed to `frame_seen`.
fn closed_reading_frames(
    c: &mut TcpStream,
    within: Duration,
    mut frame_seen: impl FnMut(Head, &[u8]),
) -> bool {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut tmp) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                while let Some(h) = Head::parse(&buf) {
                    let len = usize::from(h.pkglen).max(8);
                    if buf.len() < len {
                        break;
                    }
                    frame_seen(h, &buf[8..len]);
                    buf.drain(..len);
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Connects and does INFO, retrying while the server refuses the
/// connection (a one-slot server whose previous client's close is still
/// being processed refuses with a reset). A reply other than INFO fails.
fn connect_info(port: u16) -> (TcpStream, u32, u32) {
    let t0 = Instant::now();
    loop {
        let mut c = connect(port);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let sent = c.write_all(&frame(STX, ID_INFO, &[])).is_ok();
        if sent {
            match read_frame(&mut c) {
                Ok((h, b)) => {
                    assert_eq!(
                        (h.stx, h.akg_id, h.pkglen),
                        (STX, ID_INFO, 20),
                        "first frame of a new connection is not its INFO reply: {h:?} {b:02x?}"
                    );
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    return (c, body_u32(&b[0..4]), body_u32(&b[4..8]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                    panic!("INFO not answered within 3 s")
                }
                Err(_) => {} // refused
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "server kept refusing connections for 5 s"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// An ECHO round trip whose reply must be the very next frame.
fn echo_round_trip(c: &mut TcpStream, body: &[u8], what: &str) {
    let f = echo(body);
    c.write_all(&f).unwrap();
    let (h, b) = read_frame(c).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        h.akg_id == ID_ECHO && usize::from(h.pkglen) == f.len() && b == body,
        "{what}: expected the ECHO reply of {} bytes, got {h:?} with body {:02x?}",
        f.len(),
        &b[..b.len().min(32)]
    );
}

/// Nothing more arrives on `c` within `quiet`.
fn assert_silent(c: &mut TcpStream, quiet: Duration, what: &str) {
    c.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 64];
    match c.read(&mut b) {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Ok(n) => panic!("{what}: {n} unexpected bytes: {:02x?}", &b[..n]),
        Err(e) => panic!("{what}: {e}"),
    }
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    ClientClose,
    ClientReset,
    Close0,
    Fail,
    BadFrame,
    /// The blaster thread closes it after some frames (cross-thread close).
    BlasterClose,
    /// Still open when the server stops.
    LeftOpen,
}

const ENDINGS: [Ending; 7] = [
    Ending::ClientClose,
    Ending::ClientReset,
    Ending::Close0,
    Ending::Fail,
    Ending::BadFrame,
    Ending::BlasterClose,
    Ending::LeftOpen,
];

/// What a connection's close event must say.
#[derive(Debug)]
struct Expect {
    serial: u32,
    slot: u32,
    worker: u16,
    reason: u16,
    packets: u32,
    ending: Ending,
}

#[test]
fn many_connections_with_mixed_endings_close_exactly_once() {
    const THREADS: u64 = 6;
    const PER_THREAD: usize = 60;
    let p = Proc::testsrv(&[("TS_STX", STX_HEX), ("TS_WORKERS", "3")]);
    let port = p.port;
    let left_open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let left_open = left_open.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(0x1f3c_5a77 + t * 0x1234_5679);
                let mut out = Vec::new();
                for i in 0..PER_THREAD {
                    let ending = ENDINGS[rng.range(0, ENDINGS.len() - 1)];
                    let what = format!("thread {t} connection {i} ({ending:?})");
                    let mut c = connect(port);
                    let (serial, slot, worker, workers) = info(&mut c, STX);
                    assert_eq!(workers, 3);
                    let mut packets = 1;
                    // Traffic: 0..=5 echoes, pipelined or one by one.
                    let k = rng.range(0, 5);
                    let bodies: Vec<Vec<u8>> = (0..k)
                        .map(|j| {
                            let n = rng.range(0, 1492);
                            (0..n).map(|x| (x + j * 3 + i) as u8).collect()
                        })
                        .collect();
                    if rng.range(0, 1) == 0 {
                        let all: Vec<u8> = bodies.iter().flat_map(|b| echo(b)).collect();
                        c.write_all(&all).unwrap();
                        for b in &bodies {
                            let (h, got) = read_frame(&mut c).unwrap_or_else(|e| panic!("{what}: {e}"));
                            assert!(h.akg_id == ID_ECHO && &got == b, "{what}: wrong echo");
                        }
                    } else {
                        for b in &bodies {
                            echo_round_trip(&mut c, b, &what);
                        }
                    }
                    packets += k as u32;
                    // Sometimes leave half a packet in the server first.
                    let partial = rng.range(0, 2) == 0;
                    let half = echo(&[0x33; 200]);
                    let close = |c: &mut TcpStream, what: &str| {
                        assert!(
                            closed_within(c, Duration::from_secs(3)),
                            "{what}: server did not close"
                        );
                    };
                    let reason = match ending {
                        Ending::ClientClose => {
                            if partial {
                                c.write_all(&half[..100]).unwrap();
                            }
                            drop(c);
                            AKG_CLOSED
                        }
                        Ending::ClientReset => {
                            if partial {
                                c.write_all(&half[..100]).unwrap();
                            }
                            reset(c);
                            AKG_ERROR
                        }
                        Ending::Close0 => {
                            c.write_all(&[frame(STX, ID_CLOSE0, &[]), echo(b"after")].concat())
                                .unwrap();
                            close(&mut c, &what);
                            packets += 1;
                            AKG_CLOSED
                        }
                        Ending::Fail => {
                            c.write_all(&[frame(STX, ID_FAIL, &[]), echo(b"after")].concat())
                                .unwrap();
                            close(&mut c, &what);
                            packets += 1;
                            AKG_ERROR
                        }
                        Ending::BadFrame => {
                            let bad = match rng.range(0, 3) {
                                0 => frame(0x0102_0304, ID_ECHO, &[]),
                                1 => Head {
                                    stx: STX,
                                    pkglen: 3,
                                    akg_id: ID_ECHO,
                                }
                                .to_bytes()
                                .to_vec(),
                                2 => frame(STX, 0xfffd, &[]),
                                _ => frame(STX, 0x4242, &[]),
                            };
                            c.write_all(&[bad, echo(b"after")].concat()).unwrap();
                            close(&mut c, &what);
                            AKG_CLOSED
                        }
                        Ending::BlasterClose => {
                            let n = rng.range(1, 20) as u32;
                            c.write_all(&sub(n, true)).unwrap();
                            let mut frames = 0;
                            let closed = closed_reading_frames(&mut c, Duration::from_secs(5), |h, b| {
                                assert!(
                                    h.akg_id == ID_SUB && h.pkglen == 12 && body_u32(b) == serial,
                                    "{what}: unexpected frame {h:?} {b:02x?}"
                                );
                                frames += 1;
                            });
                            assert!(closed, "{what}: blaster did not close it");
                            assert!(frames <= n, "{what}: {frames} SUB frames, asked for {n}");
                            packets += 1;
                            AKG_CLOSED
                        }
                        Ending::LeftOpen => {
                            if partial {
                                c.write_all(&half[..100]).unwrap();
                            }
                            left_open.lock().unwrap().push(c);
                            AKG_CLOSED
                        }
                    };
                    out.push(Expect {
                        serial,
                        slot,
                        worker,
                        reason,
                        packets,
                        ending,
                    });
                }
                out
            })
        })
        .collect();
    let expects: Vec<Expect> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let n = expects.len();
    assert_eq!(n, THREADS as usize * PER_THREAD);
    let still_open = left_open.lock().unwrap().len();
    // Let the client-side closes reach the server before stopping it.
    for e in expects.iter().filter(|e| !matches!(e.ending, Ending::LeftOpen)) {
        assert!(
            p.wait_close_event(e.serial, Duration::from_secs(5)).is_some(),
            "no close event for {e:?}"
        );
    }
    let s = p.stop_clean();
    drop(left_open);
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "connected"), n as u64);
    assert_eq!(summary(&s.stdout, "closed"), n as u64);
    let total: u64 = expects.iter().map(|e| u64::from(e.packets)).sum();
    assert_eq!(summary(&s.stdout, "packets"), total);
    let evs = close_events(&s.stdout);
    assert_eq!(evs.values().map(Vec::len).sum::<usize>(), n, "EV close lines");
    for e in &expects {
        let got = evs.get(&e.serial).map(Vec::as_slice).unwrap_or_default();
        let want = CloseEv {
            reason: e.reason,
            packets: e.packets,
            worker: e.worker,
            slot: e.slot,
        };
        assert_eq!(got, &[want][..], "close events of {e:?}");
    }
    eprintln!("{n} connections, {still_open} left open until stop");
}

#[test]
fn slots_are_reused_and_cleared() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX), ("TS_WORKERS", "1"), ("TS_CONNNUM", "1")]);
    let mut last_serial = 0;
    let mut slot0 = None;
    const ROUNDS: u32 = 40;
    for round in 0..ROUNDS {
        let (mut c, serial, slot) = connect_info(p.port);
        assert!(
            serial > last_serial,
            "round {round}: serial {serial} after {last_serial}"
        );
        last_serial = serial;
        assert_eq!(*slot0.get_or_insert(slot), slot, "round {round}: slot not reused");
        echo_round_trip(&mut c, &[round as u8; 64], "reuse");
        // End it in a different way each round, leaving state behind.
        let (reason, packets) = match round % 5 {
            0 => {
                c.write_all(&echo(&[1; 500])[..300]).unwrap();
                drop(c);
                (AKG_CLOSED, 2)
            }
            1 => {
                c.write_all(&echo(&[2; 500])[..7]).unwrap();
                reset(c);
                (AKG_ERROR, 2)
            }
            2 => {
                c.write_all(&frame(STX, ID_CLOSE0, &[])).unwrap();
                assert!(closed_within(&mut c, Duration::from_secs(3)));
                (AKG_CLOSED, 3)
            }
            3 => {
                c.write_all(&frame(STX, ID_FAIL, &[])).unwrap();
                assert!(closed_within(&mut c, Duration::from_secs(3)));
                (AKG_ERROR, 3)
            }
            _ => {
                c.write_all(&frame(STX, 0xfffc, &[])).unwrap();
                assert!(closed_within(&mut c, Duration::from_secs(3)));
                (AKG_CLOSED, 2)
            }
        };
        assert_eq!(
            p.wait_close_event(serial, Duration::from_secs(5)),
            Some((reason, packets)),
            "round {round}: close event of serial {serial}"
        );
    }
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "connected"), u64::from(ROUNDS));
    assert_eq!(summary(&s.stdout, "closed"), u64::from(ROUNDS));
    let evs = close_events(&s.stdout);
    assert_eq!(evs.len(), ROUNDS as usize);
    assert!(
        evs.values().all(|v| v.len() == 1 && Some(v[0].slot) == slot0),
        "{evs:?}"
    );
}

#[test]
fn nothing_of_a_reset_client_reaches_the_next_one_on_its_slot() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX), ("TS_WORKERS", "1"), ("TS_CONNNUM", "1")]);
    const ROUNDS: usize = 9;
    let mut rng = Rng::new(0xb0b0_cafe);
    for round in 0..ROUNDS {
        // A: leaves replies pending (a FLOOD it never reads, 3 MB, under
        // the 4 MB output cap) and/or half a packet, then resets.
        let (mut a, sa, slot) = connect_info(p.port);
        let flood = round % 3 != 0;
        let partial = round % 3 != 1;
        let mut bytes = Vec::new();
        if flood {
            bytes.extend_from_slice(&frame(STX, ID_FLOOD, &2000u32.to_ne_bytes()));
        }
        if partial {
            bytes.extend_from_slice(&echo(&[b'A'; 1492])[..700]);
        }
        a.write_all(&bytes).unwrap();
        thread::sleep(Duration::from_millis(30));
        reset(a);
        // B: takes the same slot at once.
        let (mut b, sb, slot_b) = connect_info(p.port);
        assert_eq!(slot_b, slot, "round {round}: B did not get A's slot");
        assert!(sb > sa);
        let what = format!("round {round} (flood {flood}, partial {partial})");
        for i in 0..30u32 {
            let n = rng.range(4, 1492);
            let mut body: Vec<u8> = (0..n).map(|x| b'B' ^ (x as u8)).collect();
            body[..4].copy_from_slice(&i.to_ne_bytes());
            echo_round_trip(&mut b, &body, &what);
        }
        assert_silent(&mut b, Duration::from_millis(50), &what);
        drop(b);
        assert_eq!(
            p.wait_close_event(sa, Duration::from_secs(5)),
            Some((AKG_ERROR, if flood { 2 } else { 1 })),
            "{what}: A's close"
        );
        assert_eq!(
            p.wait_close_event(sb, Duration::from_secs(5)),
            Some((AKG_CLOSED, 31)),
            "{what}: B's close"
        );
    }
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "connected"), 2 * ROUNDS as u64);
    assert_eq!(summary(&s.stdout, "closed"), 2 * ROUNDS as u64);
}

#[test]
fn cross_thread_frames_of_a_reset_client_never_reach_the_next_one() {
    let p = Proc::testsrv(&[("TS_STX", STX_HEX), ("TS_WORKERS", "1"), ("TS_CONNNUM", "1")]);
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        // A subscribes for (practically) endless frames from the blaster.
        let (mut a, sa, slot) = connect_info(p.port);
        a.write_all(&sub(1_000_000, false)).unwrap();
        for _ in 0..5 {
            let (h, body) = read_frame(&mut a).expect("A's SUB frame");
            assert!(
                h.akg_id == ID_SUB && body_u32(&body) == sa,
                "round {round}: A got {h:?}"
            );
        }
        // Let frames pile up for a moment, then reset.
        thread::sleep(Duration::from_millis(5 * (round as u64 % 3)));
        reset(a);
        let (mut b, sb, slot_b) = connect_info(p.port);
        assert_eq!(slot_b, slot, "round {round}: B did not get A's slot");
        let what = format!("round {round}: B (serial {sb}) after A (serial {sa})");
        // For a while, B only ever sees its own ECHO replies.
        let t0 = Instant::now();
        let mut i = 0u32;
        let mut echoes = 0;
        while t0.elapsed() < Duration::from_millis(150) {
            let mut body = vec![b'b'; (i as usize * 37) % 1400 + 4];
            body[..4].copy_from_slice(&i.to_ne_bytes());
            echo_round_trip(&mut b, &body, &what);
            echoes += 1;
            i += 1;
        }
        assert_silent(&mut b, Duration::from_millis(30), &what);
        // B subscribes itself: exactly its 100 frames, all with its serial.
        b.write_all(&sub(100, false)).unwrap();
        for k in 0..100 {
            let (h, body) = read_frame(&mut b).unwrap_or_else(|e| panic!("{what}: SUB frame {k}: {e}"));
            assert!(
                h.akg_id == ID_SUB && h.pkglen == 12 && body_u32(&body) == sb,
                "{what}: SUB frame {k} is {h:?} {body:02x?}"
            );
        }
        echo_round_trip(&mut b, b"done", &what);
        drop(b);
        assert_eq!(
            p.wait_close_event(sa, Duration::from_secs(5)),
            Some((AKG_ERROR, 2)),
            "round {round}: A's close"
        );
        assert_eq!(
            p.wait_close_event(sb, Duration::from_secs(5)),
            Some((AKG_CLOSED, 1 + echoes + 2)),
            "{what}: B's close"
        );
    }
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
    assert_eq!(summary(&s.stdout, "connected"), 2 * ROUNDS as u64);
    assert_eq!(summary(&s.stdout, "closed"), 2 * ROUNDS as u64);
}
