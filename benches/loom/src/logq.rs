//! Model of src/logq/ (ring.rs and hub.rs): the single-producer byte ring [`LogQueue`], its
//! producer spin lock, and the [`Hub`] (the log thread's drain / sleep /
//! wake-up loop, `notify`, `flush`, registering queues).
//!
//! Copied exactly: the fields that take part in the protocol (`head`,
//! `tail`, `producing`, the ring's bytes, `registry`, `registered`, `drain`,
//! `sleeping`, `thread`, `started`) with the same orderings and fences, and
//! the order of every step of `push`, `lock_producer`, `take`, `notify`,
//! `any_pending`, `drain_with`, `run`, `flush`, `create_queue`.
//!
//! Left out, as they take no part in the protocol: cutting long lines
//! (`push` before `lock_producer`; pure code, unit-tested in src/logq/tests.rs), the
//! informational C mirrors `size` / `producer` / `consumer` (written with
//! `Relaxed`, never read by Rust), the `wakeups` statistics counter, writing
//! to file descriptors (the model appends the records to a list instead),
//! `block_sigpipe`, and time: `park_timeout(1 s)` is a plain `park()` (so
//! that a lost wake-up is a deadlock loom reports, rather than a one-second
//! stall), `flush`'s deadline is gone (it must finish on its own), its
//! `sleep(1 ms)` is a `yield_now()`, and `lock_producer`'s 64 spins and 10 ms
//! of yields are [`SPINS`] spins and [`YIELDS`] yields (only their being
//! finite matters; fewer keep the state space small).
//!
//! The ring's bytes are loom `UnsafeCell`s: loom reports any access to a
//! byte by the producer and the consumer that is not ordered by
//! happens-before, i.e. any overlap or tearing between the two sides.

use std::collections::VecDeque;
use std::sync::TryLockError;
use std::sync::atomic::{AtomicUsize as GhostUsize, Ordering as Ghost};

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Mutex, MutexGuard};
use loom::thread::{self, Thread};

use crate::cover;

/// `RECORD_HEADER` (src/logq/ring.rs): `fd` as `i32`, then the length as `u16`.
pub const RECORD_HEADER: usize = 6;

/// Spins of `lock_producer` before it yields (64 in src/logq/ring.rs).
pub const SPINS: usize = 1;
/// Yields of `lock_producer` before it gives up (about 10 ms worth in
/// src/logq/ring.rs; at least one).
pub const YIELDS: usize = 1;

/// Which parts of the protocol are present. [`LogVariant::REAL`] is the
/// code as written; the others exist to show that the model catches bugs.
#[derive(Debug, Clone, Copy)]
pub struct LogVariant {
    /// `fence(SeqCst)` in `Hub::notify` (src/logq/hub.rs).
    pub notify_fence: bool,
    /// `fence(SeqCst)` in `Hub::run` after raising `sleeping` (src/logq/hub.rs).
    pub run_fence: bool,
    /// `Hub::run` re-checks `any_pending()` before parking (src/logq/hub.rs).
    pub recheck: bool,
    /// `push` publishes `head` with `Release` (src/logq/ring.rs); `false`:
    /// `Relaxed`.
    pub head_release: bool,
    /// `take` frees bytes with a `Release` store of `tail` (src/logq/ring.rs);
    /// `false`: `Relaxed`.
    pub tail_release: bool,
    /// `push` takes the producer flag (src/logq/ring.rs); `false`: it does not.
    pub producer_lock: bool,
}

impl LogVariant {
    /// The protocol as src/logq/ has it.
    pub const REAL: LogVariant = LogVariant {
        notify_fence: true,
        run_fence: true,
        recheck: true,
        head_release: true,
        tail_release: true,
        producer_lock: true,
    };
}

/// `QueueFull` (src/logq/ring.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// `LogQueue` (src/logq/ring.rs), less the C mirrors and the `hub` pointer
/// (the hub is passed to [`LogQueue::push`] instead: loom has no statics).
pub struct LogQueue {
    head: AtomicU32,
    tail: AtomicU32,
    producing: AtomicBool,
    buf: Box<[UnsafeCell<u8>]>,
    v: LogVariant,
}

/// `ProducerGuard` (src/logq/ring.rs): releases the producer flag on drop.
struct ProducerGuard<'a>(&'a AtomicBool);

