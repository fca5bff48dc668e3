//! A worker: one thread, one `mio::Poll`, one slab of connections, one
//! timing wheel. Workers accept new connections themselves (see `accept`);
//! a connection never leaves the worker it was placed on.
//!
//! Inside a turn of the loop the worker reads every ready socket into its
//! one read buffer until the kernel has nothing more, dispatches complete
//! packets in place, collects replies in per-connection output queues, and
//! at the end of the turn sends each dirty connection's output with one
//! `send`. Other threads talk to the worker only through its queues.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_queue::{ArrayQueue, SegQueue};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::accept::{self, Drained, Listener};
use crate::conn::{Conn, ConnId, MAX_SLOTS, State};
use crate::layout::CWorker;
use crate::proto::{self, AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT, BadHead, Scan};
use crate::server::{Config, Service, Verdict};
use crate::sys::{self, Io};
use crate::wheel::{NOT_FILED, Wheel};

const WAKER: Token = Token(usize::MAX);
/// The shared listening socket (see `accept`), watched in every poll.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
/// Size of the per-worker read buffer.
const RBUF: usize = 64 * 1024;
/// At most this many reads per connection per turn before others get a go.
const READS_PER_TURN: usize = 16;
/// Size of the per-worker scratch area behind `CONN.out_buf`.
pub(crate) const SCRATCH: usize = 2048;
/// Output buffers kept for reuse, and the largest capacity kept.
const POOL_MAX: usize = 256;
const POOL_BUF_MAX: usize = 16 * 1024;
/// Cap on bytes queued by other threads for one worker and not yet taken.
const CMD_BYTES_MAX: usize = 64 << 20;

/// Commands other threads send to a worker.
pub(crate) enum Cmd {
    Write(ConnId, Vec<u8>),
    Close(ConnId, u16),
    Stop,
}

/// The part of a worker other threads see.
pub(crate) struct WorkerShared {
    pub index: usize,
    /// New connections handed over by other workers.
    pub accept_q: ArrayQueue<sys::Accepted>,
    /// Cross-thread writes and closes, and stop.
    cmds: SegQueue<Cmd>,
    /// Bytes inside `cmds` not yet taken by the worker.
    cmd_bytes: AtomicUsize,
    /// True while the worker is (about to be) blocked in `poll`.
    sleeping: AtomicBool,
    waker: Waker,
    /// Live connections, including those handed over and not yet taken.
    pub count: AtomicU32,
    /// Wake-ups performed on this worker (for tests and benchmarks).
    pub wakes: AtomicUsize,
}

impl WorkerShared {
    /// Wakes the worker if it may be asleep. Call after pushing to a queue.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            let _ = self.waker.wake();
        }
    }

    /// Queues a command and wakes the worker if needed. Writes are refused
    /// (returns false) when the worker already holds too many bytes from
    /// other threads.
    pub(crate) fn command(&self, cmd: Cmd) -> bool {
        if let Cmd::Write(_, ref data) = cmd {
            let n = data.len();
            if self.cmd_bytes.fetch_add(n, Ordering::Relaxed) + n > CMD_BYTES_MAX {
                self.cmd_bytes.fetch_sub(n, Ordering::Relaxed);
                return false;
            }
        }
        self.cmds.push(cmd);
        self.notify();
        true
    }
}

/// Creates a worker's poll and shared state.
pub(crate) fn new_worker(index: usize) -> std::io::Result<(Poll, Arc<WorkerShared>)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let shared = Arc::new(WorkerShared {
        index,
        accept_q: ArrayQueue::new(4096),
        cmds: SegQueue::new(),
        cmd_bytes: AtomicUsize::new(0),
        sleeping: AtomicBool::new(false),
        waker,
        count: AtomicU32::new(0),
        wakes: AtomicUsize::new(0),
    });
    Ok((poll, shared))
}

