//! The part of a worker that callbacks may reach again while it runs them
//! (through `Conn` methods, `send_to` / `close_id`, or the C functions):
//! the connection table, each connection's output, closing, and the
//! sockets of closed connections still delivering their output. Everything
//! mutable is in `Cell`/`RefCell`, and no borrow is held while a callback
//! runs.
//!
//! # Closing
//!
//! A **graceful** close (every close the application or the peer asks
//! for: `close_conn` with any reason, `Conn::close`, `close_id`, a handler
//! returning non-zero, the peer's end of stream, a read timeout, bad
//! input, server stop) runs the close callback (which may queue a last
//! reply), frees the slot at the end of the turn, and delivers everything
//! queued before it, then FIN: the descriptor lives on (`closing`) until
//! the output is gone. An **abort** (what the library finds broken: a
//! socket error, output over its cap, output that made no progress for the
//! write timeout) runs the close callback (which may not queue anything)
//! and resets the connection at once.
//!
//! # Held connections
//!
//! While a Rust handler holds `&mut Conn` (the service's `holds_conn`),
//! nothing else may touch that record. Writes by id never do (they go to
//! the slot's bookkeeping, in order with the handler's own writes); a close
//! by id of a held connection marks it `Doomed` (further output refused)
//! and runs once no callback runs. So does the reset of a connection whose
//! output a write made in any callback (C or Rust) pushed over its cap:
//! its close callback never runs inside the write.
//!
//! Also the thread-local that tells library calls which worker (if any)
//! runs on the current thread.
//!
//! # The handler pool
//!
//! A packet of a blocking handler goes to the pool with its connection's
//! record (see `pool`): until the handler returns, the worker reads and
//! dispatches nothing of that connection, and an end asked for meanwhile
//! (by id, by the peer's reset found when sending, by output over its cap,
//! by a stop) is recorded and applied when the pool reports back.
//!
//! Uses: `super::closing` (closed connections' sockets), conn, records (the
//! `WORKER` a context runs), mailbox (`Cmd`), pool, service, proto, sys,
//! stats (the worker's counters).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use ipnet::IpNet;
use std::sync::atomic::Ordering;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::closing::{Closing, DRAIN_IDLE_DEFAULT, Started, Step};
use crate::conn::ConnId;
use crate::conn::input::keep_partial;
use crate::conn::record::Conn;
use crate::conn::table::{Append, ConnTable, State};
use crate::mailbox::{Cmd, Mailbox};
use crate::pool::{Job, Pool};
use crate::proto::{AKG_CLOSED, AKG_CONNECTED, AKG_ERROR, AKG_TIMEOUT, Framing, Head};
use crate::records::CWorker;
use crate::service::{Service, Verdict, panic_message};
use crate::stats;
use crate::sys::{self, Io};

/// Size of the per-worker scratch area behind `CONN.out_buf`.
pub(crate) const SCRATCH: usize = 2048;
/// Event tokens of draining connections: this bit and the drain's index
/// (connection tokens use the low 56 bits; the waker and the listener
/// are checked first).
pub(super) const DRAIN_TOKEN: usize = 1 << 62;

thread_local! {
    /// The worker context of the current thread, while its loop runs.
    static CURRENT: Cell<*const Ctx> = const { Cell::new(std::ptr::null()) };
}

/// Makes `ctx` the current thread's worker context until [`clear_current`].
/// `ctx` must stay where it is (boxed) until then.
pub(super) fn set_current(ctx: &Ctx) {
    CURRENT.with(|c| c.set(ctx));
}

/// Ends [`set_current`].
pub(super) fn clear_current() {
    CURRENT.with(|c| c.set(std::ptr::null()));
}

/// Runs `f` with the current thread's worker context, if this thread runs
/// a worker loop and `pick` accepts it.
fn with_current<R>(pick: impl FnOnce(&Ctx) -> bool, f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: `CURRENT` is set only by a running worker loop to its own
    // context, which lives (boxed, never moved) until the loop clears it;
    // only shared references to it are ever made.
    let ctx = unsafe { &*p };
    pick(ctx).then(|| f(ctx))
}

