//! The part of a worker that callbacks may reach again while it runs them
//! (through `Conn` methods, `send_to` / `close_id`, or the C functions):
//! the connection table, each connection's output, closing, and the
//! deferral of operations on a connection a Rust callback holds. Everything
//! mutable is in `Cell`/`RefCell`, and no borrow is held while a callback
//! runs.
//!
//! Also the thread-local that tells library calls which worker (if any)
//! runs on the current thread.
//!
//! Uses: conn, records (the `WORKER` a context runs), mailbox (`Cmd`),
//! service, proto, sys.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::conn::record::{Conn, State};
use crate::conn::table::ConnTable;
use crate::mailbox::{Cmd, Mailbox};
use crate::proto::{AKG_ERROR, Head};
use crate::records::CWorker;
use crate::service::{Service, Verdict};
use crate::sys::{self, Io};

/// Size of the per-worker scratch area behind `CONN.out_buf`.
pub(crate) const SCRATCH: usize = 2048;
/// Output buffers kept for reuse, and the largest capacity kept.
const POOL_MAX: usize = 256;
const POOL_BUF_MAX: usize = 16 * 1024;
/// Most sockets one worker keeps lingering; past it they close at once.
const LINGER_MAX: usize = 4096;
/// A lingering socket is closed after at most this many ticks (seconds).
pub(crate) const LINGER_TICKS: u32 = 2;
/// Most input discarded from a closing socket per look.
pub(crate) const DISCARD_MAX: usize = 256 * 1024;

/// No Rust callback holds a connection.
const NOT_BUSY: u32 = u32::MAX;

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

/// See the module docs.
pub(crate) struct Ctx {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) server_id: usize,
    pub(super) cworker: *mut CWorker,
    service: Arc<dyn Service>,
    /// `service.holds_conn()`, read once.
    holds_conn: bool,
    stx: u32,
    out_cap: usize,
    pub(super) read_timeout: u32,
    pub(super) write_timeout: u32,
    pub(super) table: ConnTable,
    /// Slots with output to send at the end of the turn.
    dirty: RefCell<Vec<u32>>,
    /// Slots closed during the turn, freed at its end.
    pub(super) to_free: RefCell<Vec<u32>>,
    /// The current tick (seconds since the worker started).
    pub(super) now: Cell<u32>,
    pool: RefCell<Vec<Vec<u8>>>,
    /// Slot held by a running Rust callback, or `NOT_BUSY`.
    busy: Cell<u32>,
    /// Operations on the held connection, run when its callback returns.
    deferred: RefCell<Vec<Cmd>>,
    /// Closed sockets still draining input (fd, tick to close by).
    pub(super) linger: RefCell<Vec<(i32, u32)>>,
}

/// What [`Ctx::new`] needs to know of its server.
pub(super) struct CtxConfig {
    pub server_id: usize,
    pub stx: u32,
    pub out_cap: usize,
    pub read_timeout: u32,
    pub write_timeout: u32,
}

impl Ctx {
    /// A worker context with an empty table whose records point to
    /// `cworker` and `scratch`.
    pub(super) fn new(
        mailbox: Arc<Mailbox>,
        cworker: *mut CWorker,
        scratch: *mut std::ffi::c_char,
        service: Arc<dyn Service>,
        cfg: CtxConfig,
    ) -> Ctx {
        let index = mailbox.index;
        Ctx {
            holds_conn: service.holds_conn(),
            mailbox,
            server_id: cfg.server_id,
            cworker,
            service,
            stx: cfg.stx,
            out_cap: cfg.out_cap,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            table: ConnTable::new(cfg.server_id, index, cworker, scratch),
            dirty: RefCell::new(Vec::new()),
            to_free: RefCell::new(Vec::new()),
            now: Cell::new(0),
            pool: RefCell::new(Vec::new()),
            busy: Cell::new(NOT_BUSY),
            deferred: RefCell::new(Vec::new()),
            linger: RefCell::new(Vec::new()),
        }
    }

    /// The server's stx.
    pub(crate) fn stx(&self) -> u32 {
        self.stx
    }

    /// The live connection `id` names on this worker.
    pub(crate) fn lookup(&self, id: crate::conn::ConnId) -> Option<*mut Conn> {
        self.table.lookup(id)
    }

    /// True while a Rust callback holds `&mut` to the connection in `slot`:
    /// operations on it by id are then deferred until the callback returns.
    pub(crate) fn is_busy(&self, slot: u32) -> bool {
        self.busy.get() == slot
    }

