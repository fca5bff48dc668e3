//! The Rust API's closes and re-entrant calls on one's own connection:
//! every close initiator delivers everything queued before it (exact byte
//! counts), and writes by id made on the owning worker land in the stream
//! where they are made, exactly like direct writes, with return values
//! that mean "queued".

mod common;
use common::{Running, STX, frame, read_until_end};

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mario::{ConnId, Server, ServerBuilder, Verdict};

const ID_FLOOD: u16 = 0x0008;
const ID_FLOOD_CLOSE: u16 = 0x0009;
const ID_FLOOD_STOP: u16 = 0x000a;
const ID_ORDER: u16 = 0x000b;
const ID_CLOSE_BY_ID: u16 = 0x000c;
const ID_LAST: u16 = 0x000d;
const ID_STALE: u16 = 0x000e;
const FLOOD_N: usize = 20_000;
const BODY: usize = 1492;

/// Queues FLOOD_N frames of 1500 bytes (30,000,000 bytes).
fn flood(c: &mut mario::Conn) {
    for _ in 0..FLOOD_N {
        assert!(c.send_packet(ID_FLOOD, &[b'x'; BODY]));
    }
}

/// Reads to the end: (bytes, how it ended, the last 64 bytes).
fn read_all(s: &mut TcpStream) -> (usize, io::Result<()>, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut last = Vec::new();
    let (n, end) = read_until_end(s, 256 * 1024, Duration::ZERO, |b| {
        last.extend_from_slice(b);
        let cut = last.len().saturating_sub(64);
        last.drain(..cut);
    });
    (n, end, last)
}

type Closes = Arc<Mutex<Vec<(ConnId, u16)>>>;

fn flood_server(ids: Arc<Mutex<Vec<ConnId>>>, closes: Closes) -> ServerBuilder {
    Server::builder()
        .workers(1)
        .stx(STX)
        .read_timeout(0)
        .output_limit(64 << 20)
        .on_connect(move |c, _| {
            ids.lock().unwrap().push(c.id());
            Ok(())
        })
        .on_packet(ID_FLOOD, |c, _, _| {
            flood(c);
            Ok(Verdict::Continue)
        })
        .on_packet(ID_FLOOD_CLOSE, |c, _, _| {
            flood(c);
            c.close(0x0777);
            Ok(Verdict::Continue)
        })
        .on_packet(ID_FLOOD_STOP, |c, _, _| {
            flood(c);
            Ok(Verdict::Stop)
        })
        .on_close(move |c, _, reason| closes.lock().unwrap().push((c.id(), reason)))
}

/// Every Rust close initiator delivers all 30,000,000 bytes, then FIN.
#[test]
fn every_rust_close_delivers_everything_then_fin() {
    let ids: Arc<Mutex<Vec<ConnId>>> = Arc::default();
    let closes: Closes = Arc::default();
    let r = Running::start(flood_server(ids.clone(), closes.clone()));
    let want = FLOOD_N * 1500;
    let reason_of = |id: ConnId| {
        let t0 = Instant::now();
        loop {
            if let Some(&(_, r)) = closes.lock().unwrap().iter().find(|(i, _)| *i == id) {
                return r;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no close callback");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let last_id = || *ids.lock().unwrap().last().unwrap();

    // Conn::close in the handler.
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_FLOOD_CLOSE, &[])).unwrap();
    let (n, end, _) = read_all(&mut s);
    assert_eq!((n, end.is_ok()), (want, true), "Conn::close");
    assert_eq!(reason_of(last_id()), 0x0777);

    // Verdict::Stop (closed as error, gracefully).
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_FLOOD_STOP, &[])).unwrap();
    let (n, end, _) = read_all(&mut s);
    assert_eq!((n, end.is_ok()), (want, true), "Verdict::Stop");
    assert_eq!(reason_of(last_id()), mario::AKG_ERROR);

    // close_id from another thread, once the output is queued.
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_FLOOD, &[])).unwrap();
    let mut first = [0u8; 1500];
    s.read_exact(&mut first).unwrap();
    let id = last_id();
    std::thread::spawn(move || mario::close_id(id, 0x0778))
        .join()
        .unwrap();
    let (n, end, _) = read_all(&mut s);
    assert_eq!((n + 1500, end.is_ok()), (want, true), "close_id");
    assert_eq!(reason_of(id), 0x0778);

    // The peer's half-close.
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_FLOOD, &[])).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (n, end, _) = read_all(&mut s);
    assert_eq!((n, end.is_ok()), (want, true), "half-close");
    assert_eq!(reason_of(last_id()), mario::AKG_CLOSED);
    r.stop();
}

