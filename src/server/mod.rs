//! The server: start-up, worker threads, stop, and the registry that lets
//! any thread reach a connection by its [`ConnId`] (`send_to`, `close_id`).
//!
//! * `monitor`: the worker monitor, run by the thread in `run`.
//!
//! Uses: worker, accept, mailbox, pool, service, conn, records, listen, logq, sys,
//! stats, metrics.

mod monitor;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Poll;

use crate::accept::Listener;
use crate::conn::ConnId;
use crate::conn::id::MAX_SERVERS;
use crate::listen;
use crate::logq::{self, LogQueue};
use crate::mailbox::{Cmd, Mailbox};
use crate::metrics::{self, http::Endpoint};
use crate::pool::{self, Pool};
use crate::records::CRecords;
use crate::service::{Config, Service};
use crate::stats::Stats;
use crate::sys;
use crate::worker::{self, Worker};

/// How long a stop waits for the workers (which deliver pending output
/// for up to `worker::STOP_FLUSH` of it) before it leaves a worker stuck in
/// a handler behind.
pub(crate) const STOP_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Idle,
    Running,
    Stopped,
}

/// Where a server is in its life, under one lock: `run` waits on it for a
/// stop request, `stop` waits on it for the end of `run`.
struct Lifecycle {
    state: RunState,
    /// A stop was asked for (before or during `run`).
    stop: bool,
    /// The thread in `run` (the monitor's).
    runner: Option<std::thread::ThreadId>,
}

/// A server as every thread sees it.
pub(crate) struct ServerShared {
    /// Index in the process-wide registry (the server field of a `ConnId`).
    pub id: usize,
    cfg: Mutex<Config>,
    service: Arc<dyn Service>,
    /// One mailbox per worker.
    pub workers: Vec<Arc<Mailbox>>,
    polls: Mutex<Vec<Option<Poll>>>,
    /// The C records (`SERVER`, `WORKER_ARRAY`).
    pub records: CRecords,
    life: Mutex<Lifecycle>,
    changed: Condvar,
    /// True while the workers run and take commands (set once they are
    /// started, cleared when a stop begins).
    serving: AtomicBool,
    /// The `/metrics` endpoints serving this server's statistics; `None`
    /// once it has stopped (they stop with it).
    endpoints: Mutex<Option<Vec<Endpoint>>>,
    /// The address the listening socket is bound to, once it listens.
    local: Mutex<Option<SocketAddr>>,
}

/// Servers by number, for [`ConnId`] lookups from any thread. Numbers are
/// never reused (a stale id must never reach a later server), so the
/// registry only grows, to at most [`MAX_SERVERS`] entries.
static REGISTRY: RwLock<Vec<Weak<ServerShared>>> = RwLock::new(Vec::new());

/// Finds the mailbox of the worker that owns `id`, if its server still
/// exists and serves.
fn worker_of(id: ConnId) -> Option<Arc<Mailbox>> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let s = reg.get(id.server())?.upgrade()?;
    if !s.serving.load(Ordering::Acquire) {
        return None;
    }
    s.workers.get(id.worker()).cloned()
}

/// Queues `data` (copied) for connection `id`, from any thread.
///
/// On the connection's own worker (inside any handler) the bytes are
/// appended to its output at once, in order with every other write to it:
/// `true` means they were queued. `false`: the connection is gone (a stale
/// id never reaches another connection), it takes no more output (closed,
/// or closing after an error), or the output would pass its cap (the
/// connection is then closed as `AKG_ERROR`). Inside the close handler of
/// a graceful close the bytes are the last data before FIN.
///
/// A pool handler's writes to its own connection go to the worker even
/// while the server stops (the stop waits for the handler); after the
/// handler closed its connection they are refused, as on a worker.
///
/// From any other thread the bytes become a command to the owning worker:
/// `true` means the command was queued (not that the bytes will be
/// delivered: they are dropped if the connection closes first), `false`
/// that the server has stopped or the worker already holds 64 MiB from
/// other threads.
///
/// Example: [`ConnId`] (a message to a user by name); the C form is
/// `bufferevent_write(c->bufev, ...)`.
pub fn send_to(id: ConnId, data: &[u8]) -> bool {
    if let Some(r) = worker::on_worker(id.server(), id.worker(), |ctx| ctx.write(id, data)) {
        return r;
    }
    if let Some(r) = pool::own(id, pool::Own::Write(data)) {
        return r;
    }
    match worker_of(id) {
        Some(w) => w.command(Cmd::Write(id, data.to_vec())),
        None => false,
    }
}

