//! The Rust API of the handler pool and the worker monitor, in-process:
//! `on_packet_blocking` runs on a pool thread, keeps each connection's
//! order with `on_packet` handlers, replies and closes through `PoolConn`,
//! and a panic in it closes only its connection; `on_stall` fires once per
//! stall, off the workers, while `Server::worker_stalled` says so.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mario::{AKG_CLOSED, AKG_ERROR, Server, Verdict};

const STX: u32 = 0x8eb6_9af7;

fn seq_of(body: &[u8]) -> u32 {
    u32::from_ne_bytes(body[0..4].try_into().unwrap())
}

#[test]
fn blocking_handlers_run_on_the_pool_in_order_with_worker_handlers() {
    let pool_threads = Arc::new(Mutex::new(HashSet::new()));
    let worker_threads = Arc::new(Mutex::new(HashSet::new()));
    let closes = Arc::new(Mutex::new(Vec::new()));
    let (pt, wt, cl) = (pool_threads.clone(), worker_threads.clone(), closes.clone());
    let wt2 = worker_threads.clone();
    let b = Server::builder()
        .workers(2)
        .pool_threads(3)
        .stx(STX)
        .on_connect(move |_, _| {
            wt2.lock().unwrap().insert(std::thread::current().id());
            Ok(())
        })
        .on_packet_blocking(0x0201, move |conn, pkt| {
            pt.lock().unwrap().insert(std::thread::current().id());
            let ms = pkt.body()[4];
            std::thread::sleep(Duration::from_millis(u64::from(ms)));
            match pkt.body()[5] {
                1 => {
                    assert!(conn.close(AKG_CLOSED));
                    Ok(Verdict::Continue)
                }
                2 => panic!("a blocking handler panics"),
                _ => {
                    assert!(conn.send_packet(pkt.id(), &pkt.body()[..4]));
                    Ok(Verdict::Continue)
                }
            }
        })
        .on_packet(0x0202, move |conn, _, pkt| {
            wt.lock().unwrap().insert(std::thread::current().id());
            conn.send_packet(pkt.id(), &pkt.body()[..4]);
            Ok(Verdict::Continue)
        })
        .on_close(move |conn, _, reason| cl.lock().unwrap().push((conn.id(), reason)));
    let srv = Running::start(b);
    // Mixed pipelined packets on 8 connections, split at random.
    let clients: Vec<_> = (0..8u64)
        .map(|k| {
            let port = srv.port;
            std::thread::spawn(move || {
                let mut rng = Rng::new(k + 1);
                let mut s = connect(port);
                let mut bytes = Vec::new();
                let mut want = Vec::new();
                for seq in 0..300u32 {
                    let pooled = rng.chance(2);
                    let id = if pooled { 0x0201 } else { 0x0202 };
                    let mut body = seq.to_ne_bytes().to_vec();
                    body.extend([u8::from(pooled && seq % 50 == 0), 0]);
                    bytes.extend(frame(STX, id, &body));
                    want.push((id, seq));
                }
                let w = spawn_writes(&s, random_writes(&mut rng, &bytes, 2000, 40));
                for (id, seq) in want {
                    let (h, b) = read_frame(&mut s).expect("reply");
                    assert_eq!((h.akg_id, seq_of(&b)), (id, seq));
                }
                w.join().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().expect("order kept");
    }
    let pool = pool_threads.lock().unwrap().clone();
    let workers = worker_threads.lock().unwrap().clone();
    assert!(!pool.is_empty() && pool.len() <= 3, "{} pool threads", pool.len());
    assert!(pool.is_disjoint(&workers), "a blocking handler ran on a worker");
    // A close from the pool handler, then a panic in one.
    let count = |reason| {
        closes
            .lock()
            .unwrap()
            .iter()
            .filter(|c: &&(_, u16)| c.1 == reason)
            .count()
    };
    assert!(wait_for(Duration::from_secs(2), || count(AKG_CLOSED) == 8));
    for (mode, reason) in [(1u8, AKG_CLOSED), (2, AKG_ERROR)] {
        let before = count(reason);
        let mut s = srv.connect();
        let mut body = 7u32.to_ne_bytes().to_vec();
        body.extend([20, mode]);
        s.write_all(&frame(STX, 0x0201, &body)).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(2)));
        assert!(wait_for(Duration::from_secs(2), || count(reason) == before + 1));
    }
    // The pool gauge: one packet in the pool while its handler sleeps.
    assert_eq!(srv.server.stats().total.pool_queued, 0);
    let mut s = srv.connect();
    let mut body = 9u32.to_ne_bytes().to_vec();
    body.extend([200, 0]);
    s.write_all(&frame(STX, 0x0201, &body)).unwrap();
    assert!(wait_for(Duration::from_secs(1), || srv
        .server
        .stats()
        .total
        .pool_queued
        == 1));
    assert_eq!(seq_of(&read_frame(&mut s).unwrap().1), 9);
    assert!(wait_for(Duration::from_secs(1), || srv
        .server
        .stats()
        .total
        .pool_queued
        == 0));
    drop(s);
    // The server still serves.
    let mut s = srv.connect();
    s.write_all(&frame(STX, 0x0202, &5u32.to_ne_bytes())).unwrap();
    assert_eq!(seq_of(&read_frame(&mut s).unwrap().1), 5);
    drop(s);
    srv.stop();
    let closes = closes.lock().unwrap();
    let ids: HashSet<_> = closes.iter().map(|c| c.0).collect();
    assert_eq!(ids.len(), closes.len(), "a close handler ran twice");
    assert_eq!(closes.len(), 12);
}

#[test]
fn on_stall_fires_once_per_stall_off_the_workers() {
    let stalls = Arc::new(Mutex::new(Vec::new()));
    let st = stalls.clone();
    let slept = Arc::new(AtomicUsize::new(0));
    let sl = slept.clone();
    let b = Server::builder()
        .workers(2)
        .stx(STX)
        .stall_threshold(200)
        .on_packet(0x0102, move |conn, _, pkt| {
            sl.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(700));
            conn.send_packet(pkt.id(), &[]);
            Ok(Verdict::Continue)
        })
        .on_stall(move |worker, id, ms| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            st.lock().unwrap().push((worker, id, ms, name));
        });
    let srv = Running::start(b);
    let mut s = srv.connect();
    let t0 = Instant::now();
    s.write_all(&frame(STX, 0x0102, &[])).unwrap();
    assert!(wait_for(Duration::from_secs(1), || !stalls
        .lock()
        .unwrap()
        .is_empty()));
    let (w, id, ms, thread) = stalls.lock().unwrap()[0].clone();
    assert!(
        srv.server.worker_stalled(w),
        "worker {w} not stalled during its stall"
    );
    let st = srv.server.stats();
    assert_eq!((st.workers[w].stalls, st.workers[w].stalled_workers), (1, 1));
    assert_eq!((st.total.stalls, st.total.stalled_workers), (1, 1));
    assert!(!srv.server.worker_stalled(1 - w));
    assert!(!srv.server.worker_stalled(99));
    assert_eq!(id, 0x0102);
    assert!(
        ms >= 200 && u128::from(ms) < 200 + scaled_ms(300).as_millis(),
        "noticed after {ms} ms"
    );
    assert!(!thread.starts_with("mario-worker"), "on_stall ran on {thread}");
    let (h, _) = read_frame(&mut s).expect("reply after the stall");
    assert_eq!(h.akg_id, 0x0102);
    assert!(t0.elapsed() >= Duration::from_millis(700));
    assert!(wait_for(Duration::from_millis(500), || !srv
        .server
        .worker_stalled(w)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stalls.lock().unwrap().len(), 1, "{:?}", stalls.lock().unwrap());
    let st = srv.server.stats();
    assert_eq!((st.total.stalls, st.total.stalled_workers), (1, 0));
    srv.stop();
}

