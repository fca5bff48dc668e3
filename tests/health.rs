//! The worker monitor and the handler pool, over real sockets against the
//! ASan-built C program tests/c/healthsrv.c (see its header for the packet
//! ids): a stalled worker gets no new connections and recovers, a lone
//! stalled worker keeps new clients waiting in the backlog (none refused),
//! a handler that never returns does not hold up a stop; pool handlers do
//! not delay worker handlers, keep each connection's order, close cleanly
//! and apply TCP backpressure.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const STX: u32 = 0x8eb6_9af7;
const LOGIN: u16 = 0x6101;
const WHO: u16 = 0x0101;
const SLEEP: u16 = 0x0102;
const PSLEEP: u16 = 0x0201;
const WSEQ: u16 = 0x0202;
const PCLOSE: u16 = 0x0203;

fn healthsrv(env: &[(&str, &str)]) -> Proc {
    Proc::ctest("healthsrv", env)
}

/// The tests of this file measure latencies: they run one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// The worker a connection is on.
fn who(s: &mut TcpStream) -> u16 {
    s.write_all(&frame(STX, WHO, &[])).unwrap();
    let (h, b) = read_frame(s).expect("WHO reply");
    assert_eq!(h.akg_id, WHO);
    u16::from_ne_bytes([b[0], b[1]])
}

/// A connection placed on worker `w` (new ones are placed round robin).
fn conn_on(port: u16, w: u16) -> TcpStream {
    for _ in 0..16 {
        let mut s = connect(port);
        if who(&mut s) == w {
            return s;
        }
    }
    panic!("no connection landed on worker {w}");
}

/// Connects, sends LOGIN and WHO in one write; returns the time to the
/// LOGIN reply and the worker that answered.
fn login(port: u16) -> (Duration, u16) {
    let t0 = Instant::now();
    let mut s = connect(port);
    let mut req = frame(STX, LOGIN, &[]);
    req.extend(frame(STX, WHO, &[]));
    s.write_all(&req).unwrap();
    let (h, _) = read_frame(&mut s).expect("LOGIN reply");
    assert_eq!(h.akg_id, LOGIN);
    let took = t0.elapsed();
    let (h, b) = read_frame(&mut s).expect("WHO reply");
    assert_eq!(h.akg_id, WHO);
    (took, u16::from_ne_bytes([b[0], b[1]]))
}

fn count(text: &str, pat: &str) -> usize {
    text.lines().filter(|l| l.contains(pat)).count()
}

#[test]
fn a_stalled_worker_gets_no_new_connections_and_recovers() {
    let _serial = one_at_a_time();
    // The default threshold (1,000 ms): TS_STALL_MS is not set.
    let srv = healthsrv(&[("TS_WORKERS", "3")]);
    let mut slow = conn_on(srv.port, 0);
    let t0 = Instant::now();
    slow.write_all(&frame(STX, SLEEP, &u32s(&[3000]))).unwrap();
    assert!(
        srv.wait_stdout("worker 0 stalled", Duration::from_secs(3)),
        "no stall warning: {}",
        srv.stdout()
    );
    let noticed = t0.elapsed();
    assert!(
        noticed >= Duration::from_millis(1000) && noticed < Duration::from_millis(1000) + scaled_ms(600),
        "stall noticed after {noticed:?} (threshold 1 s, looks every 250 ms)"
    );
    // 200 new clients, 4 at a time, during the stall.
    let port = srv.port;
    let results: Vec<(Duration, u16)> = (0..4)
        .map(|_| std::thread::spawn(move || (0..50).map(|_| login(port)).collect::<Vec<_>>()))
        .flat_map(|t| t.join().unwrap())
        .collect();
    let during = t0.elapsed();
    assert!(
        during < Duration::from_millis(2900),
        "the clients took until {during:?}: not during the stall"
    );
    assert_eq!(results.len(), 200);
    let slowest = results.iter().map(|r| r.0).max().unwrap();
    assert!(slowest <= scaled_ms(100), "a LOGIN took {slowest:?}");
    assert!(
        results.iter().all(|r| r.1 != 0),
        "a client was placed on the stalled worker"
    );
    assert!(results.iter().any(|r| r.1 == 1) && results.iter().any(|r| r.1 == 2));
    // The handler returns; the worker is healthy again and takes clients.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (h, _) = read_frame(&mut slow).expect("SLEEP reply");
    assert_eq!(h.akg_id, SLEEP);
    assert!(srv.wait_stdout("worker 0 is healthy again", Duration::from_secs(1)));
    let after: Vec<u16> = (0..6).map(|_| login(port).1).collect();
    assert!(
        after.contains(&0),
        "worker 0 got no new client after its stall: {after:?}"
    );
    let s = srv.stop_clean();
    assert_eq!(
        count(&s.stdout, "stalled: the handler of packet 0x0102"),
        1,
        "{}",
        s.stdout
    );
    assert_eq!(count(&s.stdout, "worker 0 is healthy again"), 1);
    let cb: Vec<&str> = s.stdout.lines().filter(|l| l.starts_with("STALL ")).collect();
    assert_eq!(cb.len(), 1, "{cb:?}");
    assert!(
        cb[0].starts_with("STALL worker=0 id=258 ms=") && cb[0].ends_with(" stalled=1"),
        "{}",
        cb[0]
    );
    let ms: u32 = cb[0]
        .split("ms=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ms >= 1000 && u128::from(ms) < 1000 + scaled_ms(600).as_millis(),
        "{}",
        cb[0]
    );
    assert_eq!(summary(&s.stdout, "stalls"), 1);
}

