//! The standard deployment, with the real components: HAProxy (`mode
//! tcp`, `send-proxy-v2` or `send-proxy`, health checks) in front of two
//! `maritcp` instances on 127.0.0.2 and 127.0.0.3 with the PROXY protocol
//! on. LOGIN works through the balancer, both instances get clients, each
//! logs the client's real address (clients connect from 127.0.0.5, an
//! address neither HAProxy nor the instances use), and when one instance
//! is killed its clients are closed at once and new clients all reach the
//! other within the health-check interval, none left hanging.
//! docs/DEPLOY.md shows the same configuration.

mod balancer;
mod common;
mod protocol;

use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use balancer::*;
use common::*;
use protocol::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// A maritcp (shipped build) on `ip` with the PROXY protocol `mode`,
/// logging every connection.
fn instance(ip: &str, mode: &str) -> Proc {
    Proc::maritcp_at(
        &root().join("c-examples/maritcp"),
        &format!(
            "TIMEOUT 30\nWORKERNUM 2\nCONNNUM 1024\nBIND {ip}\nPROXY {mode}\nPROXY_SOURCE 127.0.0.1\nLOG_CONNECTIONS 1\n"
        ),
        &[],
    )
}

fn addr(ip: &str, p: &Proc) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), p.port)
}

/// Whether `p` logged a connection from the client port `port` of
/// [`CLIENT`].
fn logged(p: &Proc, port: u16) -> bool {
    p.stdout()
        .contains(&format!("connection from {CLIENT} port {port} on worker"))
}

/// Connects from [`CLIENT`] through `front`, logs in: the client's port.
fn login_through(front: SocketAddr, uid: u16) -> (TcpStream, u16) {
    let mut c = connect_from(CLIENT, front).expect("connect to HAProxy");
    c.write_all(&login(uid)).unwrap();
    expect_reply(&mut c);
    let port = c.local_addr().unwrap().port();
    (c, port)
}

/// Which instance logged each client port (waiting a little for the
/// log thread): (on a, on b); panics if a port is in neither or both.
fn placed(a: &Proc, b: &Proc, ports: &[u16]) -> (usize, usize) {
    let (mut on_a, mut on_b) = (0, 0);
    for &port in ports {
        assert!(
            wait_for(Duration::from_secs(2), || logged(a, port) || logged(b, port)),
            "no instance logged client port {port}"
        );
        match (logged(a, port), logged(b, port)) {
            (true, false) => on_a += 1,
            (false, true) => on_b += 1,
            other => panic!("client port {port} logged by {other:?}"),
        }
    }
    (on_a, on_b)
}

/// Two instances (PROXY v2) on 127.0.0.2 and 127.0.0.3 behind one HAProxy
/// (`send-proxy-v2`), both up: the instances, HAProxy and its frontend.
fn two_behind_haproxy() -> (Proc, Proc, HaProxy, SocketAddr) {
    let a = instance("127.0.0.2", "v2");
    let b = instance("127.0.0.3", "v2");
    let h = HaProxy::start(
        &[("a", addr("127.0.0.2", &a)), ("b", addr("127.0.0.3", &b))],
        "send-proxy-v2",
    );
    assert!(
        h.wait_status(&["a", "b"], Duration::from_secs(5)),
        "servers not up: {:?}",
        h.status()
    );
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, h.port));
    (a, b, h, front)
}

#[test]
fn behind_haproxy_with_proxy_v2_both_instances_serve_real_addresses() {
    let (a, b, h, front) = two_behind_haproxy();

    let mut ports = Vec::new();
    for uid in 0..100u16 {
        let (c, port) = login_through(front, uid);
        ports.push(port);
        drop(c);
    }
    let (on_a, on_b) = placed(&a, &b, &ports);
    eprintln!("100 clients through HAProxy: {on_a} on a, {on_b} on b");
    assert!(on_a >= 30 && on_b >= 30, "round robin: {on_a} and {on_b}");

    // The health checks (LOCAL headers, every 200 ms) are served and
    // closed as the balancer's own connections, without a warning.
    for p in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(2), || p
                .stdout()
                .contains("connection from 127.0.0.1 port")),
            "no health check logged:\n{}",
            tail(&p.stdout(), 10)
        );
        assert!(
            !p.stdout().contains("PROXY protocol header"),
            "{}",
            tail(&p.stdout(), 20)
        );
    }
    drop(h);
    a.stop_clean();
    b.stop_clean();
}

