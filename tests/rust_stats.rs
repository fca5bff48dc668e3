//! Statistics in the Rust API: `Server::stats` counts a scripted session
//! exactly (zeros before `run`, the same numbers after it returns),
//! `Server::prometheus`, and `Server::serve_metrics` over HTTP (200, 404,
//! 405, 400, HEAD, a silent client that holds nothing up and is closed in
//! time, IPv6, bad and taken addresses, the endpoint gone after the stop).

mod common;
mod scrape;

use common::*;
use scrape::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mario::{AKG_CLOSED, Counters, Framing, Server, ServerBuilder, Verdict};

const ID_PING: u16 = 0x0101;
const ID_STOP: u16 = 0x0102;
const ID_BYE: u16 = 0x0103;
const ID_WORKER: u16 = 0x0104;

fn builder() -> ServerBuilder {
    Server::builder()
        .workers(2)
        .conns_per_worker(2)
        .read_timeout(2)
        .stx(STX)
        .on_packet(ID_PING, |c, _, p| {
            c.send(p.bytes());
            Ok(Verdict::Continue)
        })
        .on_packet(ID_STOP, |_, _, _| Ok(Verdict::Stop))
        .on_packet(ID_BYE, |c, _, _| {
            c.close(0x0042);
            Ok(Verdict::Continue)
        })
        .on_packet(ID_WORKER, |c, _, p| {
            let w = c.worker_index() as u8;
            c.send_packet(p.id(), &[w]);
            Ok(Verdict::Continue)
        })
}

/// Asks which worker serves `s` (8 bytes in, 9 out).
fn worker_of(s: &mut TcpStream) -> usize {
    s.write_all(&frame(STX, ID_WORKER, &[])).unwrap();
    let (_, b) = read_frame(s).expect("worker reply");
    b[0] as usize
}

/// Each worker's counters with `refused` set to 0: which worker refuses
/// is whichever accepted (only the sum is known).
fn but_refused(s: &mario::Stats) -> Vec<Counters> {
    s.workers.iter().map(|c| Counters { refused: 0, ..*c }).collect()
}

/// Waits (5 s at most) until `f` holds for the server's stats.
fn wait_stats(server: &Server, what: &str, mut f: impl FnMut(&mario::Stats) -> bool) {
    let mut last = server.stats();
    let ok = wait_for(Duration::from_secs(5), || {
        last = server.stats();
        f(&last)
    });
    assert!(ok, "{what}: {last:#?}");
}