impl Drop for ProducerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl LogQueue {
    fn new(size: usize, v: LogVariant) -> LogQueue {
        LogQueue {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            producing: AtomicBool::new(false),
            buf: (0..size).map(|_| UnsafeCell::new(0)).collect(),
            v,
        }
    }

    /// `LogQueue::is_empty` (src/logq/ring.rs).
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }

    /// `LogQueue::push` (src/logq/ring.rs), from `lock_producer` on; `line`
    /// is at most `MAX_LOG_LINE_LENGTH` bytes (no cutting).
    pub fn push(&self, hub: &Hub, fd: i32, line: &[u8]) -> Result<(), QueueFull> {
        let len = line.len();
        let guard = if self.v.producer_lock {
            Some(self.lock_producer().ok_or(QueueFull)?)
        } else {
            None
        };
        let size = self.buf.len();
        // src/logq/ring.rs `self.head.load(Ordering::Relaxed)`: only the
        // holder of the producer flag stores `head`, so this reads its own
        // last store (see `own_load`).
        let head = own_load(&self.head);
        let tail = self.tail.load(Ordering::Acquire) as usize;
        let used = (head + size - tail) % size;
        let free = size - 1 - used;
        if RECORD_HEADER + len > free {
            cover("log: push refused, ring full");
            return Err(QueueFull);
        }
        if head + RECORD_HEADER + len > size {
            cover("log: record wraps around the ring's end");
        }
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&fd.to_ne_bytes());
        header[4..].copy_from_slice(&(len as u16).to_ne_bytes());
        let mut pos = head;
        pos = self.write_at(pos, &header);
        pos = self.write_at(pos, line);
        let order = if self.v.head_release {
            Ordering::Release
        } else {
            Ordering::Relaxed
        };
        self.head.store(pos as u32, order);
        // (src/logq/ring.rs stores the C mirror `producer` here: omitted.)
        drop(guard);
        hub.notify();
        Ok(())
    }

    /// `LogQueue::lock_producer` (src/logq/ring.rs).
    fn lock_producer(&self) -> Option<ProducerGuard<'_>> {
        let try_lock = || {
            self.producing
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if try_lock() {
            return Some(ProducerGuard(&self.producing));
        }
        cover("log: producer flag contended");
        for _ in 0..SPINS {
            loom::hint::spin_loop();
            if try_lock() {
                return Some(ProducerGuard(&self.producing));
            }
        }
        for _ in 0..YIELDS {
            thread::yield_now();
            if try_lock() {
                return Some(ProducerGuard(&self.producing));
            }
        }
        cover("log: producer gave up on the flag");
        None
    }

    /// `LogQueue::write_at` (src/logq/ring.rs): byte by byte, so that loom
    /// checks every byte's accesses.
    fn write_at(&self, pos: usize, src: &[u8]) -> usize {
        let size = self.buf.len();
        for (i, &b) in src.iter().enumerate() {
            self.buf[(pos + i) % size].with_mut(|p| unsafe { *p = b });
        }
        (pos + src.len()) % size
    }

    /// `LogQueue::read_at` (src/logq/ring.rs).
    fn read_at(&self, pos: usize, dst: &mut [u8]) {
        let size = self.buf.len();
        for (i, d) in dst.iter_mut().enumerate() {
            *d = self.buf[(pos + i) % size].with(|p| unsafe { *p });
        }
    }

    /// `LogQueue::take` (src/logq/ring.rs): appends the published records to
    /// `out` and frees them. Call only under the hub's `drain` mutex.
    fn take(&self, out: &mut Vec<(i32, Vec<u8>)>) -> bool {
        let size = self.buf.len();
        let head = self.head.load(Ordering::Acquire) as usize;
        // src/logq/ring.rs `self.tail.load(Ordering::Relaxed)`: only the
        // holder of the drain mutex stores `tail` (see `own_load`).
        let start = own_load(&self.tail);
        let mut tail = start;
        // (`scratch.len() < DRAIN_CHUNK` is always true for these sizes.)
        while tail != head {
            let used = (head + size - tail) % size;
            let mut header = [0u8; RECORD_HEADER];
            self.read_at(tail, &mut header);
            let fd = i32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
            let len = usize::from(u16::from_ne_bytes([header[4], header[5]]));
            // src/logq/ring.rs drops everything on a bad header ("cannot
            // happen"); the model insists that it does not.
            assert!(
                RECORD_HEADER + len <= used,
                "torn record: header says {len} bytes, {used} published"
            );
            let mut line = vec![0u8; len];
            self.read_at((tail + RECORD_HEADER) % size, &mut line);
            out.push((fd, line));
            tail = (tail + RECORD_HEADER + len) % size;
        }
        if tail == start {
            return false;
        }
        let order = if self.v.tail_release {
            Ordering::Release
        } else {
            Ordering::Relaxed
        };
        self.tail.store(tail as u32, order);
        // (src/logq/ring.rs stores the C mirror `consumer` here: omitted.)
        true
    }
}

