//! The Rust API: [`Server`] built from closures with [`ServerBuilder`],
//! with a typed state per connection ([`ServerBuilder::state`]), handlers
//! that return [`HandlerResult`], [`Packet`], [`StopHandle`], and the
//! methods of [`Conn`] that act (`send`, `send_packet`, `close`). One of
//! the two front ends over the reactor's [`Service`] contract (the other is
//! the C ABI, `ffi`).
//!
//! Handlers run on the connection's worker thread. A handler that returns
//! an error, or panics (when the application is built with
//! `panic = "unwind"`), costs its connection, not its worker: the error or
//! panic is logged with the packet id and the peer, and that connection is
//! closed as [`AKG_ERROR`](crate::AKG_ERROR); the worker goes on serving
//! the others.
//!
//! Uses: server, worker, service, conn, proto, stats, metrics, records (the
//! `WORKER` a stall is reported with, unused here).

mod conn;
mod state;
mod stats;

pub use conn::PoolConn;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::proto::{AKG_CONNECTED, AKG_ERROR, Framing, Head, SIZE_OF_HEAD};
use crate::records::CWorker;
use crate::server::ServerShared;
use crate::service::{Config, PoolCall, Service, Verdict};

/// The error a handler returns: any error that can cross threads, boxed.
///
/// Every `std::error::Error + Send + Sync` converts into it with `?` or
/// `.into()`, and so do `&str` and `String` (`Err("bad length".into())`).
/// See [`HandlerResult`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns: `Ok` with what to do next (a [`Verdict`] for
/// packet and frame handlers, `()` for [`ServerBuilder::on_connect`]), or
/// an error.
///
/// An `Err` closes the connection as [`AKG_ERROR`](crate::AKG_ERROR)
/// (gracefully: what was queued is delivered) and logs one line at error
/// level through the `log` crate with the error (and its
/// [`source`](std::error::Error::source)s), the packet id (`{:#06x}`) and
/// the client's address, e.g. `the handler of packet 0x6101 failed for
/// 127.0.0.1:50312: invalid LOGIN: pkglen 9; closing the connection as
/// error`. The close handler then runs once, as for any close.
///
/// ```no_run
/// use mario::{HandlerResult, Server, Verdict};
///
/// let server = Server::builder()
///     .on_packet(0x0001, |conn, _, pkt| -> HandlerResult {
///         // Any std error converts with `?`: a bad body closes the
///         // connection as error and is logged.
///         let text = std::str::from_utf8(pkt.body())?;
///         let n: u32 = text.trim().parse()?;
///         conn.send_packet(0x0001, &(n + 1).to_be_bytes());
///         Ok(Verdict::Continue)
///     })
///     .build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub type HandlerResult<T = Verdict> = Result<T, BoxError>;

/// The library's version (Cargo.toml's, as C's `mario_version()` and
/// `MARIO_VERSION_STRING`), e.g. `"0.1.0"`.
///
/// ```
/// assert!(!mario::VERSION.is_empty());
/// ```
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

