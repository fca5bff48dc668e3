//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2) that an L4 load balancer sends before the client's bytes: the
//! real client's address. A leaf: bytes in, a [`Proxied`] out.
//!
//! [`parse`] reads the header one byte at a time and decides as soon as it
//! can: `Ok(None)` exactly while the bytes seen are the beginning of some
//! valid header of an accepted version, an error at the first byte after
//! which none can be valid (the same error whatever follows), and the
//! header once its last byte is there (whatever follows). It never reads
//! past the header, allocates nothing, and takes time linear in the bytes
//! it looks at (at most [`MAX_PROXY_HEADER`]).
//!
//! Version 1, a text line of at most 107 bytes, CRLF included, is read
//! strictly: `PROXY`, single spaces, `TCP4` with two dotted quads (no
//! leading zeros), `TCP6` with two IPv6 addresses (hexadecimal groups of 1
//! to 4 digits, one `::` at most, an embedded dotted quad last, as
//! `inet_ntop` writes them), decimal ports 0 to 65535 without leading
//! zeros, then CRLF; or `UNKNOWN`, then CRLF or a space, anything and the
//! first CRLF.
//!
//! Version 2, binary: the 12-byte signature, version 2, and
//!
//! * `LOCAL` (the balancer's own connection, e.g. a health check):
//!   [`Proxied::Local`]; the family byte and the whole block after the 16
//!   fixed bytes are ignored, as the specification says;
//! * `PROXY` over TCP (`0x11`, `0x21`): the addresses, from a block of 12
//!   or 36 bytes that must fit in the header's length;
//! * `PROXY` of the unspecified family or transport (`0x00`, `0x01`,
//!   `0x10`, ...) or of `AF_UNIX` (`0x31`, `0x32`, 216 bytes of addresses
//!   that must fit): [`Proxied::Local`], the specification's fallback;
//! * `PROXY` over UDP (`0x12`, `0x22`): refused as malformed. This is a
//!   TCP server: a header announcing a datagram flow on a stream means a
//!   misconfigured balancer, and neither reporting a UDP peer as the
//!   client of a stream nor quietly keeping the balancer's address would
//!   tell anyone;
//! * any other command, version, family or transport: malformed.
//!
//! After a block of known size, the rest of the header must be a sequence
//! of TLVs (type, 16-bit big-endian length, value) that ends exactly at
//! the header's end; their types and values are not looked at (unknown
//! types are fine, a `CRC32C` is not checked). Where the block's size is
//! not known (`LOCAL`, unspecified family or transport) the rest is
//! skipped unread.
//!
//! Addresses are reported as sent: an IPv4-mapped IPv6 address (HAProxy
//! sends one when only one side is IPv6) stays an IPv6 address.
//!
//! Uses: nothing of the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Mode bit: accept a version 1 (text) header
/// ([`Config::proxy_protocol`](crate::Config::proxy_protocol), C:
/// `MARIO_PROXY_V1`). Example: [`parse_proxy`](crate::proto::parse_proxy).
pub const PROXY_V1: u32 = 1;
/// Mode bit: accept a version 2 (binary) header (C: `MARIO_PROXY_V2`).
/// Example: [`parse_proxy`](crate::proto::parse_proxy).
pub const PROXY_V2: u32 = 2;
/// Mode: accept either version, `PROXY_V1 | PROXY_V2` (C:
/// `MARIO_PROXY_ANY`). Example: [`parse_proxy`](crate::proto::parse_proxy).
pub const PROXY_ANY: u32 = PROXY_V1 | PROXY_V2;

/// The longest header accepted, TLVs included (bytes). A version 1 line
/// is at most 107 bytes; a version 2 header is 16 bytes and the length
/// its bytes 14 and 15 give, refused as soon as that exceeds this.
/// HAProxy's longest headers (TCP over IPv6 with the SSL, authority,
/// ALPN and unique-id TLVs) stay well under it.
/// Example: [`parse_proxy`](crate::proto::parse_proxy).
pub const MAX_PROXY_HEADER: usize = 1024;

/// What a complete header says. Example:
/// [`parse_proxy`](crate::proto::parse_proxy).
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

/// Why a header was refused; a server closes the connection (counted as
/// an error). Example: [`parse_proxy`](crate::proto::parse_proxy).
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
///
/// Other bits of `mode` are ignored; with neither version bit nothing is
/// accepted (`Err(Missing)`, even for an empty `buf`). The errors:
/// [`BadProxy::Missing`] while the bytes do not begin with the v1 `PROXY`
/// or the v2 signature of an accepted version; then
/// [`BadProxy::Malformed`], or [`BadProxy::TooLong`] for a v2 length over
/// [`MAX_PROXY_HEADER`] or a v1 line that cannot end within 107 bytes.
///
/// A pure function of its arguments (any thread); a server calls it on
/// each read until it decides, then hands the bytes after the header to
/// the framing.
///
/// ```
/// use mario::proto::{BadProxy, PROXY_ANY, PROXY_V2, Proxied, parse_proxy};
///
/// let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8082\r\nhello";
/// let Ok(Some((Proxied::Addr { src, dst }, n))) = parse_proxy(input, PROXY_ANY) else { panic!() };
/// assert_eq!(src.to_string(), "192.0.2.7:51234"); // the real client
/// assert_eq!(dst.to_string(), "198.51.100.1:8082");
/// assert_eq!(&input[n..], b"hello"); // the client's own data
///
/// assert_eq!(parse_proxy(b"PROXY TCP4 192.0", PROXY_ANY), Ok(None)); // more bytes needed
/// assert_eq!(parse_proxy(b"GET / HTTP/1.1\r\n", PROXY_ANY), Err(BadProxy::Missing));
/// assert_eq!(parse_proxy(input, PROXY_V2), Err(BadProxy::Missing)); // v1 not accepted
/// ```
pub fn parse(buf: &[u8], mode: u32) -> Result<Option<(Proxied, usize)>, BadProxy> {
    let (v1, v2) = (mode & PROXY_V1 != 0, mode & PROXY_V2 != 0);
    match buf.first() {
        _ if !v1 && !v2 => Err(BadProxy::Missing),
        None => Ok(None),
        Some(b'P') if v1 => parse_v1(buf),
        Some(b'\r') if v2 => parse_v2(buf),
        Some(_) => Err(BadProxy::Missing),
    }
}

