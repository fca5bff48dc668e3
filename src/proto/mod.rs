//! Wire formats: the classic MarioTCP `HEAD` frame ([`Head`]) and the
//! framings a server can choose ([`Framing`]), with the one decoder every
//! worker runs ([`Framing::scan`]). A leaf: bytes in, frames out.
//!
//! * `head`: the 8-byte `HEAD`, its checks and the ids reserved for events.
//! * `framing`: [`Framing`] (HEAD, length field, line, fixed, raw), the
//!   decoder, and carrying a partial frame between reads.
//! * `proxy`: the PROXY protocol header (v1 and v2) a load balancer sends
//!   first, with the real client's address.
//!
//! Uses: nothing of the crate.

mod framing;
mod head;
mod proxy;

pub use framing::{
    Bad, DEFAULT_LENGTH_MAX, DEFAULT_LINE_MAX, Framing, MAX_DELIMITER, MAX_FRAME_LIMIT, MAX_LINE_LIMIT,
    RESERVE_AHEAD, Scan, carry_in, carry_out,
};
pub use head::{
    AKG_CLOSED, AKG_CONNECTED, AKG_ERROR, AKG_TIMEOUT, BadHead, DEFAULT_STX, Head, MAX_PKG_LEN, SIZE_OF_HEAD,
    check_head, check_head_max,
};
pub use proxy::{BadProxy, MAX_PROXY_HEADER, PROXY_ANY, PROXY_V1, PROXY_V2, Proxied, parse as parse_proxy};