type InitFn<S> = dyn Fn(&mut Conn) -> S + Send + Sync;
type PacketFn<S> = dyn Fn(&mut Conn, &mut S, Packet<'_>) -> HandlerResult + Send + Sync;
type ConnFn<S> = dyn Fn(&mut Conn, &mut S) -> HandlerResult<()> + Send + Sync;
type CloseFn<S> = dyn Fn(&mut Conn, &mut S, u16) + Send + Sync;
type FrameFn<S> = dyn Fn(&mut Conn, &mut S, &[u8]) -> HandlerResult + Send + Sync;
type BlockingFn = dyn Fn(&PoolConn, Packet<'_>) -> HandlerResult + Send + Sync;
type StallFn = dyn Fn(usize, u16, u32) + Send + Sync;
/// 256 handler slots of one id page.
type Page<S> = Box<[Option<Arc<PacketFn<S>>>]>;

/// A packet as handed to a Rust handler: the whole frame (an 8-byte `HEAD`
/// and the body), borrowed from the worker's read buffer for the length of
/// the handler call (copy what must outlive it).
///
/// ```no_run
/// use mario::{HandlerResult, Server, Verdict};
/// let server = Server::builder()
///     .on_packet(0x0002, |conn, _, pkt| -> HandlerResult {
///         assert_eq!(pkt.bytes().len(), pkt.head().pkglen as usize);
///         conn.send_packet(pkt.id(), pkt.body()); // echo the body
///         Ok(Verdict::Continue)
///     })
///     .build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Packet<'a> {
    head: Head,
    bytes: &'a mut [u8],
}

impl Packet<'_> {
    /// The decoded head (fields in host order, whatever the framing's byte
    /// order on the wire).
    pub fn head(&self) -> Head {
        self.head
    }
    /// The packet id (`head().akg_id`).
    pub fn id(&self) -> u16 {
        self.head.akg_id
    }
    /// The body: the bytes after the 8-byte head (`pkglen - 8` of them).
    pub fn body(&self) -> &[u8] {
        &self.bytes[SIZE_OF_HEAD..]
    }
    /// The whole frame, head included, as it arrived.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Handlers in a two-level table indexed by packet id (256 pages of 256),
/// so lookups are two loads and unused ranges cost nothing.
struct Handlers<S> {
    /// Makes a connection's state (see [`ServerBuilder::state`]).
    init: Arc<InitFn<S>>,
    pages: Vec<Option<Page<S>>>,
    connected: Option<Arc<ConnFn<S>>>,
    closed: Option<Arc<CloseFn<S>>>,
    frame: Option<Arc<FrameFn<S>>>,
    /// Blocking handlers by packet id (run on the pool).
    blocking: HashMap<u16, Arc<BlockingFn>>,
    stall: Option<Arc<StallFn>>,
}

impl Handlers<()> {
    /// No handlers, the unit state.
    fn new() -> Handlers<()> {
        Handlers {
            init: Arc::new(|_| ()),
            pages: (0..256).map(|_| None).collect(),
            connected: None,
            closed: None,
            frame: None,
            blocking: HashMap::new(),
            stall: None,
        }
    }

    /// The same handlers over state `T` made by `init`: each ignores the
    /// state.
    fn with_state<T: 'static>(self, init: Arc<InitFn<T>>) -> Handlers<T> {
        let packet = |f: Arc<PacketFn<()>>| -> Arc<PacketFn<T>> { Arc::new(move |c, _, p| f(c, &mut (), p)) };
        Handlers {
            init,
            pages: self
                .pages
                .into_iter()
                .map(|page| page.map(|page| page.into_vec().into_iter().map(|f| f.map(packet)).collect()))
                .collect(),
            connected: self
                .connected
                .map(|f| -> Arc<ConnFn<T>> { Arc::new(move |c, _| f(c, &mut ())) }),
            closed: self
                .closed
                .map(|f| -> Arc<CloseFn<T>> { Arc::new(move |c, _, r| f(c, &mut (), r)) }),
            frame: self
                .frame
                .map(|f| -> Arc<FrameFn<T>> { Arc::new(move |c, _, b| f(c, &mut (), b)) }),
            blocking: self.blocking,
            stall: self.stall,
        }
    }
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

/// An error and its sources, `: `-separated.
struct Chain<'a>(&'a BoxError);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// The verdict of a handler's result: an error is logged (`what` names the
/// handler, `peer` the client; `open`: the connection was still open when
/// the handler returned, so the error closes it) and counts as
/// [`Verdict::Stop`].
fn verdict(r: HandlerResult, what: impl FnOnce() -> String, peer: SocketAddr, open: bool) -> Verdict {
    match r {
        Ok(v) => v,
        Err(e) => {
            let then = if open {
                "closing the connection as error"
            } else {
                "the connection was closing already (its reason stays)"
            };
            log::error!("{} failed for {peer}: {}; {then}", what(), Chain(&e));
            Verdict::Stop
        }
    }
}

/// A handler was about to run on a connection without a state (it cannot
/// happen: see `state`); the connection is closed as error instead.
fn stateless(conn: &Conn, what: &str) -> Verdict {
    log::error!(
        "{what}: connection from {} has no state; closing it as error",
        conn.peer()
    );
    Verdict::Stop
}