// ===========================================================================
// Version 1: one line of text
// ===========================================================================

/// The longest v1 line, CRLF included: `PROXY UNKNOWN`, two full IPv6
/// addresses and two 5-digit ports.
const V1_MAX: usize = 107;

/// The protocol names of a v1 line, with the space that follows `TCP4`
/// and `TCP6` (`UNKNOWN` is followed by a space or the CR).
const V1_PROTOS: [&[u8]; 3] = [b"TCP4 ", b"TCP6 ", b"UNKNOWN"];

/// A dotted quad (`a.b.c.d`, each 0 to 255 in decimal without leading
/// zeros), one byte at a time.
#[derive(Debug, Clone, Copy, Default)]
struct Quad {
    /// Dots seen (0 to 3).
    dots: u8,
    /// Digits of the current number.
    digits: u8,
    /// The current number.
    octet: u16,
    /// The numbers before the current one.
    high: u32,
}

impl Quad {
    /// Takes one more byte; `false`: no dotted quad begins so.
    fn push(&mut self, c: u8) -> bool {
        match c {
            b'0'..=b'9' => {
                if self.digits > 0 && self.octet == 0 {
                    return false; // a leading zero
                }
                self.octet = self.octet * 10 + u16::from(c - b'0');
                self.digits += 1;
                self.octet <= 255
            }
            b'.' if self.digits > 0 && self.dots < 3 => {
                self.high = self.high << 8 | u32::from(self.octet);
                self.dots += 1;
                self.digits = 0;
                self.octet = 0;
                true
            }
            _ => false,
        }
    }

    /// The whole quad, if the bytes so far are one.
    fn done(&self) -> Option<u32> {
        (self.dots == 3 && self.digits > 0).then_some(self.high << 8 | u32::from(self.octet))
    }

    /// The fewest bytes that make the bytes so far a whole quad.
    fn min_rest(&self) -> usize {
        usize::from(self.digits == 0) + 2 * usize::from(3 - self.dots)
    }
}

/// Where an IPv6 address being read stands.
#[derive(Debug, Clone, Copy)]
enum SixAt {
    /// Nothing read.
    Start,
    /// A leading `:` (a second must follow).
    Colon,
    /// Inside a group of `digits` hexadecimal digits worth `val`; `octet`:
    /// the group read as a decimal octet, if it can be one (the first
    /// number of an embedded dotted quad).
    Group { digits: u8, val: u16, octet: Option<u8> },
    /// A `:` after a group.
    Sep,
    /// Right after the `::`.
    Gap,
    /// In the embedded dotted quad (its first number was a group's).
    Quad(Quad),
}

/// An IPv6 address in text, one byte at a time: what `Ipv6Addr`'s
/// `FromStr` accepts (8 groups of 1 to 4 hexadecimal digits separated by
/// `:`, or fewer with one `::` standing for at least one zero group, the
/// last two groups possibly written as a dotted quad), decided as early as
/// possible.
#[derive(Debug, Clone, Copy)]
struct Six {
    /// The groups read, in order (`::` not expanded).
    groups: [u16; 8],
    /// How many.
    n: u8,
    /// The number of groups before the `::`, if one was read.
    gap: Option<u8>,
    at: SixAt,
}

/// The value of a hexadecimal digit.
fn hex(c: u8) -> Option<u16> {
    (c as char).to_digit(16).map(|d| d as u16)
}

impl Six {
    fn new() -> Six {
        Six {
            groups: [0; 8],
            n: 0,
            gap: None,
            at: SixAt::Start,
        }
    }

    /// Whether `k` more groups fit after the `n` read: 8 in all, or 7 around
    /// a `::` (which stands for at least one).
    fn room(&self, n: u8, k: u8) -> bool {
        n + k <= if self.gap.is_some() { 7 } else { 8 }
    }

    /// Takes one more byte; `false`: no IPv6 address begins so.
    fn push(&mut self, c: u8) -> bool {
        let n = self.n;
        self.at = match (self.at, c) {
            (SixAt::Quad(mut q), _) => {
                let ok = q.push(c);
                self.at = SixAt::Quad(q);
                return ok;
            }
            (SixAt::Start | SixAt::Sep | SixAt::Gap, _) if hex(c).is_some() => {
                // After a `:` there is room (checked there); after `::` there
                // may not be.
                if !self.room(n, 1) {
                    return false;
                }
                let val = hex(c).unwrap_or(0);
                SixAt::Group {
                    digits: 1,
                    val,
                    octet: c.is_ascii_digit().then_some(val as u8),
                }
            }
            (SixAt::Start, b':') => SixAt::Colon,
            (SixAt::Colon | SixAt::Sep, b':') if self.gap.is_none() => {
                // The groups so far are at most 7 (checked at the `:`).
                self.gap = Some(n);
                SixAt::Gap
            }
            (SixAt::Group { digits, val, octet }, _) if digits < 4 && hex(c).is_some() => {
                let d = hex(c).unwrap_or(0);
                // A decimal octet candidate: 1 to 3 digits, no leading zero,
                // at most 255.
                let octet = match octet {
                    Some(o) if o > 0 && c.is_ascii_digit() => u8::try_from(u16::from(o) * 10 + d).ok(),
                    _ => None,
                };
                SixAt::Group {
                    digits: digits + 1,
                    val: val << 4 | d,
                    octet,
                }
            }
            (SixAt::Group { val, .. }, b':') => {
                // Another group or the `::` must follow: room for one more.
                if !self.room(n + 1, 1) {
                    return false;
                }
                self.groups[usize::from(n)] = val;
                self.n = n + 1;
                SixAt::Sep
            }
            (SixAt::Group { octet: Some(o), .. }, b'.') => {
                // A dotted quad is two groups and ends the address: they must
                // be the last two without `::`, fit around it otherwise.
                let fits = if self.gap.is_some() {
                    n + 2 <= 7
                } else {
                    n + 2 == 8
                };
                if !fits {
                    return false;
                }
                SixAt::Quad(Quad {
                    dots: 1,
                    digits: 0,
                    octet: 0,
                    high: u32::from(o),
                })
            }
            _ => return false,
        };
        true
    }

