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
//! Uses: conn (the `ConnId` commands carry), sys (`Accepted`), sync, stats
//! (the worker's counters).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_queue::{ArrayQueue, SegQueue};

use crate::conn::ConnId;
use crate::stats::WorkerStats;
use crate::sync::{self, AtomicBool, AtomicU32, AtomicUsize, Step, fence};
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
    /// The pool handler of this connection's packet has returned, as
    /// said; the worker owns the record again (see `pool`).
    PoolDone(ConnId, PoolEnd),
}

/// How a pool handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolEnd {
    /// Go on with the connection's next packets.
    Continue,
    /// Close the connection as an error.
    Stop,
    /// No pool handler was registered any more for the packet's id (this
    /// one).
    NoHandler(u16),
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
    /// The most `cmd_bytes` may reach ([`CMD_BYTES_MAX`]).
    cmd_cap: usize,
    /// True while the worker is (about to be) blocked in `poll`.
    sleeping: AtomicBool,
    waker: Box<dyn Wake>,
    /// Live connections, including those handed over and not yet taken:
    /// what placement balances.
    pub count: AtomicU32,
    /// Closed connections still delivering their output (written by the
    /// worker only): placement caps `count + closing` at `connnum`.
    pub closing: AtomicU32,
    /// The [`Heartbeat::turn`] value the monitor found stalled, 0 when the
    /// worker is healthy (see [`Mailbox::stalled`]). Next to `count`:
    /// placement reads both.
    pub flagged: AtomicU64,
    /// What the worker runs now, for the monitor.
    pub beat: Heartbeat,
    /// The worker's statistics (see `stats`), on cache lines of their own:
    /// other threads write the fields above.
    pub stats: WorkerStats,
}

/// A worker's heartbeat (see the server's monitor): when its current turn
/// of the loop began and which callback it runs. Written by the worker
/// only, with relaxed stores (one per turn, one per callback); on its own
/// cache lines, so the workers' placement reads of `count` and `flagged`
/// do not share them.
#[repr(align(128))]
pub(crate) struct Heartbeat {
    /// When the worker started its loop: `turn` counts from here.
    pub epoch: Instant,
    /// Milliseconds from `epoch` to the start of the current turn, plus 1;
    /// 0 while the worker is blocked waiting for events.
    pub turn: AtomicU64,
    /// The packet id of the callback running now, or of the last one (the
    /// connected callback's `AKG_CONNECTED`, a close callback's reason, 0
    /// for a frame of a framing other than `HEAD`).
    pub handling: AtomicU32Std,
}

/// `std`'s `AtomicU32` (the heartbeat is no part of the loom models).
pub(crate) type AtomicU32Std = std::sync::atomic::AtomicU32;

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            turn: AtomicU64::new(0),
            handling: AtomicU32Std::new(0),
        }
    }

    /// The value of `turn` for a turn starting now.
    pub(crate) fn now(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).saturating_add(1)
    }
}

impl Mailbox {
    /// An empty mailbox for worker `index`, woken through `waker`.
    pub(crate) fn new(index: usize, waker: Box<dyn Wake>) -> Mailbox {
        Mailbox::with_budget(index, waker, CMD_BYTES_MAX)
    }

    /// As [`Mailbox::new`], with room for `cmd_cap` bytes of writes from
    /// other threads instead of [`CMD_BYTES_MAX`].
    pub(crate) fn with_budget(index: usize, waker: Box<dyn Wake>, cmd_cap: usize) -> Mailbox {
        Mailbox {
            index,
            accept_q: ArrayQueue::new(HANDOFF_QUEUE),
            cmds: SegQueue::new(),
            cmd_bytes: AtomicUsize::new(0),
            cmd_cap,
            sleeping: AtomicBool::new(false),
            waker,
            count: AtomicU32::new(0),
            closing: AtomicU32::new(0),
            flagged: AtomicU64::new(0),
            beat: Heartbeat::new(),
            stats: WorkerStats::default(),
        }
    }

    /// True while the worker is stalled: the monitor found its current turn
    /// running past the stall threshold, and that turn has not ended. Two
    /// relaxed loads when it is, one when it is not.
    pub(crate) fn stalled(&self) -> bool {
        let f = self.flagged.load(Ordering::Relaxed);
        f != 0 && self.beat.turn.load(Ordering::Relaxed) == f
    }

