//! The connection record. Its first fields are, in order and layout, the C
//! `CONN` of MarioTCP 0.9.9 (see `include/mario/mario.h`): C handlers receive
//! a pointer to it. The private tail after `user` is ours.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::layout::CWorker;
use crate::proto::Head;

/// A handle naming one connection for its whole life: which server, which
/// worker, which slot, and the slot's generation. It is what the C field
/// `CONN.bufev` holds (cast to a pointer), and what cross-thread commands
/// carry: a handle whose generation no longer matches its slot is stale and
/// is dropped, so a command can never reach the next client on that slot.
///
/// Layout (bit 0 is always 1, so a handle is never a valid, aligned
/// pointer): bits 1..22 slot, 22..32 worker, 32..40 server, 40..64 generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u64);

pub(crate) const MAX_SLOTS: u32 = 1 << 21;
pub(crate) const MAX_WORKERS: usize = 1 << 10;
pub(crate) const MAX_SERVERS: usize = 1 << 8;
const GEN_MASK: u32 = (1 << 24) - 1;

impl ConnId {
    pub(crate) fn new(server: usize, worker: usize, slot: u32, generation: u32) -> ConnId {
        debug_assert!(slot < MAX_SLOTS && worker < MAX_WORKERS && server < MAX_SERVERS);
        ConnId(
            1 | (u64::from(slot) << 1)
                | ((worker as u64) << 22)
                | ((server as u64) << 32)
                | (u64::from(generation & GEN_MASK) << 40),
        )
    }

    /// Decodes a raw handle value; `None` if it is not one of ours.
    pub(crate) fn from_raw(v: u64) -> Option<ConnId> {
        (v & 1 == 1).then_some(ConnId(v))
    }

    pub(crate) fn slot(self) -> u32 {
        ((self.0 >> 1) & u64::from(MAX_SLOTS - 1)) as u32
    }
    pub(crate) fn worker(self) -> usize {
        ((self.0 >> 22) & (MAX_WORKERS as u64 - 1)) as usize
    }
    pub(crate) fn server(self) -> usize {
        ((self.0 >> 32) & (MAX_SERVERS as u64 - 1)) as usize
    }
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 40) as u32 & GEN_MASK
    }
    /// The raw 64-bit value (as stored in `CONN.bufev`).
    pub fn as_raw(self) -> u64 {
        self.0
    }
}

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
            wheel_due: crate::wheel::NOT_FILED,
            out_pos: 0,
            partial: Vec::new(),
            out: Vec::new(),
        }
    }

    /// This connection's id, valid from any thread for the connection's
    /// whole life (see [`crate::ConnId`]).
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

    /// Queues `data` for the client. Replies queued during one turn of the
    /// event loop go out in one `send`. Returns `false` (and closes the
    /// connection as an error) when the pending output would pass the
    /// server's cap, or `false` when the connection is already closed.
    pub fn send(&mut self, data: &[u8]) -> bool {
        crate::worker::with_owner(self, |ctx, c| ctx.append(c as *mut Conn, data))
    }

    /// Queues a frame `HEAD{stx, 8 + body.len(), akg_id} + body`, using the
    /// server's stx.
    pub fn send_packet(&mut self, akg_id: u16, body: &[u8]) -> bool {
        let stx = crate::worker::with_owner(self, |ctx, _| ctx.stx());
        let mut f = [0u8; crate::proto::MAX_PKG_LEN];
        let n = crate::proto::SIZE_OF_HEAD + body.len();
        if n > f.len() {
            return self.send(&Head::frame(stx, akg_id, body));
        }
        f[..8].copy_from_slice(
            &Head {
                stx,
                pkglen: n as u16,
                akg_id,
            }
            .to_bytes(),
        );
        f[8..n].copy_from_slice(body);
        self.send(&f[..n])
    }

    /// Closes the connection: the close callback runs now with `reason`
    /// (once; later calls do nothing), pending output is flushed as far as
    /// the socket takes it without blocking, the socket is closed and the
    /// slot freed after the current callback returns.
    pub fn close(&mut self, reason: u16) {
        crate::worker::with_owner(self, |ctx, c| ctx.close(c as *mut Conn, reason))
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
