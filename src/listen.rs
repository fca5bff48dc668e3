//! The listening socket: bound where the server is told (an IPv4 or IPv6
//! address, or every address through one dual-stack IPv6 socket), with its
//! backlog and optional `SO_REUSEPORT`, or taken over from systemd (socket
//! activation) when the process was started that way.
//!
//! Socket creation and address conversion go through `socket2`; the hot
//! path (`accept4`, `recv`, `send`) stays in `sys` on raw descriptors.
//!
//! Uses: sys (in tests: accepting).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The address; `None`: every address, through a dual-stack `[::]`
    /// socket where the system has IPv6, else `0.0.0.0`.
    pub addr: Option<IpAddr>,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// `listen(2)`'s backlog.
    pub backlog: i32,
    /// `SO_REUSEPORT`: other sockets (of this or other processes of the
    /// same user) may listen on the same address and port; the kernel
    /// spreads new connections across them.
    pub reuseport: bool,
}

/// A listening socket ready for `accept4`: non-blocking, close-on-exec.
#[derive(Debug)]
pub(crate) struct Listening {
    /// The descriptor; the caller owns it.
    pub fd: RawFd,
    /// The address it listens on (the port is the real one when 0 was
    /// asked for).
    pub local: SocketAddr,
}

/// Descriptors passed by systemd that a server of this process took:
/// never taken twice (a restarted server binds its own, since the first
/// one closed the inherited socket and the number may name another file
/// by now).
static CLAIMED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The listening socket for `spec`: one systemd passed to this process
/// (see [`inherited`]), else a new one bound as `spec` says. The error
/// names the address.
pub(crate) fn open(spec: &Spec) -> io::Result<Listening> {
    if let Some(l) = inherited(spec.port)? {
        return Ok(l);
    }
    bind(spec)
}

/// Binding or listening on an address failed: which address, and the
/// system's error ([`source`](std::error::Error::source)).
///
/// [`Server::run`](crate::Server::run) (and C's `start_server`, on stderr)
/// report it inside an [`io::Error`] of the same
/// [`kind`](io::Error::kind) as the system's error, e.g.
/// [`AddrInUse`](io::ErrorKind::AddrInUse), whose message is this one's:
/// `cannot listen on 0.0.0.0:8082: Address already in use (os error 98)`.
///
/// ```no_run
/// use mario::{ListenError, Server};
/// let server = Server::bind("0.0.0.0:8082").build()?;
/// if let Err(e) = server.run() {
///     if let Some(le) = e.get_ref().and_then(|i| i.downcast_ref::<ListenError>()) {
///         eprintln!("port {} is not ours: {}", le.addr().port(), le.os_error());
///     }
///     return Err(e);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ListenError {
    addr: SocketAddr,
    source: io::Error,
}

impl ListenError {
    /// The address the socket was to listen on (port 0 when any free port
    /// was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The system's error (`bind(2)`, `listen(2)`, `socket(2)` or a socket
    /// option).
    pub fn os_error(&self) -> &io::Error {
        &self.source
    }

    /// `e`, about `addr`, as the [`io::Error`] of `e`'s kind that carries it.
    pub(crate) fn wrap(addr: SocketAddr, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), ListenError { addr, source: e })
    }
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Binds and listens as `spec` says. An explicit `[::]` is dual-stack too
/// (`IPV6_V6ONLY` off, whatever the system's default), but does not fall
/// back to `0.0.0.0` on a system without IPv6.
pub(crate) fn bind(spec: &Spec) -> io::Result<Listening> {
    let named = ListenError::wrap;
    let (addr, dual, fallback) = match spec.addr {
        Some(ip) => (
            SocketAddr::new(ip, spec.port),
            ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            false,
        ),
        None => (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), spec.port),
            true,
            true,
        ),
    };
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) if fallback && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            // No IPv6 here: every address is every IPv4 address.
            let v4 = Spec {
                addr: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                ..*spec
            };
            return bind(&v4);
        }
        Err(e) => return Err(named(addr, e)),
    };
    let setup = || -> io::Result<SocketAddr> {
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        if spec.reuseport {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit it: no setsockopt per connection.
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(spec.backlog)?;
        socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the socket has no IP address"))
    };
    let local = setup().map_err(|e| named(addr, e))?;
    Ok(Listening {
        fd: socket.into_raw_fd(),
        local,
    })
}

