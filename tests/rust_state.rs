//! The per-connection state of the Rust API (`ServerBuilder::state`): made
//! once per announced connection, handed to every handler of that
//! connection only, and dropped exactly once, right after the close
//! handler, however the connection ends: the peer's FIN or reset,
//! `Conn::close`, `close_id` from another thread, a read timeout, a
//! handler's `Err`, `Verdict::Stop` or panic, output over its cap, `init`
//! closing it, `on_connect` failing, a blocking handler running when the
//! peer leaves or the server stops, a PROXY protocol header (good or bad),
//! and the server's stop. Also: errors of handlers are logged with the
//! packet id and the peer; `bind` errors; `run`'s listening error.

mod common;
mod protocol;
use common::*;
use protocol::*;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mario::{AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT, ConnId, HandlerResult, Server, ServerBuilder, Verdict};

use common::capture::capture_logs;

/// How many captured messages of `level` contain `needle`.
fn logged(level: log::Level, needle: &str) -> usize {
    common::capture::logged_count(level, needle)
}

// ---------------------------------------------------------------------------
// The tracked state.

/// What the states of one test did.
#[derive(Default)]
struct Counts {
    /// `init` returned (a state was made).
    created: AtomicUsize,
    /// A state was dropped.
    dropped: AtomicUsize,
    /// `init` panicked (no state).
    init_panics: AtomicUsize,
    /// `on_close` ran.
    closes: AtomicUsize,
    /// A handler saw a state of another connection, or one already closed.
    wrong: AtomicUsize,
    /// Close reasons by client address.
    reasons: Mutex<HashMap<SocketAddr, u16>>,
    /// Connection ids by client address (from `init`).
    ids: Mutex<HashMap<SocketAddr, ConnId>>,
}

impl Counts {
    /// `n` states made, `n` dropped, `n` close handlers run, and no handler
    /// saw a wrong state.
    fn assert_each_once(&self, n: usize) {
        assert_eq!(self.created.load(Ordering::SeqCst), n, "states made");
        assert_eq!(self.dropped.load(Ordering::SeqCst), n, "states dropped");
        assert_eq!(self.closes.load(Ordering::SeqCst), n, "close handlers run");
        assert_eq!(
            self.wrong.load(Ordering::SeqCst),
            0,
            "handlers that saw a wrong state"
        );
    }
}

/// How `init` treats the next connection.
const NORMAL: u8 = 0;
const INIT_PANICS: u8 = 1;
const INIT_CLOSES: u8 = 2;
const CONNECT_FAILS: u8 = 3;

/// One connection's state: knows its connection, counts its drop.
struct Tracked {
    counts: Arc<Counts>,
    id: ConnId,
    mode: u8,
    closed: bool,
    packets: u32,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped without its close handler having run.
            self.counts.wrong.fetch_add(1, Ordering::SeqCst);
        }
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Tracked {
    /// Checks that this is `conn`'s state and that it is still open.
    fn check(&self, conn: &mario::Conn) {
        if self.id != conn.id() || self.closed {
            self.counts.wrong.fetch_add(1, Ordering::SeqCst);
        }
    }
}

const ID_ECHO: u16 = 0x0001;
const ID_CLOSE: u16 = 0x0002;
const ID_ERR: u16 = 0x0003;
const ID_PANIC: u16 = 0x0004;
const ID_STOP: u16 = 0x0005;
const ID_BLOCK: u16 = 0x0006;
const ID_FLOOD: u16 = 0x0007;
const ID_COUNT: u16 = 0x0008;
const REASON_CLOSE: u16 = 0x0700;
const REASON_INIT: u16 = 0x0701;