    /// Wakes the worker if it may be asleep. Call after pushing to a queue.
    pub(crate) fn notify(&self) {
        if !sync::broken(Step::NotifyFence) {
            fence(Ordering::SeqCst);
        }
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
    /// (returns false) when they would take the bytes from other threads
    /// that the worker has not taken yet past its budget
    /// ([`CMD_BYTES_MAX`]).
    pub(crate) fn command(&self, cmd: Cmd) -> bool {
        if let Cmd::Write(_, ref data) = cmd {
            let n = data.len();
            if sync::broken(Step::BudgetRmw) {
                if self.cmd_bytes.load(Ordering::Relaxed).saturating_add(n) > self.cmd_cap {
                    return false;
                }
                self.cmd_bytes.fetch_add(n, Ordering::Relaxed);
            } else if self.cmd_bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n) > self.cmd_cap {
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
        sync::broken(Step::Recheck) || (self.accept_q.is_empty() && self.cmds.is_empty())
    }

    /// The worker, after its poll returned: lowers the `sleeping` flag.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Bytes queued by other threads and not yet taken (for tests).
    #[cfg(any(test, loom))]
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
        let m = Mailbox::with_budget(0, Box::new(Rings(Arc::default())), 1000);
        assert!(m.command(Cmd::Write(id(1), vec![0; 500])));
        assert!(m.command(Cmd::Write(id(1), vec![0; 500])));
        assert_eq!(m.queued_bytes(), 1000);
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

/// loom models of the mailbox, over this file's real code with loom's
/// atomics (`make loom`: `RUSTFLAGS="--cfg loom" cargo test --lib
/// loom_`). Only the poll is a model (an eventfd's one pending event);
/// crossbeam's queues run as they are, each operation indivisible to loom
/// (sequentially consistent, as their own `SeqCst` operations are). Each
/// model also runs with one step of the protocol broken
/// ([`sync::Step`]), and must then fail: the models can see the bugs they
/// are meant to rule out.
#[cfg(all(test, loom))]
pub(crate) mod loom_models {
    use super::*;
    use loom::sync::{Condvar, Mutex};
    use std::sync::Arc;

    /// A worker's poll as the wake-up protocol sees it: [`Wake::wake`]
    /// leaves one pending event, [`Poll::wait`] blocks until one is pending
    /// and takes it, [`Poll::poll_now`] takes one without blocking.
    #[derive(Default)]
    pub(crate) struct Poll {
        rung: Mutex<bool>,
        cv: Condvar,
    }

    /// The waker of a [`Poll`].
    pub(crate) struct Ring(pub(crate) Arc<Poll>);

    impl Wake for Ring {
        fn wake(&self) -> io::Result<()> {
            cover("notify rang the waker");
            *self.0.rung.lock().unwrap() = true;
            self.0.cv.notify_all();
            Ok(())
        }
    }

    impl Poll {
        fn wait(&self) {
            let mut g = self.rung.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
            *g = false;
        }
        fn poll_now(&self) {
            *self.rung.lock().unwrap() = false;
        }
    }

    /// A mailbox and the poll its waker rings.
    pub(crate) fn mailbox(index: usize, cmd_cap: usize) -> (Arc<Mailbox>, Arc<Poll>) {
        let poll = Arc::new(Poll::default());
        let m = Mailbox::with_budget(index, Box::new(Ring(poll.clone())), cmd_cap);
        (Arc::new(m), poll)
    }

    /// The end of a worker's turn as `Worker::wait` runs it: block only if
    /// `prepare_sleep` allows, else look without blocking; then `awake`.
    pub(crate) fn wait(m: &Mailbox, poll: &Poll) {
        if m.prepare_sleep() {
            cover("blocked in poll");
            poll.wait();
        } else {
            cover("the re-check found work");
            poll.poll_now();
        }
        m.awake();
    }

    thread_local! {
        static COVERAGE: std::cell::RefCell<std::collections::BTreeSet<&'static str>> =
            const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
    }

    /// Notes that an execution reached the situation `label` (loom runs a
    /// model's threads on the test's own thread).
    pub(crate) fn cover(label: &'static str) {
        COVERAGE.with(|c| c.borrow_mut().insert(label));
    }

    /// Runs `model` under loom with `step` broken (or none), every
    /// interleaving up to 3 preemptions, prints how many it explored, and
    /// requires the executions to have reached each situation of `reach`
    /// (so a model cannot pass because loom never explored the
    /// interleavings that matter).
    pub(crate) fn check(step: Option<Step>, reach: &[&str], model: impl Fn() + Sync + Send + 'static) {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        sync::set_broken(step);
        RUNS.store(0, Ordering::Relaxed);
        COVERAGE.with(|c| c.borrow_mut().clear());
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            RUNS.fetch_add(1, Ordering::Relaxed);
            model()
        });
        sync::set_broken(None);
        let seen = COVERAGE.with(|c| c.borrow().clone());
        eprintln!(
            "loom: {} executions, reached {seen:?}",
            RUNS.load(Ordering::Relaxed)
        );
        for r in reach {
            assert!(seen.contains(r), "no execution reached {r:?} (reached {seen:?})");
        }
    }

    /// Runs the `#[ignore]`d test `name` of this test binary in a child
    /// process and checks that it fails with `expected` in its output (a
    /// failing loom model may abort its process, which `#[should_panic]`
    /// cannot catch).
    pub(crate) fn expect_failure(name: &str, expected: &str) {
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("running 1 test"), "{name}: no such test:\n{text}");
        assert!(
            !out.status.success(),
            "{name}: loom found no failure, expected {expected:?}"
        );
        assert!(
            text.contains(expected),
            "{name}: failed, but without {expected:?}:\n{text}"
        );
    }