thread_local! {
    /// The worker context of the current thread, while its loop runs.
    static CURRENT: Cell<*const Ctx> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with the current thread's worker context if `owner` is the
/// worker running on this thread.
pub(crate) fn on_owner<R>(owner: *const CWorker, f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: `CURRENT` is set only by a running worker loop to its own
    // context, which lives (boxed, never moved) until the loop clears it.
    let ctx = unsafe { &*p };
    std::ptr::eq(ctx.cworker, owner).then(|| f(ctx))
}

/// Runs `f` on the owning worker's context with `c`. A `&mut Conn` only
/// exists inside a callback on its owner (`Conn` is neither `Send` nor
/// `Sync`), so the owner is always the current thread.
pub(crate) fn with_owner<R>(c: &mut Conn, f: impl FnOnce(&Ctx, &mut Conn) -> R) -> R {
    let owner = c.owner;
    on_owner(owner, |ctx| f(ctx, c)).expect("a Conn is only reachable on its worker thread")
}

/// Runs `f` with the current thread's worker context, if this thread is a
/// worker of server `server_id`, worker `worker`.
pub(crate) fn on_worker<R>(server_id: usize, worker: usize, f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: see `on_owner`.
    let ctx = unsafe { &*p };
    (ctx.server_id == server_id && ctx.shared.index == worker).then(|| f(ctx))
}

/// The worker state that callbacks may reach again (through `Conn` methods
/// or the C functions): output, closing, and the lists the loop drains.
/// Everything mutable is in `Cell`/`RefCell`, and no borrow is held while a
/// callback runs.
pub(crate) struct Ctx {
    pub shared: Arc<WorkerShared>,
    pub server_id: usize,
    cworker: *mut CWorker,
    service: Arc<dyn Service>,
    stx: u32,
    out_cap: usize,
    read_timeout: u32,
    write_timeout: u32,
    /// Slot index -> connection record (boxed, so addresses are stable).
    slab: RefCell<Vec<*mut Conn>>,
    free: RefCell<Vec<u32>>,
    dirty: RefCell<Vec<u32>>,
    to_free: RefCell<Vec<u32>>,
    wheel: RefCell<Wheel>,
    now: Cell<u32>,
    pool: RefCell<Vec<Vec<u8>>>,
    /// The scratch area every `CONN.out_buf` of this worker points to.
    scratch: Box<[std::cell::UnsafeCell<u8>]>,
    /// Slot borrowed by a running Rust callback, or `NOT_BUSY`.
    busy: Cell<u32>,
    /// Operations on the busy connection, run when its callback returns.
    deferred: RefCell<Vec<Cmd>>,
    /// Closed sockets still draining input (fd, tick to close by).
    linger: RefCell<Vec<(i32, u32)>>,
}

/// Most sockets one worker keeps lingering; past it they close at once.
const LINGER_MAX: usize = 4096;
/// A lingering socket is closed after at most this many ticks (seconds).
const LINGER_TICKS: u32 = 2;

/// No Rust callback holds a connection.
pub(crate) const NOT_BUSY: u32 = u32::MAX;

impl Ctx {
    /// The server's stx.
    pub(crate) fn stx(&self) -> u32 {
        self.stx
    }

    fn conn(&self, slot: u32) -> Option<*mut Conn> {
        self.slab.borrow().get(slot as usize).copied()
    }

    /// Finds the live connection named by `id` on this worker.
    pub(crate) fn lookup(&self, id: ConnId) -> Option<*mut Conn> {
        self.live(id.slot(), id.generation())
    }

    /// The connection in `slot` if it is open and of `generation` (the
    /// check every event, command and id goes through). Generations are
    /// kept to 24 bits when assigned, as in `ConnId`.
    fn live(&self, slot: u32, generation: u32) -> Option<*mut Conn> {
        let p = self.conn(slot)?;
        // SAFETY: slab pointers stay valid for the worker's life.
        let c = unsafe { &*p };
        (c.state == State::Open && c.generation == generation).then_some(p)
    }

    fn file_timer(&self, c: &mut Conn, due: u32) {
        if c.wheel_due == NOT_FILED || due < c.wheel_due {
            c.wheel_due = self.wheel.borrow_mut().file(c.ind, due);
        }
    }

    /// True while a Rust callback holds `&mut` to the connection in `slot`:
    /// operations on it by id are then deferred until the callback returns.
    pub(crate) fn is_busy(&self, slot: u32) -> bool {
        self.busy.get() == slot
    }

    /// Marks `slot` as borrowed by a Rust callback; returns the previous
    /// mark for [`Ctx::leave`].
    pub(crate) fn enter(&self, slot: u32) -> u32 {
        self.busy.replace(slot)
    }

    /// Ends a Rust callback; at the outermost one, runs what was deferred.
    pub(crate) fn leave(&self, prev: u32) {
        self.busy.set(prev);
        if prev == NOT_BUSY {
            loop {
                let cmds = std::mem::take(&mut *self.deferred.borrow_mut());
                if cmds.is_empty() {
                    break;
                }
                for cmd in cmds {
                    self.apply(cmd);
                }
            }
        }
    }

    /// Defers an operation on a connection borrowed by a callback.
    pub(crate) fn defer(&self, cmd: Cmd) {
        self.deferred.borrow_mut().push(cmd);
    }

    /// Applies a write or close command to a live connection.
    fn apply(&self, cmd: Cmd) {
        match cmd {
            Cmd::Write(id, data) => {
                if let Some(p) = self.lookup(id) {
                    self.append(p, &data);
                }
            }
            Cmd::Close(id, reason) => {
                if let Some(p) = self.lookup(id) {
                    self.close(p, reason);
                }
            }
            Cmd::Stop => {}
        }
    }

    /// Appends `data` to the output of the connection at `p` (see
    /// [`Conn::send`]). `p` is a live slab pointer (or derived from the
    /// `&mut` a callback holds), and no other reference to it is in use.
    pub(crate) fn append(&self, p: *mut Conn, data: &[u8]) -> bool {
        // SAFETY: see the contract above; `c` is dropped before `close`.
        let c = unsafe { &mut *p };
        if c.state != State::Open && c.state != State::Closing {
            return false;
        }
        let pending = c.out.len() - c.out_pos as usize;
        if pending + data.len() > self.out_cap {
            log::warn!(
                "output of connection {} over its cap ({} bytes pending, cap {}): closing",
                c.ind,
                pending + data.len(),
                self.out_cap
            );
            self.close(p, AKG_ERROR);
            return false;
        }
        if pending == 0 {
            c.last_write = self.now.get();
            if self.write_timeout > 0 {
                let due = c.last_write + self.write_timeout + 1;
                self.file_timer(c, due);
            }
        }
        if c.out.capacity() == 0
            && let Some(b) = self.pool.borrow_mut().pop()
        {
            c.out = b;
        }
        c.out.extend_from_slice(data);
        if !c.dirty {
            c.dirty = true;
            self.dirty.borrow_mut().push(c.ind);
        }
        true
    }

    fn release_out(&self, c: &mut Conn) {
        let mut b = std::mem::take(&mut c.out);
        c.out_pos = 0;
        b.clear();
        let mut pool = self.pool.borrow_mut();
        if b.capacity() <= POOL_BUF_MAX && pool.len() < POOL_MAX {
            pool.push(b);
        }
    }

    /// Sends as much pending output as the socket takes now.
    fn flush(&self, p: *mut Conn) {
        // SAFETY: live slab pointer, no other reference in use; `c` is not
        // used after `close`.
        let c = unsafe { &mut *p };
        while (c.out_pos as usize) < c.out.len() {
            match sys::send(c.fd, &c.out[c.out_pos as usize..]) {
                Io::Done(n) => {
                    c.out_pos += n as u32;
                    c.last_write = self.now.get();
                }
                Io::WouldBlock => break,
                Io::Err(e) => {
                    log::debug!("send on connection {}: {}", c.ind, e);
                    self.close(p, AKG_ERROR);
                    return;
                }
            }
        }
        if c.out_pos as usize == c.out.len() {
            self.release_out(c);
        } else if c.out_pos as usize > c.out.len() / 2 {
            c.out.drain(..c.out_pos as usize);
            c.out_pos = 0;
        }
    }

    /// Closes the connection at `p` with `reason`: runs the close callback
    /// once, flushes what the socket takes, closes the socket; the slot is
    /// freed at the end of the turn. A second call does nothing. `p`: as
    /// for [`Ctx::append`].
    pub(crate) fn close(&self, p: *mut Conn, reason: u16) {
        {
            // SAFETY: see the contract; the reference ends before the
            // callback, which may reach the connection again.
            let c = unsafe { &mut *p };
            if c.state != State::Open {
                return;
            }
            c.err_type = reason;
            c.in_buf_len = 0;
            // `Closing` during the callback: it may still queue a last
            // reply, and a nested close is a no-op.
            c.state = State::Closing;
        }
        self.service.closed(self, p, reason);
        // SAFETY: the callback has returned; no other reference remains.
        let c = unsafe { &mut *p };
        c.state = State::Closed;
        if reason != AKG_ERROR && !c.peer_eof {
            // Deliver what was queued before the close (lingering close):
            // input that arrives unread would make `close` answer with a
            // reset that destroys our last replies. So discard what is
            // waiting, send, shut our side (FIN after the data), and keep
            // the socket draining for a moment before closing it.
            let eof = sys::discard_input(c.fd, 256 * 1024);
            if (c.out_pos as usize) < c.out.len() {
                let _ = sys::send(c.fd, &c.out[c.out_pos as usize..]);
            }
            sys::shutdown_write(c.fd);
            let mut linger = self.linger.borrow_mut();
            if !eof && linger.len() < LINGER_MAX {
                linger.push((c.fd, self.now.get() + LINGER_TICKS));
            } else {
                sys::close(c.fd);
            }
        } else {
            if (c.out_pos as usize) < c.out.len() && reason != AKG_ERROR {
                let _ = sys::send(c.fd, &c.out[c.out_pos as usize..]);
            }
            sys::close(c.fd);
        }
        c.fd = -1;
        self.release_out(c);
        c.partial = Vec::new();
        self.to_free.borrow_mut().push(c.ind);
    }
}

/// The worker loop's own state.
pub(crate) struct Worker {
    ctx: Ctx,
    poll: Poll,
    rbuf: Box<[u8]>,
    /// Connections that still had data when their read budget ran out.
    again: Vec<(u32, u32)>,
    start: Instant,
    stopping: bool,
    expired: Vec<u32>,
    last_linger_tick: u32,
    /// The listening socket this worker accepts from.
    listener: Option<Arc<Listener>>,
    /// When to try `accept` again after an error.
    accept_retry: Option<Instant>,
    /// The last `accept` call stopped at its limit: go on next turn.
    accept_more: bool,
}

impl Worker {
    pub(crate) fn new(
        poll: Poll,
        shared: Arc<WorkerShared>,
        server_id: usize,
        cworker: *mut CWorker,
        service: Arc<dyn Service>,
        cfg: &Config,
        listener: Option<Arc<Listener>>,
    ) -> Box<Worker> {
        Box::new(Worker {
            ctx: Ctx {
                shared,
                server_id,
                cworker,
                service,
                stx: cfg.stx,
                out_cap: cfg.output_limit,
                read_timeout: cfg.read_timeout,
                write_timeout: cfg.write_timeout,
                slab: RefCell::new(Vec::new()),
                free: RefCell::new(Vec::new()),
                dirty: RefCell::new(Vec::new()),
                to_free: RefCell::new(Vec::new()),
                wheel: RefCell::new(Wheel::new(256)),
                now: Cell::new(0),
                pool: RefCell::new(Vec::new()),
                scratch: (0..SCRATCH).map(|_| std::cell::UnsafeCell::new(0)).collect(),
                busy: Cell::new(NOT_BUSY),
                deferred: RefCell::new(Vec::new()),
                linger: RefCell::new(Vec::new()),
            },
            poll,
            rbuf: vec![0u8; RBUF].into_boxed_slice(),
            again: Vec::new(),
            start: Instant::now(),
            stopping: false,
            expired: Vec::new(),
            last_linger_tick: 0,
            listener,
            accept_retry: None,
            accept_more: false,
        })
    }

    /// Writes this thread's id into the C worker record (`thread_id`).
    /// Called on the worker's own thread before its loop starts.
    pub(crate) fn publish_thread_id(&self) {
        // SAFETY: the record lives as long as the server; this thread is
        // the only writer of `thread_id`, and it writes before it accepts
        // any connection, so callbacks (on this thread) read their own
        // write and other threads are ordered by the start-up hand-shake.
        unsafe { (*self.ctx.cworker).thread_id = libc::pthread_self() };
    }

    /// Runs the loop until a stop command; then closes every connection.
    pub(crate) fn run(mut self: Box<Self>) {
        CURRENT.with(|c| c.set(&self.ctx as *const Ctx));
        let mut events = Events::with_capacity(1024);
        let mut busy = false;
        while !self.stopping {
            self.take_new();
            self.take_cmds();
            if self.stopping {
                break;
            }
            // Send what the commands queued and free what they closed now:
            // `poll` may sleep for long.
            self.end_turn();
            self.wait(&mut events, busy);
            busy = !events.is_empty();
            self.ctx.now.set(self.start.elapsed().as_secs() as u32);
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if t == LISTENER {
                    self.accept_ready();
                    continue;
                }
                let (slot, generation) = (t.0 as u32, (t.0 >> 32) as u32);
                let Some(p) = self.ctx.live(slot, generation) else {
                    continue;
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(p, generation, ev.is_read_closed() || ev.is_error());
                }
                // Replies made while reading this connection go out now, in
                // one send, so the client can go on while the other ready
                // connections are served (the rest of the turn's output is
                // flushed at its end). The writable case is the same check.
                // SAFETY: `p` is a live slab pointer; read only.
                let pending =
                    unsafe { (*p).state == State::Open && ((*p).out_pos as usize) < (*p).out.len() };
                if pending {
                    self.ctx.flush(p);
                }
            }
            for (slot, generation) in std::mem::take(&mut self.again) {
                if let Some(p) = self.ctx.live(slot, generation) {
                    self.read(p, generation, true);
                }
            }
            if self.accept_more || self.accept_retry.is_some_and(|t| Instant::now() >= t) {
                self.accept_ready();
            }
            self.expire();
            self.drain_lingering(false);
            self.end_turn();
        }
        self.shutdown();
        CURRENT.with(|c| c.set(std::ptr::null()));
    }

    /// Waits for events. After a busy turn the worker first yields its CPU
    /// and looks again without blocking: on a loaded machine the clients
    /// (or the other workers) run meanwhile and usually leave new input, so
    /// the worker goes on without the sleep and wake-up that blocking in
    /// `epoll_wait` costs (a context switch on each side and an
    /// inter-processor interrupt for the wake-up). Only an idle worker
    /// blocks, so idle CPU stays zero.
    fn wait(&mut self, events: &mut Events, busy: bool) {
        let timeout = self.timeout();
        if busy && timeout != Some(Duration::ZERO) {
            // SAFETY: `sched_yield` takes no arguments and cannot fail.
            unsafe { libc::sched_yield() };
            if self.poll.poll(events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
                return;
            }
        }
        let sleep = timeout != Some(Duration::ZERO);
        if sleep {
            self.ctx.shared.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        let pending = !self.ctx.shared.accept_q.is_empty() || !self.ctx.shared.cmds.is_empty();
        let timeout = if pending { Some(Duration::ZERO) } else { timeout };
        if let Err(e) = self.poll.poll(events, timeout)
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            log::error!("worker {} poll failed: {}", self.ctx.shared.index, e);
            std::thread::sleep(Duration::from_millis(10));
        }
        if sleep {
            self.ctx.shared.sleeping.store(false, Ordering::Relaxed);
        }
    }

    /// How long `poll` may sleep: not at all if work is waiting, until the
    /// next tick if timers are filed, else indefinitely.
    fn timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() || self.accept_more {
            return Some(Duration::ZERO);
        }
        if let Some(t) = self.accept_retry {
            return Some(t.saturating_duration_since(Instant::now()));
        }
        if self.ctx.wheel.borrow().is_empty() && self.ctx.linger.borrow().is_empty() {
            return None;
        }
        let next = Duration::from_secs(u64::from(self.ctx.now.get()) + 1);
        Some(next.saturating_sub(self.start.elapsed()) + Duration::from_millis(1))
    }

    /// Sends pending output of every dirty connection and frees the slots
    /// closed during the turn.
    fn end_turn(&mut self) {
        loop {
            let list = std::mem::take(&mut *self.ctx.dirty.borrow_mut());
            if list.is_empty() {
                break;
            }
            for slot in &list {
                let Some(p) = self.ctx.conn(*slot) else { continue };
                // SAFETY: live slab pointer, no other reference held.
                let open = unsafe {
                    (*p).dirty = false;
                    (*p).state == State::Open
                };
                if open {
                    self.ctx.flush(p);
                }
            }
            let mut d = self.ctx.dirty.borrow_mut();
            if d.is_empty() {
                *d = list;
                d.clear();
                break;
            }
        }
        let list = std::mem::take(&mut *self.ctx.to_free.borrow_mut());
        for slot in list {
            let Some(p) = self.ctx.conn(slot) else { continue };
            // SAFETY: live slab pointer, no other reference held.
            let c = unsafe { &mut *p };
            if c.state != State::Closed {
                continue;
            }
            c.state = State::Free;
            c.dirty = false;
            c.wheel_due = NOT_FILED;
            self.ctx.free.borrow_mut().push(slot);
            self.ctx.shared.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Accepts what the listening socket has; this worker keeps its share.
    fn accept_ready(&mut self) {
        let Some(l) = self.listener.clone() else { return };
        self.accept_retry = None;
        match l.accept_all(self.ctx.shared.index, |a| self.open(a)) {
            Drained::Empty => self.accept_more = false,
            Drained::More => self.accept_more = true,
            Drained::Retry => {
                self.accept_more = false;
                self.accept_retry = Some(Instant::now() + accept::RETRY);
            }
        }
    }

    /// Takes connections handed over by other workers.
    fn take_new(&mut self) {
        while let Some(a) = self.ctx.shared.accept_q.pop() {
            if self.stopping {
                sys::close_reset(a.fd);
                self.ctx.shared.count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            self.open(a);
        }
    }

    fn open(&mut self, a: sys::Accepted) {
        let ctx = &self.ctx;
        let slot = match ctx.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let mut slab = ctx.slab.borrow_mut();
                if slab.len() as u32 >= MAX_SLOTS {
                    drop(slab);
                    log::error!("worker {}: connection table full", ctx.shared.index);
                    sys::close_reset(a.fd);
                    ctx.shared.count.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                let s = slab.len() as u32;
                let mut c = Box::new(Conn::new(s, ctx.cworker));
                c.out_buf = ctx.scratch.as_ptr() as *mut std::ffi::c_char;
                slab.push(Box::into_raw(c));
                s
            }
        };
        let p = ctx.conn(slot).expect("slot just allocated");
        // SAFETY: live slab pointer, no other reference held.
        let c = unsafe { &mut *p };
        c.generation = c.generation.wrapping_add(1) & 0xff_ffff;
        let id = ConnId::new(ctx.server_id, ctx.shared.index, slot, c.generation);
        c.bufev.store(id.as_raw() as usize, Ordering::Release);
        c.fd = a.fd;
        c.cip = a.ip;
        c.cport = a.port;
        c.err_type = 0;
        c.user = std::ptr::null_mut();
        c.in_buf = std::ptr::null_mut();
        c.in_buf_len = 0;
        c.out_buf_len = 0;
        c.next = std::ptr::null_mut();
        c.state = State::Open;
        c.peer_eof = false;
        c.last_read = ctx.now.get();
        c.wheel_due = NOT_FILED;
        let token = Token(slot as usize | ((c.generation as usize) << 32));
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&a.fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("register connection: {}", e);
            c.state = State::Closed;
            sys::close(a.fd);
            c.fd = -1;
            ctx.to_free.borrow_mut().push(slot);
            return;
        }
        if ctx.read_timeout > 0 {
            let due = c.last_read + ctx.read_timeout + 1;
            ctx.file_timer(c, due);
        }
        ctx.service.connected(ctx, p);
    }

    fn take_cmds(&mut self) {
        while let Some(cmd) = self.ctx.shared.cmds.pop() {
            match cmd {
                Cmd::Stop => self.stopping = true,
                cmd => {
                    if let Cmd::Write(_, ref data) = cmd {
                        self.ctx.shared.cmd_bytes.fetch_sub(data.len(), Ordering::Relaxed);
                    }
                    self.ctx.apply(cmd);
                }
            }
        }
    }

    /// Reads everything the socket has, dispatching complete packets.
    /// `hup`: the event also reported the peer's end of stream (or an
    /// error), so reading goes on to `EOF` even after a short read.
    fn read(&mut self, p: *mut Conn, generation: u32, hup: bool) {
        for _ in 0..READS_PER_TURN {
            // SAFETY: live slab pointer; the reference is dropped before any
            // callback runs (dispatch works from the raw pointer).
            let c = unsafe { &mut *p };
            if c.state != State::Open {
                return;
            }
            let carried = proto::carry_in(&mut c.partial, &mut self.rbuf);
            let n = match sys::recv(c.fd, &mut self.rbuf[carried..]) {
                Io::Done(0) => {
                    c.peer_eof = true;
                    self.ctx.close(p, AKG_CLOSED);
                    return;
                }
                Io::Done(n) => n,
                Io::WouldBlock => {
                    proto::carry_out(&mut c.partial, &self.rbuf[..carried]);
                    return;
                }
                Io::Err(e) => {
                    log::debug!("recv on connection {}: {}", c.ind, e);
                    self.ctx.close(p, AKG_ERROR);
                    return;
                }
            };
            c.last_read = self.ctx.now.get();
            let avail = carried + n;
            let Some(used) = self.dispatch(p, avail) else {
                return;
            };
            // SAFETY: as above; the callbacks have returned.
            let c = unsafe { &mut *p };
            if used < avail && (carried == 0 || used > 0) {
                // A new packet began in this read.
                c.packet_start = self.ctx.now.get();
            }
            proto::carry_out(&mut c.partial, &self.rbuf[used..avail]);
            if n < RBUF - carried && !hup {
                // A short read drained the socket; edge-triggered readiness
                // reports any later data (or end of stream) as a new event.
                return;
            }
        }
        // SAFETY: live slab pointer, read only.
        let slot = unsafe { (*p).ind };
        self.again.push((slot, generation));
    }

    /// Dispatches the complete packets at the start of the read buffer.
    /// Returns the bytes consumed, or `None` if the connection closed or
    /// stopped being served.
    fn dispatch(&mut self, p: *mut Conn, avail: usize) -> Option<usize> {
        let ctx = &self.ctx;
        let mut verdict = Verdict::Continue;
        let mut last = None;
        let end = proto::scan(&mut self.rbuf[..avail], ctx.stx, |h, rest| {
            // SAFETY: live slab pointer; the writes end before the callback.
            unsafe {
                (*p).in_buf = rest.as_mut_ptr().cast();
                (*p).in_buf_len = rest.len().min(u16::MAX as usize) as u16;
            }
            verdict = ctx.service.packet(ctx, p, h, &mut rest[..h.pkglen as usize]);
            last = Some(h);
            // SAFETY: the callback has returned; no other reference remains.
            let open = unsafe {
                (*p).in_buf_len = 0;
                (*p).state == State::Open
            };
            open && verdict == Verdict::Continue
        });
        match end {
            Scan::Used(used) => Some(used),
            Scan::Stopped => {
                // SAFETY: live slab pointer, read only.
                if unsafe { (*p).state } == State::Open {
                    if verdict == Verdict::NoHandler {
                        let h = last.expect("a packet was dispatched");
                        log::warn!("invalid akg_id: {} len {}", h.akg_id, h.pkglen);
                        ctx.close(p, AKG_CLOSED);
                    } else {
                        ctx.close(p, AKG_ERROR);
                    }
                }
                None
            }
            Scan::Bad(BadHead::Malformed, h, off) => {
                log::error!(
                    "pkg error, length: {} pkglen: {} stx: 0x{:x}",
                    avail - off,
                    h.pkglen,
                    h.stx
                );
                ctx.close(p, AKG_CLOSED);
                None
            }
            Scan::Bad(BadHead::ReservedId, h, _) => {
                log::warn!("invalid akg_id: {} len {}", h.akg_id, h.pkglen);
                ctx.close(p, AKG_CLOSED);
                None
            }
        }
    }

    /// Times out connections whose deadline has passed.
    fn expire(&mut self) {
        let now = self.ctx.now.get();
        let ctx = &self.ctx;
        let mut wheel = ctx.wheel.borrow_mut();
        let mut due_now = std::mem::take(&mut self.expired);
        wheel.expire(now, &mut Vec::new(), |wheel, slot, tick| {
            let Some(p) = ctx.conn(slot) else { return };
            // SAFETY: live slab pointer; no callback runs in here.
            let c = unsafe { &mut *p };
            if c.state != State::Open || c.wheel_due != tick {
                return;
            }
            c.wheel_due = match c.deadline(ctx.read_timeout, ctx.write_timeout) {
                Some(due) if due > now => wheel.file(slot, due),
                Some(_) => {
                    due_now.push(slot);
                    NOT_FILED
                }
                None => NOT_FILED,
            };
        });
        drop(wheel);
        for &slot in &due_now {
            if let Some(p) = self.ctx.conn(slot) {
                self.ctx.close(p, AKG_TIMEOUT);
            }
        }
        due_now.clear();
        self.expired = due_now;
    }

    /// Drains lingering sockets; closes those whose peer finished, whose
    /// time is up, or all of them when `all`. Runs once per tick.
    fn drain_lingering(&mut self, all: bool) {
        let now = self.ctx.now.get();
        if !all && self.last_linger_tick == now {
            return;
        }
        self.last_linger_tick = now;
        self.ctx.linger.borrow_mut().retain(|&(fd, until)| {
            let done = all || now >= until || sys::discard_input(fd, 256 * 1024);
            if done {
                sys::close(fd);
            }
            !done
        });
    }

    /// Closes every connection (callbacks run) and releases the slab.
    fn shutdown(&mut self) {
        let n = self.ctx.slab.borrow().len();
        for slot in 0..n as u32 {
            if let Some(p) = self.ctx.conn(slot) {
                self.ctx.close(p, AKG_CLOSED);
            }
        }
        self.take_new();
        while let Some(cmd) = self.ctx.shared.cmds.pop() {
            if let Cmd::Write(_, d) = cmd {
                self.ctx.shared.cmd_bytes.fetch_sub(d.len(), Ordering::Relaxed);
            }
        }
        self.end_turn();
        self.drain_lingering(true);
        for p in self.ctx.slab.borrow_mut().drain(..) {
            // SAFETY: every slab entry came from `Box::into_raw` and no
            // reference to it remains once the loop is done.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
