//! The C-visible records `WORKER`, `WORKER_ARRAY` and `SERVER` (see
//! `include/mario/mario.h` and docs/C-API.md). Field order and types are
//! ABI: C applications read `c->owner->qlog`, `server->workers->array[i].ind`
//! and so on. Every server owns one such set, whether it was started from C
//! or from Rust. Plain data: nothing here acts.
//!
//! Uses: logq (the `LogQueue` type of `qlog`).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicU64};

use crate::logq::LogQueue;

/// C `WORKER`.
#[repr(C)]
pub struct CWorker {
    /// `pthread_t thread_id`: set when the worker thread starts.
    pub thread_id: libc::pthread_t,
    /// `uint16 ind`: worker index.
    pub ind: u16,
    /// `LOG_QUEUE *qlog`: this worker's log queue (its thread is the one
    /// producer).
    pub qlog: *const LogQueue,
    /// `SERVER *server`.
    pub server: *mut CServer,
}

/// C `WORKER_ARRAY` header; `size` workers follow it in the same allocation.
#[repr(C)]
pub struct CWorkerArray {
    /// `uint16 size`.
    pub size: u16,
    /// `SERVER *server`.
    pub server: *mut CServer,
    /// `WORKER array[]`.
    pub array: [CWorker; 0],
}

/// C `SERVER`.
#[repr(C)]
pub struct CServer {
    /// `int server_fd`: the listening socket once started, else -1
    /// (atomic: other threads wait for it to be set).
    pub server_fd: AtomicI32,
    /// `int port`: the port asked for; the port bound once started.
    pub port: c_int,
    /// `WORKER_ARRAY *workers`.
    pub workers: *mut CWorkerArray,
    /// `LOG_QUEUE *qlog`: the server's log queue.
    pub qlog: *const LogQueue,
    /// `int ret`.
    pub ret: c_int,
    /// `uint64 conn_count`: connections accepted so far.
    pub conn_count: AtomicU64,
    /// Ours (`void *mario_private`): the server behind this record, owned by
    /// the C front end (`ffi`), which alone reads it.
    pub(crate) mario: *const c_void,
}

/// Owns a `CServer` and its `CWorkerArray` in C-compatible memory.
pub(crate) struct CRecords {
    pub server: *mut CServer,
    pub array: *mut CWorkerArray,
    layout: std::alloc::Layout,
}

// SAFETY: the records are plain data shared with C; every field written
// after start-up is either written once before the threads that read it are
// spawned, or atomic.
unsafe impl Send for CRecords {}
// SAFETY: as above.
unsafe impl Sync for CRecords {}

impl CRecords {
    /// Allocates zeroed records for `n` workers.
    pub(crate) fn new(n: u16) -> CRecords {
        let head = std::alloc::Layout::new::<CWorkerArray>();
        let (layout, _) = head
            .extend(std::alloc::Layout::array::<CWorker>(n as usize).expect("worker array size"))
            .expect("worker array layout");
        let layout = layout.pad_to_align();
        // SAFETY: `layout` has non-zero size (the header alone is non-empty).
        let array = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<CWorkerArray>();
        if array.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let server = Box::into_raw(Box::new(CServer {
            server_fd: AtomicI32::new(-1),
            port: 0,
            workers: array,
            qlog: std::ptr::null(),
            ret: 0,
            conn_count: AtomicU64::new(0),
            mario: std::ptr::null(),
        }));
        // SAFETY: `array` is a fresh, zeroed, suitably aligned allocation
        // large enough for the header; all-zero bytes are valid for it.
        unsafe {
            (*array).size = n;
            (*array).server = server;
        }
        CRecords {
            server,
            array,
            layout,
        }
    }

    /// Pointer to worker `i`'s record.
    pub(crate) fn worker(&self, i: usize) -> *mut CWorker {
        // SAFETY: the allocation holds `size` workers after the header and
        // callers pass `i < size`.
        unsafe {
            assert!(i < (*self.array).size as usize);
            std::ptr::addr_of_mut!((*self.array).array)
                .cast::<CWorker>()
                .add(i)
        }
    }
}

impl Drop for CRecords {
    fn drop(&mut self) {
        // SAFETY: both pointers were allocated in `new` with these layouts
        // and nothing uses them after the owning server is dropped.
        unsafe {
            std::alloc::dealloc(self.array.cast(), self.layout);
            drop(Box::from_raw(self.server));
        }
    }
}
