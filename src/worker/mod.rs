//! A worker: one thread, one `mio::Poll`, one connection table, one timing
//! wheel. Workers accept new connections themselves (see `accept`); a
//! connection never leaves the worker it was placed on.
//!
//! Inside a turn of the loop the worker reads every ready socket into its
//! one read buffer until the kernel has nothing more, dispatches complete
//! packets in place, sends each connection's replies right after reading
//! it, and at the end of the turn sends what callbacks queued elsewhere and
//! frees the slots closed in the turn. Other threads talk to the worker only
//! through its mailbox.
//!
//! * `ctx`: what callbacks may reach again (output, closing, held
//!   connections).
//! * `closing`: sockets of closed connections still delivering their
//!   output, or waiting after FIN for the peer to acknowledge it.
//! * `header`: the PROXY protocol header a connection starts with when
//!   the server expects one.
//! * this file: the loop (events, reads, dispatch, timeouts, shutdown).
//!
//! Uses: accept, mailbox, pool, service, conn, records, proto, sys, stats.

mod closing;
mod ctx;
mod header;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

pub(crate) use ctx::{Ctx, SCRATCH, on_owner, on_worker, with_owner};

use crate::accept::{self, Drained, Listener};
use crate::conn::ConnId;
use crate::conn::input::{self, Input};
use crate::conn::record::Conn;
use crate::conn::table::State;
use crate::mailbox::{Cmd, Mailbox, PoolEnd};
use crate::pool::Pool;
use crate::proto::{AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT, Bad, BadHead, Head, Scan};
use crate::records::CWorker;
use crate::service::{Config, Service, Verdict};
use crate::stats;
use crate::sys;
use ctx::{CtxConfig, DRAIN_TOKEN};

const WAKER: Token = Token(usize::MAX);
/// The shared listening socket (see `accept`), watched in every poll.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
/// Size of the per-worker read buffer.
const RBUF: usize = 64 * 1024;
/// At most this many reads per connection per turn before others get a go.
const READS_PER_TURN: usize = 16;
/// At stop, how long a worker goes on delivering the output of the
/// connections it closed before it resets what is left.
pub(crate) const STOP_FLUSH: Duration = Duration::from_secs(3);
/// At stop, how long a worker waits for the pool handlers of its
/// connections (within the server's 5 s stop bound).
const POOL_WAIT: Duration = Duration::from_millis(4500);
/// At stop, how long the output of a connection whose pool handler
/// returned late may take (within `POOL_WAIT`).
const POOL_FLUSH: Duration = Duration::from_millis(300);

/// Creates a worker's poll and mailbox.
pub(crate) fn new_worker(index: usize) -> std::io::Result<(Poll, Arc<Mailbox>)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    Ok((poll, Arc::new(Mailbox::new(index, Box::new(waker)))))
}

/// The event token of the connection in `slot` of `generation`: events for
/// a slot's previous occupant are recognised as stale.
fn token(slot: u32, generation: u32) -> Token {
    Token(slot as usize | ((generation as usize) << 32))
}

/// What a worker shares with the others.
pub(crate) struct Shared {
    /// The listening socket it accepts from.
    pub listener: Option<Arc<Listener>>,
    /// The pool its blocking handlers run on.
    pub pool: Option<Arc<Pool>>,
}

/// The worker loop's own state.
pub(crate) struct Worker {
    ctx: Ctx,
    poll: Poll,
    rbuf: Box<[u8]>,
    /// The area every `CONN.out_buf` of this worker points to.
    _scratch: Box<[std::cell::UnsafeCell<u8>]>,
    /// Connections that still had data when their read budget ran out.
    again: Vec<(u32, u32)>,
    start: Instant,
    stopping: bool,
    expired: Vec<u32>,
    /// The tick `closing` was last looked at.
    last_closing_tick: u32,
    /// The listening socket this worker accepts from.
    listener: Option<Arc<Listener>>,
    /// When to try `accept` again after an error.
    accept_retry: Option<Instant>,
    /// The last `accept` call stopped at its limit: go on next turn.
    accept_more: bool,
    /// Busy turns to go without yielding: set after a yield found nothing
    /// new (see `wait`).
    skip_yields: u32,
}

