//! The log thread and its hub: the registry of queues, the single
//! consumer that drains them (on the log thread, or on the caller of
//! [`flush`] when no log thread runs), and the sleep / wake-up protocol
//! between producers and the log thread (see [`super`]).
//!
//! Uses: `super::ring` (the queues), `super::write` (writing records out),
//! `super::dest` (where they go).

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::dest::DEST;
use super::ring::{Consumer, DEFAULT_QUEUE_BYTES, LogQueue};
use super::write::{block_sigpipe, now_iso, write_fd, write_records};

/// How long the idle log thread parks before re-checking on its own (a
/// safety net; producers wake it explicitly).
const IDLE_PARK: Duration = Duration::from_secs(1);

/// What the consumer owns; lives inside [`Hub::drain`], so holding it means
/// being the only consumer of the hub's queues.
pub(super) struct DrainState {
    /// Snapshot of the hub's registry (refreshed when it grows).
    queues: Vec<&'static LogQueue>,
    /// Bytes taken out of one queue, waiting to be written.
    scratch: Vec<u8>,
    /// `(fd, end offset in scratch)` for each record in `scratch`.
    records: Vec<(i32, usize)>,
}

/// Receives the chunks a drain takes: the bytes, and `(fd, end offset)` for
/// each record in them.
pub(super) type ChunkSink<'a> = dyn FnMut(&[u8], &[(i32, usize)]) + 'a;

/// The log thread machinery: the registry of queues, the consumer lock, the
/// sleep/wake-up state. The process uses one ([`GLOBAL_HUB`]); tests make
/// private ones.
pub(super) struct Hub {
    /// Every queue created for this hub.
    registry: Mutex<Vec<&'static LogQueue>>,
    /// `registry.len()`, to notice new queues without locking.
    registered: AtomicUsize,
    /// The consumer lock, held while taking records and writing them.
    drain: Mutex<DrainState>,
    /// Set by the log thread before it parks; cleared by whoever wakes it.
    sleeping: AtomicBool,
    /// The log thread, set by the thread itself before it first sleeps.
    thread: OnceLock<Thread>,
    /// Whether the log thread was started (under the mutex: idempotent
    /// start).
    start_lock: Mutex<bool>,
    /// Mirror of `*start_lock`, readable without locking.
    started: AtomicBool,
    /// Iterations of the log thread's loop (each wake-up counts one).
    pub(super) wakeups: AtomicU64,
}

/// The process-wide hub behind [`LogQueue::create`], [`start_log_thread`]
/// and [`flush`].
pub(super) static GLOBAL_HUB: Hub = Hub::new();

impl Hub {
    pub(super) const fn new() -> Hub {
        Hub {
            registry: Mutex::new(Vec::new()),
            registered: AtomicUsize::new(0),
            drain: Mutex::new(DrainState {
                queues: Vec::new(),
                scratch: Vec::new(),
                records: Vec::new(),
            }),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
            start_lock: Mutex::new(false),
            started: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Vec<&'static LogQueue>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn create_queue(&'static self, bytes: usize) -> &'static LogQueue {
        let queue: &'static LogQueue = Box::leak(Box::new(LogQueue::new(bytes, self)));
        let mut registry = self.registry();
        registry.push(queue);
        self.registered.store(registry.len(), Ordering::Release);
        queue
    }