/// The listening socket systemd passed for `port` (socket activation:
/// `LISTEN_PID` is this process and `LISTEN_FDS` counts the descriptors
/// from 3), or `None` when the process was not started that way. Among
/// the stream sockets that listen and no server of this process took yet,
/// the one on `port` is chosen, else the only one (its own port then
/// stands, and a line says so). The socket is made non-blocking and
/// close-on-exec. The environment is left as it is (a child process has
/// another pid, so it never takes these descriptors).
pub(crate) fn inherited(port: u16) -> io::Result<Option<Listening>> {
    let Some(count) = passed_count() else {
        return Ok(None);
    };
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let mut candidates = Vec::new();
    let mut taken = 0;
    for fd in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count) {
        if claimed.contains(&fd) {
            taken += 1;
            continue;
        }
        if let Some(local) = listening_stream(fd) {
            candidates.push((fd, local));
        }
    }
    if candidates.is_empty() && taken > 0 {
        // Every socket systemd passed was served (and closed) by an
        // earlier server of this process: this one binds its own.
        return Ok(None);
    }
    let chosen = match candidates.iter().find(|(_, a)| a.port() == port || port == 0) {
        Some(&c) => c,
        None if candidates.len() == 1 => {
            let (fd, local) = candidates[0];
            log::warn!(
                "systemd passed one listening socket, on {local} (fd {fd}): serving it rather than port {port}"
            );
            (fd, local)
        }
        None if candidates.is_empty() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "LISTEN_FDS={count} names this process, but none of descriptors 3..{} is a listening \
                     TCP socket not yet served",
                    LISTEN_FDS_START + count
                ),
            ));
        }
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "systemd passed {} listening sockets and none is on port {port}: {}",
                    candidates.len(),
                    candidates
                        .iter()
                        .map(|(fd, a)| format!("fd {fd} on {a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let (fd, local) = chosen;
    // SAFETY: `fd` is an open socket of this process (checked by
    // `listening_stream`) that nothing else owns: systemd handed it over
    // and `CLAIMED` keeps any other server from taking it. `into_raw_fd`
    // below gives ownership back without closing it.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let set = socket
        .set_nonblocking(true)
        .and_then(|()| socket.set_cloexec(true))
        .and_then(|()| socket.set_tcp_nodelay(true));
    let fd = socket.into_raw_fd();
    set.map_err(|e| io::Error::new(e.kind(), format!("the socket systemd passed (fd {fd}): {e}")))?;
    claimed.push(fd);
    log::info!("listening on {local}: the socket systemd passed (fd {fd})");
    Ok(Some(Listening { fd, local }))
}

/// `LISTEN_FDS` when `LISTEN_PID` is this process (1..=1024), else `None`.
fn passed_count() -> Option<RawFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: RawFd = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    (1..=1024).contains(&n).then_some(n)
}

/// The local address of `fd` if it is a TCP socket that listens.
fn listening_stream(fd: RawFd) -> Option<SocketAddr> {
    let int = |level, name| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes and `len` is their
        // size; a descriptor that is not a socket gives an error.
        let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
        (r == 0).then_some(v)
    };
    if int(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM
        || int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1
    {
        return None;
    }
    local_addr(fd)
}

