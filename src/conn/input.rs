//! A connection's input path, one `recv` at a time: put the carried partial
//! frame back at the start of the worker's read buffer, read after it,
//! dispatch every complete frame in place, and carry what is left (the
//! beginning of one frame) until the next read. A frame too long for the
//! read buffer is completed in its own buffer.
//!
//! The worker calls [`read_once`] with the real `recv`; the fuzz harness
//! (feature `harness`) calls the same function with simulated reads.
//!
//! Uses: conn::record, proto, sys (`Io`).

use std::io;
use std::os::fd::RawFd;

use super::record::{Conn, Partial};
use crate::proto::{Framing, Head, Scan, carry_in, carry_out};
use crate::sys::Io;

/// What one [`read_once`] did.
#[derive(Debug)]
pub(crate) enum Input {
    /// The peer closed its side: `recv` returned 0.
    Eof,
    /// Nothing to read now; the partial packet is kept as it was.
    Drained,
    /// `recv` failed.
    Failed(io::Error),
    /// Bytes arrived and every complete packet in them was dispatched; the
    /// rest is carried. `full`: they filled the buffer, so more may wait.
    Read {
        /// The read filled all the buffer space it had.
        full: bool,
    },
    /// Decoding ended early (a bad frame, or the frame callback returned
    /// false) with `avail` bytes in the buffer; nothing is carried. The
    /// caller closes the connection.
    Stopped {
        /// How [`Framing::scan`] ended.
        end: Scan,
        /// Bytes in the read buffer for this read (carried + new).
        avail: usize,
    },
}

/// Reads once from connection `p` into `rbuf` with `recv(fd, buf)` and
/// dispatches the complete frames of `framing` through `on_frame(head,
/// rest, len)` (as for [`Framing::scan`]: the frame is `rest[..len]`).
/// `now` is the current tick: it becomes the connection's last read, and
/// the start of a frame that begins in this read and stays incomplete.
///
/// A frame longer than `rbuf` (known from its header) is completed in the
/// connection's own buffer, which grows with the bytes received (never
/// past the frame), read by read, and dispatched there in place.
///
/// `p` must be a live record with no other reference in use; none is held
/// while `on_frame` runs, so the callback may reach the connection again
/// (and close it).
pub(crate) fn read_once(
    p: *mut Conn,
    rbuf: &mut [u8],
    framing: &Framing,
    stx: u32,
    now: u32,
    recv: impl FnOnce(RawFd, &mut [u8]) -> Io,
    on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
) -> Input {
    // SAFETY: the caller's contract; the reference ends before `on_frame`.
    let c = unsafe { &mut *p };
    if let Some(total) = big_frame(framing, c.partial.bytes(), rbuf.len()) {
        // Read no further than the frame's end: what follows it is read
        // into `rbuf` as usual afterwards.
        let want = (total - c.partial.len()).min(rbuf.len());
        let n = match recv(c.fd, &mut rbuf[..want]) {
            Io::Done(0) => return Input::Eof,
            Io::Done(n) => n,
            Io::WouldBlock => return Input::Drained,
            Io::Err(e) => return Input::Failed(e),
        };
        c.last_read = now;
        // Grow with what arrives (doubling, never past the frame), not by
        // the length the peer announced: a few header bytes must not make
        // the server reserve a whole `max_frame`. No memory: only this
        // connection ends.
        let partial = c.partial.buf(now);
        let need = partial.len() + n;
        if need > partial.capacity() {
            let target = need.max(partial.capacity().saturating_mul(2)).min(total);
            if partial.try_reserve_exact(target - partial.len()).is_err() {
                return Input::Failed(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("no memory to hold a frame of {total} bytes"),
                ));
            }
        }
        partial.extend_from_slice(&rbuf[..n]);
        if partial.len() < total {
            return Input::Read { full: n == want };
        }
        let mut frame = c.partial.take();
        let avail = frame.len();
        // Exactly one frame: dispatched in place, then its buffer freed.
        return match framing.scan(&mut frame, stx, 0, on_frame) {
            Scan::Used(_) => Input::Read { full: true },
            end => Input::Stopped { end, avail },
        };
    }
    let carried = take_partial(&mut c.partial, rbuf);
    let n = match recv(c.fd, &mut rbuf[carried..]) {
        Io::Done(0) => return Input::Eof,
        Io::Done(n) => n,
        Io::WouldBlock => {
            keep_partial(framing, &mut c.partial, &rbuf[..carried], now);
            return Input::Drained;
        }
        Io::Err(e) => return Input::Failed(e),
    };
    c.last_read = now;
    let avail = carried + n;
    let used = match framing.scan(&mut rbuf[..avail], stx, carried, on_frame) {
        Scan::Used(used) => used,
        end => return Input::Stopped { end, avail },
    };
    // SAFETY: as above; the callbacks have returned.
    let c = unsafe { &mut *p };
    keep_partial(framing, &mut c.partial, &rbuf[used..avail], now);
    if used < avail && (carried == 0 || used > 0) {
        // A new frame began in this read.
        c.partial.restart(now);
    }
    Input::Read {
        full: n == rbuf.len() - carried,
    }
}