/// A `Relaxed` load of an offset by the only thread allowed to store it at
/// the time (`head` under the producer flag, `tail` under the drain mutex).
/// Such a load returns the thread's own last store (every earlier store
/// happens-before it), so the model reads it with loom's `unsync_load`,
/// which returns the latest store and panics ("Concurrent `unsync_load` and
/// atomic store") if any store is *not* ordered before it: it checks the
/// single-writer claim. It also keeps loom's partial-order reduction from
/// hiding the race between this thread's next store and other threads'
/// loads (a thread's own load of an atomic masks earlier loads by others
/// from loom's race detection: tokio-rs/loom#392, #166).
fn own_load(a: &AtomicU32) -> usize {
    // SAFETY: loom's `unsync_load` is safe to call on a live atomic; it
    // only skips loom's synchronisation tracking (and checks its use).
    unsafe { a.unsync_load() as usize }
}

/// `OnceLock<Thread>` as `Hub::thread` uses it: set once by the log thread
/// (a `Release` store after writing the value), read with `Acquire`.
struct OnceThread {
    set: AtomicBool,
    val: UnsafeCell<Option<Thread>>,
}

impl OnceThread {
    fn new() -> OnceThread {
        OnceThread {
            set: AtomicBool::new(false),
            val: UnsafeCell::new(None),
        }
    }

    /// `get_or_init(thread::current)`, called by the log thread only.
    fn init_current(&self) {
        if !self.set.load(Ordering::Acquire) {
            self.val.with_mut(|p| unsafe { *p = Some(thread::current()) });
            self.set.store(true, Ordering::Release);
        }
    }

    fn get(&self) -> Option<Thread> {
        if self.set.load(Ordering::Acquire) {
            self.val.with(|p| unsafe { (*p).clone() })
        } else {
            None
        }
    }
}

/// `DrainState` (src/logq/hub.rs). `written` stands for the file
/// descriptors: every record the consumer wrote, in order.
pub struct DrainState {
    queues: Vec<Arc<LogQueue>>,
    pub written: Vec<(i32, Vec<u8>)>,
}

/// `Hub` (src/logq/hub.rs), less `start_lock` (the model starts the log
/// thread once, by hand) and `wakeups`.
pub struct Hub {
    registry: Mutex<Vec<Arc<LogQueue>>>,
    registered: AtomicUsize,
    drain: Mutex<DrainState>,
    sleeping: AtomicBool,
    thread: OnceThread,
    started: AtomicBool,
    v: LogVariant,
    /// Ghost: bytes of lines written so far.
    pub written_bytes: GhostUsize,
}

impl Hub {
    pub fn new(v: LogVariant) -> Hub {
        Hub {
            registry: Mutex::new(Vec::new()),
            registered: AtomicUsize::new(0),
            drain: Mutex::new(DrainState {
                queues: Vec::new(),
                written: Vec::new(),
            }),
            sleeping: AtomicBool::new(false),
            thread: OnceThread::new(),
            started: AtomicBool::new(false),
            v,
            written_bytes: GhostUsize::new(0),
        }
    }

    /// `Hub::create_queue` (src/logq/hub.rs), with a ring of `size` bytes
    /// (no clamping to `MIN_QUEUE_BYTES`: tiny rings wrap and fill early).
    pub fn create_queue(&self, size: usize) -> Arc<LogQueue> {
        let queue = Arc::new(LogQueue::new(size, self.v));
        let mut registry = self.registry.lock().unwrap();
        registry.push(queue.clone());
        self.registered.store(registry.len(), Ordering::Release);
        queue
    }

