//! The log ring: a bounded single-producer / single-consumer ring of log
//! records `(fd, length, bytes)`, the C `LOG_QUEUE`.
//!
//! Uses: nothing of the crate (the consumer that drains it is behind the
//! [`Consumer`] trait, implemented by the log thread's hub).

use std::cell::UnsafeCell;
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Longest line a record can hold, in bytes: 2,048 (the C macro
/// `MAX_LOG_LINE_LENGTH`). Longer lines are cut to this length
/// ([`LogQueue::push`]).
/// Example: [`QueueFull`] (lines of 1,000 bytes).
pub const MAX_LOG_LINE_LENGTH: usize = 2048;

/// Capacity in bytes of a queue made by [`LogQueue::create`]: 64 KiB.
/// Example: the [module](crate::logq#example)'s first.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024;

/// Smallest capacity [`LogQueue::create_with_capacity`] accepts, in bytes:
/// 4 KiB, room for at least one maximal record (smaller requests are
/// rounded up).
/// Example: [`QueueFull`].
pub const MIN_QUEUE_BYTES: usize = 4 * 1024;

/// Largest capacity [`LogQueue::create_with_capacity`] accepts, in bytes:
/// 1 GiB (larger requests are cut down).
/// Example: [`QueueFull`].
pub const MAX_QUEUE_BYTES: usize = 1 << 30;

/// Bytes of a record's header in the ring: `fd` (`i32`) then the length of
/// the line (`u16`), both in native byte order.
pub(super) const RECORD_HEADER: usize = 6;

/// How much the consumer copies out of one queue before writing it out.
const DRAIN_CHUNK: usize = 64 * 1024;

/// How long [`LogQueue::push`] waits for another thread that is pushing into
/// the same queue at the same moment (a misuse of a single-producer queue)
/// before giving up and dropping the line.
const PRODUCER_CONTENTION_BUDGET: Duration = Duration::from_millis(10);

/// The side that drains a queue: told after each push, so that it can wake
/// up (see the wake-up protocol in [`super`]).
pub(super) trait Consumer: Sync {
    /// A record was published in one of this consumer's queues.
    fn notify(&self);
}

/// The line was not stored: the queue had not enough free space for it (or,
/// when the queue is misused by several threads at once, another producer
/// held it for too long). The line is dropped entirely, and counted
/// ([`LogQueue::dropped_total`]).
///
/// ```
/// use mario::logq::{LogQueue, MIN_QUEUE_BYTES, QueueFull};
///
/// let q = LogQueue::create_with_capacity(MIN_QUEUE_BYTES); // no log thread: nothing drains it
/// let line = [b'x'; 1000];
/// let stored = (0..10).take_while(|_| q.push(2, &line).is_ok()).count();
/// assert!(stored < 10);
/// assert_eq!(q.push(2, &line), Err(QueueFull));
/// assert_eq!(q.dropped_total(), 2);
/// ```
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
/// process (so they are handed out as `&'static`, shared freely) and are
/// drained by the log thread. Example: the [module](crate::logq#example)'s
/// first.
#[repr(C)]
pub struct LogQueue {
    /// Capacity of the ring in bytes (C `size`). Informational: read it,
    /// never store into it.
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
    /// Lines refused since the consumer last looked (see
    /// [`LogQueue::take_dropped`]).
    dropped: AtomicU64,
    /// Lines refused since the queue was made (see
    /// [`LogQueue::dropped_total`]): never reset.
    dropped_total: AtomicU64,
    /// The log thread machinery this queue is registered with.
    pub(super) hub: &'static dyn Consumer,
    /// The ring. One byte is always left free so that `head == tail` means
    /// empty.
    buf: Box<[UnsafeCell<u8>]>,
}

// SAFETY: every field except `buf` is `Sync` (atomics, a shared reference to
// a `Sync` consumer, an immutable box). The bytes of `buf` are accessed only
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
    /// A queue of `bytes` bytes (clamped to [`MIN_QUEUE_BYTES`]`..=`
    /// [`MAX_QUEUE_BYTES`]) whose pushes wake `hub`.
    pub(super) fn new(bytes: usize, hub: &'static dyn Consumer) -> LogQueue {
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
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            hub,
            buf,
        }
    }

    /// Lines refused (queue full) since the last call; the log thread calls
    /// it after draining the queue and reports a non-zero count, so that a
    /// dropped line is never silent (a caller of its own takes the count
    /// from that report).
    /// Example of the count: [`QueueFull`].
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Lines refused (queue full) since the queue was made, from any
    /// thread: the statistics' `log_dropped`. Unlike
    /// [`LogQueue::take_dropped`] it is never reset. Example: [`QueueFull`].
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Counts one refused line, for the log thread's warning and for the
    /// statistics.
    fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Capacity of the ring in bytes ([`MIN_QUEUE_BYTES`] ..=
    /// [`MAX_QUEUE_BYTES`]).
    /// Example of a small queue: [`QueueFull`].
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Whether every record pushed so far has been taken by the consumer
    /// (taken, maybe not yet written: [`flush`](super::flush) waits for
    /// that).
    /// Example: the [module](crate::logq#example)'s first.
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }

    /// Appends one line (its bytes are copied), to be written to `fd` by the
    /// log thread, which neither adds a newline nor closes `fd` (negative
    /// `fd`s are the library's own messages, see `dest`). Example: the
    /// [module](crate::logq#example)'s first; [`QueueFull`].
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
                (&line[..char_cut(line, MAX_LOG_LINE_LENGTH - 1)], true)
            } else {
                (&line[..char_cut(line, MAX_LOG_LINE_LENGTH)], false)
            }
        } else {
            (line, false)
        };
        let len = body.len() + usize::from(newline);

        let Some(guard) = self.lock_producer() else {
            self.count_dropped();
            return Err(QueueFull);
        };
        let size = self.buf.len();
        // Only the producer (us, holding the flag) stores `head`.
        let head = self.head.load(Ordering::Relaxed) as usize;
        // Acquire: the consumer has finished reading the bytes it freed.
        let tail = self.tail.load(Ordering::Acquire) as usize;
        let used = (head + size - tail) % size;
        let free = size - 1 - used;
        if RECORD_HEADER + len > free {
            self.count_dropped();
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
    /// Must be called only by the queue's one consumer (the hub, with its
    /// `drain` mutex held: callers pass the buffers of the hub's guarded
    /// `DrainState`, which exist only inside it).
    pub(super) fn take(&self, scratch: &mut Vec<u8>, records: &mut Vec<(i32, usize)>) -> bool {
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

/// Where to cut `b` to keep at most `max` bytes without splitting a UTF-8
/// character: `max`, or the start of the character the cut would split
/// (at most 3 bytes earlier). Bytes that are not UTF-8 are cut at `max`.
pub(crate) fn char_cut(b: &[u8], max: usize) -> usize {
    if b.len() <= max {
        return b.len();
    }
    if b[max] & 0xc0 != 0x80 {
        return max; // the cut is before a character's first byte
    }
    for back in 1..=max.min(3) {
        let i = max - back;
        let lead = b[i];
        if lead & 0xc0 == 0x80 {
            continue; // another continuation byte
        }
        let len = match lead {
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        return if i + len > max { i } else { max };
    }
    max
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
