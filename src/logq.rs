//! The logging core: bounded single-producer byte rings (`LOG_QUEUE`), the
//! log thread that writes them out, and the `log` crate sink.
//!
//! A [`LogQueue`] is a ring of bytes holding records `(fd, length, bytes)`.
//! One thread produces into it ([`LogQueue::push`]); the log thread
//! ([`start_log_thread`]) drains every registered queue and writes each
//! record to its file descriptor, in order per queue. The log thread sleeps
//! when every queue is empty and is woken by the next push, so an idle
//! process spends no CPU on logging. [`flush`] waits until everything pushed
//! so far has been written (and writes it on the calling thread when the log
//! thread was never started).
//!
//! [`install_logger`] routes the `log` crate's messages into these queues:
//! the calling thread's own queue if it registered one with
//! [`set_thread_queue`], otherwise a shared fallback queue.
//!
//! # Concurrency protocol
//!
//! * Producer side: a push holds the queue's producer flag (uncontended when
//!   the queue is used as intended, by one thread), writes the record into
//!   the free part of the ring and publishes it with a `Release` store of the
//!   private write offset.
//! * Consumer side: every drain of a queue happens under its hub's consumer
//!   mutex (held by the log thread while it drains and writes, or by
//!   [`flush`] when it writes on the caller's thread). The consumer reads only
//!   published bytes and frees them with a `Release` store of the private
//!   read offset.
//! * Sleep / wake-up: the log thread sets a `sleeping` flag, issues a
//!   `SeqCst` fence, re-checks every queue and only then parks (with a one
//!   second safety timeout). A producer, after publishing, issues a `SeqCst`
//!   fence and loads the flag; only if it is set does it clear it and
//!   unpark the thread. The two fences guarantee that either the log thread
//!   sees the new record or the producer sees the flag: no lost wake-up.

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest line a record can hold, in bytes (the C macro
/// `MAX_LOG_LINE_LENGTH`). Longer lines are cut to this length.
pub const MAX_LOG_LINE_LENGTH: usize = 2048;

/// Capacity in bytes of a queue made by [`LogQueue::create`].
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024;

/// Smallest capacity [`LogQueue::create_with_capacity`] accepts (smaller
/// requests are rounded up): room for at least one maximal record.
pub const MIN_QUEUE_BYTES: usize = 4 * 1024;

/// Largest capacity [`LogQueue::create_with_capacity`] accepts (larger
/// requests are cut down).
pub const MAX_QUEUE_BYTES: usize = 1 << 30;

/// Bytes of a record's header in the ring: `fd` (`i32`) then the length of
/// the line (`u16`), both in native byte order.
const RECORD_HEADER: usize = 6;

/// How much the consumer copies out of one queue before writing it out.
const DRAIN_CHUNK: usize = 64 * 1024;

/// How long the idle log thread parks before re-checking on its own (a
/// safety net; producers wake it explicitly).
const IDLE_PARK: Duration = Duration::from_secs(1);

/// How long a write to a non-blocking fd that reports `EAGAIN` is retried
/// (without progress) before its bytes are dropped.
const EAGAIN_BUDGET: Duration = Duration::from_millis(100);

/// How long [`LogQueue::push`] waits for another thread that is pushing into
/// the same queue at the same moment (a misuse of a single-producer queue)
/// before giving up and dropping the line.
const PRODUCER_CONTENTION_BUDGET: Duration = Duration::from_millis(10);

/// The line was not stored: the queue had not enough free space for it (or,
/// when the queue is misused by several threads at once, another producer
/// held it for too long). The line is dropped entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("log queue full")
    }
}

impl std::error::Error for QueueFull {}

/// A bounded single-producer / single-consumer ring of log records (the C
/// `LOG_QUEUE`).
///
/// The first three fields are what C applications may read through a
/// `LOG_QUEUE *`; they are kept up to date for that purpose, but the queue's
/// own bookkeeping lives in private fields, so storing into them has no
/// effect on the queue.
///
/// Queues are created with [`LogQueue::create`], live for the rest of the
/// process and are drained by the log thread.
#[repr(C)]
pub struct LogQueue {
    /// Capacity of the ring in bytes (C `size`). Informational.
    pub size: AtomicU32,
    /// Offset in the ring where the next record will be written (C
    /// `producer`). Informational mirror, updated after each push.
    pub producer: AtomicU32,
    /// Offset in the ring of the next record to be written out (C
    /// `consumer`). Informational mirror, updated after each drain.
    pub consumer: AtomicU32,
    /// Write offset, in `0..buf.len()`. Written only by the producer that
    /// holds `producing`.
    head: AtomicU32,
    /// Read offset, in `0..buf.len()`. Written only by the consumer that
    /// holds the hub's `drain` mutex.
    tail: AtomicU32,
    /// Producer lock (see [`LogQueue::push`]).
    producing: AtomicBool,
    /// The log thread machinery this queue is registered with.
    hub: &'static Hub,
    /// The ring. One byte is always left free so that `head == tail` means
    /// empty.
    buf: Box<[UnsafeCell<u8>]>,
}