/// Closes connection `id` gracefully with `reason`, from any thread: what
/// was queued before is delivered, then FIN. On the owning worker it
/// happens at once, or, for the connection a handler is running on, when
/// that handler returns (its output is refused meanwhile); elsewhere it
/// becomes a command to the owner. A connection that has closed meanwhile
/// is left alone (its slot may serve another client by then).
///
/// Returns false when the connection is known to be gone (on its worker:
/// closed or closing; from elsewhere: its server has stopped), true when
/// the close was done or handed to the owning worker. `reason` is what the
/// close handler sees ([`Conn::close_reason`](crate::Conn::close_reason)): an application's own id,
/// or one of the `AKG_*` reasons.
///
/// Called from a handler for *another* connection of the same worker, the
/// close happens inside the call: that connection's close handler runs
/// before `close_id` returns. So a handler must not hold, across this call,
/// a lock that the close handler takes (it would wait for itself); take
/// what is needed, unlock, then close.
///
/// ```
/// use mario::{ConnId, close_id, send_to};
///
/// /// Logs a user out from an admin thread: a last message, then FIN.
/// fn kick(id: ConnId) -> bool {
///     const KICKED: u16 = 0x0a01; // the close handler's reason
///     send_to(id, b"bye\n") && close_id(id, KICKED)
/// }
/// # let _ = kick;
/// ```
///
/// [`ConnId`] keeps ids by user; the C form is `mario_close_bufev`.
pub fn close_id(id: ConnId, reason: u16) -> bool {
    if let Some(r) = worker::on_worker(id.server(), id.worker(), |ctx| ctx.close_id(id, reason)) {
        return r;
    }
    if let Some(r) = pool::own(id, pool::Own::Close(reason)) {
        return r;
    }
    match worker_of(id) {
        Some(w) => w.command(Cmd::Close(id, reason)),
        None => false,
    }
}

impl ServerShared {
    /// Creates a server: its records, log queues and worker polls. Nothing
    /// runs until [`ServerShared::run`].
    pub(crate) fn new(cfg: Config, service: Arc<dyn Service>) -> io::Result<Arc<ServerShared>> {
        cfg.validate()?;
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
        if reg.len() >= MAX_SERVERS {
            return Err(io::Error::other(format!(
                "this process has created {MAX_SERVERS} servers, the most it may: server numbers are \
                 never reused, so that a connection id can never name a later server's connection"
            )));
        }
        reg.push(Weak::new());
        let id = reg.len() - 1;
        let s = Arc::new(ServerShared {
            id,
            cfg: Mutex::new(cfg),
            service,
            workers,
            polls: Mutex::new(polls),
            records,
            life: Mutex::new(Lifecycle {
                state: RunState::Idle,
                stop: false,
                runner: None,
            }),
            changed: Condvar::new(),
            serving: AtomicBool::new(false),
            endpoints: Mutex::new(Some(Vec::new())),
            local: Mutex::new(None),
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
            (*cs).mario = Arc::as_ptr(&s).cast();
            for i in 0..s.workers.len() {
                let cw = s.records.worker(i);
                (*cw).ind = i as u16;
                (*cw).qlog = LogQueue::create();
                (*cw).server = cs;
            }
        }
        Ok(s)
    }

    /// The address the server listens on, once it does (the port is the
    /// real one when 0 was asked for).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        *self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the server listens (its `server_fd` is set).
    pub(crate) fn listening(&self) -> bool {
        // SAFETY: reading an atomic field of our own live record.
        unsafe { (*self.records.server).server_fd.load(Ordering::Acquire) >= 0 }
    }

    /// Connections currently held, per worker.
    pub(crate) fn connections(&self) -> Vec<u32> {
        self.workers
            .iter()
            .map(|w| w.count.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether worker `i` is stalled now (see `monitor`); false for a
    /// worker that does not exist.
    pub(crate) fn worker_stalled(&self, i: usize) -> bool {
        self.workers.get(i).is_some_and(|w| w.stalled())
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
            let mut life = self.life();
            if life.state != RunState::Idle {
                return Err(io::Error::other("server already started"));
            }
            life.state = RunState::Running;
            life.runner = Some(std::thread::current().id());
        }
        let r = self.serve();
        // The metrics endpoints stop with the server.
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(endpoints);
        self.life().state = RunState::Stopped;
        self.changed.notify_all();
        r
    }

    /// Each worker's counters now, and their sum (see `stats`): any
    /// thread, any time (zeros before the server runs).
    pub(crate) fn stats(&self) -> Stats {
        Stats::from_workers(
            self.workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    // SAFETY: the worker records and their log queues are
                    // made in `new` and live as long as the server.
                    let dropped = unsafe { (*(*self.records.worker(i)).qlog).dropped_total() };
                    w.stats
                        .snapshot(u64::from(w.count.load(Ordering::Relaxed)), dropped, w.stalled())
                })
                .collect(),
        )
    }