/// The server every case runs against: state `Tracked`, one handler per
/// way to end a connection. `next` says how `init` treats the next
/// connection (then goes back to `NORMAL`).
fn tracked(counts: &Arc<Counts>, next: &Arc<AtomicU8>) -> ServerBuilder<Tracked> {
    let (c_init, c_close) = (counts.clone(), counts.clone());
    let next = next.clone();
    Server::builder()
        .workers(2)
        .stx(STX)
        .read_timeout(0)
        .output_limit(64 << 10)
        .state(move |conn| {
            let mode = next.swap(NORMAL, Ordering::SeqCst);
            if mode == INIT_PANICS {
                c_init.init_panics.fetch_add(1, Ordering::SeqCst);
                panic!("init refuses {}", conn.peer());
            }
            if mode == INIT_CLOSES {
                conn.close(REASON_INIT);
            }
            c_init.ids.lock().unwrap().insert(conn.peer(), conn.id());
            c_init.created.fetch_add(1, Ordering::SeqCst);
            Tracked {
                counts: c_init.clone(),
                id: conn.id(),
                mode,
                closed: false,
                packets: 0,
            }
        })
        .on_connect(|conn, s| -> HandlerResult<()> {
            s.check(conn);
            if s.mode == INIT_CLOSES {
                // init closed it: on_connect must not run.
                s.counts.wrong.fetch_add(1, Ordering::SeqCst);
            }
            if s.mode == CONNECT_FAILS {
                return Err("the connect handler refuses".into());
            }
            Ok(())
        })
        .on_packet(ID_ECHO, |conn, s, pkt| {
            s.check(conn);
            s.packets += 1;
            conn.send(pkt.bytes());
            Ok(Verdict::Continue)
        })
        .on_packet(ID_COUNT, |conn, s, pkt| {
            s.check(conn);
            s.packets += 1;
            conn.send_packet(pkt.id(), &s.packets.to_ne_bytes());
            Ok(Verdict::Continue)
        })
        .on_packet(ID_CLOSE, |conn, s, _| {
            s.check(conn);
            conn.close(REASON_CLOSE);
            // The close handler has not run yet: it runs after this returns.
            s.check(conn);
            Ok(Verdict::Continue)
        })
        .on_packet(ID_ERR, |conn, s, _| {
            s.check(conn);
            let n: u32 = "not a number".parse()?;
            Ok(if n > 0 { Verdict::Continue } else { Verdict::Stop })
        })
        .on_packet(ID_PANIC, |conn, s, _| {
            s.check(conn);
            panic!("a handler panics");
        })
        .on_packet(ID_STOP, |conn, s, _| {
            s.check(conn);
            Ok(Verdict::Stop)
        })
        .on_packet(ID_FLOOD, |conn, s, _| {
            s.check(conn);
            // 160 KiB against a 64 KiB cap: the connection is reset once
            // this returns.
            for _ in 0..20 {
                conn.send(&[b'f'; 8192]);
            }
            s.check(conn);
            Ok(Verdict::Continue)
        })
        .on_packet_blocking(ID_BLOCK, |pconn, pkt| {
            std::thread::sleep(Duration::from_millis(300));
            pconn.send(pkt.bytes());
            Ok(Verdict::Continue)
        })
        .on_close(move |conn, s, reason| {
            s.check(conn);
            s.closed = true;
            c_close.closes.fetch_add(1, Ordering::SeqCst);
            c_close.reasons.lock().unwrap().insert(conn.peer(), reason);
        })
}

/// Connects, first telling `init` how to treat this connection, and waits
/// until `init` has run on it.
fn connect_as(r: &Running<Tracked>, counts: &Counts, next: &AtomicU8, mode: u8) -> TcpStream {
    let before = counts.created.load(Ordering::SeqCst) + counts.init_panics.load(Ordering::SeqCst);
    next.store(mode, Ordering::SeqCst);
    let s = r.connect();
    assert!(
        wait_for(Duration::from_secs(5), || {
            counts.created.load(Ordering::SeqCst) + counts.init_panics.load(Ordering::SeqCst) > before
        }),
        "init did not run"
    );
    s
}

fn echo(s: &mut TcpStream) {
    let f = frame(STX, ID_ECHO, b"hi");
    s.write_all(&f).unwrap();
    let mut got = vec![0u8; f.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, f);
}

