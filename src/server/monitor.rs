//! The worker monitor: run by the thread blocked in `start_server` (or
//! `Server::run`), which has nothing else to do. Every quarter of the stall
//! threshold (at most 250 ms, at least 5 ms) it reads each worker's
//! heartbeat (`mailbox::Heartbeat`): a worker whose current turn of the loop
//! began longer ago than the threshold is **stalled**. It is flagged (so
//! placement skips it, see `accept`), the connections waiting in its
//! hand-off queue move to healthy workers, one warning is logged and the
//! service's stall callback runs, here, on the monitor thread. A flagged
//! worker whose turn has changed is healthy again: placement sees that at
//! once (the flag names the stalled turn), the monitor logs it on its next
//! look and clears the flag.
//!
//! A worker blocked in `epoll_wait` publishes no turn, so an idle server
//! costs the monitor four wake-ups a second and nothing more.
//!
//! Uses: accept (the listener's queues), mailbox (the heartbeats), records
//! (the `WORKER` handed to the callback; and `ServerShared`, from the
//! folder's `mod.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ServerShared;
use crate::accept::Listener;

/// How often the monitor looks, for a stall threshold of `ms` milliseconds.
pub(super) fn period(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms / 4).clamp(5, 250))
}

impl ServerShared {
    /// One look at every worker's heartbeat (see the module docs), with a
    /// stall threshold of `threshold_ms` (> 0).
    pub(super) fn check_health(&self, listener: &Listener, threshold_ms: u32) {
        for (i, w) in self.workers.iter().enumerate() {
            let turn = w.beat.turn.load(Ordering::Relaxed);
            let flagged = w.flagged.load(Ordering::Relaxed);
            let now = w.beat.now();
            if flagged != 0 {
                if turn == flagged {
                    continue;
                }
                w.flagged.store(0, Ordering::Relaxed);
                // It ended before the next turn began (if one runs now).
                let end = if turn == 0 { now } else { turn };
                log::info!(
                    "worker {i} is healthy again: its stalled turn ended after at most {} ms; it takes new \
                     connections again",
                    end.saturating_sub(flagged)
                );
                continue;
            }
            if turn == 0 {
                continue;
            }
            let ms = now.saturating_sub(turn);
            if ms < u64::from(threshold_ms) {
                continue;
            }
            w.flagged.store(turn, Ordering::Relaxed);
            w.stats.stalls.fetch_add(1, Ordering::Relaxed);
            let id = w.beat.handling.load(Ordering::Relaxed) as u16;
            let moved = listener.rehome(i);
            log::warn!(
                "worker {i} stalled: the handler of packet {id:#06x} has run for {ms} ms (threshold \
                 {threshold_ms} ms); new connections go to the other workers{}",
                if moved > 0 {
                    format!(" ({moved} waiting for it moved)")
                } else {
                    String::new()
                }
            );
            let ms = u32::try_from(ms).unwrap_or(u32::MAX);
            let cw = self.records.worker(i);
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.service.stalled(i, cw, id, ms)
            }));
            if called.is_err() {
                log::error!("the stall callback panicked (worker {i}); the monitor goes on");
            }
        }
    }
}