    /// Whether the bytes so far are a whole address.
    fn complete(&self) -> bool {
        match self.at {
            SixAt::Group { .. } => self.gap.is_some() || self.n == 7,
            SixAt::Gap => true,
            SixAt::Quad(q) => q.done().is_some(),
            SixAt::Start | SixAt::Colon | SixAt::Sep => false,
        }
    }

    /// The whole address, if the bytes so far are one.
    fn done(&self) -> Option<Ipv6Addr> {
        if !self.complete() {
            return None;
        }
        let mut g = self.groups;
        let mut n = usize::from(self.n);
        match self.at {
            SixAt::Group { val, .. } => {
                g[n] = val;
                n += 1;
            }
            SixAt::Quad(q) => {
                let v = q.done()?;
                g[n] = (v >> 16) as u16;
                g[n + 1] = v as u16;
                n += 2;
            }
            _ => {}
        }
        let mut out = [0u16; 8];
        match self.gap {
            Some(k) => {
                let k = usize::from(k);
                let tail = n - k;
                out[..k].copy_from_slice(&g[..k]);
                out[8 - tail..].copy_from_slice(&g[k..n]);
            }
            None => out = g,
        }
        Some(Ipv6Addr::from(out))
    }

    /// The fewest bytes that make the bytes so far a whole address.
    fn min_rest(&self) -> usize {
        match self.at {
            SixAt::Start => 2,              // "::"
            SixAt::Colon | SixAt::Sep => 1, // ":" or a digit
            SixAt::Group { .. } | SixAt::Gap if self.complete() => 0,
            SixAt::Group { .. } | SixAt::Gap => 2, // "::"
            SixAt::Quad(q) => q.min_rest(),
        }
    }
}

/// An address of a v1 line being read.
#[derive(Debug, Clone, Copy)]
enum Text {
    Four(Quad),
    Six(Six),
}

impl Text {
    fn push(&mut self, c: u8) -> bool {
        match self {
            Text::Four(q) => q.push(c),
            Text::Six(s) => s.push(c),
        }
    }

    fn done(&self) -> Option<IpAddr> {
        match self {
            Text::Four(q) => q.done().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            Text::Six(s) => s.done().map(IpAddr::V6),
        }
    }

    fn min_rest(&self) -> usize {
        match self {
            Text::Four(q) => q.min_rest(),
            Text::Six(s) => s.min_rest(),
        }
    }

    /// The shortest address of this family (`0.0.0.0`, `::`).
    fn min_len(&self) -> usize {
        match self {
            Text::Four(_) => 7,
            Text::Six(_) => 2,
        }
    }

    /// The same family, nothing read.
    fn fresh(&self) -> Text {
        match self {
            Text::Four(_) => Text::Four(Quad::default()),
            Text::Six(_) => Text::Six(Six::new()),
        }
    }
}

/// Where a v1 line being read stands.
#[derive(Debug, Clone, Copy)]
enum Line {
    /// This many bytes of `PROXY` matched.
    Magic(u8),
    /// `PROXY`: a space follows.
    Space,
    /// This many bytes of a protocol name matched; `alive`: bit `i` set
    /// while `V1_PROTOS[i]` still matches.
    Proto { len: u8, alive: u8 },
    /// `PROXY UNKNOWN`: a space or the CR follows.
    Unknown,
    /// `PROXY UNKNOWN ` and anything up to the first CRLF; `cr`: the last
    /// byte was a CR.
    Anything { cr: bool },
    /// An address: the source's, or the destination's if `dst`.
    Addr { dst: bool, text: Text },
    /// A port: the source's, or the destination's if `dst`.
    Port { dst: bool, digits: u8, val: u32 },
    /// The CR: the LF follows.
    Cr,
}

/// A v1 line being read, and what it said so far.
struct V1 {
    at: Line,
    unknown: bool,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

impl V1 {
    fn new() -> V1 {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        V1 {
            at: Line::Magic(0),
            unknown: false,
            src: any,
            dst: any,
            sport: 0,
            dport: 0,
        }
    }

    /// Takes one more byte: `Some` once it ends the line.
    fn push(&mut self, c: u8) -> Result<Option<Proxied>, BadProxy> {
        let bad = |what| Err(BadProxy::Malformed(what));
        self.at = match self.at {
            Line::Magic(i) => {
                if b"PROXY".get(usize::from(i)) != Some(&c) {
                    return Err(BadProxy::Missing);
                }
                if i == 4 { Line::Space } else { Line::Magic(i + 1) }
            }
            Line::Space if c == b' ' => Line::Proto { len: 0, alive: 0b111 },
            Line::Space => return bad("v1: no space after PROXY"),
            Line::Proto { len, alive } => {
                let i = usize::from(len);
                let mut still = 0;
                let mut whole = None;
                for (k, name) in V1_PROTOS.iter().enumerate() {
                    if alive & 1 << k != 0 && name.get(i) == Some(&c) {
                        still |= 1 << k;
                        if name.len() == i + 1 {
                            whole = Some(k);
                        }
                    }
                }
                match whole {
                    Some(0) => Line::Addr {
                        dst: false,
                        text: Text::Four(Quad::default()),
                    },
                    Some(1) => Line::Addr {
                        dst: false,
                        text: Text::Six(Six::new()),
                    },
                    Some(_) => {
                        self.unknown = true;
                        Line::Unknown
                    }
                    None if still == 0 => return bad("v1: the protocol is not TCP4, TCP6 or UNKNOWN"),
                    None => Line::Proto {
                        len: len + 1,
                        alive: still,
                    },
                }
            }
            Line::Unknown => match c {
                b' ' => Line::Anything { cr: false },
                b'\r' => Line::Cr,
                _ => return bad("v1: the protocol is not TCP4, TCP6 or UNKNOWN"),
            },
            Line::Anything { cr: true } if c == b'\n' => return Ok(Some(Proxied::Local)),
            Line::Anything { .. } => Line::Anything { cr: c == b'\r' },
            Line::Addr { dst, mut text } => {
                let what = if dst {
                    "v1: bad destination address"
                } else {
                    "v1: bad source address"
                };
                if c != b' ' {
                    if !text.push(c) {
                        return bad(what);
                    }
                    Line::Addr { dst, text }
                } else {
                    let Some(ip) = text.done() else {
                        return bad(what);
                    };
                    if dst {
                        self.dst = ip;
                        Line::Port {
                            dst: false,
                            digits: 0,
                            val: 0,
                        }
                    } else {
                        self.src = ip;
                        Line::Addr {
                            dst: true,
                            text: text.fresh(),
                        }
                    }
                }
            }
            Line::Port { dst, digits, val } => {
                let what = if dst {
                    "v1: bad destination port"
                } else {
                    "v1: bad source port"
                };
                match c {
                    // No leading zero: a 0 is the whole number.
                    b'0'..=b'9' if digits == 0 || val > 0 => {
                        let val = val * 10 + u32::from(c - b'0');
                        if val > 0xffff {
                            return bad(what);
                        }
                        Line::Port {
                            dst,
                            digits: digits + 1,
                            val,
                        }
                    }
                    b' ' if !dst && digits > 0 => {
                        self.sport = val as u16;
                        Line::Port {
                            dst: true,
                            digits: 0,
                            val: 0,
                        }
                    }
                    b'\r' if dst && digits > 0 => {
                        self.dport = val as u16;
                        Line::Cr
                    }
                    _ => return bad(what),
                }
            }
            Line::Cr if c == b'\n' => {
                return Ok(Some(if self.unknown {
                    Proxied::Local
                } else {
                    Proxied::Addr {
                        src: SocketAddr::new(self.src, self.sport),
                        dst: SocketAddr::new(self.dst, self.dport),
                    }
                }));
            }
            Line::Cr => return bad("v1: CR without LF"),
        };
        Ok(None)
    }

