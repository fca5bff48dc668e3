//! The PROXY protocol on a real server (tests/c/testsrv.c with TS_PROXY):
//! headers of both versions give the connection the real client's address
//! (`c->cip`, `mario_conn_peer`, through the PEER packet), the connect
//! callback runs after the header, and every bad, missing, partial, late or
//! untrusted header closes the connection with one warning, no callback,
//! and no slot left behind. The real balancer is in tests/haproxy.rs.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const ID_PEER: u16 = 0x000b;
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn peer_request() -> Vec<u8> {
    frame(mario::DEFAULT_STX, ID_PEER, &[])
}

/// Writes `header` and a PEER request in one write, as a balancer forwards
/// a header with the client's first bytes.
fn send_with_peer_request(c: &mut TcpStream, header: &[u8]) {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&peer_request());
    c.write_all(&bytes).unwrap();
}

/// The PEER reply: (cip, peer).
fn read_peer(s: &mut TcpStream) -> (String, String) {
    let (h, b) = read_frame(s).expect("PEER reply");
    assert_eq!(h.akg_id, ID_PEER);
    let text = String::from_utf8(b).unwrap();
    let field = |k: &str| {
        text.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    (field("cip="), field("peer="))
}

/// A v2 PROXY header for a TCP client `src` connecting to `dst`, with
/// `tlvs` appended, as HAProxy's `send-proxy-v2` builds it.
fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.push(0x21); // version 2, PROXY
    let mut addrs = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21); // TCP over IPv6
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("mixed families"),
    }
    addrs.extend_from_slice(tlvs);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

/// A v2 LOCAL header (HAProxy's health checks).
fn v2_local() -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn server(mode: &str, extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![("TS_PROXY", mode)];
    env.extend_from_slice(extra);
    Proc::testsrv(&env)
}

fn client(srv: &Proc) -> TcpStream {
    let s = connect(srv.port);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Counts the warnings naming `what` in the server's output so far.
fn warnings(srv: &Proc, what: &str) -> usize {
    srv.stdout()
        .lines()
        .filter(|l| l.contains("[WARN]") && l.contains(what))
        .count()
}

fn stats_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("STATS worker=all"))
        .unwrap_or_else(|| panic!("no STATS line:\n{}", tail(stdout, 20)))
        .to_string()
}

fn stat(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn v1_and_v2_headers_give_the_real_client_address() {
    let srv = server("any", &[]);
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            v1("203.0.113.7:40001".parse().unwrap(), dst),
            "203.0.113.7:40001",
            "203.0.113.7:40001",
        ),
        (
            v1(
                "[2001:db8::7]:40002".parse().unwrap(),
                "[2001:db8::1]:8082".parse().unwrap(),
            ),
            "0.0.0.0:0",
            "[2001:db8::7]:40002",
        ),
        (
            v2("198.51.100.9:40003".parse().unwrap(), dst, &[]),
            "198.51.100.9:40003",
            "198.51.100.9:40003",
        ),
        (
            v2(
                "[2001:db8::9]:40004".parse().unwrap(),
                "[2001:db8::1]:8082".parse().unwrap(),
                &[],
            ),
            "0.0.0.0:0",
            "[2001:db8::9]:40004",
        ),
        // TLVs (ALPN "h2", an authority, a NOOP) are skipped.
        (
            v2(
                "192.0.2.44:40005".parse().unwrap(),
                dst,
                &[
                    0x01, 0x00, 0x02, b'h', b'2', 0x02, 0x00, 0x03, b'a', b'.', b'b', 0x04, 0x00, 0x00,
                ],
            ),
            "192.0.2.44:40005",
            "192.0.2.44:40005",
        ),
    ];
    for (header, cip, peer) in &cases {
        let mut c = client(&srv);
        // Header and first packet in one write, as a balancer forwards them.
        send_with_peer_request(&mut c, header);
        assert_eq!(
            read_peer(&mut c),
            (cip.to_string(), peer.to_string()),
            "{header:?}"
        );
        // And the connection goes on as any other.
        c.write_all(&frame(mario::DEFAULT_STX, ID_ECHO, b"after"))
            .unwrap();
        assert_eq!(read_frame(&mut c).unwrap().1, b"after");
    }
    // A LOCAL header (a health check) keeps the balancer's own address.
    let mut c = client(&srv);
    send_with_peer_request(&mut c, &v2_local());
    let me = c.local_addr().unwrap().to_string();
    assert_eq!(read_peer(&mut c), (me.clone(), me));
    let s = srv.stop_clean();
    // Every connection was announced once and closed once.
    assert_eq!(summary(&s.stdout, "connected"), cases.len() as u64 + 1);
    assert_eq!(summary(&s.stdout, "closed"), cases.len() as u64 + 1);
}

