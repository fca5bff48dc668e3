//! The safe Rust API, in-process: the maritcp protocol against
//! `examples/login_server.rs` (compiled into this test), connection
//! callbacks and their reasons, and `ConnId`s used from other threads.

mod common;
mod protocol;

#[path = "../examples/login_server.rs"]
#[allow(dead_code)]
mod login_server;

use common::*;
use protocol::*;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mario::{AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT, ConnId, Server, ServerBuilder, Verdict};

fn local(s: &TcpStream) -> SocketAddr {
    s.local_addr().unwrap()
}

use common::capture::capture_logs;

/// Whether a captured message of `level` contains `needle`.
fn logged(level: log::Level, needle: &str) -> bool {
    common::capture::logged_count(level, needle) > 0
}

// ---------------------------------------------------------------------------
// The LOGIN server of examples/login_server.rs.

fn start_login_server() -> (Running<login_server::Session>, Arc<login_server::Online>) {
    let online = Arc::new(login_server::Online::new(login_server::WORKERS));
    (Running::start(login_server::builder(online.clone())), online)
}

#[test]
fn login_protocol() {
    let (r, _) = start_login_server();
    check_login_exact(r.port);
    check_pipelined(r.port);
    check_login_exact(r.port);
    r.stop();
}

#[test]
fn login_many_connections() {
    let (r, online) = start_login_server();
    check_many_connections(r.port, 4, 400, 5);
    // All those clients are gone: every user was uncounted.
    assert!(
        wait_for(Duration::from_secs(5), || online.total() == 0),
        "online {} after all clients left",
        online.total()
    );
    r.stop();
}

#[test]
fn wrong_login_length_closes_and_logs_an_error() {
    capture_logs();
    let (r, online) = start_login_server();
    for len in [8u16, 9, 11, 12] {
        let mut s = connect(r.port);
        let me = local(&s);
        s.write_all(&frame(STX, ID_LOGIN, &vec![0u8; len as usize - 8]))
            .unwrap();
        expect_closed_silently(
            &mut s,
            Duration::from_secs(1),
            &format!("LOGIN with pkglen {len}"),
        );
        let needle =
            format!("the handler of packet 0x6101 failed for {me}: invalid login packet: pkglen {len}");
        assert!(
            wait_for(Duration::from_secs(2), || logged(log::Level::Error, &needle)),
            "no error logged for {needle:?}"
        );
    }
    check_wrong_length_after_good(r.port);
    assert!(
        wait_for(Duration::from_secs(2), || online.total() == 0),
        "online {}",
        online.total()
    );
    check_bad_frames(r.port);
    check_login_exact(r.port);
    r.stop();
}

/// Users are counted per worker (connections go round robin), once per
/// connection, and uncounted when the connection closes for any reason.
#[test]
fn online_users_counted_per_worker() {
    let (r, online) = start_login_server();
    let mut socks: Vec<TcpStream> = (0..6).map(|_| connect(r.port)).collect();
    for s in socks.iter_mut() {
        s.write_all(&login(1)).unwrap();
        expect_reply(s);
    }
    // A reply is sent after the count: no waiting needed.
    assert_eq!(online.total(), 6);
    assert_eq!(
        (online.on_worker(0), online.on_worker(1)),
        (3, 3),
        "round robin over 2 workers"
    );
    // A second LOGIN on the same connection is not counted again.
    socks[0].write_all(&login(1)).unwrap();
    expect_reply(&mut socks[0]);
    assert_eq!(online.total(), 6);
    // Not logged in: not counted.
    let idle = connect(r.port);
    // Gone: FIN, RST, and a bad LOGIN (closed by the server).
    drop(socks.pop());
    reset(socks.pop().unwrap());
    let mut bad = socks.pop().unwrap();
    bad.write_all(&frame(STX, ID_LOGIN, &[0; 3])).unwrap();
    expect_closed_silently(&mut bad, Duration::from_secs(1), "bad LOGIN");
    assert!(
        wait_for(Duration::from_secs(2), || online.total() == 3),
        "online {}",
        online.total()
    );
    // Stop closes the rest.
    r.stop();
    assert_eq!(online.total(), 0, "every user uncounted after stop");
    drop(idle);
}

// ---------------------------------------------------------------------------
// Callbacks and reasons.

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Connect(ConnId),
    Packet(ConnId),
    Close(ConnId, u16),
    /// Something a callback saw that it should not have (callbacks must
    /// not panic on a worker thread, so they report it this way).
    Violation(String),
}

