//! How a server cuts its input into frames ([`Framing`]), and the one
//! decoder that walks the complete frames of a buffer in place
//! ([`Framing::scan`]) for every kind: the classic `HEAD` (host or network
//! byte order), a length field, a delimiter, a fixed size, or raw reads.
//!
//! A frame is never copied to be dispatched: the callback gets the buffer
//! from the frame's first byte on, and the frame's length. Only the
//! beginning of an incomplete frame is carried between reads
//! ([`carry_out`]), in a buffer sized to the whole frame when its length is
//! known.
//!
//! Uses: `super::head`.

use super::head::{BadHead, Head, MAX_PKG_LEN, SIZE_OF_HEAD, check_head_max};

/// The largest `max_frame` of the length-field and fixed-size framings,
/// in bytes: 64 MiB (a connection holds at most one frame's bytes of
/// input). [`Framing::validate`] refuses more.
/// Example: [`Framing`] (a `Fixed` size over it).
pub const MAX_FRAME_LIMIT: u32 = 64 << 20;
/// The largest `max_frame` of the line framing, in bytes: 32 KiB (a line
/// is completed in the worker's 64 KiB read buffer).
/// [`Framing::validate`] refuses more.
/// Example: [`Framing`].
pub const MAX_LINE_LIMIT: u32 = 32 << 10;
/// `max_frame` of the length-field framing when none is given (C:
/// `max_frame` 0 in `mario_framing`): 64 KiB.
/// Example: [`Framing`].
pub const DEFAULT_LENGTH_MAX: u32 = 64 << 10;
/// `max_frame` of the line framing when none is given (C: `max_frame` 0
/// in `mario_framing`): 4 KiB.
/// Example: [`Framing`].
pub const DEFAULT_LINE_MAX: u32 = 4 << 10;
/// The longest delimiter of [`Framing::Line`]: 16 bytes.
/// Example: [`Framing`].
pub const MAX_DELIMITER: usize = 16;
/// How far past the bytes received an incomplete frame's buffer may be
/// reserved: 4 KiB (a classic packet of up to 1,500 bytes is reserved
/// whole from its first bytes on).
/// Example: [`carry_out`].
pub const RESERVE_AHEAD: usize = 4 << 10;

/// How a server cuts its input into frames. The default is the classic
/// MarioTCP `HEAD` in host byte order with packets of at most 1,500 bytes.
/// [`Framing::validate`] names what is wrong with a setting; a server is
/// not built with a framing it refuses. Set it with
/// [`Config::framing`](crate::Config::framing) (C: `mario_set_framing`,
/// docs/C-API.md, "Framing"). A plain value: any thread.
///
/// ```
/// use mario::Framing;
///
/// // Text lines ending in "\n" (a "\r" before it is dropped too), 1 KiB at most.
/// let lines = Framing::Line { delimiter: b"\n".to_vec(), max_frame: 1024 };
/// assert_eq!(lines.validate(), Ok(()));
///
/// // A 4-byte big-endian length, then that many bytes.
/// let length = Framing::Length { offset: 0, size: 4, adjust: 0, big_endian: true, max_frame: 1 << 20 };
/// assert_eq!(length.frame_len(&[0, 0, 0, 3]), Some(7)); // the field's 4 bytes and 3 more
///
/// let bad = Framing::Fixed { size: 0 };
/// assert_eq!(bad.validate(), Err("frame_size is 0, must be 1..=67108864 for FIXED".to_string()));
/// assert!(Framing::default().is_head());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// An 8-byte [`Head`] (`stx`, `pkglen`, `akg_id`) then the body: packets
    /// are dispatched by id to the packet handlers. `pkglen` counts the
    /// whole packet, 8..=`max_frame` (at most 65,535); `stx` must be the
    /// server's.
    Head {
        /// The head's fields are in network byte order (else host order).
        big_endian: bool,
        /// The largest packet in bytes, head included, 8..=65,535
        /// ([`MAX_PKG_LEN`], 1,500, by default).
        max_frame: u32,
    },
    /// `offset` bytes, a length field of `size` bytes (an unsigned integer
    /// in the given byte order), then `value + adjust` bytes (netty's
    /// `lengthAdjustment`): the whole is one frame, handed to the frame
    /// handler header included. A frame over `max_frame`, or a negative
    /// `value + adjust`, closes the connection as an error.
    Length {
        /// Bytes before the length field; with `size`, at most 65,536.
        offset: u32,
        /// The length field's size: 1, 2, 4 or 8 bytes.
        size: u8,
        /// Added to the field's value to give the bytes after the field
        /// (e.g. `-4` when the value counts the field itself).
        adjust: i32,
        /// The field is in network byte order (else little-endian).
        big_endian: bool,
        /// The largest frame in bytes, header included, from `offset +
        /// size` up to [`MAX_FRAME_LIMIT`] ([`DEFAULT_LENGTH_MAX`] in C
        /// when 0).
        max_frame: u32,
    },
    /// Lines ending with `delimiter`: each line is handed to the frame
    /// handler without its delimiter (and, when the delimiter is `"\n"`,
    /// without a `"\r"` before it). A line over `max_frame` bytes closes
    /// the connection as an error.
    Line {
        /// The bytes ending a line: 1 to [`MAX_DELIMITER`] (16).
        delimiter: Vec<u8>,
        /// The longest line in bytes, delimiter excluded, 1 to
        /// [`MAX_LINE_LIMIT`] ([`DEFAULT_LINE_MAX`] in C when 0).
        max_frame: u32,
    },
    /// Frames of exactly `size` bytes (1 to [`MAX_FRAME_LIMIT`]).
    Fixed {
        /// Every frame's size in bytes.
        size: u32,
    },
    /// No framing: the frame handler gets whatever each read returned (at
    /// most 64 KiB at a time).
    Raw,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing::Head {
            big_endian: false,
            max_frame: MAX_PKG_LEN as u32,
        }
    }
}