impl Worker {
    /// Worker `mailbox.index` of server `server_id`, polling with `poll`,
    /// running `service`'s callbacks (its blocking ones on the shared
    /// pool), accepting from the shared listener. Its C record is
    /// `cworker`.
    pub(crate) fn new(
        poll: Poll,
        mailbox: Arc<Mailbox>,
        server_id: usize,
        cworker: *mut CWorker,
        service: Arc<dyn Service>,
        cfg: &Config,
        shared: Shared,
    ) -> std::io::Result<Box<Worker>> {
        let Shared { listener, pool } = shared;
        let scratch: Box<[std::cell::UnsafeCell<u8>]> =
            (0..SCRATCH).map(|_| std::cell::UnsafeCell::new(0)).collect();
        let start = mailbox.beat.epoch;
        let ctx = Ctx::new(
            mailbox,
            cworker,
            scratch.as_ptr() as *mut std::ffi::c_char,
            service,
            poll.registry().try_clone()?,
            CtxConfig {
                server_id,
                framing: cfg.framing.clone(),
                stx: cfg.stx,
                out_cap: cfg.output_limit,
                read_timeout: cfg.read_timeout,
                write_timeout: cfg.write_timeout,
                pool,
                proxy: cfg.proxy_protocol,
                proxy_sources: cfg.proxy_sources.clone().into(),
            },
        );
        Ok(Box::new(Worker {
            ctx,
            poll,
            rbuf: vec![0u8; RBUF].into_boxed_slice(),
            _scratch: scratch,
            again: Vec::new(),
            start,
            stopping: false,
            expired: Vec::new(),
            last_closing_tick: 0,
            listener,
            accept_retry: None,
            accept_more: false,
            skip_yields: 0,
        }))
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
        ctx::set_current(&self.ctx);
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
            self.tick();
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if t == LISTENER {
                    self.accept_ready();
                    continue;
                }
                if t.0 & DRAIN_TOKEN != 0 {
                    self.ctx.drain_event((t.0 & !DRAIN_TOKEN) as u32);
                    continue;
                }
                let (slot, generation) = (t.0 as u32, (t.0 >> 32) as u32);
                let Some(p) = self.ctx.table.live(slot, generation) else {
                    continue;
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(p, generation, ev.is_read_closed() || ev.is_error());
                }
                // Replies made while reading this connection go out now, in
                // one send, so the client can go on while the other ready
                // connections are served (the rest of the turn's output is
                // flushed at its end). The writable case is the same check.
                if self.ctx.has_output(slot) {
                    self.ctx.flush(p);
                }
            }
            for (slot, generation) in std::mem::take(&mut self.again) {
                if let Some(p) = self.ctx.table.live(slot, generation) {
                    self.read(p, generation, true);
                }
            }
            if self.accept_more || self.accept_retry.is_some_and(|t| Instant::now() >= t) {
                self.accept_ready();
            }
            self.expire();
            self.end_turn();
        }
        self.shutdown();
        ctx::clear_current();
        let out = self.ctx.pool_out.get();
        if out > 0 {
            // Pool threads still own records of this table: keep it.
            log::error!(
                "worker {}: {out} pool handler(s) still running at stop; their connections are left open",
                self.ctx.mailbox.index
            );
            std::mem::forget(self);
        }
    }

    /// Starts a turn: publishes the heartbeat (see the server's monitor)
    /// and sets the current tick; on a new tick, times out closing sockets.
    fn tick(&mut self) {
        let elapsed = self.start.elapsed();
        let beat = &self.ctx.mailbox.beat;
        beat.turn
            .store((elapsed.as_millis() as u64).saturating_add(1), Ordering::Relaxed);
        let now = elapsed.as_secs().min(u64::from(u32::MAX)) as u32;
        self.ctx.now.set(now);
        if now != self.last_closing_tick {
            self.last_closing_tick = now;
            self.ctx.check_closing();
        }
    }

    /// Waits for events. After a busy turn the worker first yields its CPU
    /// and looks again without blocking: on a loaded machine the clients
    /// (or the other workers) run meanwhile and usually leave new input, so
    /// the worker goes on without the sleep and wake-up that blocking in
    /// `epoll_wait` costs (a context switch on each side and an
    /// inter-processor interrupt for the wake-up). A yield that found
    /// nothing new is a context switch paid for nothing (connect-and-close
    /// load: 14 % more CPU per connection with a yield after every busy
    /// turn), so the next 8 busy turns go without. Only an idle worker
    /// blocks, so idle CPU stays zero.
    fn wait(&mut self, events: &mut Events, busy: bool) {
        let mut timeout = self.timeout();
        if busy && timeout != Some(Duration::ZERO) {
            if self.skip_yields > 0 {
                self.skip_yields -= 1;
            } else {
                // SAFETY: `sched_yield` takes no arguments and cannot fail.
                unsafe { libc::sched_yield() };
                if self.poll.poll(events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
                    return;
                }
                // The yield bought nothing: go without for a while.
                self.skip_yields = 8;
            }
        }
        let sleep = timeout != Some(Duration::ZERO);
        if sleep {
            // Blocked waiting is no turn: the monitor does not time it.
            self.ctx.mailbox.beat.turn.store(0, Ordering::Relaxed);
        }
        if sleep && !self.ctx.mailbox.prepare_sleep() {
            // Something arrived in the mailbox meanwhile: look, don't block.
            timeout = Some(Duration::ZERO);
        }
        if let Err(e) = self.poll.poll(events, timeout)
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            log::error!("worker {} poll failed: {}", self.ctx.mailbox.index, e);
            std::thread::sleep(Duration::from_millis(10));
        }
        if sleep {
            self.ctx.mailbox.awake();
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
        if !self.ctx.table.has_timers() && self.ctx.closing.borrow().is_empty() {
            return None;
        }
        let next = Duration::from_secs(u64::from(self.ctx.now.get()) + 1);
        Some(next.saturating_sub(self.start.elapsed()) + Duration::from_millis(1))
    }

    /// Sends pending output of every dirty connection and frees the slots
    /// closed during the turn.
    fn end_turn(&mut self) {
        self.ctx.flush_dirty();
        let list = std::mem::take(&mut *self.ctx.to_free.borrow_mut());
        for slot in list {
            if self.ctx.table.release(slot) {
                self.ctx.mailbox.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Accepts what the listening socket has; this worker keeps its share.
    fn accept_ready(&mut self) {
        let Some(l) = self.listener.clone() else { return };
        self.accept_retry = None;
        match l.accept_all(self.ctx.mailbox.index, |a| self.open(a)) {
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
        while let Some(a) = self.ctx.mailbox.accept_q.pop() {
            if self.stopping {
                self.ctx.turn_away(a.fd);
                continue;
            }
            self.open(a);
        }
    }

    /// Serves a new connection (its place in the count already taken).
    fn open(&mut self, a: sys::Accepted) {
        let ctx = &self.ctx;
        if ctx.proxy != 0 && !ctx.trusted(a.peer) {
            log::warn!(
                "connection from {}: not a trusted source of PROXY protocol headers: refused",
                a.peer
            );
            ctx.turn_away(a.fd);
            stats::add(&ctx.mailbox.stats.refused, 1);
            return;
        }
        let Some(p) = ctx.table.open(a.fd, a.peer, ctx.now.get()) else {
            log::error!("worker {}: connection table full", ctx.mailbox.index);
            ctx.turn_away(a.fd);
            return;
        };
        // SAFETY: live slab pointer, no other reference held.
        let c = unsafe { &mut *p };
        let slot = c.ind;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&a.fd),
            token(slot, ctx.table.generation(slot)),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("register connection: {}", e);
            ctx.table.set_state(slot, State::Closed);
            sys::close(a.fd);
            c.fd = -1;
            ctx.to_free.borrow_mut().push(slot);
            return;
        }
        stats::add(&ctx.mailbox.stats.accepted, 1);
        if ctx.proxy != 0 {
            // Announced once its PROXY protocol header is read (`header`).
            let due = c.last_read.saturating_add(ctx.header_timeout).saturating_add(1);
            ctx.table.with_slot(slot, |s| s.header_due = due);
            ctx.table.file_timer(slot, due);
            return;
        }
        if ctx.read_timeout > 0 {
            let due = c.last_read.saturating_add(ctx.read_timeout).saturating_add(1);
            ctx.table.file_timer(slot, due);
        }
        ctx.connected(p);
    }

    /// Applies what other threads sent.
    fn take_cmds(&mut self) {
        while let Some(cmd) = self.ctx.mailbox.take_cmd() {
            match cmd {
                Cmd::Stop => self.stopping = true,
                Cmd::PoolDone(id, end) => self.pool_done(id, end),
                Cmd::Write(..) | Cmd::Close(..) => self.ctx.apply(cmd),
            }
        }
    }

    /// The pool handler of connection `id`'s packet has returned as `end`
    /// says (or, at stop, its packet was taken back unrun): the record is
    /// the worker's again. Applies an end asked for meanwhile; else, while
    /// stopping, closes the connection; else goes on with its next packets.
    fn pool_done(&mut self, id: ConnId, end: PoolEnd) {
        let ctx = &self.ctx;
        ctx.pool_out.set(ctx.pool_out.get() - 1);
        stats::sub(&ctx.mailbox.stats.pool_queued, 1);
        let slot = id.slot();
        // A slot in the pool is never freed, so this is the connection.
        let Some(p) = ctx.table.lookup_any(id) else {
            debug_assert!(false, "pool done for a freed slot");
            return;
        };
        let pending = ctx.table.with_slot(slot, |s| {
            s.in_pool = false;
            s.pool_end.take()
        });
        let now = ctx.now.get();
        // SAFETY: live slab pointer; the pool thread is done with it and no
        // other reference is in use. The handler's time was no idle time.
        unsafe {
            (*p).last_read = now;
            (*p).partial.restart(now);
        }
        // Its timers (the write timeout of pending output, the read
        // timeout) count again.
        if let Some(due) = ctx.table.deadline(slot, ctx.read_timeout, ctx.write_timeout) {
            ctx.table.file_timer(slot, due);
        }
        if let Some((reason, abort)) = pending {
            ctx.end_after_pool(p, reason, abort);
            return;
        }
        match end {
            _ if self.stopping => ctx.close(p, AKG_CLOSED),
            PoolEnd::Continue => self.resume(p, id.generation()),
            PoolEnd::Stop => ctx.close(p, AKG_ERROR),
            PoolEnd::NoHandler(akg_id) => {
                log::warn!("invalid akg_id: {akg_id} (its pool handler was removed)");
                ctx.close(p, AKG_CLOSED);
            }
        }
    }

    /// Dispatches the packets that came after the one a pool handler ran,
    /// then reads the socket again (its readiness may have been reported
    /// meanwhile).
    fn resume(&mut self, p: *mut Conn, generation: u32) {
        let ctx = &self.ctx;
        // SAFETY: live slab pointer; read only.
        let slot = unsafe { (*p).ind };
        let mut d = Dispatched::new();
        let got = input::rescan(p, &mut self.rbuf, ctx.framing(), ctx.stx(), |h, rest, len| {
            dispatch(ctx, p, slot, &mut d, h, rest, len)
        });
        if Self::dispatched(ctx, p, &self.rbuf, got, d) && ctx.is_open(slot) {
            self.again.push((slot, generation));
        }
    }

    /// After one read (or rescan) of the connection at `p`: hands a packet
    /// taken aside to the pool, or closes a connection whose input
    /// stopped. Returns true if the connection may be read further.
    fn dispatched(ctx: &Ctx, p: *mut Conn, rbuf: &[u8], got: Input, d: Dispatched) -> bool {
        match got {
            Input::Stopped {
                end: Scan::Stopped(at),
                avail,
            } if d.pooled.is_some() => {
                let (head, pkt) = d.pooled.expect("checked");
                // A pooled packet is a `HEAD` packet, never longer than the
                // read buffer: what followed it is in `rbuf`.
                ctx.to_pool(p, head, pkt, &rbuf[at.min(avail)..avail]);
                false
            }
            Input::Stopped { end, avail } => {
                Self::stopped(ctx, p, end, avail, d.verdict, d.last);
                false
            }
            _ => true,
        }
    }

    /// Reads everything the socket has, dispatching complete packets.
    /// `hup`: the event also reported the peer's end of stream (or an
    /// error), so reading goes on to `EOF` even after a short read.
    fn read(&mut self, p: *mut Conn, generation: u32, hup: bool) {
        let ctx = &self.ctx;
        // SAFETY: live slab pointer; read only.
        let slot = unsafe { (*p).ind };
        if ctx.awaits_header(slot) && header::read(ctx, p, hup) != header::Header::Done {
            return;
        }
        for _ in 0..READS_PER_TURN {
            if !ctx.is_open(slot) || ctx.in_pool(slot) {
                // In the pool: read again when its handler returns.
                return;
            }
            let mut d = Dispatched::new();
            let got = input::read_once(
                p,
                &mut self.rbuf,
                ctx.framing(),
                ctx.stx(),
                ctx.now.get(),
                |fd, buf| {
                    let r = sys::recv(fd, buf);
                    if let sys::Io::Done(n) = r {
                        stats::add(&ctx.mailbox.stats.bytes_in, n as u64);
                    }
                    r
                },
                |h, rest, len| dispatch(ctx, p, slot, &mut d, h, rest, len),
            );
            match got {
                Input::Eof => {
                    // SAFETY: live slab pointer, no other reference held.
                    unsafe { (*p).peer_eof = true };
                    ctx.close(p, AKG_CLOSED);
                    return;
                }
                Input::Drained => return,
                Input::Failed(e) => {
                    if e.kind() == std::io::ErrorKind::OutOfMemory {
                        log::warn!("connection {slot}: {e}: closing");
                    } else {
                        log::debug!("recv on connection {slot}: {e}");
                    }
                    // A balancer ends its health checks with a reset: that
                    // is how they close, not an error.
                    // SAFETY: live slab pointer; read only.
                    let check = unsafe { (*p).balancer } && e.kind() == std::io::ErrorKind::ConnectionReset;
                    // SAFETY: live slab pointer, no other reference held.
                    unsafe { (*p).peer_reset = sys::is_reset(&e) };
                    ctx.abort(p, if check { AKG_CLOSED } else { AKG_ERROR });
                    return;
                }
                Input::Read { full } => {
                    if !full && !hup {
                        // A short read drained the socket; edge-triggered
                        // readiness reports any later data (or end of
                        // stream) as a new event.
                        return;
                    }
                }
                got @ Input::Stopped { .. } => {
                    Self::dispatched(ctx, p, &self.rbuf, got, d);
                    return;
                }
            }
        }
        self.again.push((slot, generation));
    }

    /// Closes a connection whose input stopped being decoded: after a bad
    /// frame, or a frame whose handler failed or had no handler.
    fn stopped(ctx: &Ctx, p: *mut Conn, end: Scan, avail: usize, verdict: Verdict, last: Option<Head>) {
        // SAFETY: live slab pointer, read only.
        let slot = unsafe { (*p).ind };
        // SAFETY: as above.
        let peer = || unsafe { (*p).peer() };
        match end {
            Scan::Used(_) => unreachable!("a complete scan is not a stop"),
            Scan::Stopped(_) => {
                if ctx.is_open(slot) {
                    if verdict == Verdict::NoHandler {
                        match last {
                            Some(h) => log::warn!("invalid akg_id: {} len {}", h.akg_id, h.pkglen),
                            None => log::warn!(
                                "connection {slot} from {}: no frame handler is registered",
                                peer()
                            ),
                        }
                        ctx.close(p, AKG_CLOSED);
                    } else {
                        ctx.close(p, AKG_ERROR);
                    }
                }
            }
            Scan::Bad(Bad::Head(BadHead::Malformed, h), off) => {
                log::error!(
                    "pkg error, length: {} pkglen: {} stx: 0x{:x}",
                    avail - off,
                    h.pkglen,
                    h.stx
                );
                ctx.close(p, AKG_CLOSED);
            }
            Scan::Bad(Bad::Head(BadHead::ReservedId, h), _) => {
                log::warn!("invalid akg_id: {} len {}", h.akg_id, h.pkglen);
                ctx.close(p, AKG_CLOSED);
            }
            Scan::Bad(Bad::TooLong { len }, _) => {
                log::warn!(
                    "connection {slot} from {}: a frame of {len} bytes, over the framing's max_frame: closing",
                    peer()
                );
                ctx.close(p, AKG_ERROR);
            }
            Scan::Bad(Bad::LineTooLong { at_least }, _) => {
                log::warn!(
                    "connection {slot} from {}: a line of at least {at_least} bytes, over the framing's \
                     max_frame: closing",
                    peer()
                );
                ctx.close(p, AKG_ERROR);
            }
            Scan::Bad(Bad::Negative { value }, _) => {
                log::warn!(
                    "connection {slot} from {}: a length field of {value} after adjustment: closing",
                    peer()
                );
                ctx.close(p, AKG_ERROR);
            }
        }
    }

    /// Times out connections whose deadline has passed: output that made
    /// no progress for the write timeout is aborted (the peer is not
    /// reading), a read timeout closes gracefully.
    fn expire(&mut self) {
        let ctx = &self.ctx;
        let now = ctx.now.get();
        let mut due = std::mem::take(&mut self.expired);
        ctx.table
            .expire(now, ctx.read_timeout, ctx.write_timeout, &mut due);
        for &slot in &due {
            if let Some(p) = ctx.table.get(slot) {
                if ctx.awaits_header(slot) {
                    // SAFETY: live slab pointer; read only.
                    let from = unsafe { (*p).peer.addr() };
                    log::warn!(
                        "connection from {from}: no complete PROXY protocol header within {} s: closing",
                        ctx.header_timeout
                    );
                    ctx.drop_unannounced(p, AKG_ERROR);
                } else if ctx.table.write_stalled(slot, ctx.write_timeout, now) {
                    ctx.abort(p, AKG_TIMEOUT);
                } else {
                    ctx.close(p, AKG_TIMEOUT);
                }
            }
        }
        due.clear();
        self.expired = due;
    }

    /// Closes every connection gracefully (callbacks run), delivers what
    /// they had queued for at most [`STOP_FLUSH`], then resets what is left.
    /// Packets still queued for the pool are taken back unrun; running pool
    /// handlers get up to [`POOL_WAIT`], their connections closing when
    /// they return. The table frees the records when the worker is dropped
    /// (unless a pool handler still holds one: see `run`).
    fn shutdown(&mut self) {
        // Stopping is no turn: the monitor does not time it.
        self.ctx.mailbox.beat.turn.store(0, Ordering::Relaxed);
        // Packets waiting for a pool thread are not run any more.
        for id in self.ctx.pool_cancel() {
            self.pool_done(id, PoolEnd::Stop);
        }
        for slot in 0..self.ctx.table.slots() as u32 {
            if let Some(p) = self.ctx.table.get(slot)
                && !self.ctx.in_pool(slot)
            {
                self.ctx.close(p, AKG_CLOSED);
            }
        }
        // A connection whose handler runs in the pool closes when it
        // returns (`pool_done`), up to `POOL_WAIT`.
        self.take_new();
        self.take_cmds();
        self.end_turn();
        let t0 = Instant::now();
        let mut flush_until = STOP_FLUSH;
        let mut events = Events::with_capacity(256);
        loop {
            let t = t0.elapsed();
            let pool = self.ctx.pool_out.get() > 0 && t < POOL_WAIT;
            if !pool && (self.ctx.closing.borrow().is_empty() || t >= flush_until) {
                break;
            }
            let before = self.ctx.pool_out.get();
            self.take_cmds();
            self.end_turn();
            if self.ctx.pool_out.get() < before {
                // What a late pool handler's connection queued gets a
                // moment to go out too.
                flush_until = flush_until.max(t + POOL_FLUSH).min(POOL_WAIT);
            }
            // Events drive the sending; the kernel's queue draining raises
            // none for sure, so look at every entry often.
            self.ctx.check_closing();
            let wait = Duration::from_millis(20);
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("worker {} poll failed: {}", self.ctx.mailbox.index, e);
                break;
            }
            self.tick();
            for ev in events.iter() {
                if ev.token().0 & DRAIN_TOKEN != 0 && ev.token() != WAKER && ev.token() != LISTENER {
                    self.ctx.drain_event((ev.token().0 & !DRAIN_TOKEN) as u32);
                }
            }
        }
        self.ctx.abandon_closing(t0.elapsed().as_millis());
    }
}

