//! bufferevent_write and close_conn from a thread that is not a worker
//! (testsrv's blaster, driven by SUB), mixed with worker-side ECHO replies,
//! resets and slot reuse. Every SUB frame must reach the connection it was
//! meant for (its body is the serial of that connection), exactly `count`
//! of them, and close requests from the blaster must close exactly their
//! own connection after its last frame.
//!
//! `blaster_close_with_requests_in_flight` closes connections whose client
//! keeps ECHO requests in flight: the frames queued before close_conn must
//! still arrive although the server has unread input at that moment (a
//! plain close(2) then sends RST and the kernel drops unsent output).
mod common;
use common::*;
use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    serial: u32,
    worker: u16,
}

fn read_buf_frame(r: &mut BufReader<TcpStream>) -> io::Result<(Head, Vec<u8>)> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let head = Head::parse(&h).unwrap();
    let mut body = vec![0u8; (head.pkglen as usize).saturating_sub(8)];
    r.read_exact(&mut body)?;
    Ok((head, body))
}

fn open(port: u16) -> Conn {
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (serial, _, worker, _) = info(&mut s, STX);
    let w = s.try_clone().unwrap();
    Conn {
        r: BufReader::with_capacity(1 << 16, s),
        w,
        serial,
        worker,
    }
}

fn subscribe(c: &mut Conn, count: u32, close: bool) {
    let mut body = count.to_ne_bytes().to_vec();
    body.extend_from_slice(&u32::from(close).to_ne_bytes());
    c.w.write_all(&frame(STX, ID_SUB, &body)).unwrap();
}

/// An ECHO payload unique to (client, seq), 1..=600 bytes long.
fn payload(client: usize, seq: u32) -> Vec<u8> {
    let len = 1 + (seq as usize * 37 + client * 11) % 600;
    let mut v: Vec<u8> = (0..len).map(|k| (k as u32 ^ seq ^ client as u32) as u8).collect();
    v[..4.min(len)].copy_from_slice(&seq.to_ne_bytes()[..4.min(len)]);
    v
}

/// Counts clients that are done (or died): the close=0 clients keep their
/// connections open until every client is done, then check them again.
struct Finish {
    done: Arc<AtomicUsize>,
    counted: bool,
}