#[test]
fn a_header_split_at_every_byte_is_read_whole() {
    let srv = server("any", &[]);
    let src: SocketAddr = "203.0.113.50:51000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    for header in [v1(src, dst), v2(src, dst, &[0x04, 0x00, 0x01, 0x00])] {
        for cut in 1..header.len() {
            let mut c = client(&srv);
            c.set_nodelay(true).unwrap();
            c.write_all(&header[..cut]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            let mut rest = header[cut..].to_vec();
            rest.extend_from_slice(&peer_request());
            c.write_all(&rest).unwrap();
            assert_eq!(
                read_peer(&mut c).1,
                src.to_string(),
                "cut at {cut} of {}",
                header.len()
            );
        }
    }
    srv.stop_clean();
}

/// Each bad header: the connection is closed at once (or at the header
/// timeout), one warning says why, no callback runs, and it counts as an
/// error; the slots all come back.
#[test]
fn bad_missing_partial_and_oversized_headers_close_with_one_warning() {
    let srv = server("any", &[("TS_RTIMEOUT", "1")]);
    let src: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    let mut too_long = SIG.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut bad_family = SIG.to_vec();
    bad_family.extend_from_slice(&[0x21, 0x51, 0x00, 0x00]);
    let mut short_addrs = SIG.to_vec();
    short_addrs.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
    let mut v1_long = b"PROXY TCP4 ".to_vec();
    v1_long.extend(std::iter::repeat_n(b'1', 120));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no header: a packet first",
            peer_request(),
            "no PROXY protocol header",
        ),
        (
            "garbage",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            "no PROXY protocol header",
        ),
        (
            "v1 with a bad address",
            b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n".to_vec(),
            "malformed PROXY protocol header",
        ),
        (
            "v1 with a bad port",
            b"PROXY TCP4 1.2.3.4 4.5.6.7 99999 2\r\n".to_vec(),
            "malformed PROXY protocol header",
        ),
        ("v1 without its end", v1_long, "PROXY protocol header"),
        ("v2 over 1024 bytes", too_long, "over 1024 bytes"),
        (
            "v2 of an unknown family",
            bad_family,
            "malformed PROXY protocol header",
        ),
        (
            "v2 addresses cut short",
            short_addrs,
            "malformed PROXY protocol header",
        ),
    ];
    let mut expect_warn = 0;
    for (what, bytes, warning) in &cases {
        let before = warnings(&srv, warning);
        let mut c = client(&srv);
        c.write_all(bytes).unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(2)),
            "{what}: not closed"
        );
        assert!(
            wait_for(Duration::from_secs(2), || warnings(&srv, warning) == before + 1),
            "{what}: expected one warning containing {warning:?}:\n{}",
            tail(&srv.stdout(), 10)
        );
        expect_warn += 1;
    }
    // Partial, then the client's end of stream.
    let mut c = client(&srv);
    c.write_all(&v1(src, dst)[..10]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "partial + EOF: not closed"
    );
    assert!(wait_for(Duration::from_secs(2), || warnings(
        &srv,
        "closed after 10 bytes of a PROXY protocol header"
    ) == 1));
    // Nothing at all, then end of stream.
    let mut c = client(&srv);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    assert!(wait_for(Duration::from_secs(2), || warnings(
        &srv,
        "closed without a PROXY protocol header"
    ) == 1));
    // Partial, then silence: the header timeout (the read timeout, 1 s,
    // in one-second ticks) closes it.
    let mut c = client(&srv);
    let t0 = Instant::now();
    c.write_all(&v2(src, dst, &[])[..20]).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "a stalled header is not closed"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the timeout"
    );
    assert!(wait_for(Duration::from_secs(2), || warnings(
        &srv,
        "no complete PROXY protocol header within 1 s"
    ) == 1));
    // The server still serves.
    let mut c = client(&srv);
    send_with_peer_request(&mut c, &v2(src, dst, &[]));
    assert_eq!(read_peer(&mut c).1, src.to_string());
    drop(c);
    let s = srv.stop_clean();
    // Only the last connection reached the application.
    assert_eq!(
        summary(&s.stdout, "connected"),
        1,
        "callbacks ran for a bad header"
    );
    assert_eq!(summary(&s.stdout, "closed"), 1);
    let st = stats_line(&s.stdout);
    assert_eq!(stat(&st, "errors"), expect_warn + 3, "{st}");
    assert_eq!(stat(&st, "connections"), 0, "{st}");
}

