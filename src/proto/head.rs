//! The classic MarioTCP frame: an 8-byte packed `HEAD` in host byte order
//! (or, with the big-endian `HEAD` framing, in network byte order) followed
//! by the body. `pkglen` counts the whole packet, head included.
//!
//! Uses: nothing of the crate.

/// Size of the packed `HEAD` in bytes: 8 (the C macro `SIZE_OF_HEAD`).
/// See [`Head`] for an example.
pub const SIZE_OF_HEAD: usize = 8;
/// Largest packet the classic `HEAD` framing accepts by default, head
/// included: 1,500 bytes (the C macro `MAX_PKG_LEN`;
/// [`Framing::Head`](crate::Framing::Head)'s `max_frame` raises it up to
/// 65,535). See [`check_head`] for an example.
pub const MAX_PKG_LEN: usize = 1500;
/// The packet magic a server expects until one is set: `0xffff_ffff`
/// (the C macro `DEFAULT_STX`; set another with `regist_stx` in C or
/// [`Config::stx`](crate::Config::stx)). See [`Head`] for an example.
pub const DEFAULT_STX: u32 = 0xffff_ffff;
/// `0xfffc`: the id of the connected callback (C: `g_akg_connected_id`,
/// the `AKG_FUNC` slot `regist_connected_func` fills), and the id a stall
/// report names while that callback runs. Reserved: no packet may carry
/// it ([`BadHead::ReservedId`]).
/// Example: [`AKG_TIMEOUT`].
pub const AKG_CONNECTED: u16 = 0xfffc;
/// `0xfffd`, close reason: read or write timeout. Reserved as a packet id.
///
/// The four reserved ids are what a close handler's reason is compared
/// with:
///
/// ```
/// use mario::{AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT};
///
/// fn describe(reason: u16) -> String {
///     match reason {
///         AKG_TIMEOUT => "timed out".into(),
///         AKG_CLOSED => "closed (peer, bad input or stop)".into(),
///         AKG_ERROR => "error".into(),
///         // Any other value: the id the application passed to close.
///         id => format!("closed by the application ({id:#06x})"),
///     }
/// }
/// assert_eq!(describe(AKG_TIMEOUT), "timed out");
/// assert_eq!(describe(0x0a01), "closed by the application (0x0a01)");
/// ```
pub const AKG_TIMEOUT: u16 = 0xfffd;
/// `0xfffe`, close reason: the peer closed, bad input, or the server
/// stopped. Reserved as a packet id. Example: [`AKG_TIMEOUT`].
pub const AKG_CLOSED: u16 = 0xfffe;
/// `0xffff`, close reason: a socket error, output over its cap, or a
/// handler that failed without closing. Reserved as a packet id.
/// Example: [`AKG_TIMEOUT`].
pub const AKG_ERROR: u16 = 0xffff;

/// The 8-byte head of a classic MarioTCP packet, decoded: `stx` (4 bytes),
/// `pkglen` (2), `akg_id` (2), in host byte order (network order with the
/// big-endian [`Framing::Head`](crate::Framing::Head)). A plain value:
/// encoding and decoding touch no server.
///
/// ```
/// use mario::{DEFAULT_STX, Head, SIZE_OF_HEAD};
///
/// // A packet with id 0x6101 and a 3-byte body.
/// let pkt = Head::frame(DEFAULT_STX, 0x6101, b"abc").unwrap();
/// assert_eq!(pkt.len(), SIZE_OF_HEAD + 3);
///
/// let head = Head::parse(&pkt).unwrap();
/// assert_eq!(head, Head { stx: DEFAULT_STX, pkglen: 11, akg_id: 0x6101 });
/// assert_eq!(head.to_bytes(), pkt[..SIZE_OF_HEAD]);
///
/// // The same head in network byte order.
/// let be = head.to_bytes_in(true);
/// assert_eq!(be[4..6], [0, 11]);
/// assert_eq!(Head::parse_in(&be, true), Some(head));
/// assert_eq!(Head::parse(&pkt[..7]), None); // too short
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The magic; a server refuses a packet whose `stx` is not its own
    /// ([`check_head`]).
    pub stx: u32,
    /// The whole packet's length in bytes, head included: 8 (no body) up
    /// to the framing's largest packet ([`MAX_PKG_LEN`] by default).
    pub pkglen: u16,
    /// The packet id, which selects the handler; `0xfffc..=0xffff` are
    /// reserved ([`AKG_CONNECTED`] and the close reasons).
    pub akg_id: u16,
}

impl Head {
    /// Decodes the first 8 bytes of `b` (host byte order, as the C struct);
    /// later bytes are ignored. Returns `None` if fewer than 8 bytes are
    /// given. Nothing is checked: see [`check_head`]. Example: [`Head`].
    pub fn parse(b: &[u8]) -> Option<Head> {
        Head::parse_in(b, false)
    }

    /// Decodes the first 8 bytes of `b`, in network byte order if
    /// `big_endian`, else in host byte order. `None` if fewer than 8 bytes
    /// are given. Example: [`Head`].
    #[inline]
    pub fn parse_in(b: &[u8], big_endian: bool) -> Option<Head> {
        let b: &[u8; 8] = b.get(..SIZE_OF_HEAD)?.try_into().ok()?;
        let (stx, pkglen, akg_id) = ([b[0], b[1], b[2], b[3]], [b[4], b[5]], [b[6], b[7]]);
        Some(if big_endian {
            Head {
                stx: u32::from_be_bytes(stx),
                pkglen: u16::from_be_bytes(pkglen),
                akg_id: u16::from_be_bytes(akg_id),
            }
        } else {
            Head {
                stx: u32::from_ne_bytes(stx),
                pkglen: u16::from_ne_bytes(pkglen),
                akg_id: u16::from_ne_bytes(akg_id),
            }
        })
    }