// SAFETY: every field except `buf` is `Sync` (atomics, a shared reference to
// a `Sync` hub, an immutable box). The bytes of `buf` are accessed only
// through `write_cells` / `read_cells` under the SPSC protocol: one producer
// at a time (the `producing` flag, acquired with `Acquire` and released with
// `Release`) writes only the free region `[head, tail - 1)`, one consumer at a
// time (the hub's `drain` mutex) reads only the published region
// `[tail, head)`. A region changes hands only through a `Release` store of
// `head` (producer to consumer) or `tail` (consumer to producer) that the
// other side loads with `Acquire` before touching it, so no byte is ever
// accessed by two threads without a happens-before edge between them.
unsafe impl Sync for LogQueue {}

impl fmt::Debug for LogQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogQueue")
            .field("size", &self.buf.len())
            .field("producer", &self.head.load(Ordering::Relaxed))
            .field("consumer", &self.tail.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Releases the producer flag on drop.
struct ProducerGuard<'a>(&'a AtomicBool);

impl Drop for ProducerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl LogQueue {
    /// Creates a queue of [`DEFAULT_QUEUE_BYTES`] and registers it with the
    /// log thread. The queue is never freed (queues live for the process, as
    /// in the original).
    pub fn create() -> &'static LogQueue {
        Self::create_with_capacity(DEFAULT_QUEUE_BYTES)
    }

    /// Creates a queue holding `bytes` bytes of records (clamped to
    /// [`MIN_QUEUE_BYTES`]`..=`[`MAX_QUEUE_BYTES`]) and registers it with the
    /// log thread. Each record costs 6 bytes plus its line.
    pub fn create_with_capacity(bytes: usize) -> &'static LogQueue {
        GLOBAL_HUB.create_queue(bytes)
    }

    fn new(bytes: usize, hub: &'static Hub) -> LogQueue {
        let size = bytes.clamp(MIN_QUEUE_BYTES, MAX_QUEUE_BYTES);
        let buf: Box<[UnsafeCell<u8>]> = (0..size).map(|_| UnsafeCell::new(0)).collect();
        LogQueue {
            // `size <= MAX_QUEUE_BYTES < u32::MAX`: the cast is lossless.
            size: AtomicU32::new(size as u32),
            producer: AtomicU32::new(0),
            consumer: AtomicU32::new(0),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            producing: AtomicBool::new(false),
            hub,
            buf,
        }
    }

    /// Capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Whether every record pushed so far has been taken by the consumer.
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }

    /// Appends one line, to be written to `fd` by the log thread.
    ///
    /// Meant to be called by one producer thread per queue. Never blocks:
    /// when the record does not fit in the free space, the whole line is
    /// dropped and `Err(QueueFull)` is returned. Lines longer than
    /// [`MAX_LOG_LINE_LENGTH`] are cut to that length; if the line ended with
    /// `'\n'`, the cut line ends with `'\n'` too.
    ///
    /// Calls from several threads at once are safe (they are serialised by a
    /// tiny spin lock) but not the intended use; a call that cannot get the
    /// queue within about 10 ms gives up with `Err(QueueFull)`.
    pub fn push(&self, fd: i32, line: &[u8]) -> Result<(), QueueFull> {
        let (body, newline) = if line.len() > MAX_LOG_LINE_LENGTH {
            if line.last() == Some(&b'\n') {
                (&line[..MAX_LOG_LINE_LENGTH - 1], true)
            } else {
                (&line[..MAX_LOG_LINE_LENGTH], false)
            }
        } else {
            (line, false)
        };
        let len = body.len() + usize::from(newline);

        let guard = self.lock_producer().ok_or(QueueFull)?;
        let size = self.buf.len();
        // Only the producer (us, holding the flag) stores `head`.
        let head = self.head.load(Ordering::Relaxed) as usize;
        // Acquire: the consumer has finished reading the bytes it freed.
        let tail = self.tail.load(Ordering::Acquire) as usize;
        let used = (head + size - tail) % size;
        let free = size - 1 - used;
        if RECORD_HEADER + len > free {
            return Err(QueueFull);
        }

        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&fd.to_ne_bytes());
        // `len <= MAX_LOG_LINE_LENGTH`, which fits in a u16.
        header[4..].copy_from_slice(&(len as u16).to_ne_bytes());

        let mut pos = head;
        // SAFETY: we hold the producer flag, so no other thread writes the
        // ring. The `RECORD_HEADER + len` bytes from `head` lie in the free
        // region (checked above against a `tail` loaded with `Acquire`), which
        // the consumer does not read until we publish it below.
        unsafe {
            pos = self.write_at(pos, &header);
            pos = self.write_at(pos, body);
            if newline {
                pos = self.write_at(pos, b"\n");
            }
        }
        // `pos < size <= MAX_QUEUE_BYTES`: the casts are lossless.
        self.head.store(pos as u32, Ordering::Release);
        self.producer.store(pos as u32, Ordering::Relaxed);
        drop(guard);

        self.hub.notify();
        Ok(())
    }

    /// Takes the producer flag: immediately when uncontended; otherwise spins,
    /// then yields, for at most [`PRODUCER_CONTENTION_BUDGET`].
    fn lock_producer(&self) -> Option<ProducerGuard<'_>> {
        let try_lock = || {
            self.producing
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if try_lock() {
            return Some(ProducerGuard(&self.producing));
        }
        for _ in 0..64 {
            std::hint::spin_loop();
            if try_lock() {
                return Some(ProducerGuard(&self.producing));
            }
        }
        let deadline = Instant::now() + PRODUCER_CONTENTION_BUDGET;
        loop {
            thread::yield_now();
            if try_lock() {
                return Some(ProducerGuard(&self.producing));
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Copies `src` into the ring at `pos`, wrapping around the end, and
    /// returns the offset just past it.
    ///
    /// # Safety
    ///
    /// The caller must be the queue's only producer at this time (hold
    /// `producing`), and the `src.len()` bytes from `pos` (wrapping) must lie
    /// in the free region, which the consumer does not read.
    unsafe fn write_at(&self, pos: usize, src: &[u8]) -> usize {
        let size = self.buf.len();
        let first = src.len().min(size - pos);
        let (a, b) = src.split_at(first);
        // SAFETY: forwarded from this function's contract; the slices are
        // bounds-checked by indexing.
        unsafe {
            write_cells(&self.buf[pos..pos + first], a);
            write_cells(&self.buf[..b.len()], b);
        }
        (pos + src.len()) % size
    }

    /// Copies `dst.len()` bytes out of the ring from `pos`, wrapping around
    /// the end.
    ///
    /// # Safety
    ///
    /// The caller must be the queue's only consumer at this time (hold the
    /// hub's `drain` mutex), and the bytes read must lie in the published
    /// region `[tail, head)` for a `head` loaded with `Acquire`.
    unsafe fn read_at(&self, pos: usize, dst: &mut [u8]) {
        let size = self.buf.len();
        let first = dst.len().min(size - pos);
        let (a, b) = dst.split_at_mut(first);
        // SAFETY: forwarded from this function's contract; the slices are
        // bounds-checked by indexing.
        unsafe {
            read_cells(&self.buf[pos..pos + first], a);
            read_cells(&self.buf[..b.len()], b);
        }
    }

    /// Consumer: copies published records into `scratch` (about
    /// [`DRAIN_CHUNK`] bytes at most), noting `(fd, end offset in scratch)`
    /// per record in `records`, then frees them in the ring. Returns whether
    /// anything was taken.
    ///
    /// Must be called only with the hub's `drain` mutex held: callers pass
    /// the guarded [`DrainState`]'s buffers, which exist only inside it.
    fn take(&self, scratch: &mut Vec<u8>, records: &mut Vec<(i32, usize)>) -> bool {
        scratch.clear();
        records.clear();
        let size = self.buf.len();
        // Acquire: the producer's bytes up to `head` are visible.
        let head = self.head.load(Ordering::Acquire) as usize;
        // Only the consumer (us, under the drain mutex) stores `tail`.
        let start = self.tail.load(Ordering::Relaxed) as usize;
        let mut tail = start;
        while tail != head && scratch.len() < DRAIN_CHUNK {
            let used = (head + size - tail) % size;
            let mut header = [0u8; RECORD_HEADER];
            // SAFETY: we are the only consumer (drain mutex) and a published
            // record starts at `tail`, so its header lies in `[tail, head)`.
            unsafe { self.read_at(tail, &mut header) };
            let fd = i32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
            let len = usize::from(u16::from_ne_bytes([header[4], header[5]]));
            if len > MAX_LOG_LINE_LENGTH || RECORD_HEADER + len > used {
                // Cannot happen (the producer writes whole records before
                // publishing them); drop everything rather than misread.
                tail = head;
                break;
            }
            let at = scratch.len();
            scratch.resize(at + len, 0);
            // SAFETY: as above; the record's `len` bytes follow its header
            // inside `[tail, head)` (checked against `used`).
            unsafe { self.read_at((tail + RECORD_HEADER) % size, &mut scratch[at..]) };
            records.push((fd, scratch.len()));
            tail = (tail + RECORD_HEADER + len) % size;
        }
        if tail == start {
            return false;
        }
        // Release: we are done reading the freed bytes. Lossless casts, as
        // `tail < size <= MAX_QUEUE_BYTES`.
        self.tail.store(tail as u32, Ordering::Release);
        self.consumer.store(tail as u32, Ordering::Relaxed);
        true
    }
}

/// Copies `src` into `cells`, which must have the same length.
///
/// # Safety
///
/// No other thread may access `cells` during the call.
unsafe fn write_cells(cells: &[UnsafeCell<u8>], src: &[u8]) {
    assert_eq!(cells.len(), src.len());
    // SAFETY: `UnsafeCell<u8>` has the layout of `u8`, so `cells` is
    // `cells.len()` contiguous writable bytes (writing through an
    // `UnsafeCell` behind a shared reference is allowed); the pointer comes
    // from the whole slice, so it may cover all of it. `src` has the same
    // length (asserted) and cannot overlap the ring. Exclusive access is the
    // caller's contract.
    unsafe { ptr::copy_nonoverlapping(src.as_ptr(), UnsafeCell::raw_get(cells.as_ptr()), src.len()) }
}

/// Copies `cells` into `dst`, which must have the same length.
///
/// # Safety
///
/// No other thread may write `cells` during the call.
unsafe fn read_cells(cells: &[UnsafeCell<u8>], dst: &mut [u8]) {
    assert_eq!(cells.len(), dst.len());
    // SAFETY: as in `write_cells`: `cells` is `dst.len()` contiguous
    // readable bytes, `dst` is a distinct exclusive buffer of the same length,
    // and the absence of concurrent writers is the caller's contract.
    unsafe {
        ptr::copy_nonoverlapping(
            UnsafeCell::raw_get(cells.as_ptr()).cast_const(),
            dst.as_mut_ptr(),
            dst.len(),
        )
    }
}

/// What the consumer owns; lives inside [`Hub::drain`], so holding it means
/// being the only consumer of the hub's queues.
struct DrainState {
    /// Snapshot of the hub's registry (refreshed when it grows).
    queues: Vec<&'static LogQueue>,
    /// Bytes taken out of one queue, waiting to be written.
    scratch: Vec<u8>,
    /// `(fd, end offset in scratch)` for each record in `scratch`.
    records: Vec<(i32, usize)>,
}

/// Receives the chunks a drain takes: the bytes, and `(fd, end offset)` for
/// each record in them.
type ChunkSink<'a> = dyn FnMut(&[u8], &[(i32, usize)]) + 'a;

/// The log thread machinery: the registry of queues, the consumer lock, the
/// sleep/wake-up state. The process uses one ([`GLOBAL_HUB`]); tests make
/// private ones.
struct Hub {
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
    wakeups: AtomicU64,
}

/// The process-wide hub behind [`LogQueue::create`], [`start_log_thread`]
/// and [`flush`].
static GLOBAL_HUB: Hub = Hub::new();

impl Hub {
    const fn new() -> Hub {
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

    fn create_queue(&'static self, bytes: usize) -> &'static LogQueue {
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
    fn drain_with(&self, st: &mut DrainState, out: &mut ChunkSink<'_>) -> bool {
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
            debug_assert!(ptr::eq(queue.hub, self));
            while queue.take(scratch, records) {
                worked = true;
                out(scratch, records);
            }
        }
        worked
    }

    /// Consumer: takes every queue's records and writes them to their fds.
    fn drain_to_fds(&self, st: &mut DrainState) -> bool {
        self.drain_with(st, &mut write_records)
    }

    fn lock_drain(&self) -> MutexGuard<'_, DrainState> {
        self.drain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&'static self) -> io::Result<()> {
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

    fn flush(&self, timeout: Duration) -> bool {
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

/// Writes a chunk taken by [`LogQueue::take`], one `write` per run of
/// consecutive records with the same fd.
fn write_records(scratch: &[u8], records: &[(i32, usize)]) {
    let mut start = 0;
    let mut i = 0;
    while i < records.len() {
        let fd = records[i].0;
        while i + 1 < records.len() && records[i + 1].0 == fd {
            i += 1;
        }
        let end = records[i].1;
        write_fd(fd, &scratch[start..end]);
        start = end;
        i += 1;
    }
}

/// Writes all of `buf` to `fd` (never closing it). Retries `EINTR` and short
/// writes; on `EAGAIN` retries for up to [`EAGAIN_BUDGET`] without progress;
/// on any other error drops the rest. Returns whether everything was written.
fn write_fd(fd: i32, mut buf: &[u8]) -> bool {
    let mut stalled_since: Option<Instant> = None;
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole
        // call, and `write` does not keep the pointer. The fd is only written
        // to, never closed.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            // `0 < n <= buf.len()`.
            buf = &buf[n as usize..];
            stalled_since = None;
            continue;
        }
        if n == 0 {
            return false;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= EAGAIN_BUDGET {
                    return false;
                }
                thread::sleep(Duration::from_millis(1));
            }
            _ => return false,
        }
    }
    true
}

/// Blocks `SIGPIPE` in the calling thread (the log thread), so that a closed
/// pipe or socket on a log fd yields `EPIPE` instead of killing a host that
/// did not ignore the signal.
fn block_sigpipe() {
    // SAFETY: `set` is a plain C struct, initialised by `sigemptyset` before
    // use; `pthread_sigmask` only changes the calling thread's mask and
    // accepts a null old-set pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut());
    }
}

/// Starts the log thread, which writes every queue's records to their fds
/// and sleeps when there is nothing to write. Idempotent: later calls return
/// `Ok(())` and start nothing. Fails only if the thread cannot be spawned.
pub fn start_log_thread() -> io::Result<()> {
    GLOBAL_HUB.start()
}

/// Waits until every registered queue is empty and the log thread has
/// written what it took, or until `timeout` elapses; returns whether
/// everything was written (lines dropped because their fd failed count as
/// handled). If the log thread was never started, writes the pending records
/// on the calling thread.
pub fn flush(timeout: Duration) -> bool {
    GLOBAL_HUB.flush(timeout)
}

/// Iterations of the global log thread's loop (for tests).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn log_thread_wakeups() -> u64 {
    GLOBAL_HUB.wakeups.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// The `log` crate sink.

thread_local! {
    /// The queue the logger uses for messages of this thread.
    static THREAD_QUEUE: Cell<Option<&'static LogQueue>> = const { Cell::new(None) };
}

/// Shared queue for threads without their own; the mutex keeps it
/// single-producer.
static FALLBACK_QUEUE: Mutex<Option<&'static LogQueue>> = Mutex::new(None);

/// Makes the `log` crate sink ([`install_logger`]) put this thread's
/// messages into `q`. The calling thread must then be `q`'s only producer
/// (as for any [`LogQueue`]).
pub fn set_thread_queue(q: &'static LogQueue) {
    THREAD_QUEUE.with(|c| c.set(Some(q)));
}

/// Undoes [`set_thread_queue`] for this thread: its messages go to the
/// shared fallback queue again.
pub fn clear_thread_queue() {
    THREAD_QUEUE.with(|c| c.set(None));
}

/// A line being formatted: at most [`MAX_LOG_LINE_LENGTH`] bytes, the rest
/// is cut.
struct LineBuf {
    buf: [u8; MAX_LOG_LINE_LENGTH],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            buf: [0; MAX_LOG_LINE_LENGTH],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line with `'\n'`, replacing the last byte if it is full.
    fn end_line(&mut self) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        } else {
            self.buf[self.len - 1] = b'\n';
        }
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `[<secs>] [<LEVEL>] <message>\n`, cut to [`MAX_LOG_LINE_LENGTH`].
fn format_line(secs: u64, level: log::Level, args: &fmt::Arguments<'_>) -> LineBuf {
    let mut line = LineBuf::new();
    // `LineBuf::write_str` never fails; a failing `Display` impl inside
    // `args` only shortens the line.
    let _ = fmt::Write::write_fmt(&mut line, format_args!("[{secs}] [{}] {args}", level.as_str()));
    line.end_line();
    line
}

/// The logger installed by [`install_logger`].
struct MarioLogger;

static LOGGER: MarioLogger = MarioLogger;

/// Starts the global log thread on the first message.
static LAZY_START: Once = Once::new();

impl MarioLogger {
    /// Formats and queues `record`, without the level check.
    fn emit(&self, record: &log::Record<'_>) {
        LAZY_START.call_once(|| {
            // On failure, lines wait in their queues until `flush`.
            let _ = start_log_thread();
        });
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format_line(secs, record.level(), record.args());
        let fd = if record.level() == log::Level::Error {
            libc::STDERR_FILENO
        } else {
            libc::STDOUT_FILENO
        };
        // `try_with`: during thread teardown the thread-local may be gone.
        match THREAD_QUEUE.try_with(Cell::get).ok().flatten() {
            Some(queue) => {
                // A full queue drops the line, as `record_log` does.
                let _ = queue.push(fd, line.as_bytes());
            }
            None => {
                let mut fallback = FALLBACK_QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
                let queue = *fallback.get_or_insert_with(LogQueue::create);
                let _ = queue.push(fd, line.as_bytes());
            }
        }
    }
}

impl log::Log for MarioLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.emit(record);
        }
    }

    fn flush(&self) {
        flush(Duration::from_secs(1));
    }
}

