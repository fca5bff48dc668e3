//! The reactor's contract with the application: the settings a server runs
//! with ([`Config`]), what the worker does after a packet ([`Verdict`]),
//! and the callbacks it runs ([`Service`]). Both front ends implement
//! `Service`: the Rust API with closures, the C ABI through `AKG_FUNC`.
//!
//! Uses: conn (the record and the id's limits), proto (the head and
//! `DEFAULT_STX`), records (the `WORKER` of the stall callback).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::conn::Conn;
use crate::conn::id::{MAX_SLOTS, MAX_WORKERS};
use crate::proto::{DEFAULT_STX, Framing, Head, PROXY_ANY};
#[cfg(doc)]
use crate::proto::{PROXY_V1, PROXY_V2};
use crate::records::CWorker;

/// Server settings, each with its default ([`Config::default`]).
/// [`ServerBuilder`](crate::ServerBuilder) sets them one by one, and C's
/// `init_server` and `mario_set_*` functions do too; [`Config::validate`]
/// gives each one's range, and a server is not built with a value out of
/// range. A plain value: any thread.
///
/// ```
/// use std::io::ErrorKind;
/// use mario::{Config, DEFAULT_STX};
///
/// let mut cfg = Config::default();
/// assert_eq!((cfg.workers, cfg.conns_per_worker, cfg.read_timeout), (2, 1024, 300));
/// assert_eq!(cfg.stx, DEFAULT_STX);
/// assert!(cfg.validate().is_ok());
///
/// cfg.workers = 0;
/// let err = cfg.validate().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert_eq!(err.to_string(), "workers is 0, must be 1..=256");
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port; 0 (the default) picks a free port (see
    /// [`Server::port`](crate::Server::port)).
    pub port: u16,
    /// The address to listen on: an IPv4 or IPv6 address, or `None` for
    /// every address through one dual-stack IPv6 socket (`[::]`, IPv4
    /// clients then come as IPv4), or `0.0.0.0` where the system has no
    /// IPv6. Default: `0.0.0.0`, as MarioTCP's `init_server`. Ignored when
    /// systemd passed the listening socket (socket activation).
    pub bind: Option<IpAddr>,
    /// `SO_REUSEPORT` on the listening socket: other servers, of this or
    /// other processes of the same user, may listen on the same address
    /// and port, and the kernel spreads new connections across them.
    /// Default: off. See docs/DEPLOY.md for the trade-off.
    pub reuseport: bool,
    /// The PROXY protocol versions accepted before a connection's first
    /// byte of data: 0 (off, the default), [`PROXY_V1`], [`PROXY_V2`] or
    /// [`PROXY_ANY`]. When on, every connection must start with a header
    /// (an L4 load balancer's, e.g. HAProxy's `send-proxy-v2`), which
    /// gives [`Conn::peer`] the real client's address; the connect callback
    /// runs after it. See docs/C-API.md, "PROXY protocol".
    pub proxy_protocol: u32,
    /// The networks PROXY protocol headers are trusted from: when not
    /// empty, a connection from any other address is refused at once.
    /// Only with [`Config::proxy_protocol`] on.
    pub proxy_sources: Vec<IpNet>,
    /// Worker threads, 1..=256. Default 2.
    pub workers: u16,
    /// Most connections one worker holds, 1..=1,048,576 (a cap, not a
    /// preallocation). A closed connection still delivering its output
    /// counts until it is done. Default 1,024; a connection past every
    /// worker's cap is refused (reset).
    pub conns_per_worker: u32,
    /// Seconds without a byte read before a connection times out (closed
    /// gracefully as `AKG_TIMEOUT`); 0: never. Any value works: the
    /// arithmetic saturates. Default 300. Checked once a second.
    pub read_timeout: u32,
    /// Seconds output the library holds (what the socket did not take) may
    /// go without progress before the connection is reset as
    /// `AKG_TIMEOUT`; 0: never. A closed connection still delivering its
    /// output (including what the kernel holds, until the peer
    /// acknowledges it) is reset after this long without progress, or 300 s
    /// when it is 0. Default 300.
    pub write_timeout: u32,
    /// The magic every packet head must carry ([`Head::stx`]); only the
    /// `HEAD` framings look at it. Default [`DEFAULT_STX`].
    pub stx: u32,
    /// Most bytes of output one connection may have pending,
    /// 1..=4,294,967,295; past it the connection is reset as `AKG_ERROR`.
    /// Default [`DEFAULT_OUTPUT_LIMIT`] (4 MiB).
    pub output_limit: usize,
    /// `listen(2)` backlog: connections the kernel completes and holds
    /// until a worker accepts them, 1..=65,535 (the kernel caps it at
    /// `net.core.somaxconn`). Default 4,096.
    pub backlog: i32,
    /// How input is cut into frames; the classic `HEAD` by default
    /// ([`Framing`] has the kinds and an example).
    pub framing: Framing,
    /// Milliseconds one turn of a worker's loop (in practice: one handler)
    /// may run before the worker counts as stalled and new connections go
    /// to the others; 0: never ([`DEFAULT_STALL_THRESHOLD`] by default).
    pub stall_threshold_ms: u32,
    /// Threads of the pool that runs blocking handlers, 1..=1024; 0: as
    /// many as workers (the default). The pool starts only if a blocking
    /// handler is registered. Past [`MAX_POOL_THREADS`] is refused.
    pub pool_threads: u32,
}

