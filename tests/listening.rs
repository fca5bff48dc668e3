//! Where a server listens: an IPv4 address, IPv6, every address through
//! one dual-stack socket, the backlog, SO_REUSEPORT shared by two
//! processes, and the socket systemd passes (socket activation), over
//! real sockets with the C test server (tests/c/testsrv.c, its PEER
//! packet reports `c->cip`/`c->cport`, `mario_conn_peer` and its pid).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;

const ID_PEER: u16 = 0x000b;

/// The server's PEER reply on `s`: (cip, peer, pid) as text.
fn peer(s: &mut TcpStream) -> (String, String, u32) {
    s.write_all(&frame(mario::DEFAULT_STX, ID_PEER, &[])).unwrap();
    let (h, b) = read_frame(s).expect("PEER reply");
    assert_eq!(h.akg_id, ID_PEER);
    let text = String::from_utf8(b).unwrap();
    let field = |k: &str| {
        text.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_string()
    };
    (field("cip="), field("peer="), field("pid=").parse().unwrap())
}

fn dial(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// testsrv with `env` on a free port, tried again on another when the
/// port was taken before the server bound it (another test's client may
/// get it from the kernel meanwhile): the server and its port.
fn testsrv_on_a_free_port(env: &[(&str, &str)]) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        match Proc::ctest_with("testsrv", port, env, |c| c) {
            Ok(p) => return (p, port),
            Err(e) if e.stderr.contains("Address already in use") => continue,
            Err(e) => panic!("testsrv {env:?} did not start:\n{}\n{}", e.stdout, e.stderr),
        }
    }
    panic!("testsrv {env:?}: no free port in 5 tries");
}

fn has_ipv6() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[test]
fn a_server_bound_to_one_address_is_reached_there_only() {
    let port = free_port();
    let srv =
        Proc::ctest_with("testsrv", port, &[("TS_BIND", "127.0.0.2")], |c| c).expect("testsrv on 127.0.0.2");
    let mut c = dial(SocketAddr::from(([127, 0, 0, 2], port)));
    let local = c.local_addr().unwrap();
    let (cip, peer, _) = peer(&mut c);
    assert_eq!(cip, local.to_string());
    assert_eq!(peer, local.to_string());
    let refused =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "127.0.0.1:{port} answered, the server should listen on 127.0.0.2 only"
    );
    drop(c);
    srv.stop_clean();
}

