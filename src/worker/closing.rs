//! Sockets of closed connections that are still finishing, so that a close
//! loses nothing. A graceful close hands its socket here unless everything
//! is already delivered; the slot is free for the next client at once.
//!
//! An entry goes through two stages, driven by the socket's events (it is
//! registered under its own token) and checked once a tick:
//!
//! * **sending**: output the library still holds is sent as the socket
//!   takes it; input is discarded meanwhile;
//! * **finishing**: everything is in the kernel and the write side is shut
//!   (FIN queued). The socket stays open, still discarding input, until the
//!   peer has acknowledged every byte of data (the kernel's send queue holds
//!   at most the FIN), or the peer has finished too. Closing earlier, with
//!   input arriving, would make the kernel answer with a reset and drop
//!   what it still had to send.
//!
//! An entry that makes no progress (bytes sent, or the kernel's queue
//! shrinking) for the write timeout is reset. Every entry holds a place
//! under `connnum` (`Mailbox::closing`, which placement adds to the live
//! count when it checks the cap), so `connnum` bounds descriptors and
//! memory; balance between workers looks at live connections only.
//!
//! What these sockets send counts in the worker's `bytes_out`; what they
//! still hold counts in its `out_queued` until it is sent or dropped.
//!
//! Uses: sys, mailbox (the worker's statistics), stats.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::mailbox::Mailbox;
use crate::stats::{self, WorkerStats};
use crate::sys::{self, Io};

/// Most input discarded from a closing socket per look.
pub(crate) const DISCARD_MAX: usize = 256 * 1024;
/// The no-progress limit for closing sockets when the server's write
/// timeout is 0 (disabled): `CONN_WRITE_TIMEOUT`, 300 s. A closed
/// connection cannot wait for ever.
pub(crate) const DRAIN_IDLE_DEFAULT: u32 = 300;

/// A closed connection still finishing.
#[derive(Debug)]
struct Entry {
    fd: RawFd,
    /// Output the library still holds (`out[pos..]`).
    out: Vec<u8>,
    pos: usize,
    /// The write side is shut: every byte is in the kernel.
    fin: bool,
    /// The peer's end of stream was read.
    peer_eof: bool,
    /// Bytes in the kernel's send queue at the last look.
    queued: usize,
    /// Tick of the last progress.
    last_progress: u32,
}

/// What a look at an entry found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Still finishing.
    Pending,
    /// Finished (closed); its output buffer is handed back for reuse.
    Done(Vec<u8>),
    /// The socket failed; it was closed.
    Failed,
}

/// What [`Closing::start`] did with a closed connection's socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Started {
    /// Everything was delivered already: the socket is closed; the output
    /// buffer is handed back.
    Closed(Vec<u8>),
    /// It is finishing as entry `i`: register the socket for its events
    /// under that index.
    Entry(u32),
}

/// The closing sockets of one worker (see the module docs).
pub(crate) struct Closing {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// The worker's mailbox, for its statistics.
    mailbox: Arc<Mailbox>,
}

/// Bytes in the kernel's send queue of `fd` not yet acknowledged by the
/// peer (`SIOCOUTQ`), or `None` if the socket cannot say.
fn kernel_queue(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `TIOCOUTQ` (`SIOCOUTQ`) writes one `int` through the pointer,
    // which is valid for that write.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then_some(n.max(0) as usize)
}

impl Entry {
    /// Output the library still holds, dropped when the entry is reset.
    fn held(&self) -> u64 {
        (self.out.len() - self.pos) as u64
    }

    /// Discards input, sends what the socket takes, shuts the write side
    /// once all is sent, and looks at the kernel's queue.
    fn step(&mut self, now: u32, st: &WorkerStats) -> Step {
        if !self.peer_eof {
            self.peer_eof = sys::discard_input(self.fd, DISCARD_MAX);
        }
        while self.pos < self.out.len() {
            match sys::send(self.fd, &self.out[self.pos..]) {
                Io::Done(n) => {
                    self.pos += n;
                    self.last_progress = now;
                    stats::add(&st.bytes_out, n as u64);
                    stats::sub(&st.out_queued, n as u64);
                }
                Io::WouldBlock => return Step::Pending,
                Io::Err(e) => {
                    log::debug!("closed connection's output: send: {e}");
                    stats::sub(&st.out_queued, self.held());
                    sys::close(self.fd);
                    return Step::Failed;
                }
            }
        }
        if !self.fin {
            sys::shutdown_write(self.fd);
            self.fin = true;
        }
        // The queue counts the FIN as one byte: at most 1 left means the
        // peer acknowledged every byte of data, and a reset from now on
        // (late input meeting a closed socket) cannot destroy any of it.
        match if self.peer_eof {
            None
        } else {
            kernel_queue(self.fd)
        } {
            Some(q) if q > 1 => {
                if self.queued > 0 && q < self.queued {
                    self.last_progress = now;
                }
                self.queued = q;
                Step::Pending
            }
            _ => {
                // All acknowledged (or the peer has finished too, so no
                // input can turn the close into a reset): close.
                if !self.peer_eof {
                    sys::discard_input(self.fd, DISCARD_MAX);
                }
                sys::close(self.fd);
                Step::Done(std::mem::take(&mut self.out))
            }
        }
    }
}