/// `getsockname(2)` as a `SocketAddr` (IP sockets only).
pub(crate) fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: `getsockname` writes at most `len` bytes into the storage
    // socket2 provides, and sets `len`.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            if libc::getsockname(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    }
    .ok()?;
    addr.as_socket()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use std::net::TcpStream;

    fn spec(addr: Option<IpAddr>) -> Spec {
        Spec {
            addr,
            port: 0,
            backlog: 16,
            reuseport: false,
        }
    }

    fn accept_one(fd: RawFd) -> sys::Accepted {
        for _ in 0..10_000 {
            match sys::accept(fd) {
                Ok(a) => return a,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        panic!("no connection within 10 s");
    }

    /// Accepted sockets get `TCP_NODELAY` from the listener, so the worker
    /// never sets it per connection; the peer's address comes with them.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_carry_the_peer() {
        let l = bind(&spec(Some(Ipv4Addr::LOCALHOST.into()))).expect("listen");
        assert_eq!(l.local.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        let client = TcpStream::connect(l.local).expect("connect");
        let a = accept_one(l.fd);
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes and `len` is their size.
        let r = unsafe {
            libc::getsockopt(
                a.fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!((r, v), (0, 1), "accepted socket without TCP_NODELAY");
        assert_eq!(a.peer, client.local_addr().unwrap());
        sys::close(a.fd);
        sys::close(l.fd);
    }

    /// Without an address the socket is dual-stack: IPv4 clients come as
    /// IPv4 (not `::ffff:...`), IPv6 clients as IPv6 with no `cip`.
    #[test]
    fn every_address_is_one_dual_stack_socket() {
        let l = bind(&spec(None)).expect("listen");
        if !l.local.is_ipv6() {
            eprintln!("no IPv6 on this machine: bound {}", l.local);
            sys::close(l.fd);
            return;
        }
        let c4 = TcpStream::connect((Ipv4Addr::LOCALHOST, l.local.port())).expect("connect over IPv4");
        let a = accept_one(l.fd);
        assert_eq!(a.peer, c4.local_addr().unwrap());
        sys::close(a.fd);
        let c6 = TcpStream::connect((Ipv6Addr::LOCALHOST, l.local.port())).expect("connect over IPv6");
        let a = accept_one(l.fd);
        assert_eq!(a.peer, c6.local_addr().unwrap());
        sys::close(a.fd);
        sys::close(l.fd);
    }

    /// An explicit `[::]` listens dual-stack as well: IPv4 clients too.
    #[test]
    fn explicit_unspecified_ipv6_is_dual_stack() {
        let l = match bind(&spec(Some(Ipv6Addr::UNSPECIFIED.into()))) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("no IPv6 on this machine: {e}");
                return;
            }
        };
        assert!(l.local.is_ipv6());
        let c4 = TcpStream::connect((Ipv4Addr::LOCALHOST, l.local.port())).expect("connect over IPv4");
        let a = accept_one(l.fd);
        assert_eq!(a.peer, c4.local_addr().unwrap());
        sys::close(a.fd);
        sys::close(l.fd);
    }

    /// `SO_REUSEPORT` lets a second socket listen on the same port; without
    /// it the second bind fails and the error names the address.
    #[test]
    fn reuseport_shares_the_port_and_its_absence_does_not() {
        let first = bind(&Spec {
            reuseport: true,
            ..spec(Some(Ipv4Addr::LOCALHOST.into()))
        })
        .expect("listen");
        let same = Spec {
            port: first.local.port(),
            reuseport: true,
            ..spec(Some(Ipv4Addr::LOCALHOST.into()))
        };
        let second = bind(&same).expect("a second listener with SO_REUSEPORT");
        let e = bind(&Spec {
            reuseport: false,
            ..same
        })
        .expect_err("a listener without SO_REUSEPORT on a taken port");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("cannot listen on {}", first.local)),
            "{e}"
        );
        let inner = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<ListenError>())
            .expect("a ListenError inside");
        assert_eq!(inner.addr(), first.local);
        assert_eq!(inner.os_error().raw_os_error(), Some(libc::EADDRINUSE));
        let source = std::error::Error::source(inner).expect("the OS error as source");
        assert_eq!(source.to_string(), inner.os_error().to_string());
        sys::close(first.fd);
        sys::close(second.fd);
    }

    /// A process not started by systemd has nothing inherited.
    #[test]
    fn nothing_is_inherited_without_listen_pid() {
        if std::env::var_os("LISTEN_PID").is_none() {
            assert!(inherited(0).expect("no error").is_none());
        }
    }
}