#[test]
fn the_header_timeout_is_three_seconds_at_most() {
    let srv = server("v2", &[("TS_RTIMEOUT", "60")]);
    let mut c = client(&srv);
    let t0 = Instant::now();
    c.write_all(&SIG[..5]).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(6)), "not closed");
    let took = t0.elapsed();
    assert!(
        (Duration::from_millis(2900)..Duration::from_millis(4500)).contains(&took),
        "closed after {took:?}"
    );
    assert!(wait_for(Duration::from_secs(2), || warnings(&srv, "within 3 s") == 1));
    srv.stop_clean();
}

#[test]
fn a_version_not_asked_for_is_refused() {
    let src: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    for (mode, header) in [("v1", v2(src, dst, &[])), ("v2", v1(src, dst))] {
        let srv = server(mode, &[]);
        let mut c = client(&srv);
        c.write_all(&header).unwrap();
        c.write_all(&peer_request()).unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(2)),
            "mode {mode}: not closed"
        );
        assert!(wait_for(Duration::from_secs(2), || warnings(
            &srv,
            "no PROXY protocol header"
        ) == 1));
        let s = srv.stop_clean();
        assert_eq!(summary(&s.stdout, "connected"), 0);
    }
}

#[test]
fn only_trusted_sources_may_connect() {
    let srv = server("v2", &[("TS_PROXY_SOURCE", "127.0.0.2/32,10.0.0.0/8")]);
    let src: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    // From 127.0.0.1: refused at once.
    let mut c = client(&srv);
    let _ = c.write_all(&v2(src, dst, &[]));
    let mut b = [0u8; 1];
    assert!(closed_within(&mut c, Duration::from_secs(2)) || c.read(&mut b).is_err());
    assert!(wait_for(Duration::from_secs(2), || warnings(
        &srv,
        "not a trusted source of PROXY protocol headers: refused"
    ) == 1));
    // From 127.0.0.2: served.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)).into())
        .unwrap();
    sock.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, srv.port)).into())
        .unwrap();
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send_with_peer_request(&mut c, &v2(src, dst, &[]));
    assert_eq!(read_peer(&mut c).1, src.to_string());
    drop(c);
    let s = srv.stop_clean();
    let st = stats_line(&s.stdout);
    assert_eq!(stat(&st, "refused"), 1, "{st}");
    assert_eq!(summary(&s.stdout, "connected"), 1);
}

#[test]
fn sources_without_the_protocol_and_bad_modes_are_refused() {
    let port = free_port();
    let e = Proc::ctest_with("testsrv", port, &[("TS_PROXY", "7")], |c| c)
        .err()
        .expect("mode 7");
    assert!(e.stderr.contains("mode is 7"), "{}", e.stderr);
    let e = Proc::ctest_with(
        "testsrv",
        port,
        &[("TS_PROXY", "v2"), ("TS_PROXY_SOURCE", "10.0.0.0/33")],
        |c| c,
    )
    .err()
    .expect("a bad network");
    assert!(
        e.stderr.contains("\"10.0.0.0/33\" is not a network"),
        "{}",
        e.stderr
    );
    let e = Proc::ctest_with("testsrv", port, &[("TS_PROXY_SOURCE", "10.0.0.0/8")], |c| c)
        .err()
        .expect("sources with the protocol off");
    assert!(
        e.stderr
            .contains("trusted PROXY protocol source(s) are set but the PROXY protocol is off"),
        "{}",
        e.stderr
    );
}