    /// Producer side of the wake-up protocol, after publishing a record.
    fn notify(&self) {
        // Pairs with the fence in `run`: either the log thread's re-check
        // sees our record, or we see its `sleeping` flag.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            // The Acquire swap makes the thread's handle (set before it first
            // raised the flag) visible.
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Whether some registered queue holds records.
    fn any_pending(&self) -> bool {
        self.registry().iter().any(|q| !q.is_empty())
    }

    /// Consumer: takes every queue's records and hands each chunk to `out`
    /// (scratch bytes and their per-record `(fd, end)` list). Returns whether
    /// anything was taken.
    pub(super) fn drain_with(&self, st: &mut DrainState, out: &mut ChunkSink<'_>) -> bool {
        if self.registered.load(Ordering::Acquire) != st.queues.len() {
            st.queues.clone_from(&self.registry());
        }
        let DrainState {
            queues,
            scratch,
            records,
        } = st;
        let mut worked = false;
        for queue in queues.iter() {
            debug_assert!(ptr::addr_eq(queue.hub, self));
            while queue.take(scratch, records) {
                worked = true;
                out(scratch, records);
            }
        }
        worked
    }

    /// Consumer: applies a change of destination, takes every queue's
    /// records and writes them where they go, then reports the lines each
    /// queue dropped since last time.
    fn drain_to_fds(&self, st: &mut DrainState) -> bool {
        DEST.apply();
        let worked = self.drain_with(st, &mut write_records);
        let dropped: u64 = st.queues.iter().map(|q| q.take_dropped()).sum();
        if dropped > 0 {
            let line = format!(
                "[{}] [WARN] {dropped} log line(s) dropped: a log queue was full\n",
                now_iso()
            );
            write_fd(DEST.fd_for(libc::STDERR_FILENO), line.as_bytes());
        }
        worked
    }

    pub(super) fn lock_drain(&self) -> MutexGuard<'_, DrainState> {
        self.drain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn start(&'static self) -> io::Result<()> {
        let mut started = self.start_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if *started {
            return Ok(());
        }
        thread::Builder::new()
            .name("mario-log".into())
            .spawn(move || self.run())?;
        *started = true;
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// The log thread's body.
    fn run(&'static self) {
        self.thread.get_or_init(thread::current);
        block_sigpipe();
        loop {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            if self.drain_to_fds(&mut self.lock_drain()) {
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            // Pairs with the fence in `notify`.
            fence(Ordering::SeqCst);
            if self.any_pending() {
                self.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            thread::park_timeout(IDLE_PARK);
            self.sleeping.store(false, Ordering::Relaxed);
        }
    }

    pub(super) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let guard = match self.drain.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut st) = guard {
                // Holding the consumer lock: nobody is between taking records
                // and writing them.
                if !self.started.load(Ordering::Acquire) {
                    self.drain_to_fds(&mut st);
                }
                if !self.any_pending() {
                    return true;
                }
            }
            if self.started.load(Ordering::Acquire) {
                // Safety net; the thread should already be awake.
                if let Some(thread) = self.thread.get() {
                    thread.unpark();
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl LogQueue {
    /// Creates a queue of [`DEFAULT_QUEUE_BYTES`] and registers it with the
    /// log thread. The queue is never freed (queues live for the process, as
    /// in the original): create one per producer thread, not per message.
    /// Example: the [module](crate::logq#example)'s first. C: `create_log_queue`.
    pub fn create() -> &'static LogQueue {
        Self::create_with_capacity(DEFAULT_QUEUE_BYTES)
    }

    /// Creates a queue holding `bytes` bytes of records (clamped to
    /// [`super::MIN_QUEUE_BYTES`]`..=`[`super::MAX_QUEUE_BYTES`]) and registers it with the
    /// log thread. Each record costs 6 bytes plus its line. Never freed, as
    /// [`LogQueue::create`].
    /// Example: [`QueueFull`](crate::logq::QueueFull).
    pub fn create_with_capacity(bytes: usize) -> &'static LogQueue {
        GLOBAL_HUB.create_queue(bytes)
    }
}

impl Consumer for Hub {
    fn notify(&self) {
        Hub::notify(self)
    }
}

/// Starts the log thread, which writes every queue's records to their fds
/// and sleeps when there is nothing to write. Idempotent: later calls return
/// `Ok(())` and start nothing. Fails only if the thread cannot be spawned.
/// Any thread. Example: the [module](crate::logq#example)'s first. C:
/// `start_log_thread`.
pub fn start_log_thread() -> io::Result<()> {
    GLOBAL_HUB.start()
}

/// Waits until every registered queue is empty and the log thread has
/// written what it took, or until `timeout` elapses; returns whether
/// everything was written (lines dropped because their fd failed count as
/// handled). If the log thread was never started, writes the pending records
/// on the calling thread. Any thread; `false` also when `timeout` is too
/// short for what is queued. Example: the [module](crate::logq#example)'s.
pub fn flush(timeout: Duration) -> bool {
    GLOBAL_HUB.flush(timeout)
}

/// Wakes the log thread (if it runs) to act on a change at once.
pub(super) fn wake_log_thread() {
    if let Some(t) = GLOBAL_HUB.thread.get() {
        t.unpark();
    }
}

/// Iterations of the global log thread's loop (for tests).
#[cfg(test)]
pub(crate) fn log_thread_wakeups() -> u64 {
    GLOBAL_HUB.wakeups.load(Ordering::Relaxed)
}