#[test]
fn with_one_worker_new_clients_wait_for_the_stall_and_none_is_refused() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "1"), ("TS_STALL_MS", "300")]);
    let mut slow = connect(srv.port);
    let t0 = Instant::now();
    slow.write_all(&frame(STX, SLEEP, &u32s(&[1500]))).unwrap();
    assert!(srv.wait_stdout("worker 0 stalled", Duration::from_secs(2)));
    let port = srv.port;
    let clients: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let (_, w) = login(port);
                assert_eq!(w, 0);
            })
        })
        .collect();
    let (h, _) = read_frame(&mut slow).expect("SLEEP reply");
    assert_eq!(h.akg_id, SLEEP);
    let ended = Instant::now();
    assert!(ended - t0 >= Duration::from_millis(1500));
    for c in clients {
        c.join().expect("a client was refused or not answered");
    }
    let all_done = ended.elapsed();
    assert!(
        all_done <= scaled_ms(500),
        "clients answered {all_done:?} after the stall ended"
    );
    let s = srv.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), 41);
    assert!(!s.stdout.contains("too busy") && !s.stderr.contains("too busy"));
}

#[test]
fn a_handler_that_never_returns_does_not_hold_up_a_stop() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "2"), ("TS_STALL_MS", "200"), ("TS_LEAVE", "1")]);
    let mut stuck = connect(srv.port);
    stuck.write_all(&frame(STX, SLEEP, &u32s(&[600_000]))).unwrap();
    let mut other = connect(srv.port);
    assert!(srv.wait_stdout("stalled: the handler of packet 0x0102", Duration::from_secs(2)));
    assert!(login(srv.port).0 < scaled_ms(100), "the other worker serves");
    let t0 = Instant::now();
    let s = srv.stop();
    let took = t0.elapsed();
    assert!(s.status.success(), "{:?}\n{}\n{}", s.status, s.stdout, s.stderr);
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let all = format!("{}{}", s.stdout, s.stderr);
    assert!(
        all.contains("did not stop within 5 s") && all.contains("detached"),
        "no word of the stuck worker:\n{all}"
    );
    assert!(all.contains("SUMMARY") && summary(&s.stdout, "violations") == 0);
    // The other connections were closed by the stop.
    assert!(closed_within(&mut other, Duration::from_secs(1)));
    drop(stuck);
}

/// Reads one reply of `id` carrying `seq`.
fn expect_seq(s: &mut TcpStream, id: u16, seq: u32) {
    let (h, b) = read_frame(s).unwrap_or_else(|e| panic!("reply {id:#x} seq {seq}: {e}"));
    assert_eq!(
        (h.akg_id, u32::from_ne_bytes(b[0..4].try_into().unwrap())),
        (id, seq)
    );
}