fn local(s: &TcpStream) -> SocketAddr {
    s.local_addr().unwrap()
}

fn reason_of(counts: &Counts, s: &TcpStream) -> Option<u16> {
    let me = local(s);
    let mut r = None;
    wait_for(Duration::from_secs(5), || {
        r = counts.reasons.lock().unwrap().get(&me).copied();
        r.is_some()
    });
    r
}

/// Every way a connection ends, `N` connections each, on a two-worker
/// server: one state made per connection whose `init` returned, each
/// dropped once, after its close handler, which ran once; no handler ever
/// saw a state of another connection or a closed one.
#[test]
fn states_are_made_once_and_dropped_once_however_connections_end() {
    capture_logs();
    const N: usize = 8;
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU8::new(NORMAL));
    let r = Running::start(tracked(&counts, &next));
    let mut announced = 0;
    let check_reason = |s: &TcpStream, want: &[u16], what: &str| {
        let got = reason_of(&counts, s);
        assert!(
            got.is_some_and(|g| want.contains(&g)),
            "{what}: close reason {got:x?}, want one of {want:x?}"
        );
    };

    for i in 0..N {
        // The peer's FIN.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        echo(&mut s);
        half_close(&s);
        assert_eq!(read_until_closed(&mut s, Duration::from_secs(2)), Some(vec![]));
        check_reason(&s, &[AKG_CLOSED], "peer FIN");

        // The peer's reset.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        echo(&mut s);
        let me = local(&s);
        reset(s);
        assert!(wait_for(Duration::from_secs(5), || counts
            .reasons
            .lock()
            .unwrap()
            .contains_key(&me)));

        // Conn::close in a handler.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        s.write_all(&frame(STX, ID_CLOSE, &[])).unwrap();
        expect_closed_silently(&mut s, Duration::from_secs(2), "Conn::close");
        check_reason(&s, &[REASON_CLOSE], "Conn::close");

        // close_id from another thread.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        echo(&mut s);
        let id = counts.ids.lock().unwrap()[&local(&s)];
        assert!(
            std::thread::spawn(move || mario::close_id(id, 0x0702))
                .join()
                .unwrap()
        );
        expect_closed_silently(&mut s, Duration::from_secs(2), "close_id");
        check_reason(&s, &[0x0702], "close_id");

        // A handler's Err, Verdict::Stop, a panic.
        for (id, what) in [(ID_ERR, "Err"), (ID_STOP, "Verdict::Stop"), (ID_PANIC, "panic")] {
            let mut s = connect_as(&r, &counts, &next, NORMAL);
            echo(&mut s);
            s.write_all(&frame(STX, id, &[])).unwrap();
            expect_closed_silently(&mut s, Duration::from_secs(2), what);
            check_reason(&s, &[AKG_ERROR], what);
        }

        // Output over its cap: reset after the handler.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        s.write_all(&frame(STX, ID_FLOOD, &[])).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(2)), "flood not reset");
        check_reason(&s, &[AKG_ERROR], "over the cap");

        // init closes it: no on_connect, the close handler with the state.
        let mut s = connect_as(&r, &counts, &next, INIT_CLOSES);
        expect_closed_silently(&mut s, Duration::from_secs(2), "closed by init");
        check_reason(&s, &[REASON_INIT], "closed by init");

        // on_connect fails.
        let mut s = connect_as(&r, &counts, &next, CONNECT_FAILS);
        expect_closed_silently(&mut s, Duration::from_secs(2), "on_connect Err");
        check_reason(&s, &[AKG_ERROR], "on_connect Err");

        // init panics: no state, no handler at all.
        let mut s = connect_as(&r, &counts, &next, INIT_PANICS);
        expect_closed_silently(&mut s, Duration::from_secs(2), "init panicked");

        // The peer leaves while its blocking handler runs.
        let mut s = connect_as(&r, &counts, &next, NORMAL);
        s.write_all(&frame(STX, ID_BLOCK, &[])).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        half_close(&s);
        let got = read_until_closed(&mut s, Duration::from_secs(3)).expect("closed after the pool handler");
        assert_eq!(
            got,
            frame(STX, ID_BLOCK, &[]),
            "the pool handler's reply, then FIN"
        );
        check_reason(&s, &[AKG_CLOSED], "peer left during a blocking handler");

        announced += 11;
        assert_eq!(counts.init_panics.load(Ordering::SeqCst), i + 1);
    }

    // The state is per connection and kept between packets.
    let mut a = connect_as(&r, &counts, &next, NORMAL);
    let mut b = connect_as(&r, &counts, &next, NORMAL);
    for (on_a, want) in [(true, 1u32), (true, 2), (false, 1), (true, 3), (false, 2)] {
        let s = if on_a { &mut a } else { &mut b };
        s.write_all(&frame(STX, ID_COUNT, &[])).unwrap();
        let (_, body) = read_frame(s).unwrap();
        assert_eq!(body, want.to_ne_bytes());
    }
    // Open at stop: idle ones, and ones in a blocking handler.
    let mut open: Vec<TcpStream> = (0..N).map(|_| connect_as(&r, &counts, &next, NORMAL)).collect();
    for s in open.iter_mut().take(N / 2) {
        s.write_all(&frame(STX, ID_BLOCK, &[])).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    announced += 2 + N;
    r.stop();
    for s in open.iter_mut().chain([&mut a, &mut b]) {
        assert!(closed_within(s, Duration::from_secs(2)), "open at stop");
    }

    let c = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    assert_eq!(c(&counts.wrong), 0, "a handler saw a wrong or closed state");
    assert_eq!(c(&counts.init_panics), N);
    assert_eq!(
        c(&counts.created),
        announced,
        "one state per announced connection"
    );
    assert_eq!(c(&counts.dropped), announced, "every state dropped once");
    assert_eq!(c(&counts.closes), announced, "one close handler per state");
    // The errors were logged with the packet id and the peer.
    assert_eq!(
        logged(
            log::Level::Error,
            "the handler of packet 0x0003 failed for 127.0.0.1:"
        ),
        N
    );
    assert_eq!(
        logged(
            log::Level::Error,
            "invalid digit found in string; closing the connection as error"
        ),
        N
    );
    assert_eq!(
        logged(
            log::Level::Error,
            "the connect handler (0xfffc) failed for 127.0.0.1:"
        ),
        N,
    );
    assert_eq!(
        logged(log::Level::Error, "panicked"),
        2 * N,
        "init and handler panics"
    );
}