#[test]
fn stats_count_a_scripted_session_exactly() {
    // Zeros before the server runs, `workers` set.
    let idle = builder().build().unwrap();
    let s = idle.stats();
    assert_eq!(
        s.total,
        Counters {
            workers: 2,
            ..Counters::default()
        }
    );
    assert_eq!(
        s.workers,
        vec![
            Counters {
                workers: 1,
                ..Counters::default()
            };
            2
        ]
    );
    drop(idle);

    let r = Running::start(builder());
    let mut want = [Counters {
        workers: 1,
        ..Counters::default()
    }; 2];
    // Four clients fill the two workers; a fifth is refused.
    let mut conns: Vec<(TcpStream, usize)> = (0..4)
        .map(|_| {
            let mut s = r.connect();
            let w = worker_of(&mut s);
            want[w].connections += 1;
            want[w].accepted += 1;
            want[w].packets_in += 1;
            want[w].bytes_in += 8;
            want[w].bytes_out += 9;
            (s, w)
        })
        .collect();
    let mut over = r.connect();
    assert!(closed_within(&mut over, Duration::from_secs(5)));
    // Pings of every size up to a full frame.
    for (s, w) in conns.iter_mut() {
        for len in [0, 1, 500, 1492] {
            let f = frame(STX, ID_PING, &vec![7; len]);
            s.write_all(&f).unwrap();
            let (_, b) = read_frame(s).unwrap();
            assert_eq!(b.len(), len);
            want[*w].packets_in += 1;
            want[*w].bytes_in += f.len() as u64;
            want[*w].bytes_out += f.len() as u64;
        }
    }
    wait_stats(&r.server, "after the pings", |s| {
        but_refused(s) == want && s.total.refused == 1
    });
    // Closes: an application id (closed), a handler's Stop (error), the
    // peer's FIN (closed), a read timeout (2 s).
    let (mut d, wd) = conns.pop().unwrap();
    let (mut c, wc) = conns.pop().unwrap();
    let (mut b, wb) = conns.pop().unwrap();
    let (mut a, wa) = conns.pop().unwrap();
    a.write_all(&frame(STX, ID_BYE, &[])).unwrap();
    b.write_all(&frame(STX, ID_STOP, &[])).unwrap();
    half_close(&c);
    for (s, w) in [(&mut a, wa), (&mut b, wb)] {
        assert!(closed_within(s, Duration::from_secs(5)));
        want[w].packets_in += 1;
        want[w].bytes_in += 8;
    }
    assert!(closed_within(&mut c, Duration::from_secs(5)));
    assert!(closed_within(&mut d, Duration::from_secs(5)), "no read timeout");
    want[wa].closed += 1;
    want[wb].errors += 1;
    want[wc].closed += 1;
    want[wd].timeouts += 1;
    for w in [wa, wb, wc, wd] {
        want[w].connections -= 1;
    }
    wait_stats(&r.server, "after the closes", |s| {
        but_refused(s) == want && s.total.refused == 1
    });
    let s = r.server.stats();
    assert_eq!(
        (s.total.accepted, s.total.closed, s.total.errors, s.total.timeouts),
        (4, 2, 1, 1)
    );
    assert_eq!(s.total.workers, 2);
    assert_eq!(
        s.total.bytes_out,
        want[0].bytes_out + want[1].bytes_out,
        "the total is the sum"
    );
    // The same numbers in the Prometheus text.
    let text = r.server.prometheus();
    let got = samples(&text);
    let mut w = Vec::new();
    for c in want {
        w.push(Want {
            connections: c.connections,
            accepted: c.accepted,
            closed: c.closed,
            timeouts: c.timeouts,
            errors: c.errors,
            packets_in: c.packets_in,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
        });
    }
    assert_eq!(mismatches(&got, &w, 1), Vec::<String>::new(), "{text}");
    // After the stop: the same numbers (nothing was open).
    let server = r.server.clone();
    r.stop();
    let after = server.stats();
    assert_eq!(but_refused(&after), want);
    assert_eq!(after.total.refused, 1);
}

/// Frames of the other framings count as packets; a frame with no handler
/// does not (its connection is closed as `closed`).
#[test]
fn frames_count_as_packets_and_unhandled_ones_do_not() {
    let line = || Framing::Line {
        delimiter: b"\n".to_vec(),
        max_frame: 100,
    };
    let r = Running::start(Server::builder().workers(1).framing(line()).on_frame(|c, _, f| {
        c.send(f);
        Ok(Verdict::Continue)
    }));
    let mut s = r.connect();
    s.write_all(b"one\ntwo\nthree\n").unwrap();
    let mut got = [0u8; 11];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"onetwothree");
    wait_stats(&r.server, "three lines", |st| {
        let t = st.total;
        (t.packets_in, t.bytes_in, t.bytes_out, t.out_queued) == (3, 14, 11, 0)
    });
    r.stop();

    let r = Running::start(Server::builder().workers(1).framing(line()));
    let mut s = r.connect();
    s.write_all(b"nobody handles this\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    wait_stats(&r.server, "an unhandled line", |st| {
        let t = st.total;
        (t.packets_in, t.bytes_in, t.closed, t.connections) == (0, 20, 1, 0)
    });
    r.stop();
}