/// Default stall threshold ([`Config::stall_threshold_ms`]), in
/// milliseconds: 1,000.
/// Example: [`Config`].
pub const DEFAULT_STALL_THRESHOLD: u32 = 1000;

/// Most threads a handler pool may have ([`Config::pool_threads`]): 1,024.
/// Example: [`Config`].
pub const MAX_POOL_THREADS: u32 = 1024;

/// Default per-connection output cap ([`Config::output_limit`]), in
/// bytes: 4 MiB.
/// Example: [`Config`].
pub const DEFAULT_OUTPUT_LIMIT: usize = 4 << 20;

impl Config {
    /// Checks every setting's range; the error (`InvalidInput`) names the
    /// first setting out of range, its value and its range. Example:
    /// [`Config`].
    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.workers == 0 || usize::from(self.workers) > MAX_WORKERS {
            return bad(format!("workers is {}, must be 1..={MAX_WORKERS}", self.workers));
        }
        if self.conns_per_worker == 0 || self.conns_per_worker > MAX_SLOTS {
            return bad(format!(
                "connections per worker is {}, must be 1..={MAX_SLOTS}",
                self.conns_per_worker
            ));
        }
        if let Err(e) = self.framing.validate() {
            return bad(format!("framing: {e}"));
        }
        if self.pool_threads > MAX_POOL_THREADS {
            return bad(format!(
                "pool threads is {}, must be 0 (as many as workers) ..={MAX_POOL_THREADS}",
                self.pool_threads
            ));
        }
        if !(1..=65_535).contains(&self.backlog) {
            return bad(format!("backlog is {}, must be 1..=65535", self.backlog));
        }
        if self.proxy_protocol & !PROXY_ANY != 0 {
            return bad(format!(
                "PROXY protocol mode is {}, must be 0 (off), 1 (v1), 2 (v2) or 3 (either)",
                self.proxy_protocol
            ));
        }
        if self.proxy_protocol == 0 && !self.proxy_sources.is_empty() {
            return bad(format!(
                "{} trusted PROXY protocol source(s) are set but the PROXY protocol is off",
                self.proxy_sources.len()
            ));
        }
        if self.output_limit == 0 || self.output_limit > u32::MAX as usize {
            return bad(format!(
                "output limit is {} bytes, must be 1..={}",
                self.output_limit,
                u32::MAX
            ));
        }
        Ok(())
    }
}

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
            bind: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            reuseport: false,
            proxy_protocol: 0,
            proxy_sources: Vec::new(),
            framing: Framing::default(),
            stall_threshold_ms: DEFAULT_STALL_THRESHOLD,
            pool_threads: 0,
        }
    }
}

/// What the server does after a packet handler returns, on the
/// connection's worker: go on, or close the connection. A handler returns
/// it (C handlers return 0 for `Continue`, non-zero for `Stop`); the
/// [crate-level example](crate) shows one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next packet.
    Continue,
    /// Stop serving this connection: it is closed as an error
    /// ([`AKG_ERROR`](crate::AKG_ERROR)) after the output already queued
    /// (unless the callback closed it already).
    Stop,
    /// No handler for this id: a warning is logged and the connection is
    /// closed as `closed` ([`AKG_CLOSED`](crate::AKG_CLOSED)). What the
    /// server does itself for an unregistered id.
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
    /// Whether the server announces its start on standard output with
    /// 0.9.9's `--------------start server ok--------------` line (C
    /// programs, whose tests and scripts wait for it; not a Rust program,
    /// whose standard output is its own).
    fn announces_start(&self) -> bool {
        true
    }
    /// A new connection, before any packet.
    fn connected(&self, c: *mut Conn);
    /// One complete, well-formed packet: `pkt` is the whole frame (head
    /// included), also reachable as the C `in_buf`.
    fn packet(&self, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict;
    /// One complete frame of a framing other than `HEAD` (`frame` is the
    /// whole frame, also reachable as the C `in_buf`).
    fn frame(&self, c: *mut Conn, frame: &mut [u8]) -> Verdict;
    /// The connection is closing for `reason`; runs exactly once.
    fn closed(&self, c: *mut Conn, reason: u16);
    /// Whether packets of `akg_id` run on the handler pool (see `pool`)
    /// rather than on the worker. Called for every `HEAD` packet: cheap.
    fn pooled(&self, akg_id: u16) -> bool;
    /// Runs the pool handler of one packet, on a pool thread.
    fn pool_packet(&self, call: PoolCall<'_>) -> Verdict;
    /// Worker `index` (C record `worker`) is stalled in the handler of
    /// packet `akg_id`, which has run for `ms` milliseconds. Runs on the
    /// monitor thread (the one in `start_server` / `Server::run`), once per
    /// stall.
    fn stalled(&self, index: usize, worker: *mut CWorker, akg_id: u16, ms: u32);
}

/// The message of a caught panic (`catch_unwind`'s payload), for the log.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// One packet for a pool handler ([`Service::pool_packet`]), on a pool
/// thread.
pub(crate) struct PoolCall<'a> {
    /// The connection's record, the pool thread's alone during the call
    /// (see `pool`); its `in_buf` is `pkt`.
    pub conn: *mut Conn,
    /// The packet's head.
    pub head: Head,
    /// The whole packet, head included.
    pub pkt: &'a mut [u8],
    /// The server's stx (for replies).
    pub stx: u32,
    /// Whether heads are in network byte order.
    pub big_endian: bool,
}
