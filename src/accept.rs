//! Accepting new connections.
//!
//! The listening socket sits in every worker's poll, edge-triggered and with
//! `EPOLLEXCLUSIVE`: a new connection is reported to the workers that are
//! awake (they see it at their next turn) and wakes at most one that sleeps.
//! The worker that sees it accepts, so a connection normally costs no
//! thread hand-off and no extra wake-up: the original's separate accepting
//! thread slept and woke once per connection and then woke the worker again
//! (two context switches per connection, a third of the server's CPU in the
//! connect-and-close benchmark).
//!
//! Placement keeps what the original promised: each connection goes to one
//! worker and stays there, a worker holds at most `connnum`, and when every
//! worker is full the connection is reset at once and "workers are too
//! busy" is logged. While the server holds fewer than 32 connections the
//! placement is exactly round robin, as in the original. Past that, the
//! worker that accepted keeps the connection unless it is ahead of the
//! least loaded worker by more than 1/32 of the connections held; then the
//! least loaded worker gets it through its queue. So workers stay within
//! about 3 % of each other, and under load most connections never change
//! thread (strict round robin hands every other connection across).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Token;

use crate::sys::{self, Accepted, SpareFd};
use crate::worker::WorkerShared;

/// Below this many connections held, placement is exactly round robin;
/// above it the accepting worker keeps a connection unless it is ahead of
/// the least loaded worker by more than 1/`SMALL` of the total.
const SMALL: u32 = 32;

/// At most this many connections are accepted per call, so a burst of
/// new connections does not hold up a worker's established ones.
pub(crate) const ACCEPTS_PER_TURN: usize = 64;

/// How long a worker waits before retrying `accept` after an error that
/// may clear by itself (no memory, descriptors the spare could not free).
pub(crate) const RETRY: Duration = Duration::from_millis(20);

/// The listening socket and the placement state every worker shares.
pub(crate) struct Listener {
    fd: RawFd,
    workers: Vec<Arc<WorkerShared>>,
    cap: u32,
    /// The C record's `conn_count` (connections accepted so far).
    accepted: Box<dyn Fn() + Send + Sync>,
    closing: AtomicBool,
    /// Round-robin turn, used while the server is small.
    rr: AtomicUsize,
    spare: Mutex<SpareFd>,
    fd_log: Mutex<Option<Instant>>,
    busy_log: Mutex<(Option<Instant>, u64)>,
}

/// What [`Listener::accept_all`] left behind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing is pending (or the server is stopping).
    Empty,
    /// [`ACCEPTS_PER_TURN`] were taken; more may wait. Edge-triggered: the
    /// caller must come back without waiting for a new event.
    More,
    /// An error stopped accepting; try again after [`RETRY`].
    Retry,
}

impl Listener {
    pub(crate) fn new(
        fd: RawFd,
        workers: Vec<Arc<WorkerShared>>,
        cap: u32,
        accepted: Box<dyn Fn() + Send + Sync>,
    ) -> Listener {
        Listener {
            fd,
            workers,
            cap,
            accepted,
            closing: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
            spare: Mutex::new(SpareFd::new()),
            fd_log: Mutex::new(None),
            busy_log: Mutex::new((None, 0)),
        }
    }

    /// Adds the listening socket to a worker's poll (its epoll descriptor
    /// `epoll`): edge-triggered, exclusive wake-up, reported with `token`.
    pub(crate) fn watch(&self, epoll: RawFd, token: Token) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
            u64: token.0 as u64,
        };
        // SAFETY: plain syscall on descriptors; `ev` is a valid event and
        // the kernel checks the descriptors. mio reports the event's `u64`
        // as its token.
        let r = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, self.fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops every worker from accepting further connections.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Accepts pending connections (up to [`ACCEPTS_PER_TURN`]) on behalf
    /// of worker `me`: `open` gets those `me` keeps; the others are handed
    /// to other workers or refused.
    pub(crate) fn accept_all(&self, me: usize, mut open: impl FnMut(Accepted)) -> Drained {
        for _ in 0..ACCEPTS_PER_TURN {
            if self.closing.load(Ordering::SeqCst) {
                return Drained::Empty;
            }
            // Accepts are serialised by the spare's lock, so no other worker
            // can take the descriptor the spare frees for refusing.
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            let e = match sys::accept(self.fd) {
                Ok(a) => {
                    drop(spare);
                    if let Some(a) = self.place(me, a) {
                        open(a);
                    }
                    continue;
                }
                Err(e) => e,
            };
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Drained::Empty,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    let refused = spare.refuse_pending(self.fd);
                    drop(spare);
                    let mut last = self.fd_log.lock().unwrap_or_else(|e| e.into_inner());
                    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        log::error!(
                            "accept: {e}; refused {refused} pending connection(s) until descriptors free up"
                        );
                        *last = Some(Instant::now());
                    }
                    // Edge-triggered: the listener reports the next
                    // connection; retry shortly too in case the spare
                    // could not help (ENFILE, no memory).
                    return if refused == 0 {
                        Drained::Retry
                    } else {
                        Drained::Empty
                    };
                }
                Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                _ => {
                    log::error!("accept: {e}");
                    return Drained::Retry;
                }
            }
        }
        Drained::More
    }

    /// Chooses the worker for a new connection. Returns it back if `me`
    /// keeps it; otherwise it has been handed over or refused.
    fn place(&self, me: usize, a: Accepted) -> Option<Accepted> {
        let n = self.workers.len();
        let count = |i: usize| self.workers[i].count.load(Ordering::Acquire);
        let mine = count(me);
        let (mut total, mut least, mut least_count) = (mine, me, u32::MAX);
        for k in 1..n {
            let i = (me + k) % n;
            let c = count(i);
            total = total.saturating_add(c);
            if c < least_count {
                (least, least_count) = (i, c);
            }
        }
        if total < SMALL {
            // A small server places exactly round robin, like the original.
            least = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        } else if mine <= least_count.saturating_add(total / SMALL)
            && reserve(&self.workers[me].count, self.cap)
        {
            (self.accepted)();
            return Some(a);
        }
        // Hand it over: the least loaded worker first, then any with room.
        let mut a = a;
        for k in 0..n {
            let i = (least + k) % n;
            let w = &self.workers[i];
            if !reserve(&w.count, self.cap) {
                continue;
            }
            if i == me {
                (self.accepted)();
                return Some(a);
            }
            match w.accept_q.push(a) {
                Ok(()) => {
                    w.notify();
                    (self.accepted)();
                    return None;
                }
                Err(back) => {
                    // Hand-off queue full: try the next worker.
                    w.count.fetch_sub(1, Ordering::AcqRel);
                    a = back;
                }
            }
        }
        let mut busy = self.busy_log.lock().unwrap_or_else(|e| e.into_inner());
        busy.1 += 1;
        if busy.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            log::error!("workers are too busy! ({} connection(s) refused)", busy.1);
            *busy = (Some(Instant::now()), 0);
        }
        drop(busy);
        sys::close_reset(a.fd);
        None
    }

    /// After every worker has stopped: resets connections still waiting in
    /// hand-off queues.
    pub(crate) fn drain_queues(&self) {
        for w in &self.workers {
            while let Some(a) = w.accept_q.pop() {
                sys::close_reset(a.fd);
                w.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Takes one place under `cap` in a worker's connection count.
fn reserve(count: &AtomicU32, cap: u32) -> bool {
    if count.fetch_add(1, Ordering::AcqRel) >= cap {
        count.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}
