//! Statistics: each worker's counters ([`WorkerStats`], in its mailbox),
//! and the plain numbers read from them ([`Counters`], [`Stats`]).
//!
//! # Cost on the hot path
//!
//! A counter is written by one thread only, the worker that owns it (the
//! exceptions are said on the field), with a relaxed load and a relaxed
//! store ([`add`], [`sub`]): no `lock`ed read-modify-write, no fence, and
//! the counters sit on cache lines of their own (`align(128)`: two lines,
//! for the adjacent-line prefetcher), so the owner never waits for another
//! core. Any thread reads them with relaxed loads: each value is one the
//! owner stored, at most a few events old; two counters read together need
//! not be from the same instant.
//!
//! Uses: nothing of the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Adds `n` to a counter that only the calling thread writes: a relaxed
/// load and a relaxed store (see the module docs).
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Takes `n` from a gauge that only the calling thread writes (a relaxed
/// load and a relaxed store). Never below 0: a bug here must not show as
/// 18 quintillion bytes queued.
#[inline]
pub(crate) fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
}

/// One worker's counters, in its mailbox. Counters only grow (they wrap
/// after 2^64); gauges go up and down.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    /// Connections this worker opened (its connected callback ran or was
    /// about to), counted by the worker in `Worker::open`.
    pub accepted: AtomicU64,
    /// Connections this worker accepted and reset at once because every
    /// worker was full (`Listener::place`, on the accepting worker).
    pub refused: AtomicU64,
    /// Connections closed for any reason but timeout and error (the peer's
    /// end of stream, `close_conn` with any id, bad input, server stop),
    /// counted once per connection when its close callback runs.
    pub closed: AtomicU64,
    /// Connections closed as `AKG_TIMEOUT` (read timeout, or output
    /// without progress for the write timeout).
    pub timeouts: AtomicU64,
    /// Connections closed as `AKG_ERROR` (socket error, output over its
    /// cap, a handler returning non-zero or panicking).
    pub errors: AtomicU64,
    /// Frames dispatched to a handler (packets and frames of every
    /// framing; a frame with no handler is not counted).
    pub packets_in: AtomicU64,
    /// Bytes `recv` returned on open connections (input discarded after a
    /// close is not counted).
    pub bytes_in: AtomicU64,
    /// Bytes `send` accepted, open and closed (still delivering)
    /// connections alike.
    pub bytes_out: AtomicU64,
    /// Gauge: bytes in the library's output buffers, not yet handed to the
    /// kernel, open and closing connections alike. Back to 0 once
    /// everything is sent or dropped (an abort drops it).
    pub out_queued: AtomicU64,
    /// Times this worker was found stalled. Written by the monitor's
    /// thread (`server::monitor`), not the worker: the one counter updated
    /// with `fetch_add`.
    pub stalls: AtomicU64,
    /// Gauge: this worker's packets handed to the handler pool whose
    /// handler has not returned yet (waiting or running). Written by the
    /// worker when it hands one over and when it hears back.
    pub pool_queued: AtomicU64,
}

impl WorkerStats {
    /// The counters now, as plain numbers, with `connections`,
    /// `log_dropped` and whether the worker is stalled (which live
    /// elsewhere) given by the caller; `workers` is 1.
    pub(crate) fn snapshot(&self, connections: u64, log_dropped: u64, stalled: bool) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            connections,
            accepted: get(&self.accepted),
            refused: get(&self.refused),
            closed: get(&self.closed),
            timeouts: get(&self.timeouts),
            errors: get(&self.errors),
            packets_in: get(&self.packets_in),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            out_queued: get(&self.out_queued),
            stalls: get(&self.stalls),
            pool_queued: get(&self.pool_queued),
            log_dropped,
            workers: 1,
            stalled_workers: u32::from(stalled),
        }
    }
}