#[test]
fn ipv6_clients_have_no_cip_and_their_whole_address_from_mario_conn_peer() {
    if !has_ipv6() {
        panic!("this test needs IPv6 on loopback (::1)");
    }
    let (srv, port) = testsrv_on_a_free_port(&[("TS_BIND", "::1")]);
    let mut c = dial(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
    let local = c.local_addr().unwrap();
    let (cip, peer, _) = peer(&mut c);
    assert_eq!(cip, "0.0.0.0:0", "an IPv6 client has cip and cport 0");
    assert_eq!(peer, local.to_string());
    // Packets flow as over IPv4.
    c.write_all(&frame(mario::DEFAULT_STX, ID_ECHO, b"over IPv6"))
        .unwrap();
    let (_, body) = read_frame(&mut c).unwrap();
    assert_eq!(body, b"over IPv6");
    drop(c);
    srv.stop_clean();
}

#[test]
fn every_address_is_one_dual_stack_socket_with_ipv4_clients_as_ipv4() {
    let (srv, port) = testsrv_on_a_free_port(&[("TS_BIND", "any")]);
    let mut c4 = dial(SocketAddr::from(([127, 0, 0, 1], port)));
    let local4 = c4.local_addr().unwrap();
    let (cip, peer4, _) = peer(&mut c4);
    assert_eq!((cip, peer4), (local4.to_string(), local4.to_string()));
    if has_ipv6() {
        let mut c6 = dial(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        let local6 = c6.local_addr().unwrap();
        assert_eq!(peer(&mut c6).1, local6.to_string());
    }
    srv.stop_clean();
}

#[test]
fn a_bad_address_or_backlog_is_refused_with_a_message() {
    let port = free_port();
    let e = Proc::ctest_with("testsrv", port, &[("TS_BIND", "localhost")], |c| c)
        .err()
        .expect("a name is not an address");
    assert!(
        e.stderr.contains("\"localhost\" is not an IPv4 or IPv6 address"),
        "{}",
        e.stderr
    );
    let e = Proc::ctest_with("testsrv", port, &[("TS_BACKLOG", "0")], |c| c)
        .err()
        .expect("backlog 0");
    assert!(
        e.stderr.contains("backlog is 0, must be 1..=65535"),
        "{}",
        e.stderr
    );
    assert!(e.stdout.contains("SETTING_REFUSED"));
}

/// The backlog reaches `listen(2)`: `ss` shows a listening socket's
/// backlog as its Send-Q.
#[test]
fn the_backlog_is_the_listening_sockets() {
    let (srv, port) = testsrv_on_a_free_port(&[("TS_BACKLOG", "77")]);
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(send_q, ["77"], "ss -ltn: {text}");
    srv.stop_clean();
}

/// Two processes share the port with SO_REUSEPORT and the kernel spreads
/// the clients over both; without it the second cannot start.
#[test]
fn reuseport_lets_two_processes_share_the_port() {
    let env = [("TS_REUSEPORT", "1"), ("TS_BIND", "127.0.0.1")];
    let (a, port) = testsrv_on_a_free_port(&env);
    let b = Proc::ctest_with("testsrv", port, &env, |c| c).expect("second testsrv on the same port");
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    for _ in 0..200 {
        let mut c = dial(SocketAddr::from(([127, 0, 0, 1], port)));
        *by_pid.entry(peer(&mut c).2).or_default() += 1;
    }
    eprintln!("clients per process: {by_pid:?}");
    assert_eq!(by_pid.len(), 2, "both processes get clients: {by_pid:?}");
    assert!(by_pid.values().all(|&n| n >= 40), "spread: {by_pid:?}");
    assert_eq!(
        by_pid.keys().copied().collect::<std::collections::BTreeSet<_>>(),
        [a.pid(), b.pid()].into()
    );
    let e = Proc::ctest_with("testsrv", port, &[("TS_BIND", "127.0.0.1")], |c| c)
        .err()
        .expect("a third server without SO_REUSEPORT must fail");
    assert!(
        e.stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")) && e.stderr.contains("in use"),
        "{}",
        e.stderr
    );
    a.stop_clean();
    b.stop_clean();
}

/// Starts testsrv as systemd would with socket activation: `listener` as
/// descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` = the server's own pid (set
/// by the shell that execs it, as systemd sets it after fork), or another
/// pid when `for_us` is false.
fn socket_activated(listener: &TcpListener, ts_port: u16, for_us: bool) -> Result<Proc, Stopped> {
    let fd = listener.as_raw_fd();
    let bin = root().join("target/ctests/testsrv");
    let pid = if for_us { "$$" } else { "1" };
    Proc::ctest_with("testsrv", ts_port, &[], move |_| {
        let script = format!("LISTEN_PID={pid} LISTEN_FDS=1 exec {}", bin.display());
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", &script]);
        // SAFETY: `dup2` and `fcntl` are async-signal-safe; between fork
        // and exec only the child's copy of the descriptor table changes.
        unsafe {
            sh.pre_exec(move || {
                // dup2 clears close-on-exec on the copy; when the listener
                // already is 3 the flag is cleared by hand.
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        sh
    })
}

#[test]
fn the_socket_systemd_passes_is_served_instead_of_binding() {
    // The socket systemd would have made, on an address no TS_* names.
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 4), 0)).unwrap();
    let at = listener.local_addr().unwrap();
    let srv = socket_activated(&listener, at.port(), true).expect("socket-activated testsrv");
    drop(listener);
    let mut c = dial(at);
    assert_eq!(peer(&mut c).1, c.local_addr().unwrap().to_string());
    let said = format!("listening on {at}: the socket systemd passed (fd 3)");
    assert!(
        wait_for(Duration::from_secs(2), || srv.stdout().contains(&said)),
        "{}",
        srv.stdout()
    );
    drop(c);
    srv.stop_clean();
}

#[test]
fn a_passed_socket_on_another_port_is_served_and_said() {
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 4), 0)).unwrap();
    let at = listener.local_addr().unwrap();
    let other = free_port();
    let srv = socket_activated(&listener, other, true).expect("socket-activated testsrv");
    drop(listener);
    let mut c = dial(at);
    peer(&mut c);
    let said =
        format!("systemd passed one listening socket, on {at} (fd 3): serving it rather than port {other}");
    // The log thread writes it: wait for it.
    assert!(
        wait_for(Duration::from_secs(2), || srv.stdout().contains(&said)),
        "{}",
        srv.stdout()
    );
    drop(c);
    srv.stop_clean();
}

#[test]
fn listen_pid_of_another_process_is_ignored() {
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 4), 0)).unwrap();
    let port = free_port();
    let srv = socket_activated(&listener, port, false).expect("testsrv");
    // It bound its own port (0.0.0.0, as init_server does).
    let mut c = dial(SocketAddr::from((IpAddr::from(Ipv4Addr::LOCALHOST), port)));
    peer(&mut c);
    assert!(!srv.stdout().contains("systemd passed"), "{}", srv.stdout());
    drop(c);
    srv.stop_clean();
}

/// A second server of the process started with socket activation (a
/// restart, or another server) finds the passed socket served and closed
/// by the first: it binds its own instead of failing.
#[test]
fn a_server_after_the_first_binds_its_own_under_socket_activation() {
    ensure_built();
    let out = std::process::Command::new(root().join("target/ctests/sdrestart"))
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .output()
        .expect("run sdrestart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ROUND 0 served=1 ret=(nil)"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ROUND 1 served=1 ret=(nil)"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.matches("the socket systemd passed (fd 3)").count(),
        1,
        "{stdout}"
    );
}
