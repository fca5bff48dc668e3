//! A worker's connection table and timing wheel driven without sockets,
//! for the memory and timer-cost benchmark (`cargo bench --bench
//! idle_table`). It is the worker's own connection table (`ConnTable`): the same records,
//! slab, wheel and expiry step; only the sockets and the event loop are
//! missing.
//!
//! Uses: conn.

use crate::conn::table::ConnTable;

/// `n` idle connections in one worker's table, owned by the caller and
/// driven on its thread (no worker runs). `benches/idle_table.rs` measures
/// memory and expiry cost with it.
///
/// ```
/// use mario::harness::sim::IdleTable;
///
/// let mut t = IdleTable::new(2); // connections time out after 2 s idle
/// t.open(1000);
/// assert_eq!(t.len(), 1000);
/// let (_, timed_out) = t.tick(); // 1 s
/// assert_eq!(timed_out, 0);
/// t.touch(2); // every other connection reads a byte
/// let timed_out: usize = (0..3).map(|_| t.tick().1).sum();
/// assert_eq!(timed_out, 1000); // all of them, the touched ones one second later
/// ```
pub struct IdleTable {
    table: ConnTable,
    due: Vec<u32>,
    read_timeout: u32,
    now: u32,
}

impl IdleTable {
    /// An empty table whose connections time out after `read_timeout`
    /// seconds without a read (0: never), at second 0 of its clock.
    /// Example: [`IdleTable`].
    pub fn new(read_timeout: u32) -> IdleTable {
        IdleTable {
            table: ConnTable::new(0, 0, std::ptr::null_mut(), std::ptr::null_mut()),
            due: Vec::new(),
            read_timeout,
            now: 0,
        }
    }

    /// Adds `n` connections, as a worker does for accepted sockets (with
    /// no descriptor behind them), at the current second. Panics if the
    /// table is full (1,048,576 connections).
    /// Example: [`IdleTable`].
    pub fn open(&mut self, n: usize) {
        for _ in 0..n {
            let p = self
                .table
                .open(-1, std::net::SocketAddr::from(([0, 0, 0, 0], 0)), self.now)
                .expect("table full");
            // SAFETY: a record of our own live table; read only.
            let slot = unsafe { (*p).ind };
            if let Some(due) = self.table.deadline(slot, self.read_timeout, 0) {
                self.table.file_timer(slot, due);
            }
        }
    }

    /// Slots in the table (connections opened; timed-out ones keep their
    /// slot, since nothing closes them).
    /// Example: [`IdleTable`].
    pub fn len(&self) -> usize {
        self.table.slots()
    }

    /// True when the table is empty.
    /// Example: [`IdleTable`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a read at the current second on every `every`-th connection
    /// (0 counts as 1), what a worker does on each read: one store.
    /// Example: [`IdleTable`].
    pub fn touch(&mut self, every: usize) {
        for slot in (0..self.table.slots() as u32).step_by(every.max(1)) {
            if let Some(p) = self.table.get(slot) {
                // SAFETY: a record of our own live table, no other reference.
                unsafe { (*p).last_read = self.now };
            }
        }
    }

    /// Advances one second and runs the worker's expiry step. Returns
    /// (entries looked at, connections timed out). Timed-out connections
    /// are only counted (no socket to close; they are not filed again).
    /// Example: [`IdleTable`].
    pub fn tick(&mut self) -> (usize, usize) {
        self.now += 1;
        self.due.clear();
        let seen = self.table.expire(self.now, self.read_timeout, 0, &mut self.due);
        (seen, self.due.len())
    }
}