    fn id() -> ConnId {
        ConnId::new(0, 0, 1, 1)
    }

    /// Two threads send a command each to a worker that sleeps whenever
    /// its mailbox looks empty: it must get both (a lost wake-up leaves it
    /// blocked for ever, which loom reports as a deadlock).
    fn commands_wake_the_worker() {
        let (m, poll) = mailbox(0, CMD_BYTES_MAX);
        let senders: Vec<_> = [Cmd::Write(id(), vec![1]), Cmd::Close(id(), 7)]
            .into_iter()
            .map(|cmd| {
                let m = m.clone();
                loom::thread::spawn(move || assert!(m.command(cmd)))
            })
            .collect();
        let mut got = 0;
        loop {
            while m.take_cmd().is_some() {
                got += 1;
            }
            if got == 2 {
                break;
            }
            wait(&m, &poll);
        }
        for s in senders {
            s.join().unwrap();
        }
    }

    #[test]
    fn loom_commands_never_lose_a_wakeup() {
        check(None, WAKE_UP, commands_wake_the_worker);
    }

    /// What a wake-up model must have explored.
    pub(crate) const WAKE_UP: &[&str] = &[
        "blocked in poll",
        "the re-check found work",
        "notify rang the waker",
    ];

    #[test]
    #[ignore = "run by loom_broken_steps_are_caught"]
    fn loom_broken_notify_fence() {
        check(Some(Step::NotifyFence), &[], commands_wake_the_worker);
    }

    #[test]
    #[ignore = "run by loom_broken_steps_are_caught"]
    fn loom_broken_recheck() {
        check(Some(Step::Recheck), &[], commands_wake_the_worker);
    }

    /// Two threads write 6 bytes each to a mailbox with room for 10: one
    /// is refused, what was accepted is what is queued, and taking it all
    /// brings the count back to 0.
    fn budget() {
        let (m, _poll) = mailbox(0, 10);
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                loom::thread::spawn(move || m.command(Cmd::Write(id(), vec![0; 6])))
            })
            .collect();
        let accepted = senders
            .into_iter()
            .map(|s| s.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(accepted, 1, "writes accepted over the budget");
        assert_eq!(m.queued_bytes(), 6);
        while m.take_cmd().is_some() {}
        assert_eq!(m.queued_bytes(), 0);
    }

    #[test]
    fn loom_byte_budget_holds_and_returns_to_zero() {
        check(None, &[], budget);
    }

    #[test]
    #[ignore = "run by loom_broken_steps_are_caught"]
    fn loom_broken_budget_rmw() {
        check(Some(Step::BudgetRmw), &[], budget);
    }

    #[test]
    fn loom_broken_steps_are_caught() {
        expect_failure("mailbox::loom_models::loom_broken_notify_fence", "deadlock");
        expect_failure("mailbox::loom_models::loom_broken_recheck", "deadlock");
        expect_failure(
            "mailbox::loom_models::loom_broken_budget_rmw",
            "writes accepted over the budget",
        );
    }
}