    /// `Hub::notify` (src/logq/hub.rs).
    fn notify(&self) {
        if self.v.notify_fence {
            fence(Ordering::SeqCst);
        }
        if self.sleeping.load(Ordering::Relaxed) && crate::swap_false(&self.sleeping) {
            cover("log: notify woke the log thread");
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// `Hub::any_pending` (src/logq/hub.rs).
    fn any_pending(&self) -> bool {
        self.registry.lock().unwrap().iter().any(|q| !q.is_empty())
    }

    /// `Hub::drain_with` + `write_records` (src/logq/hub.rs, src/logq/write.rs).
    fn drain_to_fds(&self, st: &mut DrainState) -> bool {
        if self.registered.load(Ordering::Acquire) != st.queues.len() {
            if !st.queues.is_empty() {
                cover("log: consumer refreshed a stale registry snapshot");
            }
            st.queues.clone_from(&self.registry.lock().unwrap());
        }
        let DrainState { queues, written } = st;
        let mut worked = false;
        let mut chunk = Vec::new();
        for queue in queues.iter() {
            while queue.take(&mut chunk) {
                worked = true;
                for (fd, line) in chunk.drain(..) {
                    self.written_bytes.fetch_add(line.len(), Ghost::SeqCst);
                    written.push((fd, line));
                }
            }
        }
        worked
    }

    fn lock_drain(&self) -> MutexGuard<'_, DrainState> {
        self.drain.lock().unwrap()
    }

    /// `Hub::start` (src/logq/hub.rs): spawns the log thread, then raises
    /// `started`. The model's log thread returns once it has written
    /// `expect_bytes` bytes of lines (the real one never returns).
    pub fn start(hub: &Arc<Hub>, expect_bytes: usize) -> loom::thread::JoinHandle<()> {
        let h = hub.clone();
        let t = thread::spawn(move || h.run(expect_bytes));
        hub.started.store(true, Ordering::Release);
        t
    }

    /// `Hub::run` (src/logq/hub.rs).
    fn run(&self, expect_bytes: usize) {
        self.thread.init_current();
        loop {
            if self.drain_to_fds(&mut self.lock_drain()) {
                continue;
            }
            // Model only: the real thread never ends.
            if self.written_bytes.load(Ghost::SeqCst) >= expect_bytes {
                return;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            if self.v.run_fence {
                fence(Ordering::SeqCst);
            }
            if self.v.recheck && self.any_pending() {
                cover("log: re-check found a record after raising the flag");
                self.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            // `park_timeout(IDLE_PARK)`: without the timeout, a lost
            // wake-up leaves the thread parked for good, which loom
            // reports as a deadlock.
            cover("log: log thread parked");
            thread::park();
            self.sleeping.store(false, Ordering::Relaxed);
        }
    }

    /// `Hub::flush` (src/logq/hub.rs) without its deadline: returns once
    /// every queue is empty with nobody between taking and writing.
    pub fn flush(&self) -> bool {
        loop {
            let guard = match self.drain.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => {
                    cover("log: flush found the drain mutex taken");
                    None
                }
            };
            if let Some(mut st) = guard {
                if !self.started.load(Ordering::Acquire) && self.drain_to_fds(&mut st) {
                    cover("log: flush wrote records on the caller's thread");
                }
                if !self.any_pending() {
                    return true;
                }
                cover("log: flush saw records pending and waits");
            }
            if self.started.load(Ordering::Acquire)
                && let Some(thread) = self.thread.get()
            {
                thread.unpark();
            }
            thread::yield_now();
        }
    }

    /// The records written so far (takes the drain mutex).
    pub fn written(&self) -> Vec<(i32, Vec<u8>)> {
        self.lock_drain().written.clone()
    }
}

/// Checks that `written` is exactly `expected`, in order (ghost helper).
pub fn assert_same_records(written: &[(i32, Vec<u8>)], expected: &[(i32, Vec<u8>)]) {
    assert_eq!(
        written, expected,
        "records written differ from records pushed (lost, duplicated, reordered or torn)"
    );
}

/// Records pushed by several producers: each producer's own records must
/// come out in its order, and nothing else may come out.
pub fn assert_interleaving(written: &[(i32, Vec<u8>)], per_producer: &[Vec<(i32, Vec<u8>)>]) {
    let mut queues: Vec<VecDeque<&(i32, Vec<u8>)>> =
        per_producer.iter().map(|v| v.iter().collect()).collect();
    for rec in written {
        let q = queues
            .iter_mut()
            .find(|q| q.front() == Some(&rec))
            .unwrap_or_else(|| panic!("record {rec:?} was not pushed, or is out of order"));
        q.pop_front();
    }
    for q in &queues {
        assert!(q.is_empty(), "records pushed but never written: {q:?}");
    }
}
