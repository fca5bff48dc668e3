//! Runs the tokio-peer binary on a free port and talks the maritcp protocol
//! to it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const STX: u32 = 0x8eb6_9af7;
const LOGIN: u16 = 0x6101;
const ECHO: u16 = 0x6102;

fn head(stx: u32, pkglen: u16, akg_id: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(8);
    v.extend_from_slice(&stx.to_le_bytes());
    v.extend_from_slice(&pkglen.to_le_bytes());
    v.extend_from_slice(&akg_id.to_le_bytes());
    v
}

fn login(uid: u16) -> Vec<u8> {
    let mut v = head(STX, 10, LOGIN);
    v.extend_from_slice(&uid.to_le_bytes());
    v
}

fn login_reply() -> Vec<u8> {
    head(STX, 8, LOGIN)
}

/// An ECHO packet of `len` bytes in all, its body a pattern seeded by `seed`.
fn echo(len: u16, seed: u8) -> Vec<u8> {
    let mut v = head(STX, len, ECHO);
    v.extend((0..len - 8).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    v
}

/// A running tokio-peer; killed on drop if still running.
struct Peer {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn start(extra: &[&str]) -> Peer {
        // Retry in the unlikely case that someone takes the free port first.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let port_s = port.to_string();
            let mut child = Command::new(env!("CARGO_BIN_EXE_tokio-peer"))
                .args(["--port", &port_s, "--workers", "2"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tokio-peer");

            let stderr = Arc::new(Mutex::new(String::new()));
            let err_pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });

            let out_pipe = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut lines = BufReader::new(out_pipe).lines();
                let first = lines.next().and_then(Result::ok);
                let _ = tx.send(first);
                // Keep draining so the child never blocks on stdout.
                for _ in lines {}
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(line)) if line == "--------------start server ok--------------" => {
                    return Peer { child, port, stderr };
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("start failed ({other:?}): {}", stderr.lock().unwrap());
                }
            }
        }
        panic!("could not start tokio-peer");
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "tokio-peer did not exit in {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_contains(&self, needle: &str) -> bool {
        // The line may still be on its way through the pipe.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if self.stderr.lock().unwrap().contains(needle) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that nothing more arrives within a short while.
fn assert_quiet(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected nothing more, got {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// Asserts that the server closes the connection without sending anything.
fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

#[test]
fn login_answered_exactly() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    s.write_all(&login(42)).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), login_reply());
    assert_quiet(&mut s);

    // Still open: a second LOGIN is answered too.
    s.write_all(&login(42)).unwrap();
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), login_reply());
    assert_quiet(&mut s);
}

#[test]
fn pipelined_logins_answered_in_order() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    let n = 100;
    let batch: Vec<u8> = (0..n).flat_map(|i| login(i as u16)).collect();
    let expect: Vec<u8> = (0..n).flat_map(|_| login_reply()).collect();

    // All in one write.
    s.write_all(&batch).unwrap();
    let mut got = vec![0u8; expect.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, expect);
    assert_quiet(&mut s);

    // Again, in 7-byte pieces so that packets and heads straddle reads.
    for chunk in batch.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, expect);
    assert_quiet(&mut s);
}

#[test]
fn echo_returns_the_packet_unchanged() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    for len in [8, 9, 10, 100, 1400, 1500] {
        let pkt = echo(len, len as u8);
        s.write_all(&pkt).unwrap();
        let mut got = vec![0u8; pkt.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, pkt, "ECHO of {len} bytes");
    }
    // Pipelined with LOGINs, in 7-byte pieces.
    let batch: Vec<u8> = (0..40u8)
        .flat_map(|i| [login(i.into()), echo(1400, i)].concat())
        .collect();
    let expect: Vec<u8> = (0..40u8)
        .flat_map(|i| [login_reply(), echo(1400, i)].concat())
        .collect();
    for chunk in batch.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    let mut got = vec![0u8; expect.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == expect, "pipelined ECHO and LOGIN replies differ");
    assert_quiet(&mut s);
}

#[test]
fn login_with_wrong_length_is_closed() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    let mut pkt = head(STX, 12, LOGIN);
    pkt.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&pkt).unwrap();
    assert_closed(&mut s);
    assert!(peer.stderr_contains("invalid login packet: pkglen 12"));
}

#[test]
fn bad_stx_is_closed() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    let mut pkt = head(0xdead_beef, 10, LOGIN);
    pkt.extend_from_slice(&[0, 0]);
    s.write_all(&pkt).unwrap();
    assert_closed(&mut s);
    assert!(peer.stderr_contains("[error] bad packet head"));
}

#[test]
fn bad_pkglen_and_unknown_id_are_closed() {
    let peer = Peer::start(&[]);

    let mut s = peer.connect();
    s.write_all(&head(STX, 7, LOGIN)).unwrap();
    assert_closed(&mut s);

    let mut s = peer.connect();
    s.write_all(&head(STX, 1501, LOGIN)).unwrap();
    assert_closed(&mut s);

    let mut s = peer.connect();
    s.write_all(&head(STX, 8, 0x6103)).unwrap();
    assert_closed(&mut s);
    assert!(peer.stderr_contains("[warn] no handler for akg_id 0x6103"));

    // ECHO over MAX_PKG_LEN
    let mut s = peer.connect();
    s.write_all(&echo(1501, 0)).unwrap();
    assert_closed(&mut s);
}

#[test]
fn replies_before_bad_packet_are_sent() {
    let peer = Peer::start(&[]);
    let mut s = peer.connect();
    let mut data = login(1);
    data.extend(login(2));
    data.extend(head(0, 10, LOGIN));
    s.write_all(&data).unwrap();
    let mut got = vec![0u8; 16];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, [login_reply(), login_reply()].concat());
    assert_closed(&mut s);
}

#[test]
fn custom_stx() {
    let peer = Peer::start(&["--stx", "0x01020304"]);
    let mut s = peer.connect();
    let mut pkt = head(0x0102_0304, 10, LOGIN);
    pkt.extend_from_slice(&[0, 0]);
    s.write_all(&pkt).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), head(0x0102_0304, 8, LOGIN));
}

#[test]
fn idle_connection_times_out() {
    let peer = Peer::start(&["--timeout", "1"]);
    let mut s = peer.connect();
    let t0 = Instant::now();
    assert_closed(&mut s);
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut peer = Peer::start(&[]);
    // With a connection open and logged in.
    let mut s = peer.connect();
    s.write_all(&login(7)).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();

    peer.signal("-TERM");
    let st = peer.wait_exit(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_closed(&mut s);
}

#[test]
fn sigint_exits_zero() {
    let mut peer = Peer::start(&[]);
    peer.signal("-INT");
    let st = peer.wait_exit(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[test]
fn bad_arguments_exit_2() {
    let st = Command::new(env!("CARGO_BIN_EXE_tokio-peer"))
        .args(["--workers", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}
