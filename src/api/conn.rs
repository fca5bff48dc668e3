//! The methods of [`Conn`] that act on the connection through its worker:
//! queueing output and closing. (The record itself, and its getters, are
//! in `conn::record`.)
//!
//! Uses: worker (the owning worker's context), conn, proto.

use crate::conn::Conn;
use crate::proto::{Head, MAX_PKG_LEN, SIZE_OF_HEAD};
use crate::worker;

impl Conn {
    /// Queues `data` for the client. Replies queued while one connection is
    /// served go out in one `send` (a partial send keeps the rest queued
    /// until the socket takes it). Returns `false` when the connection is
    /// already closed, or when the pending output would pass the server's
    /// cap ([`Config::output_limit`](crate::Config::output_limit)): the
    /// connection is then closed as [`AKG_ERROR`](crate::AKG_ERROR).
    ///
    /// Runs on the connection's worker thread (where every `&mut Conn`
    /// lives); the bytes are copied.
    pub fn send(&mut self, data: &[u8]) -> bool {
        worker::with_owner(self, |ctx, c| ctx.append(c as *mut Conn, data))
    }

    /// Queues a frame `HEAD{stx, 8 + body.len(), akg_id} + body`, with the
    /// server's stx. The body may be longer than a packet the server
    /// accepts (`MAX_PKG_LEN`), up to 65,527 bytes. Returns as
    /// [`Conn::send`].
    ///
    /// # Panics
    ///
    /// If the frame would exceed 65,535 bytes (`pkglen` is 16 bits).
    pub fn send_packet(&mut self, akg_id: u16, body: &[u8]) -> bool {
        let stx = worker::with_owner(self, |ctx, _| ctx.stx());
        let n = SIZE_OF_HEAD + body.len();
        if n > MAX_PKG_LEN {
            return self.send(&Head::frame(stx, akg_id, body));
        }
        let mut f = [0u8; MAX_PKG_LEN];
        f[..SIZE_OF_HEAD].copy_from_slice(
            &Head {
                stx,
                pkglen: n as u16,
                akg_id,
            }
            .to_bytes(),
        );
        f[SIZE_OF_HEAD..n].copy_from_slice(body);
        self.send(&f[..n])
    }

    /// Closes the connection: the close callback runs now with `reason`
    /// (once; later calls do nothing), pending output is flushed as far as
    /// the socket takes it without blocking, the socket is closed and the
    /// slot freed after the current callback returns.
    pub fn close(&mut self, reason: u16) {
        worker::with_owner(self, |ctx, c| ctx.close(c as *mut Conn, reason))
    }
}
