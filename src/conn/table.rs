//! One worker's connection table: the slab of records (allocated in
//! chunks of [`CHUNK`] that never move, so C may keep `CONN *` for a
//! connection's life, and no record pays for an allocation of its own),
//! each slot's bookkeeping ([`Slot`]: generation, state, output), the free
//! list with generation-tagged reuse, and the timing wheel that times
//! connections out. Single-threaded: only the owning worker touches it,
//! and it holds no borrow while a callback runs.
//!
//! The bookkeeping is kept apart from the record on purpose: a Rust
//! handler holds `&mut Conn` while it runs, and a write by id to that same
//! connection (`send_to`, `bufferevent_write`) must not touch the record.
//! Writes by id and direct writes therefore go through the same
//! [`ConnTable::append`] on the slot, in the order they are made.
//!
//! Uses: conn::record, conn::id, records (the owner's `WORKER`), wheel.

use std::cell::RefCell;
use std::ffi::c_char;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::id::{ConnId, GEN_MASK, MAX_SLOTS};
use super::record::Conn;
use crate::records::CWorker;
use crate::wheel::{NOT_FILED, Wheel};

/// Buckets of the timing wheel: deadlines up to this many seconds ahead are
/// filed exactly, later ones are re-filed at the horizon.
const WHEEL_TICKS: usize = 256;

/// Lifecycle of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// In the free list (or retired).
    Free,
    /// Serving a client.
    Open,
    /// A close was asked for while a handler holds the connection: it takes
    /// effect when the handler returns; output is refused meanwhile.
    Doomed,
    /// The close callback of a graceful close is running: it may still
    /// queue a last reply.
    Closing,
    /// The close callback of an abort is running: output is refused.
    Aborting,
    /// Closed (callback ran); freed at the end of the turn.
    Closed,
}

/// A slot's bookkeeping (see the module docs).
#[derive(Debug)]
pub(crate) struct Slot {
    /// Bumped for every connection the slot serves (23 bits).
    pub(crate) generation: u32,
    pub(crate) state: State,
    /// Set while the slot is on the worker's list of connections to flush.
    pub(crate) dirty: bool,
    /// Tick this slot is filed under in the timing wheel, or `NOT_FILED`.
    pub(crate) wheel_due: u32,
    /// Tick of the last write progress (or when output became pending).
    pub(crate) last_write: u32,
    /// Bytes of `out` already sent.
    pub(crate) out_pos: usize,
    /// Output waiting to be written (empty, with no allocation, when idle).
    pub(crate) out: Vec<u8>,
    /// A packet of this connection is in the handler pool: the record is
    /// the pool thread's (see `pool`), nothing is read or dispatched.
    pub(crate) in_pool: bool,
    /// An end asked for while in the pool, applied when the pool handler
    /// returns: the reason, and true for an abort.
    pub(crate) pool_end: Option<(u16, bool)>,
    /// While the connection waits for its PROXY protocol header (it is not
    /// announced to the application yet): the tick by which the header
    /// must be complete. 0: not waiting.
    pub(crate) header_due: u32,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            generation: 0,
            state: State::Free,
            dirty: false,
            wheel_due: NOT_FILED,
            last_write: 0,
            out_pos: 0,
            out: Vec::new(),
            in_pool: false,
            pool_end: None,
            header_due: 0,
        }
    }

    /// Bytes queued and not yet sent.
    pub(crate) fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// What [`ConnTable::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Append {
    /// Queued. `first`: the output was empty before (time its progress);
    /// `mark`: the slot was not yet on the list to flush.
    Queued { first: bool, mark: bool },
    /// The connection is gone (stale id) or does not take output now.
    Refused,
    /// The output would pass the cap: nothing was queued.
    OverCap {
        /// Bytes the output would have held.
        total: usize,
    },
}

/// The connections of one worker (see the module docs).
pub(crate) struct ConnTable {
    server: usize,
    worker: usize,
    owner: *mut CWorker,
    /// What every record's `out_buf` points to (the worker's scratch area).
    scratch: *mut c_char,
    /// The records: chunk `i` holds slots `i * CHUNK ..`, each chunk from
    /// `Box::into_raw` of a boxed slice of `CHUNK` records; freed on drop.
    slab: RefCell<Vec<*mut Conn>>,
    /// Records handed out so far (the slots that exist).
    made: std::cell::Cell<u32>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    wheel: RefCell<Wheel>,
    /// Output buffers kept for reuse.
    pool: RefCell<Vec<Vec<u8>>>,
}