/// A server's or one worker's statistics, as plain numbers; `#[repr(C)]`:
/// it is the C `mario_stats`. Counters count since the server was
/// created and only grow; gauges (`connections`, `out_queued`,
/// `pool_queued`, `stalled_workers`) say how things are now. Each value is
/// read on its own (relaxed): they need not be from the same instant.
/// Counters wrap at `u64::MAX` (never in practice); compare two readings
/// with `wrapping_sub`. Read them with [`Server::stats`](crate::Server::stats)
/// (any thread), or `mario_get_stats` in C.
///
/// ```
/// use mario::Counters;
///
/// /// Connections accepted and bytes received per second between two readings.
/// fn rates(before: &Counters, after: &Counters, secs: f64) -> (f64, f64) {
///     let accepted = after.accepted.wrapping_sub(before.accepted);
///     let bytes_in = after.bytes_in.wrapping_sub(before.bytes_in);
///     (accepted as f64 / secs, bytes_in as f64 / secs)
/// }
///
/// let before = Counters::default();
/// let after = Counters { accepted: 20, bytes_in: 6_000, connections: 15, ..before };
/// assert_eq!(rates(&before, &after, 2.0), (10.0, 3_000.0));
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Gauge: connections open now, including those placed on the worker
    /// and not yet taken by it; closed connections still delivering their
    /// output are not counted.
    pub connections: u64,
    /// Connections accepted and opened (their connected callback runs; with
    /// the PROXY protocol, once their header is read, and a connection
    /// whose header never comes ends in `errors` without it).
    pub accepted: u64,
    /// Connections refused: reset right after `accept` because every worker
    /// was full (`connnum`), counted on the worker that accepted, or because
    /// they came from outside the trusted PROXY protocol sources.
    pub refused: u64,
    /// Connections closed with a reason other than timeout and error: the
    /// peer's end of stream, `close_conn`/`Conn::close` with any id, bad
    /// input, server stop. Each connection is counted once, in `closed`,
    /// `timeouts` or `errors`, when its close callback runs.
    pub closed: u64,
    /// Connections closed as timeout (`AKG_TIMEOUT`).
    pub timeouts: u64,
    /// Connections closed as error (`AKG_ERROR`): socket error, output over
    /// its cap, a handler returning non-zero.
    pub errors: u64,
    /// Frames (packets) dispatched to a handler, the pool's included.
    pub packets_in: u64,
    /// Bytes received from open connections (PROXY protocol headers
    /// included).
    pub bytes_in: u64,
    /// Bytes handed to the kernel (accepted by `send`), including those of
    /// closed connections still delivering their output.
    pub bytes_out: u64,
    /// Gauge: bytes of output queued in the library and not yet handed to
    /// the kernel, closed connections still delivering included.
    pub out_queued: u64,
    /// Times a worker was found stalled (a handler running past the stall
    /// threshold).
    pub stalls: u64,
    /// Gauge: packets handed to the handler pool whose handler has not
    /// returned yet (waiting for a pool thread, or running).
    pub pool_queued: u64,
    /// Log lines dropped because the worker's log queue was full (see
    /// [`QueueFull`](crate::logq::QueueFull)).
    pub log_dropped: u64,
    /// Workers these numbers cover: all of them for a server's total, 1 for
    /// one worker's.
    pub workers: u32,
    /// Gauge: how many of those workers are stalled now (0 or 1 for one
    /// worker).
    pub stalled_workers: u32,
}

impl Counters {
    /// Adds `o` into `self`, field by field (wrapping, like the counters).
    fn accumulate(&mut self, o: &Counters) {
        self.connections = self.connections.wrapping_add(o.connections);
        self.accepted = self.accepted.wrapping_add(o.accepted);
        self.refused = self.refused.wrapping_add(o.refused);
        self.closed = self.closed.wrapping_add(o.closed);
        self.timeouts = self.timeouts.wrapping_add(o.timeouts);
        self.errors = self.errors.wrapping_add(o.errors);
        self.packets_in = self.packets_in.wrapping_add(o.packets_in);
        self.bytes_in = self.bytes_in.wrapping_add(o.bytes_in);
        self.bytes_out = self.bytes_out.wrapping_add(o.bytes_out);
        self.out_queued = self.out_queued.wrapping_add(o.out_queued);
        self.stalls = self.stalls.wrapping_add(o.stalls);
        self.pool_queued = self.pool_queued.wrapping_add(o.pool_queued);
        self.log_dropped = self.log_dropped.wrapping_add(o.log_dropped);
        self.workers = self.workers.wrapping_add(o.workers);
        self.stalled_workers = self.stalled_workers.wrapping_add(o.stalled_workers);
    }
}

/// A server's statistics: each worker's [`Counters`] and their sum, as
/// [`Server::stats`](crate::Server::stats) returns them (a copy: reading it
/// touches no server). [`Counters`] has an example.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// The sum over the workers (its `workers` is their number).
    pub total: Counters,
    /// Each worker's, by worker index (0 .. the number of workers;
    /// [`Conn::worker_index`](crate::Conn::worker_index)).
    pub workers: Vec<Counters>,
}

impl Stats {
    /// The statistics of a server whose workers have `workers` (in worker
    /// order), with their sum.
    pub(crate) fn from_workers(workers: Vec<Counters>) -> Stats {
        let mut total = Counters::default();
        for w in &workers {
            total.accumulate(w);
        }
        Stats { total, workers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_stats_have_cache_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
    }

    #[test]
    fn add_and_sub_by_the_owner_and_sums_over_workers() {
        let w = WorkerStats::default();
        add(&w.bytes_out, 10);
        add(&w.bytes_out, 5);
        add(&w.out_queued, 7);
        sub(&w.out_queued, 7);
        sub(&w.out_queued, 1);
        add(&w.accepted, 1);
        let a = w.snapshot(3, 2, false);
        assert_eq!(
            (
                a.bytes_out,
                a.out_queued,
                a.accepted,
                a.connections,
                a.log_dropped,
                a.workers
            ),
            (15, 0, 1, 3, 2, 1)
        );
        let mut b = a;
        b.stalled_workers = 1;
        let s = Stats::from_workers(vec![a, b]);
        assert_eq!(s.total.bytes_out, 30);
        assert_eq!(s.total.connections, 6);
        assert_eq!((s.total.workers, s.total.stalled_workers), (2, 1));
        assert_eq!(s.workers, vec![a, b]);
    }
}
