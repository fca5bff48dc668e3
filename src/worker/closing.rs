//! Sockets of closed connections that are still finishing, so that a close
//! loses nothing:
//!
//! * **draining**: the connection closed with output not yet sent. Its
//!   slot is free for the next client at once, but the descriptor lives on
//!   here with the output, registered under its own token: writable events
//!   send more, readable events discard input. When everything is sent the
//!   write side is shut (FIN after the data). A peer that reads nothing for
//!   the write timeout is cut off with a reset. A draining connection keeps
//!   its place in the worker's count (`connnum` bounds descriptors and
//!   memory).
//! * **lingering**: everything was handed to the kernel and FIN is queued;
//!   the socket keeps discarding input for a moment (at most
//!   [`LINGER_TICKS`]) so that a late request from the peer does not turn
//!   into a reset that destroys the last replies, then it is closed.
//!
//! Uses: sys.

use std::os::fd::RawFd;

use crate::sys::{self, Io};

/// Most sockets one worker keeps lingering; past it they close at once.
const LINGER_MAX: usize = 4096;
/// A lingering socket is closed after at most this many ticks (seconds).
const LINGER_TICKS: u32 = 2;
/// Most input discarded from a closing socket per look.
pub(crate) const DISCARD_MAX: usize = 256 * 1024;
/// The no-progress limit for draining output when the server's write
/// timeout is 0 (disabled): `CONN_WRITE_TIMEOUT`, 300 s. A closed
/// connection's output cannot wait for ever.
pub(crate) const DRAIN_IDLE_DEFAULT: u32 = 300;

/// A closed connection whose output is still being sent.
#[derive(Debug)]
struct Drain {
    fd: RawFd,
    out: Vec<u8>,
    pos: usize,
    /// Tick of the last progress.
    last_progress: u32,
    /// The peer's end of stream was read: no lingering after the output.
    peer_eof: bool,
}

/// What a drain step left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Output is left; wait for the socket.
    Pending,
    /// All sent (write side shut); the output buffer is handed back.
    Done(Vec<u8>),
    /// The socket failed; it was closed.
    Failed,
}

/// The closing sockets of one worker (see the module docs).
#[derive(Default)]
pub(crate) struct Closing {
    drains: Vec<Option<Drain>>,
    free: Vec<u32>,
    /// Lingering sockets: (descriptor, tick to close by).
    linger: Vec<(RawFd, u32)>,
}

impl Closing {
    /// True when no socket is finishing.
    pub(crate) fn is_empty(&self) -> bool {
        self.drains.len() == self.free.len() && self.linger.is_empty()
    }

    /// Draining connections.
    pub(crate) fn draining(&self) -> usize {
        self.drains.len() - self.free.len()
    }

    /// Bytes still to send, over every draining connection.
    pub(crate) fn unsent(&self) -> usize {
        self.drains.iter().flatten().map(|d| d.out.len() - d.pos).sum()
    }

    /// Ends the write side of a socket whose output is all sent: FIN, then
    /// close at once if the peer has finished too, else linger.
    pub(crate) fn finish(&mut self, fd: RawFd, peer_eof: bool, now: u32) {
        sys::shutdown_write(fd);
        if peer_eof || self.linger.len() >= LINGER_MAX || sys::discard_input(fd, DISCARD_MAX) {
            sys::close(fd);
        } else {
            self.linger.push((fd, now.saturating_add(LINGER_TICKS)));
        }
    }

    /// Takes over a closed connection's socket with `out[pos..]` unsent.
    /// Returns its index: the caller registers the socket for its events
    /// under that index.
    pub(crate) fn drain(&mut self, fd: RawFd, out: Vec<u8>, pos: usize, now: u32, peer_eof: bool) -> u32 {
        let d = Drain {
            fd,
            out,
            pos,
            last_progress: now,
            peer_eof,
        };
        match self.free.pop() {
            Some(i) => {
                self.drains[i as usize] = Some(d);
                i
            }
            None => {
                self.drains.push(Some(d));
                (self.drains.len() - 1) as u32
            }
        }
    }

    /// An event for draining connection `i`: discards input, sends what the
    /// socket takes. A stale index (finished meanwhile) is ignored.
    pub(crate) fn drain_event(&mut self, i: u32, now: u32) -> Drained {
        let Some(Some(d)) = self.drains.get_mut(i as usize) else {
            return Drained::Pending;
        };
        if !d.peer_eof {
            d.peer_eof = sys::discard_input(d.fd, DISCARD_MAX);
        }
        while d.pos < d.out.len() {
            match sys::send(d.fd, &d.out[d.pos..]) {
                Io::Done(n) => {
                    d.pos += n;
                    d.last_progress = now;
                }
                Io::WouldBlock => return Drained::Pending,
                Io::Err(e) => {
                    log::debug!("closed connection's output: send: {e}");
                    let d = self.take(i);
                    sys::close(d.fd);
                    return Drained::Failed;
                }
            }
        }
        let d = self.take(i);
        self.finish(d.fd, d.peer_eof, now);
        Drained::Done(d.out)
    }

    /// Resets draining connection `i` at once (its socket could not be
    /// watched).
    pub(crate) fn drain_failed(&mut self, i: u32) {
        let d = self.take(i);
        sys::close_reset(d.fd);
    }

    fn take(&mut self, i: u32) -> Drain {
        self.free.push(i);
        self.drains[i as usize].take().expect("a draining connection")
    }

    /// Once per tick: resets the draining connections that made no progress
    /// for more than `limit` seconds, and closes the lingering sockets whose
    /// peer finished or whose time is up. Returns how many draining
    /// connections ended (each frees its place in the worker's count).
    pub(crate) fn tick(&mut self, now: u32, limit: u32) -> usize {
        let mut ended = 0;
        for i in 0..self.drains.len() as u32 {
            let stalled = self.drains[i as usize]
                .as_ref()
                .is_some_and(|d| now > d.last_progress.saturating_add(limit));
            if stalled {
                let d = self.take(i);
                log::warn!(
                    "closed connection: the peer read nothing for {limit} s, {} byte(s) unsent: reset",
                    d.out.len() - d.pos
                );
                sys::close_reset(d.fd);
                ended += 1;
            }
        }
        self.linger.retain(|&(fd, until)| {
            let done = now >= until || sys::discard_input(fd, DISCARD_MAX);
            if done {
                sys::close(fd);
            }
            !done
        });
        ended
    }

    /// At stop, once the deadline has passed: resets every draining
    /// connection (logged) and closes every lingering socket. Returns how
    /// many draining connections ended.
    pub(crate) fn abandon(&mut self, waited_ms: u128) -> usize {
        let (n, unsent) = (self.draining(), self.unsent());
        if n > 0 {
            log::warn!(
                "stop: {n} closed connection(s) still had {unsent} byte(s) to deliver after {waited_ms} ms: reset"
            );
        }
        for i in 0..self.drains.len() as u32 {
            if self.drains[i as usize].is_some() {
                let d = self.take(i);
                sys::close_reset(d.fd);
            }
        }
        for (fd, _) in self.linger.drain(..) {
            sys::discard_input(fd, DISCARD_MAX);
            sys::close(fd);
        }
        n
    }
}
