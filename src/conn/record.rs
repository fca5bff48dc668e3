//! The connection record [`Conn`]. Its first fields are, in order and
//! layout, the C `CONN` of MarioTCP 0.9.9 (docs/C-API.md): C handlers
//! receive a pointer to it. The private tail after `user` is ours.
//!
//! Uses: records (the owner's `WORKER`), wheel (`NOT_FILED`), conn::id.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::id::ConnId;
use crate::records::CWorker;
use crate::wheel::NOT_FILED;

/// Lifecycle of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// In the free list.
    Free,
    /// Serving a client.
    Open,
    /// Its close callback is running.
    Closing,
    /// Closed (callback ran, socket closed); freed at the end of the turn.
    Closed,
}

/// One connection. The `#[repr(C)]` prefix up to `user` is the C `CONN`.
///
/// Rust handlers get `&mut Conn` and use its methods; C handlers get the same
/// memory as `CONN *`.
#[repr(C)]
pub struct Conn {
    // ---- the C `CONN` (field order and types are ABI) ----
    pub(crate) fd: c_int,
    /// `struct bufferevent *bufev`: holds the `ConnId` (never dereferenced).
    pub(crate) bufev: AtomicUsize,
    pub(crate) ind: u32,
    pub(crate) in_buf: *mut c_char,
    pub(crate) in_buf_len: u16,
    pub(crate) out_buf: *mut c_char,
    pub(crate) out_buf_len: u16,
    pub(crate) next: *mut Conn,
    pub(crate) owner: *mut CWorker,
    pub(crate) cip: u32,
    pub(crate) cport: u16,
    pub(crate) err_type: u16,
    pub(crate) user: *mut c_void,
    // ---- private ----
    pub(crate) generation: u32,
    pub(crate) state: State,
    /// Set while the slot is on the worker's list of connections to flush.
    pub(crate) dirty: bool,
    /// The peer's end of stream was read (nothing left to discard).
    pub(crate) peer_eof: bool,
    /// Tick of the last byte read.
    pub(crate) last_read: u32,
    /// Tick of the last write progress (or when output became pending).
    pub(crate) last_write: u32,
    /// Tick the first byte of the partial packet in `partial` arrived: a
    /// packet must complete within the read timeout (slow senders).
    pub(crate) packet_start: u32,
    /// Tick this slot is filed under in the timing wheel, or `NOT_FILED`.
    pub(crate) wheel_due: u32,
    /// Bytes of `out` already sent.
    pub(crate) out_pos: u32,
    /// A partial packet carried over between reads (empty otherwise).
    pub(crate) partial: Vec<u8>,
    /// Output waiting to be written (empty, with no allocation, when idle).
    pub(crate) out: Vec<u8>,
}

impl Conn {
    /// A free record for slot `ind` of the worker whose C record is `owner`.
    pub(crate) fn new(ind: u32, owner: *mut CWorker) -> Conn {
        Conn {
            fd: -1,
            bufev: AtomicUsize::new(0),
            ind,
            in_buf: std::ptr::null_mut(),
            in_buf_len: 0,
            out_buf: std::ptr::null_mut(),
            out_buf_len: 0,
            next: std::ptr::null_mut(),
            owner,
            cip: 0,
            cport: 0,
            err_type: 0,
            user: std::ptr::null_mut(),
            generation: 0,
            state: State::Free,
            dirty: false,
            peer_eof: false,
            last_read: 0,
            last_write: 0,
            packet_start: 0,
            wheel_due: NOT_FILED,
            out_pos: 0,
            partial: Vec::new(),
            out: Vec::new(),
        }
    }

    /// This connection's id, valid from any thread for the connection's
    /// whole life (see [`ConnId`]).
    pub fn id(&self) -> ConnId {
        ConnId(self.bufev.load(Ordering::Relaxed) as u64)
    }

    /// The client's IPv4 address and port.
    pub fn peer(&self) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(u32::from_be(self.cip)),
            u16::from_be(self.cport),
        )
    }

    /// Index of the worker thread that owns this connection.
    pub fn worker_index(&self) -> usize {
        // SAFETY: `owner` is set when the slot is created and points into
        // the server's worker array, which outlives every connection.
        unsafe { (*self.owner).ind as usize }
    }

    /// Slot index inside the owning worker (the C `CONN.ind`).
    pub fn slot(&self) -> u32 {
        self.ind
    }

    /// True until the connection is closed.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Why the connection closed (`AKG_TIMEOUT`, `AKG_CLOSED`, `AKG_ERROR`
    /// or the id given to [`Conn::close`]); 0 while open.
    pub fn close_reason(&self) -> u16 {
        self.err_type
    }

    /// The socket descriptor (for options such as `TCP_NODELAY`; do not
    /// read, write or close it).
    pub fn fd(&self) -> c_int {
        self.fd
    }

    /// The tick at which this connection must be looked at again for its
    /// read timeout (`rt` seconds without a byte read) or write timeout
    /// (`wt` seconds of pending output without progress), or for a packet
    /// begun more than `rt` seconds ago and still incomplete; `None` when
    /// neither applies. A deadline `d` expires once the current tick is
    /// `>= d`, i.e. after more than `rt` (`wt`) whole seconds.
    pub(crate) fn deadline(&self, rt: u32, wt: u32) -> Option<u32> {
        // A started packet counts from its first byte, however slowly the
        // rest trickles in; between packets, from the last byte read.
        let since = if self.partial.is_empty() {
            self.last_read
        } else {
            self.packet_start
        };
        let read = (rt > 0).then(|| since + rt + 1);
        let write = (wt > 0 && (self.out_pos as usize) < self.out.len()).then(|| self.last_write + wt + 1);
        match (read, write) {
            (Some(r), Some(w)) => Some(r.min(w)),
            (r, w) => r.or(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_follows_reads_packets_and_pending_output() {
        let mut c = Conn::new(0, std::ptr::null_mut());
        c.last_read = 10;
        assert_eq!(c.deadline(0, 0), None);
        assert_eq!(c.deadline(5, 0), Some(16));
        // A started packet counts from its first byte, not the last read.
        c.partial = vec![1];
        c.packet_start = 7;
        assert_eq!(c.deadline(5, 0), Some(13));
        // Pending output without progress: the earlier of the two.
        c.out = vec![0; 4];
        c.last_write = 9;
        assert_eq!(c.deadline(5, 2), Some(12));
        assert_eq!(c.deadline(0, 2), Some(12));
        c.out_pos = 4;
        assert_eq!(c.deadline(0, 2), None);
    }
}