    /// The fewest bytes that can still end the line (at least 1). Exact
    /// where it matters: the 107-byte limit only binds on `TCP6` lines with
    /// long addresses and on `UNKNOWN` lines; before the protocol name the
    /// line is short whatever it becomes.
    fn min_rest(&self) -> usize {
        match self.at {
            Line::Magic(_) | Line::Space | Line::Proto { .. } => 1,
            Line::Unknown => 2,
            Line::Anything { cr } => 2 - usize::from(cr),
            // The address, a space, the shortest destination, " 0 0\r\n".
            Line::Addr { dst: false, text } => text.min_rest() + 1 + text.min_len() + 6,
            Line::Addr { dst: true, text } => text.min_rest() + 6,
            // The port, then " 0\r\n" or "\r\n".
            Line::Port { dst, digits, .. } => usize::from(digits == 0) + if dst { 2 } else { 4 },
            Line::Cr => 1,
        }
    }
}

/// Version 1: reads the line one byte at a time, refusing it at the first
/// byte that cannot be part of a valid line or after which the line cannot
/// end within [`V1_MAX`] bytes.
fn parse_v1(buf: &[u8]) -> Result<Option<(Proxied, usize)>, BadProxy> {
    let mut line = V1::new();
    for (i, &c) in buf.iter().enumerate() {
        if let Some(what) = line.push(c)? {
            return Ok(Some((what, i + 1)));
        }
        if i + 1 + line.min_rest() > V1_MAX {
            return Err(BadProxy::TooLong);
        }
    }
    Ok(None)
}

// ===========================================================================
// Version 2: binary
// ===========================================================================

/// The 12 bytes a v2 header begins with.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, length.
const V2_FIXED: usize = 16;

/// What a v2 header's bytes 13 and 14 announce.
#[derive(Clone, Copy)]
enum Kind {
    Local,
    Four,
    Six,
}

/// Version 2: the signature, version and command, family and transport
/// and length are each checked once they are there, then the TLVs' headers
/// as they arrive.
fn parse_v2(buf: &[u8]) -> Result<Option<(Proxied, usize)>, BadProxy> {
    let bad = |what| Err(BadProxy::Malformed(what));
    let seen = buf.len().min(V2_SIG.len());
    if buf[..seen] != V2_SIG[..seen] {
        return Err(BadProxy::Missing);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return bad("v2: the version is not 2");
    }
    let local = match ver_cmd & 0xf {
        0 => true,
        1 => false,
        _ => return bad("v2: the command is neither LOCAL nor PROXY"),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // What the header says, and the size of its address block where it is
    // known (the TLVs follow it).
    let (kind, block) = if local {
        (Kind::Local, None)
    } else {
        match (fam >> 4, fam & 0xf) {
            (4.., _) => return bad("v2: unknown address family"),
            (_, 3..) => return bad("v2: unknown transport protocol"),
            (1 | 2, 2) => return bad("v2: UDP, on a TCP server"),
            (0, _) | (_, 0) => (Kind::Local, None),
            (1, _) => (Kind::Four, Some(12)),
            (2, _) => (Kind::Six, Some(36)),
            _ => (Kind::Local, Some(216)), // AF_UNIX
        }
    };
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(None);
    };
    let total = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if total > MAX_PROXY_HEADER {
        return Err(BadProxy::TooLong);
    }
    if let Some(block) = block {
        if V2_FIXED + block > total {
            return bad("v2: the addresses do not fit in the length");
        }
        tlvs(buf, V2_FIXED + block, total)?;
    }
    let Some(h) = buf.get(..total) else {
        return Ok(None);
    };
    let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    let what = match kind {
        Kind::Local => Proxied::Local,
        Kind::Four => {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]));
            Proxied::Addr {
                src: SocketAddr::new(ip(16), port(24)),
                dst: SocketAddr::new(ip(20), port(26)),
            }
        }
        Kind::Six => {
            let ip = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            Proxied::Addr {
                src: SocketAddr::new(ip(16), port(48)),
                dst: SocketAddr::new(ip(32), port(50)),
            }
        }
    };
    Ok(Some((what, total)))
}

