//! The methods of [`Conn`] that act on the connection through its worker:
//! queueing output and closing. (The record itself, and its getters, are
//! in `conn::record`.)
//!
//! Uses: worker (the owning worker's context), server (`send_to` and
//! `close_id` for pool handlers), conn, proto.

use crate::conn::{Conn, ConnId};
use crate::proto::{Head, MAX_PKG_LEN, SIZE_OF_HEAD};
use crate::worker;

impl Conn {
    /// Queues `data` (copied) for the client, after everything queued
    /// before (by this method, [`send_to`](crate::send_to) or C's
    /// `bufferevent_write`, in the order they were made). Replies queued
    /// while one connection is served go out in one `send`; what the socket
    /// does not take waits until it does. In the close handler of a
    /// graceful close the bytes are the last data before FIN.
    ///
    /// Returns `true` when the bytes were queued; `false` when the
    /// connection takes no more output (closed, or its close is pending),
    /// or when the pending output would pass the server's cap
    /// ([`Config::output_limit`](crate::Config::output_limit)): the
    /// connection is then closed as [`AKG_ERROR`](crate::AKG_ERROR).
    pub fn send(&mut self, data: &[u8]) -> bool {
        worker::with_owner(self, |ctx, c| ctx.write(c.id(), data))
    }

    /// Queues a frame `HEAD{stx, 8 + body.len(), akg_id} + body`, with the
    /// server's stx (in network byte order with the big-endian `HEAD`
    /// framing), as [`Conn::send`] does. A frame must fit the framing
    /// (`MAX_PKG_LEN`, 1,500 bytes, head included: a body of at most 1,492
    /// bytes): a longer body is refused (`false`, a warning logged, the
    /// connection untouched). Never panics.
    pub fn send_packet(&mut self, akg_id: u16, body: &[u8]) -> bool {
        let (stx, be) = worker::with_owner(self, |ctx, _| (ctx.stx(), ctx.framing().head_big_endian()));
        with_frame(stx, be, akg_id, body, |f| self.send(f))
    }

    /// Closes the connection gracefully with `reason` (once; later calls
    /// do nothing). From now on the connection is not open
    /// ([`Conn::is_open`] is false, [`Conn::send`] refuses output) and
    /// [`Conn::close_reason`] is `reason`; the close handler runs as soon as
    /// the running handler returns (never inside it, which holds the
    /// connection's state), once, and may queue a last reply; everything
    /// queued is then delivered, followed by FIN. A peer that reads nothing
    /// for the write timeout is reset. Called in the close handler, it does
    /// nothing.
    ///
    /// ```no_run
    /// use mario::{AKG_CLOSED, HandlerResult, Server, Verdict};
    /// let server = Server::builder()
    ///     .on_packet(0x0001, |conn, _, _pkt| -> HandlerResult {
    ///         conn.send(b"bye");
    ///         conn.close(AKG_CLOSED); // "bye" is delivered, then FIN
    ///         Ok(Verdict::Continue)
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&mut self, reason: u16) {
        worker::with_owner(self, |ctx, c| ctx.close_own(c, reason))
    }

    /// True until the connection is closed, or its close is pending (asked
    /// for by [`Conn::close`], or by id, while a handler runs on it).
    pub fn is_open(&self) -> bool {
        let owner = self.owner;
        worker::on_owner(owner, |ctx| ctx.is_open(self.ind)).unwrap_or(false)
    }
}

/// Runs `f` on the frame `HEAD{stx, 8 + body.len(), akg_id} + body` (head
/// fields in network byte order if `be`); false, with a warning, if it
/// would pass `MAX_PKG_LEN`.
fn with_frame(stx: u32, be: bool, akg_id: u16, body: &[u8], f: impl FnOnce(&[u8]) -> bool) -> bool {
    let n = SIZE_OF_HEAD.saturating_add(body.len());
    if n > MAX_PKG_LEN {
        log::warn!(
            "send_packet: a body of {} bytes makes a {n}-byte frame, over MAX_PKG_LEN ({MAX_PKG_LEN}): refused",
            body.len()
        );
        return false;
    }
    let mut frame = [0u8; MAX_PKG_LEN];
    frame[..SIZE_OF_HEAD].copy_from_slice(
        &Head {
            stx,
            pkglen: n as u16,
            akg_id,
        }
        .to_bytes_in(be),
    );
    frame[SIZE_OF_HEAD..n].copy_from_slice(body);
    f(&frame[..n])
}

/// The connection as a blocking handler sees it, on a pool thread (see
/// [`ServerBuilder::on_packet_blocking`](crate::ServerBuilder::on_packet_blocking)):
/// its id and address, and output and closing by id, which the
/// connection's worker applies in the order they are made.
#[derive(Debug, Clone)]
pub struct PoolConn {
    id: ConnId,
    peer: std::net::SocketAddr,
    worker: usize,
    stx: u32,
    big_endian: bool,
}

impl PoolConn {
    /// The connection as a pool handler sees it.
    ///
    /// # Safety
    ///
    /// `c` is a record handed to the pool (see `pool`), during the call.
    pub(crate) unsafe fn of(c: *mut Conn, stx: u32, big_endian: bool) -> PoolConn {
        // SAFETY: the caller's contract; the fields are read through the
        // raw pointer; `owner` is the pool thread's record, whose `ind` is
        // the connection's worker.
        unsafe {
            PoolConn {
                id: ConnId::from_raw((*c).bufev.load(std::sync::atomic::Ordering::Relaxed) as u64)
                    .expect("an open connection has an id"),
                peer: (*c).peer.addr(),
                worker: (*(*c).owner).ind as usize,
                stx,
                big_endian,
            }
        }
    }

    /// The connection's id (see [`ConnId`]).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The client's address, IPv4 or IPv6 (the real client's behind a PROXY
    /// protocol balancer), as [`Conn::peer`].
    pub fn peer(&self) -> std::net::SocketAddr {
        self.peer
    }

    /// Index of the worker thread that owns the connection.
    pub fn worker_index(&self) -> usize {
        self.worker
    }

    /// Queues `data` (copied) for the client, as [`send_to`](crate::send_to)
    /// from another thread: the worker appends it after everything queued
    /// before. True when the write was handed to the worker; false when the
    /// server has stopped or the worker already holds 64 MiB from other
    /// threads. Past the connection's output cap the worker resets the
    /// connection (after this handler returns).
    pub fn send(&self, data: &[u8]) -> bool {
        crate::server::send_to(self.id, data)
    }

    /// Queues a frame `HEAD{stx, 8 + body.len(), akg_id} + body`, as
    /// [`Conn::send_packet`] does, through [`PoolConn::send`]. A body over
    /// 1,492 bytes is refused (false, a warning logged).
    pub fn send_packet(&self, akg_id: u16, body: &[u8]) -> bool {
        with_frame(self.stx, self.big_endian, akg_id, body, |f| self.send(f))
    }

    /// Closes the connection gracefully with `reason` once this handler
    /// returns (what it queued is delivered first); its close handler runs
    /// then, on the worker, once. False when the server has stopped.
    pub fn close(&self, reason: u16) -> bool {
        crate::server::close_id(self.id, reason)
    }
}