    /// Encodes this head as the 8 bytes that go on the wire (host byte
    /// order). Example: [`Head`].
    pub fn to_bytes(self) -> [u8; 8] {
        self.to_bytes_in(false)
    }

    /// Encodes this head in network byte order if `big_endian`, else in
    /// host byte order. Example: [`Head`].
    pub fn to_bytes_in(self, big_endian: bool) -> [u8; 8] {
        let mut o = [0u8; 8];
        if big_endian {
            o[..4].copy_from_slice(&self.stx.to_be_bytes());
            o[4..6].copy_from_slice(&self.pkglen.to_be_bytes());
            o[6..].copy_from_slice(&self.akg_id.to_be_bytes());
        } else {
            o[..4].copy_from_slice(&self.stx.to_ne_bytes());
            o[4..6].copy_from_slice(&self.pkglen.to_ne_bytes());
            o[6..].copy_from_slice(&self.akg_id.to_ne_bytes());
        }
        o
    }

    /// Builds a whole frame: a head for `akg_id` followed by `body`;
    /// `None` if it would not fit `pkglen` (more than 65,535 bytes). It
    /// does not check `MAX_PKG_LEN`: a frame over 1,500 bytes is built, and
    /// refused by a server that receives it (see [`check_head`]). Host byte
    /// order. Example: [`Head`].
    pub fn frame(stx: u32, akg_id: u16, body: &[u8]) -> Option<Vec<u8>> {
        let len = SIZE_OF_HEAD.checked_add(body.len())?;
        let pkglen = u16::try_from(len).ok()?;
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&Head { stx, pkglen, akg_id }.to_bytes());
        v.extend_from_slice(body);
        Some(v)
    }
}

/// Why [`check_head`] refuses a head; a server closes the connection that
/// sent it (as [`AKG_CLOSED`]).
/// Example: [`check_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHead {
    /// `pkglen < 8` or over the largest packet (`MAX_PKG_LEN` by default),
    /// or the magic differs.
    Malformed,
    /// `akg_id` is one of the reserved ids `0xfffc..=0xffff`.
    ReservedId,
}

/// Checks a head against the framing rules of MarioTCP (packets of at
/// most [`MAX_PKG_LEN`] bytes), as a server does before it dispatches a
/// packet: the magic must be `stx`, the length 8..=1,500, and the id not
/// reserved.
///
/// ```
/// use mario::proto::{BadHead, check_head};
/// use mario::{AKG_ERROR, Head};
///
/// let stx = 0x8eb6_9af7;
/// let ok = Head { stx, pkglen: 8, akg_id: 0x6101 };
/// assert_eq!(check_head(&ok, stx), Ok(()));
/// assert_eq!(check_head(&ok, 0x1234), Err(BadHead::Malformed)); // another magic
/// assert_eq!(check_head(&Head { pkglen: 1501, ..ok }, stx), Err(BadHead::Malformed));
/// assert_eq!(check_head(&Head { akg_id: AKG_ERROR, ..ok }, stx), Err(BadHead::ReservedId));
/// ```
pub fn check_head(h: &Head, stx: u32) -> Result<(), BadHead> {
    check_head_max(h, stx, MAX_PKG_LEN)
}

/// Checks a head against the framing rules of MarioTCP, with packets of
/// at most `max` bytes (a server with a larger
/// [`Framing::Head`](crate::Framing::Head) `max_frame`). As
/// [`check_head`] otherwise, which has the example.
#[inline]
pub fn check_head_max(h: &Head, stx: u32, max: usize) -> Result<(), BadHead> {
    let len = h.pkglen as usize;
    if !(SIZE_OF_HEAD..=max).contains(&len) || h.stx != stx {
        return Err(BadHead::Malformed);
    }
    if h.akg_id >= AKG_CONNECTED {
        return Err(BadHead::ReservedId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_roundtrip_and_checks() {
        let h = Head {
            stx: 0x8eb69af7,
            pkglen: 10,
            akg_id: 0x6101,
        };
        assert_eq!(Head::parse(&h.to_bytes()), Some(h));
        assert_eq!(Head::parse(&[0; 7]), None);
        assert_eq!(check_head(&h, 0x8eb69af7), Ok(()));
        assert_eq!(check_head(&h, 1), Err(BadHead::Malformed));
        for bad in [0u16, 7, 1501, 0xffff] {
            let b = Head { pkglen: bad, ..h };
            assert_eq!(check_head(&b, h.stx), Err(BadHead::Malformed));
        }
        for id in 0xfffcu16..=0xffff {
            let b = Head { akg_id: id, ..h };
            assert_eq!(check_head(&b, h.stx), Err(BadHead::ReservedId));
        }
        let f = Head::frame(7, 3, b"ab").unwrap();
        assert_eq!(
            Head::parse(&f),
            Some(Head {
                stx: 7,
                pkglen: 10,
                akg_id: 3
            })
        );
        assert_eq!(Head::frame(7, 3, &[0; 65527]).map(|f| f.len()), Some(65535));
        assert_eq!(Head::frame(7, 3, &[0; 65528]), None);
    }
}
