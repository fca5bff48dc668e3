//! A worker's connection table and timing wheel driven without sockets,
//! for the memory and timer-cost benchmark (`cargo bench --bench
//! idle_table`). It uses the same records, slab layout, wheel and deadline
//! rule as a worker; only the sockets and the event loop are missing.

use crate::conn::Conn;
use crate::wheel::{NOT_FILED, Wheel};

/// `n` idle connections in one worker's table.
pub struct IdleTable {
    slab: Vec<*mut Conn>,
    wheel: Wheel,
    scratch: Vec<u32>,
    read_timeout: u32,
    now: u32,
}

impl IdleTable {
    /// An empty table whose connections time out after `read_timeout` s.
    pub fn new(read_timeout: u32) -> IdleTable {
        IdleTable {
            slab: Vec::new(),
            wheel: Wheel::new(256),
            scratch: Vec::new(),
            read_timeout,
            now: 0,
        }
    }

    /// Adds `n` connections, as a worker does for accepted sockets.
    pub fn open(&mut self, n: usize) {
        self.slab.reserve(n);
        for _ in 0..n {
            let slot = self.slab.len() as u32;
            let mut c = Box::new(Conn::new(slot, std::ptr::null_mut()));
            c.last_read = self.now;
            if let Some(due) = c.deadline(self.read_timeout, 0) {
                c.wheel_due = self.wheel.file(slot, due);
            }
            self.slab.push(Box::into_raw(c));
        }
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Records a read on every `every`-th connection (what a worker does on
    /// each read: one store).
    pub fn touch(&mut self, every: usize) {
        for &p in self.slab.iter().step_by(every.max(1)) {
            // SAFETY: the table owns its records; no other reference exists.
            unsafe { (*p).last_read = self.now };
        }
    }

    /// Advances one second and runs the wheel exactly as a worker does.
    /// Returns (entries looked at, connections timed out). Timed-out
    /// connections are only counted (no socket to close).
    pub fn tick(&mut self) -> (usize, usize) {
        self.now += 1;
        let now = self.now;
        let (slab, rt) = (&self.slab, self.read_timeout);
        let (mut seen, mut expired) = (0, 0);
        self.wheel.expire(now, &mut self.scratch, |wheel, slot, tick| {
            seen += 1;
            // SAFETY: the table owns its records; no other reference exists.
            let p = slab[slot as usize];
            // SAFETY: as above.
            let c = unsafe { &mut *p };
            if c.wheel_due != tick {
                return;
            }
            c.wheel_due = match c.deadline(rt, 0) {
                Some(due) if due > now => wheel.file(slot, due),
                Some(_) => {
                    expired += 1;
                    NOT_FILED
                }
                None => NOT_FILED,
            };
        });
        (seen, expired)
    }
}

impl Drop for IdleTable {
    fn drop(&mut self) {
        for p in self.slab.drain(..) {
            // SAFETY: every entry came from `Box::into_raw` in `open`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