impl Finish {
    fn arrive(&mut self) {
        if !self.counted {
            self.counted = true;
            self.done.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Arrives, then waits (at most 30 s) for every client.
    fn arrive_and_wait(&mut self) {
        self.arrive();
        let t0 = Instant::now();
        while self.done.load(Ordering::SeqCst) < CLIENTS && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.arrive();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// close=0 and close=1 clients, some resetting and reconnecting.
    Mixed,
    /// Every client is closed by the blaster while it keeps ECHO requests
    /// in flight.
    CloseUnderLoad,
}

/// What one client saw.
struct Outcome {
    serials: Vec<u32>,
    workers: Vec<u16>,
    close: bool,
}

/// Runs one client: INFO, SUB(count, close), ECHO traffic (a few requests
/// in flight) while the SUB frames arrive; `reconnect` clients reset the
/// connection half-way and start over on a fresh one.
fn client(
    port: u16,
    idx: usize,
    round: usize,
    mode: Mode,
    start: Arc<Barrier>,
    done: Arc<AtomicUsize>,
) -> Outcome {
    let mut finish = Finish { done, counted: false };
    let v = idx + 3 * round;
    let (count, close, reconnect) = match mode {
        Mode::Mixed => (300 + ((v * 97) % 500) as u32, v % 2 == 1, v % 5 == 2),
        Mode::CloseUnderLoad => (50 + ((v * 97) % 150) as u32, true, false),
    };
    // Close=1 clients of the mixed run do their ECHO traffic before SUB:
    // then nothing they send is unread when the blaster closes them.
    let echo_before = close && mode == Mode::Mixed;
    let max_inflight = if mode == Mode::CloseUnderLoad { 8 } else { 2 };
    let mut out = Outcome {
        serials: Vec::new(),
        workers: Vec::new(),
        close,
    };
    start.wait();
    let mut c = open(port);
    out.serials.push(c.serial);
    out.workers.push(c.worker);
    let mut seq = 0u32;
    if reconnect {
        subscribe(&mut c, count, close);
        let mut got = 0;
        while got < count / 2 {
            let (h, b) = read_buf_frame(&mut c.r).expect("SUB frame before the reset");
            assert_eq!(h.akg_id, ID_SUB);
            assert_eq!(
                b,
                c.serial.to_ne_bytes(),
                "client {idx}: frame for another connection"
            );
            got += 1;
        }
        let Conn { r, w, .. } = c;
        drop(r);
        reset(w);
        c = open(port);
        assert!(!out.serials.contains(&c.serial));
        out.serials.push(c.serial);
        out.workers.push(c.worker);
    }
    if echo_before {
        let ps: Vec<Vec<u8>> = (0..20).map(|k| payload(idx, seq + k)).collect();
        seq += 20;
        let mut all = Vec::new();
        for p in &ps {
            all.extend_from_slice(&frame(STX, ID_ECHO, p));
        }
        c.w.write_all(&all).unwrap();
        for p in ps {
            let (h, b) = read_buf_frame(&mut c.r).expect("ECHO reply");
            assert_eq!((h.akg_id, b), (ID_ECHO, p), "client {idx}: wrong ECHO reply");
        }
    }
    subscribe(&mut c, count, close);
    let mut subs = 0u32;
    let mut inflight: VecDeque<Vec<u8>> = VecDeque::new();
    let mut echoed = 0u32;
    // Set once a write fails: allowed only for close=1 clients, whose
    // connection the blaster may close before we have read its frames.
    let mut write_failed = false;
    let mut write_err = None;
    loop {
        while subs < count && inflight.len() < max_inflight && !write_failed && !echo_before {
            let p = payload(idx, seq);
            seq += 1;
            match c.w.write_all(&frame(STX, ID_ECHO, &p)) {
                Ok(()) => inflight.push_back(p),
                Err(e) => {
                    assert!(close, "client {idx}: ECHO write failed: {e}");
                    write_failed = true;
                    write_err = Some(e.kind());
                }
            }
        }
        if subs == count && (close || inflight.is_empty()) {
            break;
        }
        let (h, b) = read_buf_frame(&mut c.r)
            .unwrap_or_else(|e| panic!("client {idx} serial {} lport {}: {e} after {subs} of {count} SUB frames; write error {write_err:?}", c.serial, c.w.local_addr().unwrap().port()));
        match h.akg_id {
            ID_SUB => {
                assert_eq!(
                    b,
                    c.serial.to_ne_bytes(),
                    "client {idx}: frame for another connection"
                );
                subs += 1;
            }
            ID_ECHO => {
                assert_eq!(Some(b), inflight.pop_front(), "client {idx}: wrong ECHO reply");
                echoed += 1;
            }
            id => panic!("client {idx}: unexpected packet id {id:#x}"),
        }
    }
    if close {
        // Only replies to ECHOs still in flight may come before the close;
        // no further SUB frame.
        loop {
            match read_buf_frame(&mut c.r) {
                Ok((h, b)) => {
                    assert_eq!(h.akg_id, ID_ECHO, "client {idx}: more than {count} SUB frames");
                    assert_eq!(Some(b), inflight.pop_front(), "client {idx}: wrong ECHO reply");
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                // A reset is fair only if we may have left input unread.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !echo_before => break,
                Err(e) => panic!("client {idx}: no EOF after its last SUB frame: {e}"),
            }
        }
    } else {
        // Nothing more arrives, and the connection still answers.
        c.r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        match c.r.read(&mut b) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            other => panic!("client {idx}: after {count} SUB frames: {other:?}"),
        }
        c.r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        c.w.write_all(&frame(STX, ID_INFO, &[])).unwrap();
        let (h, b) = read_buf_frame(&mut c.r).expect("INFO reply");
        assert_eq!((h.akg_id, &b[..4]), (ID_INFO, &c.serial.to_ne_bytes()[..]));
        assert!(echoed >= 2, "client {idx}: only {echoed} ECHO replies");
        // Still open once every other client is done.
        finish.arrive_and_wait();
        c.w.write_all(&frame(STX, ID_INFO, &[])).unwrap();
        let (h, b) = read_buf_frame(&mut c.r).expect("INFO reply at the end");
        assert_eq!((h.akg_id, &b[..4]), (ID_INFO, &c.serial.to_ne_bytes()[..]));
    }
    finish.arrive();
    out
}

fn run(mode: Mode, rounds: usize) {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_WORKERS", "2")]);
    let mut outcomes = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        let start = Arc::new(Barrier::new(CLIENTS));
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|idx| {
                let (port, start, done) = (p.port, start.clone(), done.clone());
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || client(port, idx, round, mode, start, done))
                    .unwrap()
            })
            .collect();
        let mut failures = Vec::new();
        for (idx, t) in threads.into_iter().enumerate() {
            match t.join() {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("round {round} client {idx}: {msg}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} clients failed:\n{}\nserver output: {}",
            failures.len(),
            failures.join("\n"),
            p.out.display()
        );
        eprintln!(
            "{mode:?} round {round}: {CLIENTS} clients done in {:?}",
            t0.elapsed()
        );
    }

    // Every connection made, spread evenly over both workers (with 200 at
    // once the server is past strict round robin: the accepting worker
    // keeps a connection unless it is ahead by more than 1/32 of those
    // held, see src/accept.rs).
    let total: usize = outcomes.iter().map(|o| o.serials.len()).sum();
    let w0 = outcomes
        .iter()
        .flat_map(|o| &o.workers)
        .filter(|&&w| w == 0)
        .count();
    assert!(
        w0.abs_diff(total - w0) <= total / 16,
        "{w0} of {total} connections on worker 0"
    );
    // The blaster closed the close=1 connections itself, as `closed`.
    for o in outcomes.iter().filter(|o| o.close) {
        let last = *o.serials.last().unwrap();
        assert_eq!(
            p.wait_close_event(last, Duration::from_secs(5)).map(|e| e.0),
            Some(0xfffe)
        );
    }
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), total as u64);
    assert_eq!(summary(&s.stdout, "closed"), total as u64);
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn blaster_writes_and_closes_from_another_thread() {
    run(Mode::Mixed, 3);
}

#[test]
fn blaster_close_with_requests_in_flight() {
    run(Mode::CloseUnderLoad, 10);
}