/// Records per chunk of the slab: 64 x 128 bytes, so a worker's records
/// come in allocations of 8 KiB, and a worker with few
/// connections holds at most 63 unused records.
const CHUNK: usize = 64;

/// Output buffers kept for reuse, and the largest capacity kept.
const POOL_MAX: usize = 256;
const POOL_BUF_MAX: usize = 16 * 1024;

impl ConnTable {
    /// An empty table for worker `worker` of server `server`, whose records
    /// name `owner` as their `WORKER` and `scratch` as their `out_buf`.
    pub(crate) fn new(server: usize, worker: usize, owner: *mut CWorker, scratch: *mut c_char) -> ConnTable {
        ConnTable {
            server,
            worker,
            owner,
            scratch,
            slab: RefCell::new(Vec::new()),
            made: std::cell::Cell::new(0),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            wheel: RefCell::new(Wheel::new(WHEEL_TICKS)),
            pool: RefCell::new(Vec::new()),
        }
    }

    /// The record in `slot`, whatever its state.
    pub(crate) fn get(&self, slot: u32) -> Option<*mut Conn> {
        if slot >= self.made.get() {
            return None;
        }
        let chunk = self.slab.borrow()[slot as usize / CHUNK];
        // SAFETY: the chunk holds `CHUNK` records; the offset is in it.
        Some(unsafe { chunk.add(slot as usize % CHUNK) })
    }