#[test]
fn pool_handlers_do_not_delay_worker_handlers() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "2")]);
    let port = srv.port;
    let stop = Arc::new(AtomicBool::new(false));
    // 100 connections keep one 50 ms pool packet each in flight.
    let busy: Vec<_> = (0..100)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = connect(port);
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&frame(STX, PSLEEP, &u32s(&[50, k * 1000 + seq])))
                        .unwrap();
                    expect_seq(&mut s, PSLEEP, k * 1000 + seq);
                    seq += 1;
                }
                seq
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // LOGIN round trips on established connections and new ones.
    let mut lat = Vec::new();
    let mut c = connect(port);
    for k in 0..400 {
        if k % 4 == 0 {
            lat.push(login(port).0);
        } else {
            let t = Instant::now();
            c.write_all(&frame(STX, LOGIN, &[])).unwrap();
            let (h, _) = read_frame(&mut c).unwrap();
            assert_eq!(h.akg_id, LOGIN);
            lat.push(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    stop.store(true, Ordering::Relaxed);
    let done: u32 = busy.into_iter().map(|t| t.join().unwrap()).sum();
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    assert!(p99 <= scaled_ms(20), "LOGIN p99 {p99:?} with the pool busy");
    // The pool did run meanwhile (two threads, 50 ms each).
    assert!(done >= 20, "only {done} pool packets answered");
    let s = srv.stop_clean();
    assert_eq!(summary(&s.stdout, "pool_calls"), u64::from(done));
    eprintln!(
        "LOGIN p50 {:?} p99 {p99:?}; {done} pool packets",
        lat[lat.len() / 2]
    );
}

#[test]
fn order_is_kept_under_mixed_pool_and_worker_packets() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "2"), ("TS_POOL_THREADS", "3")]);
    let port = srv.port;
    let clients: Vec<_> = (0..20u64)
        .map(|k| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x9e37_79b9 ^ k);
                let mut s = connect(port);
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut bytes = Vec::new();
                let mut want = Vec::new();
                for seq in 0..500u32 {
                    let id = if rng.chance(2) { PSLEEP } else { WSEQ };
                    if id == PSLEEP {
                        bytes.extend(frame(STX, PSLEEP, &u32s(&[0, seq])));
                    } else {
                        bytes.extend(frame(STX, WSEQ, &u32s(&[seq])));
                    }
                    want.push((id, seq));
                }
                let writer = spawn_writes(&s, random_writes(&mut rng, &bytes, 3000, 50));
                for (id, seq) in want {
                    expect_seq(&mut s, id, seq);
                }
                writer.join().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().expect("replies out of order or missing");
    }
    let s = srv.stop_clean();
    let pool = summary(&s.stdout, "pool_calls");
    assert!(
        (4000..6000).contains(&pool),
        "{pool} pool calls of 10,000 packets"
    );
}

#[test]
fn a_close_during_a_pool_call_runs_the_close_callback_once_after_it() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "2")]);
    // The peer goes away while its packet is in the pool.
    for k in 0..10 {
        let mut s = connect(srv.port);
        s.write_all(&frame(STX, PSLEEP, &u32s(&[100, k]))).unwrap();
        if k % 2 == 0 {
            reset(s);
        } else {
            drop(s);
        }
    }
    // The handler closes its own connection.
    let mut s = connect(srv.port);
    let t0 = Instant::now();
    s.write_all(&frame(STX, PCLOSE, &u32s(&[100]))).unwrap();
    s.write_all(&frame(STX, WSEQ, &u32s(&[1]))).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)));
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(wait_for(Duration::from_secs(3), || count(
        &srv.stdout(),
        "EV close"
    ) == 11));
    // A stop while a packet is in the pool: its reply still goes out.
    let mut last = connect(srv.port);
    last.write_all(&frame(STX, PSLEEP, &u32s(&[800, 77]))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = srv.pid();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    expect_seq(&mut last, PSLEEP, 77);
    assert!(closed_within(&mut last, Duration::from_secs(2)));
    let s = srv.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), 12);
    assert_eq!(summary(&s.stdout, "closed"), 12);
    assert_eq!(count(&s.stdout, "EV close"), 12);
    assert_eq!(summary(&s.stdout, "pool_calls"), 12);
}

