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
//! `akg_id` and `pkglen` 8. A LOGIN of any other length is logged as an
//! error and the connection is closed. Each of the 2 workers counts the
//! users logged in on its connections; every 60 seconds the total is logged
//! as `online number: N`. It runs until killed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mario::{AKG_CLOSED, Conn, ConnId, Head, Packet, Server, ServerBuilder, Verdict};

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

/// Users online, per worker. Only a connection's own worker touches its
/// slot (so the locks are never contended); the counters can be read from
/// any thread.
pub struct Online {
    count: Vec<AtomicUsize>,
    logged_in: Vec<Mutex<HashSet<ConnId>>>,
}

impl Online {
    /// Counters for `workers` workers, all zero.
    pub fn new(workers: u16) -> Online {
        Online {
            count: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            logged_in: (0..workers).map(|_| Mutex::new(HashSet::new())).collect(),
        }
    }

    /// Counts the user of `conn` (once, however often it logs in).
    fn add(&self, conn: &Conn) {
        let w = conn.worker_index();
        let mut set = self.logged_in[w].lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(conn.id()) {
            self.count[w].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Uncounts the user of `conn`, if it had logged in.
    fn remove(&self, conn: &Conn) {
        let w = conn.worker_index();
        let mut set = self.logged_in[w].lock().unwrap_or_else(|e| e.into_inner());
        if set.remove(&conn.id()) {
            self.count[w].fetch_sub(1, Ordering::Relaxed);
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

/// LOGIN: check the length, count the user, answer with a bare `HEAD`.
fn login(online: &Online, conn: &mut Conn, pkt: Packet<'_>) -> Verdict {
    let head = pkt.head();
    if head.pkglen != LOGIN_REQ_LEN {
        log::error!(
            "invalid login packet: pkglen {} from {}",
            head.pkglen,
            conn.peer()
        );
        conn.close(AKG_CLOSED);
        return Verdict::Stop;
    }
    online.add(conn);
    let reply = Head {
        stx: head.stx,
        pkglen: LOGIN_RSP_LEN,
        akg_id: head.akg_id,
    };
    if conn.send(&reply.to_bytes()) {
        Verdict::Continue
    } else {
        // Over the output cap: the connection is closed already.
        Verdict::Stop
    }
}

/// The server, without its port: LOGIN handler and logout on close.
pub fn builder(online: Arc<Online>) -> ServerBuilder {
    let for_login = online.clone();
    Server::builder()
        .workers(WORKERS)
        .stx(STX)
        .read_timeout(8)
        .write_timeout(8)
        .on_packet(LOGIN, move |conn, pkt| login(&for_login, conn, pkt))
        .on_close(move |conn, _reason| online.remove(conn))
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
    std::thread::spawn(move || {
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