/// Section 3: writes by id on the owning worker land where they are made;
/// a write in the close handler is the last data before FIN; a close by id
/// of the connection a handler holds refuses later output and runs when
/// the handler returns; return values mean "queued".
#[test]
fn writes_by_id_land_in_order_and_closes_by_id_wait_for_the_handler() {
    let results: Arc<Mutex<Vec<(&'static str, bool)>>> = Arc::default();
    let (r1, r2, r3) = (results.clone(), results.clone(), results.clone());
    let f = |tag: &[u8]| frame(STX, ID_LAST, tag);
    let r = Running::start(
        Server::builder()
            .workers(1)
            .stx(STX)
            .read_timeout(0)
            .on_packet(ID_ORDER, move |c, _, _| {
                let id = c.id();
                let mut res = r1.lock().unwrap();
                res.push(("send_to A", mario::send_to(id, &frame(STX, ID_LAST, b"A"))));
                res.push(("send_packet B", c.send_packet(ID_LAST, b"B")));
                res.push(("send_to BYE", mario::send_to(id, &frame(STX, ID_LAST, b"BYE"))));
                drop(res);
                c.close(0x0701);
                Ok(Verdict::Continue)
            })
            .on_packet(ID_CLOSE_BY_ID, move |c, _, _| {
                let id = c.id();
                let mut res = r2.lock().unwrap();
                res.push(("send before", c.send_packet(ID_LAST, b"before")));
                res.push(("close_id", mario::close_id(id, 0x0702)));
                res.push(("open after close_id", c.is_open()));
                res.push(("send after close_id", c.send_packet(ID_LAST, b"after")));
                res.push((
                    "send_to after close_id",
                    mario::send_to(id, &frame(STX, ID_LAST, b"after")),
                ));
                Ok(Verdict::Continue)
            })
            .on_close(move |c, _, reason| {
                if reason == 0x0701 || reason == 0x0702 {
                    let mut res = r3.lock().unwrap();
                    res.push((
                        "send_to in on_close",
                        mario::send_to(c.id(), &frame(STX, ID_LAST, b"X")),
                    ));
                    res.push(("send in on_close", c.send_packet(ID_LAST, b"Y")));
                }
            }),
    );
    let mut s = r.connect();
    s.write_all(&frame(STX, ID_ORDER, &[])).unwrap();
    let (_, end, last) = read_all(&mut s);
    assert!(end.is_ok(), "{end:?}");
    let want: Vec<u8> = [f(b"A"), f(b"B"), f(b"BYE"), f(b"X"), f(b"Y")].concat();
    assert_eq!(last, want, "the whole stream, in order");
    let res = results.lock().unwrap().clone();
    assert!(res.iter().all(|(_, ok)| *ok), "{res:?}");
    results.lock().unwrap().clear();

    let mut s = r.connect();
    s.write_all(&frame(STX, ID_CLOSE_BY_ID, &[])).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, [f(b"before"), f(b"X"), f(b"Y")].concat());
    let res = results.lock().unwrap().clone();
    assert_eq!(
        res,
        vec![
            ("send before", true),
            ("close_id", true),
            ("open after close_id", false),
            ("send after close_id", false),
            ("send_to after close_id", false),
            ("send_to in on_close", true),
            ("send in on_close", true),
        ]
    );
    r.stop();
}