#[test]
fn a_connection_in_the_pool_is_not_read_tcp_holds_its_client_back() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_WORKERS", "2")]);
    let mut s = connect(srv.port);
    s.write_all(&frame(STX, PSLEEP, &u32s(&[1500, 1]))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Pipelined worker packets of 1,012 bytes while the pool call runs.
    let pad = vec![0u8; 1008];
    let mut sent = 0u32;
    s.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut blocked = false;
    let mut pending: Vec<u8> = Vec::new();
    while t0.elapsed() < Duration::from_millis(1200) && sent < 64 * 1024 {
        if pending.is_empty() {
            let mut body = sent.to_ne_bytes().to_vec();
            body.extend_from_slice(&pad);
            pending = frame(STX, WSEQ, &body);
            sent += 1;
        }
        match s.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let written = u64::from(sent) * 1016;
    assert!(
        blocked,
        "{written} bytes went in without blocking: the server buffers while in the pool"
    );
    assert!(
        written < 48 << 20,
        "{written} bytes taken while the pool call ran"
    );
    // Nothing is lost: the pool reply, then every packet in order.
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&pending).unwrap());
    expect_seq(&mut s, PSLEEP, 1);
    for k in 0..sent {
        expect_seq(&mut s, WSEQ, k);
    }
    writer.join().unwrap();
    let mut rest = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    assert!(matches!(s.read(&mut rest), Err(e) if e.kind() == ErrorKind::WouldBlock));
    eprintln!("{written} bytes taken before the client blocked");
    srv.stop_clean();
}

/// Waits up to `limit` for the server to exit by itself.
fn exits_within(srv: &mut Proc, limit: Duration) -> bool {
    let child = srv.child.as_mut().expect("running");
    wait_for(limit, || child.try_wait().expect("wait").is_some())
}

#[test]
fn the_stall_callback_and_a_pool_handler_may_stop_the_server() {
    let _serial = one_at_a_time();
    // From the monitor thread, in the stall callback.
    let mut srv = healthsrv(&[("TS_STALL_MS", "200"), ("TS_STOP_ON_STALL", "1")]);
    let mut s = connect(srv.port);
    s.write_all(&frame(STX, SLEEP, &u32s(&[600]))).unwrap();
    assert!(
        exits_within(&mut srv, Duration::from_secs(4)),
        "no stop after the stall callback asked"
    );
    let (h, _) = read_frame(&mut s).expect("the handler's reply, then the stop");
    assert_eq!(h.akg_id, SLEEP);
    let s1 = srv.stop_clean();
    assert_eq!(summary(&s1.stdout, "stalls"), 1);
    // From a pool handler.
    let mut srv = healthsrv(&[]);
    let mut s = connect(srv.port);
    let t0 = Instant::now();
    s.write_all(&frame(STX, 0x0204, &[])).unwrap();
    assert!(srv.wait_stdout("PSTOP asked", Duration::from_secs(2)));
    assert!(
        t0.elapsed() < scaled_ms(500),
        "mario_stop_server from a pool thread waited"
    );
    assert!(
        exits_within(&mut srv, Duration::from_secs(3)),
        "no stop after the pool handler asked"
    );
    let s2 = srv.stop_clean();
    assert_eq!(summary(&s2.stdout, "connected"), summary(&s2.stdout, "closed"));
}

#[test]
fn a_stop_waits_for_running_pool_handlers_and_starts_no_queued_one() {
    let _serial = one_at_a_time();
    let mut srv = healthsrv(&[("TS_POOL_THREADS", "1")]);
    let mut conns: Vec<TcpStream> = (0..4).map(|_| connect(srv.port)).collect();
    conns[0]
        .write_all(&frame(STX, PSLEEP, &u32s(&[3500, 0])))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for (k, c) in conns.iter_mut().enumerate().skip(1) {
        c.write_all(&frame(STX, PSLEEP, &u32s(&[3500, k as u32])))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
    // The running handler returns 3.2 s into the stop: its reply goes out.
    conns[0].set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    expect_seq(&mut conns[0], PSLEEP, 0);
    assert!(closed_within(&mut conns[0], Duration::from_secs(2)));
    // The queued ones never run: closed without a reply.
    for c in &mut conns[1..] {
        let mut b = [0u8; 8];
        c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        assert!(
            matches!(c.read(&mut b), Ok(0) | Err(_)),
            "a queued pool packet was answered"
        );
    }
    assert!(exits_within(&mut srv, Duration::from_secs(6)));
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(5500), "stop took {took:?}");
    let s = srv.stop_clean();
    assert_eq!(summary(&s.stdout, "pool_calls"), 1);
    assert_eq!(summary(&s.stdout, "closed"), 4);
}

