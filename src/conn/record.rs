//! The connection record [`Conn`]. Its first fields are, in order and
//! layout, the C `CONN` of MarioTCP 0.9.9 (docs/C-API.md): C handlers
//! receive a pointer to it. The private tail after `user` is ours.
//!
//! Uses: records (the owner's `WORKER`), conn::id.

use std::ffi::{c_char, c_int, c_void};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::id::ConnId;
use crate::records::CWorker;

/// One connection. The `#[repr(C)]` prefix up to `user` is the C `CONN`.
///
/// Rust handlers get `&mut Conn` and use its methods; C handlers get the same
/// memory as `CONN *`. The record belongs to the connection's worker, which
/// reuses it for a later client once the connection has closed: a handler
/// gets it for the duration of the call, on the worker (or a pool thread),
/// and keeps [`Conn::id`], never the record, to reach the connection later
/// or from another thread.
///
/// ```
/// use std::collections::HashMap;
/// use std::net::SocketAddr;
/// use mario::{Conn, ConnId};
///
/// /// What a connect handler might note about a new client.
/// fn note(conn: &mut Conn, seen: &mut HashMap<ConnId, (SocketAddr, usize)>) {
///     seen.insert(conn.id(), (conn.peer(), conn.worker_index()));
/// }
/// ```
///
/// The [crate-level example](crate) and `examples/login_server.rs` use it
/// in handlers.
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
    // ---- private: the input side (the worker's bookkeeping of the slot,
    // which operations by id touch, is in the table's `Slot`) ----
    /// A partial packet carried over between reads (nothing allocated
    /// otherwise), with the tick its first byte arrived.
    pub(crate) partial: Partial,
    /// Tick of the last byte read.
    pub(crate) last_read: u32,
    /// The length of the frame a callback is running on (`mario_frame_len`;
    /// a frame is at most `u32::MAX` bytes).
    pub(crate) frame_len: u32,
    /// The client's address, IPv4 or IPv6: the socket's peer, or the real
    /// client a PROXY protocol header named (see [`Conn::peer`]).
    pub(crate) peer: Peer,
    /// The peer's end of stream was read (nothing left to discard).
    pub(crate) peer_eof: bool,
    /// A PROXY protocol `LOCAL` header (or v1 `UNKNOWN`) opened it: the
    /// balancer's own connection, a health check, which it ends with a
    /// reset; that reset counts as `closed`, not as an error.
    pub(crate) balancer: bool,
    /// The peer reset the connection (a read or send failed with
    /// `ECONNRESET` or `EPIPE`): the socket is dead, and an abort closes it
    /// without setting `SO_LINGER` first (one system call fewer).
    pub(crate) peer_reset: bool,
}

// Every connection holds a record, so its size is most of what a held
// connection costs the server (with the table's `Slot` and a timing wheel
// entry: BENCHMARKS.md, "Memory per held connection"). Grow it deliberately.
const _: () = assert!(std::mem::size_of::<Conn>() <= 128);

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
            partial: Partial::default(),
            last_read: 0,
            frame_len: 0,
            peer: Peer::from(SocketAddr::from(([0, 0, 0, 0], 0))),
            peer_eof: false,
            balancer: false,
            peer_reset: false,
        }
    }

    /// This connection's id, valid from any thread for the connection's
    /// whole life (see [`ConnId`], which has an example).
    pub fn id(&self) -> ConnId {
        ConnId(self.bufev.load(Ordering::Relaxed) as u64)
    }

    /// The client's address, IPv4 or IPv6 (an IPv4 client of a dual-stack
    /// server is IPv4). Behind a load balancer speaking the PROXY protocol
    /// (see [`Config::proxy_protocol`](crate::Config::proxy_protocol)) it
    /// is the real client's, from the header. Example: [`Conn`].
    pub fn peer(&self) -> SocketAddr {
        self.peer.addr()
    }

    /// Sets the client's address: [`Conn::peer`], and the C `cip`/`cport`
    /// (network byte order; 0 and 0 for an IPv6 client).
    pub(crate) fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = Peer::from(peer);
        (self.cip, self.cport) = match peer {
            SocketAddr::V4(a) => (u32::from(*a.ip()).to_be(), a.port().to_be()),
            SocketAddr::V6(_) => (0, 0),
        };
    }

    /// Index of the worker thread that owns this connection,
    /// 0 .. [`Config::workers`](crate::Config::workers); the index of its
    /// numbers in [`Stats::workers`](crate::Stats::workers).
    /// Example: [`Conn`].
    pub fn worker_index(&self) -> usize {
        // SAFETY: `owner` is set when the slot is created and points into
        // the server's worker array, which outlives every connection.
        unsafe { (*self.owner).ind as usize }
    }

    /// Slot index inside the owning worker (the C `CONN.ind`),
    /// 0 .. [`Config::conns_per_worker`](crate::Config::conns_per_worker):
    /// reused by later connections, so not a name for this one (that is
    /// [`Conn::id`]).
    /// Example: [`Conn`] (which keeps the id instead).
    pub fn slot(&self) -> u32 {
        self.ind
    }

    /// Why the connection closed ([`AKG_TIMEOUT`](crate::AKG_TIMEOUT),
    /// `AKG_CLOSED`, `AKG_ERROR` or the id given to [`Conn::close`]); 0
    /// while open (the close handler sees the reason). The example of
    /// [`AKG_TIMEOUT`](crate::AKG_TIMEOUT) tells them apart.
    pub fn close_reason(&self) -> u16 {
        self.err_type
    }

    /// The socket descriptor, owned by the worker (for options such as
    /// `TCP_NODELAY` during a handler; do not read, write or close it, nor
    /// keep it: the worker closes it with the connection).
    ///
    /// ```
    /// use std::io;
    /// use mario::Conn;
    ///
    /// /// Replies go out at once (no Nagle delay), e.g. from a connect handler.
    /// fn no_delay(conn: &mut Conn) -> io::Result<()> {
    ///     let one: libc::c_int = 1;
    ///     let len = size_of_val(&one) as libc::socklen_t;
    ///     // SAFETY: the connection's socket, an `int` option read during the call.
    ///     let (fd, opt) = (conn.fd(), (&raw const one).cast());
    ///     let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, opt, len) };
    ///     if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    /// }
    /// ```
    pub fn fd(&self) -> c_int {
        self.fd
    }
}