/// What the frame callback saw during one read (or rescan) of a
/// connection.
struct Dispatched {
    /// The last handler's verdict.
    verdict: Verdict,
    /// The last packet's head.
    last: Option<Head>,
    /// A packet for the pool, copied: the scan stopped right after it.
    pooled: Option<(Head, Vec<u8>)>,
}

impl Dispatched {
    fn new() -> Dispatched {
        Dispatched {
            verdict: Verdict::Continue,
            last: None,
            pooled: None,
        }
    }
}

/// The frame callback of the input path for the connection at `p` (in
/// `slot`): runs the handler of one frame, or takes a packet of a blocking
/// handler aside for the pool. Returns whether to go on with the next.
fn dispatch(
    ctx: &Ctx,
    p: *mut Conn,
    slot: u32,
    d: &mut Dispatched,
    h: Option<Head>,
    rest: &mut [u8],
    len: usize,
) -> bool {
    d.last = h;
    if let Some(h) = h
        && ctx.pooled(h.akg_id)
    {
        d.pooled = Some((h, rest[..len].to_vec()));
        stats::add(&ctx.mailbox.stats.packets_in, 1);
        return false;
    }
    // `in_buf_len`: the bytes available from the packet on (as the
    // original), or the frame's length; both capped to 16 bits
    // (`mario_frame_len` has the whole length).
    let avail = if h.is_some() { rest.len() } else { len };
    // SAFETY: live slab pointer; the writes end before the callback.
    unsafe {
        (*p).in_buf = rest.as_mut_ptr().cast();
        (*p).in_buf_len = avail.min(u16::MAX as usize) as u16;
        // Frames are at most `MAX_FRAME_LIMIT` (64 MiB) long.
        (*p).frame_len = len as u32;
    }
    d.verdict = match h {
        Some(h) => ctx.packet(p, h, &mut rest[..len]),
        None => ctx.frame(p, &mut rest[..len]),
    };
    if d.verdict != Verdict::NoHandler {
        stats::add(&ctx.mailbox.stats.packets_in, 1);
    }
    // SAFETY: the callback has returned; no other reference remains.
    unsafe { (*p).in_buf_len = 0 };
    ctx.is_open(slot) && d.verdict == Verdict::Continue
}
