//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2) that an L4 load balancer sends before the client's bytes: the
//! real client's address. A leaf: bytes in, a [`Proxied`] out.
//!
//! Uses: nothing of the crate.

use std::net::SocketAddr;

/// Mode bit: accept a version 1 (text) header.
pub const PROXY_V1: u32 = 1;
/// Mode bit: accept a version 2 (binary) header.
pub const PROXY_V2: u32 = 2;
/// Mode: accept either version.
pub const PROXY_ANY: u32 = PROXY_V1 | PROXY_V2;

/// The longest header accepted, TLVs included (bytes).
pub const MAX_PROXY_HEADER: usize = 1024;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// A `LOCAL` command (the balancer's own connection, e.g. a health
    /// check), a v1 `UNKNOWN`, or a v2 `PROXY` of an unspecified or UNIX
    /// family: the connection's own address stands.
    Local,
    /// The real client (`src`) and the address it connected to (`dst`).
    Addr {
        /// The client's address.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadProxy {
    /// The bytes cannot be the start of a header of an accepted version.
    Missing,
    /// Not a valid header; the text says what is wrong.
    Malformed(&'static str),
    /// Longer than [`MAX_PROXY_HEADER`].
    TooLong,
}

/// Parses the header at the start of `buf` for `mode` ([`PROXY_V1`],
/// [`PROXY_V2`] or both). `Ok(None)`: `buf` is a valid start, more bytes
/// are needed. `Ok(Some((what, n)))`: the header is the first `n` bytes.
pub fn parse(buf: &[u8], mode: u32) -> Result<Option<(Proxied, usize)>, BadProxy> {
    let _ = (buf, mode);
    todo!()
}