impl<S: Send + 'static> Service for Handlers<S> {
    fn holds_conn(&self) -> bool {
        true
    }
    fn announces_start(&self) -> bool {
        // A Rust program's standard output is its own.
        false
    }
    fn connected(&self, c: *mut Conn) {
        // SAFETY: a `Service` callback's record (see `conn_mut`).
        let conn = unsafe { conn_mut(c) };
        // A panic here leaves the connection without a state: the worker
        // closes it as error, and `closed` finds nothing to hand over.
        let s = (self.init)(conn);
        state::put(conn, s);
        // Closed by `init`: the close handler runs (with the state) once
        // this callback returns; `on_connect` does not.
        if !conn.is_open() {
            return;
        }
        let Some(f) = &self.connected else { return };
        if let Some(Err(e)) = state::with(conn, |conn, s| f(conn, s)) {
            let _ = verdict(
                Err(e),
                || format!("the connect handler ({AKG_CONNECTED:#06x})"),
                conn.peer(),
                conn.is_open(),
            );
            conn.close(AKG_ERROR);
        }
    }
    fn packet(&self, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict {
        let id = head.akg_id;
        let Some(f) = self.pages[usize::from(id >> 8)]
            .as_ref()
            .and_then(|p| p[usize::from(id & 0xff)].as_ref())
        else {
            return Verdict::NoHandler;
        };
        // SAFETY: a `Service` callback's record (see `conn_mut`).
        let conn = unsafe { conn_mut(c) };
        let what = || format!("the handler of packet {id:#06x}");
        match state::with(conn, |conn, s| f(conn, s, Packet { head, bytes: pkt })) {
            Some(r) => verdict(r, what, conn.peer(), conn.is_open()),
            None => stateless(conn, &what()),
        }
    }
    fn frame(&self, c: *mut Conn, frame: &mut [u8]) -> Verdict {
        let Some(f) = &self.frame else {
            return Verdict::NoHandler;
        };
        // SAFETY: a `Service` callback's record (see `conn_mut`).
        let conn = unsafe { conn_mut(c) };
        let len = frame.len();
        let what = || format!("the frame handler ({len} bytes)");
        match state::with(conn, |conn, s| f(conn, s, frame)) {
            Some(r) => verdict(r, what, conn.peer(), conn.is_open()),
            None => stateless(conn, &what()),
        }
    }
    fn closed(&self, c: *mut Conn, reason: u16) {
        // SAFETY: a `Service` callback's record (see `conn_mut`).
        let conn = unsafe { conn_mut(c) };
        // No state: `init` panicked, and no handler ever ran on it.
        let Some(mut s) = state::take::<S>(conn) else {
            return;
        };
        if let Some(f) = &self.closed {
            f(conn, &mut s, reason);
        }
        // The state is dropped here, right after `on_close` (or while a
        // panic of it unwinds).
        drop(s);
    }
    fn pooled(&self, akg_id: u16) -> bool {
        !self.blocking.is_empty() && self.blocking.contains_key(&akg_id)
    }
    fn pool_packet(&self, call: PoolCall<'_>) -> Verdict {
        let id = call.head.akg_id;
        let Some(f) = self.blocking.get(&id) else {
            return Verdict::NoHandler;
        };
        // SAFETY: the record is the pool thread's during the call (see
        // `pool`); `bufev`, `cip`, `cport` and `owner` are read through the
        // raw pointer, no reference to the record is made.
        let conn = unsafe { PoolConn::of(call.conn, call.stx, call.big_endian) };
        let r = f(
            &conn,
            Packet {
                head: call.head,
                bytes: call.pkt,
            },
        );
        verdict(
            r,
            || format!("the blocking handler of packet {id:#06x}"),
            conn.peer(),
            true,
        )
    }
    fn stalled(&self, index: usize, _worker: *mut CWorker, akg_id: u16, ms: u32) {
        if let Some(f) = &self.stall {
            f(index, akg_id, ms)
        }
    }
}

/// Builds a [`Server`] from settings and handler closures; `S` is the
/// state each connection carries (`()` until [`ServerBuilder::state`] or
/// [`ServerBuilder::default_state`] chooses another).
///
/// Settings are checked by [`ServerBuilder::build`] (each one's range is in
/// [`Config`]). Every handler runs on the worker thread that owns the
/// connection (except [`on_packet_blocking`](ServerBuilder::on_packet_blocking)'s
/// and [`on_stall`](ServerBuilder::on_stall)'s), and gets the connection
/// (`&mut Conn`) and its state (`&mut S`): no lock, no `unsafe`.
///
/// ```no_run
/// use mario::{HandlerResult, Server, Verdict};
///
/// // How many packets each connection has sent: the state is a counter.
/// let server = Server::bind("0.0.0.0:8082")
///     .workers(2)
///     .stx(0x8eb6_9af7)
///     .default_state::<u64>()
///     .on_packet(0x6101, |conn, count, pkt| -> HandlerResult {
///         *count += 1;
///         conn.send_packet(pkt.id(), &count.to_be_bytes());
///         Ok(Verdict::Continue)
///     })
///     .on_close(|conn, count, reason| {
///         log::info!("{} sent {count} packets, closed ({reason:#06x})", conn.peer())
///     })
///     .build()?;
/// server.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// `examples/login_server.rs` and `examples/chat.rs` are complete servers.
pub struct ServerBuilder<S = ()> {
    cfg: Config,
    handlers: Handlers<S>,
    /// What [`ServerBuilder::bind`] could not resolve, for `build`.
    bind_error: Option<io::Error>,
}