/// Why a frame is refused ([`Scan::Bad`]); a server closes the
/// connection that sent it. Example: [`Framing::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// A bad `HEAD` (see [`BadHead`]), and the head itself.
    Head(BadHead, Head),
    /// A frame (or a complete line) of `len` bytes, over `max_frame`.
    TooLong {
        /// Its length in bytes (for a line, without the delimiter).
        len: u64,
    },
    /// A line not ended yet that can no longer end within `max_frame`: at
    /// least `at_least` bytes (what arrived so far, so it depends on the
    /// reads), whatever comes next.
    LineTooLong {
        /// The line's bytes so far that cannot be part of its delimiter.
        at_least: u64,
    },
    /// A length field whose value plus the adjustment is negative.
    Negative {
        /// The value after adjustment.
        value: i64,
    },
}

/// How [`Framing::scan`] ended (offsets are in bytes from the start of
/// the buffer it was given). Example: [`Framing::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every complete frame was dispatched; this many bytes were used and
    /// the rest (if any) is the beginning of one incomplete frame.
    Used(usize),
    /// The frame callback asked to stop: the offset just past the frame
    /// it was given (what follows is not looked at).
    Stopped(usize),
    /// A bad frame (why, and its offset): nothing from it on was
    /// dispatched.
    Bad(Bad, usize),
}

/// One cut at the start of a buffer.
enum Cut {
    /// Not a whole frame yet.
    Need,
    /// A frame of `len` bytes (`head` for `HEAD` packets), taking
    /// `consumed` bytes of input (a line's delimiter included).
    Frame {
        head: Option<Head>,
        len: usize,
        consumed: usize,
    },
    Bad(Bad),
}