    /// Defers an operation on a connection held by a callback.
    pub(crate) fn defer(&self, cmd: Cmd) {
        self.deferred.borrow_mut().push(cmd);
    }

    /// Runs one application callback on the connection at `p`: marks it
    /// held if the service makes `&mut Conn` of it (running what was
    /// deferred meanwhile once the outermost callback returns), and turns a
    /// panic of the callback into `None` after logging it with `what`
    /// (which names the callback and packet). The connection is left as the
    /// callback left it; the caller decides what a panic means for it.
    fn callback<R>(&self, p: *mut Conn, what: impl FnOnce() -> String, f: impl FnOnce() -> R) -> Option<R> {
        let prev = if self.holds_conn {
            // SAFETY: live slab pointer (or derived from the `&mut` of an
            // enclosing callback, not in use while this one runs); read only.
            self.busy.replace(unsafe { (*p).ind })
        } else {
            NOT_BUSY
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if self.holds_conn {
            self.busy.set(prev);
            if prev == NOT_BUSY {
                self.run_deferred();
            }
        }
        r.map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            // SAFETY: live slab pointer, read only.
            let slot = unsafe { (*p).ind };
            log::error!(
                "worker {}: {} panicked on connection {slot}: {msg}; closing it as error",
                self.mailbox.index,
                what()
            );
        })
        .ok()
    }

    fn run_deferred(&self) {
        loop {
            let cmds = std::mem::take(&mut *self.deferred.borrow_mut());
            if cmds.is_empty() {
                break;
            }
            for cmd in cmds {
                // Only writes and closes are ever deferred.
                let _ = self.apply(cmd);
            }
        }
    }

    /// The connected callback for the new connection at `p`.
    pub(super) fn connected(&self, p: *mut Conn) {
        if self
            .callback(p, || "the connect handler".into(), || self.service.connected(p))
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
            || format!("the handler of packet {:#06x}", head.akg_id),
            || self.service.packet(p, head, pkt),
        )
        .unwrap_or(Verdict::Stop)
    }

    /// Applies a command: a write or close to a live connection (one that
    /// has closed meanwhile is left alone). Returns true for `Stop`, which
    /// is the loop's to act on.
    pub(crate) fn apply(&self, cmd: Cmd) -> bool {
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
            Cmd::Stop => return true,
        }
        false
    }

    /// Appends `data` to the output of the connection at `p` (see
    /// `Conn::send`). `p` is a live slab pointer (or derived from the
    /// `&mut` a callback holds), and no other reference to it is in use.
    /// Returns false if the connection is closed, or (closing it as an
    /// error) if the output would pass its cap.
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
                self.table.file_timer(c, due);
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

    /// True if the connection at `p` is open with output not yet sent.
    pub(super) fn has_output(&self, p: *mut Conn) -> bool {
        // SAFETY: live slab pointer; read only.
        unsafe { (*p).state == State::Open && ((*p).out_pos as usize) < (*p).out.len() }
    }

    /// Sends as much pending output as the socket takes now.
    pub(super) fn flush(&self, p: *mut Conn) {
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

    /// Sends the pending output of every connection that has some, until
    /// nothing new is queued.
    pub(super) fn flush_dirty(&self) {
        loop {
            let list = std::mem::take(&mut *self.dirty.borrow_mut());
            if list.is_empty() {
                break;
            }
            for &slot in &list {
                let Some(p) = self.table.get(slot) else { continue };
                // SAFETY: live slab pointer, no other reference held.
                let open = unsafe {
                    (*p).dirty = false;
                    (*p).state == State::Open
                };
                if open {
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
        // A panic is logged by `callback`; the connection closes anyway.
        let _ = self.callback(
            p,
            || format!("the close handler ({reason:#06x})"),
            || self.service.closed(p, reason),
        );
        // SAFETY: the callback has returned; no other reference remains.
        let c = unsafe { &mut *p };
        c.state = State::Closed;
        if reason != AKG_ERROR && !c.peer_eof {
            // Deliver what was queued before the close (lingering close):
            // input that arrives unread would make `close` answer with a
            // reset that destroys our last replies. So discard what is
            // waiting, send, shut our side (FIN after the data), and keep
            // the socket draining for a moment before closing it.
            let eof = sys::discard_input(c.fd, DISCARD_MAX);
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
