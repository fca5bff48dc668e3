//! The classic MarioTCP frame: an 8-byte packed `HEAD` in host byte order
//! (or, with the big-endian `HEAD` framing, in network byte order) followed
//! by the body. `pkglen` counts the whole packet, head included.
//!
//! Uses: nothing of the crate.

/// Size of the packed `HEAD` (`SIZE_OF_HEAD`).
pub const SIZE_OF_HEAD: usize = 8;
/// Largest accepted packet, head included (`MAX_PKG_LEN`).
pub const MAX_PKG_LEN: usize = 1500;
/// Magic used until one is registered (`DEFAULT_STX`).
pub const DEFAULT_STX: u32 = 0xffff_ffff;
/// Id passed to the close callback when the connection is first seen.
pub const AKG_CONNECTED: u16 = 0xfffc;
/// Close reason: read or write timeout.
pub const AKG_TIMEOUT: u16 = 0xfffd;
/// Close reason: peer closed, bad input, or server stop.
pub const AKG_CLOSED: u16 = 0xfffe;
/// Close reason: socket error, output over its cap, or a handler that
/// failed without closing.
pub const AKG_ERROR: u16 = 0xffff;

/// A decoded packet head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Magic; must equal the server's registered stx.
    pub stx: u32,
    /// Whole packet length, head included.
    pub pkglen: u16,
    /// Packet id selecting the handler.
    pub akg_id: u16,
}

impl Head {
    /// Decodes the first 8 bytes of `b` (host byte order, as the C struct).
    /// Returns `None` if fewer than 8 bytes are given.
    pub fn parse(b: &[u8]) -> Option<Head> {
        Head::parse_in(b, false)
    }

    /// Decodes the first 8 bytes of `b`, in network byte order if
    /// `big_endian`, else in host byte order. `None` if fewer than 8 bytes
    /// are given.
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
    /// order).
    pub fn to_bytes(self) -> [u8; 8] {
        self.to_bytes_in(false)
    }

    /// Encodes this head in network byte order if `big_endian`, else in
    /// host byte order.
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
    /// refused by a server that receives it (see [`check_head`]).
    pub fn frame(stx: u32, akg_id: u16, body: &[u8]) -> Option<Vec<u8>> {
        let len = SIZE_OF_HEAD.checked_add(body.len())?;
        let pkglen = u16::try_from(len).ok()?;
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&Head { stx, pkglen, akg_id }.to_bytes());
        v.extend_from_slice(body);
        Some(v)
    }
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHead {
    /// `pkglen < 8` or over the largest packet (`MAX_PKG_LEN` by default),
    /// or the magic differs.
    Malformed,
    /// `akg_id` is one of the reserved ids `0xfffc..=0xffff`.
    ReservedId,
}

/// Checks a head against the framing rules of MarioTCP (packets of at
/// most [`MAX_PKG_LEN`] bytes).
pub fn check_head(h: &Head, stx: u32) -> Result<(), BadHead> {
    check_head_max(h, stx, MAX_PKG_LEN)
}

/// Checks a head against the framing rules of MarioTCP, with packets of
/// at most `max` bytes.
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