    /// Runs `f` on the bookkeeping of `slot` (which must exist).
    pub(crate) fn with_slot<R>(&self, slot: u32, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.slots.borrow_mut()[slot as usize])
    }

    /// The state of `slot` (`Free` for a slot that does not exist).
    pub(crate) fn state(&self, slot: u32) -> State {
        self.slots
            .borrow()
            .get(slot as usize)
            .map_or(State::Free, |s| s.state)
    }

    /// Sets the state of `slot`.
    pub(crate) fn set_state(&self, slot: u32, state: State) {
        self.with_slot(slot, |s| s.state = state);
    }

    /// The generation `slot` serves now.
    pub(crate) fn generation(&self, slot: u32) -> u32 {
        self.with_slot(slot, |s| s.generation)
    }

    /// The connection in `slot` if it is open and of `generation`: the
    /// check every event, command and id goes through, so nothing meant for
    /// a closed connection reaches the next client on its slot. Reads only
    /// the slot's bookkeeping, never the record.
    pub(crate) fn live(&self, slot: u32, generation: u32) -> Option<*mut Conn> {
        let ok = self
            .slots
            .borrow()
            .get(slot as usize)
            .is_some_and(|s| s.state == State::Open && s.generation == generation);
        if ok { self.get(slot) } else { None }
    }

    /// The connection `id` names, if it is still open.
    pub(crate) fn lookup(&self, id: ConnId) -> Option<*mut Conn> {
        self.live(id.slot(), id.generation())
    }

    /// The record of connection `id` in any state but free, if its slot
    /// still serves that generation (for a connection back from the
    /// handler pool, which may have a close pending).
    pub(crate) fn lookup_any(&self, id: ConnId) -> Option<*mut Conn> {
        let ok = self
            .slots
            .borrow()
            .get(id.slot() as usize)
            .is_some_and(|s| s.state != State::Free && s.generation == id.generation());
        if ok { self.get(id.slot()) } else { None }
    }

    /// Records allocated so far (open, free or retired).
    pub(crate) fn slots(&self) -> usize {
        self.made.get() as usize
    }

    /// Opens a connection on socket `fd` from `peer` at tick `now`: takes a free slot (or a new one), bumps its
    /// generation, and clears every field a previous client left. The
    /// record is `Open`, not yet filed for timeouts. `None` when the table
    /// is full ([`MAX_SLOTS`]).
    pub(crate) fn open(&self, fd: RawFd, peer: std::net::SocketAddr, now: u32) -> Option<*mut Conn> {
        let slot = match self.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let s = self.made.get();
                if s >= MAX_SLOTS {
                    return None;
                }
                if (s as usize).is_multiple_of(CHUNK) {
                    let chunk: Box<[Conn]> = (s..s + CHUNK as u32)
                        .map(|ind| {
                            let mut c = Conn::new(ind, self.owner);
                            c.out_buf = self.scratch;
                            c
                        })
                        .collect();
                    self.slab.borrow_mut().push(Box::into_raw(chunk).cast::<Conn>());
                }
                self.made.set(s + 1);
                self.slots.borrow_mut().push(Slot::new());
                s
            }
        };
        let generation = self.with_slot(slot, |s| {
            debug_assert_eq!(s.state, State::Free);
            // A retired slot (generation at GEN_MASK) is never on the free list.
            s.generation += 1;
            s.state = State::Open;
            s.dirty = false;
            s.wheel_due = NOT_FILED;
            s.last_write = now;
            s.out_pos = 0;
            s.header_due = 0;
            debug_assert!(s.out.is_empty());
            s.generation
        });
        let p = self.get(slot).expect("slot just allocated");
        // SAFETY: live slab pointer, no other reference held.
        let c = unsafe { &mut *p };
        let id = ConnId::new(self.server, self.worker, slot, generation);
        c.bufev.store(id.as_raw() as usize, Ordering::Release);
        c.fd = fd;
        c.set_peer(peer);
        c.err_type = 0;
        c.user = std::ptr::null_mut();
        c.in_buf = std::ptr::null_mut();
        c.in_buf_len = 0;
        c.out_buf_len = 0;
        c.next = std::ptr::null_mut();
        c.peer_eof = false;
        c.balancer = false;
        c.peer_reset = false;
        c.last_read = now;
        debug_assert!(c.partial.is_empty());
        Some(p)
    }

    /// Frees a `Closed` slot for the next client (its generation keeps old
    /// ids stale), or retires it for good when its generation is used up,
    /// so that an id can never come back. Returns false, doing nothing, for
    /// any other state.
    pub(crate) fn release(&self, slot: u32) -> bool {
        let retire = {
            let mut slots = self.slots.borrow_mut();
            let Some(s) = slots.get_mut(slot as usize) else {
                return false;
            };
            if s.state != State::Closed {
                return false;
            }
            s.state = State::Free;
            s.dirty = false;
            s.wheel_due = NOT_FILED;
            s.in_pool = false;
            s.pool_end = None;
            s.header_due = 0;
            s.generation >= GEN_MASK
        };
        if retire {
            log::debug!(
                "worker {}: slot {slot} retired (its generations are used up)",
                self.worker
            );
        } else {
            self.free.borrow_mut().push(slot);
        }
        true
    }

    /// Appends `data` to the output of the connection in `slot` if it is
    /// of `generation` and takes output (open, or in the close callback of
    /// a graceful close), unless the output would pass `cap` bytes. `now`
    /// starts the progress clock of output that was empty.
    pub(crate) fn append(&self, slot: u32, generation: u32, data: &[u8], cap: usize, now: u32) -> Append {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot as usize) else {
            return Append::Refused;
        };
        if s.generation != generation
            || !matches!(s.state, State::Open | State::Closing)
            || (s.state == State::Open && s.pool_end.is_some())
        {
            // Gone, closed, or a close asked for while in the pool: as on
            // a worker, output after a close is refused (the close
            // callback, when it runs, may still write: `Closing`).
            return Append::Refused;
        }
        let pending = s.pending();
        let total = pending.saturating_add(data.len());
        if total > cap {
            return Append::OverCap { total };
        }
        let first = pending == 0;
        if first {
            s.last_write = now;
        }
        if s.out.capacity() == 0
            && let Some(b) = self.pool.borrow_mut().pop()
        {
            s.out = b;
        }
        s.out.extend_from_slice(data);
        let mark = !s.dirty;
        s.dirty = true;
        Append::Queued { first, mark }
    }

    /// Takes the output of `slot`: the buffer and how much of it was sent.
    pub(crate) fn take_output(&self, slot: u32) -> (Vec<u8>, usize) {
        self.with_slot(slot, |s| {
            let pos = s.out_pos;
            s.out_pos = 0;
            (std::mem::take(&mut s.out), pos)
        })
    }

    /// Gives an emptied output buffer back for reuse.
    pub(crate) fn recycle(&self, mut b: Vec<u8>) {
        b.clear();
        let mut pool = self.pool.borrow_mut();
        if b.capacity() > 0 && b.capacity() <= POOL_BUF_MAX && pool.len() < POOL_MAX {
            pool.push(b);
        }
    }

    /// Files `slot` to be looked at on tick `due`, unless it is filed
    /// earlier.
    pub(crate) fn file_timer(&self, slot: u32, due: u32) {
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[slot as usize];
        if s.wheel_due == NOT_FILED || due < s.wheel_due {
            s.wheel_due = self.wheel.borrow_mut().file(slot, due);
        }
    }

    /// True while some connection is filed for a timeout (the worker must
    /// then wake up every tick).
    pub(crate) fn has_timers(&self) -> bool {
        !self.wheel.borrow().is_empty()
    }

    /// The tick at which the connection in `slot` must be looked at again
    /// for its PROXY protocol header (`Slot::header_due`), its read timeout (`rt` seconds without a byte read) or write
    /// timeout (`wt` seconds of pending output without progress), or for a
    /// packet begun more than `rt` seconds ago and still incomplete; `None`
    /// when neither applies. A deadline `d` expires once the current tick
    /// is `>= d`, i.e. after more than `rt` (`wt`) whole seconds. Saturates:
    /// a timeout near `u32::MAX` seconds never expires. Reads the record:
    /// never while a handler holds it.
    pub(crate) fn deadline(&self, slot: u32, rt: u32, wt: u32) -> Option<u32> {
        let p = self.get(slot)?;
        let header_due = self.with_slot(slot, |s| s.header_due);
        if header_due != 0 {
            // Nothing is read or written before the header.
            return Some(header_due);
        }
        // SAFETY: live slab pointer; read only, outside callbacks.
        let c = unsafe { &*p };
        // A started packet counts from its first byte, however slowly the
        // rest trickles in; between packets, from the last byte read.
        let since = c.partial.started().unwrap_or(c.last_read);
        let read = (rt > 0).then(|| since.saturating_add(rt).saturating_add(1));
        let write = self.with_slot(slot, |s| {
            (wt > 0 && s.pending() > 0).then(|| s.last_write.saturating_add(wt).saturating_add(1))
        });
        match (read, write) {
            (Some(r), Some(w)) => Some(r.min(w)),
            (r, w) => r.or(w),
        }
    }

    /// True if the connection in `slot` has output that made no progress
    /// for more than `wt` seconds at tick `now` (`wt` > 0): its write
    /// timeout, not its read timeout, is what expired.
    pub(crate) fn write_stalled(&self, slot: u32, wt: u32, now: u32) -> bool {
        wt > 0
            && self.with_slot(slot, |s| {
                s.pending() > 0 && now >= s.last_write.saturating_add(wt).saturating_add(1)
            })
    }

    /// The expiry step, run once per tick: looks at every entry due up to
    /// `now`, re-files the connections whose real deadline (see
    /// [`ConnTable::deadline`]) is later, and appends the slots that have
    /// timed out to `due`. Stale entries (a connection filed again since,
    /// or closed) are skipped. Returns the entries looked at. Calls nothing
    /// back: closing is the caller's.
    pub(crate) fn expire(&self, now: u32, rt: u32, wt: u32, due: &mut Vec<u32>) -> usize {
        let mut wheel = self.wheel.borrow_mut();
        let mut seen = 0;
        wheel.expire(now, &mut Vec::new(), |wheel, slot, tick| {
            seen += 1;
            let current = self
                .slots
                .borrow()
                .get(slot as usize)
                .is_some_and(|s| s.state == State::Open && s.wheel_due == tick);
            if !current {
                return;
            }
            let deadline = if self.with_slot(slot, |s| s.in_pool) {
                // The record is the pool thread's: no read timeout (the
                // worker does not read it meanwhile, and files the timer
                // again when the handler returns), but output that makes
                // no progress still times out (the worker's abort then
                // waits for the handler).
                self.with_slot(slot, |s| {
                    (wt > 0 && s.pending() > 0).then(|| s.last_write.saturating_add(wt).saturating_add(1))
                })
            } else {
                self.deadline(slot, rt, wt)
            };
            let filed = match deadline {
                Some(d) if d > now => wheel.file(slot, d),
                Some(_) => {
                    due.push(slot);
                    NOT_FILED
                }
                None => NOT_FILED,
            };
            self.with_slot(slot, |s| s.wheel_due = filed);
        });
        seen
    }
}