/// The first occurrence of `delimiter` (1 to 16 bytes) in `hay`. Lines
/// are short, so a searcher built per call (`memmem::find`) costs more than
/// the search: look for the first byte with `memchr` and compare the rest
/// (at most 16 bytes per candidate).
fn find_delimiter(hay: &[u8], delimiter: &[u8]) -> Option<usize> {
    let (&first, more) = delimiter.split_first()?;
    if more.is_empty() {
        return memchr::memchr(first, hay);
    }
    let mut from = 0;
    while let Some(i) = memchr::memchr(first, &hay[from..]) {
        let at = from + i;
        let end = at + 1 + more.len();
        if end > hay.len() {
            return None; // a later start would not fit either
        }
        if &hay[at + 1..end] == more {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

impl Cut {
    /// A frame of `len` bytes that are all it takes (no delimiter).
    #[inline(always)]
    fn whole(len: usize) -> Cut {
        Cut::Frame {
            head: None,
            len,
            consumed: len,
        }
    }
}

/// Reads an unsigned integer of `b.len()` (1, 2, 4 or 8) bytes.
fn read_uint(b: &[u8], big_endian: bool) -> u64 {
    match (b, big_endian) {
        ([x], _) => return u64::from(*x),
        ([x, y], true) => return u64::from(u16::from_be_bytes([*x, *y])),
        ([x, y], false) => return u64::from(u16::from_le_bytes([*x, *y])),
        (&[a, b, c, d], true) => return u64::from(u32::from_be_bytes([a, b, c, d])),
        (&[a, b, c, d], false) => return u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => {}
    }
    let mut v = [0u8; 8];
    if big_endian {
        v[8 - b.len()..].copy_from_slice(b);
        u64::from_be_bytes(v)
    } else {
        v[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(v)
    }
}

impl Framing {
    /// Checks the settings; the error names the field (by its C name in
    /// `mario_framing`), its value and its range. Example: [`Framing`].
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Framing::Head { max_frame, .. } => {
                if !(SIZE_OF_HEAD as u32..=u16::MAX as u32).contains(max_frame) {
                    return Err(format!("max_frame is {max_frame}, must be 8..=65535 for HEAD"));
                }
            }
            Framing::Length {
                offset,
                size,
                max_frame,
                ..
            } => {
                if ![1, 2, 4, 8].contains(size) {
                    return Err(format!("length_size is {size}, must be 1, 2, 4 or 8"));
                }
                let header = u64::from(*offset) + u64::from(*size);
                if header > 65536 {
                    return Err(format!(
                        "length_offset is {offset}: with the length field it must be at most 65536 bytes"
                    ));
                }
                if !(header..=u64::from(MAX_FRAME_LIMIT)).contains(&u64::from(*max_frame)) {
                    return Err(format!(
                        "max_frame is {max_frame}, must be from length_offset + length_size ({header}) to {MAX_FRAME_LIMIT}"
                    ));
                }
            }
            Framing::Line { delimiter, max_frame } => {
                if delimiter.is_empty() || delimiter.len() > MAX_DELIMITER {
                    return Err(format!(
                        "delimiter is {} bytes long, must be 1..={MAX_DELIMITER}",
                        delimiter.len()
                    ));
                }
                if !(1..=MAX_LINE_LIMIT).contains(max_frame) {
                    return Err(format!(
                        "max_frame is {max_frame}, must be 1..={MAX_LINE_LIMIT} for LINE"
                    ));
                }
            }
            Framing::Fixed { size } => {
                if !(1..=MAX_FRAME_LIMIT).contains(size) {
                    return Err(format!(
                        "frame_size is {size}, must be 1..={MAX_FRAME_LIMIT} for FIXED"
                    ));
                }
            }
            Framing::Raw => {}
        }
        Ok(())
    }

    /// True for the `HEAD` framings (packets dispatched by id to packet
    /// handlers; every other framing goes to the frame handler).
    /// Example: [`Framing`].
    pub fn is_head(&self) -> bool {
        matches!(self, Framing::Head { .. })
    }

    /// True for the big-endian `HEAD` framing.
    /// Example: [`Framing`].
    pub fn head_big_endian(&self) -> bool {
        matches!(self, Framing::Head { big_endian: true, .. })
    }

    /// The whole length of the frame whose first bytes are `begun`, once
    /// it is known from them (`None` for lines and raw reads, and for a bad
    /// or incomplete header). Example: [`Framing`].
    pub fn frame_len(&self, begun: &[u8]) -> Option<usize> {
        match self {
            Framing::Head { big_endian, .. } => Head::parse_in(begun, *big_endian).map(|h| h.pkglen as usize),
            Framing::Length {
                offset,
                size,
                adjust,
                big_endian,
                max_frame,
            } => length_total(
                begun,
                *offset as usize,
                *size as usize,
                *adjust,
                *big_endian,
                *max_frame,
            )
            .ok()
            .flatten(),
            Framing::Fixed { size } => Some(*size as usize),
            Framing::Line { .. } | Framing::Raw => None,
        }
    }

    /// Walks the frames at the start of `buf` in order, calling
    /// `on_frame(head, rest, len)` for each complete and valid one, where
    /// `rest` starts at that frame (the frame is `rest[..len]`; `head` is
    /// the `HEAD` of a packet). The callback returns `false` to stop. A
    /// `HEAD` is checked as soon as its 8 bytes are there, a length field
    /// as soon as it is complete. `resume`: bytes at the start of `buf`
    /// already searched for a delimiter (the carried part of a line), 0
    /// for a fresh buffer. `stx` is the magic a `HEAD` must carry (ignored
    /// by the other framings). The callback may change the frame's bytes
    /// in place. This is the worker's decoder; it allocates nothing.
    ///
    /// ```
    /// use mario::Framing;
    /// use mario::proto::{Bad, Scan};
    ///
    /// let lines = Framing::Line { delimiter: b"\n".to_vec(), max_frame: 8 };
    /// let mut got = Vec::new();
    /// let mut buf = *b"hello\r\nworld\npar";
    /// let end = lines.scan(&mut buf, 0, 0, |_head, rest, len| {
    ///     got.push(String::from_utf8(rest[..len].to_vec()).unwrap());
    ///     true // go on
    /// });
    /// assert_eq!(got, ["hello", "world"]);
    /// assert_eq!(end, Scan::Used(13)); // "par" begins the next line
    ///
    /// let mut long = *b"ok\nmuch too long\n";
    /// let end = lines.scan(&mut long, 0, 0, |_, _, _| true);
    /// assert_eq!(end, Scan::Bad(Bad::TooLong { len: 13 }, 3));
    /// ```
    ///
    /// [`carry_out`] has a stream cut across two reads.
    pub fn scan(
        &self,
        buf: &mut [u8],
        stx: u32,
        resume: usize,
        on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
    ) -> Scan {
        // The kind is matched once; each kind's loop is compiled on its own
        // (the classic HEAD's is as tight as a decoder of HEAD alone).
        match self {
            Framing::Head {
                big_endian: false,
                max_frame,
            } => walk_head::<false>(buf, stx, *max_frame as usize, on_frame),
            Framing::Head {
                big_endian: true,
                max_frame,
            } => walk_head::<true>(buf, stx, *max_frame as usize, on_frame),
            Framing::Length {
                offset,
                size,
                adjust,
                big_endian,
                max_frame,
            } => walk(buf, resume, on_frame, |rest, _| {
                cut_length(
                    rest,
                    *offset as usize,
                    *size as usize,
                    *adjust,
                    *big_endian,
                    *max_frame,
                )
            }),
            Framing::Line { delimiter, max_frame } => walk(buf, resume, on_frame, |rest, resume| {
                cut_line(rest, resume, delimiter, *max_frame as usize)
            }),
            Framing::Fixed { size } => walk(buf, resume, on_frame, |rest, _| {
                let size = *size as usize;
                if rest.len() < size {
                    Cut::Need
                } else {
                    Cut::whole(size)
                }
            }),
            Framing::Raw => walk(buf, resume, on_frame, |rest, _| {
                if rest.is_empty() {
                    Cut::Need
                } else {
                    Cut::whole(rest.len())
                }
            }),
        }
    }
}

/// The decoding loop of [`Framing::scan`] around one kind's `cut(rest,
/// resume)`, which finds the frame at the start of `rest`.
#[inline(always)]
fn walk(
    buf: &mut [u8],
    mut resume: usize,
    mut on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
    mut cut: impl FnMut(&[u8], usize) -> Cut,
) -> Scan {
    let mut off = 0;
    loop {
        match cut(&buf[off..], resume) {
            Cut::Need => break,
            Cut::Bad(bad) => return Scan::Bad(bad, off),
            Cut::Frame { head, len, consumed } => {
                if !on_frame(head, &mut buf[off..], len) {
                    return Scan::Stopped(off + consumed);
                }
                off += consumed;
                resume = 0;
            }
        }
    }
    Scan::Used(off)
}

/// The decoding loop of the `HEAD` framings (fields in network byte order
/// if `BE`): a head is checked as soon as its 8 bytes are there. The
/// classic framing's hot loop, so written out on its own.
#[inline(always)]
fn walk_head<const BE: bool>(
    buf: &mut [u8],
    stx: u32,
    max_frame: usize,
    mut on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
) -> Scan {
    let mut off = 0;
    while let Some(h) = Head::parse_in(&buf[off..], BE) {
        if let Err(why) = check_head_max(&h, stx, max_frame) {
            return Scan::Bad(Bad::Head(why, h), off);
        }
        let len = h.pkglen as usize;
        if buf.len() - off < len {
            break;
        }
        if !on_frame(Some(h), &mut buf[off..], len) {
            return Scan::Stopped(off + len);
        }
        off += len;
    }
    Scan::Used(off)
}

/// The whole length of the length-field frame at the start of `rest`
/// (`None` while its header is incomplete), checked as soon as the field is
/// complete.
#[inline(always)]
fn length_total(
    rest: &[u8],
    offset: usize,
    size: usize,
    adjust: i32,
    big_endian: bool,
    max_frame: u32,
) -> Result<Option<usize>, Bad> {
    let header = offset + size;
    let Some(field) = rest.get(offset..header) else {
        return Ok(None);
    };
    let value = read_uint(field, big_endian);
    let body = if adjust >= 0 {
        value.saturating_add(u64::from(adjust.unsigned_abs()))
    } else {
        let minus = u64::from(adjust.unsigned_abs());
        if value < minus {
            // Both below 2^31 here: the difference fits.
            return Err(Bad::Negative {
                value: value as i64 - minus as i64,
            });
        }
        value - minus
    };
    // Saturated sums are over any max_frame (at most 64 MiB).
    let total = (header as u64).saturating_add(body);
    if total > u64::from(max_frame) {
        return Err(Bad::TooLong { len: total });
    }
    Ok(Some(total as usize))
}

/// A length-field frame at the start of `rest`.
#[inline(always)]
fn cut_length(rest: &[u8], offset: usize, size: usize, adjust: i32, big_endian: bool, max_frame: u32) -> Cut {
    match length_total(rest, offset, size, adjust, big_endian, max_frame) {
        Err(bad) => Cut::Bad(bad),
        Ok(Some(total)) if rest.len() >= total => Cut::whole(total),
        Ok(_) => Cut::Need,
    }
}

/// A line at the start of `rest`; `resume`: where its delimiter may start
/// at the earliest (bytes before were searched already).
#[inline(always)]
fn cut_line(rest: &[u8], resume: usize, delimiter: &[u8], max_frame: usize) -> Cut {
    let from = resume.saturating_sub(delimiter.len() - 1).min(rest.len());
    match find_delimiter(&rest[from..], delimiter).map(|i| from + i) {
        Some(at) => {
            let len = if delimiter == b"\n" && at > 0 && rest[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            if len > max_frame {
                return Cut::Bad(Bad::TooLong { len: len as u64 });
            }
            Cut::Frame {
                head: None,
                len,
                consumed: at + delimiter.len(),
            }
        }
        None => {
            // The line has at least the bytes before the longest tail that
            // may begin its delimiter (and a "\r" that may precede "\n"):
            // refused as soon as those are over `max_frame`.
            let mut at_least = rest.len() - partial_delimiter(rest, delimiter);
            if delimiter == b"\n" && at_least > 0 && rest[at_least - 1] == b'\r' {
                at_least -= 1;
            }
            if at_least > max_frame {
                Cut::Bad(Bad::LineTooLong {
                    at_least: at_least as u64,
                })
            } else {
                Cut::Need
            }
        }
    }
}

/// The length of the longest end of `rest` that is a proper beginning of
/// `delimiter` (0 to 15 bytes).
fn partial_delimiter(rest: &[u8], delimiter: &[u8]) -> usize {
    (1..delimiter.len())
        .rev()
        .find(|&k| rest.ends_with(&delimiter[..k]))
        .unwrap_or(0)
}

/// Puts a carried partial frame back at the start of the read buffer
/// before the next read. Returns its length in bytes: the next read goes
/// after it, and [`Framing::scan`] starts at the buffer's start. `partial`
/// is left empty (its allocation kept for [`carry_out`], which has the
/// example). Panics if `buf` is shorter than `partial`.
pub fn carry_in(partial: &mut Vec<u8>, buf: &mut [u8]) -> usize {
    let n = partial.len();
    buf[..n].copy_from_slice(partial);
    partial.clear();
    n
}

/// Keeps `rest`, the beginning of one incomplete frame, until the next
/// read, in an allocation sized to that frame when `framing` knows its
/// length and it is small (a classic packet: no reallocation as it
/// completes), else sized to what arrived ([`RESERVE_AHEAD`] more at most:
/// what a connection holds follows what its peer sent, never only what
/// it announced); with nothing to keep, the allocation is released (an
/// idle connection holds no buffer). `partial` must be empty (as
/// [`carry_in`] leaves it).
///
/// A stream cut across two reads, as a worker decodes it:
///
/// ```
/// use mario::proto::{Scan, carry_in, carry_out};
/// use mario::{DEFAULT_STX, Framing, Head};
///
/// let framing = Framing::default();
/// let stream = [Head::frame(DEFAULT_STX, 1, b"one").unwrap(), Head::frame(DEFAULT_STX, 2, b"two").unwrap()].concat();
/// let (first, second) = stream.split_at(14); // the 2nd packet's first 3 bytes in the 1st read
///
/// let mut partial = Vec::new(); // what the connection keeps between reads
/// let mut buf = vec![0u8; 64 * 1024]; // the worker's read buffer
/// let mut ids = Vec::new();
/// for read in [first, second] {
///     let kept = carry_in(&mut partial, &mut buf);
///     buf[kept..kept + read.len()].copy_from_slice(read); // recv()
///     let filled = kept + read.len();
///     let end = framing.scan(&mut buf[..filled], DEFAULT_STX, 0, |head, _rest, _len| {
///         ids.push(head.unwrap().akg_id);
///         true
///     });
///     let Scan::Used(used) = end else { panic!("{end:?}") };
///     carry_out(&framing, &mut partial, &buf[used..filled]);
/// }
/// assert_eq!(ids, [1, 2]);
/// assert!(partial.is_empty() && partial.capacity() == 0); // nothing held while idle
/// ```
pub fn carry_out(framing: &Framing, partial: &mut Vec<u8>, rest: &[u8]) {
    debug_assert!(partial.is_empty());
    if rest.is_empty() {
        if partial.capacity() > 0 {
            *partial = Vec::new();
        }
        return;
    }
    let ahead = rest.len().saturating_mul(2).saturating_add(RESERVE_AHEAD);
    let want = framing
        .frame_len(rest)
        .unwrap_or(rest.len())
        .min(ahead)
        .max(rest.len());
    if partial.capacity() > want {
        // Sized for an earlier, longer frame: no more than this one needs.
        partial.shrink_to(want);
    }
    partial.reserve_exact(want);
    partial.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames as `(head id or None, bytes)`.
    type Frames = Vec<(Option<u16>, Vec<u8>)>;

    /// Every frame of `buf`, and the end.
    fn frames(f: &Framing, buf: &[u8]) -> (Frames, Scan) {
        let mut b = buf.to_vec();
        let mut got = Vec::new();
        let end = f.scan(&mut b, 7, 0, |h, rest, len| {
            got.push((h.map(|h| h.akg_id), rest[..len].to_vec()));
            true
        });
        (got, end)
    }

    fn length(offset: u32, size: u8, adjust: i32, big_endian: bool, max_frame: u32) -> Framing {
        Framing::Length {
            offset,
            size,
            adjust,
            big_endian,
            max_frame,
        }
    }

    #[test]
    fn head_in_either_byte_order() {
        for be in [false, true] {
            let f = Framing::Head {
                big_endian: be,
                max_frame: 1500,
            };
            let h = Head {
                stx: 7,
                pkglen: 10,
                akg_id: 0x0102,
            };
            let mut wire = h.to_bytes_in(be).to_vec();
            wire.extend_from_slice(b"ab");
            let (got, end) = frames(&f, &wire);
            assert_eq!(got, vec![(Some(0x0102), wire.clone())]);
            assert_eq!(end, Scan::Used(10));
            assert_eq!(f.frame_len(&wire[..8]), Some(10));
            // The other byte order is a bad head (wrong stx).
            let other = Framing::Head {
                big_endian: !be,
                max_frame: 1500,
            };
            assert!(matches!(
                frames(&other, &wire).1,
                Scan::Bad(Bad::Head(BadHead::Malformed, _), 0)
            ));
        }
    }

    #[test]
    fn length_fields_of_every_size_order_offset_and_adjustment() {
        // offset 2, 2-byte big-endian length counting the whole frame
        // (adjust -4: the value includes the 4 header bytes).
        let f = length(2, 2, -4, true, 100);
        let frame = [0xaa, 0xbb, 0x00, 0x07, 1, 2, 3];
        let (got, end) = frames(&f, &[&frame[..], &frame[..]].concat());
        assert_eq!(got, vec![(None, frame.to_vec()), (None, frame.to_vec())]);
        assert_eq!(end, Scan::Used(14));
        // 1, 4, 8 bytes, little-endian, value = body length.
        for size in [1u8, 4, 8] {
            let f = length(0, size, 0, false, 1000);
            let mut w = 3u64.to_le_bytes()[..size as usize].to_vec();
            w.extend_from_slice(b"xyz");
            let (got, end) = frames(&f, &w);
            assert_eq!(got, vec![(None, w.clone())], "size {size}");
            assert_eq!(end, Scan::Used(w.len()));
            assert_eq!(f.frame_len(&w[..size as usize]), Some(w.len()));
        }
        // Incomplete: nothing, and the frame's length is known.
        let f = length(0, 2, 0, true, 100);
        assert_eq!(frames(&f, &[0, 5, 1, 2]), (vec![], Scan::Used(0)));
        assert_eq!(f.frame_len(&[0, 5]), Some(7));
        assert_eq!(f.frame_len(&[0]), None);
        // Over max_frame, and negative after adjustment.
        assert_eq!(frames(&f, &[0, 99]).1, Scan::Bad(Bad::TooLong { len: 101 }, 0));
        let f = length(0, 1, -5, false, 100);
        assert_eq!(frames(&f, &[3]).1, Scan::Bad(Bad::Negative { value: -2 }, 0));
        // An 8-byte field near u64::MAX never overflows.
        let f = length(0, 8, i32::MAX, true, 100);
        assert!(matches!(
            frames(&f, &[0xff; 8]).1,
            Scan::Bad(Bad::TooLong { .. }, 0)
        ));
    }

    #[test]
    fn lines_with_default_and_custom_delimiters() {
        let f = Framing::Line {
            delimiter: b"\n".to_vec(),
            max_frame: 5,
        };
        let (got, end) = frames(&f, b"ab\ncd\r\n\nxy");
        assert_eq!(
            got,
            vec![
                (None, b"ab".to_vec()),
                (None, b"cd".to_vec()),
                (None, b"".to_vec())
            ]
        );
        assert_eq!(end, Scan::Used(8));
        // The longest line is max_frame bytes; one more is refused, with or
        // without its delimiter yet.
        assert_eq!(frames(&f, b"12345\n").0.len(), 1);
        assert_eq!(frames(&f, b"12345\r\n").0, vec![(None, b"12345".to_vec())]);
        assert_eq!(frames(&f, b"123456\n").1, Scan::Bad(Bad::TooLong { len: 6 }, 0));
        assert_eq!(frames(&f, b"12345\r").1, Scan::Used(0));
        // Refused as soon as it cannot end in time (what may begin the
        // delimiter does not count, the rest does, also where the delimiter
        // overlaps itself); kept while it still can.
        let line = |d: &[u8], max| Framing::Line {
            delimiter: d.to_vec(),
            max_frame: max,
        };
        // (delimiter, max_frame, input, refused with at_least)
        type Case = (&'static [u8], u32, &'static [u8], Option<u64>);
        let cases: [Case; 8] = [
            (b"\n", 5, b"123456", Some(6)),
            (b"\n", 5, b"12345\rx", Some(7)), // a "\r" not before "\n"
            (b"\r\n\r\n", 4, b"abcd\r\n\r", None),
            (b"\r\n\r\n", 4, b"abcde", Some(5)),
            (b"\r\n\r\n", 4, b"abcd\r\n\rX", Some(8)),
            (b"\r\n\r\n", 4, b"abc\r\n\r\r\n", Some(6)),
            (b"aab", 2, b"xxaa", None),
            (b"aab", 2, b"xxaaa", Some(3)),
        ];
        for (d, max, input, refused) in cases {
            let want = match refused {
                Some(at_least) => Scan::Bad(Bad::LineTooLong { at_least }, 0),
                None => Scan::Used(0),
            };
            assert_eq!(frames(&line(d, max), input).1, want, "{input:?}");
        }
        let f = line(b"aab", 2);
        assert_eq!(frames(&f, b"xaaab").0, vec![(None, b"xa".to_vec())]);
        let f = Framing::Line {
            delimiter: b"\r\n\r\n".to_vec(),
            max_frame: 100,
        };
        let (got, _) = frames(&f, b"GET /\r\nHost: x\r\n\r\nnext");
        assert_eq!(got, vec![(None, b"GET /\r\nHost: x".to_vec())]);
        // A delimiter split by the resume point is still found.
        let mut b = b"abc\r\n\r\n".to_vec();
        let mut n = 0;
        f.scan(&mut b, 0, 5, |_, _, _| {
            n += 1;
            true
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn fixed_and_raw() {
        let f = Framing::Fixed { size: 3 };
        let (got, end) = frames(&f, b"abcdefg");
        assert_eq!(got, vec![(None, b"abc".to_vec()), (None, b"def".to_vec())]);
        assert_eq!(end, Scan::Used(6));
        let (got, end) = frames(&Framing::Raw, b"anything");
        assert_eq!(got, vec![(None, b"anything".to_vec())]);
        assert_eq!(end, Scan::Used(8));
        assert_eq!(frames(&Framing::Raw, b"").1, Scan::Used(0));
    }

    /// The worked examples of docs/C-API.md ("Framing") and the README,
    /// byte for byte.
    #[test]
    fn the_worked_examples_of_the_docs() {
        let hex = |s: &str| -> Vec<u8> { s.split(' ').map(|b| u8::from_str_radix(b, 16).unwrap()).collect() };
        // HEAD, big-endian, stx 0x8eb69af7.
        let f = Framing::Head {
            big_endian: true,
            max_frame: 1500,
        };
        let mut b = hex("8e b6 9a f7 00 0b 61 01 68 69 21");
        let mut got = Vec::new();
        let end = f.scan(&mut b, 0x8eb6_9af7, 0, |h, rest, len| {
            got.push((h.map(|h| (h.pkglen, h.akg_id)), rest[..len].to_vec()));
            true
        });
        assert_eq!(end, Scan::Used(11));
        assert_eq!(
            got,
            vec![(Some((11, 0x6101)), hex("8e b6 9a f7 00 0b 61 01 68 69 21"))]
        );
        // LENGTH: 2 bytes, big-endian, counting the bytes after it.
        let (got, end) = frames(&length(0, 2, 0, true, 65536), &hex("00 03 61 62 63 00 00"));
        assert_eq!(got, vec![(None, hex("00 03 61 62 63")), (None, hex("00 00"))]);
        assert_eq!(end, Scan::Used(7));
        // LENGTH: offset 2, 4 bytes little-endian counting the whole frame.
        let f = length(2, 4, -6, false, 65536);
        let (got, _) = frames(&f, &hex("01 07 0a 00 00 00 ff ee dd cc"));
        assert_eq!(got, vec![(None, hex("01 07 0a 00 00 00 ff ee dd cc"))]);
        let (_, end) = frames(&f, &hex("01 07 05 00 00 00 ff ee dd cc"));
        assert_eq!(end, Scan::Bad(Bad::Negative { value: -1 }, 0));
        // LINE: "\n" (a "\r" before it dropped), max 512.
        let f = Framing::Line {
            delimiter: b"\n".to_vec(),
            max_frame: 512,
        };
        let (got, _) = frames(&f, b"hi\r\n\nyo\n");
        assert_eq!(
            got,
            vec![(None, b"hi".to_vec()), (None, vec![]), (None, b"yo".to_vec())]
        );
        let long = [&[b'x'; 513][..], b"\n"].concat();
        assert!(matches!(
            frames(&f, &long).1,
            Scan::Bad(Bad::TooLong { len: 513 }, 0)
        ));
        // LINE: "\r\n\r\n".
        let f = Framing::Line {
            delimiter: b"\r\n\r\n".to_vec(),
            max_frame: 4096,
        };
        let (got, _) = frames(&f, &hex("61 0d 0a 62 0d 0a 0d 0a"));
        assert_eq!(got, vec![(None, b"a\r\nb".to_vec())]);
        // FIXED 4.
        let (got, end) = frames(&Framing::Fixed { size: 4 }, &hex("01 02 03 04 05 06"));
        assert_eq!(got, vec![(None, hex("01 02 03 04"))]);
        assert_eq!(end, Scan::Used(4));
    }

    #[test]
    fn settings_are_checked_and_errors_name_the_field() {
        for (f, field) in [
            (length(0, 3, 0, false, 100), "length_size"),
            (length(70000, 2, 0, false, 100_000), "length_offset"),
            (length(4, 4, 0, false, 5), "max_frame"),
            (length(0, 4, 0, false, MAX_FRAME_LIMIT + 1), "max_frame"),
            (Framing::Fixed { size: 0 }, "frame_size"),
            (
                Framing::Line {
                    delimiter: vec![],
                    max_frame: 10,
                },
                "delimiter",
            ),
            (
                Framing::Line {
                    delimiter: b"\n".to_vec(),
                    max_frame: MAX_LINE_LIMIT + 1,
                },
                "max_frame",
            ),
            (
                Framing::Head {
                    big_endian: false,
                    max_frame: 7,
                },
                "max_frame",
            ),
        ] {
            let e = f.validate().expect_err(field);
            assert!(e.starts_with(field), "{f:?}: {e}");
        }
        assert!(Framing::default().validate().is_ok());
        assert!(length(0, 8, -8, true, MAX_FRAME_LIMIT).validate().is_ok());
    }
}
