//! One worker's connection table: the slab of records (boxed, so their
//! addresses never move and C may keep `CONN *` for a connection's life),
//! the free list with generation-tagged reuse, and the timing wheel that
//! times connections out. Single-threaded: only the owning worker touches
//! it, and it holds no borrow while a callback runs.
//!
//! Uses: conn::record, conn::id, records (the owner's `WORKER`), wheel.

use std::cell::RefCell;
use std::ffi::c_char;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::id::{ConnId, GEN_MASK, MAX_SLOTS};
use super::record::{Conn, State};
use crate::records::CWorker;
use crate::wheel::{NOT_FILED, Wheel};

/// Buckets of the timing wheel: deadlines up to this many seconds ahead are
/// filed exactly, later ones are re-filed at the horizon.
const WHEEL_TICKS: usize = 256;

/// The connections of one worker (see the module docs).
pub(crate) struct ConnTable {
    server: usize,
    worker: usize,
    owner: *mut CWorker,
    /// What every record's `out_buf` points to (the worker's scratch area).
    scratch: *mut c_char,
    /// Slot index -> record, from `Box::into_raw`; freed on drop.
    slab: RefCell<Vec<*mut Conn>>,
    free: RefCell<Vec<u32>>,
    wheel: RefCell<Wheel>,
}

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
            free: RefCell::new(Vec::new()),
            wheel: RefCell::new(Wheel::new(WHEEL_TICKS)),
        }
    }

    /// The record in `slot`, whatever its state.
    pub(crate) fn get(&self, slot: u32) -> Option<*mut Conn> {
        self.slab.borrow().get(slot as usize).copied()
    }

    /// The connection in `slot` if it is open and of `generation`: the
    /// check every event, command and id goes through, so nothing meant for
    /// a closed connection reaches the next client on its slot.
    pub(crate) fn live(&self, slot: u32, generation: u32) -> Option<*mut Conn> {
        let p = self.get(slot)?;
        // SAFETY: slab pointers stay valid for the table's life; only this
        // thread uses them and no `&mut` to the record is live here.
        let c = unsafe { &*p };
        (c.state == State::Open && c.generation == generation).then_some(p)
    }

    /// The connection `id` names, if it is still open.
    pub(crate) fn lookup(&self, id: ConnId) -> Option<*mut Conn> {
        self.live(id.slot(), id.generation())
    }

    /// Records allocated so far (open or free).
    pub(crate) fn slots(&self) -> usize {
        self.slab.borrow().len()
    }

    /// Opens a connection on socket `fd` from `ip:port` (network byte
    /// order) at tick `now`: takes a free slot (or a new one), bumps its
    /// generation, and clears every field a previous client left. The
    /// record is `Open`, not yet filed for timeouts. `None` when the table
    /// is full ([`MAX_SLOTS`]).
    pub(crate) fn open(&self, fd: RawFd, ip: u32, port: u16, now: u32) -> Option<*mut Conn> {
        let slot = match self.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let mut slab = self.slab.borrow_mut();
                if slab.len() as u32 >= MAX_SLOTS {
                    return None;
                }
                let s = slab.len() as u32;
                let mut c = Box::new(Conn::new(s, self.owner));
                c.out_buf = self.scratch;
                slab.push(Box::into_raw(c));
                s
            }
        };
        let p = self.get(slot).expect("slot just allocated");
        // SAFETY: live slab pointer, no other reference held.
        let c = unsafe { &mut *p };
        debug_assert_eq!(c.state, State::Free);
        c.generation = c.generation.wrapping_add(1) & GEN_MASK;
        let id = ConnId::new(self.server, self.worker, slot, c.generation);
        c.bufev.store(id.as_raw() as usize, Ordering::Release);
        c.fd = fd;
        c.cip = ip;
        c.cport = port;
        c.err_type = 0;
        c.user = std::ptr::null_mut();
        c.in_buf = std::ptr::null_mut();
        c.in_buf_len = 0;
        c.out_buf_len = 0;
        c.next = std::ptr::null_mut();
        c.state = State::Open;
        c.dirty = false;
        c.peer_eof = false;
        c.last_read = now;
        c.last_write = now;
        c.packet_start = now;
        c.wheel_due = NOT_FILED;
        Some(p)
    }

    /// Puts a `Closed` record back on the free list (its generation keeps
    /// old ids stale). Returns false, doing nothing, for any other state.
    pub(crate) fn release(&self, slot: u32) -> bool {
        let Some(p) = self.get(slot) else { return false };
        // SAFETY: live slab pointer, no other reference held.
        let c = unsafe { &mut *p };
        if c.state != State::Closed {
            return false;
        }
        c.state = State::Free;
        c.dirty = false;
        c.wheel_due = NOT_FILED;
        self.free.borrow_mut().push(slot);
        true
    }

    /// Files `c` to be looked at on tick `due`, unless it is filed earlier.
    pub(crate) fn file_timer(&self, c: &mut Conn, due: u32) {
        if c.wheel_due == NOT_FILED || due < c.wheel_due {
            c.wheel_due = self.wheel.borrow_mut().file(c.ind, due);
        }
    }

    /// True while some connection is filed for a timeout (the worker must
    /// then wake up every tick).
    pub(crate) fn has_timers(&self) -> bool {
        !self.wheel.borrow().is_empty()
    }

    /// The expiry step, run once per tick: looks at every entry due up to
    /// `now`, re-files the connections whose real deadline (read timeout
    /// `rt`, write timeout `wt`, see [`Conn::deadline`]) is later, and
    /// appends the slots that have timed out to `due`. Stale entries (a
    /// connection filed again since, or closed) are skipped. Returns the
    /// entries looked at. Calls nothing back: closing is the caller's.
    pub(crate) fn expire(&self, now: u32, rt: u32, wt: u32, due: &mut Vec<u32>) -> usize {
        let mut wheel = self.wheel.borrow_mut();
        let mut seen = 0;
        wheel.expire(now, &mut Vec::new(), |wheel, slot, tick| {
            seen += 1;
            let Some(p) = self.get(slot) else { return };
            // SAFETY: live slab pointer; no callback runs in here.
            let c = unsafe { &mut *p };
            if c.state != State::Open || c.wheel_due != tick {
                return;
            }
            c.wheel_due = match c.deadline(rt, wt) {
                Some(d) if d > now => wheel.file(slot, d),
                Some(_) => {
                    due.push(slot);
                    NOT_FILED
                }
                None => NOT_FILED,
            };
        });
        seen
    }
}