impl Drop for ConnTable {
    fn drop(&mut self) {
        for p in self.slab.get_mut().drain(..) {
            // SAFETY: every slab entry came from `Box::into_raw` of a boxed
            // slice of `CHUNK` records, and no reference to them remains
            // once the table is dropped.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, CHUNK)) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ConnTable {
        ConnTable::new(3, 1, std::ptr::null_mut(), std::ptr::null_mut())
    }

    /// A client `127.0.0.1:port`.
    fn peer(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn close(t: &ConnTable, p: *mut Conn) {
        // SAFETY: a record of a live test table, read only.
        t.set_state(unsafe { (*p).ind }, State::Closed);
    }

    fn id_of(p: *mut Conn) -> ConnId {
        // SAFETY: a record of a live test table, read only.
        unsafe { (*p).id() }
    }

    #[test]
    fn slots_are_reused_with_a_new_generation_and_old_ids_go_stale() {
        let t = table();
        let a = t.open(10, peer(2), 0).unwrap();
        let id_a = id_of(a);
        assert_eq!((id_a.server(), id_a.worker(), id_a.slot()), (3, 1, 0));
        assert_eq!(t.lookup(id_a), Some(a));
        let b = t.open(11, peer(3), 0).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.slots(), 2);
        // A record is freed only once closed.
        assert!(!t.release(0));
        close(&t, a);
        assert_eq!(t.lookup(id_a), None, "a closed connection is not live");
        assert!(t.release(0));
        assert!(!t.release(0), "released twice");
        // The next client gets slot 0 again (same record), a new id, clean fields.
        // SAFETY: as above.
        unsafe {
            (*a).user = 0x1234 as *mut _;
            (*a).err_type = 7;
        }
        let c = t.open(12, peer(4), 5).unwrap();
        assert_eq!(c, a);
        let id_c = id_of(c);
        // SAFETY: as above.
        let (user, err, fd) = unsafe { ((*c).user, (*c).err_type, (*c).fd) };
        assert_eq!(id_c.slot(), 0);
        assert_ne!(id_c, id_a);
        assert_eq!(id_c.generation(), id_a.generation() + 1);
        assert_eq!((user, err, fd), (std::ptr::null_mut(), 0, 12));
        assert_eq!(t.lookup(id_a), None, "a stale id never reaches the new client");
        assert_eq!(t.lookup(id_c), Some(c));
        assert_eq!(t.live(0, id_c.generation()), Some(c));
        assert_eq!(t.get(9), None);
        // Writes by a stale id are refused too.
        assert_eq!(t.append(0, id_a.generation(), b"x", 100, 0), Append::Refused);
        assert_eq!(
            t.append(0, id_c.generation(), b"x", 100, 0),
            Append::Queued {
                first: true,
                mark: true
            }
        );
    }

    /// A slot reused until its generation is used up is retired: the next
    /// client gets a fresh slot, so no id ever names two connections.
    #[test]
    fn a_slot_whose_generations_are_used_up_is_retired() {
        let t = table();
        let p = t.open(1, peer(0), 0).unwrap();
        close(&t, p);
        assert!(t.release(0));
        // Drive the generation counter to its last value.
        t.with_slot(0, |s| s.generation = GEN_MASK - 1);
        let p = t.open(2, peer(0), 0).unwrap();
        let last = id_of(p);
        assert_eq!((last.slot(), last.generation()), (0, GEN_MASK));
        close(&t, p);
        assert!(t.release(0), "a retired slot still counts as released");
        let q = t.open(3, peer(0), 0).unwrap();
        let next = id_of(q);
        assert_eq!(next.slot(), 1, "the used-up slot is not reused");
        assert_eq!(next.generation(), 1);
        assert_eq!(t.lookup(last), None);
        assert_eq!(t.state(0), State::Free);
        assert_eq!(t.slots(), 2);
    }

    #[test]
    fn output_is_capped_and_only_open_or_closing_connections_take_it() {
        let t = table();
        let p = t.open(1, peer(0), 7).unwrap();
        let g = id_of(p).generation();
        assert_eq!(
            t.append(0, g, &[1; 60], 100, 7),
            Append::Queued {
                first: true,
                mark: true
            }
        );
        assert_eq!(
            t.append(0, g, &[2; 40], 100, 8),
            Append::Queued {
                first: false,
                mark: false
            }
        );
        assert_eq!(t.append(0, g, &[3; 1], 100, 8), Append::OverCap { total: 101 });
        assert_eq!(t.with_slot(0, |s| (s.pending(), s.last_write)), (100, 7));
        for (state, takes) in [
            (State::Closing, true),
            (State::Doomed, false),
            (State::Aborting, false),
            (State::Closed, false),
        ] {
            t.set_state(0, state);
            let got = t.append(0, g, b"", 1000, 9);
            assert_eq!(matches!(got, Append::Queued { .. }), takes, "{state:?}: {got:?}");
        }
        let (out, pos) = t.take_output(0);
        assert_eq!((out.len(), pos), (100, 0));
        assert_eq!(t.with_slot(0, |s| s.pending()), 0);
    }

    #[test]
    fn deadlines_follow_reads_packets_and_pending_output_and_saturate() {
        let t = table();
        let p = t.open(1, peer(0), 10).unwrap();
        // SAFETY: a record of a live test table, no other reference.
        let c = unsafe { &mut *p };
        assert_eq!(t.deadline(0, 0, 0), None);
        assert_eq!(t.deadline(0, 5, 0), Some(16));
        // A started packet counts from its first byte, not the last read.
        c.partial.buf(7).push(1);
        assert_eq!(t.deadline(0, 5, 0), Some(13));
        // Pending output without progress: the earlier of the two.
        t.append(0, 1, &[0; 4], 100, 9);
        assert_eq!(t.deadline(0, 5, 2), Some(12));
        assert_eq!(t.deadline(0, 0, 2), Some(12));
        assert!(!t.write_stalled(0, 2, 11));
        assert!(t.write_stalled(0, 2, 12));
        // Timeouts up to u32::MAX never wrap into the past.
        assert_eq!(t.deadline(0, u32::MAX, u32::MAX), Some(u32::MAX));
        assert!(!t.write_stalled(0, u32::MAX, u32::MAX - 1));
        t.with_slot(0, |s| s.out_pos = 4);
        assert_eq!(t.deadline(0, 0, 2), None);
    }

    #[test]
    fn expiry_times_out_idle_connections_and_refiles_active_ones() {
        let t = table();
        let (rt, mut due) = (3, Vec::new());
        let idle = t.open(1, peer(0), 0).unwrap();
        let busy = t.open(2, peer(0), 0).unwrap();
        for slot in [0, 1] {
            let d = t.deadline(slot, rt, 0).unwrap();
            t.file_timer(slot, d);
        }
        assert!(t.has_timers());
        for now in 1..=3 {
            // SAFETY: a record of a live test table, no other reference.
            unsafe { (*busy).last_read = now };
            t.expire(now, rt, 0, &mut due);
            assert!(due.is_empty(), "tick {now}: {due:?}");
        }
        // After more than 3 whole seconds without a read, only `idle` is due.
        t.expire(4, rt, 0, &mut due);
        assert_eq!(due, vec![0]);
        // `busy` was re-filed for its own deadline and expires later.
        due.clear();
        t.expire(6, rt, 0, &mut due);
        assert!(due.is_empty());
        t.expire(7, rt, 0, &mut due);
        assert_eq!(due, vec![1]);
        due.clear();
        assert!(!t.has_timers());
        // A closed connection's entry is skipped.
        close(&t, idle);
        assert!(t.release(0));
        let c = t.open(3, peer(0), 7).unwrap();
        t.file_timer(0, 11);
        close(&t, c);
        assert!(t.expire(20, rt, 0, &mut due) >= 1);
        assert!(due.is_empty());
        // A timeout near u32::MAX is filed at the wheel's horizon and
        // never comes due.
        let _ = t.open(4, peer(0), 20).unwrap();
        let d = t.deadline(2, u32::MAX, 0).unwrap();
        t.file_timer(2, d);
        for now in [21, 300, 600, 100_000] {
            t.expire(now, u32::MAX, 0, &mut due);
            assert!(due.is_empty(), "tick {now}");
        }
    }
}