#[test]
fn a_panicking_stall_callback_leaves_the_server_running_and_stoppable() {
    let b = Server::builder()
        .workers(2)
        .stx(STX)
        .stall_threshold(100)
        .on_packet(0x0102, |conn, _, pkt| {
            std::thread::sleep(Duration::from_millis(400));
            conn.send_packet(pkt.id(), &[]);
            Ok(Verdict::Continue)
        })
        .on_packet(0x0202, |conn, _, pkt| {
            conn.send_packet(pkt.id(), &pkt.body()[..4]);
            Ok(Verdict::Continue)
        })
        .on_stall(|_, _, _| panic!("a stall callback panics"));
    let srv = Running::start(b);
    let mut s = srv.connect();
    s.write_all(&frame(STX, 0x0102, &[])).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().0.akg_id, 0x0102);
    assert_eq!(srv.server.stats().total.stalls, 1);
    // The monitor goes on: a second stall is seen too.
    s.write_all(&frame(STX, 0x0102, &[])).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().0.akg_id, 0x0102);
    assert_eq!(srv.server.stats().total.stalls, 2);
    let mut t = srv.connect();
    t.write_all(&frame(STX, 0x0202, &3u32.to_ne_bytes())).unwrap();
    assert_eq!(seq_of(&read_frame(&mut t).unwrap().1), 3);
    srv.stop();
}

#[test]
fn stop_from_a_blocking_handler_only_asks() {
    let asked = Arc::new(Mutex::new(None));
    let (a, slot) = (asked.clone(), Arc::new(Mutex::new(None::<mario::StopHandle>)));
    let sl = slot.clone();
    let b = Server::builder()
        .workers(2)
        .stx(STX)
        .on_packet_blocking(0x0201, move |_, _| {
            let t0 = Instant::now();
            if let Some(h) = sl.lock().unwrap().as_ref() {
                h.stop();
            }
            *a.lock().unwrap() = Some(t0.elapsed());
            Ok(Verdict::Continue)
        });
    let srv = Running::start(b);
    *slot.lock().unwrap() = Some(srv.server.stop_handle());
    let mut s = srv.connect();
    s.write_all(&frame(STX, 0x0201, &[0; 6])).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    let took = asked.lock().unwrap().expect("the handler ran");
    assert!(
        took < scaled_ms(200),
        "StopHandle::stop in a blocking handler took {took:?}"
    );
    srv.stop();
}
