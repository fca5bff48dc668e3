//! A worker's mailbox: what other threads may hand a worker (new
//! connections placed on it, cross-thread writes and closes, stop) and the
//! sleep / wake-up protocol that makes sure a worker blocked in `epoll_wait`
//! sees them.
//!
//! # Wake-up protocol
//!
//! A sender pushes onto a queue, issues a `SeqCst` fence, and loads the
//! worker's `sleeping` flag; only if it is set does it clear it (one
//! compare-exchange) and ring the waker (an eventfd write). A worker about
//! to block raises `sleeping`, issues a `SeqCst` fence, and re-checks both
//! queues ([`Mailbox::prepare_sleep`]); it blocks only if they are empty.
//! The two fences guarantee that either the worker sees the item or the
//! sender sees the flag: no lost wake-up, and no wake-up (no syscall) for a
//! worker that is awake. The loom models in this file (`make loom`) check
//! this on the real code.
//!
//! Uses: conn (the `ConnId` commands carry), sys (`Accepted`), sync.

use std::io;
use std::sync::atomic::Ordering;

use crossbeam_queue::{ArrayQueue, SegQueue};

use crate::conn::ConnId;
use crate::sync::{AtomicBool, AtomicU32, AtomicUsize, fence};
use crate::sys::Accepted;

/// Cap on bytes queued by other threads for one worker and not yet taken.
pub(crate) const CMD_BYTES_MAX: usize = 64 << 20;
/// Connections that can wait in one worker's hand-off queue.
pub(crate) const HANDOFF_QUEUE: usize = 4096;

/// Commands other threads send to a worker.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Append these bytes to the connection's output.
    Write(ConnId, Vec<u8>),
    /// Close the connection with this reason.
    Close(ConnId, u16),
    /// Stop the worker: close everything and leave the loop.
    Stop,
}

/// Rings a sleeping worker awake (its poll's `mio::Waker`).
pub(crate) trait Wake: Send + Sync {
    /// Makes the worker's next (or current) poll return.
    fn wake(&self) -> io::Result<()>;
}

impl Wake for mio::Waker {
    fn wake(&self) -> io::Result<()> {
        mio::Waker::wake(self)
    }
}

/// The part of a worker other threads see.
pub(crate) struct Mailbox {
    /// The worker's index in its server.
    pub index: usize,
    /// New connections placed on this worker by another one.
    pub accept_q: ArrayQueue<Accepted>,
    /// Cross-thread writes and closes, and stop.
    cmds: SegQueue<Cmd>,
    /// Bytes inside `cmds` not yet taken by the worker.
    cmd_bytes: AtomicUsize,
    /// True while the worker is (about to be) blocked in `poll`.
    sleeping: AtomicBool,
    waker: Box<dyn Wake>,
    /// Live connections, including those handed over and not yet taken:
    /// what placement balances and caps.
    pub count: AtomicU32,
}

impl Mailbox {
    /// An empty mailbox for worker `index`, woken through `waker`.
    pub(crate) fn new(index: usize, waker: Box<dyn Wake>) -> Mailbox {
        Mailbox {
            index,
            accept_q: ArrayQueue::new(HANDOFF_QUEUE),
            cmds: SegQueue::new(),
            cmd_bytes: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            waker,
            count: AtomicU32::new(0),
        }
    }

    /// Wakes the worker if it may be asleep. Call after pushing to a queue.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed)
            && self
                .sleeping
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // A failed wake (the eventfd counter full) still leaves the
            // poll readable: the worker wakes either way.
            let _ = self.waker.wake();
        }
    }

    /// Queues a command and wakes the worker if needed. Writes are refused
    /// (returns false) when the worker already holds [`CMD_BYTES_MAX`]
    /// bytes from other threads.
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

    /// The worker: takes the next command, giving its bytes back to the
    /// budget.
    pub(crate) fn take_cmd(&self) -> Option<Cmd> {
        let cmd = self.cmds.pop()?;
        if let Cmd::Write(_, ref data) = cmd {
            self.cmd_bytes.fetch_sub(data.len(), Ordering::Relaxed);
        }
        Some(cmd)
    }

    /// The worker, before it blocks: raises the `sleeping` flag and looks
    /// at the queues again. Returns true if it may block (nothing waits);
    /// either way it calls [`Mailbox::awake`] once its poll returns.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.accept_q.is_empty() && self.cmds.is_empty()
    }

    /// The worker, after its poll returned: lowers the `sleeping` flag.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Bytes queued by other threads and not yet taken (for tests).
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.cmd_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize as Counter;

    /// Counts the wake-ups instead of ringing an eventfd.
    struct Rings(Arc<Counter>);

    impl Wake for Rings {
        fn wake(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn mailbox() -> (Mailbox, Arc<Counter>) {
        let rings = Arc::new(Counter::new(0));
        (Mailbox::new(0, Box::new(Rings(rings.clone()))), rings)
    }

    fn id(slot: u32) -> ConnId {
        ConnId::new(0, 0, slot, 1)
    }

    #[test]
    fn only_a_sleeping_worker_is_woken_and_only_once() {
        let (m, rings) = mailbox();
        assert!(m.command(Cmd::Close(id(1), 7)));
        assert_eq!(
            rings.load(Ordering::Relaxed),
            0,
            "an awake worker needs no wake-up"
        );
        // Something waits: the worker must not block.
        assert!(!m.prepare_sleep());
        m.awake();
        assert!(matches!(m.take_cmd(), Some(Cmd::Close(i, 7)) if i == id(1)));
        assert!(m.take_cmd().is_none());
        // Nothing waits: it may block; the next sender wakes it, once.
        assert!(m.prepare_sleep());
        assert!(m.command(Cmd::Write(id(2), vec![1, 2, 3])));
        assert!(m.command(Cmd::Write(id(2), vec![4])));
        m.notify();
        assert_eq!(rings.load(Ordering::Relaxed), 1);
        m.awake();
    }

    #[test]
    fn the_byte_budget_refuses_writes_over_the_cap_and_returns_to_zero() {
        let (m, _) = mailbox();
        let big = CMD_BYTES_MAX / 2;
        assert!(m.command(Cmd::Write(id(1), vec![0; big])));
        assert!(m.command(Cmd::Write(id(1), vec![0; big])));
        assert_eq!(m.queued_bytes(), CMD_BYTES_MAX);
        assert!(!m.command(Cmd::Write(id(1), vec![0; 1])), "over the cap");
        assert!(m.command(Cmd::Close(id(1), 1)), "closes are never refused");
        assert!(m.command(Cmd::Write(id(1), Vec::new())), "an empty write fits");
        let mut taken = 0;
        while m.take_cmd().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 4);
        assert_eq!(m.queued_bytes(), 0);
    }
}