impl ServerBuilder<()> {
    /// Gives every connection a state of type `T`, made by `init` when the
    /// connection is accepted and handed, as `&mut T`, to every handler on
    /// it; dropped right after its close handler returns (or, without
    /// one, when it closes), exactly once. `init` runs on the connection's
    /// worker, before [`on_connect`](ServerBuilder::on_connect); it gets
    /// the new connection (its id, address, worker; it may send, or close
    /// it). The state lives in the connection's record, boxed: nothing is
    /// shared between connections, so it needs no lock (for data shared
    /// between connections, capture an `Arc` in the closures). `init`
    /// returns the state by value on the worker's stack (a thread of the
    /// default 2 MiB) before it is boxed: keep large buffers behind a `Box`
    /// or a `Vec` in the state (a state of a megabyte or more by value
    /// overflows that stack, which aborts the process).
    ///
    /// Handlers registered before this call are kept (they ignore the
    /// state), and so are the settings; `state` can be chosen once.
    ///
    /// If `init` panics, the connection is closed as
    /// [`AKG_ERROR`](crate::AKG_ERROR) (logged) and no handler, not even
    /// the close handler, runs on it. If `init` closes the connection,
    /// `on_connect` does not run, and the close handler does, with the
    /// state, once `init` has returned. A connection whose handler never
    /// returns keeps its state when the server stops (the stop leaves that
    /// worker or pool thread behind after 5 s, with its connections).
    ///
    /// ```no_run
    /// use std::time::Instant;
    /// use mario::{HandlerResult, Server, Verdict};
    ///
    /// struct Session {
    ///     since: Instant,
    ///     user: Option<u32>,
    /// }
    ///
    /// let server = Server::bind("[::]:8082")
    ///     .state(|_conn| Session { since: Instant::now(), user: None })
    ///     .on_packet(0x0101, |conn, s, pkt| -> HandlerResult {
    ///         let uid: [u8; 4] = pkt.body().try_into()?;
    ///         s.user = Some(u32::from_le_bytes(uid));
    ///         conn.send_packet(0x0102, &uid);
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .on_close(|conn, s, _reason| {
    ///         log::info!("{} ({:?}) left after {:?}", conn.peer(), s.user, s.since.elapsed())
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn state<T: Send + 'static>(
        self,
        init: impl Fn(&mut Conn) -> T + Send + Sync + 'static,
    ) -> ServerBuilder<T> {
        ServerBuilder {
            cfg: self.cfg,
            handlers: self.handlers.with_state(Arc::new(init)),
            bind_error: self.bind_error,
        }
    }

    /// Gives every connection a state of type `T` starting as
    /// `T::default()`: [`ServerBuilder::state`] with `|_| T::default()`.
    ///
    /// ```no_run
    /// use mario::{HandlerResult, Server, Verdict};
    /// let server = Server::builder()
    ///     .default_state::<Vec<u8>>()
    ///     .on_packet(0x0001, |_conn, seen, pkt| -> HandlerResult {
    ///         seen.extend_from_slice(pkt.body());
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn default_state<T: Default + Send + 'static>(self) -> ServerBuilder<T> {
        self.state(|_| T::default())
    }
}

