//! The Rust API: [`Server`] built from closures with [`ServerBuilder`],
//! [`Packet`], [`StopHandle`], and the methods of [`Conn`] that act
//! (`send`, `send_packet`, `close`). One of the two front ends over the
//! reactor's [`Service`] contract (the other is the C ABI, `ffi`).
//!
//! Handlers run on the connection's worker thread. A handler that panics
//! (when the application is built with `panic = "unwind"`) does not take
//! its worker down: the panic is caught, logged with the packet id, and that
//! connection is closed as [`AKG_ERROR`](crate::AKG_ERROR); the worker goes
//! on serving the others.
//!
//! Uses: server, worker, service, conn, proto, stats, metrics, records (the
//! `WORKER` a stall is reported with, unused here).

mod conn;
mod stats;

pub use conn::PoolConn;

use std::io;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::proto::{Framing, Head, SIZE_OF_HEAD};
use crate::records::CWorker;
use crate::server::ServerShared;
use crate::service::{Config, PoolCall, Service, Verdict};

type PacketFn = dyn Fn(&mut Conn, Packet<'_>) -> Verdict + Send + Sync;
type ConnFn = dyn Fn(&mut Conn) + Send + Sync;
type CloseFn = dyn Fn(&mut Conn, u16) + Send + Sync;
type FrameFn = dyn Fn(&mut Conn, &[u8]) -> Verdict + Send + Sync;
type BlockingFn = dyn Fn(&PoolConn, Packet<'_>) -> Verdict + Send + Sync;
type StallFn = dyn Fn(usize, u16, u32) + Send + Sync;
/// 256 handler slots of one id page.
type Page = Box<[Option<Arc<PacketFn>>]>;

/// A packet as handed to a Rust handler.
pub struct Packet<'a> {
    head: Head,
    bytes: &'a mut [u8],
}

impl Packet<'_> {
    /// The decoded head.
    pub fn head(&self) -> Head {
        self.head
    }
    /// The packet id.
    pub fn id(&self) -> u16 {
        self.head.akg_id
    }
    /// The body (after the 8-byte head).
    pub fn body(&self) -> &[u8] {
        &self.bytes[SIZE_OF_HEAD..]
    }
    /// The whole frame, head included.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Handlers in a two-level table indexed by packet id (256 pages of 256),
/// so lookups are two loads and unused ranges cost nothing.
struct Handlers {
    pages: Vec<Option<Page>>,
    connected: Option<Arc<ConnFn>>,
    closed: Option<Arc<CloseFn>>,
    frame: Option<Arc<FrameFn>>,
    /// Blocking handlers by packet id (run on the pool).
    blocking: std::collections::HashMap<u16, Arc<BlockingFn>>,
    stall: Option<Arc<StallFn>>,
}

/// Turns the worker's pointer into the `&mut Conn` a closure gets.
///
/// # Safety
///
/// `c` is the live record the worker passes to a [`Service`] callback, of
/// which no other reference is in use: the worker holds none while a
/// callback runs, and it defers operations by id on this connection until
/// the callback returns (`holds_conn`).
unsafe fn conn_mut<'a>(c: *mut Conn) -> &'a mut Conn {
    // SAFETY: the caller's contract.
    unsafe { &mut *c }
}

impl Service for Handlers {
    fn holds_conn(&self) -> bool {
        true
    }
    fn connected(&self, c: *mut Conn) {
        if let Some(f) = &self.connected {
            // SAFETY: a `Service` callback's record (see `conn_mut`).
            f(unsafe { conn_mut(c) })
        }
    }
    fn packet(&self, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict {
        let id = head.akg_id as usize;
        match self.pages[id >> 8].as_ref().and_then(|p| p[id & 0xff].as_ref()) {
            // SAFETY: a `Service` callback's record (see `conn_mut`).
            Some(f) => f(unsafe { conn_mut(c) }, Packet { head, bytes: pkt }),
            None => Verdict::NoHandler,
        }
    }
    fn frame(&self, c: *mut Conn, frame: &mut [u8]) -> Verdict {
        match &self.frame {
            // SAFETY: a `Service` callback's record (see `conn_mut`).
            Some(f) => f(unsafe { conn_mut(c) }, frame),
            None => Verdict::NoHandler,
        }
    }
    fn closed(&self, c: *mut Conn, reason: u16) {
        if let Some(f) = &self.closed {
            // SAFETY: a `Service` callback's record (see `conn_mut`).
            f(unsafe { conn_mut(c) }, reason)
        }
    }
    fn pooled(&self, akg_id: u16) -> bool {
        !self.blocking.is_empty() && self.blocking.contains_key(&akg_id)
    }
    fn pool_packet(&self, call: PoolCall<'_>) -> Verdict {
        let Some(f) = self.blocking.get(&call.head.akg_id) else {
            return Verdict::NoHandler;
        };
        // SAFETY: the record is the pool thread's during the call (see
        // `pool`); `bufev`, `cip`, `cport` and `owner` are read through the
        // raw pointer, no reference to the record is made.
        let conn = unsafe { PoolConn::of(call.conn, call.stx, call.big_endian) };
        f(
            &conn,
            Packet {
                head: call.head,
                bytes: call.pkt,
            },
        )
    }
    fn stalled(&self, index: usize, _worker: *mut CWorker, akg_id: u16, ms: u32) {
        if let Some(f) = &self.stall {
            f(index, akg_id, ms)
        }
    }
}

/// Builds a [`Server`] from settings and handler closures.
///
/// ```no_run
/// use mario::{Server, Verdict};
/// let server = Server::builder()
///     .port(8082)
///     .workers(2)
///     .stx(0x8eb6_9af7)
///     .on_packet(0x6101, |conn, pkt| {
///         conn.send_packet(pkt.id(), &[]);
///         Verdict::Continue
///     })
///     .build()
///     .unwrap();
/// server.run().unwrap();
/// ```
pub struct ServerBuilder {
    cfg: Config,
    handlers: Handlers,
}

impl ServerBuilder {
    /// Port to listen on (0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.cfg.port = port;
        self
    }
    /// The address to listen on: an IPv4 or IPv6 address, or `None` for
    /// every address through one dual-stack IPv6 socket (see
    /// [`Config::bind`]). Default: `0.0.0.0`.
    pub fn bind(mut self, addr: Option<IpAddr>) -> Self {
        self.cfg.bind = addr;
        self
    }
    /// The `listen(2)` backlog, 1..=65,535 (default 4,096).
    pub fn backlog(mut self, n: i32) -> Self {
        self.cfg.backlog = n;
        self
    }
    /// `SO_REUSEPORT` on the listening socket (see [`Config::reuseport`]).
    pub fn reuseport(mut self, on: bool) -> Self {
        self.cfg.reuseport = on;
        self
    }
    /// Expects a PROXY protocol header of the versions in `mode`
    /// ([`PROXY_V1`](crate::proto::PROXY_V1),
    /// [`PROXY_V2`](crate::proto::PROXY_V2) or both; 0: off) at the start
    /// of every connection (see [`Config::proxy_protocol`]).
    pub fn proxy_protocol(mut self, mode: u32) -> Self {
        self.cfg.proxy_protocol = mode;
        self
    }
    /// Trusts PROXY protocol headers from `net` only (and the other
    /// networks so added): connections from elsewhere are refused (see
    /// [`Config::proxy_sources`]).
    pub fn proxy_source(mut self, net: IpNet) -> Self {
        self.cfg.proxy_sources.push(net);
        self
    }
    /// Number of worker threads.
    pub fn workers(mut self, n: u16) -> Self {
        self.cfg.workers = n;
        self
    }
    /// Most connections per worker.
    pub fn conns_per_worker(mut self, n: u32) -> Self {
        self.cfg.conns_per_worker = n;
        self
    }
    /// Read timeout in seconds (0 disables).
    pub fn read_timeout(mut self, secs: u32) -> Self {
        self.cfg.read_timeout = secs;
        self
    }
    /// Write timeout in seconds (0 disables).
    pub fn write_timeout(mut self, secs: u32) -> Self {
        self.cfg.write_timeout = secs;
        self
    }
    /// The magic packets must carry.
    pub fn stx(mut self, stx: u32) -> Self {
        self.cfg.stx = stx;
        self
    }
    /// Per-connection cap on pending output, in bytes.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.cfg.output_limit = bytes;
        self
    }
    /// Handler for packet id `id` (ids `0xfffc..` are reserved and
    /// ignored). Return [`Verdict::Continue`] to go on.
    pub fn on_packet(
        mut self,
        id: u16,
        f: impl Fn(&mut Conn, Packet<'_>) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        let page =
            self.handlers.pages[(id >> 8) as usize].get_or_insert_with(|| (0..256).map(|_| None).collect());
        page[(id & 0xff) as usize] = Some(Arc::new(f));
        self
    }
    /// How input is cut into frames (see [`Framing`]); the classic `HEAD`
    /// by default. With any other framing, every frame goes to the
    /// [`on_frame`](ServerBuilder::on_frame) handler.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.cfg.framing = framing;
        self
    }
    /// The handler of every frame of a framing other than `HEAD` (the
    /// whole frame: a length-field frame with its header, a line without
    /// its delimiter, a fixed-size frame, or what one read returned). It
    /// runs on the connection's worker; return [`Verdict::Continue`] to go
    /// on. Without one, such a frame closes the connection (a warning is
    /// logged).
    pub fn on_frame(mut self, f: impl Fn(&mut Conn, &[u8]) -> Verdict + Send + Sync + 'static) -> Self {
        self.handlers.frame = Some(Arc::new(f));
        self
    }
    /// Handler for packet id `id` that may block (database calls, file
    /// I/O, slow computation): it runs on a thread of the server's handler
    /// pool (see [`ServerBuilder::pool_threads`]), not on the worker, which
    /// goes on serving its other connections meanwhile. It gets a
    /// [`PoolConn`] (the connection's id and address, and `send`/`close`
    /// by id) and the packet.
    ///
    /// Per-connection order is kept: the connection's later packets (of
    /// any handler) wait until this one returns, and the worker reads
    /// nothing more from it meanwhile (what it already read, at most one
    /// 64 KiB read, waits), so a slow handler holds back its own client
    /// through TCP rather than making the server buffer. A close asked for
    /// meanwhile (by the peer, by id, by a stop) runs the close handler on
    /// the worker after this handler returns, once. Return
    /// [`Verdict::Continue`] to go on; [`Verdict::Stop`] (or a panic)
    /// closes the connection as [`AKG_ERROR`](crate::AKG_ERROR). An id with
    /// both kinds of handler runs this one.
    pub fn on_packet_blocking(
        mut self,
        id: u16,
        f: impl Fn(&PoolConn, Packet<'_>) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        self.handlers.blocking.insert(id, Arc::new(f));
        self
    }
    /// Threads of the handler pool that runs [`on_packet_blocking`]
    /// handlers, 1..=[`MAX_POOL_THREADS`](crate::MAX_POOL_THREADS); 0 (the
    /// default): as many as workers. They start with the first blocking
    /// packet.
    ///
    /// [`on_packet_blocking`]: ServerBuilder::on_packet_blocking
    pub fn pool_threads(mut self, n: u32) -> Self {
        self.cfg.pool_threads = n;
        self
    }
    /// Milliseconds a worker may spend in one turn of its loop (in practice:
    /// in one handler) before it counts as stalled (default
    /// [`DEFAULT_STALL_THRESHOLD`](crate::DEFAULT_STALL_THRESHOLD), 1,000;
    /// 0 turns the monitor off). A stalled worker gets no new connections
    /// (they go to the others, or wait in the listen backlog when every
    /// worker is stalled) until its handler returns; a warning is logged
    /// and [`on_stall`](ServerBuilder::on_stall) runs. The monitor looks
    /// every quarter of the threshold (between 5 and 250 ms), on the thread
    /// in [`Server::run`].
    pub fn stall_threshold(mut self, ms: u32) -> Self {
        self.cfg.stall_threshold_ms = ms;
        self
    }
    /// Called once per stall with the worker's index, the id of the packet
    /// whose handler is running (the connected callback's
    /// [`AKG_CONNECTED`](crate::AKG_CONNECTED), a close handler's reason,
    /// 0 for a frame) and for how long it has run, in milliseconds. Runs on
    /// the monitor thread (the one in [`Server::run`]), never on a worker;
    /// keep it short.
    pub fn on_stall(mut self, f: impl Fn(usize, u16, u32) + Send + Sync + 'static) -> Self {
        self.handlers.stall = Some(Arc::new(f));
        self
    }
    /// Called on each new connection, on its worker, before any packet.
    pub fn on_connect(mut self, f: impl Fn(&mut Conn) + Send + Sync + 'static) -> Self {
        self.handlers.connected = Some(Arc::new(f));
        self
    }
    /// Called once per connection when it closes, with the reason
    /// ([`crate::AKG_TIMEOUT`], [`crate::AKG_CLOSED`], [`crate::AKG_ERROR`] or
    /// the id given to [`Conn::close`]).
    pub fn on_close(mut self, f: impl Fn(&mut Conn, u16) + Send + Sync + 'static) -> Self {
        self.handlers.closed = Some(Arc::new(f));
        self
    }
    /// Creates the server (nothing listens until [`Server::run`]).
    pub fn build(self) -> io::Result<Server> {
        Ok(Server {
            inner: ServerShared::new(self.cfg, Arc::new(self.handlers))?,
        })
    }
}

/// A server built from Rust. Run it with [`Server::run`] on a thread of
/// your choice; stop it from anywhere with a [`StopHandle`].
pub struct Server {
    inner: Arc<ServerShared>,
}

impl Server {
    /// A builder with the defaults of [`Config`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            cfg: Config::default(),
            handlers: Handlers {
                pages: (0..256).map(|_| None).collect(),
                connected: None,
                closed: None,
                frame: None,
                blocking: std::collections::HashMap::new(),
                stall: None,
            },
        }
    }

    /// Binds and serves until stopped. Returns once every connection is
    /// closed and every worker has exited.
    pub fn run(&self) -> io::Result<()> {
        self.inner.run()
    }

    /// The port: the one configured, or the one bound once running.
    pub fn port(&self) -> u16 {
        self.inner.config().port
    }

    /// The address the server listens on, once it does (`None` before).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits up to `timeout` for the server to be listening and returns
    /// its port.
    pub fn wait_listening(&self, timeout: Duration) -> Option<u16> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.inner.listening() {
                return Some(self.port());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// A handle that stops the server from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            inner: self.inner.clone(),
        }
    }

    /// Connections currently open, per worker.
    pub fn connections(&self) -> Vec<u32> {
        self.inner.connections()
    }

    /// Whether worker `index` is stalled now (see
    /// [`ServerBuilder::stall_threshold`]); false for an index out of range.
    pub fn worker_stalled(&self, index: usize) -> bool {
        self.inner.worker_stalled(index)
    }
}

/// Stops a server from any thread (see [`StopHandle::stop`]).
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<ServerShared>,
}

impl StopHandle {
    /// Stops accepting, closes every connection (each close callback runs
    /// once) and, unless called from one of the server's own threads (a
    /// handler on a worker or on a pool thread, `on_stall`), waits until
    /// the workers have exited: 5 s at most, after which a worker or pool
    /// thread still in a handler is left running, detached (and logged).
    pub fn stop(&self) {
        self.inner.stop()
    }
}