/// Output the client does not read is counted as queued, then as sent,
/// back to exactly 0: on an open connection and on a closed one still
/// delivering.
#[test]
fn output_queued_returns_to_zero() {
    const N: usize = 10_000; // 15 MB of 1,500-byte frames
    let r = Running::start(
        Server::builder()
            .workers(1)
            .output_limit(32 << 20)
            .stx(STX)
            .on_packet(ID_PING, |c, _, p| {
                let close = p.body().first() == Some(&1);
                for _ in 0..N {
                    c.send_packet(ID_PING, &[0u8; 1492]);
                }
                if close {
                    c.close(AKG_CLOSED);
                }
                Ok(Verdict::Continue)
            }),
    );
    for close in [0u8, 1] {
        let before = r.server.stats().total;
        let mut s = r.connect();
        s.write_all(&frame(STX, ID_PING, &[close])).unwrap();
        wait_stats(&r.server, "output held", |st| st.total.out_queued > 1_000_000);
        let mut buf = vec![0u8; N * 1500];
        s.read_exact(&mut buf).unwrap();
        wait_stats(&r.server, "output delivered", |st| {
            st.total.out_queued == 0 && st.total.bytes_out == before.bytes_out + (N * 1500) as u64
        });
        if close == 1 {
            assert!(closed_within(&mut s, Duration::from_secs(5)));
        } else {
            half_close(&s);
        }
        // Closed by CLOSE or by the client's FIN: counted once, and the next
        // round starts from settled numbers.
        wait_stats(&r.server, "closed", |st| {
            st.total.closed == before.closed + 1 && st.total.connections == 0
        });
    }
    r.stop();
}

#[test]
fn serve_metrics_answers_over_http() {
    let server = std::sync::Arc::new(builder().build().unwrap());
    // Before `run`: it serves already (zeros).
    let addr = server.serve_metrics("127.0.0.1:0").unwrap().to_string();
    let ok = get(&addr);
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(ok.header("connection"), Some("close"));
    assert_eq!(
        ok.header("content-length"),
        Some(ok.body.len().to_string().as_str())
    );
    assert!(
        ok.body
            .contains("mario_connections_accepted_total{worker=\"1\"} 0\n")
    );

    let s = server.clone();
    let t = std::thread::spawn(move || s.run());
    let port = server.wait_listening(Duration::from_secs(10)).unwrap();
    let mut c = connect(port);
    c.write_all(&frame(STX, ID_PING, b"hi")).unwrap();
    read_frame(&mut c).unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        get(&addr)
            .body
            .lines()
            .any(|l| l.starts_with("mario_received_bytes_total") && l.ends_with(" 10"))
    }));

    let head = request(&addr, "HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(request(&addr, "GET /other HTTP/1.1\r\n\r\n").unwrap().status, 404);
    let post = request(&addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(request(&addr, "hello\r\n\r\n").unwrap().status, 400);

    // A silent client neither holds the endpoint up nor stays for ever.
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /met").unwrap();
    let t0 = Instant::now();
    assert_eq!(get(&addr).status, 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    for s in [&mut silent, &mut slow] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty());
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "a silent client was closed after {waited:?}, not about 5 s"
    );

    // IPv6, where the machine has it.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = server.serve_metrics("[::1]:0").unwrap();
        assert!(v6.is_ipv6());
        assert_eq!(get(&v6.to_string()).status, 200);
    }
    // Any `ToSocketAddrs`: a (host, port) pair with a name, a SocketAddr.
    let named = server.serve_metrics(("localhost", 0)).unwrap();
    assert!(named.ip().is_loopback(), "{named}");
    assert_eq!(get(&named.to_string()).status, 200);
    let typed = server
        .serve_metrics(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    assert_eq!(get(&typed.to_string()).status, 200);
    // Bad and taken addresses are errors naming them.
    let e = server.serve_metrics("nonsense").unwrap_err();
    assert!(e.to_string().contains("\"nonsense\""), "{e}");
    let e = server.serve_metrics(&addr).unwrap_err();
    assert!(e.to_string().contains(&addr), "{e}");

    // The endpoint stops with the server.
    server.stop_handle().stop();
    t.join().unwrap().unwrap();
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still listening after the stop"
    );
    let e = server.serve_metrics("127.0.0.1:0").unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
}