impl<S: Send + 'static> ServerBuilder<S> {
    /// The TCP port to listen on, 0..=65,535; 0 (the default): any free
    /// port ([`Server::port`] and [`Server::local_addr`] tell which once it
    /// listens). Overrides the port given to [`ServerBuilder::bind`]
    /// before, and is overridden by one given after.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().port(8082).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.cfg.port = port;
        self
    }

    /// The address and port to listen on, as anything [`ToSocketAddrs`]
    /// takes: `"0.0.0.0:8082"`, `"[::1]:8082"`, `("127.0.0.2", 8082)`, a
    /// [`SocketAddr`], or a host name (`"localhost:8082"`, looked up now,
    /// through the system's resolver, which may block). The first address
    /// it resolves to is used, its IP and port (port 0: any free port).
    ///
    /// `[::]` listens on every address, IPv6 and IPv4, through one
    /// dual-stack socket (`IPV6_V6ONLY` off): IPv4 clients are served too
    /// and their [`Conn::peer`] is IPv4. `0.0.0.0` is IPv4 only.
    ///
    /// A string that is not an address, or a name that does not resolve,
    /// is kept: [`ServerBuilder::build`] then fails with an
    /// [`io::Error`] of kind [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// naming it. Default: `0.0.0.0`, port 0 (as C's `init_server`).
    /// Ignored when systemd passed the listening socket.
    ///
    /// ```no_run
    /// use mario::Server;
    /// // IPv6 and IPv4 clients on port 8082.
    /// let server = Server::builder().bind("[::]:8082").build()?;
    /// // A typo is reported by `build`.
    /// let e = Server::builder().bind("0.0.0.0:80802").build().err().unwrap();
    /// assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind<A: ToSocketAddrs + fmt::Debug>(mut self, addr: A) -> Self {
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bind address {addr:?}: {why}"),
            )
        };
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => {
                self.cfg.bind = Some(a.ip());
                self.cfg.port = a.port();
                self.bind_error = None;
            }
            Ok(None) => self.bind_error = Some(bad("resolves to no address".into())),
            Err(e) => self.bind_error = Some(bad(e.to_string())),
        }
        self
    }

    /// The IP address to listen on, without the port: an IPv4 or IPv6
    /// address, or `None` for every address through one dual-stack IPv6
    /// socket (`[::]`; `0.0.0.0` where the system has no IPv6). Default:
    /// `0.0.0.0` (see [`Config::bind`]). C's `mario_init_server_addr`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().bind_ip(None).port(8082).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind_ip(mut self, addr: Option<IpAddr>) -> Self {
        self.cfg.bind = addr;
        self.bind_error = None;
        self
    }

    /// The `listen(2)` backlog: connections the kernel completes and holds
    /// until a worker accepts them, 1..=65,535 (default 4,096; the kernel
    /// caps it at `net.core.somaxconn`). C's `mario_set_backlog`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().backlog(16_384).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backlog(mut self, n: i32) -> Self {
        self.cfg.backlog = n;
        self
    }

    /// `SO_REUSEPORT` on the listening socket: several servers (of this or
    /// other processes of the same user) may listen on the same address and
    /// port, and the kernel spreads new connections across them (see
    /// [`Config::reuseport`] and docs/DEPLOY.md). Default: off. C's
    /// `mario_set_reuseport`.
    ///
    /// ```no_run
    /// let server = mario::Server::bind("0.0.0.0:8082").reuseport(true).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reuseport(mut self, on: bool) -> Self {
        self.cfg.reuseport = on;
        self
    }

    /// Expects a PROXY protocol header of the versions in `mode`
    /// ([`PROXY_V1`](crate::proto::PROXY_V1),
    /// [`PROXY_V2`](crate::proto::PROXY_V2) or
    /// [`PROXY_ANY`](crate::proto::PROXY_ANY); 0, the default: off) at the
    /// start of every connection, as an L4 balancer (HAProxy's
    /// `send-proxy-v2`) sends it: [`Conn::peer`] is then the real client's
    /// address, and `init`/`on_connect` run once the header is read. A
    /// connection with a bad or missing header (3 s at most) is dropped
    /// unannounced: no handler runs on it. See [`Config::proxy_protocol`].
    /// C's `mario_set_proxy_protocol`.
    ///
    /// ```no_run
    /// use mario::proto::PROXY_V2;
    /// let server = mario::Server::builder()
    ///     .proxy_protocol(PROXY_V2)
    ///     .proxy_source("10.0.0.0/8".parse().unwrap())
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn proxy_protocol(mut self, mode: u32) -> Self {
        self.cfg.proxy_protocol = mode;
        self
    }

    /// Trusts PROXY protocol headers from `net` only (and the other
    /// networks so added): connections from elsewhere are refused at once
    /// (see [`Config::proxy_sources`]). Only with
    /// [`proxy_protocol`](ServerBuilder::proxy_protocol) on (else `build`
    /// fails). C's `mario_add_proxy_source`; example there.
    pub fn proxy_source(mut self, net: IpNet) -> Self {
        self.cfg.proxy_sources.push(net);
        self
    }

    /// Worker threads, 1..=256 (default 2). Each runs its own event loop
    /// and the handlers of its connections. C's `init_server` `workernum`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().workers(4).conns_per_worker(100_000).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn workers(mut self, n: u16) -> Self {
        self.cfg.workers = n;
        self
    }

    /// Most connections one worker holds, 1..=1,048,576 (default 1,024; a
    /// cap, not a preallocation). Past it, new connections are reset and
    /// "workers are too busy" is logged. C's `init_server` `connnum`.
    /// Example at [`ServerBuilder::workers`].
    pub fn conns_per_worker(mut self, n: u32) -> Self {
        self.cfg.conns_per_worker = n;
        self
    }

    /// Seconds without a byte read after which a connection is closed
    /// (gracefully, as [`AKG_TIMEOUT`](crate::AKG_TIMEOUT)); 0 disables;
    /// default 300. C's `init_server` `read_timeout`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().read_timeout(60).write_timeout(30).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read_timeout(mut self, secs: u32) -> Self {
        self.cfg.read_timeout = secs;
        self
    }

    /// Seconds pending output may go without progress before the
    /// connection is reset as [`AKG_TIMEOUT`](crate::AKG_TIMEOUT); 0
    /// disables; default 300 (see [`Config::write_timeout`]). C's
    /// `init_server` `write_timeout`. Example at
    /// [`ServerBuilder::read_timeout`].
    pub fn write_timeout(mut self, secs: u32) -> Self {
        self.cfg.write_timeout = secs;
        self
    }

    /// The magic every packet's `HEAD.stx` must carry, and replies of
    /// [`Conn::send_packet`] do (default
    /// [`DEFAULT_STX`](crate::DEFAULT_STX), `0xffffffff`). A packet with
    /// another closes its connection. C's `regist_stx`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().stx(0x8eb6_9af7).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stx(mut self, stx: u32) -> Self {
        self.cfg.stx = stx;
        self
    }

    /// Per-connection cap on pending output, in bytes, 1..=4,294,967,295
    /// (default [`DEFAULT_OUTPUT_LIMIT`](crate::DEFAULT_OUTPUT_LIMIT), 4
    /// MiB); past it the connection is reset as
    /// [`AKG_ERROR`](crate::AKG_ERROR). C's `mario_set_output_limit`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().output_limit(64 << 20).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.cfg.output_limit = bytes;
        self
    }

    /// The handler of packet id `id` (with the classic `HEAD` framing; ids
    /// `0xfffc..=0xffff` are reserved for events and never dispatched). It
    /// runs on the connection's worker thread with the connection, its
    /// state and the [`Packet`], once per packet, in order. Return
    /// `Ok(`[`Verdict::Continue`]`)` to go on, `Ok(`[`Verdict::Stop`]`)` to
    /// close the connection as [`AKG_ERROR`](crate::AKG_ERROR), or an error
    /// (the same, logged: see [`HandlerResult`]). A packet without a
    /// handler closes its connection (a warning is logged). A later call
    /// for the same id replaces the handler. C's `regist_akg_func`.
    ///
    /// ```no_run
    /// use mario::{HandlerResult, Server, Verdict};
    /// let server = Server::builder()
    ///     .on_packet(0x6101, |conn, _, pkt| -> HandlerResult {
    ///         if pkt.body().len() != 2 {
    ///             return Err(format!("LOGIN of {} bytes", pkt.bytes().len()).into());
    ///         }
    ///         conn.send_packet(pkt.id(), &[]);
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_packet(
        mut self,
        id: u16,
        f: impl Fn(&mut Conn, &mut S, Packet<'_>) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        let page =
            self.handlers.pages[usize::from(id >> 8)].get_or_insert_with(|| (0..256).map(|_| None).collect());
        page[usize::from(id & 0xff)] = Some(Arc::new(f));
        self
    }

    /// How input is cut into frames (see [`Framing`]: the classic `HEAD`
    /// by default, or a length field, lines, fixed-size frames, raw reads).
    /// With any framing but `HEAD`, every frame goes to the
    /// [`on_frame`](ServerBuilder::on_frame) handler. Bad settings make
    /// `build` fail, naming the field. C's `mario_set_framing`.
    ///
    /// ```no_run
    /// use mario::{Framing, HandlerResult, Server, Verdict};
    /// // Lines ended by "\n" (a "\r" before it dropped), at most 512 bytes.
    /// let server = Server::builder()
    ///     .framing(Framing::Line { delimiter: b"\n".to_vec(), max_frame: 512 })
    ///     .on_frame(|conn, _, line| -> HandlerResult {
    ///         conn.send(line);
    ///         conn.send(b"\r\n");
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn framing(mut self, framing: Framing) -> Self {
        self.cfg.framing = framing;
        self
    }

    /// The handler of every frame of a framing other than `HEAD`, with the
    /// connection, its state and the whole frame (a length-field frame
    /// with its header, a line without its delimiter, a fixed-size frame,
    /// or what one read returned), borrowed for the call. It runs on the
    /// connection's worker; results as for
    /// [`on_packet`](ServerBuilder::on_packet). Without one, such a frame
    /// closes the connection (a warning is logged). C's
    /// `regist_frame_func` (`mario_frame_len` is `frame.len()`). Example at
    /// [`ServerBuilder::framing`]; `examples/chat.rs` is a whole server.
    pub fn on_frame(
        mut self,
        f: impl Fn(&mut Conn, &mut S, &[u8]) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.handlers.frame = Some(Arc::new(f));
        self
    }

    /// Handler for packet id `id` that may block (database calls, file
    /// I/O, slow computation): it runs on a thread of the server's handler
    /// pool (see [`ServerBuilder::pool_threads`]), not on the worker, which
    /// goes on serving its other connections meanwhile. It gets a
    /// [`PoolConn`] (the connection's id and address, and `send`/`close`
    /// by id) and the packet, but **not the connection's state**, which
    /// belongs to the worker thread (copy what the pool handler needs into
    /// shared data, or send a packet back to the connection's handlers).
    ///
    /// Per-connection order is kept: the connection's later packets (of
    /// any handler) wait until this one returns, and the worker reads
    /// nothing more from it meanwhile (what it already read, at most one
    /// 64 KiB read, waits), so a slow handler holds back its own client
    /// through TCP rather than making the server buffer. A close asked for
    /// meanwhile (by the peer, by id, by a stop) runs the close handler on
    /// the worker after this handler returns, once. Return
    /// `Ok(`[`Verdict::Continue`]`)` to go on; `Ok(`[`Verdict::Stop`]`)`, an
    /// error (logged with the packet id and the peer) or a panic closes the
    /// connection as [`AKG_ERROR`](crate::AKG_ERROR). An id with both kinds
    /// of handler runs this one. C's `regist_pool_func`.
    ///
    /// ```no_run
    /// use mario::{HandlerResult, Server, Verdict};
    /// let server = Server::builder()
    ///     .on_packet_blocking(0x0300, |pconn, pkt| -> HandlerResult {
    ///         let body = std::fs::read("/etc/hostname")?; // blocks: fine here
    ///         pconn.send_packet(pkt.id(), &body);
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .pool_threads(8)
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_packet_blocking(
        mut self,
        id: u16,
        f: impl Fn(&PoolConn, Packet<'_>) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.handlers.blocking.insert(id, Arc::new(f));
        self
    }

    /// Threads of the handler pool that runs [`on_packet_blocking`]
    /// handlers, 1..=[`MAX_POOL_THREADS`](crate::MAX_POOL_THREADS); 0 (the
    /// default): as many as workers. They start with the first blocking
    /// packet. C's `mario_set_pool_threads`. Example at
    /// [`on_packet_blocking`].
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
    /// in [`Server::run`]. C's `mario_set_stall_threshold`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder()
    ///     .stall_threshold(200)
    ///     .on_stall(|worker, id, ms| log::warn!("worker {worker}: packet {id:#06x} for {ms} ms"))
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stall_threshold(mut self, ms: u32) -> Self {
        self.cfg.stall_threshold_ms = ms;
        self
    }

    /// Called once per stall with the worker's index (0-based), the id of
    /// the packet whose handler is running (the connect handler's
    /// [`AKG_CONNECTED`](crate::AKG_CONNECTED), a close handler's reason,
    /// 0 for a frame) and for how long it has run, in milliseconds. Runs on
    /// the monitor thread (the one in [`Server::run`]), never on a worker;
    /// keep it short. [`Server::worker_stalled`] tells when it is over. C's
    /// `regist_stall_func` (which gets the `WORKER *`). Example at
    /// [`ServerBuilder::stall_threshold`].
    pub fn on_stall(mut self, f: impl Fn(usize, u16, u32) + Send + Sync + 'static) -> Self {
        self.handlers.stall = Some(Arc::new(f));
        self
    }

    /// Called on each new connection, on its worker, with the connection
    /// and its state (just made by [`state`](ServerBuilder::state)'s
    /// `init`), before any packet. Behind the PROXY protocol, once the
    /// header is read. An error (logged, see [`HandlerResult`]) or a panic
    /// closes the connection as [`AKG_ERROR`](crate::AKG_ERROR); the close
    /// handler runs then, with the state. C's `regist_connected_func`.
    ///
    /// ```no_run
    /// use mario::{HandlerResult, Server};
    /// let server = Server::builder()
    ///     .on_connect(|conn, _| -> HandlerResult<()> {
    ///         if conn.peer().ip().is_loopback() {
    ///             return Err("no local clients".into());
    ///         }
    ///         conn.send(b"hello\r\n");
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_connect(
        mut self,
        f: impl Fn(&mut Conn, &mut S) -> HandlerResult<()> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.connected = Some(Arc::new(f));
        self
    }

    /// Called once per connection when it closes, on its worker, with the
    /// connection, its state and the reason
    /// ([`AKG_TIMEOUT`](crate::AKG_TIMEOUT), [`AKG_CLOSED`](crate::AKG_CLOSED)
    /// for the peer's end or a stop, [`AKG_ERROR`](crate::AKG_ERROR), or the
    /// id given to [`Conn::close`]). It may queue a last reply (unless the
    /// connection was reset). The state is dropped right after it returns.
    /// It cannot fail; a panic in it is logged. C's `regist_disconnected_func`
    /// (and `regist_timeout_func`, `regist_closed_func`,
    /// `regist_error_func`: match on the reason).
    ///
    /// ```no_run
    /// use mario::{AKG_TIMEOUT, Server};
    /// let server = Server::builder()
    ///     .on_close(|conn, _, reason| {
    ///         if reason == AKG_TIMEOUT {
    ///             log::info!("{} timed out", conn.peer());
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_close(mut self, f: impl Fn(&mut Conn, &mut S, u16) + Send + Sync + 'static) -> Self {
        self.handlers.closed = Some(Arc::new(f));
        self
    }

    /// Creates the server (nothing listens until [`Server::run`]).
    ///
    /// Errors ([`io::Error`]): kind [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// for a setting out of its range (the message names it, its value and
    /// its range) or an address [`ServerBuilder::bind`] could not resolve;
    /// others when the system refuses the worker's poll (descriptors) or
    /// the process has created too many servers.
    ///
    /// ```
    /// let e = mario::Server::builder().workers(0).build().err().unwrap();
    /// assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    /// assert!(e.to_string().contains("workers is 0"));
    /// ```
    pub fn build(self) -> io::Result<Server<S>> {
        if let Some(e) = self.bind_error {
            return Err(e);
        }
        Ok(Server {
            inner: ServerShared::new(self.cfg, Arc::new(self.handlers))?,
            _state: PhantomData,
        })
    }
}

/// A server built from Rust, whose connections carry a state `S` (see
/// [`ServerBuilder::state`]). Run it with [`Server::run`] on a thread of
/// your choice; stop it from anywhere with a [`StopHandle`]. `Server` is
/// `Send` and `Sync` (share it in an `Arc` to read
/// [`stats`](Server::stats) while it runs).
///
/// ```no_run
/// use mario::{HandlerResult, Server, Verdict};
/// let server = Server::bind("127.0.0.1:0")
///     .on_packet(0x0001, |conn, _, pkt| -> HandlerResult {
///         conn.send(pkt.bytes());
///         Ok(Verdict::Continue)
///     })
///     .build()?;
/// let stop = server.stop_handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     stop.stop();
/// });
/// server.run()?; // until the stop
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server<S = ()> {
    inner: Arc<ServerShared>,
    /// The state type: only the handlers hold states (on the workers).
    _state: PhantomData<fn() -> S>,
}

impl Server<()> {
    /// A builder with the defaults of [`Config`] and the unit state.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().port(8082).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> ServerBuilder<()> {
        ServerBuilder {
            cfg: Config::default(),
            handlers: Handlers::new(),
            bind_error: None,
        }
    }

    /// `Server::builder().bind(addr)`: a builder listening on `addr` (see
    /// [`ServerBuilder::bind`]).
    ///
    /// ```no_run
    /// let server = mario::Server::bind("[::]:8082").workers(4).build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind<A: ToSocketAddrs + fmt::Debug>(addr: A) -> ServerBuilder<()> {
        Server::builder().bind(addr)
    }
}

