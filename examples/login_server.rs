//! The maritcp sample server (see `c-examples/`) written with the safe Rust
//! API instead of the C interface:
//!
//! ```text
//! cargo run --release --example login_server -- [PORT]    # default 8082
//! c-examples/mario_client 127.0.0.1 8082 42
//! ```
//!
//! It answers LOGIN (`HEAD{stx 0x8eb69af7, pkglen 10, akg_id 0x6101}` and a
//! `uint16 uid`) with an 8-byte `HEAD` carrying the request's `stx` and
//! `akg_id` and `pkglen` 8. A LOGIN of any other length is an error: the
//! library logs it (with the packet id and the client's address) and closes
//! the connection. Each of the 2 workers counts the users logged in on its
//! connections; every 60 seconds the total is logged as `online number: N`.
//! It runs until killed.
//!
//! What it shows: a state per connection ([`Session`], made by
//! `ServerBuilder::state` and handed to every handler as `&mut Session`),
//! so whether a connection has logged in is its own business, with no
//! shared set and no lock; handlers that return errors; and counters shared
//! by all connections (atomics in an `Arc`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mario::{Conn, HandlerResult, Head, Packet, Server, ServerBuilder, Verdict};

/// The magic every packet carries in `HEAD.stx`.
pub const STX: u32 = 0x8eb6_9af7;
/// The LOGIN packet id.
pub const LOGIN: u16 = 0x6101;
/// A LOGIN is a `HEAD` and a `uint16 uid`.
pub const LOGIN_REQ_LEN: u16 = 10;
/// The reply is a bare `HEAD`.
pub const LOGIN_RSP_LEN: u16 = 8;
/// Worker threads.
pub const WORKERS: u16 = 2;
/// Seconds between two `online number` lines.
pub const STATS_INTERVAL: Duration = Duration::from_secs(60);

/// Users online, per worker: only a connection's own worker changes its
/// counter; they can be read from any thread.
pub struct Online {
    count: Vec<AtomicUsize>,
}

impl Online {
    /// Counters for `workers` workers, all zero.
    pub fn new(workers: u16) -> Online {
        Online {
            count: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Users online on worker `w`.
    pub fn on_worker(&self, w: usize) -> usize {
        self.count[w].load(Ordering::Relaxed)
    }

    /// Users online in all.
    pub fn total(&self) -> usize {
        self.count.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What the server knows of one connection: its state.
#[derive(Debug, Default)]
pub struct Session {
    /// The uid of its first LOGIN, once it has logged in (it is then
    /// counted online, once, however often it logs in).
    pub uid: Option<u16>,
}

/// A LOGIN of the wrong length.
#[derive(Debug)]
pub struct BadLogin {
    /// The `pkglen` it had.
    pub pkglen: u16,
}

impl fmt::Display for BadLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid login packet: pkglen {} (must be {LOGIN_REQ_LEN})",
            self.pkglen
        )
    }
}

impl std::error::Error for BadLogin {}

/// LOGIN: check the length, count the user on its first LOGIN, answer with
/// a bare `HEAD`.
fn login(online: &Online, conn: &mut Conn, session: &mut Session, pkt: Packet<'_>) -> HandlerResult {
    let head = pkt.head();
    if head.pkglen != LOGIN_REQ_LEN {
        // Logged by the library with the packet id and the peer; the
        // connection is closed as error.
        return Err(BadLogin { pkglen: head.pkglen }.into());
    }
    if session.uid.is_none() {
        session.uid = Some(u16::from_ne_bytes([pkt.body()[0], pkt.body()[1]]));
        online.count[conn.worker_index()].fetch_add(1, Ordering::Relaxed);
    }
    let reply = Head {
        stx: head.stx,
        pkglen: LOGIN_RSP_LEN,
        akg_id: head.akg_id,
    };
    // A refused reply (over the output cap) closed the connection already.
    conn.send(&reply.to_bytes());
    Ok(Verdict::Continue)
}

/// The server, without its port: LOGIN handler and logout on close.
pub fn builder(online: Arc<Online>) -> ServerBuilder<Session> {
    let for_login = online.clone();
    Server::builder()
        .workers(WORKERS)
        .stx(STX)
        .read_timeout(8)
        .write_timeout(8)
        .default_state::<Session>()
        .on_packet(LOGIN, move |conn, session, pkt| {
            login(&for_login, conn, session, pkt)
        })
        .on_close(move |conn, session, _reason| {
            if session.uid.is_some() {
                online.count[conn.worker_index()].fetch_sub(1, Ordering::Relaxed);
            }
        })
}

fn main() {
    let port: u16 = match std::env::args().nth(1) {
        None => 8082,
        Some(a) => match a.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("usage: login_server [PORT]  (bad port {a:?})");
                std::process::exit(2);
            }
        },
    };
    mario::logq::install_logger();
    let online = Arc::new(Online::new(WORKERS));
    let server = match builder(online.clone()).port(port).build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("login_server: {e}");
            std::process::exit(1);
        }
    };
    let server = Arc::new(server);
    let s = server.clone();
    std::thread::spawn(move || {
        // Port 0 picks a free port: say which (tests/rust_examples.rs reads it).
        if s.wait_listening(Duration::from_secs(10)).is_some()
            && let Some(addr) = s.local_addr()
        {
            println!("login_server: listening on {addr}");
        }
        loop {
            std::thread::sleep(STATS_INTERVAL);
            log::info!("online number: {}", online.total());
        }
    });
    if let Err(e) = server.run() {
        eprintln!("login_server: {e}");
        std::process::exit(1);
    }
}