#[test]
fn output_stuck_during_a_pool_call_still_times_out() {
    let _serial = one_at_a_time();
    // No read timeout: only the write timeout can end this connection.
    let srv = healthsrv(&[("TS_WTIMEOUT", "1")]);
    let mut s = connect_small_rcvbuf(srv.port);
    let mut req = frame(STX, 0x0103, &u32s(&[2000]));
    req.extend(frame(STX, PSLEEP, &u32s(&[2000, 1])));
    s.write_all(&req).unwrap();
    // The client reads nothing: reset as timeout once the handler returns.
    assert!(
        wait_for(Duration::from_secs(6), || srv
            .stdout()
            .contains("EV close worker=")),
        "the stuck connection never timed out"
    );
    let out = srv.stdout();
    assert_eq!(count(&out, "EV close"), 1);
    assert!(out.contains(&format!("reason={}", 0xfffd)), "{out}");
    drop(s);
    srv.stop_clean();
}

#[test]
fn a_pool_handler_removed_while_its_packet_waits_closes_as_without_a_handler() {
    let _serial = one_at_a_time();
    let srv = healthsrv(&[("TS_POOL_THREADS", "1")]);
    let mut a = connect(srv.port);
    a.write_all(&frame(STX, PSLEEP, &u32s(&[600, 1]))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut b = connect(srv.port);
    b.write_all(&frame(STX, 0x0206, &u32s(&[0, 2]))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = connect(srv.port);
    c.write_all(&frame(STX, 0x0205, &[])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap().0.akg_id, 0x0205);
    expect_seq(&mut a, PSLEEP, 1);
    assert!(closed_within(&mut b, Duration::from_secs(2)), "b not closed");
    assert!(srv.wait_stdout(
        "invalid akg_id: 518 (its pool handler was removed)",
        Duration::from_secs(1)
    ));
    assert!(srv.wait_stdout(&format!("reason={}", 0xfffe), Duration::from_secs(1)));
    srv.stop_clean();
}

/// start_server flushed every C stream (`fflush(NULL)`), which waits for
/// stdin's lock: a program thread blocked reading stdin held the start up,
/// and new connections waited in the backlog until a line came in.
#[test]
fn a_thread_reading_stdin_does_not_hold_up_the_start() {
    let _serial = one_at_a_time();
    // ctest waits for "start server ok"; it fails if the server never says it.
    let srv = healthsrv(&[("TS_STDIN_READER", "1")]);
    let (took, _) = login(srv.port);
    assert!(took < scaled_ms(100), "LOGIN took {took:?}");
    srv.stop_clean();
}

#[test]
fn queued_pool_packets_do_not_start_once_a_stop_began_even_with_the_worker_busy() {
    let _serial = one_at_a_time();
    let mut srv = healthsrv(&[("TS_WORKERS", "1"), ("TS_POOL_THREADS", "1")]);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect(srv.port)).collect();
    for (k, c) in conns.iter_mut().enumerate() {
        c.write_all(&frame(STX, PSLEEP, &u32s(&[1000, k as u32])))
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    // The worker is busy for 2.5 s when the stop begins.
    let mut busy = connect(srv.port);
    busy.write_all(&frame(STX, SLEEP, &u32s(&[2500]))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
    assert!(exits_within(&mut srv, Duration::from_secs(6)));
    let s = srv.stop_clean();
    assert_eq!(
        summary(&s.stdout, "pool_calls"),
        1,
        "queued pool packets ran during the stop"
    );
    assert_eq!(summary(&s.stdout, "closed"), 4);
}