    /// Serves [`ServerShared::stats`] as Prometheus text on `addr` (see
    /// `metrics::http`) until the server stops; returns the address bound.
    /// Fails if the address is bad or taken, or the server has stopped.
    pub(crate) fn serve_metrics<A: std::net::ToSocketAddrs + std::fmt::Debug>(
        self: &Arc<Self>,
        addr: A,
    ) -> io::Result<std::net::SocketAddr> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = endpoints.as_mut() else {
            return Err(io::Error::other("the server has stopped"));
        };
        // Weak: the endpoint, owned by the server, must not keep it alive.
        let weak = Arc::downgrade(self);
        let ep = Endpoint::start(
            addr,
            Box::new(move || {
                weak.upgrade()
                    .map(|s| metrics::prometheus(&s.stats()))
                    .unwrap_or_default()
            }),
        )?;
        let bound = ep.addr();
        list.push(ep);
        Ok(bound)
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(self: &Arc<Self>) -> io::Result<()> {
        let cfg = self.config();
        if self.life().stop {
            return Ok(());
        }
        // Settings changed since `new` (the C setters) must agree too.
        cfg.validate()?;
        let l = listen::open(&listen::Spec {
            addr: cfg.bind,
            port: cfg.port,
            backlog: cfg.backlog,
            reuseport: cfg.reuseport,
        })?;
        let (lfd, port) = (l.fd, l.local.port());
        self.configure(|c| c.port = port);
        *self.local.lock().unwrap_or_else(|e| e.into_inner()) = Some(l.local);
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
        let threads = if cfg.pool_threads == 0 {
            self.workers.len()
        } else {
            cfg.pool_threads as usize
        };
        let pool = Pool::new(self.service.clone(), threads, self.records.server, self.id);
        let (threads, epolls) = match self.start_workers(&cfg, &listener, &pool) {
            Ok(t) => t,
            Err(e) => {
                sys::close(lfd);
                return Err(e);
            }
        };
        self.serving.store(true, Ordering::Release);
        // Like the original: flush the C program's output, then announce;
        // only then does any connection get served. Not `fflush(NULL)`: it
        // takes the lock of every C stream, stdin's too, so a program
        // thread blocked reading stdin held the start up (and connections
        // waited in the backlog) until a line came in.
        if self.service.announces_start() {
            sys::flush_stdout_stderr();
            let line = b"--------------start server ok--------------\n";
            // SAFETY: writes a valid buffer to stdout.
            unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
        }
        if let Err(e) = epolls
            .iter()
            .try_for_each(|&ep| listener.watch(ep, worker::LISTENER))
        {
            // Only out of memory gets here.
            log::error!("cannot watch the listening socket: {e}");
            self.serving.store(false, Ordering::Release);
            self.stop_workers(threads, Instant::now() + STOP_BOUND);
            pool.stop(Instant::now() + STOP_BOUND);
            sys::close(lfd);
            return Err(e);
        }
        // The workers accept (see `accept`); this thread watches them
        // (see `monitor`) until a stop.
        let threshold = cfg.stall_threshold_ms;
        let mut life = self.life();
        while !life.stop {
            if threshold == 0 {
                life = self.changed.wait(life).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            life = self
                .changed
                .wait_timeout(life, monitor::period(threshold))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if life.stop {
                break;
            }
            // Not under the lock: the stall callback may stop the server.
            drop(life);
            self.check_health(&listener, threshold);
            life = self.life();
        }
        drop(life);
        // Connections are closing: commands from other threads would only
        // be dropped, so they are refused from now on.
        self.serving.store(false, Ordering::Release);
        listener.close();
        // Packets waiting for a pool thread are not started any more, even
        // while a worker is still busy in a handler.
        pool.halt();
        let deadline = Instant::now() + STOP_BOUND;
        self.stop_workers(threads, deadline);
        // The workers waited for their connections' pool handlers.
        pool.stop(deadline.max(Instant::now() + Duration::from_millis(200)));
        listener.drain_queues();
        sys::close(lfd);
        logq::flush(Duration::from_secs(2));
        Ok(())
    }

    fn start_workers(
        self: &Arc<Self>,
        cfg: &Config,
        listener: &Arc<Listener>,
        pool: &Arc<Pool>,
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
            let worker = match Worker::new(
                poll,
                w.clone(),
                self.id,
                cw,
                self.service.clone(),
                cfg,
                worker::Shared {
                    listener: Some(listener.clone()),
                    pool: Some(pool.clone()),
                },
            ) {
                Ok(w) => SendPtr(w),
                Err(e) => {
                    self.stop_workers(threads, Instant::now() + STOP_BOUND);
                    return Err(e);
                }
            };
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
                    self.stop_workers(threads, Instant::now() + STOP_BOUND);
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

    /// Stops the started workers and waits for them until `deadline` at
    /// most: a worker stuck in a handler that does not return is left
    /// running, detached (it stops by itself if the handler ever returns),
    /// and the log says so.
    fn stop_workers(&self, threads: Vec<JoinHandle<()>>, deadline: Instant) {
        for w in &self.workers {
            w.command(Cmd::Stop);
        }
        for i in pool::join_by(threads, deadline) {
            let w = &self.workers[i];
            let turn = w.beat.turn.load(Ordering::Relaxed);
            log::error!(
                "worker {i} did not stop within {} s: it is still in the handler of packet {:#06x} \
                 (for {} ms); its thread is left running, detached, and its connections open",
                STOP_BOUND.as_secs(),
                w.beat.handling.load(Ordering::Relaxed),
                if turn == 0 {
                    0
                } else {
                    w.beat.now().saturating_sub(turn)
                }
            );
        }
    }

    /// Asks the server to stop. From a thread that is not one of the
    /// server's workers it waits until the server has stopped (if it runs).
    pub(crate) fn stop(&self) {
        let mut life = self.life();
        life.stop = true;
        self.changed.notify_all();
        let own = self
            .workers
            .iter()
            .any(|w| worker::on_worker(self.id, w.index, |_| ()).is_some())
            || pool::on_pool_of(self.id)
            || life.runner == Some(std::thread::current().id());
        if own {
            // One of the server's own threads (a worker, a pool thread, the
            // monitor in a stall callback) waiting for the server to stop
            // would wait for itself.
            return;
        }
        while life.state == RunState::Running {
            life = self.changed.wait(life).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct SendPtr(Box<Worker>);
// SAFETY: the worker is built on the starting thread and moved once into
// its own thread, which is from then on its only user.
unsafe impl Send for SendPtr {}
