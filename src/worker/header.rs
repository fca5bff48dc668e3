//! The PROXY protocol header at the start of a connection (see
//! `Config::proxy_protocol`): read before any framing, it replaces the
//! connection's address with the real client's; then the connection is
//! announced to the application (the connect callback).
//!
//! The header is read with `MSG_PEEK` and taken off the socket only once
//! complete, exactly its length: the client's first bytes stay in the
//! kernel for the ordinary read that follows, so the framing path never
//! sees the header and nothing has to be carried between the two. A
//! balancer sends the header in one segment, so this costs one more
//! `recv` per connection; a header in pieces is peeked again at each new
//! piece (edge-triggered readiness reports every arrival).
//!
//! Uses: `super::ctx`, conn, proto, sys, stats.

use std::net::SocketAddr;

use super::ctx::Ctx;
use crate::conn::record::Conn;
use crate::proto::{AKG_ERROR, MAX_PROXY_HEADER, Proxied, parse_proxy};
use crate::stats;
use crate::sys::{self, Io};

/// Where reading the header left the connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// The header was read and the connection announced; its data may
    /// follow (read it now).
    Done,
    /// More of the header is to come (the next readiness event brings it).
    Waiting,
    /// The connection was dropped (bad, missing or partial header), or
    /// closed by the connect callback.
    Closed,
}

/// Reads the PROXY protocol header of the connection at `p` (waiting for
/// it). `hup`: the event also reported the peer's end of stream, so an
/// incomplete header will stay incomplete.
pub(super) fn read(ctx: &Ctx, p: *mut Conn, hup: bool) -> Header {
    // SAFETY: live slab pointer; no callback runs on it yet.
    let (fd, slot, from) = unsafe { ((*p).fd, (*p).ind, (*p).peer.addr()) };
    let mut buf = [0u8; MAX_PROXY_HEADER];
    let got = match sys::peek(fd, &mut buf) {
        Io::WouldBlock => return Header::Waiting,
        Io::Err(e) => {
            log::warn!("connection from {from}: {e} before its PROXY protocol header: closing");
            ctx.drop_unannounced(p, AKG_ERROR);
            return Header::Closed;
        }
        Io::Done(0) => {
            log::warn!("connection from {from}: closed without a PROXY protocol header");
            ctx.drop_unannounced(p, AKG_ERROR);
            return Header::Closed;
        }
        Io::Done(n) => n,
    };
    let (what, len) = match parse_proxy(&buf[..got], ctx.proxy) {
        Ok(Some(h)) => h,
        Ok(None) if !hup => return Header::Waiting,
        Ok(None) => {
            log::warn!("connection from {from}: closed after {got} bytes of a PROXY protocol header");
            ctx.drop_unannounced(p, AKG_ERROR);
            return Header::Closed;
        }
        Err(e) => {
            log::warn!("connection from {from}: {e}: closing");
            ctx.drop_unannounced(p, AKG_ERROR);
            return Header::Closed;
        }
    };
    // Take exactly the header off the socket; the rest is the client's.
    match sys::recv(fd, &mut buf[..len]) {
        Io::Done(n) if n == len => {}
        other => {
            let why = match other {
                Io::Err(e) => e.to_string(),
                _ => "the peeked bytes were not there".into(),
            };
            log::warn!("connection from {from}: reading its PROXY protocol header: {why}: closing");
            ctx.drop_unannounced(p, AKG_ERROR);
            return Header::Closed;
        }
    }
    stats::add(&ctx.mailbox.stats.bytes_in, len as u64);
    match what {
        // SAFETY: live slab pointer, no other reference held.
        // An IPv4 client comes as IPv4, as from a dual-stack socket (a
        // balancer sends `::ffff:a.b.c.d` when one side is IPv6).
        Proxied::Addr { src, .. } => unsafe {
            (*p).set_peer(SocketAddr::new(src.ip().to_canonical(), src.port()))
        },
        // SAFETY: as above.
        Proxied::Local => unsafe { (*p).balancer = true },
    }
    // The read timeout counts from now.
    let now = ctx.now.get();
    // SAFETY: as above.
    unsafe {
        (*p).last_read = now;
        (*p).partial.restart(now);
    }
    ctx.table.with_slot(slot, |s| s.header_due = 0);
    if let Some(due) = ctx.table.deadline(slot, ctx.read_timeout, ctx.write_timeout) {
        ctx.table.file_timer(slot, due);
    }
    ctx.connected(p);
    if ctx.is_open(slot) {
        Header::Done
    } else {
        Header::Closed
    }
}