#[test]
fn a_killed_instance_loses_its_clients_at_once_and_new_ones_reach_the_other() {
    let (mut a, b, h, front) = two_behind_haproxy();

    // 40 logged-in clients, held open.
    let mut held: Vec<(TcpStream, u16)> = (0..40).map(|uid| login_through(front, uid)).collect();
    let ports: Vec<u16> = held.iter().map(|(_, p)| *p).collect();
    placed(&a, &b, &ports);
    let on_a: HashSet<u16> = ports.iter().copied().filter(|&p| logged(&a, p)).collect();
    assert!(!on_a.is_empty() && on_a.len() < 40, "{} of 40 on a", on_a.len());

    a.kill().unwrap();
    let killed = Instant::now();

    // a's clients are closed by HAProxy at once; b's still work.
    for (c, port) in &mut held {
        if on_a.contains(port) {
            assert!(
                closed_within(c, Duration::from_secs(2)),
                "client {port} of the killed instance left hanging"
            );
        } else {
            c.write_all(&login(1)).unwrap();
            expect_reply(c);
        }
    }

    // New clients, from the kill on: each is answered or closed within
    // 2 s (none hangs), and once the health checks have taken a out
    // (200 ms x 2, plus one interval), every one is answered, by b.
    let settled = Duration::from_millis(CHECK_MS * (FALL + 1) + 200);
    let (mut answered, mut refused, mut late_on_b) = (0, 0, 0);
    let mut uid = 1000;
    while killed.elapsed() < settled + Duration::from_millis(1500) {
        uid += 1;
        let after = killed.elapsed() > settled;
        let t0 = Instant::now();
        let ok = connect_from(CLIENT, front).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(&login(uid))?;
            let mut r = [0u8; 8];
            std::io::Read::read_exact(&mut c, &mut r)?;
            Ok((r, c.local_addr()?.port()))
        });
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "a client hung for {:?}",
            t0.elapsed()
        );
        match ok {
            Ok((r, port)) => {
                assert_eq!(r, reply());
                answered += 1;
                if after {
                    assert!(
                        wait_for(Duration::from_secs(2), || logged(&b, port)),
                        "client {port} not on b"
                    );
                    late_on_b += 1;
                }
            }
            Err(e) => {
                assert!(!after, "a client after the health checks settled failed: {e}");
                refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "after the kill: {answered} answered ({late_on_b} after {} ms, all by b), {refused} closed before",
        settled.as_millis()
    );
    assert!(
        late_on_b >= 20,
        "too few clients after the checks settled: {late_on_b}"
    );
    assert!(h.wait_status(&["b"], Duration::from_secs(2)), "{:?}", h.status());
    drop(h);
    b.stop_clean();
}

#[test]
fn behind_haproxy_with_proxy_v1() {
    let a = instance("127.0.0.2", "v1");
    let h = HaProxy::start(&[("a", addr("127.0.0.2", &a))], "send-proxy");
    assert!(
        h.wait_status(&["a"], Duration::from_secs(5)),
        "server not up: {:?}",
        h.status()
    );
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, h.port));
    let mut ports = Vec::new();
    for uid in 0..20u16 {
        let (mut c, port) = login_through(front, uid);
        // Pipelined LOGINs after the header work as directly.
        for _ in 0..3 {
            c.write_all(&login(uid)).unwrap();
            expect_reply(&mut c);
        }
        ports.push(port);
    }
    for port in ports {
        assert!(
            wait_for(Duration::from_secs(2), || logged(&a, port)),
            "client {port} not logged"
        );
    }
    drop(h);
    a.stop_clean();
}
