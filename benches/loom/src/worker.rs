//! Model of a worker's shared state and loop (src/worker.rs), the
//! acceptor's hand-off (src/server.rs `accept_loop`) and the cross-thread
//! command path (src/server.rs `send_to` / `close_id` ->
//! `WorkerShared::command` -> `Worker::take_cmds` -> `Ctx::apply` /
//! `Ctx::lookup`).
//!
//! Copied exactly: `WorkerShared::notify` and `command` (fence, flag
//! checks, the `cmd_bytes` budget with its orderings), the sleep protocol of
//! `Worker::run` (raise `sleeping` with `SeqCst`, fence, re-check both
//! queues, poll, lower the flag), `take_new`, `take_cmds`, `end_turn`'s
//! freeing of slots and `count` decrements, `open`'s slot reuse and
//! generation bump, `lookup`'s generation check, `close`'s states,
//! `shutdown`'s draining, and the acceptor's `count` / cap / hand-off loop.
//!
//! Modelled:
//! * crossbeam's `ArrayQueue` / `SegQueue` by [`Queue`] (see src/lib.rs);
//! * mio's `Poll` + `Waker` by [`Waker`]: `wake()` leaves one pending
//!   event (an eventfd write, reported once by the edge-triggered epoll),
//!   `poll(None)` blocks until there is one and consumes it, a zero-timeout
//!   `poll` consumes it if present and never blocks;
//! * sockets: an accepted connection may "hang up"; a hung-up open
//!   connection is a ready event (its `poll` does not block) and the turn
//!   closes it, like a read of end-of-stream would.
//!
//! Left out: the `wakes` and `conn_count` statistics counters, timers (the
//! model's `timeout()` is always `None`: the worker may sleep indefinitely,
//! which is where a lost wake-up hurts), output buffers and flushing,
//! lingering closes, the deferral of commands while a callback holds the
//! connection (single-threaded), the slab-full path of `open`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize as GhostUsize, Ordering as Ghost};

use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};

use crate::cover;

/// `AKG_CLOSED` (src/proto.rs).
pub const AKG_CLOSED: u16 = 0xfffd;
/// The generation mask of `ConnId` and `Worker::open` (src/conn.rs:25,
/// src/worker.rs:602).
pub const GEN_MASK: u32 = (1 << 24) - 1;

/// Which parts of the protocol are present. [`Variant::REAL`] is the code
/// as written; the others exist to show that the model catches bugs.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// `fence(SeqCst)` in `WorkerShared::notify` (src/worker.rs:67).
    pub notify_fence: bool,
    /// `fence(SeqCst)` after raising `sleeping` in `Worker::run`
    /// (src/worker.rs:459).
    pub worker_fence: bool,
    /// `Worker::run` re-checks `accept_q` / `cmds` before `poll`
    /// (src/worker.rs:461).
    pub recheck: bool,
    /// `Ctx::lookup` compares the generation (src/worker.rs:200).
    pub generation_check: bool,
    /// `command` reserves budget with one `fetch_add` (src/worker.rs:80);
    /// `false`: a `load`, a check, then a `fetch_add` (check-then-act).
    pub budget_rmw: bool,
    /// The acceptor's cap test is `c >= cap` (src/server.rs:395); `false`:
    /// `c > cap` (off by one).
    pub cap_ge: bool,
}

impl Variant {
    /// The protocol as src/worker.rs and src/server.rs have it.
    pub const REAL: Variant = Variant {
        notify_fence: true,
        worker_fence: true,
        recheck: true,
        generation_check: true,
        budget_rmw: true,
        cap_ge: true,
    };
}