/// Runs `f` with the current thread's worker context if the worker whose C
/// record is `owner` runs on this thread.
pub(crate) fn on_owner<R>(owner: *const CWorker, f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    with_current(|ctx| std::ptr::eq(ctx.cworker, owner), f)
}

/// Runs `f` on the owning worker's context with `c`. A `&mut Conn` only
/// exists inside a callback on its owner (`Conn` is neither `Send` nor
/// `Sync`), so the owner is always the current thread.
pub(crate) fn with_owner<R>(c: &mut Conn, f: impl FnOnce(&Ctx, &mut Conn) -> R) -> R {
    let owner = c.owner;
    on_owner(owner, |ctx| f(ctx, c)).expect("a Conn is only reachable on its worker thread")
}

/// Runs `f` with the current thread's worker context, if this thread is
/// worker `worker` of server `server_id`.
pub(crate) fn on_worker<R>(server_id: usize, worker: usize, f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    with_current(|ctx| ctx.server_id == server_id && ctx.mailbox.index == worker, f)
}

/// How a connection ends (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Deliver what was queued, then FIN.
    Graceful,
    /// Reset at once: the library found the connection broken.
    Abort,
}

/// See the module docs.
pub(crate) struct Ctx {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) server_id: usize,
    pub(super) cworker: *mut CWorker,
    service: Arc<dyn Service>,
    /// `service.holds_conn()`, read once.
    holds_conn: bool,
    framing: Framing,
    stx: u32,
    out_cap: usize,
    pub(super) read_timeout: u32,
    pub(super) write_timeout: u32,
    pub(super) table: ConnTable,
    /// The worker's poll, for re-registering a draining socket.
    registry: Registry,
    /// Slots with output to send at the end of the turn.
    dirty: RefCell<Vec<u32>>,
    /// Slots closed during the turn, freed at its end.
    pub(super) to_free: RefCell<Vec<u32>>,
    /// The current tick (seconds since the worker started).
    pub(super) now: Cell<u32>,
    /// Slots held by running Rust callbacks (nested callbacks stack up).
    held: RefCell<Vec<u32>>,
    /// Application callbacks running on this worker now (they nest).
    depth: Cell<u32>,
    /// Ends put off until no callback runs, in order: closes by id of a
    /// held connection, and resets of output over its cap caused by a
    /// write made in a callback.
    doomed: RefCell<Vec<(ConnId, u16, Ending)>>,
    /// Sockets of closed connections still finishing.
    pub(super) closing: RefCell<Closing>,
    /// Where blocking handlers run.
    pool: Option<Arc<Pool>>,
    /// Packets of this worker's connections in the pool now.
    pub(super) pool_out: Cell<usize>,
    /// The PROXY protocol versions accepted (`Config::proxy_protocol`); 0:
    /// off.
    pub(super) proxy: u32,
    /// Where PROXY protocol headers are trusted from; empty: anywhere.
    proxy_sources: Arc<[IpNet]>,
    /// Seconds a new connection has to send its PROXY protocol header.
    pub(super) header_timeout: u32,
}

/// What [`Ctx::new`] needs to know of its server.
pub(super) struct CtxConfig {
    pub server_id: usize,
    pub framing: Framing,
    pub stx: u32,
    pub out_cap: usize,
    pub read_timeout: u32,
    pub write_timeout: u32,
    pub pool: Option<Arc<Pool>>,
    pub proxy: u32,
    pub proxy_sources: Arc<[IpNet]>,
}

/// Seconds a new connection has at most to send its PROXY protocol header
/// (less when the read timeout is shorter).
pub(super) const MAX_HEADER_WAIT: u32 = 3;