/// A read timeout ends the connection (and its state) like any close.
#[test]
fn a_read_timeout_drops_the_state() {
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU8::new(NORMAL));
    let r = Running::start(tracked(&counts, &next).read_timeout(1));
    let mut conns: Vec<TcpStream> = (0..6).map(|_| connect_as(&r, &counts, &next, NORMAL)).collect();
    for s in conns.iter_mut() {
        echo(s);
    }
    for s in conns.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(4)), "no read timeout");
        assert_eq!(reason_of(&counts, s), Some(AKG_TIMEOUT));
    }
    assert!(wait_for(Duration::from_secs(2), || counts
        .dropped
        .load(Ordering::SeqCst)
        == 6));
    r.stop();
    counts.assert_each_once(6);
}

/// Behind the PROXY protocol a state is made only once the header is read
/// (with the real client's address); a connection with a bad header is
/// dropped unannounced: no state, no handler.
#[test]
fn proxy_protocol_states_only_for_announced_connections() {
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU8::new(NORMAL));
    let r = Running::start(
        tracked(&counts, &next)
            .bind("127.0.0.1:0")
            .proxy_protocol(mario::proto::PROXY_V1),
    );
    let mut good = Vec::new();
    for i in 0..4u16 {
        let mut s = r.connect();
        s.write_all(format!("PROXY TCP4 192.0.2.{} 192.0.2.200 {} 80\r\n", i + 1, 4000 + i).as_bytes())
            .unwrap();
        echo(&mut s);
        good.push(s);
        let mut bad = r.connect();
        bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(closed_within(&mut bad, Duration::from_secs(2)), "bad header kept");
    }
    // A client that never sends its header.
    let mut silent = r.connect();
    assert!(wait_for(Duration::from_secs(2), || counts
        .created
        .load(Ordering::SeqCst)
        == 4));
    let peers: Vec<SocketAddr> = counts.ids.lock().unwrap().keys().copied().collect();
    assert!(
        peers.iter().all(|p| p.ip().to_string().starts_with("192.0.2.")),
        "{peers:?}"
    );
    r.stop();
    assert!(closed_within(&mut silent, Duration::from_secs(2)));
    for s in good.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(2)));
    }
    counts.assert_each_once(4);
}

