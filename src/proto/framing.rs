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

/// The largest `max_frame` of the length-field and fixed-size framings:
/// 64 MiB (a connection holds at most one frame's bytes of input).
pub const MAX_FRAME_LIMIT: u32 = 64 << 20;
/// The largest `max_frame` of the line framing: 32 KiB (a line is
/// completed in the worker's 64 KiB read buffer).
pub const MAX_LINE_LIMIT: u32 = 32 << 10;
/// `max_frame` of the length-field framing when none is given: 64 KiB.
pub const DEFAULT_LENGTH_MAX: u32 = 64 << 10;
/// `max_frame` of the line framing when none is given: 4 KiB.
pub const DEFAULT_LINE_MAX: u32 = 4 << 10;
/// The longest delimiter: 16 bytes.
pub const MAX_DELIMITER: usize = 16;

/// How a server cuts its input into frames. The default is the classic
/// MarioTCP `HEAD` in host byte order with packets of at most 1,500 bytes.
/// [`Framing::validate`] names what is wrong with a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// An 8-byte `HEAD` (`stx`, `pkglen`, `akg_id`) then the body: packets
    /// are dispatched by id to the packet handlers. `pkglen` counts the
    /// whole packet, 8..=`max_frame` (at most 65,535); `stx` must be the
    /// server's.
    Head {
        /// The head's fields are in network byte order (else host order).
        big_endian: bool,
        /// The largest packet, head included, 8..=65,535.
        max_frame: u32,
    },
    /// `offset` bytes, a length field of `size` bytes (an unsigned integer
    /// in the given byte order), then `value + adjust` bytes (netty's
    /// `lengthAdjustment`): the whole is one frame, handed to the frame
    /// handler header included. A frame over `max_frame`, or a negative
    /// `value + adjust`, closes the connection as an error.
    Length {
        /// Bytes before the length field.
        offset: u32,
        /// The length field's size: 1, 2, 4 or 8 bytes.
        size: u8,
        /// Added to the field's value to give the bytes after the field.
        adjust: i32,
        /// The field is in network byte order (else little-endian).
        big_endian: bool,
        /// The largest frame, header included, up to [`MAX_FRAME_LIMIT`].
        max_frame: u32,
    },
    /// Lines ending with `delimiter`: each line is handed to the frame
    /// handler without its delimiter (and, when the delimiter is `"\n"`,
    /// without a `"\r"` before it). A line over `max_frame` bytes closes
    /// the connection as an error.
    Line {
        /// 1 to 16 bytes.
        delimiter: Vec<u8>,
        /// The longest line, delimiter excluded, up to [`MAX_LINE_LIMIT`].
        max_frame: u32,
    },
    /// Frames of exactly `size` bytes (1 to [`MAX_FRAME_LIMIT`]).
    Fixed {
        /// Every frame's size.
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

/// Why a frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// A bad `HEAD` (see [`BadHead`]).
    Head(BadHead, Head),
    /// A frame (or line) of `len` bytes, over `max_frame`.
    TooLong {
        /// Its length, as far as known.
        len: u64,
    },
    /// A length field whose value plus the adjustment is negative.
    Negative {
        /// The value after adjustment.
        value: i64,
    },
}

/// How [`Framing::scan`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every complete frame was dispatched; this many bytes were used and
    /// the rest (if any) is the beginning of one incomplete frame.
    Used(usize),
    /// The frame callback asked to stop.
    Stopped,
    /// A bad frame at this offset: nothing from it on was dispatched.
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