impl Ctx {
    /// A worker context with an empty table whose records point to
    /// `cworker` and `scratch`; draining sockets are registered with
    /// `registry`.
    pub(super) fn new(
        mailbox: Arc<Mailbox>,
        cworker: *mut CWorker,
        scratch: *mut std::ffi::c_char,
        service: Arc<dyn Service>,
        registry: Registry,
        cfg: CtxConfig,
    ) -> Ctx {
        let index = mailbox.index;
        let closing = Closing::new(mailbox.clone());
        Ctx {
            holds_conn: service.holds_conn(),
            mailbox,
            server_id: cfg.server_id,
            cworker,
            service,
            framing: cfg.framing,
            stx: cfg.stx,
            out_cap: cfg.out_cap,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            table: ConnTable::new(cfg.server_id, index, cworker, scratch),
            registry,
            dirty: RefCell::new(Vec::new()),
            to_free: RefCell::new(Vec::new()),
            now: Cell::new(0),
            held: RefCell::new(Vec::new()),
            depth: Cell::new(0),
            doomed: RefCell::new(Vec::new()),
            closing: RefCell::new(closing),
            pool: cfg.pool,
            pool_out: Cell::new(0),
            proxy: cfg.proxy,
            proxy_sources: cfg.proxy_sources,
            header_timeout: match cfg.read_timeout {
                0 => MAX_HEADER_WAIT,
                rt => rt.min(MAX_HEADER_WAIT),
            },
        }
    }

    /// Whether a PROXY protocol header may come from `peer` (the
    /// balancer's own address): always when no trusted network is set.
    pub(super) fn trusted(&self, peer: std::net::SocketAddr) -> bool {
        self.proxy_sources.is_empty() || self.proxy_sources.iter().any(|n| n.contains(&peer.ip()))
    }

