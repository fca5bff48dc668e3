//! The methods of [`Conn`] that act on the connection through its worker:
//! queueing output and closing. (The record itself, and its getters, are
//! in `conn::record`.)
//!
//! Uses: worker (the owning worker's context), conn, proto.

use crate::conn::Conn;
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
        let n = SIZE_OF_HEAD.saturating_add(body.len());
        if n > MAX_PKG_LEN {
            log::warn!(
                "send_packet: a body of {} bytes makes a {n}-byte frame, over MAX_PKG_LEN ({MAX_PKG_LEN}): refused",
                body.len()
            );
            return false;
        }
        let mut f = [0u8; MAX_PKG_LEN];
        f[..SIZE_OF_HEAD].copy_from_slice(
            &Head {
                stx,
                pkglen: n as u16,
                akg_id,
            }
            .to_bytes_in(be),
        );
        f[SIZE_OF_HEAD..n].copy_from_slice(body);
        self.send(&f[..n])
    }

    /// Closes the connection gracefully: the close handler runs now with
    /// `reason` (once; later calls do nothing) and may queue a last reply;
    /// everything queued is then delivered, followed by FIN, while the slot
    /// is freed after the current handler returns. A peer that reads
    /// nothing for the write timeout is reset.
    pub fn close(&mut self, reason: u16) {
        worker::with_owner(self, |ctx, c| ctx.close(c as *mut Conn, reason))
    }

    /// True until the connection is closed (or its close, asked for by id
    /// while a handler runs on it, is pending).
    pub fn is_open(&self) -> bool {
        let owner = self.owner;
        worker::on_owner(owner, |ctx| ctx.is_open(self.ind)).unwrap_or(false)
    }
}
