//! The server: configuration, startup, worker threads, stop, and
//! the registry that lets any thread reach a connection by its [`ConnId`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use crate::accept::Listener;
use crate::conn::{Conn, ConnId, MAX_SERVERS, MAX_WORKERS};
use crate::layout::CRecords;
use crate::logq::{self, LogQueue};
use crate::proto::{DEFAULT_STX, Head};
use crate::sys;
use crate::worker::{self, Cmd, Ctx, Worker, WorkerShared};

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port on `0.0.0.0`; 0 picks a free port (see [`Server::port`]).
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
/// They get the connection as a raw pointer: the worker holds no Rust
/// reference to it while a callback runs, so a callback (C code in
/// particular) may reach the same connection again through the library.
pub(crate) trait Service: Send + Sync + 'static {
    /// A new connection, before any packet.
    fn connected(&self, ctx: &Ctx, c: *mut Conn);
    /// One complete, well-formed packet: `pkt` is the whole frame (head
    /// included), also reachable as the C `in_buf`.
    fn packet(&self, ctx: &Ctx, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict;
    /// The connection is closing for `reason`; runs exactly once.
    fn closed(&self, ctx: &Ctx, c: *mut Conn, reason: u16);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Idle,
    Running,
    Stopped,
}

/// A server as every thread sees it.
pub(crate) struct ServerShared {
    pub id: usize,
    cfg: Mutex<Config>,
    service: Arc<dyn Service>,
    pub workers: Vec<Arc<WorkerShared>>,
    polls: Mutex<Vec<Option<Poll>>>,
    pub records: CRecords,
    run: Mutex<RunState>,
    ran: Condvar,
    stop: AtomicBool,
    /// The thread in `run` (it sleeps until a stop) and how to wake it.
    runner: Mutex<Option<(Arc<Waker>, std::thread::ThreadId)>>,
}

/// Servers by id, for [`ConnId`] lookups from any thread.
static REGISTRY: RwLock<Vec<Weak<ServerShared>>> = RwLock::new(Vec::new());

/// Finds the worker that owns `id`, if its server still exists.
pub(crate) fn worker_of(id: ConnId) -> Option<Arc<WorkerShared>> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let s = reg.get(id.server())?.upgrade()?;
    s.workers.get(id.worker()).cloned()
}

/// Queues `data` for connection `id` from any thread. On the owning worker
/// it is appended directly; elsewhere it becomes a command for the owner.
/// Returns false if the connection is known to be gone or the owner's
/// command queue is over its byte cap.
pub fn send_to(id: ConnId, data: &[u8]) -> bool {
    if let Some(r) = worker::on_worker(id.server(), id.worker(), |ctx| {
        if ctx.is_busy(id.slot()) {
            // A callback holds this connection: queue behind it.
            ctx.defer(Cmd::Write(id, data.to_vec()));
            return true;
        }
        ctx.lookup(id).map(|p| ctx.append(p, data)).unwrap_or(false)
    }) {
        return r;
    }
    match worker_of(id) {
        Some(w) => w.command(Cmd::Write(id, data.to_vec())),
        None => false,
    }
}

/// Closes connection `id` with `reason` from any thread: at once on the
/// owning worker, else as a command to it. A connection that has closed
/// meanwhile is left alone (its slot may serve another client by then).
pub fn close_id(id: ConnId, reason: u16) {
    let done = worker::on_worker(id.server(), id.worker(), |ctx| {
        if ctx.is_busy(id.slot()) {
            ctx.defer(Cmd::Close(id, reason));
        } else if let Some(p) = ctx.lookup(id) {
            ctx.close(p, reason);
        }
    });
    if done.is_none()
        && let Some(w) = worker_of(id)
    {
        w.command(Cmd::Close(id, reason));
    }
}