/// Many clients whose headers never come, dropped at the header timeout:
/// no slot is left behind, and good clients are served meanwhile.
#[test]
fn silent_clients_do_not_hold_slots() {
    let srv = server(
        "v2",
        &[("TS_RTIMEOUT", "1"), ("TS_CONNNUM", "64"), ("TS_WORKERS", "2")],
    );
    let silent: Vec<TcpStream> = (0..100).map(|_| client(&srv)).collect();
    let src: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:8082".parse().unwrap();
    // After the timeout, 128 slots are free again: 100 new good clients fit.
    std::thread::sleep(Duration::from_millis(2500));
    for mut s in silent {
        assert!(closed_within(&mut s, Duration::from_secs(3)));
    }
    let mut good: Vec<TcpStream> = (0..100).map(|_| client(&srv)).collect();
    for c in &mut good {
        send_with_peer_request(c, &v2(src, dst, &[]));
        assert_eq!(read_peer(c).1, src.to_string());
    }
    drop(good);
    let s = srv.stop_clean();
    let st = stats_line(&s.stdout);
    assert_eq!(stat(&st, "errors"), 100, "{st}");
    assert_eq!(summary(&s.stdout, "connected"), 100);
}

/// The Rust API: the same settings on the builder, `Conn::peer` in the
/// connect callback (which runs after the header) is the real client's,
/// and a server bound to `[::1]` reports its address.
#[test]
fn the_rust_api_reads_the_header_and_sees_the_real_client() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let s2 = seen.clone();
    let builder = mario::Server::builder()
        .bind("[::1]:0")
        .proxy_protocol(mario::proto::PROXY_ANY)
        .proxy_source("::1/128".parse().unwrap())
        .on_connect(move |c, _| {
            s2.lock().unwrap().push(c.peer());
            Ok(())
        })
        .on_packet(ID_ECHO, |c, _, p| {
            c.send(p.bytes());
            Ok(mario::Verdict::Continue)
        });
    let srv = Running::start(builder);
    let local = srv.server.local_addr().expect("listening");
    assert_eq!(local, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, srv.port)));
    let src: SocketAddr = "[2001:db8::5]:4242".parse().unwrap();
    let mut c = TcpStream::connect(local).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = v2(src, "[2001:db8::1]:80".parse().unwrap(), &[]);
    bytes.extend_from_slice(&frame(mario::DEFAULT_STX, ID_ECHO, b"hi"));
    c.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut c).unwrap().1, b"hi");
    assert_eq!(*seen.lock().unwrap(), [src]);
    drop(c);
    srv.stop();
}

/// HAProxy ends each health check (a LOCAL header) with a reset: those
/// count as `closed`, not as errors, so the error counter keeps meaning
/// bad input. A reset on a proxied client's connection stays an error.
#[test]
fn a_health_check_ended_by_a_reset_is_closed_not_an_error() {
    let srv = server("v2", &[]);
    for _ in 0..5 {
        let mut c = client(&srv);
        send_with_peer_request(&mut c, &v2_local());
        read_peer(&mut c);
        reset(c);
    }
    let mut c = client(&srv);
    let real = v2(
        "203.0.113.1:1000".parse().unwrap(),
        "10.0.0.1:8082".parse().unwrap(),
        &[],
    );
    send_with_peer_request(&mut c, &real);
    read_peer(&mut c);
    reset(c);
    assert!(wait_for(Duration::from_secs(2), || srv
        .stdout()
        .matches("EV close")
        .count()
        == 6));
    let s = srv.stop_clean();
    let st = stats_line(&s.stdout);
    assert_eq!((stat(&st, "closed"), stat(&st, "errors")), (5, 1), "{st}");
}

/// A balancer with an IPv6 side writes an IPv4 client as `::ffff:a.b.c.d`:
/// it is IPv4 everywhere (`cip` set), as a client of a dual-stack socket
/// is; and a trusted network written in that form matches IPv4 balancers.
#[test]
fn ipv4_mapped_addresses_are_ipv4() {
    let srv = server(
        "any",
        &[("TS_BIND", "any"), ("TS_PROXY_SOURCE", "::ffff:127.0.0.0/104")],
    );
    let mapped: SocketAddr = "[::ffff:1.2.3.4]:1111".parse().unwrap();
    let dst: SocketAddr = "[2001:db8::1]:8082".parse().unwrap();
    for header in [v2(mapped, dst, &[]), v1(mapped, dst)] {
        // Over IPv4 to the dual-stack socket: trusted through the mapped
        // network.
        let mut c = client(&srv);
        send_with_peer_request(&mut c, &header);
        assert_eq!(
            read_peer(&mut c),
            ("1.2.3.4:1111".to_string(), "1.2.3.4:1111".to_string())
        );
    }
    srv.stop_clean();
}