    /// Resets a new connection this worker will not serve (it was counted
    /// in its place when placed) and gives its place back.
    pub(super) fn turn_away(&self, fd: i32) {
        sys::close_reset(fd);
        self.mailbox.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the connection in `slot` still waits for its PROXY protocol
    /// header (not yet announced to the application).
    /// Without the PROXY protocol no slot ever waits: every read and every
    /// close asks, so that case touches no slot.
    pub(super) fn awaits_header(&self, slot: u32) -> bool {
        self.proxy != 0 && self.table.with_slot(slot, |s| s.header_due != 0)
    }

    /// Ends a connection the application never saw (its PROXY protocol
    /// header did not come, or came bad): no callback runs; it counts as
    /// closed for `reason`, and its socket is reset.
    pub(super) fn drop_unannounced(&self, p: *mut Conn, reason: u16) {
        // SAFETY: live slab pointer; no callback ran on it, so nothing
        // else holds a reference.
        let c = unsafe { &mut *p };
        let slot = c.ind;
        if self.table.state(slot) != State::Open {
            return;
        }
        self.count_end(reason);
        c.err_type = reason;
        self.table.set_state(slot, State::Closed);
        sys::close_reset(std::mem::replace(&mut c.fd, -1));
        self.to_free.borrow_mut().push(slot);
    }

    /// Counts a connection's end in the worker's statistics: as a timeout,
    /// an error, or closed (any other reason).
    fn count_end(&self, reason: u16) {
        let st = &self.mailbox.stats;
        stats::add(
            match reason {
                AKG_TIMEOUT => &st.timeouts,
                AKG_ERROR => &st.errors,
                _ => &st.closed,
            },
            1,
        );
    }

    /// Drops the output the connection in `slot` has not sent (an abort).
    fn drop_output(&self, slot: u32) {
        let (out, pos) = self.table.take_output(slot);
        stats::sub(&self.mailbox.stats.out_queued, (out.len() - pos) as u64);
        self.table.recycle(out);
    }

    /// Whether packets of `akg_id` go to the handler pool.
    pub(super) fn pooled(&self, akg_id: u16) -> bool {
        self.pool.is_some() && self.service.pooled(akg_id)
    }

    /// Takes back this worker's packets that wait for a pool thread (at
    /// stop: they never run); see `Pool::cancel`.
    pub(super) fn pool_cancel(&self) -> Vec<ConnId> {
        self.pool
            .as_ref()
            .map(|p| p.cancel(&self.mailbox))
            .unwrap_or_default()
    }

    /// Whether a packet of the connection in `slot` is in the pool.
    pub(super) fn in_pool(&self, slot: u32) -> bool {
        self.table.with_slot(slot, |s| s.in_pool)
    }

    /// Hands packet `pkt` (head `head`) of the connection at `p` to the
    /// pool; `rest`, the bytes read after it, waits in the connection's
    /// carry. If the pool cannot take it, the connection is closed as an
    /// error.
    pub(super) fn to_pool(&self, p: *mut Conn, head: Head, pkt: Vec<u8>, rest: &[u8]) {
        let (slot, id) = {
            // SAFETY: live slab pointer, no other reference in use (no
            // callback runs); the reference ends before the hand-over.
            let c = unsafe { &mut *p };
            keep_partial(&self.framing, &mut c.partial, rest, self.now.get());
            (c.ind, c.id())
        };
        let Some(pool) = &self.pool else {
            self.close(p, AKG_ERROR);
            return;
        };
        let job = Job {
            conn: p,
            id,
            head,
            pkt,
            stx: self.stx,
            big_endian: self.framing.head_big_endian(),
            done: self.mailbox.clone(),
        };
        // The pool reports back through the mailbox, which this thread
        // reads only later: marking the slot after the hand-over is in time.
        match pool.submit(job) {
            Ok(()) => {
                self.table.with_slot(slot, |s| s.in_pool = true);
                self.pool_out.set(self.pool_out.get() + 1);
                stats::add(&self.mailbox.stats.pool_queued, 1);
            }
            // The server is stopping: the packet is not run, as those still
            // queued are not.
            Err(_) if pool.halted() => self.close(p, AKG_CLOSED),
            Err(_) => {
                log::error!("connection {slot}: the handler pool cannot start a thread: closing");
                self.close(p, AKG_ERROR);
            }
        }
    }

    /// Applies the end recorded while the connection at `p` was in the
    /// pool (`abort`: reset rather than close gracefully).
    pub(super) fn end_after_pool(&self, p: *mut Conn, reason: u16, abort: bool) {
        // SAFETY: live slab pointer; read only.
        let slot = unsafe { (*p).ind };
        // An abort refused output meanwhile (`Doomed`); `end` wants it open.
        self.table.set_state(slot, State::Open);
        self.end(p, reason, if abort { Ending::Abort } else { Ending::Graceful });
    }

    /// The server's stx.
    pub(crate) fn stx(&self) -> u32 {
        self.stx
    }

    /// The server's framing.
    pub(crate) fn framing(&self) -> &Framing {
        &self.framing
    }

    /// True while a Rust callback holds `&mut` to the connection in `slot`.
    fn is_held(&self, slot: u32) -> bool {
        self.held.borrow().contains(&slot)
    }

    /// Whether the connection in `slot` is open (not closed, not closing,
    /// no close pending).
    pub(crate) fn is_open(&self, slot: u32) -> bool {
        self.table.state(slot) == State::Open
    }

    /// Runs one application callback (for packet id `id`, see
    /// `Heartbeat::handling`) on the connection at `p`: marks it
    /// held if the service makes `&mut Conn` of it, runs the ends put off
    /// meanwhile once no callback runs any more, and turns a panic of the
    /// callback into `None` after logging it with `what` (which names the
    /// callback and packet). The connection is left as the callback left
    /// it; the caller decides what a panic means.
    fn callback<R>(
        &self,
        p: *mut Conn,
        id: u16,
        what: impl FnOnce() -> String,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        // SAFETY: live slab pointer (or derived from the `&mut` of an
        // enclosing callback, not in use while this one runs); read only.
        let slot = unsafe { (*p).ind };
        if self.holds_conn {
            // Never two callbacks on one connection at once when they make
            // `&mut` of it (and of its state): ends of a held connection
            // are put off (`doom`).
            debug_assert!(!self.is_held(slot), "nested callback on held connection {slot}");
            self.held.borrow_mut().push(slot);
        }
        if self.depth.get() == 0 {
            // For the monitor: what a stalled worker is stuck in.
            self.mailbox.beat.handling.store(u32::from(id), Ordering::Relaxed);
        }
        self.depth.set(self.depth.get() + 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        self.depth.set(self.depth.get() - 1);
        if self.holds_conn {
            self.held.borrow_mut().pop();
        }
        if self.depth.get() == 0 {
            self.run_doomed();
        }
        r.map_err(|payload| {
            let msg = panic_message(payload.as_ref());
            log::error!(
                "worker {}: {} panicked on connection {slot}: {msg}; closing it as error",
                self.mailbox.index,
                what()
            );
        })
        .ok()
    }

    /// Runs the ends put off while callbacks ran (they may put off more,
    /// which run in turn).
    fn run_doomed(&self) {
        loop {
            let due = std::mem::take(&mut *self.doomed.borrow_mut());
            if due.is_empty() {
                return;
            }
            for (id, reason, how) in due {
                self.run_one_doomed(id, reason, how);
            }
        }
    }

    /// Ends connection `id` as put off, if it is still the doomed one.
    fn run_one_doomed(&self, id: ConnId, reason: u16, how: Ending) {
        let slot = id.slot();
        if self.table.generation(slot) == id.generation() && self.table.state(slot) == State::Doomed {
            let p = self.table.get(slot).expect("a doomed slot exists");
            // Let `end` see an open connection again.
            self.table.set_state(slot, State::Open);
            self.end(p, reason, how);
        }
    }

    /// Puts off ending the open connection `id` until no callback runs;
    /// meanwhile it takes no output (an abort drops what it had). False if
    /// it is not open.
    fn doom(&self, id: ConnId, reason: u16, how: Ending) -> bool {
        let slot = id.slot();
        if self.table.generation(slot) != id.generation() || self.table.state(slot) != State::Open {
            return false;
        }
        self.table.set_state(slot, State::Doomed);
        if how == Ending::Abort {
            self.drop_output(slot);
        }
        self.doomed.borrow_mut().push((id, reason, how));
        true
    }

    /// The connected callback for the new connection at `p`.
    pub(super) fn connected(&self, p: *mut Conn) {
        if self
            .callback(
                p,
                AKG_CONNECTED,
                || "the connect handler".into(),
                || self.service.connected(p),
            )
            .is_none()
        {
            self.close(p, AKG_ERROR);
        }
    }

    /// The packet callback for `pkt` (head `head`) on the connection at `p`.
    /// A panic counts as [`Verdict::Stop`].
    pub(super) fn packet(&self, p: *mut Conn, head: Head, pkt: &mut [u8]) -> Verdict {
        self.callback(
            p,
            head.akg_id,
            || format!("the handler of packet {:#06x}", head.akg_id),
            || self.service.packet(p, head, pkt),
        )
        .unwrap_or(Verdict::Stop)
    }

    /// The frame callback for `frame` (not a `HEAD` packet) on the
    /// connection at `p`. A panic counts as [`Verdict::Stop`].
    pub(super) fn frame(&self, p: *mut Conn, frame: &mut [u8]) -> Verdict {
        let len = frame.len();
        self.callback(
            p,
            0,
            || format!("the frame handler ({len} bytes)"),
            || self.service.frame(p, frame),
        )
        .unwrap_or(Verdict::Stop)
    }

    /// Applies a write or close to a live connection (one that has closed
    /// meanwhile is left alone). `Stop` and `PoolDone` are the loop's.
    pub(crate) fn apply(&self, cmd: Cmd) {
        match cmd {
            Cmd::Write(id, data) => {
                self.write(id, &data);
            }
            Cmd::Close(id, reason) => {
                self.close_id(id, reason);
            }
            Cmd::Stop | Cmd::PoolDone(..) => unreachable!("the loop's commands"),
        }
    }

    /// Appends `data` to connection `id`'s output, on this (its) worker:
    /// the one write path, for writes by id and direct ones alike, so they
    /// land in the stream in the order they are made. Returns true when the
    /// bytes were queued: false when the connection is gone or takes no
    /// output, or when the output would pass its cap (the connection is
    /// then closed as an error, and "over its cap" logged).
    pub(crate) fn write(&self, id: ConnId, data: &[u8]) -> bool {
        let (slot, generation) = (id.slot(), id.generation());
        let now = self.now.get();
        match self.table.append(slot, generation, data, self.out_cap, now) {
            Append::Queued { first, mark } => {
                stats::add(&self.mailbox.stats.out_queued, data.len() as u64);
                if first && self.write_timeout > 0 {
                    self.table
                        .file_timer(slot, now.saturating_add(self.write_timeout).saturating_add(1));
                }
                if mark {
                    self.dirty.borrow_mut().push(slot);
                }
                true
            }
            Append::Refused => false,
            Append::OverCap { total } if self.table.state(slot) == State::Closing => {
                // A last write in the close callback: refused, and the
                // graceful close goes on with what was queued.
                log::warn!(
                    "a last write to closing connection {slot} refused: over its cap ({total} bytes, cap {})",
                    self.out_cap
                );
                false
            }
            Append::OverCap { total } => {
                log::warn!(
                    "output of connection {slot} over its cap ({total} bytes pending, cap {}): reset",
                    self.out_cap
                );
                // Never run its close callback inside the write: the
                // application may be iterating over its connections, or
                // hold a lock its close callback takes. Inside a callback
                // the reset waits until it returns.
                let _ = if self.depth.get() > 0 {
                    self.doom(id, AKG_ERROR, Ending::Abort)
                } else {
                    self.end_id(id, AKG_ERROR, Ending::Abort)
                };
                false
            }
        }
    }

    /// Closes connection `id` gracefully on this (its) worker: at once, or
    /// when the handler holding it returns. A connection that has closed
    /// (or is closing) is left alone: returns false.
    pub(crate) fn close_id(&self, id: ConnId, reason: u16) -> bool {
        self.end_id(id, reason, Ending::Graceful)
    }

    /// Ends connection `id` as `how` says: at once, or (with further output
    /// refused) when the handler holding it returns. False if it is not
    /// open.
    fn end_id(&self, id: ConnId, reason: u16, how: Ending) -> bool {
        let slot = id.slot();
        if self.is_held(slot) {
            self.doom(id, reason, how)
        } else if let Some(p) = self.table.lookup(id) {
            self.end(p, reason, how);
            true
        } else {
            false
        }
    }

    /// True if the connection in `slot` is open with output not yet sent.
    pub(super) fn has_output(&self, slot: u32) -> bool {
        self.table
            .with_slot(slot, |s| s.state == State::Open && s.pending() > 0)
    }

    /// Sends as much pending output of the open connection at `p` as the
    /// socket takes now; a send error aborts it.
    pub(super) fn flush(&self, p: *mut Conn) {
        // SAFETY: live slab pointer, read only, outside callbacks.
        let (fd, slot) = unsafe { ((*p).fd, (*p).ind) };
        let now = self.now.get();
        let failed = self.table.with_slot(slot, |s| {
            while s.pending() > 0 {
                match sys::send(fd, &s.out[s.out_pos..]) {
                    Io::Done(n) => {
                        s.out_pos += n;
                        s.last_write = now;
                        stats::add(&self.mailbox.stats.bytes_out, n as u64);
                        stats::sub(&self.mailbox.stats.out_queued, n as u64);
                    }
                    Io::WouldBlock => break,
                    Io::Err(e) => return Some(e),
                }
            }
            if s.pending() > 0 && s.out_pos > s.out.len() / 2 {
                s.out.drain(..s.out_pos);
                s.out_pos = 0;
            }
            None
        });
        if let Some(e) = failed {
            log::debug!("send on connection {slot}: {e}");
            // SAFETY: live slab pointer, no other reference held.
            unsafe { (*p).peer_reset = sys::is_reset(&e) };
            self.end(p, AKG_ERROR, Ending::Abort);
        } else if !self.table.with_slot(slot, |s| s.pending() > 0) {
            let (out, _) = self.table.take_output(slot);
            self.table.recycle(out);
        }
    }

    /// Sends the pending output of every connection that has some, until
    /// nothing new is queued.
    pub(super) fn flush_dirty(&self) {
        loop {
            let list = std::mem::take(&mut *self.dirty.borrow_mut());
            if list.is_empty() {
                break;
            }
            for &slot in &list {
                let open = self.table.with_slot(slot, |s| {
                    s.dirty = false;
                    s.state == State::Open
                });
                if open && let Some(p) = self.table.get(slot) {
                    self.flush(p);
                }
            }
            // Keep the list's allocation for the next turn.
            let mut d = self.dirty.borrow_mut();
            if d.is_empty() {
                *d = list;
                d.clear();
                break;
            }
        }
    }

    /// Closes the connection `c`, on which a callback runs now, with
    /// `reason`, gracefully: `Conn::close`. When a Rust callback holds the
    /// connection (`holds_conn`), the close is put off until no callback
    /// runs (as a close by id of a held connection is): its close callback
    /// never runs inside another callback on the same connection, which
    /// may hold the connection's state. Meanwhile the connection takes no
    /// output and is no longer open; its close reason is `reason` at once.
    /// A connection that is not open is left alone.
    pub(crate) fn close_own(&self, c: &mut Conn, reason: u16) {
        if self.is_held(c.ind) {
            if self.doom(c.id(), reason, Ending::Graceful) {
                c.err_type = reason;
            }
        } else {
            self.close(c as *mut Conn, reason);
        }
    }

    /// Closes the connection at `p` with `reason`, gracefully (see the
    /// module docs). `p` is a live slab pointer or derived from the `&mut`
    /// a callback holds, and no other reference to it is in use. A second
    /// call does nothing.
    pub(crate) fn close(&self, p: *mut Conn, reason: u16) {
        self.end(p, reason, Ending::Graceful);
    }

    /// Aborts the connection at `p` (see the module docs). As for
    /// [`Ctx::close`].
    pub(super) fn abort(&self, p: *mut Conn, reason: u16) {
        self.end(p, reason, Ending::Abort);
    }

    /// Ends the connection at `p`: runs the close callback once, then
    /// finishes the socket as `how` says; the slot is freed at the end of
    /// the turn.
    fn end(&self, p: *mut Conn, reason: u16, how: Ending) {
        // SAFETY: see `close`; read only, no reference made.
        let slot = unsafe { (*p).ind };
        if self.in_pool(slot) {
            if self.table.state(slot) != State::Open {
                // Ended already (an abort put off); no reference to the
                // record while the pool thread has it.
                return;
            }
            // The record is the pool thread's: end when its handler
            // returns (`end_after_pool`); an abort takes no output
            // meanwhile.
            self.table.with_slot(slot, |s| {
                let abort = how == Ending::Abort || s.pool_end.is_some_and(|(_, a)| a);
                let reason = s.pool_end.map_or(reason, |(r, _)| r);
                s.pool_end = Some((reason, abort));
            });
            if how == Ending::Abort {
                self.drop_output(slot);
                self.table.set_state(slot, State::Doomed);
            }
            return;
        }
        if self.awaits_header(slot) {
            // Never announced: no close callback either.
            self.drop_unannounced(p, reason);
            return;
        }
        let slot = {
            // SAFETY: see `close`; the reference ends before the callback,
            // which may reach the connection again.
            let c = unsafe { &mut *p };
            if self.table.state(c.ind) != State::Open {
                return;
            }
            c.err_type = reason;
            c.in_buf_len = 0;
            c.ind
        };
        self.count_end(reason);
        if how == Ending::Abort {
            self.drop_output(slot);
        }
        // During the callback a graceful close takes a last reply; a nested
        // close is a no-op either way.
        self.table.set_state(
            slot,
            match how {
                Ending::Graceful => State::Closing,
                Ending::Abort => State::Aborting,
            },
        );
        // A panic is logged by `callback`; the connection closes anyway.
        let _ = self.callback(
            p,
            reason,
            || format!("the close handler ({reason:#06x})"),
            || self.service.closed(p, reason),
        );
        self.table.set_state(slot, State::Closed);
        // SAFETY: the callback has returned; no other reference remains.
        let c = unsafe { &mut *p };
        let fd = std::mem::replace(&mut c.fd, -1);
        c.partial.clear();
        let (out, pos) = self.table.take_output(slot);
        match how {
            Ending::Abort => {
                stats::sub(&self.mailbox.stats.out_queued, (out.len() - pos) as u64);
                if c.peer_reset {
                    // Already reset by the peer: nothing to send, no
                    // TIME_WAIT to avoid.
                    sys::close(fd);
                } else {
                    sys::close_reset(fd);
                }
                self.table.recycle(out);
            }
            Ending::Graceful => self.finish(fd, out, pos, c.peer_eof),
        }
        self.to_free.borrow_mut().push(slot);
    }

    /// Delivers `out[pos..]` on the socket of a closed connection, then
    /// FIN, and closes it once the kernel has delivered everything; what is
    /// not done at once goes on in `closing`, holding a place in the count.
    fn finish(&self, fd: i32, out: Vec<u8>, pos: usize, peer_eof: bool) {
        let started = self
            .closing
            .borrow_mut()
            .start(fd, out, pos, self.now.get(), peer_eof);
        match started {
            Started::Closed(out) => self.table.recycle(out),
            Started::Entry(i) => {
                let token = Token(DRAIN_TOKEN | i as usize);
                match self.registry.reregister(
                    &mut SourceFd(&fd),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => {
                        self.mailbox.closing.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        log::error!("closed connection: cannot watch its socket ({e}): reset");
                        self.closing.borrow_mut().reset(i);
                    }
                }
            }
        }
    }

    /// An event for closing entry `i`.
    pub(super) fn drain_event(&self, i: u32) {
        let r = self.closing.borrow_mut().event(i, self.now.get());
        match r {
            Step::Pending => {}
            Step::Done(out) => {
                self.table.recycle(out);
                self.mailbox.closing.fetch_sub(1, Ordering::AcqRel);
            }
            Step::Failed => {
                self.mailbox.closing.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Looks at every closing socket (see `Closing::check`); once a tick,
    /// and often during a stop.
    pub(super) fn check_closing(&self) {
        let limit = if self.write_timeout > 0 {
            self.write_timeout
        } else {
            DRAIN_IDLE_DEFAULT
        };
        let ended = self.closing.borrow_mut().check(self.now.get(), limit);
        if ended > 0 {
            self.mailbox.closing.fetch_sub(ended as u32, Ordering::AcqRel);
        }
    }

    /// At stop, after the deadline: see `Closing::abandon`.
    pub(super) fn abandon_closing(&self, waited_ms: u128) {
        let ended = self.closing.borrow_mut().abandon(waited_ms);
        if ended > 0 {
            self.mailbox.closing.fetch_sub(ended as u32, Ordering::AcqRel);
        }
    }
}