/// Dispatches the complete frames among the bytes carried for connection
/// `p` (those read after a packet that went to the handler pool, see
/// `pool`) through `on_frame`, as [`read_once`] does, without reading;
/// carries the rest. `Input::Drained` when nothing was carried.
pub(crate) fn rescan(
    p: *mut Conn,
    rbuf: &mut [u8],
    framing: &Framing,
    stx: u32,
    on_frame: impl FnMut(Option<Head>, &mut [u8], usize) -> bool,
) -> Input {
    // SAFETY: as for `read_once`; the reference ends before `on_frame`.
    let c = unsafe { &mut *p };
    if c.partial.is_empty() {
        return Input::Drained;
    }
    if c.partial.len() > rbuf.len() {
        // The beginning of one long frame: left for `read_once`.
        return Input::Read { full: false };
    }
    let carried = take_partial(&mut c.partial, rbuf);
    let used = match framing.scan(&mut rbuf[..carried], stx, 0, on_frame) {
        Scan::Used(used) => used,
        end => return Input::Stopped { end, avail: carried },
    };
    // SAFETY: as above; the callbacks have returned.
    let c = unsafe { &mut *p };
    // The bytes came from the carry, whose buffer (and start tick) is
    // still there: the tick given here is never used.
    keep_partial(framing, &mut c.partial, &rbuf[used..carried], 0);
    Input::Read { full: false }
}

/// Moves the bytes carried for a connection to the front of `rbuf` (see
/// [`carry_in`]); their buffer and the frame's start tick stay for
/// [`keep_partial`]. Returns how many.
fn take_partial(partial: &mut Partial, rbuf: &mut [u8]) -> usize {
    if partial.is_empty() {
        return 0;
    }
    carry_in(partial.buf(0), rbuf)
}

/// Keeps `rest`, the beginning of one incomplete frame, for the next read
/// (see [`carry_out`]); with nothing to keep, nothing stays allocated. A
/// frame carried for the first time counts from `now`.
pub(crate) fn keep_partial(framing: &Framing, partial: &mut Partial, rest: &[u8], now: u32) {
    if rest.is_empty() {
        partial.clear();
        return;
    }
    carry_out(framing, partial.buf(now), rest);
}