/// A socket address in 18 bytes instead of `SocketAddr`'s 32 (every open
/// record holds one): the IPv6 form of the address (an IPv4 address as
/// `::ffff:a.b.c.d`) and the port. The scope id and flow label of an IPv6
/// peer are not kept (a scoped link-local client reads back without its
/// `%scope`). Unambiguous because an IPv4-mapped IPv6 peer is stored as the
/// IPv4 address it maps (`listen::to_canonical`), so a mapped address here
/// always stands for an IPv4 client (`sys::accept` and the PROXY header
/// path store IPv4 clients as IPv4).
#[derive(Clone, Copy)]
pub(crate) struct Peer {
    ip: [u8; 16],
    port: [u8; 2],
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        Peer {
            ip: ip.octets(),
            port: a.port().to_ne_bytes(),
        }
    }
}

impl Peer {
    /// The address.
    pub(crate) fn addr(&self) -> SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.ip);
        SocketAddr::new(ip.to_canonical(), u16::from_ne_bytes(self.port))
    }
}

/// The beginning of one incomplete frame, kept until the next read. Idle
/// connections, nearly all of them, hold nothing: 8 bytes in the record
/// rather than a `Vec`'s 24; a connection that carries bytes holds one
/// small allocation more than the bytes' own.
#[derive(Default)]
pub(crate) struct Partial(Option<Box<Carried>>);

struct Carried {
    bytes: Vec<u8>,
    /// Tick the frame's first byte arrived: a frame must complete within
    /// the read timeout (slow senders).
    started: u32,
}

impl Partial {
    /// The bytes carried (empty when none).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |c| &c.bytes)
    }
    /// Bytes carried.
    pub(crate) fn len(&self) -> usize {
        self.bytes().len()
    }
    /// Nothing carried.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
    /// Bytes allocated for the carried frame (0 when nothing is).
    #[cfg(any(test, feature = "harness"))]
    pub(crate) fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.bytes.capacity())
    }
    /// The tick the carried frame began, if one is carried.
    pub(crate) fn started(&self) -> Option<u32> {
        self.0.as_ref().filter(|c| !c.bytes.is_empty()).map(|c| c.started)
    }
    /// Restarts the carried frame's clock (after time that was not the
    /// peer's: the PROXY header, a pool handler).
    pub(crate) fn restart(&mut self, now: u32) {
        if let Some(c) = &mut self.0 {
            c.started = now;
        }
    }
    /// The buffer to carry bytes in, made when there is none (its clock
    /// starting at `now`).
    pub(crate) fn buf(&mut self, now: u32) -> &mut Vec<u8> {
        &mut self
            .0
            .get_or_insert_with(|| {
                Box::new(Carried {
                    bytes: Vec::new(),
                    started: now,
                })
            })
            .bytes
    }
    /// Takes the carried bytes, leaving nothing allocated.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.0.take().map_or_else(Vec::new, |c| c.bytes)
    }
    /// Drops what is carried.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}