type Log = Arc<Mutex<Vec<(SocketAddr, Ev)>>>;

const ID_ECHO: u16 = 0x0001;
const ID_CLOSE_CUSTOM: u16 = 0x0002;
const ID_STOP: u16 = 0x0003;
const ID_CLOSE_TWICE: u16 = 0x0004;
const ID_NO_HANDLER_VERDICT: u16 = 0x0005;
const ID_CLOSE_THEN_SEND: u16 = 0x0006;
const CUSTOM_REASON: u16 = 0x1234;

/// A server that records every callback with the client's address.
fn recording_server(workers: u16, evs: &Log) -> ServerBuilder {
    let rec = |evs: &Log| {
        let evs = evs.clone();
        move |peer: SocketAddr, ev: Ev| evs.lock().unwrap().push((peer, ev))
    };
    let (on_conn, on_close) = (rec(evs), rec(evs));
    let mut b = Server::builder()
        .workers(workers)
        .stx(STX)
        .on_connect(move |c, _| {
            on_conn(c.peer(), Ev::Connect(c.id()));
            Ok(())
        })
        .on_close(move |c, _, reason| {
            if c.is_open() || c.close_reason() != reason {
                let v = format!(
                    "on_close({reason:#x}): open {}, close_reason {:#x}",
                    c.is_open(),
                    c.close_reason()
                );
                on_close(c.peer(), Ev::Violation(v));
            }
            on_close(c.peer(), Ev::Close(c.id(), reason))
        });
    // Each returns the verdict and, if it saw something wrong, a violation.
    type Handler = fn(&mut mario::Conn, &[u8]) -> (Verdict, Option<&'static str>);
    let handlers: [(u16, Handler); 6] = [
        (ID_ECHO, |c, body| {
            let ok = c.send_packet(ID_ECHO, body);
            (Verdict::Continue, (!ok).then_some("echo send failed"))
        }),
        (ID_CLOSE_CUSTOM, |c, _| {
            c.close(CUSTOM_REASON);
            let bad = c.is_open() || c.close_reason() != CUSTOM_REASON;
            (Verdict::Continue, bad.then_some("still open after close"))
        }),
        (ID_STOP, |_, _| (Verdict::Stop, None)),
        (ID_CLOSE_TWICE, |c, _| {
            c.close(AKG_CLOSED);
            c.close(AKG_TIMEOUT);
            (
                Verdict::Stop,
                (c.close_reason() != AKG_CLOSED).then_some("second close changed the reason"),
            )
        }),
        (ID_NO_HANDLER_VERDICT, |_, _| (Verdict::NoHandler, None)),
        (ID_CLOSE_THEN_SEND, |c, _| {
            c.close(AKG_CLOSED);
            (
                Verdict::Continue,
                c.send(b"late").then_some("send after close succeeded"),
            )
        }),
    ];
    for (id, f) in handlers {
        let on_packet = rec(evs);
        b = b.on_packet(id, move |c, _, pkt| {
            on_packet(c.peer(), Ev::Packet(c.id()));
            let (verdict, violation) = f(c, pkt.body());
            if let Some(v) = violation {
                on_packet(c.peer(), Ev::Violation(v.to_string()));
            }
            Ok(verdict)
        });
    }
    b
}

#[test]
fn connect_and_close_callbacks_run_once_with_reasons() {
    let evs: Log = Arc::default();
    let r = Running::start(recording_server(2, &evs));
    // (what the client does, the close reason(s) allowed)
    type Act = fn(TcpStream);
    let cases: Vec<(&str, Act, &[u16])> = vec![
        ("peer FIN", |s| drop(s), &[AKG_CLOSED]),
        (
            "peer half-close",
            |mut s| {
                half_close(&s);
                assert_eq!(read_until_closed(&mut s, Duration::from_secs(2)), Some(vec![]));
            },
            &[AKG_CLOSED],
        ),
        ("peer RST", reset, &[AKG_CLOSED, AKG_ERROR]),
        (
            "close with own reason",
            |mut s| {
                s.write_all(&frame(STX, ID_CLOSE_CUSTOM, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "close(0x1234)");
            },
            &[CUSTOM_REASON],
        ),
        (
            "Verdict::Stop",
            |mut s| {
                s.write_all(&frame(STX, ID_STOP, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "Verdict::Stop");
            },
            &[AKG_ERROR],
        ),
        (
            "close twice",
            |mut s| {
                s.write_all(&frame(STX, ID_CLOSE_TWICE, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "close twice");
            },
            &[AKG_CLOSED],
        ),
        (
            "Verdict::NoHandler",
            |mut s| {
                s.write_all(&frame(STX, ID_NO_HANDLER_VERDICT, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "Verdict::NoHandler");
            },
            &[AKG_CLOSED],
        ),
        (
            "no handler",
            |mut s| {
                s.write_all(&frame(STX, 0x0777, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "unregistered id");
            },
            &[AKG_CLOSED],
        ),
        (
            "bad stx",
            |mut s| {
                s.write_all(&frame(1, ID_ECHO, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "bad stx");
            },
            &[AKG_CLOSED],
        ),
        (
            "close then send",
            |mut s| {
                s.write_all(&frame(STX, ID_CLOSE_THEN_SEND, &[])).unwrap();
                expect_closed_silently(&mut s, Duration::from_secs(1), "close then send");
            },
            &[AKG_CLOSED],
        ),
    ];
    let mut expect: Vec<(SocketAddr, &str, &[u16], bool)> = Vec::new();
    for (what, act, reasons) in cases {
        let mut s = connect(r.port);
        let me = local(&s);
        // Every connection first echoes one packet: the connect callback
        // has run by then.
        s.write_all(&frame(STX, ID_ECHO, b"hi")).unwrap();
        let (h, b) = read_frame(&mut s).unwrap();
        assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, &b"hi"[..]));
        act(s);
        expect.push((me, what, reasons, false));
    }
    // Open when the server stops: closed as `closed`.
    let mut at_stop: Vec<TcpStream> = (0..3).map(|_| connect(r.port)).collect();
    for s in at_stop.iter_mut() {
        s.write_all(&frame(STX, ID_ECHO, b"x")).unwrap();
        read_frame(s).unwrap();
        expect.push((local(s), "open at stop", &[AKG_CLOSED], true));
    }
    // Wait for the closes of the first group, then stop.
    let closes = |evs: &Log| {
        evs.lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| matches!(e, Ev::Close(..)))
            .count()
    };
    let n_first = expect.len() - at_stop.len();
    assert!(
        wait_for(Duration::from_secs(5), || closes(&evs) >= n_first),
        "only {} close callbacks: {:?}",
        closes(&evs),
        evs.lock().unwrap()
    );
    r.stop();
    for s in at_stop.iter_mut() {
        assert_eq!(
            read_until_closed(s, Duration::from_secs(2)),
            Some(vec![]),
            "closed at stop"
        );
    }

    let evs = evs.lock().unwrap().clone();
    let violations: Vec<_> = evs
        .iter()
        .filter(|(_, e)| matches!(e, Ev::Violation(_)))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");
    let mut by_peer: HashMap<SocketAddr, Vec<Ev>> = HashMap::new();
    for (p, e) in &evs {
        by_peer.entry(*p).or_default().push(e.clone());
    }
    assert_eq!(
        by_peer.len(),
        expect.len(),
        "one set of callbacks per client: {evs:?}"
    );
    for (peer, what, reasons, _) in &expect {
        let v = by_peer
            .get(peer)
            .unwrap_or_else(|| panic!("{what}: no callbacks for {peer}"));
        let Some(Ev::Connect(id)) = v.first().cloned() else {
            panic!("{what}: first callback is not connect: {v:?}");
        };
        assert_eq!(
            v.iter().filter(|e| matches!(e, Ev::Connect(_))).count(),
            1,
            "{what}: {v:?}"
        );
        let closes: Vec<_> = v.iter().filter(|e| matches!(e, Ev::Close(..))).collect();
        assert_eq!(closes.len(), 1, "{what}: exactly one close callback: {v:?}");
        let Some(Ev::Close(cid, reason)) = v.last().cloned() else {
            panic!("{what}: last callback is not close: {v:?}");
        };
        assert_eq!(cid, id, "{what}: same ConnId at connect and close");
        assert!(
            reasons.contains(&reason),
            "{what}: reason {reason:#x}, expected one of {reasons:x?}"
        );
        assert!(v.iter().all(|e| match e {
            Ev::Packet(p) => *p == id,
            _ => true,
        }));
    }
    // Distinct connections have distinct ids.
    let mut ids: Vec<u64> = evs
        .iter()
        .filter_map(|(_, e)| match e {
            Ev::Connect(id) => Some(id.as_raw()),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expect.len());
}

// ---------------------------------------------------------------------------
// ConnId from other threads.

/// A server whose connect callback hands each ConnId to the test.
fn id_server(workers: u16) -> (Running, std::sync::mpsc::Receiver<(SocketAddr, ConnId)>, Log) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let evs: Log = Arc::default();
    let evs2 = evs.clone();
    let b = Server::builder()
        .workers(workers)
        .stx(STX)
        .read_timeout(0)
        .on_connect(move |c, _| {
            let _ = tx.lock().unwrap().send((c.peer(), c.id()));
            Ok(())
        })
        .on_close(move |c, _, reason| evs2.lock().unwrap().push((c.peer(), Ev::Close(c.id(), reason))))
        .on_packet(ID_ECHO, |c, _, pkt| {
            c.send_packet(ID_ECHO, pkt.body());
            Ok(Verdict::Continue)
        });
    (Running::start(b), rx, evs)
}

fn id_of(rx: &std::sync::mpsc::Receiver<(SocketAddr, ConnId)>, s: &TcpStream) -> ConnId {
    let me = local(s);
    let t0 = Instant::now();
    loop {
        let left = Duration::from_secs(5).saturating_sub(t0.elapsed());
        let (peer, id) = rx.recv_timeout(left).expect("connect callback");
        if peer == me {
            return id;
        }
    }
}

#[test]
fn conn_id_send_to_and_close_id_from_other_threads() {
    // One worker: a new connection reuses the slot of a closed one.
    let (r, rx, evs) = id_server(1);
    let mut a = connect(r.port);
    let id_a = id_of(&rx, &a);

    // send_to from this thread and from several others: every frame
    // arrives whole.
    assert!(mario::send_to(id_a, &frame(STX, 0x0100, b"first")));
    let (h, b) = read_frame(&mut a).unwrap();
    assert_eq!((h.akg_id, b.as_slice()), (0x0100, &b"first"[..]));
    let senders: Vec<_> = (0..4u16)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..100u16 {
                    assert!(mario::send_to(id_a, &frame(STX, 0x0200 + t, &i.to_ne_bytes())));
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut next = [0u16; 4];
    for _ in 0..400 {
        let (h, b) = read_frame(&mut a).unwrap();
        let t = (h.akg_id - 0x0200) as usize;
        assert!(t < 4, "unexpected frame {h:?}");
        assert_eq!(b, next[t].to_ne_bytes(), "frames of one sender arrive in order");
        next[t] += 1;
    }
    expect_quiet(&mut a, Duration::from_millis(100));

    // close_id from another thread: the client sees EOF, the close
    // callback gets the reason.
    std::thread::spawn(move || mario::close_id(id_a, 0x4321))
        .join()
        .unwrap();
    expect_closed_silently(&mut a, Duration::from_secs(2), "close_id");
    assert!(wait_for(Duration::from_secs(2), || !evs
        .lock()
        .unwrap()
        .is_empty()));
    assert_eq!(evs.lock().unwrap()[0].1, Ev::Close(id_a, 0x4321));

    // The id is now inert: a new client (on the same worker, likely the
    // same slot) never gets its bytes, nor is it closed by it.
    let mut b = connect(r.port);
    let id_b = id_of(&rx, &b);
    assert_ne!(id_b, id_a);
    let sent = std::thread::spawn(move || mario::send_to(id_a, b"STALE BYTES"))
        .join()
        .unwrap();
    let sent_here = mario::send_to(id_a, b"STALE AGAIN");
    std::thread::spawn(move || mario::close_id(id_a, AKG_ERROR))
        .join()
        .unwrap();
    mario::close_id(id_a, AKG_ERROR);
    b.write_all(&frame(STX, ID_ECHO, b"b")).unwrap();
    let (h, body) = read_frame(&mut b).expect("echo on the new connection");
    assert_eq!(
        (h, body.as_slice()),
        (
            Head {
                stx: STX,
                pkglen: 9,
                akg_id: ID_ECHO
            },
            &b"b"[..]
        )
    );
    expect_quiet(&mut b, Duration::from_millis(200));
    assert_eq!(
        evs.lock().unwrap().len(),
        1,
        "no close callback for the new client"
    );
    assert!(mario::send_to(id_b, b"ok"));
    let mut two = [0u8; 2];
    b.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"ok");
    eprintln!("send_to on a closed id returned {sent} (other thread), {sent_here} (test thread)");

    // Stop: the remaining connection is closed once.
    r.stop();
    assert_eq!(read_until_closed(&mut b, Duration::from_secs(2)), Some(vec![]));
    let evs = evs.lock().unwrap().clone();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[1].1, Ev::Close(id_b, AKG_CLOSED));
}

/// send_to and close_id called from inside a handler of another
/// connection (possibly on another worker).
#[test]
fn conn_id_used_from_a_handler() {
    let target: Arc<Mutex<Option<ConnId>>> = Arc::default();
    let t2 = target.clone();
    let b = Server::builder()
        .workers(2)
        .stx(STX)
        .on_packet(0x0010, move |c, _, _| {
            *t2.lock().unwrap() = Some(c.id());
            c.send_packet(0x0010, &[]);
            Ok(Verdict::Continue)
        })
        .on_packet(0x0011, {
            let target = target.clone();
            move |c, _, pkt| {
                let id = target.lock().unwrap().expect("target registered");
                let ok = mario::send_to(id, &frame(STX, 0x0012, pkt.body()));
                c.send_packet(0x0011, &[ok as u8]);
                Ok(Verdict::Continue)
            }
        })
        .on_packet(0x0013, move |c, _, _| {
            let id = target.lock().unwrap().expect("target registered");
            mario::close_id(id, CUSTOM_REASON);
            c.send_packet(0x0013, &[]);
            Ok(Verdict::Continue)
        });
    let r = Running::start(b);
    let mut t = connect(r.port);
    t.write_all(&frame(STX, 0x0010, &[])).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.akg_id, 0x0010);
    // Two other clients: with round robin over 2 workers, one of them is
    // on the target's worker and one is not.
    for _ in 0..2 {
        let mut o = connect(r.port);
        o.write_all(&frame(STX, 0x0011, b"via")).unwrap();
        let (h, b) = read_frame(&mut o).unwrap();
        assert_eq!(
            (h.akg_id, b.as_slice()),
            (0x0011, &[1u8][..]),
            "send_to from a handler"
        );
        let (h, b) = read_frame(&mut t).unwrap();
        assert_eq!((h.akg_id, b.as_slice()), (0x0012, &b"via"[..]));
    }
    let mut o = connect(r.port);
    o.write_all(&frame(STX, 0x0013, &[])).unwrap();
    assert_eq!(read_frame(&mut o).unwrap().0.akg_id, 0x0013);
    expect_closed_silently(&mut t, Duration::from_secs(2), "close_id from a handler");
    expect_quiet(&mut o, Duration::from_millis(100));
    r.stop();
}

#[test]
fn stop_before_any_client_and_port_is_freed() {
    let r = Running::start(Server::builder().workers(3).stx(STX));
    let port = r.port;
    r.stop();
    // The listening socket is closed: nothing accepts on the port.
    let refused = TcpStream::connect(("127.0.0.1", port)).map(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.read(&mut [0u8; 1])
    });
    assert!(
        !matches!(refused, Ok(Err(ref e)) if e.kind() == io::ErrorKind::WouldBlock),
        "port {port} still accepts after stop"
    );
}

/// Connections that pile up while the only worker is busy are all taken
/// once it is free, in slices (the worker accepts at most 64 per turn and
/// must come back for the rest by itself: the listening socket is
/// edge-triggered, so no new event would announce them).
#[test]
fn connections_queued_while_the_worker_is_busy_are_all_served() {
    const N: usize = 300;
    let b = Server::builder()
        .workers(1)
        .stx(STX)
        .on_packet(0x0020, |c, _, _| {
            // Hold the only worker while the clients connect.
            std::thread::sleep(Duration::from_millis(500));
            c.send_packet(0x0020, &[]);
            Ok(Verdict::Continue)
        })
        .on_packet(0x0021, |c, _, pkt| {
            c.send_packet(0x0021, pkt.body());
            Ok(Verdict::Continue)
        });
    let r = Running::start(b);
    let mut busy = connect(r.port);
    busy.write_all(&frame(STX, 0x0020, &[])).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // The kernel completes these handshakes; nobody accepts yet.
    let t0 = Instant::now();
    let mut conns: Vec<TcpStream> = (0..N).map(|_| connect(r.port)).collect();
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "connecting took {:?}: the worker was not busy throughout",
        t0.elapsed()
    );
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&frame(STX, 0x0021, &(i as u32).to_ne_bytes()))
            .unwrap();
    }
    assert_eq!(read_frame(&mut busy).unwrap().0.akg_id, 0x0020);
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (h, body) = read_frame(c).unwrap_or_else(|e| panic!("connection {i} not served: {e}"));
        assert_eq!(
            (h.akg_id, body.as_slice()),
            (0x0021, &(i as u32).to_ne_bytes()[..])
        );
    }
    r.stop();
}