/// crossbeam's `ArrayQueue` (bounded) / `SegQueue` (unbounded), as far as
/// our protocols see them. A push's linearisation point is a `SeqCst`
/// read-modify-write of `tail` (crossbeam: the `compare_exchange_weak` of
/// `tail`, array_queue.rs:175 / seg_queue.rs:270); `is_empty` is two
/// `SeqCst` loads of `head` and `tail` (array_queue.rs:476 /
/// seg_queue.rs:551) and takes no lock. The items themselves sit in a loom
/// mutex (crossbeam's slot protocol is crossbeam's to check).
pub struct Queue<T> {
    head: AtomicUsize,
    tail: AtomicUsize,
    items: Mutex<VecDeque<T>>,
    cap: usize,
}

impl<T> Queue<T> {
    pub fn new(cap: usize) -> Queue<T> {
        Queue {
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            items: Mutex::new(VecDeque::new()),
            cap,
        }
    }

    pub fn push(&self, v: T) -> Result<(), T> {
        let mut q = self.items.lock().unwrap();
        if q.len() >= self.cap {
            return Err(v);
        }
        q.push_back(v);
        self.tail.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn pop(&self) -> Option<T> {
        let mut q = self.items.lock().unwrap();
        let v = q.pop_front()?;
        self.head.fetch_add(1, Ordering::SeqCst);
        Some(v)
    }

    pub fn is_empty(&self) -> bool {
        let head = self.head.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        head == tail
    }
}

/// mio's `Waker` + the worker's `Poll` (see the module docs).
pub struct Waker {
    event: Mutex<bool>,
    cv: Condvar,
}

impl Waker {
    fn new() -> Waker {
        Waker {
            event: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    /// `Waker::wake`: one pending event.
    pub fn wake(&self) {
        *self.event.lock().unwrap() = true;
        self.cv.notify_one();
    }

    /// `Poll::poll` with timeout `None` (`block`) or `Some(ZERO)`.
    fn poll(&self, block: bool) {
        let mut ev = self.event.lock().unwrap();
        if block {
            while !*ev {
                ev = self.cv.wait(ev).unwrap();
            }
        }
        *ev = false;
    }
}

/// `ConnId` (src/conn.rs:20), same bit layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn new(server: usize, worker: usize, slot: u32, generation: u32) -> ConnId {
        ConnId(
            1 | (u64::from(slot) << 1)
                | ((worker as u64) << 22)
                | ((server as u64) << 32)
                | (u64::from(generation & GEN_MASK) << 40),
        )
    }
    pub fn slot(self) -> u32 {
        ((self.0 >> 1) & ((1 << 21) - 1)) as u32
    }
    pub fn generation(self) -> u32 {
        (self.0 >> 40) as u32 & GEN_MASK
    }
}

/// `sys::Accepted`: `fd` doubles as the connection's identity for the ghost
/// checks (every accepted connection gets a distinct one).
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub fd: u32,
    /// The peer closes at once (its socket reports end-of-stream).
    pub hangup: bool,
}

/// `Cmd` (src/worker.rs:39). Ghost: the first byte of a `Write` and the
/// reason of a `Close` are the fd of the connection the sender meant.
#[derive(Debug)]
pub enum Cmd {
    Write(ConnId, Vec<u8>),
    Close(ConnId, u16),
    Stop,
}

/// `WorkerShared` (src/worker.rs:46), less `waker`'s mio type, `wakes`.
pub struct Shared {
    pub index: usize,
    pub accept_q: Queue<Accepted>,
    cmds: Queue<Cmd>,
    pub cmd_bytes: AtomicUsize,
    sleeping: AtomicBool,
    waker: Waker,
    pub count: AtomicU32,
    /// `CMD_BYTES_MAX` (64 MiB in src/worker.rs:36; small here).
    cmd_bytes_max: usize,
    v: Variant,
    /// Ghost: connections handed over and not yet freed (queued or open).
    pub live: GhostUsize,
    /// Ghost: bytes of accepted writes not yet taken by the worker.
    pub queued_bytes: GhostUsize,
    /// Ghost: writes accepted by `command`.
    pub accepted_writes: GhostUsize,
}