/// The length of the frame `partial` begins, if it is too long for a
/// read buffer of `room` bytes.
fn big_frame(framing: &Framing, partial: &[u8], room: usize) -> Option<usize> {
    if partial.is_empty() {
        return None;
    }
    framing.frame_len(partial).filter(|&total| total > room)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{RESERVE_AHEAD, SIZE_OF_HEAD};

    const STX: u32 = 0x8eb6_9af7;

    fn feed(c: &mut Conn, rbuf: &mut [u8], bytes: &[u8], now: u32, got: &mut Vec<Vec<u8>>) -> Input {
        feed_with(&Framing::default(), c, rbuf, bytes, now, got)
    }

    /// One read of `bytes` (at most what fits) through `framing`.
    fn feed_with(
        framing: &Framing,
        c: &mut Conn,
        rbuf: &mut [u8],
        bytes: &[u8],
        now: u32,
        got: &mut Vec<Vec<u8>>,
    ) -> Input {
        read_once(
            c,
            rbuf,
            framing,
            STX,
            now,
            |_, buf| {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Io::Done(n)
            },
            |_, rest, len| {
                got.push(rest[..len].to_vec());
                true
            },
        )
    }

    #[test]
    fn a_packet_split_across_reads_is_dispatched_once_when_complete() {
        let mut c = Conn::new(0, std::ptr::null_mut());
        let mut rbuf = vec![0u8; 64];
        let a = Head::frame(STX, 1, b"hello").expect("a small frame");
        let b = Head::frame(STX, 2, b"world!").expect("a small frame");
        let stream = [a.clone(), b.clone()].concat();
        let mut got = Vec::new();
        // The first read ends inside the second packet's head.
        let cut = a.len() + 3;
        assert!(matches!(
            feed(&mut c, &mut rbuf, &stream[..cut], 5, &mut got),
            Input::Read { full: false }
        ));
        assert_eq!(got, vec![a.clone()]);
        assert_eq!(c.partial.bytes(), &stream[a.len()..cut]);
        assert_eq!((c.last_read, c.partial.started()), (5, Some(5)));
        // Would-block keeps the partial as it was.
        let r = read_once(
            &mut c,
            &mut rbuf,
            &Framing::default(),
            STX,
            6,
            |_, _| Io::WouldBlock,
            |_, _, _| true,
        );
        assert!(matches!(r, Input::Drained));
        assert_eq!(c.partial.bytes(), &stream[a.len()..cut]);
        assert_eq!((c.last_read, c.partial.started()), (5, Some(5)));
        assert!(matches!(
            feed(&mut c, &mut rbuf, &stream[cut..], 7, &mut got),
            Input::Read { .. }
        ));
        assert_eq!(got, vec![a, b]);
        assert!(c.partial.is_empty());
        assert_eq!(c.partial.capacity(), 0, "an idle connection keeps no buffer");
        assert_eq!(c.partial.started(), None, "nothing is carried");
    }

    #[test]
    fn eof_errors_bad_heads_and_full_reads_are_reported() {
        let mut c = Conn::new(0, std::ptr::null_mut());
        let mut rbuf = vec![0u8; 2 * SIZE_OF_HEAD];
        let mut got = Vec::new();
        assert!(matches!(
            read_once(
                &mut c,
                &mut rbuf,
                &Framing::default(),
                STX,
                0,
                |_, _| Io::Done(0),
                |_, _, _| true
            ),
            Input::Eof
        ));
        let e = read_once(
            &mut c,
            &mut rbuf,
            &Framing::default(),
            STX,
            0,
            |_, _| Io::Err(io::Error::from_raw_os_error(libc::ECONNRESET)),
            |_, _, _| true,
        );
        assert!(matches!(e, Input::Failed(_)));
        let bad = Head::frame(STX ^ 1, 1, b"").expect("a small frame");
        match feed(&mut c, &mut rbuf, &bad, 0, &mut got) {
            Input::Stopped {
                end: Scan::Bad(..),
                avail: 8,
            } => {}
            other => panic!("{other:?}"),
        }
        let two = [
            Head::frame(STX, 1, b"").expect("a small frame"),
            Head::frame(STX, 2, b"").expect("a small frame"),
        ]
        .concat();
        assert!(matches!(
            feed(&mut c, &mut rbuf, &two, 0, &mut got),
            Input::Read { full: true }
        ));
        assert_eq!(got.len(), 2);
    }

    /// A length-field frame far longer than the read buffer is completed in
    /// its own buffer and dispatched whole; the frame after it is served
    /// from the read buffer as usual.
    #[test]
    fn a_frame_longer_than_the_read_buffer_is_completed_in_its_own() {
        let framing = Framing::Length {
            offset: 0,
            size: 4,
            adjust: 0,
            big_endian: true,
            max_frame: 1 << 20,
        };
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut big = (body.len() as u32).to_be_bytes().to_vec();
        big.extend_from_slice(&body);
        let small = [0, 0, 0, 2, b'o', b'k'];
        let stream = [&big[..], &small[..]].concat();
        // Reads of up to 3000 bytes into a 4 KiB read buffer.
        let got = decode(&framing, &stream, &mut |_| 3000, 4096);
        assert_eq!(got, vec![big, small.to_vec()]);
        // The carried buffer follows what arrived, not what the length
        // field announced: at most twice the bytes received (and 4 KiB).
        let mut c = Conn::new(0, std::ptr::null_mut());
        let mut rbuf = vec![0u8; 4096];
        let mut none = Vec::new();
        feed_with(&framing, &mut c, &mut rbuf, &stream[..3000], 0, &mut none);
        assert!(none.is_empty());
        assert_eq!(c.partial.len(), 3000);
        assert!(
            c.partial.capacity() <= 2 * 3000 + RESERVE_AHEAD,
            "{}",
            c.partial.capacity()
        );
        let mut at = 3000;
        while at < 150_000 {
            feed_with(&framing, &mut c, &mut rbuf, &stream[at..at + 3000], 0, &mut none);
            at += 3000;
            assert_eq!(c.partial.len(), at);
            assert!(
                c.partial.capacity() <= 2 * at + RESERVE_AHEAD,
                "{}",
                c.partial.capacity()
            );
        }
        assert!(none.is_empty());
    }

    /// For every framing: random read splits give exactly the frames that
    /// one whole read gives (a property test over the real input path).
    #[test]
    fn random_splits_give_the_frames_of_whole_reads() {
        let framings = [
            Framing::default(),
            Framing::Head {
                big_endian: true,
                max_frame: 3000,
            },
            Framing::Length {
                offset: 1,
                size: 2,
                adjust: -3,
                big_endian: false,
                max_frame: 70_000,
            },
            Framing::Line {
                delimiter: b"\n".to_vec(),
                max_frame: 200,
            },
            Framing::Line {
                delimiter: b"<>".to_vec(),
                max_frame: 200,
            },
            Framing::Fixed { size: 37 },
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for f in &framings {
            for round in 0..30 {
                let stream = sample_stream(f, &mut rnd, 40);
                let whole = decode(f, &stream, &mut |_| usize::MAX, 128 * 1024);
                let split = decode(f, &stream, &mut |left| 1 + rnd(left.min(5000)), 8 * 1024);
                assert_eq!(split, whole, "{f:?} round {round}");
                assert!(!whole.is_empty());
            }
        }
    }

    /// `n` valid frames of `f`, of random sizes, as one stream.
    fn sample_stream(f: &Framing, rnd: &mut impl FnMut(usize) -> usize, n: usize) -> Vec<u8> {
        let mut s = Vec::new();
        for _ in 0..n {
            match f {
                Framing::Head {
                    big_endian,
                    max_frame,
                } => {
                    let len = 8 + rnd(*max_frame as usize - 7);
                    let h = Head {
                        stx: STX,
                        pkglen: len as u16,
                        akg_id: rnd(0xfffc) as u16,
                    };
                    s.extend_from_slice(&h.to_bytes_in(*big_endian));
                    s.extend((8..len).map(|i| i as u8));
                }
                Framing::Length { offset, .. } => {
                    // offset 1, 2-byte LE field counting the whole frame.
                    let big = rnd(8) == 0;
                    let len = 3 + rnd(if big { 20_000 } else { 300 });
                    s.extend(std::iter::repeat_n(0xab, *offset as usize));
                    s.extend_from_slice(&(len as u16).to_le_bytes());
                    s.extend((3..len).map(|i| i as u8));
                }
                Framing::Line { delimiter, max_frame } => {
                    let len = rnd(*max_frame as usize + 1);
                    s.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                    if delimiter == b"\n" && rnd(2) == 0 {
                        s.push(b'\r');
                    }
                    s.extend_from_slice(delimiter);
                }
                Framing::Fixed { size } => s.extend((0..*size).map(|i| i as u8)),
                Framing::Raw => {}
            }
        }
        s
    }

    /// Decodes `stream` read by read (`next(left)`: the size of the next
    /// read) with a read buffer of `room` bytes.
    fn decode(f: &Framing, stream: &[u8], next: &mut dyn FnMut(usize) -> usize, room: usize) -> Vec<Vec<u8>> {
        let mut c = Conn::new(0, std::ptr::null_mut());
        let mut rbuf = vec![0u8; room];
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let take = next(stream.len() - pos).min(stream.len() - pos);
            let mut taken = 0;
            let r = read_once(
                &mut c,
                &mut rbuf,
                f,
                STX,
                0,
                |_, buf| {
                    taken = take.min(buf.len());
                    buf[..taken].copy_from_slice(&stream[pos..pos + taken]);
                    Io::Done(taken)
                },
                |_, rest, len| {
                    got.push(rest[..len].to_vec());
                    true
                },
            );
            assert!(matches!(r, Input::Read { .. }), "{r:?}");
            pos += taken;
        }
        assert!(c.partial.is_empty(), "{} bytes left over", c.partial.len());
        got
    }
}