impl<S> Server<S> {
    /// Binds, starts the workers and serves, blocking the calling thread
    /// (which becomes the stall monitor) until a [`StopHandle`] stops the
    /// server. Returns once every connection is closed (each close handler
    /// has run) and every worker has exited. A server runs once.
    ///
    /// Errors: binding or listening failed: the [`io::Error`] has the
    /// system error's [`kind`](io::Error::kind) (e.g.
    /// [`AddrInUse`](io::ErrorKind::AddrInUse),
    /// [`PermissionDenied`](io::ErrorKind::PermissionDenied)) and carries a
    /// [`ListenError`](crate::ListenError) naming the address, whose
    /// message reads `cannot listen on 0.0.0.0:8082: Address already in
    /// use (os error 98)`; a thread could not be started; or the server has
    /// run already (kind [`Other`](io::ErrorKind::Other)).
    ///
    /// ```no_run
    /// let server = mario::Server::bind("0.0.0.0:8082").build()?;
    /// if let Err(e) = server.run() {
    ///     eprintln!("{e}"); // cannot listen on 0.0.0.0:8082: Address already in use (os error 98)
    ///     std::process::exit(1);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run(&self) -> io::Result<()> {
        self.inner.run()
    }

    /// The port: the one configured, or the one bound once running (port
    /// 0 asks for any free one).
    ///
    /// ```no_run
    /// use std::{sync::Arc, time::Duration};
    /// let server = Arc::new(mario::Server::bind("127.0.0.1:0").build()?);
    /// let s = server.clone();
    /// std::thread::spawn(move || s.run());
    /// server.wait_listening(Duration::from_secs(5)).expect("listening");
    /// println!("listening on port {}", server.port());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn port(&self) -> u16 {
        self.inner.config().port
    }

    /// The address the server listens on, once it does (`None` before).
    /// Example at [`Server::wait_listening`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits up to `timeout` for the server (run on another thread) to be
    /// listening and returns its port; `None` if it is not by then.
    ///
    /// ```no_run
    /// use std::{sync::Arc, time::Duration};
    /// let server = Arc::new(mario::Server::bind("[::]:0").build()?);
    /// let s = server.clone();
    /// let t = std::thread::spawn(move || s.run());
    /// if server.wait_listening(Duration::from_secs(5)).is_some() {
    ///     println!("listening on {}", server.local_addr().unwrap());
    /// }
    /// server.stop_handle().stop();
    /// t.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
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

    /// A handle that stops the server from any thread (see
    /// [`StopHandle`], which has an example with Ctrl-C, and the example of
    /// [`Server`]).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            inner: self.inner.clone(),
        }
    }

    /// Connections currently held, per worker (index = worker), closed
    /// ones still delivering their output included. Any thread.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().build()?;
    /// let total: u32 = server.connections().iter().sum();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connections(&self) -> Vec<u32> {
        self.inner.connections()
    }

    /// Whether worker `index` (0-based) is stalled now (see
    /// [`ServerBuilder::stall_threshold`]); false for an index out of
    /// range. Any thread. C's `mario_worker_stalled`.
    ///
    /// ```no_run
    /// let server = mario::Server::builder().workers(2).build()?;
    /// let stalled = (0..2).filter(|&w| server.worker_stalled(w)).count();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn worker_stalled(&self, index: usize) -> bool {
        self.inner.worker_stalled(index)
    }
}