/// A zero-sized state and the unit state need no allocation and work the
/// same; handlers registered before `state` are kept.
#[test]
fn handlers_before_state_are_kept() {
    let closes = Arc::new(AtomicUsize::new(0));
    let c2 = closes.clone();
    #[derive(Default)]
    struct Marker;
    let b = Server::builder()
        .workers(1)
        .stx(STX)
        .on_packet(ID_ECHO, |conn, (), pkt| {
            conn.send(pkt.bytes());
            Ok(Verdict::Continue)
        })
        .on_close(move |_, (), _| {
            c2.fetch_add(1, Ordering::SeqCst);
        })
        .default_state::<Marker>()
        .on_packet(ID_COUNT, |conn, _marker: &mut Marker, pkt| {
            conn.send_packet(pkt.id(), b"zst");
            Ok(Verdict::Continue)
        });
    let r = Running::start(b);
    let mut s = r.connect();
    echo(&mut s);
    s.write_all(&frame(STX, ID_COUNT, &[])).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().1, b"zst");
    drop(s);
    assert!(wait_for(Duration::from_secs(2), || closes.load(Ordering::SeqCst) == 1));
    r.stop();
}

/// `bind` takes anything `ToSocketAddrs` does; what does not resolve is
/// reported by `build` as `InvalidInput`, naming the input.
#[test]
fn bind_addresses_and_their_errors() {
    for bad in ["not an address", "127.0.0.1:99999", "[::1]"] {
        let e = Server::bind(bad).build().expect_err(bad);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}: {e}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
    }
    // A later good bind (or bind_ip) replaces a bad one.
    assert!(Server::bind("nope").bind("127.0.0.1:0").build().is_ok());
    assert!(Server::bind("nope").bind_ip(None).build().is_ok());
    // `[::]` serves IPv4 clients too.
    let r = Running::start(
        Server::bind("[::]:0")
            .workers(1)
            .stx(STX)
            .on_packet(ID_ECHO, |c, _, p| {
                c.send(p.bytes());
                Ok(Verdict::Continue)
            }),
    );
    let local = r.server.local_addr().expect("listening");
    assert!(local.is_ipv6(), "{local}");
    let mut s = connect(r.port);
    echo(&mut s);
    assert!(s.peer_addr().unwrap().is_ipv4());
    r.stop();
}

/// `run` on a port in use fails with the system's kind and a message that
/// names the address and the OS error; the `ListenError` inside says the
/// same.
#[test]
fn run_on_a_port_in_use_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let server = Server::bind(addr).workers(1).build().unwrap();
    let e = server.run().expect_err("the port is taken");
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("listen on {addr}: ")), "{msg}");
    assert!(msg.contains("os error 98"), "{msg}");
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<mario::ListenError>())
        .expect("a ListenError");
    assert_eq!(inner.addr(), addr);
    assert_eq!(inner.os_error().kind(), io::ErrorKind::AddrInUse);
    assert!(std::error::Error::source(inner).is_some());
}