/// Reads an unsigned integer of `b.len()` (1, 2, 4 or 8) bytes.
fn read_uint(b: &[u8], big_endian: bool) -> u64 {
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
    /// Checks the settings; the error names the field and its range.
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

    /// True for the `HEAD` framings (packets dispatched by id).
    pub fn is_head(&self) -> bool {
        matches!(self, Framing::Head { .. })
    }

    /// True for the big-endian `HEAD` framing.
    pub fn head_big_endian(&self) -> bool {
        matches!(self, Framing::Head { big_endian: true, .. })
    }

    /// The whole length of the frame whose first bytes are `begun`, once
    /// it is known from them (`None` for lines and raw reads, and for a bad
    /// or incomplete header).
    pub fn frame_len(&self, begun: &[u8]) -> Option<usize> {
        match self {
            Framing::Head { big_endian, .. } => Head::parse_in(begun, *big_endian).map(|h| h.pkglen as usize),
            Framing::Length {
                offset,
                size,
                adjust,
                big_endian,
                max_frame,
            } => {
                let header = *offset as usize + *size as usize;
                let field = begun.get(*offset as usize..header)?;
                let total = header as i128 + read_uint(field, *big_endian) as i128 + *adjust as i128;
                (total >= header as i128 && total <= *max_frame as i128).then_some(total as usize)
            }
            Framing::Fixed { size } => Some(*size as usize),
            Framing::Line { .. } | Framing::Raw => None,
        }
    }

    /// The frame at the start of `rest`; `resume`: where a delimiter may
    /// start at the earliest (bytes before it were searched already).
    fn cut(&self, rest: &[u8], stx: u32, resume: usize) -> Cut {
        match self {
            Framing::Head {
                big_endian,
                max_frame,
            } => {
                let Some(h) = Head::parse_in(rest, *big_endian) else {
                    return Cut::Need;
                };
                if let Err(why) = check_head_max(&h, stx, *max_frame as usize) {
                    return Cut::Bad(Bad::Head(why, h));
                }
                let len = h.pkglen as usize;
                if rest.len() < len {
                    return Cut::Need;
                }
                Cut::Frame {
                    head: Some(h),
                    len,
                    consumed: len,
                }
            }
            Framing::Length {
                offset,
                size,
                adjust,
                big_endian,
                max_frame,
            } => {
                let header = *offset as usize + *size as usize;
                if rest.len() < header {
                    return Cut::Need;
                }
                let value = read_uint(&rest[*offset as usize..header], *big_endian);
                let body = value as i128 + *adjust as i128;
                if body < 0 {
                    return Cut::Bad(Bad::Negative { value: body as i64 });
                }
                let total = header as i128 + body;
                if total > *max_frame as i128 {
                    return Cut::Bad(Bad::TooLong {
                        len: total.min(u64::MAX as i128) as u64,
                    });
                }
                let total = total as usize;
                if rest.len() < total {
                    return Cut::Need;
                }
                Cut::Frame {
                    head: None,
                    len: total,
                    consumed: total,
                }
            }
            Framing::Line { delimiter, max_frame } => {
                let from = resume.saturating_sub(delimiter.len() - 1).min(rest.len());
                match memchr::memmem::find(&rest[from..], delimiter) {
                    Some(i) => {
                        let at = from + i;
                        let len = if delimiter == b"\n" && at > 0 && rest[at - 1] == b'\r' {
                            at - 1
                        } else {
                            at
                        };
                        if len > *max_frame as usize {
                            return Cut::Bad(Bad::TooLong { len: len as u64 });
                        }
                        Cut::Frame {
                            head: None,
                            len,
                            consumed: at + delimiter.len(),
                        }
                    }
                    // Past `max_frame` + the delimiter (and a "\r") with no
                    // delimiter: the line is too long whatever comes next.
                    None if rest.len() > *max_frame as usize + delimiter.len() => Cut::Bad(Bad::TooLong {
                        len: rest.len() as u64,
                    }),
                    None => Cut::Need,
                }
            }
            Framing::Fixed { size } => {
                let size = *size as usize;
                if rest.len() < size {
                    return Cut::Need;
                }
                Cut::Frame {
                    head: None,
                    len: size,
                    consumed: size,
                }
            }
            Framing::Raw => {
                if rest.is_empty() {
                    return Cut::Need;
                }
                Cut::Frame {
                    head: None,
                    len: rest.len(),
                    consumed: rest.len(),
                }
            }
        }
    }

    /// Walks the frames at the start of `buf` in order, calling
    /// `on_frame(head, rest, len)` for each complete and valid one, where
    /// `rest` starts at that frame (the frame is `rest[..len]`; `head` is
    /// the `HEAD` of a packet). The callback returns `false` to stop. A
    /// `HEAD` is checked as soon as its 8 bytes are there, a length field
    /// as soon as it is complete. `resume`: bytes at the start of `buf`
    /// already searched for a delimiter (the carried part of a line). This
    /// is the worker's decoder.
    pub fn scan(
        &self,
        buf: &mut [u8],
        stx: u32,
        resume: usize,
        mut on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
    ) -> Scan {
        let mut off = 0;
        let mut resume = resume;
        loop {
            match self.cut(&buf[off..], stx, resume) {
                Cut::Need => break,
                Cut::Bad(bad) => return Scan::Bad(bad, off),
                Cut::Frame { head, len, consumed } => {
                    if !on_frame(head, &mut buf[off..], len) {
                        return Scan::Stopped;
                    }
                    off += consumed;
                    resume = 0;
                }
            }
        }
        Scan::Used(off)
    }
}

/// Puts a carried partial frame back at the start of the read buffer
/// before the next read. Returns its length. `partial` is left empty (its
/// allocation kept for [`carry_out`]).
pub fn carry_in(partial: &mut Vec<u8>, buf: &mut [u8]) -> usize {
    let n = partial.len();
    buf[..n].copy_from_slice(partial);
    partial.clear();
    n
}

/// Keeps `rest`, the beginning of one incomplete frame, until the next
/// read, in an allocation sized to that frame when `framing` knows its
/// length; with nothing to keep, the allocation is released (an idle
/// connection holds no buffer).
pub fn carry_out(framing: &Framing, partial: &mut Vec<u8>, rest: &[u8]) {
    debug_assert!(partial.is_empty());
    if rest.is_empty() {
        if partial.capacity() > 0 {
            *partial = Vec::new();
        }
        return;
    }
    let want = framing.frame_len(rest).unwrap_or(rest.len()).max(rest.len());
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
        assert_eq!(frames(&f, b"1234567").1, Scan::Bad(Bad::TooLong { len: 7 }, 0));
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