impl ServerShared {
    /// Creates a server: its records, log queues and worker polls. Nothing
    /// runs until [`ServerShared::run`].
    pub(crate) fn new(cfg: Config, service: Arc<dyn Service>) -> io::Result<Arc<ServerShared>> {
        if cfg.workers == 0 || cfg.workers as usize > MAX_WORKERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker count must be 1..={MAX_WORKERS}"),
            ));
        }
        let n = cfg.workers as usize;
        let mut polls = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (p, w) = worker::new_worker(i)?;
            polls.push(Some(p));
            workers.push(w);
        }
        let records = CRecords::new(cfg.workers);
        let mut reg = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
        let id = match reg.iter().position(|w| w.strong_count() == 0) {
            Some(i) => i,
            None if reg.len() < MAX_SERVERS => {
                reg.push(Weak::new());
                reg.len() - 1
            }
            None => {
                return Err(io::Error::other(format!(
                    "more than {MAX_SERVERS} servers at once"
                )));
            }
        };
        let s = Arc::new(ServerShared {
            id,
            cfg: Mutex::new(cfg),
            service,
            workers,
            polls: Mutex::new(polls),
            records,
            run: Mutex::new(RunState::Idle),
            ran: Condvar::new(),
            stop: AtomicBool::new(false),
            runner: Mutex::new(None),
        });
        reg[id] = Arc::downgrade(&s);
        drop(reg);
        // Fill the C records.
        let cs = s.records.server;
        // SAFETY: the records were just allocated and no other thread sees
        // them yet.
        unsafe {
            (*cs).port = i32::from(s.config().port);
            (*cs).qlog = LogQueue::create();
            (*cs).mario = Arc::as_ptr(&s);
            for (i, w) in s.workers.iter().enumerate() {
                let cw = s.records.worker(i);
                (*cw).ind = i as u16;
                (*cw).qlog = LogQueue::create();
                (*cw).server = cs;
                (*cw).mario = Arc::as_ptr(w);
            }
        }
        Ok(s)
    }

    /// A copy of the current settings.
    pub(crate) fn config(&self) -> Config {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes settings before the server runs.
    pub(crate) fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self.cfg.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Binds, starts the workers (which accept) and blocks the calling
    /// thread until [`ServerShared::stop`]. Then closes every connection
    /// (each gets its close callback) and joins the workers.
    pub(crate) fn run(self: &Arc<Self>) -> io::Result<()> {
        {
            let mut st = self.run.lock().unwrap_or_else(|e| e.into_inner());
            if *st != RunState::Idle {
                return Err(io::Error::other("server already started"));
            }
            *st = RunState::Running;
        }
        let r = self.serve();
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = RunState::Stopped;
        self.ran.notify_all();
        r
    }

    fn serve(self: &Arc<Self>) -> io::Result<()> {
        let cfg = self.config();
        let mut poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(1))?);
        *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = Some((waker, std::thread::current().id()));
        if self.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (lfd, port) = sys::listen_v4(cfg.port, cfg.backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on 0.0.0.0:{}: {e}", cfg.port)))?;
        self.configure(|c| c.port = port);
        // SAFETY: the server thread is the only writer of `port`, and C reads it
        // once `start_server` runs; `server_fd` is atomic and published
        // last (Release), after the port, for `wait_listening`.
        unsafe {
            (*self.records.server).port = i32::from(port);
            (*self.records.server).server_fd.store(lfd, Ordering::Release);
        }
        let cfg = self.config();
        let server = self.clone();
        let listener = Arc::new(Listener::new(
            lfd,
            self.workers.clone(),
            cfg.conns_per_worker,
            Box::new(move || {
                // SAFETY: atomic field of the server record, which lives
                // as long as `server`.
                unsafe {
                    (*server.records.server)
                        .conn_count
                        .fetch_add(1, Ordering::Relaxed)
                };
            }),
        ));
        let (threads, epolls) = match self.start_workers(&cfg, &listener) {
            Ok(t) => t,
            Err(e) => {
                sys::close(lfd);
                return Err(e);
            }
        };
        // Like the original: flush the C streams, then announce; only then
        // does any connection get served.
        // SAFETY: `fflush(NULL)` flushes every C output stream.
        unsafe { libc::fflush(std::ptr::null_mut()) };
        let line = b"--------------start server ok--------------\n";
        // SAFETY: writes a valid buffer to stdout.
        unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
        if let Err(e) = epolls
            .iter()
            .try_for_each(|&ep| listener.watch(ep, worker::LISTENER))
        {
            // Only out of memory gets here.
            log::error!("cannot watch the listening socket: {e}");
            self.stop_workers(threads);
            sys::close(lfd);
            return Err(e);
        }
        // The workers accept (see `accept`); this thread waits for a stop.
        let mut events = Events::with_capacity(4);
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(e) = poll.poll(&mut events, None)
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("server poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        listener.close();
        self.stop_workers(threads);
        listener.drain_queues();
        sys::close(lfd);
        logq::flush(Duration::from_secs(2));
        Ok(())
    }

    fn start_workers(
        self: &Arc<Self>,
        cfg: &Config,
        listener: &Arc<Listener>,
    ) -> io::Result<(Vec<JoinHandle<()>>, Vec<RawFd>)> {
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        let mut threads = Vec::new();
        // Each worker writes its own `thread_id` before it can accept (a
        // callback on it then reads its own write); this thread waits for
        // all of them, so whoever sees the server started sees every id.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let mut epolls = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let poll = polls[i]
                .take()
                .ok_or_else(|| io::Error::other("worker poll already taken"))?;
            epolls.push(poll.as_raw_fd());
            let cw = self.records.worker(i);
            let worker = SendPtr(Worker::new(
                poll,
                w.clone(),
                self.id,
                cw,
                self.service.clone(),
                cfg,
                Some(listener.clone()),
            ));
            // SAFETY: the record lives as long as the server.
            let qlog = unsafe { &*(*cw).qlog };
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("mario-worker-{i}"))
                .spawn(move || {
                    logq::set_thread_queue(qlog);
                    let worker = worker;
                    worker.0.publish_thread_id();
                    let _ = ready.send(());
                    worker.0.run();
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.stop_workers(threads);
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            let _ = ready_rx.recv();
        }
        Ok((threads, epolls))
    }

    /// Stops the started workers and waits for them.
    fn stop_workers(&self, threads: Vec<JoinHandle<()>>) {
        for w in &self.workers {
            w.command(Cmd::Stop);
        }
        for t in threads {
            let _ = t.join();
        }
    }

    /// Asks the server to stop. From a thread that is neither the one in
    /// `run` nor one of the workers it waits until the server has stopped.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let acc = self.runner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((w, tid)) = &acc {
            let _ = w.wake();
            if *tid == std::thread::current().id() {
                return;
            }
        }
        if self
            .workers
            .iter()
            .any(|w| worker::on_worker(self.id, w.index, |_| ()).is_some())
        {
            return;
        }
        let mut st = self.run.lock().unwrap_or_else(|e| e.into_inner());
        while *st == RunState::Running {
            st = self.ran.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct SendPtr(Box<Worker>);
// SAFETY: the worker is built on the starting thread and moved once into
// its own thread, which is from then on its only user.
unsafe impl Send for SendPtr {}

// ---------------------------------------------------------------------------
// The Rust API
// ---------------------------------------------------------------------------

type PacketFn = dyn Fn(&mut Conn, Packet<'_>) -> Verdict + Send + Sync;
type ConnFn = dyn Fn(&mut Conn) + Send + Sync;
type CloseFn = dyn Fn(&mut Conn, u16) + Send + Sync;
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
        &self.bytes[crate::proto::SIZE_OF_HEAD..]
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
}

impl Handlers {
    /// Runs a Rust callback with `&mut Conn`. While it runs, operations on
    /// the same connection by id (`send_to`, `close_id`) are deferred until
    /// it returns, so no second reference to the connection is ever made.
    fn with_conn<R>(ctx: &Ctx, c: *mut Conn, f: impl FnOnce(&mut Conn) -> R) -> R {
        // SAFETY: `c` is a live slab pointer, or derived from the `&mut` of
        // an enclosing callback that is not in use while this one runs.
        let slot = unsafe { (*c).ind };
        let prev = ctx.enter(slot);
        // SAFETY: as above; the worker holds no reference during callbacks.
        let r = f(unsafe { &mut *c });
        ctx.leave(prev);
        r
    }
}

impl Service for Handlers {
    fn connected(&self, ctx: &Ctx, c: *mut Conn) {
        if let Some(f) = &self.connected {
            Handlers::with_conn(ctx, c, |c| f(c))
        }
    }
    fn packet(&self, ctx: &Ctx, c: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict {
        let id = head.akg_id as usize;
        match self.pages[id >> 8].as_ref().and_then(|p| p[id & 0xff].as_ref()) {
            Some(f) => Handlers::with_conn(ctx, c, |c| f(c, Packet { head, bytes: pkt })),
            None => Verdict::NoHandler,
        }
    }
    fn closed(&self, ctx: &Ctx, c: *mut Conn, reason: u16) {
        if let Some(f) = &self.closed {
            Handlers::with_conn(ctx, c, |c| f(c, reason))
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

    /// Waits up to `timeout` for the server to be listening and returns
    /// its port.
    pub fn wait_listening(&self, timeout: Duration) -> Option<u16> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            // SAFETY: reading a field of our own live record.
            if unsafe { (*self.inner.records.server).server_fd.load(Ordering::Acquire) } >= 0 {
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
        self.inner
            .workers
            .iter()
            .map(|w| w.count.load(Ordering::Relaxed))
            .collect()
    }
}

/// Stops a server from any thread (see [`StopHandle::stop`]).
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<ServerShared>,
}

impl StopHandle {
    /// Stops accepting, closes every connection (each close callback runs
    /// once) and, unless called from one of the server's own threads, waits
    /// until the workers have exited.
    pub fn stop(&self) {
        self.inner.stop()
    }
}
