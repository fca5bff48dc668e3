//! A line-based chat room on the Rust API, for telnet or nc (the Rust twin
//! of `c-examples/chat.c`):
//!
//! ```text
//! cargo run --example chat -- [PORT [WORKERS]]     # defaults: 5555, 2
//! telnet 127.0.0.1 5555                            # or: nc ::1 5555
//! ```
//!
//! The server asks for a name; the first line a client sends is its name
//! (1..20 letters, digits, `_` or `-`, not taken; else it is asked again).
//! From then on every line (ended by `"\n"` or `"\r\n"`, at most 512 bytes)
//! goes to everyone else in the room as `name: text` (control characters
//! shown as `?`); an empty line is ignored. Commands:
//!
//! * `/who`: the names of everyone in the room (`* here: a b c`, sorted);
//! * `/quit`: leave (`* bye` is sent, then the connection closes).
//!
//! The others hear `* NAME joined` and `* NAME left`. A line over 512
//! bytes closes its connection (the library logs a warning). Ctrl-C
//! (SIGINT) or SIGTERM stops the server cleanly: everyone is disconnected,
//! then the program says `chat: stopped` and exits with status 0.
//!
//! It listens on `[::]`: one dual-stack socket, IPv6 and IPv4 clients.
//! When it listens it prints `chat: listening on [::]:PORT` (with PORT 0,
//! the free port the system chose).
//!
//! What it shows: [`Framing::Line`] with an `on_frame` handler; a state
//! per connection (its [`Member`]: the name, once chosen), reached by its
//! own handlers without a lock; messages to connections of any worker with
//! [`mario::send_to`] from a handler; Ctrl-C and SIGTERM through the
//! `ctrlc` crate and a [`mario::StopHandle`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mario::{AKG_CLOSED, Conn, ConnId, Framing, HandlerResult, Server, ServerBuilder, Verdict};

/// The longest line, without its delimiter.
pub const MAX_LINE: usize = 512;
/// The longest name.
pub const MAX_NAME: usize = 20;
/// What a client gets first.
pub const WELCOME: &str = "* welcome! your name? (1..20 letters, digits, '_' or '-')\r\n";

/// Who is in the room: each member's connection id and name.
///
/// A message said on one worker must reach members served by every worker,
/// whose own states only their worker can reach, so the room is shared
/// between the workers and needs a lock. It is a read-write lock because
/// nearly every use reads (each message, `/who`), and readers on different
/// workers do not wait for each other; only a join or a leave writes. It is
/// held for microseconds: [`mario::send_to`] only queues the bytes (for a
/// member of another worker, a command to that worker), never waits for a
/// socket, and never runs a close handler inside (a member whose output
/// passes its cap is reset after the current handler returns), so no
/// handler ever waits for the lock while this thread holds it.
#[derive(Default)]
pub struct Room {
    members: RwLock<HashMap<ConnId, String>>,
}

impl Room {
    /// Sends `msg` to every member but `except`.
    fn broadcast(&self, except: Option<ConnId>, msg: &[u8]) {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        for &id in members.keys() {
            if Some(id) != except {
                mario::send_to(id, msg);
            }
        }
    }

    /// Adds `id` as `name`; false if the name is taken.
    fn join(&self, id: ConnId, name: &str) -> bool {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        if members.values().any(|n| n == name) {
            return false;
        }
        members.insert(id, name.to_string());
        true
    }