/// Checks the TLVs from `at` to the header's `end` as far as `buf` holds
/// their headers: each is 3 bytes (type, big-endian length) and its value,
/// and the last ends at `end`. A TLV whose length byte so far already
/// overruns `end` is refused at once.
fn tlvs(buf: &[u8], mut at: usize, end: usize) -> Result<(), BadProxy> {
    const OVERRUN: BadProxy = BadProxy::Malformed("v2: a TLV overruns the header");
    while at < end {
        if end - at < 3 {
            return Err(OVERRUN);
        }
        let hi = match buf.get(at + 1) {
            Some(&hi) => usize::from(hi) << 8,
            None => return Ok(()),
        };
        if at + 3 + hi > end {
            return Err(OVERRUN);
        }
        let Some(&lo) = buf.get(at + 2) else {
            return Ok(());
        };
        at += 3 + (hi | usize::from(lo));
        if at > end {
            return Err(OVERRUN);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(s.parse().expect("an IPv6 address"), port, 0, 0))
    }

    fn addr(src: SocketAddr, dst: SocketAddr) -> Proxied {
        Proxied::Addr { src, dst }
    }

    /// A v2 header: signature, `ver_cmd`, `fam`, the length of `rest`, `rest`.
    fn v2(ver_cmd: u8, fam: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    /// A TLV.
    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&(value.len() as u16).to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    const TAILS: [&[u8]; 6] = [
        b"",
        b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n",
        b"\r\n",
        b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n!\x11\x00\x0c",
        b"\xff\x00",
    ];

    /// `header` is a whole header saying `want` under `mode` (and under
    /// `PROXY_ANY`): every strict prefix is pending, and whatever follows
    /// it changes nothing.
    fn accepts(header: &[u8], mode: u32, want: Proxied) {
        let show = String::from_utf8_lossy(header);
        for m in [mode, PROXY_ANY] {
            for k in 0..header.len() {
                assert_eq!(parse(&header[..k], m), Ok(None), "{show:?}: prefix of {k} bytes");
            }
            for tail in TAILS {
                let mut b = header.to_vec();
                b.extend_from_slice(tail);
                assert_eq!(
                    parse(&b, m),
                    Ok(Some((want, header.len()))),
                    "{show:?} then {tail:?}"
                );
            }
        }
        let other = PROXY_ANY & !mode;
        assert_eq!(
            parse(header, other),
            Err(BadProxy::Missing),
            "{show:?} under {other}"
        );
    }

    /// `bytes` is refused with `err` at its last byte, under `mode` and
    /// `PROXY_ANY`: every shorter prefix is pending, and whatever follows
    /// changes nothing.
    fn refuses(bytes: &[u8], mode: u32, err: BadProxy) {
        let show = String::from_utf8_lossy(bytes);
        for m in [mode, PROXY_ANY] {
            for k in 0..bytes.len() {
                assert_eq!(parse(&bytes[..k], m), Ok(None), "{show:?}: prefix of {k} bytes");
            }
            for tail in TAILS {
                let mut b = bytes.to_vec();
                b.extend_from_slice(tail);
                assert_eq!(parse(&b, m), Err(err), "{show:?} then {tail:?}");
            }
        }
    }

    #[test]
    fn v1_tcp4() {
        // The specification's example, before an HTTP request.
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        accepts(
            line,
            PROXY_V1,
            addr(v4([192, 168, 0, 1], 56324), v4([192, 168, 0, 11], 443)),
        );
        let mut with_request = line.to_vec();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
        assert_eq!(parse(&with_request, PROXY_V1).unwrap().unwrap().1, line.len());
        // The longest TCP4 line (56 bytes) and the shortest values.
        let long = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(long.len(), 56);
        accepts(long, PROXY_V1, addr(v4([255; 4], 65535), v4([255; 4], 65535)));
        accepts(
            b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
            PROXY_V1,
            addr(v4([0; 4], 0), v4([10, 0, 0, 1], 0)),
        );
    }

    #[test]
    fn v1_tcp6() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let cases = [
            (full, full),
            ("::1", "::"),
            ("2001:db8::1", "2001:DB8:0:0:0:0:0:2"),
            ("0000:0000:0000:0000:0000:0000:0000:0001", "fe80::"),
            // HAProxy writes an IPv4 client of an IPv6 listener so.
            ("::ffff:192.168.0.1", "2001:db8::11"),
            ("1:2:3:4:5:6:1.2.3.4", "1::255.255.255.255"),
            ("1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8"),
            ("1::8", "1:2:3:4:5::8"),
        ];
        for (src, dst) in cases {
            let line = format!("PROXY TCP6 {src} {dst} 56324 443\r\n");
            accepts(line.as_bytes(), PROXY_V1, addr(v6(src, 56324), v6(dst, 443)));
        }
        // The longest TCP6 line of the specification: 104 bytes.
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        accepts(line.as_bytes(), PROXY_V1, addr(v6(full, 65535), v6(full, 65535)));
    }

    #[test]
    fn v1_unknown() {
        accepts(b"PROXY UNKNOWN\r\n", PROXY_V1, Proxied::Local);
        accepts(b"PROXY UNKNOWN \r\n", PROXY_V1, Proxied::Local);
        accepts(b"PROXY UNKNOWN anything at all\r\n", PROXY_V1, Proxied::Local);
        // Anything up to the first CRLF: lone CRs and LFs, NULs, 8-bit.
        accepts(b"PROXY UNKNOWN \r\r\n", PROXY_V1, Proxied::Local);
        accepts(b"PROXY UNKNOWN \n\0\xff\r \r\n", PROXY_V1, Proxied::Local);
        // The specification's worst case is 107 bytes.
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), V1_MAX);
        accepts(line.as_bytes(), PROXY_V1, Proxied::Local);
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        line.extend_from_slice(b"\r\n");
        accepts(&line, PROXY_V1, Proxied::Local);
    }

    /// Every malformed line is refused at its first bad byte (the last
    /// byte of each case).
    #[test]
    fn v1_errors_at_the_first_bad_byte() {
        let missing: [&[u8]; 4] = [b"G", b"PROXZ", b"p", b"PROX\0"];
        for b in missing {
            refuses(b, PROXY_V1, BadProxy::Missing);
        }
        let m = BadProxy::Malformed;
        let cases: [(&str, BadProxy); 32] = [
            ("PROXY\t", m("v1: no space after PROXY")),
            ("PROXYT", m("v1: no space after PROXY")),
            ("PROXY  ", m("v1: the protocol is not TCP4, TCP6 or UNKNOWN")),
            ("PROXY t", m("v1: the protocol is not TCP4, TCP6 or UNKNOWN")),
            ("PROXY TCP5", m("v1: the protocol is not TCP4, TCP6 or UNKNOWN")),
            ("PROXY TCP4\r", m("v1: the protocol is not TCP4, TCP6 or UNKNOWN")),
            (
                "PROXY UNKNOWNX",
                m("v1: the protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "PROXY UNKNOWN\n",
                m("v1: the protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            ("PROXY UNKNOWN\rX", m("v1: CR without LF")),
            ("PROXY TCP4  ", m("v1: bad source address")),
            ("PROXY TCP4 01", m("v1: bad source address")),
            ("PROXY TCP4 256", m("v1: bad source address")),
            ("PROXY TCP4 1.2.3 ", m("v1: bad source address")),
            ("PROXY TCP4 1.2.3.4.", m("v1: bad source address")),
            ("PROXY TCP4 1..", m("v1: bad source address")),
            ("PROXY TCP4 :", m("v1: bad source address")),
            ("PROXY TCP4 1.2.3.4  ", m("v1: bad destination address")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8\r", m("v1: bad destination address")),
            ("PROXY TCP6 1.", m("v1: bad source address")),
            ("PROXY TCP6 12345", m("v1: bad source address")),
            ("PROXY TCP6 1:::", m("v1: bad source address")),
            ("PROXY TCP6 1::2::", m("v1: bad source address")),
            ("PROXY TCP6 1:2:3:4:5:6:7:8:", m("v1: bad source address")),
            ("PROXY TCP6 1:2:3:4:5:6:7::8", m("v1: bad source address")),
            ("PROXY TCP6 ::1%", m("v1: bad source address")),
            ("PROXY TCP6 :1", m("v1: bad source address")),
            ("PROXY TCP6 ::1 1.", m("v1: bad destination address")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536", m("v1: bad source port")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 01", m("v1: bad source port")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r", m("v1: bad source port")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", m("v1: bad destination port")),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", m("v1: CR without LF")),
        ];
        for (b, err) in cases {
            refuses(b.as_bytes(), PROXY_V1, err);
        }
        for b in [
            "PROXY TCP6 ::1 ::1 -",
            "PROXY TCP6 ::1 ::1 1 2 ",
            "PROXY TCP6 ::1 ::1 1  ",
        ] {
            let err = if b.ends_with('-') {
                m("v1: bad source port")
            } else {
                m("v1: bad destination port")
            };
            refuses(b.as_bytes(), PROXY_V1, err);
        }
        // Embedded dotted quads: in the last two groups only, or around
        // the `::`.
        refuses(
            b"PROXY TCP6 1:2:3:4:5:6:7:1.",
            PROXY_V1,
            m("v1: bad source address"),
        );
        refuses(
            b"PROXY TCP6 1:2:3:4:5:6::1.",
            PROXY_V1,
            m("v1: bad source address"),
        );
        refuses(b"PROXY TCP6 ::1.2.3.4:", PROXY_V1, m("v1: bad source address"));
        refuses(b"PROXY TCP6 ::1:01.", PROXY_V1, m("v1: bad source address"));
    }

    #[test]
    fn v1_too_long() {
        // An UNKNOWN line must end within 107 bytes: 105 bytes and a CR.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        assert_eq!(parse(&line, PROXY_V1), Ok(None));
        line.push(b'x');
        refuses(&line, PROXY_V1, BadProxy::TooLong);
        // A TCP6 line of addresses `Ipv6Addr` parses but longer than the
        // specification's (45 characters each) cannot end in time.
        let long = "0000:0000:0000:0000:0000:ffff:255.255.255.255";
        assert_eq!(long.parse::<Ipv6Addr>().map(|_| long.len()), Ok(45));
        let line = format!("PROXY TCP6 {long} {long} 1 1\r\n");
        assert_eq!(parse(line.as_bytes(), PROXY_V1), Err(BadProxy::TooLong));
        let first = (0..line.len())
            .find(|&k| parse(&line.as_bytes()[..k], PROXY_V1).is_err())
            .unwrap();
        // Refused at the destination's 45th character, after which even
        // " 0 0\r\n" does not fit (after its 44th, "...255.25", it did).
        assert_eq!(first, 11 + 45 + 1 + 45);
        refuses(&line.as_bytes()[..first], PROXY_V1, BadProxy::TooLong);
        // One such address is fine.
        let line = format!("PROXY TCP6 {long} ::1 65535 65535\r\n");
        accepts(line.as_bytes(), PROXY_V1, addr(v6(long, 65535), v6("::1", 65535)));
    }

    /// The v2 header HAProxy's `send-proxy-v2` sends for a TCP client
    /// over IPv4, built byte by byte as HAProxy's `make_proxy_line_v2`
    /// does: signature, version 2 | PROXY, AF_INET | STREAM, length 12,
    /// then the addresses and ports in network byte order, no TLV.
    #[test]
    fn v2_haproxy_send_proxy_v2_ipv4() {
        let mut h: Vec<u8> = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
        ];
        h.push(0x21); // PP2_VERSION | PP2_CMD_PROXY
        h.push(0x11); // PP2_FAM_INET | PP2_TRANS_STREAM
        h.extend_from_slice(&[0x00, 0x0c]); // PP2_ADDR_LEN_INET
        h.extend_from_slice(&[192, 168, 0, 1]); // src_addr
        h.extend_from_slice(&[192, 168, 0, 11]); // dst_addr
        h.extend_from_slice(&56324u16.to_be_bytes()); // src_port
        h.extend_from_slice(&443u16.to_be_bytes()); // dst_port
        assert_eq!(h.len(), 28); // PP2_HDR_LEN_INET
        accepts(
            &h,
            PROXY_V2,
            addr(v4([192, 168, 0, 1], 56324), v4([192, 168, 0, 11], 443)),
        );
    }

    /// What HAProxy sends on its own connections (health checks): LOCAL,
    /// AF_UNSPEC, length 0. Also with the CRC32C TLV some configurations add.
    #[test]
    fn v2_haproxy_local_health_check() {
        let h: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(h.len(), 16);
        accepts(h, PROXY_V2, Proxied::Local);
        accepts(
            &v2(0x20, 0x00, &tlv(0x03, &[1, 2, 3, 4])),
            PROXY_V2,
            Proxied::Local,
        );
        // LOCAL ignores the family and whatever the length covers.
        accepts(&v2(0x20, 0x11, &[0xff; 13]), PROXY_V2, Proxied::Local);
        accepts(&v2(0x20, 0xff, &[]), PROXY_V2, Proxied::Local);
    }

    #[test]
    fn v2_ipv6_and_the_fallbacks() {
        // IPv6, with an IPv4-mapped source as HAProxy sends for an IPv4
        // client of an IPv6 server: reported as sent.
        let mut block = Vec::new();
        block.extend_from_slice(&"::ffff:192.168.0.1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::11".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        let want = addr(v6("::ffff:192.168.0.1", 56324), v6("2001:db8::11", 443));
        accepts(&v2(0x21, 0x21, &block), PROXY_V2, want);
        // The unspecified family or transport, and AF_UNIX: Local.
        for fam in [0x00, 0x01, 0x02, 0x10, 0x20, 0x30] {
            accepts(&v2(0x21, fam, &[]), PROXY_V2, Proxied::Local);
            accepts(&v2(0x21, fam, &[0xff; 40]), PROXY_V2, Proxied::Local);
        }
        for fam in [0x31, 0x32] {
            accepts(&v2(0x21, fam, &[b'/'; 216]), PROXY_V2, Proxied::Local);
            let mut rest = vec![0u8; 216];
            rest.extend(tlv(0xee, b"x"));
            accepts(&v2(0x21, fam, &rest), PROXY_V2, Proxied::Local);
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut rest = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50];
        rest.extend(tlv(0x01, b"h2")); // ALPN
        rest.extend(tlv(0x02, b"example.com")); // AUTHORITY
        rest.extend(tlv(0x03, &[0xde, 0xad, 0xbe, 0xef])); // CRC32C, not checked
        rest.extend(tlv(0x04, b"")); // NOOP
        let mut ssl = vec![0x01, 0, 0, 0, 0];
        ssl.extend(tlv(0x21, b"TLSv1.3"));
        ssl.extend(tlv(0x23, b"TLS_AES_128_GCM_SHA256"));
        rest.extend(tlv(0x20, &ssl)); // SSL and its sub-TLVs
        rest.extend(tlv(0xea, &[0x01, b'v', b'p', b'c'])); // AWS, custom
        rest.extend(tlv(0xff, &[0; 300])); // unknown
        let want = addr(v4([10, 0, 0, 1], 12345), v4([10, 0, 0, 2], 80));
        accepts(&v2(0x21, 0x11, &rest), PROXY_V2, want);
        // As large as allowed.
        let mut rest = vec![0u8; 12];
        rest.extend(tlv(0x04, &vec![0; MAX_PROXY_HEADER - 16 - 12 - 3]));
        let h = v2(0x21, 0x11, &rest);
        assert_eq!(h.len(), MAX_PROXY_HEADER);
        accepts(&h, PROXY_V2, addr(v4([0; 4], 0), v4([0; 4], 0)));
    }

    #[test]
    fn v2_errors_at_the_first_bad_byte() {
        let m = BadProxy::Malformed;
        // The signature.
        for i in 0..12 {
            let mut b = V2_SIG[..=i].to_vec();
            b[i] ^= 0x40;
            refuses(&b, PROXY_V2, BadProxy::Missing);
        }
        let at = |ver_cmd: u8, fam: &[u8]| {
            let mut b = V2_SIG.to_vec();
            b.push(ver_cmd);
            b.extend_from_slice(fam);
            b
        };
        for ver in [0x01, 0x11, 0x31, 0xf1, 0x10] {
            refuses(&at(ver, &[]), PROXY_V2, m("v2: the version is not 2"));
        }
        for cmd in 2..16 {
            refuses(
                &at(0x20 | cmd, &[]),
                PROXY_V2,
                m("v2: the command is neither LOCAL nor PROXY"),
            );
        }
        for fam in [0x41, 0x40, 0xf1] {
            refuses(&at(0x21, &[fam]), PROXY_V2, m("v2: unknown address family"));
        }
        for fam in [0x03, 0x13, 0x2f] {
            refuses(&at(0x21, &[fam]), PROXY_V2, m("v2: unknown transport protocol"));
        }
        for fam in [0x12, 0x22] {
            refuses(&at(0x21, &[fam]), PROXY_V2, m("v2: UDP, on a TCP server"));
        }
        // Lengths: over the limit as soon as the length is there; too short
        // for the addresses.
        let too_long = (MAX_PROXY_HEADER - 16 + 1) as u16;
        for fam in [0x00, 0x11, 0x21] {
            refuses(
                &at(0x21, &[fam, (too_long >> 8) as u8, too_long as u8]),
                PROXY_V2,
                BadProxy::TooLong,
            );
        }
        refuses(&at(0x20, &[0x00, 0xff, 0xff]), PROXY_V2, BadProxy::TooLong);
        let short = m("v2: the addresses do not fit in the length");
        refuses(&at(0x21, &[0x11, 0, 11]), PROXY_V2, short);
        refuses(&at(0x21, &[0x21, 0, 35]), PROXY_V2, short);
        refuses(&at(0x21, &[0x31, 0, 215]), PROXY_V2, short);
        // TLVs: 1 or 2 bytes left; a length byte overrunning the header.
        let overrun = m("v2: a TLV overruns the header");
        refuses(&at(0x21, &[0x11, 0, 13]), PROXY_V2, overrun);
        refuses(&at(0x21, &[0x11, 0, 14]), PROXY_V2, overrun);
        let with = |len: u16, tlv: &[u8]| {
            let mut b = at(0x21, &[0x11, (len >> 8) as u8, len as u8]);
            b.extend_from_slice(&[0; 12]);
            b.extend_from_slice(tlv);
            b
        };
        // 255 bytes for a TLV: a length of 256 or more is refused at its
        // first byte, 254 (leaving 1) at its second.
        refuses(&with(12 + 3 + 255, &[0x04, 1]), PROXY_V2, overrun);
        refuses(&with(12 + 3 + 255, &[0x04, 0, 254]), PROXY_V2, overrun);
        for ok in [255, 252, 0] {
            assert_eq!(parse(&with(12 + 3 + 255, &[0x04, 0, ok]), PROXY_V2), Ok(None));
        }
        refuses(&with(12 + 3 + 10, &[0x04, 0, 11]), PROXY_V2, overrun);
        // After a whole TLV, 1 byte left.
        refuses(&with(12 + 3 + 1 + 1, &[0x04, 0, 1]), PROXY_V2, overrun);
    }

    #[test]
    fn modes() {
        let one = b"PROXY UNKNOWN\r\n";
        let two = v2(0x20, 0, &[]);
        for mode in [0, 4, 0xffff_fffc] {
            for b in [&b""[..], one, &two, b"x"] {
                assert_eq!(parse(b, mode), Err(BadProxy::Missing), "{b:?} under {mode}");
            }
        }
        for mode in [PROXY_V1, PROXY_V2, PROXY_ANY, PROXY_ANY | 4, u32::MAX] {
            assert_eq!(parse(b"", mode), Ok(None));
            assert_eq!(parse(b"\0", mode), Err(BadProxy::Missing));
            assert_eq!(parse(b"GET / HTTP/1.1\r\n", mode), Err(BadProxy::Missing));
        }
        assert_eq!(parse(one, PROXY_V2), Err(BadProxy::Missing));
        assert_eq!(parse(b"P", PROXY_V2), Err(BadProxy::Missing));
        assert_eq!(parse(&two, PROXY_V1), Err(BadProxy::Missing));
        assert_eq!(parse(b"\r", PROXY_V1), Err(BadProxy::Missing));
        assert_eq!(parse(one, PROXY_V1 | 8), Ok(Some((Proxied::Local, one.len()))));
        assert_eq!(parse(&two, PROXY_V2 | 8), Ok(Some((Proxied::Local, 16))));
    }

    // -- The IPv6 reader against `Ipv6Addr`'s parser ------------------------

    /// Reads `s` with [`Six`]: `None` at the first refused byte, else the
    /// state after it.
    fn six(s: &[u8]) -> Option<Six> {
        let mut x = Six::new();
        s.iter().all(|&c| x.push(c)).then_some(x)
    }

    /// `s` is read as `std` reads it, and each of its prefixes is accepted
    /// with no more bytes still needed than it has left.
    fn agrees(s: &[u8]) {
        let std = std::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<Ipv6Addr>().ok());
        let ours = six(s).and_then(|x| x.done());
        assert_eq!(ours, std, "{:?}", String::from_utf8_lossy(s));
        if std.is_some() {
            for k in 0..s.len() {
                let x = six(&s[..k]).unwrap_or_else(|| panic!("{:?} at {k}", String::from_utf8_lossy(s)));
                assert!(
                    x.min_rest() <= s.len() - k,
                    "{:?} at {k}",
                    String::from_utf8_lossy(s)
                );
            }
        }
    }

    /// Some string of `n` bytes of `alphabet` completes `s`.
    fn completes(s: &[u8], n: usize, alphabet: &[u8]) -> bool {
        let mut t = s.to_vec();
        t.resize(s.len() + n, 0);
        let total = alphabet.len().pow(n as u32);
        (0..total).any(|mut i| {
            for b in &mut t[s.len()..] {
                *b = alphabet[i % alphabet.len()];
                i /= alphabet.len();
            }
            std::str::from_utf8(&t).unwrap().parse::<Ipv6Addr>().is_ok()
        })
    }

    /// Every string of up to 7 bytes over a small alphabet: the reader
    /// agrees with `std`, refuses exactly the strings nothing completes,
    /// and needs exactly the fewest bytes that complete the others.
    #[test]
    fn six_agrees_with_std_on_every_short_string() {
        let alphabet = b"0f1:.9";
        let mut s = Vec::new();
        for len in 0..=7u32 {
            for mut i in 0..alphabet.len().pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                agrees(&s);
                if let Some(x) = six(&s) {
                    let r = x.min_rest();
                    if len <= 5 {
                        assert!(
                            completes(&s, r, b"0:."),
                            "{:?} in {r}",
                            String::from_utf8_lossy(&s)
                        );
                        assert!(r == 0 || !completes(&s, r - 1, alphabet));
                    }
                } else if len <= 4 {
                    // Refused: nothing short completes it.
                    for n in 0..=4 {
                        assert!(!completes(&s, n, alphabet), "{:?}", String::from_utf8_lossy(&s));
                    }
                }
            }
        }
    }

    /// Longer addresses, from random groups, separators and dotted quads.
    #[test]
    fn six_agrees_with_std_on_random_addresses() {
        let parts: [&str; 16] = [
            "0",
            "1",
            "ff",
            "ffff",
            "FFFF",
            "0000",
            "12345",
            ":",
            ":",
            "::",
            "1.2.3.4",
            "255.255.255.255",
            "256",
            "01",
            ".",
            "9",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let n = 1 + next() % 17;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(parts[(next() % 16) as usize]);
            }
            agrees(s.as_bytes());
        }
        // Around the group counts: h groups, maybe `::`, t groups, maybe a
        // dotted quad, for every h and t up to 9.
        for h in 0..=9 {
            for t in 0..=9 {
                for (gap, quad) in [(false, false), (true, false), (false, true), (true, true)] {
                    let mut s = vec!["7"; h].join(":");
                    if gap {
                        s.push_str("::");
                    } else if h > 0 && (t > 0 || quad) {
                        s.push(':');
                    }
                    s.push_str(&vec!["a"; t].join(":"));
                    if quad {
                        if t > 0 {
                            s.push(':');
                        }
                        s.push_str("1.2.3.4");
                    }
                    agrees(s.as_bytes());
                }
            }
        }
        // Every address's own forms.
        for _ in 0..20_000 {
            let mut g = [0u16; 8];
            for x in &mut g {
                let r = next();
                *x = if r % 3 == 0 {
                    0
                } else {
                    (r >> 8) as u16 >> (r % 16)
                };
            }
            let ip = Ipv6Addr::from(g);
            let full: Vec<String> = g.iter().map(|x| format!("{x:04x}")).collect();
            let bare: Vec<String> = g.iter().map(|x| format!("{x:X}")).collect();
            let [a, b, c, d] = Ipv4Addr::from(u32::from(g[6]) << 16 | u32::from(g[7])).octets();
            for s in [
                ip.to_string(),
                full.join(":"),
                bare.join(":"),
                format!("{}:{a}.{b}.{c}.{d}", bare[..6].join(":")),
            ] {
                agrees(s.as_bytes());
                assert_eq!(six(s.as_bytes()).and_then(|x| x.done()), Some(ip), "{s}");
            }
        }
    }
}
