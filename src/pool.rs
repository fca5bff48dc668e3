//! The pool for slow handlers: threads that run the packets a service
//! marks as blocking (C `regist_pool_func`, Rust `on_packet_blocking`), so
//! the worker goes on serving its other connections meanwhile.
//!
//! A worker hands over one packet of a connection at a time ([`Job`]): a
//! copy of the frame, and the connection's record, which the pool thread
//! owns until it reports back. The worker reads nothing more from that
//! connection meanwhile and dispatches none of its packets (the bytes of
//! the read that came after the packet wait in the connection's carry),
//! so per-connection order is kept and what a connection can make the
//! server hold is one packet plus one read. When the handler returns, the
//! pool thread sends `Cmd::PoolDone` to the worker through its mailbox,
//! behind every write and close the handler made: the worker then applies
//! a close asked for meanwhile (the close callback runs there, once) or
//! goes on with the connection's next packets.
//!
//! During the call the record's `in_buf` is the packet copy, `out_buf`
//! the pool thread's own scratch area and `owner` the pool thread's own
//! `WORKER` record (same `ind` and `server` as the connection's worker, its
//! own `thread_id` and `qlog`), so C code that writes `c->out_buf` or logs
//! to `c->owner->qlog` touches nothing the worker uses.
//!
//! Threads start with the first job and stop with the server.
//!
//! Uses: conn (the record and its id), mailbox (`Cmd::PoolDone`), service
//! (the handler), records (the pool threads' `WORKER`s), logq (their log
//! queues), proto (the head).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::{Conn, ConnId};
use crate::logq::{self, LogQueue};
use crate::mailbox::{Cmd, Mailbox, PoolEnd};
use crate::proto::Head;
use crate::records::{CServer, CWorker};
use crate::service::{PoolCall, Service, Verdict, panic_message};

/// Size of each pool thread's scratch area behind `CONN.out_buf` (as a
/// worker's).
const SCRATCH: usize = 2048;

/// Waits until `deadline` at most for `threads` to end, and joins those
/// that did; the others are left running, detached. Returns their
/// indices in `threads`.
pub(crate) fn join_by(threads: Vec<JoinHandle<()>>, deadline: Instant) -> Vec<usize> {
    while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut stuck = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        if t.is_finished() {
            let _ = t.join();
        } else {
            stuck.push(i);
        }
    }
    stuck
}

/// The connection a pool thread runs a handler of, now.
struct Call {
    id: ConnId,
    worker: Arc<Mailbox>,
    /// The handler closed its connection: further writes are refused, as
    /// on a worker after `close_conn`.
    closed: bool,
}