    /// Removes `id`.
    fn leave(&self, id: ConnId) {
        self.members
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// The names in the room, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }
}

/// One connection's state: its name, once it has chosen one (it is then in
/// the room).
#[derive(Debug, Default)]
pub struct Member {
    /// The name, `None` until the first valid, free one.
    pub name: Option<String>,
}

/// 1..=20 letters, digits, `_` or `-`.
fn valid_name(s: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// `* here: a b c` lines of at most [`MAX_LINE`] bytes, each with `"\r\n"`.
fn who(room: &Room) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = String::from("* here:");
    for name in room.names() {
        if line.len() + 1 + name.len() > MAX_LINE {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            line = String::from("* here:");
        }
        line.push(' ');
        line.push_str(&name);
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// One line (without its delimiter) from the connection `conn`.
fn on_line(room: &Room, conn: &mut Conn, me: &mut Member, line: &[u8]) -> HandlerResult {
    if line == b"/quit" {
        conn.send(b"* bye\r\n");
        // Graceful: "bye" is delivered, then FIN; `on_close` says who left.
        conn.close(AKG_CLOSED);
        return Ok(Verdict::Continue);
    }
    let Some(name) = &me.name else {
        // The first line is the name.
        if !valid_name(line) {
            conn.send(b"* a name is 1..20 letters, digits, '_' or '-'\r\n");
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            if room.join(conn.id(), &name) {
                conn.send(format!("* hello, {name} (/who, /quit)\r\n").as_bytes());
                room.broadcast(Some(conn.id()), format!("* {name} joined\r\n").as_bytes());
                me.name = Some(name);
            } else {
                conn.send(b"* that name is taken\r\n");
            }
        }
        return Ok(Verdict::Continue);
    };
    match line {
        b"" => {}
        b"/who" => {
            conn.send(&who(room));
        }
        text => {
            // "name: text\r\n", control characters shown as '?'.
            let mut msg = Vec::with_capacity(name.len() + 2 + text.len() + 2);
            msg.extend_from_slice(name.as_bytes());
            msg.extend_from_slice(b": ");
            msg.extend(text.iter().map(|&c| {
                if (c < 0x20 && c != b'\t') || c == 0x7f {
                    b'?'
                } else {
                    c
                }
            }));
            msg.extend_from_slice(b"\r\n");
            room.broadcast(Some(conn.id()), &msg);
        }
    }
    Ok(Verdict::Continue)
}

/// The chat server over `room`, without its address.
pub fn builder(room: Arc<Room>) -> ServerBuilder<Member> {
    let on_frame = room.clone();
    Server::builder()
        // Idle members stay: no read timeout (as c-examples/chat.c).
        .read_timeout(0)
        .write_timeout(0)
        .framing(Framing::Line {
            delimiter: b"\n".to_vec(), // a "\r" before it is dropped too
            max_frame: MAX_LINE as u32,
        })
        .default_state::<Member>()
        .on_connect(|conn, _| {
            conn.send(WELCOME.as_bytes());
            Ok(())
        })
        .on_frame(move |conn, me, line| on_line(&on_frame, conn, me, line))
        .on_close(move |conn, me, _reason| {
            if let Some(name) = &me.name {
                room.leave(conn.id());
                room.broadcast(None, format!("* {name} left\r\n").as_bytes());
            }
        })
}

fn usage(why: &str) -> ! {
    eprintln!("usage: chat [PORT (0..65535) [WORKERS (1..256)]]  ({why})");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        None => 5555,
        Some(a) => a.parse().unwrap_or_else(|_| usage(&format!("bad port {a:?}"))),
    };
    let workers: u16 = match args.next() {
        None => 2,
        Some(a) => match a.parse() {
            Ok(n @ 1..=256) => n,
            _ => usage(&format!("bad number of workers {a:?}")),
        },
    };
    // The library's warnings (an over-long line, a member reset at its
    // output cap) go to standard output, errors to standard error.
    mario::logq::install_logger();
    let server = match builder(Arc::new(Room::default()))
        .bind(format!("[::]:{port}"))
        .workers(workers)
        .build()
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("chat: {e}");
            std::process::exit(1);
        }
    };
    // Ctrl-C and SIGTERM: `ctrlc` runs this on a thread of its own (not in
    // the signal handler), where `stop` may wait for the workers.
    let stop = server.stop_handle();
    if let Err(e) = ctrlc::set_handler(move || {
        println!("chat: got a signal, stopping");
        stop.stop();
    }) {
        eprintln!("chat: cannot handle Ctrl-C: {e}");
        std::process::exit(1);
    }
    let s = server.clone();
    std::thread::spawn(move || {
        if s.wait_listening(Duration::from_secs(10)).is_some()
            && let Some(addr) = s.local_addr()
        {
            println!("chat: listening on {addr}");
        }
    });
    // Blocks until the stop; a port in use (say) is reported with the
    // address: "cannot listen on [::]:5555: Address already in use ...".
    if let Err(e) = server.run() {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
    println!("chat: stopped");
}
