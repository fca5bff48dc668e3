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

// The refusals are errors a caller may box, log or return with `?`.

impl std::fmt::Display for BadHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadHead::Malformed => "malformed HEAD: pkglen out of range or wrong stx",
            BadHead::ReservedId => "HEAD with a reserved akg_id (0xfffc..=0xffff)",
        })
    }
}

impl std::error::Error for BadHead {}

impl std::fmt::Display for BadProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadProxy::Missing => f.write_str("no PROXY protocol header (the first bytes are not one)"),
            BadProxy::Malformed(what) => write!(f, "a malformed PROXY protocol header ({what})"),
            BadProxy::TooLong => write!(f, "a PROXY protocol header over {MAX_PROXY_HEADER} bytes"),
        }
    }
}

impl std::error::Error for BadProxy {}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Head(why, h) => write!(
                f,
                "{why} (stx {:#x}, pkglen {}, akg_id {:#06x})",
                h.stx, h.pkglen, h.akg_id
            ),
            Bad::TooLong { len } => write!(f, "a frame of {len} bytes, over the framing's max_frame"),
            Bad::LineTooLong { at_least } => write!(
                f,
                "a line of at least {at_least} bytes, over the framing's max_frame"
            ),
            Bad::Negative { value } => write!(f, "a length field of {value} after adjustment"),
        }
    }
}

impl std::error::Error for Bad {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Bad::Head(why, _) => Some(why),
            _ => None,
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// Every refusal is a `std::error::Error` with a message that says why.
    #[test]
    fn refusals_are_errors() {
        let boxed: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(BadHead::ReservedId),
            Box::new(BadProxy::Malformed("bad port")),
            Box::new(Bad::TooLong { len: 70_000 }),
            Box::new(Bad::Head(
                BadHead::Malformed,
                Head {
                    stx: 1,
                    pkglen: 3,
                    akg_id: 7,
                },
            )),
        ];
        let text: Vec<String> = boxed.iter().map(|e| e.to_string()).collect();
        assert_eq!(text[0], "HEAD with a reserved akg_id (0xfffc..=0xffff)");
        assert_eq!(text[1], "a malformed PROXY protocol header (bad port)");
        assert_eq!(text[2], "a frame of 70000 bytes, over the framing's max_frame");
        assert!(
            text[3].contains("pkglen 3") && boxed[3].source().is_some(),
            "{}",
            text[3]
        );
    }
}