/// A handler that panics (this test binary unwinds, as an rlib user's
/// build may) costs its connection, not its worker: the connection is
/// closed as `AKG_ERROR` with one error line naming the packet id, and the
/// one worker goes on serving its other connections and new ones. A panic
/// in the connect handler closes that connection the same way; one in the
/// close handler is logged and the connection still closes once.
#[test]
fn a_panicking_handler_closes_its_connection_and_the_worker_goes_on() {
    capture_logs();
    const ID_PANIC: u16 = 0x0bad;
    const ID_ECHO_P: u16 = 0x0b01;
    const ID_PANIC_IN_CLOSE: u16 = 0x0b02;
    let closes: Arc<Mutex<Vec<(SocketAddr, u16)>>> = Arc::default();
    let closes2 = closes.clone();
    // The next client to connect is refused by a panic while this is set.
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refuse2 = refuse.clone();
    let r = Running::start(
        Server::builder()
            .workers(1)
            .stx(STX)
            .read_timeout(0)
            .on_connect(move |c, _| {
                if refuse2.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    panic!("connect handler refuses {}", c.peer());
                }
                Ok(())
            })
            .on_packet(ID_ECHO_P, |c, _, pkt| {
                c.send(pkt.bytes());
                Ok(Verdict::Continue)
            })
            .on_packet(ID_PANIC, |_, _, pkt| panic!("boom in packet {:#x}", pkt.id()))
            .on_packet(ID_PANIC_IN_CLOSE, |c, _, _| {
                c.close(0x0777);
                Ok(Verdict::Continue)
            })
            .on_close(move |c, _, reason| {
                closes2.lock().unwrap().push((c.peer(), reason));
                if reason == 0x0777 {
                    panic!("close handler fails");
                }
            }),
    );
    let echo = |s: &mut TcpStream, tag: u8| {
        let f = frame(STX, ID_ECHO_P, &[tag; 5]);
        s.write_all(&f).unwrap();
        let mut got = vec![0u8; f.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, f);
    };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let closed_with = |who: SocketAddr, reason: u16| {
        let t0 = Instant::now();
        loop {
            let n = closes
                .lock()
                .unwrap()
                .iter()
                .filter(|c| **c == (who, reason))
                .count();
            if n > 0 || t0.elapsed() > Duration::from_secs(5) {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let mut a = connect();
    echo(&mut a, 1);
    let mut b = connect();
    echo(&mut b, 2);
    b.write_all(&frame(STX, ID_PANIC, &[])).unwrap();
    expect_closed_silently(
        &mut b,
        Duration::from_secs(2),
        "the panicking handler's connection",
    );
    assert_eq!(closed_with(local(&b), AKG_ERROR), 1, "closed once, as error");
    // The same worker still serves the others, old and new.
    echo(&mut a, 3);
    let mut c = connect();
    echo(&mut c, 4);
    let panics = |needle: &str| common::capture::logged_with_all(log::Level::Error, &["panicked", needle]);
    assert_eq!(panics("packet 0x0bad"), 1, "one error line with the packet id");
    assert_eq!(panics("boom in packet 0xbad"), 1, "the panic's message is logged");

    // Connect handler.
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = connect();
    expect_closed_silently(&mut refused, Duration::from_secs(2), "the refused connection");
    assert_eq!(closed_with(local(&refused), AKG_ERROR), 1);
    assert_eq!(panics("the connect handler"), 1);

    // Close handler: logged, the connection closes once all the same.
    let mut d = connect();
    d.write_all(&frame(STX, ID_PANIC_IN_CLOSE, &[])).unwrap();
    expect_closed_silently(&mut d, Duration::from_secs(2), "close(0x0777)");
    assert_eq!(closed_with(local(&d), 0x0777), 1);
    assert_eq!(panics("the close handler (0x0777)"), 1);
    echo(&mut a, 5);
    echo(&mut c, 6);
    r.stop();
    let all = closes.lock().unwrap();
    for s in [&a, &c] {
        let n = all.iter().filter(|(p, _)| *p == local(s)).count();
        assert_eq!(n, 1, "{} closed {n} times", local(s));
    }
}