thread_local! {
    /// On a pool thread during a call.
    static CALL: std::cell::RefCell<Option<Call>> = const { std::cell::RefCell::new(None) };
    /// On a pool thread: its server's number, plus 1.
    static POOL_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What a pool handler does to its own connection, by id.
pub(crate) enum Own<'a> {
    /// Queue these bytes.
    Write(&'a [u8]),
    /// Close it with this reason.
    Close(u16),
}

/// When the current thread runs a pool handler of connection `id`: hands
/// `op` straight to its worker, which takes it even while the server stops
/// (it waits for the handler), and returns whether it was taken (false for
/// a write after the handler closed the connection). `None` on any other
/// thread, or for another connection.
pub(crate) fn own(id: ConnId, op: Own<'_>) -> Option<bool> {
    CALL.with(|c| {
        let mut c = c.borrow_mut();
        let call = c.as_mut().filter(|call| call.id == id)?;
        Some(match op {
            Own::Write(_) if call.closed => false,
            Own::Write(data) => call.worker.command(Cmd::Write(id, data.to_vec())),
            Own::Close(reason) => {
                let first = !call.closed;
                call.closed = true;
                first && call.worker.command(Cmd::Close(id, reason))
            }
        })
    })
}

/// True on a pool thread of server `server_id`.
pub(crate) fn on_pool_of(server_id: usize) -> bool {
    POOL_OF.with(|p| p.get() == server_id + 1)
}

/// One packet for the pool.
pub(crate) struct Job {
    /// The connection's record: the pool thread's alone until it sends
    /// `PoolDone`.
    pub conn: *mut Conn,
    /// The connection, for `PoolDone`.
    pub id: ConnId,
    /// The packet's head.
    pub head: Head,
    /// A copy of the whole packet, head included.
    pub pkt: Vec<u8>,
    /// The server's stx and whether heads are in network byte order.
    pub stx: u32,
    /// See `stx`.
    pub big_endian: bool,
    /// The connection's worker, told when the handler has returned.
    pub done: Arc<Mailbox>,
}

// SAFETY: the record behind `conn` is handed over whole: the worker does
// not touch it (beyond reading `fd` and `ind`, which never change while a
// job runs) until the pool thread's `PoolDone` reaches it through the
// mailbox, which orders the two threads' accesses.
unsafe impl Send for Job {}

struct State {
    jobs: VecDeque<Job>,
    stop: bool,
    threads: Vec<JoinHandle<()>>,
    /// Threads started (they start with the first job).
    started: bool,
}

/// A server's handler pool (see the module docs).
pub(crate) struct Pool {
    state: Mutex<State>,
    ready: Condvar,
    service: Arc<dyn Service>,
    /// How many threads to start.
    size: usize,
    /// The server's C record (the pool threads' `WORKER.server`).
    server: *mut CServer,
    /// The server's number.
    server_id: usize,
}

// SAFETY: `server` is the server's C record, which outlives the pool and
// is only copied into the pool threads' records; the rest is `Sync`.
unsafe impl Sync for Pool {}
// SAFETY: as above.
unsafe impl Send for Pool {}

impl Pool {
    /// A pool of `size` threads (not started yet) running `service`'s
    /// blocking handlers for server `server_id` (C record `server`).
    pub(crate) fn new(
        service: Arc<dyn Service>,
        size: usize,
        server: *mut CServer,
        server_id: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                stop: false,
                threads: Vec::new(),
                started: false,
            }),
            ready: Condvar::new(),
            service,
            size: size.max(1),
            server,
            server_id,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `job` to the pool. Returns it back if the pool has stopped or
    /// cannot start a thread (the caller then runs nothing and closes the
    /// connection).
    pub(crate) fn submit(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        let mut st = self.state();
        if st.stop {
            return Err(job);
        }
        if !st.started {
            st.started = true;
            for i in 0..self.size {
                match self.spawn(i) {
                    Ok(t) => st.threads.push(t),
                    Err(e) => {
                        log::error!("handler pool: cannot start thread {i}: {e}");
                        if st.threads.is_empty() {
                            st.started = false;
                            return Err(job);
                        }
                        break;
                    }
                }
            }
        }
        st.jobs.push_back(job);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    fn spawn(self: &Arc<Self>, i: usize) -> std::io::Result<JoinHandle<()>> {
        let pool = self.clone();
        std::thread::Builder::new()
            .name(format!("mario-pool-{i}"))
            .spawn(move || pool.run())
    }

    /// A pool thread: runs jobs until stopped.
    fn run(&self) {
        POOL_OF.with(|p| p.set(self.server_id + 1));
        let qlog = LogQueue::create();
        logq::set_thread_queue(qlog);
        let mut scratch = vec![0u8; SCRATCH].into_boxed_slice();
        let mut record = CWorker {
            // SAFETY: `pthread_self` has no preconditions.
            thread_id: unsafe { libc::pthread_self() },
            ind: 0,
            qlog,
            server: self.server,
        };
        loop {
            let job = {
                let mut st = self.state();
                loop {
                    // Jobs left at a stop belong to workers that gave up
                    // waiting for them (see `Pool::cancel`).
                    if st.stop {
                        return;
                    }
                    if let Some(j) = st.jobs.pop_front() {
                        break j;
                    }
                    st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.call(job, &mut record, &mut scratch);
        }
    }

    /// Runs one job's handler and reports back to its worker.
    fn call(&self, mut job: Job, record: &mut CWorker, scratch: &mut [u8]) {
        let c = job.conn;
        let len = job.pkt.len();
        // SAFETY: the record is this thread's until `PoolDone` (see `Job`);
        // `owner` points to the worker's record, which lives as long as
        // the server; the fields are written through the raw pointer, no
        // reference to the whole record is made (the worker may read `fd`
        // and `ind` meanwhile).
        let (owner, out_buf, in_buf) = unsafe {
            record.ind = (*(*c).owner).ind;
            let owner = std::mem::replace(&mut (*c).owner, record as *mut CWorker);
            let out_buf = std::mem::replace(&mut (*c).out_buf, scratch.as_mut_ptr().cast());
            let in_buf = std::mem::replace(&mut (*c).in_buf, job.pkt.as_mut_ptr().cast());
            (*c).in_buf_len = len.min(u16::MAX as usize) as u16;
            // Frames are at most `MAX_FRAME_LIMIT` (64 MiB) long.
            (*c).frame_len = len as u32;
            (owner, out_buf, in_buf)
        };
        let id = job.head.akg_id;
        CALL.with(|cur| {
            *cur.borrow_mut() = Some(Call {
                id: job.id,
                worker: job.done.clone(),
                closed: false,
            })
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.service.pool_packet(PoolCall {
                conn: c,
                head: job.head,
                pkt: &mut job.pkt,
                stx: job.stx,
                big_endian: job.big_endian,
            })
        }));
        let verdict = r.unwrap_or_else(|payload| {
            let msg = panic_message(payload.as_ref());
            log::error!(
                "pool: the handler of packet {id:#06x} panicked: {msg}; closing its connection as error"
            );
            Verdict::Stop
        });
        CALL.with(|cur| *cur.borrow_mut() = None);
        // SAFETY: as above; the handler has returned. `in_buf` goes back to
        // where it pointed (the worker's read buffer), never to the copy,
        // which is freed.
        unsafe {
            (*c).owner = owner;
            (*c).out_buf = out_buf;
            (*c).in_buf = in_buf;
            (*c).in_buf_len = 0;
        }
        let end = match verdict {
            Verdict::Continue => PoolEnd::Continue,
            Verdict::Stop => PoolEnd::Stop,
            Verdict::NoHandler => PoolEnd::NoHandler(id),
        };
        // Behind every write and close the handler made to this worker.
        job.done.command(Cmd::PoolDone(job.id, end));
    }

    /// The server is stopping: threads start no more jobs (what is queued
    /// is taken back by the workers, see [`Pool::cancel`]) and end once
    /// their current one returns. [`Pool::stop`] waits for them.
    pub(crate) fn halt(&self) {
        self.state().stop = true;
        self.ready.notify_all();
    }

    /// True once the server is stopping ([`Pool::halt`]).
    pub(crate) fn halted(&self) -> bool {
        self.state().stop
    }

    /// Takes back the jobs of worker `worker` that no thread has started
    /// (a stopping worker runs no more handlers): their records are the
    /// worker's again. Returns their connections.
    pub(crate) fn cancel(&self, worker: &Arc<Mailbox>) -> Vec<ConnId> {
        let mut st = self.state();
        let mut mine = Vec::new();
        st.jobs.retain(|j| {
            let keep = !Arc::ptr_eq(&j.done, worker);
            if !keep {
                mine.push(j.id);
            }
            keep
        });
        mine
    }

    /// Stops the threads (what is still queued never runs: see
    /// [`Pool::cancel`]), waiting until `deadline` at most: a thread stuck in a handler is left running,
    /// detached, and the log says so.
    pub(crate) fn stop(&self, deadline: Instant) {
        self.halt();
        let threads = std::mem::take(&mut self.state().threads);
        let stuck = join_by(threads, deadline).len();
        if stuck > 0 {
            log::error!("handler pool: {stuck} thread(s) still in a handler at stop: left running, detached");
        }
    }
}