impl Shared {
    /// `new_worker` (src/worker.rs:94), with an `accept_q` of `accept_cap`
    /// (4096 in the real code).
    pub fn new(index: usize, accept_cap: usize, cmd_bytes_max: usize, v: Variant) -> Shared {
        Shared {
            index,
            accept_q: Queue::new(accept_cap),
            cmds: Queue::new(usize::MAX),
            cmd_bytes: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            waker: Waker::new(),
            count: AtomicU32::new(0),
            cmd_bytes_max,
            v,
            live: GhostUsize::new(0),
            queued_bytes: GhostUsize::new(0),
            accepted_writes: GhostUsize::new(0),
        }
    }

    /// `WorkerShared::notify` (src/worker.rs:66).
    pub fn notify(&self) {
        if self.v.notify_fence {
            fence(Ordering::SeqCst);
        }
        if self.sleeping.load(Ordering::Relaxed) && crate::swap_false(&self.sleeping) {
            cover("worker: notify woke the worker");
            self.waker.wake();
        }
    }

    /// `WorkerShared::command` (src/worker.rs:77).
    pub fn command(&self, cmd: Cmd) -> bool {
        if let Cmd::Write(_, ref data) = cmd {
            let n = data.len();
            if self.v.budget_rmw {
                if self.cmd_bytes.fetch_add(n, Ordering::Relaxed) + n > self.cmd_bytes_max {
                    cover("cmd: write refused over the byte budget");
                    self.cmd_bytes.fetch_sub(n, Ordering::Relaxed);
                    return false;
                }
            } else {
                // Broken variant: check, then act.
                if self.cmd_bytes.load(Ordering::Relaxed) + n > self.cmd_bytes_max {
                    return false;
                }
                self.cmd_bytes.fetch_add(n, Ordering::Relaxed);
            }
            let q = self.queued_bytes.fetch_add(n, Ghost::SeqCst) + n;
            assert!(
                q <= self.cmd_bytes_max,
                "byte budget exceeded: {q} bytes queued, cap {}",
                self.cmd_bytes_max
            );
            self.accepted_writes.fetch_add(1, Ghost::SeqCst);
        }
        if self.cmds.push(cmd).is_err() {
            unreachable!("SegQueue is unbounded");
        }
        self.notify();
        true
    }
}

/// The acceptor's hand-off of one connection (src/server.rs:390-424):
/// round-robin from `*rr`, reserve a place under `cap` with `fetch_add`,
/// push, wake; returns whether it was placed (else it is refused).
pub fn hand_off(workers: &[Arc<Shared>], rr: &mut usize, cap: u32, a: Accepted, v: Variant) -> bool {
    let n = workers.len();
    let mut a = a;
    for k in 0..n {
        let w = &workers[(*rr + k) % n];
        let c = w.count.fetch_add(1, Ordering::AcqRel);
        let over = if v.cap_ge { c >= cap } else { c > cap };
        if over {
            cover("accept: refused at the cap");
            w.count.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        // Ghost: the connection is the worker's from here on.
        let live = w.live.fetch_add(1, Ghost::SeqCst) + 1;
        assert!(
            live as u32 <= cap,
            "worker {} holds {live} connections, cap {cap}",
            w.index
        );
        match w.accept_q.push(a) {
            Ok(()) => {
                w.notify();
                *rr = (*rr + k + 1) % n;
                return true;
            }
            Err(back) => {
                cover("accept: hand-off queue full");
                w.live.fetch_sub(1, Ghost::SeqCst);
                w.count.fetch_sub(1, Ordering::AcqRel);
                a = back;
            }
        }
    }
    false
}

/// `conn::State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Free,
    Open,
    Closing,
    Closed,
}

/// The part of `Conn` the protocols touch.
#[derive(Debug)]
pub struct Conn {
    pub generation: u32,
    pub state: State,
    pub fd: u32,
    pub hangup: bool,
}

/// What the worker did with a command (ghost record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A write reached connection `fd`; the sender meant `meant`.
    Write { fd: u32, meant: u32 },
    /// A close reached connection `fd`; the sender meant `meant`.
    Close { fd: u32, meant: u32 },
    /// A command was dropped: its connection was gone.
    Dropped,
}

