//! Thin, safe wrappers over the few socket system calls the reactor makes
//! directly on raw descriptors (`accept4`, `recv`, `send` with
//! `MSG_NOSIGNAL`, `close`); the listening socket is `listen`'s.
//!
//! The reactor works on raw descriptors rather than `std` streams because a
//! C host must never receive `SIGPIPE` (every send uses `MSG_NOSIGNAL`) and
//! because the C `CONN.fd` field is the socket itself.
//!
//! Uses: nothing of the crate.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

/// Result of a non-blocking read or write.
pub(crate) enum Io {
    /// `n` bytes were transferred (0 on read means the peer closed).
    Done(usize),
    /// The socket is not ready (`EAGAIN`).
    WouldBlock,
    /// Any other error.
    Err(io::Error),
}

fn classify(ret: isize) -> Option<Io> {
    if ret >= 0 {
        return Some(Io::Done(ret as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINTR) => None,
        Some(libc::EAGAIN) => Some(Io::WouldBlock),
        _ => Some(Io::Err(e)),
    }
}

/// `recv(2)` into `buf`, retrying `EINTR`.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for
        // the duration of the call; the kernel writes at most that many.
        let ret = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if let Some(r) = classify(ret) {
            return r;
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL` (a C host keeps the default `SIGPIPE`
/// disposition), retrying `EINTR`.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> Io {
    loop {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
        let ret = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if let Some(r) = classify(ret) {
            return r;
        }
    }
}

/// Closes a descriptor we own. `EINTR` is not retried: on Linux the
/// descriptor is released even when `close` reports it.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Whether `e` says the peer reset the connection (`ECONNRESET`, or
/// `EPIPE` for a send after the reset): the socket is dead.
pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE))
}

/// Closes with a reset (`SO_LINGER` 0): used when a connection is refused
/// for lack of capacity so no `TIME_WAIT` state piles up on our side.
pub(crate) fn close_reset(fd: RawFd) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `lg` is a valid `linger` value and the size passed matches it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    close(fd);
}

/// Discards input waiting on a socket we are closing (at most `limit`
/// bytes), so that `close` does not answer unread data with a reset that
/// would destroy our last replies. Returns true when the peer's end of
/// stream (or an error) was reached: nothing more can arrive.
pub(crate) fn discard_input(fd: RawFd, limit: usize) -> bool {
    let mut buf = [0u8; 4096];
    let mut left = limit;
    while left > 0 {
        match recv(fd, &mut buf[..left.min(4096)]) {
            Io::Done(0) | Io::Err(_) => return true,
            Io::WouldBlock => return false,
            Io::Done(n) => left -= n,
        }
    }
    false
}

/// `shutdown(fd, SHUT_WR)`: sends FIN after the queued bytes.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// An accepted client: its descriptor and address (an IPv4 client of a
/// dual-stack socket comes as IPv4, not as `::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub fd: RawFd,
    pub peer: SocketAddr,
}

/// The address in `ss` (`AF_INET` or `AF_INET6`; IPv4-mapped IPv6 comes
/// back as IPv4). Another family gives `0.0.0.0:0`.
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> SocketAddr {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // which is smaller than and aligned within `sockaddr_storage`.
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            }
        }
        _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// Whether a listening socket has a connection waiting to be accepted:
/// `poll(2)` with a zero timeout. Far cheaper than an `accept4` that fails
/// with `EAGAIN`, which makes and frees a whole socket and file first.
/// True on a poll error too, so that `accept` reports it.
pub(crate) fn pending(listen_fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: listen_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`, retrying `EINTR`.
pub(crate) fn accept(listen_fd: RawFd) -> Result<Accepted, io::Error> {
    loop {
        // SAFETY: an all-zero `sockaddr_storage` is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `ss` and `len` are valid for writes and `len` holds the
        // size of `ss`.
        let fd = unsafe {
            libc::accept4(
                listen_fd,
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            return Ok(Accepted {
                fd,
                peer: sockaddr_to_std(&ss),
            });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `recv(2)` with `MSG_PEEK`: copies what is waiting without taking it.
pub(crate) fn peek(fd: RawFd, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for
        // the duration of the call; the kernel writes at most that many.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        if let Some(io) = classify(r) {
            return io;
        }
    }
}

unsafe extern "C" {
    /// The C library's `stdout` (glibc and musl export it as a variable).
    static stdout: *mut libc::FILE;
    /// The C library's `stderr`.
    static stderr: *mut libc::FILE;
}

/// `fflush(stdout); fflush(stderr)`: what the C program printed goes out
/// before the library writes to the same descriptors.
pub(crate) fn flush_stdout_stderr() {
    // SAFETY: the C library initialises `stdout` and `stderr` before any
    // code runs and never moves them; they are read, not written, and
    // `fflush` takes each stream's own lock.
    unsafe {
        libc::fflush(stdout);
        libc::fflush(stderr);
    }
}

/// A descriptor held in reserve for when the process runs out (libuv's
/// trick): on `EMFILE` it is released so pending clients can be accepted
/// and closed at once (refused, never left hanging), then taken again.
pub(crate) struct SpareFd(RawFd);

impl SpareFd {
    pub(crate) fn new() -> SpareFd {
        SpareFd(Self::open())
    }

    fn open() -> RawFd {
        // SAFETY: a NUL-terminated path; the result is checked by users.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
    }

    /// Accepts and resets every connection waiting on `listen_fd`, using
    /// the spare descriptor; returns how many were refused.
    pub(crate) fn refuse_pending(&mut self, listen_fd: RawFd) -> usize {
        if self.0 < 0 {
            self.0 = Self::open();
            return 0;
        }
        close(self.0);
        let mut n = 0;
        while let Ok(a) = accept(listen_fd) {
            close_reset(a.fd);
            n += 1;
        }
        self.0 = Self::open();
        n
    }
}

impl Drop for SpareFd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            close(self.0);
        }
    }
}