/// The level filter from `MARIO_LOG` (`error`, `warn`, `info`, `debug`,
/// `trace` or `off`, any case); `Info` when unset or not understood.
fn level_from_env() -> log::LevelFilter {
    std::env::var("MARIO_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(log::LevelFilter::Info)
}

/// Installs the library's `log` crate sink (once): messages become lines
/// `[<unix secs>] [<LEVEL>] <message>` queued for the log thread (started on
/// the first message), to stderr for errors and stdout otherwise. The
/// maximum level is `Info`, or the one named by the `MARIO_LOG` environment
/// variable.
///
/// Returns `true` if our logger is the installed one (also on later calls),
/// `false` if another logger was installed first (it then receives the
/// library's messages).
pub fn install_logger() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&LOGGER).is_ok();
        if ok {
            log::set_max_level(level_from_env());
        }
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{BufRead, BufReader, Read};
    use std::os::fd::FromRawFd;

    fn test_hub() -> &'static Hub {
        Box::leak(Box::new(Hub::new()))
    }

    /// Takes every record of `hub`'s queues, one entry per record.
    fn drain_records(hub: &Hub) -> Vec<(i32, Vec<u8>)> {
        let mut out = Vec::new();
        hub.drain_with(&mut hub.lock_drain(), &mut |scratch, records| {
            let mut start = 0;
            for &(fd, end) in records {
                out.push((fd, scratch[start..end].to_vec()));
                start = end;
            }
        });
        out
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A line of `len` bytes whose content depends on `seq`.
    fn pattern(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i * 7) as u8).collect()
    }

    /// A pipe; the read end as a `File`, the write end as a raw fd.
    fn pipe() -> (File, i32) {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two fds `pipe` writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: `fds[0]` is a fresh fd nobody else owns.
        let reader = unsafe { File::from_raw_fd(fds[0]) };
        (reader, fds[1])
    }

    fn close(fd: i32) {
        // SAFETY: `fd` is a write end created by `pipe` in this test and
        // closed once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn wrap_around_with_random_sizes() {
        let hub = test_hub();
        // An odd capacity, so that records wrap at every possible offset.
        let q = hub.create_queue(5003);
        assert_eq!(q.capacity(), 5003);
        assert_eq!(q.size.load(Ordering::Relaxed), 5003);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut pushed, mut checked) = (0u64, 0u64);
        for _round in 0..2000 {
            let burst = rng.next() % 8 + 1;
            for _ in 0..burst {
                let len = match rng.next() % 10 {
                    0 => (rng.next() % (MAX_LOG_LINE_LENGTH as u64 + 1)) as usize,
                    1 => 0,
                    _ => (rng.next() % 120) as usize,
                };
                let fd = (pushed % 3) as i32;
                if q.push(fd, &pattern(pushed, len)).is_err() {
                    break;
                }
                pushed += 1;
            }
            for (fd, bytes) in drain_records(hub) {
                assert_eq!(fd, (checked % 3) as i32);
                assert_eq!(bytes, pattern(checked, bytes.len()));
                checked += 1;
            }
            assert!(q.is_empty());
            assert_eq!(
                q.producer.load(Ordering::Relaxed),
                q.consumer.load(Ordering::Relaxed)
            );
        }
        assert_eq!(pushed, checked);
        assert!(pushed > 5000, "only {pushed} records");
    }

    #[test]
    fn lengths_survive_wrap_around() {
        // Same as above but checks lengths exactly, with a fixed sequence.
        let hub = test_hub();
        let q = hub.create_queue(MIN_QUEUE_BYTES + 1);
        let mut rng = XorShift(12345);
        let mut expected = std::collections::VecDeque::new();
        for seq in 0..20_000u64 {
            let len = (rng.next() % 300) as usize;
            let line = pattern(seq, len);
            if q.push(7, &line).is_err() {
                for (fd, bytes) in drain_records(hub) {
                    assert_eq!(fd, 7);
                    assert_eq!(Some(bytes), expected.pop_front());
                }
                q.push(7, &line).expect("fits after drain");
            }
            expected.push_back(line);
        }
        for (_, bytes) in drain_records(hub) {
            assert_eq!(Some(bytes), expected.pop_front());
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn full_queue_rejects_without_blocking() {
        let hub = test_hub();
        let q = hub.create_queue(MIN_QUEUE_BYTES);
        let line = [b'x'; 100];
        let mut n = 0;
        while q.push(1, &line).is_ok() {
            n += 1;
        }
        // (4096 - 1) / 106 records fit.
        assert_eq!(n, (MIN_QUEUE_BYTES - 1) / (RECORD_HEADER + 100));
        let t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(q.push(1, &line), Err(QueueFull));
        }
        assert!(t.elapsed() < Duration::from_millis(500));
        // A smaller line may still fit in what is left.
        let left = MIN_QUEUE_BYTES - 1 - n * (RECORD_HEADER + 100);
        assert!(q.push(1, &vec![b'y'; left - RECORD_HEADER]).is_ok());
        assert_eq!(q.push(1, b""), Err(QueueFull));

        let records = drain_records(hub);
        assert_eq!(records.len(), n + 1);
        assert!(q.is_empty());
        for _ in 0..n {
            q.push(1, &line).expect("room after drain");
        }
        assert_eq!(drain_records(hub).len(), n);
    }

    #[test]
    fn long_lines_are_cut() {
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let mut with_nl = pattern(1, 3000);
        with_nl.push(b'\n');
        let without_nl = vec![b'a'; 5000];
        let exact = pattern(2, MAX_LOG_LINE_LENGTH);
        let mut exact_nl = pattern(3, MAX_LOG_LINE_LENGTH - 1);
        exact_nl.push(b'\n');
        for line in [&with_nl, &without_nl, &exact, &exact_nl] {
            q.push(1, line).unwrap();
        }
        let got = drain_records(hub);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].1.len(), MAX_LOG_LINE_LENGTH);
        assert_eq!(
            got[0].1[..MAX_LOG_LINE_LENGTH - 1],
            with_nl[..MAX_LOG_LINE_LENGTH - 1]
        );
        assert_eq!(got[0].1.last(), Some(&b'\n'));
        assert_eq!(got[1].1, without_nl[..MAX_LOG_LINE_LENGTH]);
        assert_eq!(got[2].1, exact);
        assert_eq!(got[3].1, exact_nl);
    }

    #[test]
    fn log_thread_delivers_100k_lines_in_order() {
        const LINES: u64 = 100_000;
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let (reader, wfd) = pipe();
        hub.start().unwrap();
        hub.start().unwrap(); // idempotent
        let producer = thread::spawn(move || {
            let mut full = 0u64;
            for i in 0..LINES {
                let line = format!("line {i} {}\n", "z".repeat((i % 50) as usize));
                while q.push(wfd, line.as_bytes()).is_err() {
                    full += 1;
                    thread::yield_now();
                }
            }
            full
        });
        let mut lines = BufReader::new(reader).lines();
        for i in 0..LINES {
            let got = lines.next().expect("line").expect("read");
            assert_eq!(got, format!("line {i} {}", "z".repeat((i % 50) as usize)));
        }
        producer.join().unwrap();
        assert!(hub.flush(Duration::from_secs(5)));
        close(wfd);
        assert!(lines.next().is_none());
    }

    #[test]
    fn records_to_several_fds_keep_their_order() {
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let (mut ra, wa) = pipe();
        let (mut rb, wb) = pipe();
        for i in 0..300 {
            let fd = if i % 3 == 0 { wb } else { wa };
            q.push(fd, format!("{i}\n").as_bytes()).unwrap();
        }
        assert!(hub.flush(Duration::from_secs(5)));
        close(wa);
        close(wb);
        let (mut a, mut b) = (String::new(), String::new());
        ra.read_to_string(&mut a).unwrap();
        rb.read_to_string(&mut b).unwrap();
        let want_a: String = (0..300)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("{i}\n"))
            .collect();
        let want_b: String = (0..300)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("{i}\n"))
            .collect();
        assert_eq!(a, want_a);
        assert_eq!(b, want_b);
    }

    #[test]
    fn flush_without_log_thread_writes_on_caller() {
        let hub = test_hub();
        let q1 = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let q2 = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let (mut reader, wfd) = pipe();
        q1.push(wfd, b"one\n").unwrap();
        q2.push(wfd, b"two\n").unwrap();
        q1.push(wfd, b"three\n").unwrap();
        assert!(hub.flush(Duration::from_secs(1)));
        assert!(q1.is_empty() && q2.is_empty());
        assert!(hub.flush(Duration::ZERO));
        close(wfd);
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "one\nthree\ntwo\n");
    }

    #[test]
    fn flush_with_log_thread_waits_for_the_writes() {
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let (mut reader, wfd) = pipe();
        hub.start().unwrap();
        // More than a pipe holds (64 KiB): the log thread blocks in write.
        let line = [b'q'; 1000];
        let mut pushed = 0;
        let t = Instant::now();
        while pushed < 100 && t.elapsed() < Duration::from_secs(5) {
            if q.push(wfd, &line).is_ok() {
                pushed += 1;
            } else {
                thread::sleep(Duration::from_millis(1));
            }
        }
        // Everything fits in pipe + ring + the thread's chunk, but the
        // thread cannot finish while nobody reads.
        assert_eq!(pushed, 100);
        assert!(!hub.flush(Duration::from_millis(100)));
        let reading = thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        assert!(hub.flush(Duration::from_secs(5)));
        close(wfd);
        let all = reading.join().unwrap();
        assert_eq!(all.len(), 100 * 1000);
        assert!(all.iter().all(|&b| b == b'q'));
    }

    #[test]
    fn log_thread_sleeps_when_idle_and_wakes_on_push() {
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let (reader, wfd) = pipe();
        let mut lines = BufReader::new(reader).lines();
        hub.start().unwrap();
        q.push(wfd, b"first\n").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "first");
        thread::sleep(Duration::from_millis(100));

        let before = hub.wakeups.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(1500));
        let idle = hub.wakeups.load(Ordering::Relaxed) - before;
        assert!(idle <= 3, "{idle} wake-ups in 1.5 s idle");

        // Each push after an idle period is written promptly (not after the
        // one-second safety timeout): no lost wake-up.
        for i in 0..5 {
            thread::sleep(Duration::from_millis(30 + i * 17));
            let t = Instant::now();
            q.push(wfd, format!("again {i}\n").as_bytes()).unwrap();
            assert_eq!(lines.next().unwrap().unwrap(), format!("again {i}"));
            assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        }
        close(wfd);
    }

    #[test]
    fn concurrent_producers_do_not_corrupt() {
        // Misuse (several producers on one queue) must stay memory-safe and
        // keep each producer's lines whole and in order.
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        let producers: Vec<_> = (0..3)
            .map(|p| {
                thread::spawn(move || {
                    let mut i = 0u64;
                    while i < 5000 {
                        if q.push(p, format!("{p}:{i}").as_bytes()).is_ok() {
                            i += 1;
                        } else {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 3];
        let mut total = 0;
        while total < 15_000 {
            for (fd, bytes) in drain_records(hub) {
                let s = String::from_utf8(bytes).unwrap();
                assert_eq!(s, format!("{fd}:{}", next[fd as usize]));
                next[fd as usize] += 1;
                total += 1;
            }
        }
        for p in producers {
            p.join().unwrap();
        }
    }

    #[test]
    fn format_line_shape_and_cut() {
        let line = format_line(42, log::Level::Warn, &format_args!("hello {}", 5));
        assert_eq!(line.as_bytes(), b"[42] [WARN] hello 5\n");
        let long = "x".repeat(5000);
        let line = format_line(1, log::Level::Error, &format_args!("{long}"));
        assert_eq!(line.as_bytes().len(), MAX_LOG_LINE_LENGTH);
        assert!(line.as_bytes().starts_with(b"[1] [ERROR] xxx"));
        assert_eq!(line.as_bytes().last(), Some(&b'\n'));
    }

    #[test]
    fn logger_uses_the_thread_queue() {
        let first = install_logger();
        assert_eq!(install_logger(), first);
        let hub = test_hub();
        let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
        set_thread_queue(q);
        LOGGER.emit(
            &log::Record::builder()
                .level(log::Level::Info)
                .args(format_args!("to stdout {}", 1))
                .build(),
        );
        LOGGER.emit(
            &log::Record::builder()
                .level(log::Level::Error)
                .args(format_args!("to stderr"))
                .build(),
        );
        clear_thread_queue();
        let got = drain_records(hub);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 1);
        let s = String::from_utf8(got[0].1.clone()).unwrap();
        assert!(s.starts_with('[') && s.ends_with("] [INFO] to stdout 1\n"), "{s}");
        assert_eq!(got[1].0, 2);
        let s = String::from_utf8(got[1].1.clone()).unwrap();
        assert!(s.ends_with("] [ERROR] to stderr\n"), "{s}");
    }

    #[test]
    fn global_flush_and_thread() {
        // The global hub: start is idempotent, flush succeeds, and the
        // counter is readable.
        start_log_thread().unwrap();
        start_log_thread().unwrap();
        let q = LogQueue::create();
        let (mut reader, wfd) = pipe();
        q.push(wfd, b"global\n").unwrap();
        assert!(flush(Duration::from_secs(5)));
        let mut buf = [0u8; 7];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"global\n");
        close(wfd);
        let _ = log_thread_wakeups();
    }
}