impl Drop for ConnTable {
    fn drop(&mut self) {
        for p in self.slab.get_mut().drain(..) {
            // SAFETY: every slab entry came from `Box::into_raw` and no
            // reference to it remains once the table is dropped.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ConnTable {
        ConnTable::new(3, 1, std::ptr::null_mut(), std::ptr::null_mut())
    }

    fn close(p: *mut Conn) {
        // SAFETY: a record of a live test table, no other reference.
        unsafe { (*p).state = State::Closed };
    }

    #[test]
    fn slots_are_reused_with_a_new_generation_and_old_ids_go_stale() {
        let t = table();
        let a = t.open(10, 1, 2, 0).unwrap();
        // SAFETY: records of a live test table, read only.
        let id_a = unsafe { (*a).id() };
        assert_eq!((id_a.server(), id_a.worker(), id_a.slot()), (3, 1, 0));
        assert_eq!(t.lookup(id_a), Some(a));
        let b = t.open(11, 1, 3, 0).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.slots(), 2);
        // A record is freed only once closed.
        assert!(!t.release(0));
        close(a);
        assert_eq!(t.lookup(id_a), None, "a closed connection is not live");
        assert!(t.release(0));
        assert!(!t.release(0), "released twice");
        // The next client gets slot 0 again (same record), a new id, clean fields.
        // SAFETY: as above.
        unsafe {
            (*a).user = 0x1234 as *mut _;
            (*a).err_type = 7;
        }
        let c = t.open(12, 1, 4, 5).unwrap();
        assert_eq!(c, a);
        // SAFETY: as above.
        let (id_c, user, err, fd) = unsafe { ((*c).id(), (*c).user, (*c).err_type, (*c).fd) };
        assert_eq!(id_c.slot(), 0);
        assert_ne!(id_c, id_a);
        assert_eq!(id_c.generation(), id_a.generation() + 1);
        assert_eq!((user, err, fd), (std::ptr::null_mut(), 0, 12));
        assert_eq!(t.lookup(id_a), None, "a stale id never reaches the new client");
        assert_eq!(t.lookup(id_c), Some(c));
        assert_eq!(t.live(0, id_c.generation()), Some(c));
        assert_eq!(t.get(9), None);
    }

    #[test]
    fn expiry_times_out_idle_connections_and_refiles_active_ones() {
        let t = table();
        let (rt, mut due) = (3, Vec::new());
        let idle = t.open(1, 0, 0, 0).unwrap();
        let busy = t.open(2, 0, 0, 0).unwrap();
        for p in [idle, busy] {
            // SAFETY: records of a live test table, no other reference.
            let c = unsafe { &mut *p };
            let d = c.deadline(rt, 0).unwrap();
            t.file_timer(c, d);
        }
        assert!(t.has_timers());
        for now in 1..=3 {
            // SAFETY: as above.
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
        close(idle);
        assert!(t.release(0));
        let c = t.open(3, 0, 0, 7).unwrap();
        // SAFETY: as above.
        t.file_timer(unsafe { &mut *c }, 11);
        close(c);
        assert!(t.expire(20, rt, 0, &mut due) >= 1);
        assert!(due.is_empty());
    }
}