impl Closing {
    /// No socket finishing yet, for the worker whose mailbox is `mailbox`.
    pub(crate) fn new(mailbox: Arc<Mailbox>) -> Closing {
        Closing {
            entries: Vec::new(),
            free: Vec::new(),
            mailbox,
        }
    }

    /// True when no socket is finishing.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.len() == self.free.len()
    }

    /// Sockets finishing.
    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Takes over a closed connection's socket with `out[pos..]` unsent
    /// (`peer_eof`: the peer's end of stream was read).
    pub(crate) fn start(&mut self, fd: RawFd, out: Vec<u8>, pos: usize, now: u32, peer_eof: bool) -> Started {
        let mut e = Entry {
            fd,
            out,
            pos,
            fin: false,
            peer_eof,
            queued: 0,
            last_progress: now,
        };
        match e.step(now, &self.mailbox.stats) {
            Step::Done(out) => Started::Closed(out),
            Step::Failed => Started::Closed(Vec::new()),
            Step::Pending => {
                let i = match self.free.pop() {
                    Some(i) => {
                        self.entries[i as usize] = Some(e);
                        i
                    }
                    None => {
                        self.entries.push(Some(e));
                        (self.entries.len() - 1) as u32
                    }
                };
                Started::Entry(i)
            }
        }
    }

    /// An event for entry `i` (a stale index, finished meanwhile, is
    /// ignored).
    pub(crate) fn event(&mut self, i: u32, now: u32) -> Step {
        let Some(Some(e)) = self.entries.get_mut(i as usize) else {
            return Step::Pending;
        };
        let r = e.step(now, &self.mailbox.stats);
        if r != Step::Pending {
            self.take(i);
        }
        r
    }

    /// Resets entry `i` at once (its socket could not be watched).
    pub(crate) fn reset(&mut self, i: u32) {
        let e = self.take(i);
        stats::sub(&self.mailbox.stats.out_queued, e.held());
        sys::close_reset(e.fd);
    }

    fn take(&mut self, i: u32) -> Entry {
        self.free.push(i);
        self.entries[i as usize].take().expect("a closing entry")
    }

    /// Looks at every entry (a backstop for events that do not come, e.g.
    /// the last acknowledgement), and resets those that made no progress
    /// for more than `limit` seconds. Returns how many ended; their output
    /// buffers are dropped.
    pub(crate) fn check(&mut self, now: u32, limit: u32) -> usize {
        let mut ended = 0;
        for i in 0..self.entries.len() as u32 {
            let Some(e) = self.entries[i as usize].as_mut() else {
                continue;
            };
            if e.step(now, &self.mailbox.stats) != Step::Pending {
                self.take(i);
                ended += 1;
                continue;
            }
            if now > e.last_progress.saturating_add(limit) {
                let e = self.take(i);
                log::warn!(
                    "closed connection: the peer read nothing for {limit} s, {} byte(s) undelivered: reset",
                    e.out.len() - e.pos + e.queued
                );
                stats::sub(&self.mailbox.stats.out_queued, e.held());
                sys::close_reset(e.fd);
                ended += 1;
            }
        }
        ended
    }

    /// At stop, once the deadline has passed: resets every entry left
    /// (logged). Returns how many ended.
    pub(crate) fn abandon(&mut self, waited_ms: u128) -> usize {
        let n = self.len();
        if n > 0 {
            let held: usize = self
                .entries
                .iter()
                .flatten()
                .map(|e| e.out.len() - e.pos + e.queued)
                .sum();
            log::warn!(
                "stop: {n} closed connection(s) still had {held} byte(s) to deliver after {waited_ms} ms: reset"
            );
        }
        for i in 0..self.entries.len() as u32 {
            if self.entries[i as usize].is_some() {
                let e = self.take(i);
                stats::sub(&self.mailbox.stats.out_queued, e.held());
                sys::close_reset(e.fd);
            }
        }
        n
    }
}