/// Stops a server from any thread (see [`StopHandle::stop`]): cheap to
/// clone, `Send` and `Sync`, and usable after the server has stopped (it
/// then does nothing).
///
/// A process stops cleanly on Ctrl-C or SIGTERM by calling it from the
/// thread that the `ctrlc` crate (feature `termination`) or `signal-hook`
/// runs its handler on: a real signal handler may not take locks or wait,
/// but those crates run the closure on an ordinary thread, where `stop` may
/// wait for the workers. `examples/chat.rs` does this.
///
/// ```no_run
/// use mario::Server;
///
/// let server = Server::bind("[::]:8082").build()?;
/// let stop = server.stop_handle();
/// ctrlc::set_handler(move || {
///     eprintln!("stopping");
///     stop.stop(); // every close handler runs; then run() returns
/// })
/// .expect("a Ctrl-C / SIGTERM handler");
/// server.run()?;
/// eprintln!("stopped cleanly");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<ServerShared>,
}

impl StopHandle {
    /// Stops accepting, closes every connection (each close handler runs
    /// once, with [`AKG_CLOSED`](crate::AKG_CLOSED), and every state is
    /// dropped) and, unless called from one of the server's own threads (a
    /// handler on a worker or on a pool thread, `on_stall`), waits until
    /// the workers have exited: 5 s at most, after which a worker or pool
    /// thread still in a handler is left running, detached (and logged).
    /// Queued output gets up to 3 s to be delivered. A second call, or a
    /// call before [`Server::run`] (which then returns at once), is fine.
    /// C's `mario_stop_server`. Example at [`StopHandle`].
    pub fn stop(&self) {
        self.inner.stop()
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle").finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}
