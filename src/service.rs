//! The reactor's contract with the application: the settings a server runs
//! with ([`Config`]), what the worker does after a packet ([`Verdict`]),
//! and the callbacks it runs ([`Service`]). Both front ends implement
//! `Service`: the Rust API with closures, the C ABI through `AKG_FUNC`.
//!
//! Uses: conn (the record), proto (the head and `DEFAULT_STX`).

use crate::conn::Conn;
use crate::proto::{DEFAULT_STX, Head};

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port on `0.0.0.0`; 0 picks a free port (see
    /// [`Server::port`](crate::Server::port)).
    pub port: u16,
    /// Worker threads (at least 1).
    pub workers: u16,
    /// Most connections one worker holds (a cap, not a preallocation).
    pub conns_per_worker: u32,
    /// Seconds without a byte read before a connection times out; 0: never.
    pub read_timeout: u32,
    /// Seconds pending output may go without progress; 0: never.
    pub write_timeout: u32,
    /// The magic every packet head must carry.
    pub stx: u32,
    /// Most bytes of output one connection may have pending; past it the
    /// connection is closed as an error.
    pub output_limit: usize,
    /// `listen(2)` backlog.
    pub backlog: i32,
}

/// Default per-connection output cap: 4 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 4 << 20;

impl Default for Config {
    fn default() -> Config {
        Config {
            port: 0,
            workers: 2,
            conns_per_worker: 1024,
            read_timeout: 300,
            write_timeout: 300,
            stx: DEFAULT_STX,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            backlog: 4096,
        }
    }
}

/// What the server does after a packet callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next packet.
    Continue,
    /// Stop serving this connection: it is closed as an error (unless the
    /// callback closed it already).
    Stop,
    /// No handler for this id: a warning is logged and the connection is
    /// closed as `closed`.
    NoHandler,
}

/// The callbacks a server runs, all on the connection's worker thread.
///
/// They get the connection as a raw pointer to a live record: the worker
/// holds no Rust reference to it while a callback runs, so a callback (C
/// code in particular) may reach the same connection again through the
/// library, and may close it.
pub(crate) trait Service: Send + Sync + 'static {
    /// Whether the callbacks turn the pointer into a `&mut Conn`. The worker
    /// then marks the connection as held while one runs, and defers
    /// operations on it by id (`send_to`, `close_id`) until it returns, so
    /// no second reference is ever made. C callbacks hold no reference:
    /// their calls by id take effect at once, in order.
    fn holds_conn(&self) -> bool;
    /// A new connection, before any packet.
    fn connected(&self, c: *mut Conn);
    /// One complete, well-formed packet: `pkt` is the whole frame (head
    /// included), also reachable as the C `in_buf`.
    fn packet(&self, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict;
    /// The connection is closing for `reason`; runs exactly once.
    fn closed(&self, c: *mut Conn, reason: u16);
}