/// A worker: `Ctx` + `Worker` (src/worker.rs:161, 388), the parts the
/// protocols touch.
pub struct Worker {
    pub shared: Arc<Shared>,
    server_id: usize,
    slab: RefCell<Vec<Conn>>,
    free: Vec<u32>,
    to_free: Vec<u32>,
    stopping: bool,
    v: Variant,
    /// Ghost: `(fd, id)` of every connection opened.
    pub opened: Vec<(u32, ConnId)>,
    /// Ghost: what became of each command taken.
    pub applied: Vec<Applied>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, v: Variant) -> Worker {
        Worker {
            shared,
            server_id: 0,
            slab: RefCell::new(Vec::new()),
            free: Vec::new(),
            to_free: Vec::new(),
            stopping: false,
            v,
            opened: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// `Worker::run` (src/worker.rs:443). `done` is the model's own exit
    /// (checked where the real loop checks `stopping`): the real loop only
    /// ends on `Cmd::Stop`.
    pub fn run(&mut self, done: impl Fn(&Worker) -> bool) {
        while !self.stopping {
            self.take_new();
            self.take_cmds();
            if self.stopping {
                break;
            }
            if done(self) {
                break;
            }
            self.end_turn();
            // `timeout()` is `None` here (no timers, nothing carried over),
            // so `sleep` is true.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            if self.v.worker_fence {
                fence(Ordering::SeqCst);
            }
            let pending =
                self.v.recheck && (!self.shared.accept_q.is_empty() || !self.shared.cmds.is_empty());
            // A hung-up socket is a ready event: epoll returns at once.
            let ready = self
                .slab
                .borrow()
                .iter()
                .any(|c| c.state == State::Open && c.hangup);
            if pending {
                cover("worker: re-check found work after raising the flag");
            }
            if !pending && !ready {
                cover("worker: blocked in poll");
            }
            self.shared.waker.poll(!pending && !ready);
            self.shared.sleeping.store(false, Ordering::Relaxed);
            // Events: read end-of-stream on hung-up connections.
            let n = self.slab.borrow().len();
            for slot in 0..n as u32 {
                let hung = {
                    let slab = self.slab.borrow();
                    slab[slot as usize].state == State::Open && slab[slot as usize].hangup
                };
                if hung {
                    self.close(slot, AKG_CLOSED);
                }
            }
            self.end_turn();
        }
        self.shutdown();
    }

    /// `Ctx::lookup` (src/worker.rs:196).
    fn lookup(&self, id: ConnId) -> Option<u32> {
        let slab = self.slab.borrow();
        let c = slab.get(id.slot() as usize)?;
        let gen_ok = !self.v.generation_check || c.generation & GEN_MASK == id.generation();
        if c.state == State::Open && c.generation & GEN_MASK != id.generation() {
            cover("cmd: stale id names a reused slot");
        }
        (c.state == State::Open && gen_ok).then_some(id.slot())
    }

    /// `Ctx::apply` (src/worker.rs:243).
    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Write(id, data) => match self.lookup(id) {
                Some(slot) => {
                    // `append`: the bytes join the connection's output.
                    let fd = self.slab.borrow()[slot as usize].fd;
                    self.applied.push(Applied::Write {
                        fd,
                        meant: u32::from(data[0]),
                    });
                }
                None => self.applied.push(Applied::Dropped),
            },
            Cmd::Close(id, reason) => match self.lookup(id) {
                Some(slot) => {
                    let fd = self.slab.borrow()[slot as usize].fd;
                    self.applied.push(Applied::Close {
                        fd,
                        meant: u32::from(reason),
                    });
                    self.close(slot, reason);
                }
                None => self.applied.push(Applied::Dropped),
            },
            Cmd::Stop => {}
        }
    }

    /// `Ctx::close` (src/worker.rs:340): the states, and the slot queued for
    /// freeing at the end of the turn.
    fn close(&mut self, slot: u32, _reason: u16) {
        {
            let mut slab = self.slab.borrow_mut();
            let c = &mut slab[slot as usize];
            if c.state != State::Open {
                return;
            }
            c.state = State::Closing;
        }
        // (The close callback runs here.)
        self.slab.borrow_mut()[slot as usize].state = State::Closed;
        self.to_free.push(slot);
    }

    /// `Worker::end_turn` (src/worker.rs:527), the freeing part.
    fn end_turn(&mut self) {
        let list = std::mem::take(&mut self.to_free);
        for slot in list {
            {
                let mut slab = self.slab.borrow_mut();
                let c = &mut slab[slot as usize];
                if c.state != State::Closed {
                    continue;
                }
                c.state = State::Free;
            }
            self.free.push(slot);
            // Ghost: the connection is gone before the count says so.
            self.shared.live.fetch_sub(1, Ghost::SeqCst);
            self.shared.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// `Worker::take_new` (src/worker.rs:568).
    pub fn take_new(&mut self) {
        while let Some(a) = self.shared.accept_q.pop() {
            if self.stopping {
                cover("worker: hand-off reset at shutdown");
                // `close_reset(a.fd)`
                self.shared.live.fetch_sub(1, Ghost::SeqCst);
                self.shared.count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            self.open(a);
        }
    }

    /// `Worker::open` (src/worker.rs:579): slot reuse and generation bump.
    fn open(&mut self, a: Accepted) {
        let slot = match self.free.pop() {
            Some(s) => {
                cover("worker: slot reused");
                s
            }
            None => {
                let mut slab = self.slab.borrow_mut();
                let s = slab.len() as u32;
                slab.push(Conn {
                    generation: 0,
                    state: State::Free,
                    fd: 0,
                    hangup: false,
                });
                s
            }
        };
        let mut slab = self.slab.borrow_mut();
        let c = &mut slab[slot as usize];
        c.generation = c.generation.wrapping_add(1) & GEN_MASK;
        let id = ConnId::new(self.server_id, self.shared.index, slot, c.generation);
        c.fd = a.fd;
        c.hangup = a.hangup;
        c.state = State::Open;
        self.opened.push((a.fd, id));
    }

    /// `Worker::take_cmds` (src/worker.rs:639).
    fn take_cmds(&mut self) {
        while let Some(cmd) = self.shared.cmds.pop() {
            match cmd {
                Cmd::Stop => self.stopping = true,
                cmd => {
                    if let Cmd::Write(_, ref data) = cmd {
                        self.take_budget(data.len());
                    }
                    self.apply(cmd);
                }
            }
        }
    }

    /// The worker's `cmd_bytes.fetch_sub` (src/worker.rs:645, 820), with the
    /// ghost check that it never goes below zero.
    fn take_budget(&self, n: usize) {
        self.shared.queued_bytes.fetch_sub(n, Ghost::SeqCst);
        let prev = self.shared.cmd_bytes.fetch_sub(n, Ordering::Relaxed);
        assert!(prev >= n, "cmd_bytes underflow: {prev} - {n}");
    }

    /// `Worker::shutdown` (src/worker.rs:810).
    fn shutdown(&mut self) {
        let n = self.slab.borrow().len();
        for slot in 0..n as u32 {
            self.close(slot, AKG_CLOSED);
        }
        self.take_new();
        while let Some(cmd) = self.shared.cmds.pop() {
            if let Cmd::Write(_, d) = cmd {
                self.take_budget(d.len());
            }
        }
        self.end_turn();
    }

    /// Number of open connections (ghost helper).
    pub fn open_count(&self) -> usize {
        self.slab
            .borrow()
            .iter()
            .filter(|c| c.state == State::Open)
            .count()
    }

    /// Commands taken so far, `Stop` excluded (ghost helper).
    pub fn taken(&self) -> usize {
        self.applied.len()
    }
}