/// A write by id from another thread returns true when the command is
/// queued, false for a connection known gone; it never reaches the next
/// connection on the same slot.
#[test]
fn writes_by_id_from_another_thread_mean_queued() {
    let ids: Arc<Mutex<Vec<(ConnId, u32)>>> = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let stale: Arc<Mutex<Option<ConnId>>> = Arc::default();
    let refused: Arc<Mutex<Option<(bool, bool)>>> = Arc::default();
    let (i2, c2, s2, r2) = (ids.clone(), closed.clone(), stale.clone(), refused.clone());
    let r = Running::start(
        Server::builder()
            .workers(1)
            .stx(STX)
            .read_timeout(0)
            .on_packet(ID_STALE, move |_, _, _| {
                let id = s2.lock().unwrap().expect("a stale id");
                *r2.lock().unwrap() = Some((mario::send_to(id, b"x"), mario::close_id(id, 1)));
                Ok(Verdict::Continue)
            })
            .on_connect(move |c, _| {
                i2.lock().unwrap().push((c.id(), c.slot()));
                Ok(())
            })
            .on_close(move |_, _, _| c2.store(true, Ordering::SeqCst)),
    );
    let mut a = r.connect();
    assert!(common::wait_for(Duration::from_secs(5), || ids
        .lock()
        .unwrap()
        .len()
        == 1));
    let (id_a, slot_a) = ids.lock().unwrap()[0];
    assert!(mario::send_to(id_a, &frame(STX, ID_LAST, b"hi")));
    let mut got = vec![0u8; 10];
    a.read_exact(&mut got).unwrap();
    assert_eq!(got, frame(STX, ID_LAST, b"hi"));
    drop(a);
    assert!(common::wait_for(Duration::from_secs(5), || closed.load(Ordering::SeqCst)));
    // The slot serves a new client; the old id reaches nothing.
    let mut b = r.connect();
    assert!(common::wait_for(Duration::from_secs(5), || ids
        .lock()
        .unwrap()
        .len()
        == 2));
    let (id_b, slot_b) = ids.lock().unwrap()[1];
    assert_eq!(slot_b, slot_a, "the slot is reused");
    assert_ne!(id_b, id_a);
    mario::send_to(id_a, b"stale");
    mario::close_id(id_a, 1);
    // On the owning worker the same calls are refused at once.
    *stale.lock().unwrap() = Some(id_a);
    b.write_all(&frame(STX, ID_STALE, &[])).unwrap();
    assert!(common::wait_for(Duration::from_secs(5), || refused
        .lock()
        .unwrap()
        .is_some()));
    assert_eq!(
        *refused.lock().unwrap(),
        Some((false, false)),
        "(send_to, close_id) of a stale id"
    );
    assert!(mario::send_to(id_b, &frame(STX, ID_LAST, b"b")));
    let mut got = vec![0u8; 9];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, frame(STX, ID_LAST, b"b"), "only b's own bytes");
    r.stop();
}

/// Output over the cap written in a handler resets that connection only
/// after the handler returns: its close callback never runs inside the
/// write (where the application may hold a lock the callback takes, or be
/// walking its list of connections).
#[test]
fn an_over_cap_write_in_a_handler_resets_after_the_handler_returns() {
    let ids: Arc<Mutex<Vec<ConnId>>> = Arc::default();
    let in_handler = Arc::new(AtomicBool::new(false));
    let closes: Arc<Mutex<Vec<(u16, bool)>>> = Arc::default();
    let (ids2, ids3, in2, in3, closes2) = (
        ids.clone(),
        ids.clone(),
        in_handler.clone(),
        in_handler.clone(),
        closes.clone(),
    );
    let r = Running::start(
        Server::builder()
            .workers(1)
            .output_limit(64 * 1024)
            .framing(mario::Framing::Line {
                delimiter: b"\n".to_vec(),
                max_frame: 64,
            })
            .on_connect(move |c, _| {
                ids2.lock().unwrap().push(c.id());
                Ok(())
            })
            .on_frame(move |c, _, _line| {
                // Blast the other (first) connection until its cap refuses.
                let victim = ids.lock().unwrap()[0];
                in2.store(true, Ordering::SeqCst);
                let mut refused_after = None;
                for i in 0..1000 {
                    if !mario::send_to(victim, &[b'x'; 8192]) {
                        refused_after = Some(i);
                        break;
                    }
                }
                // Writes to the victim stay refused until the handler ends.
                assert!(!mario::send_to(victim, b"more"));
                in2.store(false, Ordering::SeqCst);
                c.send(format!("refused after {refused_after:?}\n").as_bytes());
                Ok(Verdict::Continue)
            })
            .on_close(move |_, _, reason| closes2.lock().unwrap().push((reason, in3.load(Ordering::SeqCst)))),
    );
    let victim = r.connect();
    assert!(common::wait_for(Duration::from_secs(5), || ids3
        .lock()
        .unwrap()
        .len()
        == 1));
    let mut blaster = r.connect();
    blaster.write_all(b"go\n").unwrap();
    let mut reply = [0u8; 64];
    let n = blaster.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(reply.starts_with("refused after Some("), "{reply}");
    assert!(common::wait_for(Duration::from_secs(5), || !closes
        .lock()
        .unwrap()
        .is_empty()));
    assert_eq!(
        *closes.lock().unwrap(),
        vec![(mario::AKG_ERROR, false)],
        "the victim's close callback ran inside the handler's write"
    );
    drop(victim);
    r.stop();
}
