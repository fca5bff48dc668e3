//! Harnesses shared by the fuzz targets (`fuzz/`, nightly `cargo fuzz`) and
//! the corpus replay in the test suite (stable). Not part of the API.
//!
//! * [`frames`]: the worker's input path (`conn::input::read_once`: carry
//!   in, a simulated `recv`, scan, carry out, big frames in their own
//!   buffer) for every framing, under fuzzer-chosen read sizes, against an
//!   independent reference decoder.
//! * [`ops`]: short sequences of client operations against a real server
//!   running in this process, against a model of what the server must do.
//! * [`proxy`]: the PROXY protocol header parser (`proto::parse_proxy`) on
//!   arbitrary bytes, against the properties a byte-at-a-time decision must
//!   have, and on headers built by an independent encoder.
//!
//! All take any bytes, run on the calling thread (`ops` also on the
//! threads of the server it starts, which it stops before returning, and
//! one `ops` at a time per process), and panic (with a description of the
//! input) on any discrepancy. Each fuzz target is one line calling its
//! harness (`fuzz/fuzz_targets/frames.rs`); `tests/fuzz_replay.rs` feeds
//! them the committed corpus:
//!
//! ```
//! use mario::harness::fuzzing::{frames, ops, proxy};
//!
//! frames(b"\x0c\x00\x02\x00hello\nworld\n"); // a LINE framing, its settings, a stream
//! proxy(b"\x00PROXY TCP4 192.0.2.7 198.51.100.1 51234 8082\r\nhello");
//! ops(&[0x00, 0x01]); // a server on 127.0.0.1, a client's operations
//! ```
//!
//! Uses: api, server, service, conn, proto, sys.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::api::{HandlerResult, Packet, Server};
use crate::conn::input::{self, Input};
use crate::conn::{Conn, ConnId};
use crate::proto::{
    AKG_CLOSED, AKG_ERROR, AKG_TIMEOUT, Bad, BadHead, DEFAULT_STX, Framing, Head, MAX_PKG_LEN, Scan,
};
use crate::server::{close_id, send_to};
use crate::service::Verdict;
use crate::sys::Io;

/// A whole frame (the harness only builds small ones).
fn frame(stx: u32, id: u16, body: &[u8]) -> Vec<u8> {
    Head::frame(stx, id, body).expect("a frame of at most 65,535 bytes")
}

/// Reads the fuzz input front to back; past the end every byte is 0.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos += n;
        &self.data[start..end]
    }
    fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

// ===========================================================================
// frames: the decoder of every framing under arbitrary read splits
// ===========================================================================

/// The read buffer of the simulated worker. Smaller than the worker's
/// 64 KiB so that frames straddle it often and length-field frames longer
/// than it take the big-frame path; the decoder works with any size.
const RBUF: usize = 8 * 1024;
/// Longest stream [`frames`] builds.
const MAX_STREAM: usize = 192 * 1024;

/// One simulated `recv`.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `EAGAIN`: the worker carries its partial frame in and straight out.
    WouldBlock,
    /// Up to this many bytes (also bounded by the free buffer space).
    Take(usize),
}

impl Step {
    /// 0: would block; 1..=0xdf: that many bytes; 0xe0..: multiples of 2 KiB
    /// (up to 66 KiB, more than the buffer holds).
    fn decode(b: u8) -> Step {
        match b {
            0 => Step::WouldBlock,
            1..=0xdf => Step::Take(b as usize),
            _ => Step::Take((b as usize - 0xdf) * 2048),
        }
    }
}

/// How decoding a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A bad frame at this stream offset.
    Bad(Bad, usize),
    /// The frame callback asked to stop (after the last frame listed).
    Stopped,
    /// Stream exhausted; this many bytes of an incomplete frame remain.
    Leftover(usize),
}

/// Frames dispatched (stream offset, length), in order, and the end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    frames: Vec<(usize, usize)>,
    end: End,
}

/// The rules of each framing (docs/C-API.md, "Framing"; the `HEAD` rules of
/// "The wire format" and "Bad input") over a whole stream, written
/// independently of `Framing::scan`: a `HEAD` is checked as soon as its 8
/// bytes are there (length and magic, then reserved ids), a length field
/// as soon as it is complete, a line once its delimiter is there (or once
/// it is too long to have one in time); frames are dispatched once
/// complete, and `stops(tag)` ends decoding after the frame whose tag (the
/// packet id, or the frame's first byte) it names.
fn reference(f: &Framing, stream: &[u8], stx: u32, stops: &dyn Fn(u16) -> bool) -> Outcome {
    let mut frames = Vec::new();
    let mut off = 0;
    let end = loop {
        let rest = &stream[off..];
        // (frame length, input taken, tag) or the end.
        let cut: Result<(usize, usize, u16), End> = match f {
            Framing::Head {
                big_endian,
                max_frame,
            } => {
                if rest.len() < 8 {
                    Err(End::Leftover(rest.len()))
                } else {
                    let b = |i: usize, n: usize| -> u64 {
                        let mut v = 0u64;
                        for k in 0..n {
                            let byte = if *big_endian {
                                rest[i + k]
                            } else {
                                rest[i + n - 1 - k]
                            };
                            v = v << 8 | u64::from(byte);
                        }
                        // Host order is little-endian on every target we build.
                        v
                    };
                    let (magic, len, id) = (b(0, 4) as u32, b(4, 2) as usize, b(6, 2) as u16);
                    let head = Head {
                        stx: magic,
                        pkglen: len as u16,
                        akg_id: id,
                    };
                    if magic != stx || len < 8 || len > *max_frame as usize {
                        Err(End::Bad(Bad::Head(BadHead::Malformed, head), off))
                    } else if id >= 0xfffc {
                        Err(End::Bad(Bad::Head(BadHead::ReservedId, head), off))
                    } else if rest.len() < len {
                        Err(End::Leftover(rest.len()))
                    } else {
                        Ok((len, len, id))
                    }
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
                    Err(End::Leftover(rest.len()))
                } else {
                    let field = &rest[*offset as usize..header];
                    let mut value: u128 = 0;
                    for k in 0..field.len() {
                        let byte = if *big_endian {
                            field[k]
                        } else {
                            field[field.len() - 1 - k]
                        };
                        value = value << 8 | u128::from(byte);
                    }
                    let body = value as i128 + i128::from(*adjust);
                    let total = header as i128 + body;
                    if body < 0 {
                        Err(End::Bad(Bad::Negative { value: body as i64 }, off))
                    } else if total > i128::from(*max_frame) {
                        Err(End::Bad(
                            Bad::TooLong {
                                len: total.min(u64::MAX as i128) as u64,
                            },
                            off,
                        ))
                    } else if rest.len() < total as usize {
                        Err(End::Leftover(rest.len()))
                    } else {
                        Ok((total as usize, total as usize, u16::from(rest[0])))
                    }
                }
            }
            Framing::Line { delimiter, max_frame } => {
                let d = delimiter.len();
                let found = (0..rest.len().saturating_sub(d - 1)).find(|&i| rest[i..i + d] == delimiter[..]);
                match found {
                    Some(i) => {
                        let len = if &delimiter[..] == b"\n" && i > 0 && rest[i - 1] == b'\r' {
                            i - 1
                        } else {
                            i
                        };
                        if len > *max_frame as usize {
                            Err(End::Bad(Bad::TooLong { len: len as u64 }, off))
                        } else {
                            Ok((len, i + d, u16::from(rest.first().copied().unwrap_or(0))))
                        }
                    }
                    None => {
                        // The shortest line the stream could still give:
                        // its delimiter beginning at some q whose rest is a
                        // beginning of the delimiter (q = the end at worst).
                        let shortest = (rest.len().saturating_sub(d - 1)..=rest.len())
                            .filter(|&q| delimiter.starts_with(&rest[q..]))
                            .map(|q| {
                                if &delimiter[..] == b"\n" && q > 0 && rest[q - 1] == b'\r' {
                                    q - 1
                                } else {
                                    q
                                }
                            })
                            .min()
                            .expect("q = the end always fits");
                        if shortest > *max_frame as usize {
                            Err(End::Bad(
                                Bad::LineTooLong {
                                    at_least: shortest as u64,
                                },
                                off,
                            ))
                        } else {
                            Err(End::Leftover(rest.len()))
                        }
                    }
                }
            }
            Framing::Fixed { size } => {
                let size = *size as usize;
                if rest.len() < size {
                    Err(End::Leftover(rest.len()))
                } else {
                    Ok((size, size, u16::from(rest[0])))
                }
            }
            Framing::Raw => unreachable!("raw reads have no reference decoding"),
        };
        match cut {
            Err(end) => break end,
            Ok((len, taken, tag)) => {
                frames.push((off, len));
                off += taken;
                if stops(tag) {
                    break End::Stopped;
                }
            }
        }
    };
    Outcome { frames, end }
}

/// What a carried partial frame must look like between reads: the
/// beginning of one incomplete, valid frame, held in a buffer no larger
/// than that frame (or, for a line, than the longest line), and no
/// allocation when empty.
fn check_partial(f: &Framing, partial: &[u8], capacity: usize, stx: u32, ctx: &dyn Fn() -> String) {
    if partial.is_empty() {
        assert_eq!(capacity, 0, "an empty partial keeps an allocation; {}", ctx());
        return;
    }
    match f.frame_len(partial) {
        Some(total) => {
            assert!(
                partial.len() < total,
                "a complete frame ({} of {total} bytes) was carried; {}",
                partial.len(),
                ctx()
            );
            assert!(
                capacity <= total.max(partial.len()),
                "partial capacity {capacity} > the frame's {total}; {}",
                ctx()
            );
            assert!(
                capacity <= 2 * partial.len() + crate::proto::RESERVE_AHEAD,
                "partial capacity {capacity} for {} bytes received; {}",
                partial.len(),
                ctx()
            );
        }
        None => assert!(
            capacity <= partial.len().max(64 * 1024),
            "partial capacity {capacity}; {}",
            ctx()
        ),
    }
    let mut whole = partial.to_vec();
    let end = f.scan(&mut whole, stx, 0, |_, _, _| {
        panic!("a carried partial held a whole frame; {}", ctx())
    });
    assert_eq!(
        end,
        Scan::Used(0),
        "a carried partial decodes as {end:?}; {}",
        ctx()
    );
}

/// Feeds `stream` through the worker's real input path
/// ([`input::read_once`], the function `Worker::read` calls) with framing
/// `f`, one simulated `recv` per step (steps are used cyclically), and
/// checks every invariant on the way. Raw reads are checked to give back
/// the stream, each read as one frame.
fn simulate(f: &Framing, stream: &[u8], stx: u32, stops: &dyn Fn(u16) -> bool, steps: &[Step]) -> Outcome {
    let mut rbuf = vec![0u8; RBUF];
    let mut conn = Conn::new(0, std::ptr::null_mut());
    let mut frames: Vec<(usize, usize)> = Vec::new();
    // Stream bytes delivered so far, and the offset of the first byte not
    // yet consumed by a dispatched frame (where the partial starts).
    let mut pos = 0;
    let mut next = 0;
    let mut idle = 0;
    for i in 0.. {
        let at = pos;
        let ctx = move || format!("{f:?}, steps {steps:?}, step {i}, stream offset {at}");
        let now = i as u32;
        assert_eq!(
            conn.partial.bytes(),
            &stream[next..pos],
            "partial is not the stream's tail; {}",
            ctx()
        );
        if pos == stream.len() {
            return Outcome {
                frames,
                end: End::Leftover(conn.partial.len()),
            };
        }
        let mut step = steps[i % steps.len()];
        if let Step::WouldBlock = step {
            idle += 1;
            if idle > steps.len() {
                step = Step::Take(usize::MAX);
            }
        }
        let before = conn.partial.bytes().to_vec();
        let base = next;
        let mut local = 0;
        let mut n = 0;
        let got = input::read_once(
            &mut conn,
            &mut rbuf,
            f,
            stx,
            now,
            |_, buf| {
                n = match step {
                    Step::WouldBlock => return Io::WouldBlock,
                    Step::Take(k) => k.min(buf.len()).min(stream.len() - pos),
                };
                buf[..n].copy_from_slice(&stream[pos..pos + n]);
                Io::Done(n)
            },
            |h, rest, len| {
                let off = base + local;
                assert!(rest.len() >= len, "incomplete frame dispatched");
                if let Some(h) = h {
                    assert_eq!(
                        Head::parse_in(rest, f.head_big_endian()),
                        Some(h),
                        "head differs from the bytes"
                    );
                    assert_eq!(len, h.pkglen as usize);
                }
                assert_eq!(
                    &rest[..len],
                    &stream[off..off + len],
                    "frame bytes at offset {off}"
                );
                frames.push((off, len));
                // The input this frame took (a line's delimiter too).
                let taken = match f {
                    Framing::Line { delimiter, .. } => {
                        let d = delimiter.len();
                        let cr =
                            usize::from(&delimiter[..] == b"\n" && stream.get(off + len) == Some(&b'\r'));
                        len + cr + d
                    }
                    _ => len,
                };
                local += taken;
                let tag = h.map_or(u16::from(rest.first().copied().unwrap_or(0)), |h| h.akg_id);
                !stops(tag)
            },
        );
        if n == 0 {
            assert!(
                matches!(got, Input::Drained),
                "would-block gave {got:?}; {}",
                ctx()
            );
            assert_eq!(
                conn.partial.bytes(),
                &before[..],
                "would-block round trip changed the partial; {}",
                ctx()
            );
            check_partial(f, conn.partial.bytes(), conn.partial.capacity(), stx, &ctx);
            continue;
        }
        idle = 0;
        pos += n;
        assert_eq!(conn.last_read, now, "last read tick; {}", ctx());
        match got {
            Input::Read { .. } => {
                next = base + local;
                assert_eq!(
                    conn.partial.bytes(),
                    &stream[next..pos],
                    "carry_out kept other bytes; {}",
                    ctx()
                );
                check_partial(f, conn.partial.bytes(), conn.partial.capacity(), stx, &ctx);
            }
            Input::Stopped {
                end: Scan::Stopped(_),
                ..
            } => {
                return Outcome {
                    frames,
                    end: End::Stopped,
                };
            }
            Input::Stopped {
                end: Scan::Bad(bad, off),
                ..
            } => {
                return Outcome {
                    frames,
                    end: End::Bad(bad, base + off),
                };
            }
            other => panic!("unexpected {other:?} from a read of {n} bytes; {}", ctx()),
        }
    }
    unreachable!()
}

/// The framing a fuzz input's first bytes choose (see [`frames`]).
fn pick_framing(cur: &mut Cursor<'_>, kind: u8) -> Framing {
    match kind % 6 {
        0 | 1 => Framing::Head {
            big_endian: kind % 6 == 1,
            max_frame: MAX_PKG_LEN as u32,
        },
        2 => {
            let offset = u32::from(cur.u8() % 8);
            let size = [1u8, 2, 4, 8][(cur.u8() % 4) as usize];
            let adjust = i32::from(cur.u8() as i8);
            let big_endian = cur.u8() & 1 == 1;
            let max_frame = offset + u32::from(size) + u32::from(cur.u16());
            Framing::Length {
                offset,
                size,
                adjust,
                big_endian,
                max_frame,
            }
        }
        3 => {
            let d = 1 + (cur.u8() % 3) as usize;
            let mut delimiter = cur.take(d).to_vec();
            if delimiter.len() < d {
                delimiter = b"\n".to_vec();
            }
            Framing::Line {
                delimiter,
                max_frame: 1 + u32::from(cur.u16() % 3000),
            }
        }
        4 => Framing::Fixed {
            size: 1 + u32::from(cur.u16() % 20_000),
        },
        _ => Framing::Raw,
    }
}

/// Fuzz target `frames`. The input is
///
/// * byte 0: the stx (low 2 bits: `DEFAULT_STX`, `0x8eb69af7`, 0, or the
///   next 4 bytes), and the framing (`(b >> 2) % 6`: HEAD in host order,
///   HEAD in network order, LENGTH, LINE, FIXED, RAW), whose settings
///   follow (see `pick_framing`);
/// * then one byte: the pseudo-handler stops on frames whose tag's low
///   byte equals it (0: never); the tag is the packet id, or a frame's
///   first byte;
/// * one byte: the stream is the rest of the input repeated `(b & 63) + 1`
///   times (capped at 192 KiB, so frames straddle the read buffer);
/// * one byte: `n = b % 17` read sizes follow, one byte each (see `Step`),
///   used cyclically;
/// * the rest: the stream unit.
///
/// The stream is decoded through the worker's input path with those reads
/// and with reads as large as the buffer allows; both must agree with the
/// reference decoder on every frame and on how decoding ended, and the
/// carried partial must always be the beginning of one incomplete frame.
/// Raw reads must give back the stream, one frame per read. Example: the
/// [module](self)'s.
pub fn frames(data: &[u8]) {
    let mut cur = Cursor::new(data);
    let b0 = cur.u8();
    let stx = match b0 & 3 {
        0 => DEFAULT_STX,
        1 => 0x8eb6_9af7,
        2 => 0,
        _ => cur.u32(),
    };
    let framing = pick_framing(&mut cur, b0 >> 2);
    let stop = cur.u8();
    let repeat = (cur.u8() & 63) as usize + 1;
    let nsteps = (cur.u8() % 17) as usize;
    let steps: Vec<Step> = (0..nsteps).map(|_| Step::decode(cur.u8())).collect();
    let unit = cur.rest();
    let mut stream = Vec::new();
    for _ in 0..repeat {
        if stream.len() + unit.len() > MAX_STREAM {
            break;
        }
        stream.extend_from_slice(unit);
    }
    let stops = move |tag: u16| stop != 0 && tag as u8 == stop;
    let what = |reads: &str| {
        format!(
            "{reads}: {framing:?}, stx {stx:#x}, stop {stop:#x}, {} bytes",
            stream.len()
        )
    };
    if framing == Framing::Raw {
        for s in [&[Step::Take(usize::MAX)][..], &steps[..]] {
            if s.is_empty() {
                continue;
            }
            let got = simulate(&framing, &stream, stx, &|_| false, s);
            let mut at = 0;
            for &(off, len) in &got.frames {
                assert_eq!(off, at, "raw frames are not consecutive; {}", what("raw"));
                assert!(
                    len > 0 && len <= RBUF,
                    "raw frame of {len} bytes; {}",
                    what("raw")
                );
                at += len;
            }
            assert_eq!((at, got.end), (stream.len(), End::Leftover(0)), "{}", what("raw"));
        }
        return;
    }
    let want = comparable(&framing, reference(&framing, &stream, stx, &stops));
    let whole = simulate(&framing, &stream, stx, &stops, &[Step::Take(usize::MAX)]);
    same(&comparable(&framing, whole), &want, what("whole reads"));
    if !steps.is_empty() {
        let got = simulate(&framing, &stream, stx, &stops, &steps);
        same(
            &comparable(&framing, got),
            &want,
            what(&format!("reads {steps:?}")),
        );
    }
}

/// An over-long line is refused as soon as it can no longer end in time,
/// so whether it had ended, and the length it reports, depend on the
/// reads. Checks that the length is over `max_frame` and forgets both.
fn comparable(framing: &Framing, mut o: Outcome) -> Outcome {
    if let (Framing::Line { max_frame, .. }, End::Bad(bad, _)) = (framing, &mut o.end)
        && let Bad::TooLong { len: n } | Bad::LineTooLong { at_least: n } = *bad
    {
        assert!(
            n > u64::from(*max_frame),
            "a line of {n} bytes refused as too long"
        );
        *bad = Bad::LineTooLong { at_least: u64::MAX };
    }
    o
}

/// Panics, describing the first difference, unless `got == want`.
fn same(got: &Outcome, want: &Outcome, what: String) {
    if got == want {
        return;
    }
    let i = got
        .frames
        .iter()
        .zip(&want.frames)
        .take_while(|(a, b)| a == b)
        .count();
    panic!(
        "{what}: decoding differs from the reference: {} frames then {:?}, reference {} frames then \
         {:?}; they agree on the first {i} frames (next: {:?} vs {:?})",
        got.frames.len(),
        got.end,
        want.frames.len(),
        want.end,
        got.frames.get(i),
        want.frames.get(i)
    );
}

// ===========================================================================
// ops: client operations against a real server, checked against a model
// ===========================================================================

/// The magic of [`ops`]'s server under test (not the default, so that
/// the default is a corrupt stx).
/// Example: the [module](self)'s.
pub const OPS_STX: u32 = 0x8eb6_9af7;
/// Packet id of [`ops`]'s server whose handler echoes the whole frame
/// and continues.
/// Example: the [module](self)'s.
pub const ID_ECHO: u16 = 1;
/// Packet id whose handler echoes, closes with [`REASON_CLOSE`] and
/// returns `Continue`.
/// Example: the [module](self)'s.
pub const ID_CLOSE: u16 = 2;
/// Packet id whose handler echoes, closes with [`REASON_CLOSE_STOP`] and
/// returns `Stop`.
/// Example: the [module](self)'s.
pub const ID_CLOSE_STOP: u16 = 3;
/// Packet id whose handler echoes and returns `Stop` (closed as
/// `AKG_ERROR` after its reply: a handler's failure is a close the
/// application asked for).
/// Example: the [module](self)'s.
pub const ID_STOP: u16 = 4;
/// Close reason given by the [`ID_CLOSE`] handler.
/// Example: the [module](self)'s.
pub const REASON_CLOSE: u16 = 0x0a02;
/// Close reason given by the [`ID_CLOSE_STOP`] handler.
/// Example: the [module](self)'s.
pub const REASON_CLOSE_STOP: u16 = 0x0a03;

/// Longest wait for any one event (a reply, a close, a callback).
const WAIT: Duration = Duration::from_secs(5);
/// Socket read/write timeout (each blocking call).
const SOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most operations taken from one input.
const MAX_OPS: usize = 8;
/// Client connections an input can hold open at once.
const CONNS: usize = 3;

/// What the server reported about one connection.
#[derive(Debug, Default)]
struct Record {
    /// Packets handed to handlers: (id, whole frame).
    handled: Vec<(u16, Vec<u8>)>,
    /// Close callback reasons (must end up exactly one).
    closes: Vec<u16>,
}

#[derive(Default)]
struct Events {
    /// Connections seen by `on_connect`, by client port, not yet claimed.
    ports: HashMap<u16, ConnId>,
    /// Live or not yet verified connections.
    conns: HashMap<ConnId, Record>,
    /// Connections whose close was verified.
    done: HashSet<ConnId>,
    /// Callbacks that must never have happened.
    violations: Vec<String>,
}

static EVENTS: LazyLock<(Mutex<Events>, Condvar)> = LazyLock::new(Default::default);
static SERVER: OnceLock<u16> = OnceLock::new();
/// One `ops` input at a time per process.
static OPS_LOCK: Mutex<()> = Mutex::new(());

fn events() -> MutexGuard<'static, Events> {
    EVENTS.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn on_packet(conn: &mut Conn, _: &mut (), pkt: Packet<'_>) -> HandlerResult {
    let id = conn.id();
    {
        let mut ev = events();
        let ev = &mut *ev;
        match ev.conns.get_mut(&id) {
            Some(r) if r.closes.is_empty() => r.handled.push((pkt.id(), pkt.bytes().to_vec())),
            Some(r) => ev.violations.push(format!(
                "handler for {:#x} ran on {id:?} after its close callback ({:#x?})",
                pkt.id(),
                r.closes
            )),
            None => ev.violations.push(format!(
                "handler for {:#x} ran on unknown or finished {id:?}",
                pkt.id()
            )),
        }
    }
    // The lock is released: the close callback runs once this returns.
    let _ = conn.send(pkt.bytes());
    Ok(match pkt.id() {
        ID_CLOSE => {
            conn.close(REASON_CLOSE);
            Verdict::Continue
        }
        ID_CLOSE_STOP => {
            conn.close(REASON_CLOSE_STOP);
            Verdict::Stop
        }
        ID_STOP => Verdict::Stop,
        _ => Verdict::Continue,
    })
}

fn on_connect(conn: &mut Conn, _: &mut ()) -> HandlerResult<()> {
    let id = conn.id();
    let mut ev = events();
    if ev.conns.contains_key(&id) || ev.done.contains(&id) {
        ev.violations.push(format!("connection id {id:?} reused"));
    }
    ev.conns.insert(id, Record::default());
    ev.ports.insert(conn.peer().port(), id);
    EVENTS.1.notify_all();
    Ok(())
}

fn on_close(conn: &mut Conn, _: &mut (), reason: u16) {
    let id = conn.id();
    let mut ev = events();
    let ev = &mut *ev;
    match ev.conns.get_mut(&id) {
        Some(r) => {
            r.closes.push(reason);
            if r.closes.len() > 1 {
                ev.violations.push(format!(
                    "{id:?}: close callback ran {} times: {:#x?}",
                    r.closes.len(),
                    r.closes
                ));
            }
        }
        None if ev.done.contains(&id) => ev.violations.push(format!(
            "{id:?}: close callback ({reason:#x}) after its close was verified"
        )),
        None => ev
            .violations
            .push(format!("{id:?}: close callback for an unknown connection")),
    }
    EVENTS.1.notify_all();
}

/// The port of the server under test, started on first use: 2 workers, no
/// timeouts, stx [`OPS_STX`], handlers at [`ID_ECHO`]..=[`ID_STOP`] and
/// (echo, never to be reached) at the reserved ids.
fn server_port() -> u16 {
    *SERVER.get_or_init(|| {
        let mut b = Server::builder()
            .port(0)
            .workers(2)
            .read_timeout(0)
            .write_timeout(0)
            .stx(OPS_STX)
            .on_connect(on_connect)
            .on_close(on_close);
        for id in [
            ID_ECHO,
            ID_CLOSE,
            ID_CLOSE_STOP,
            ID_STOP,
            0xfffc,
            0xfffd,
            0xfffe,
            0xffff,
        ] {
            b = b.on_packet(id, on_packet);
        }
        let server = Arc::new(b.build().expect("build the server under test"));
        let s = server.clone();
        std::thread::Builder::new()
            .name("fuzz-server".into())
            .spawn(move || s.run())
            .expect("spawn the server thread");
        server
            .wait_listening(Duration::from_secs(10))
            .expect("server listening")
    })
}

/// How the server must end a connection, as the model predicts it: every
/// close the model predicts (the application's or bad input) is graceful,
/// so the replies queued before it reach the client, then FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Closing {
    reason: u16,
}

/// What the server must do with one connection's byte stream (the rules
/// of docs/C-API.md), computed without the library's decoder.
#[derive(Debug, Default)]
struct Model {
    stream: Vec<u8>,
    /// Offset of the first byte not consumed by a dispatched packet.
    pos: usize,
    /// Every reply the handlers queue, in order.
    replies: Vec<u8>,
    /// Packets the handlers must see, in order.
    handled: Vec<(u16, Vec<u8>)>,
    closed: Option<Closing>,
}

impl Model {
    fn feed(&mut self, bytes: &[u8]) {
        assert!(
            self.closed.is_none(),
            "harness bug: writing to a closed connection"
        );
        self.stream.extend_from_slice(bytes);
        let graceful = |reason| Some(Closing { reason });
        while self.closed.is_none() {
            let rest = &self.stream[self.pos..];
            if rest.len() < 8 {
                break;
            }
            let magic = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let len = u16::from_ne_bytes([rest[4], rest[5]]) as usize;
            let id = u16::from_ne_bytes([rest[6], rest[7]]);
            if magic != OPS_STX || !(8..=1500).contains(&len) || id >= 0xfffc {
                self.closed = graceful(AKG_CLOSED);
                break;
            }
            if rest.len() < len {
                break;
            }
            let frame = rest[..len].to_vec();
            self.pos += len;
            if !(ID_ECHO..=ID_STOP).contains(&id) {
                self.closed = graceful(AKG_CLOSED);
                break;
            }
            self.replies.extend_from_slice(&frame);
            self.handled.push((id, frame));
            self.closed = match id {
                ID_CLOSE => graceful(REASON_CLOSE),
                ID_CLOSE_STOP => graceful(REASON_CLOSE_STOP),
                ID_STOP => graceful(AKG_ERROR),
                _ => None,
            };
        }
    }
}

/// How a send operation reaches the socket.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One write (with anything held before).
    Whole,
    /// Held back and written with the next write on that connection.
    Hold,
    /// Two writes split at this offset into the held bytes + these.
    Split { at: usize, pause: bool },
}

#[derive(Debug)]
enum Op {
    Send {
        conn: usize,
        what: &'static str,
        bytes: Vec<u8>,
        mode: Mode,
    },
    /// Read every reply the model expects so far.
    Sync { conn: usize },
    /// Close with `SO_LINGER` 0 (a reset), optionally after a sync.
    Reset { conn: usize, sync: bool },
    /// Half-close, read to the end, then open a fresh connection.
    Reopen { conn: usize },
    /// After a sync, `mario::close_id` from this (non-worker) thread.
    CloseId { conn: usize, reason: u16 },
    /// After a sync, `mario::send_to` from this thread; the bytes must
    /// arrive as they are.
    SendTo { conn: usize, bytes: Vec<u8> },
}

/// Ids the send operations pick from.
fn pick_id(cur: &mut Cursor<'_>) -> u16 {
    match cur.u8() % 16 {
        0..=5 => ID_ECHO,
        6 => ID_CLOSE,
        7 => ID_CLOSE_STOP,
        8 => ID_STOP,
        9 => 5,
        10 => 0,
        v @ 11..=14 => 0xfffc + (v - 11) as u16,
        _ => cur.u16(),
    }
}

fn body(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn head(stx: u32, pkglen: u16, akg_id: u16) -> [u8; 8] {
    Head { stx, pkglen, akg_id }.to_bytes()
}

impl Op {
    /// One line for the failure log (long frames cut).
    fn describe(&self) -> String {
        match self {
            Op::Send {
                conn,
                what,
                bytes,
                mode,
            } => format!(
                "conn {conn}: send {what}, {} bytes {:02x?}{}, {mode:?}",
                bytes.len(),
                &bytes[..bytes.len().min(24)],
                if bytes.len() > 24 { "..." } else { "" }
            ),
            Op::SendTo { conn, bytes } => format!("conn {conn}: send_to {bytes:02x?}"),
            op => format!("{op:x?}"),
        }
    }

    fn decode(cur: &mut Cursor<'_>, tag: u8) -> Op {
        let b = cur.u8();
        let conn = (b >> 4) as usize % CONNS;
        let send = |what, bytes, cur: &mut Cursor<'_>| {
            let m = cur.u8();
            let mode = match m & 3 {
                0 => Mode::Whole,
                1 => Mode::Hold,
                k => Mode::Split {
                    at: (m >> 2) as usize,
                    pause: k == 3,
                },
            };
            Op::Send {
                conn,
                what,
                bytes,
                mode,
            }
        };
        match b & 15 {
            0 | 11.. => {
                let id = pick_id(cur);
                let len = (cur.u8() % 48) as usize;
                send("frame", frame(OPS_STX, id, &body(len, tag)), cur)
            }
            1 => {
                let id = pick_id(cur);
                let mask = cur.u8();
                let stx = match mask {
                    0 => DEFAULT_STX,
                    m => OPS_STX ^ (u32::from(m) << (8 * (cur.u8() % 4))),
                };
                let len = (cur.u8() % 16) as usize;
                send("corrupt stx", frame(stx, id, &body(len, tag)), cur)
            }
            2 => {
                const LENS: [u16; 8] = [0, 7, 8, 9, 1499, 1500, 1501, 0xffff];
                let len = LENS[(cur.u8() % 8) as usize];
                let id = pick_id(cur);
                let bytes = if (8..=1500).contains(&(len as usize)) {
                    frame(OPS_STX, id, &body(len as usize - 8, tag))
                } else {
                    let mut v = head(OPS_STX, len, id).to_vec();
                    v.extend(body((cur.u8() % 17) as usize, tag));
                    v
                };
                send("boundary length", bytes, cur)
            }
            3 => {
                let n = (cur.u8() % 24) as usize;
                let bytes = cur.take(n).to_vec();
                send("raw bytes", bytes, cur)
            }
            4 => {
                // A valid head alone, completed by a later send (or never).
                let id = pick_id(cur);
                let len = 8 + (cur.u8() % 40) as u16;
                send("head only", head(OPS_STX, len, id).to_vec(), cur)
            }
            5 => Op::Sync { conn },
            6 => Op::Reset {
                conn,
                sync: cur.u8() & 1 == 1,
            },
            7 => Op::Reopen { conn },
            8 => {
                // Many echo frames in one write (up to 96 KiB: more than
                // the worker's read buffer), the last one of any id.
                let count = 1 + (cur.u8() % 64) as usize;
                let len = (cur.u8() as usize * 6).min(MAX_PKG_LEN - 8);
                let last = pick_id(cur);
                let mut bytes = Vec::with_capacity(count * (len + 8));
                for k in 0..count {
                    let id = if k + 1 == count { last } else { ID_ECHO };
                    bytes.extend(frame(OPS_STX, id, &body(len, tag.wrapping_add(k as u8))));
                }
                send("burst", bytes, cur)
            }
            9 => Op::CloseId {
                conn,
                reason: match cur.u8() % 5 {
                    0 => AKG_CLOSED,
                    1 => AKG_TIMEOUT,
                    2 => AKG_ERROR,
                    3 => 0x0b01,
                    _ => cur.u16(),
                },
            },
            _ => {
                let n = (cur.u8() % 32) as usize;
                let bytes = match cur.u8() {
                    0 => cur.take(n).to_vec(),
                    id => frame(OPS_STX, u16::from(id), &body(n, tag)),
                };
                Op::SendTo { conn, bytes }
            }
        }
    }
}

struct Client {
    sock: TcpStream,
    id: ConnId,
    model: Model,
    /// Bytes held back by [`Mode::Hold`].
    held: Vec<u8>,
    /// Reply bytes already read.
    read: usize,
}

/// How reading to the end of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Eos {
    Fin,
    Reset,
    Timeout,
}

/// One input's run: its clients and a log of the operations so far.
struct Run {
    port: u16,
    clients: Vec<Option<Client>>,
    log: Vec<String>,
}

impl Run {
    fn fail(&self, msg: String) -> ! {
        panic!("ops: {msg}\noperations so far:\n  {}", self.log.join("\n  "));
    }

    fn connect(&mut self, conn: usize) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let sock = match TcpStream::connect_timeout(&addr, WAIT) {
            Ok(s) => s,
            Err(e) => self.fail(format!("connect: {e}")),
        };
        let _ = sock.set_nodelay(true);
        let _ = sock.set_read_timeout(Some(SOCK_TIMEOUT));
        let _ = sock.set_write_timeout(Some(SOCK_TIMEOUT));
        let port = sock.local_addr().expect("local address").port();
        let t0 = Instant::now();
        let mut ev = events();
        let id = loop {
            if let Some(id) = ev.ports.remove(&port) {
                break id;
            }
            if t0.elapsed() > WAIT {
                drop(ev);
                self.fail(format!("no connect callback for client port {port}"));
            }
            ev = EVENTS
                .1
                .wait_timeout(ev, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(ev);
        self.log.push(format!("    conn {conn}: connected as {id:?}"));
        self.clients[conn] = Some(Client {
            sock,
            id,
            model: Model::default(),
            held: Vec::new(),
            read: 0,
        });
    }

    fn client(&mut self, conn: usize) -> &mut Client {
        if self.clients[conn].is_none() {
            self.connect(conn);
        }
        self.clients[conn].as_mut().expect("connected")
    }

    /// Writes `bytes`, feeds them to the model and, if the model says the
    /// server closes the connection now, checks that it did.
    fn write(&mut self, conn: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let c = self.clients[conn].as_mut().expect("open client");
        if let Err(e) = c.sock.write_all(bytes) {
            let m = &c.model;
            let msg = format!(
                "conn {conn}: write of {} bytes failed ({e}) although the model has it open \
                 (stream {} bytes, {} packets handled)",
                bytes.len(),
                m.stream.len(),
                m.handled.len()
            );
            self.fail(msg);
        }
        c.model.feed(bytes);
        if c.model.closed.is_some() {
            self.server_closed(conn);
        }
    }

    /// Writes what is held for `conn`.
    fn flush(&mut self, conn: usize) {
        if let Some(c) = self.clients[conn].as_mut() {
            let held = std::mem::take(&mut c.held);
            self.write(conn, &held);
        }
    }

    fn send(&mut self, conn: usize, bytes: &[u8], mode: Mode) {
        let c = self.client(conn);
        let mut out = std::mem::take(&mut c.held);
        out.extend_from_slice(bytes);
        match mode {
            Mode::Hold => c.held = out,
            Mode::Split { at, pause } if out.len() > 1 => {
                let at = 1 + at % (out.len() - 1);
                self.write(conn, &out[..at]);
                if self.clients[conn].is_none() {
                    return; // closed by the first part
                }
                if pause {
                    // Not an assertion: only makes a separate read likelier.
                    std::thread::sleep(Duration::from_micros(300));
                }
                self.write(conn, &out[at..]);
            }
            _ => self.write(conn, &out),
        }
    }

    /// Reads exactly `n` bytes; fails on end of stream or timeout.
    fn read_exact(&mut self, conn: usize, n: usize) -> Vec<u8> {
        let c = self.clients[conn].as_mut().expect("open client");
        let mut got = vec![0u8; n];
        let mut have = 0;
        let t0 = Instant::now();
        while have < n {
            match c.sock.read(&mut got[have..]) {
                Ok(0) => break,
                Ok(k) => have += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if t0.elapsed() > WAIT {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if have < n {
            self.fail(format!(
                "conn {conn}: expected {n} reply bytes, got {have} before end of stream or timeout: {:02x?}",
                &got[..have.min(64)]
            ));
        }
        got
    }

    /// Reads until end of stream (FIN or reset) or the deadline.
    fn read_to_end(c: &mut Client) -> (Vec<u8>, Eos) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let t0 = Instant::now();
        loop {
            match c.sock.read(&mut buf) {
                Ok(0) => return (got, Eos::Fin),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if t0.elapsed() > 2 * WAIT {
                        return (got, Eos::Timeout);
                    }
                }
                Err(_) => return (got, Eos::Reset),
            }
        }
    }

    /// Waits for the close callback of `c` and checks it and the handlers
    /// against the model; `handled_prefix`: the handlers may have stopped
    /// short of the model (the client reset the connection first).
    fn check_closed(
        &mut self,
        conn: usize,
        id: ConnId,
        want: &[(u16, Vec<u8>)],
        reasons: &[u16],
        handled_prefix: bool,
    ) {
        let t0 = Instant::now();
        let mut ev = events();
        loop {
            match ev.conns.get(&id) {
                Some(r) if !r.closes.is_empty() => break,
                Some(_) if t0.elapsed() <= WAIT => {}
                Some(_) => {
                    drop(ev);
                    self.fail(format!("conn {conn}: no close callback within {WAIT:?}"));
                }
                None => {
                    drop(ev);
                    self.fail(format!("conn {conn}: {id:?} is not known to the server"));
                }
            }
            ev = EVENTS
                .1
                .wait_timeout(ev, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let r = ev.conns.remove(&id).expect("record");
        ev.done.insert(id);
        drop(ev);
        if r.closes.len() != 1 || !reasons.contains(&r.closes[0]) {
            self.fail(format!(
                "conn {conn}: close callbacks {:#x?}, expected one of {reasons:#x?}",
                r.closes
            ));
        }
        let ok = if handled_prefix {
            want.starts_with(&r.handled)
        } else {
            want == r.handled
        };
        if !ok {
            let ids = |v: &[(u16, Vec<u8>)]| v.iter().map(|(id, f)| (*id, f.len())).collect::<Vec<_>>();
            self.fail(format!(
                "conn {conn}: handlers ran for (id, len) {:x?}, model expects {}{:x?}",
                ids(&r.handled),
                if handled_prefix { "a prefix of " } else { "" },
                ids(want)
            ));
        }
    }

    /// The model says the server has closed `conn`: read to the end, check
    /// the replies and the close callback.
    fn server_closed(&mut self, conn: usize) {
        let mut c = self.clients[conn].take().expect("open client");
        let closing = c.model.closed.expect("model closed");
        let (got, eos) = Self::read_to_end(&mut c);
        let want = &c.model.replies[c.read..];
        self.log
            .push(format!("    conn {conn}: server closes with {closing:x?}"));
        if eos == Eos::Timeout {
            self.fail(format!(
                "conn {conn}: server did not close ({closing:x?} expected); read {} bytes",
                got.len()
            ));
        }
        if got != want || eos != Eos::Fin {
            self.fail(format!(
                "conn {conn}: graceful close ({:#x}): got {} reply bytes then {eos:?}, expected {} then Fin \
                 (agree on the first {})",
                closing.reason,
                got.len(),
                want.len(),
                got.iter().zip(want).take_while(|(a, b)| a == b).count()
            ));
        }
        self.check_closed(conn, c.id, &c.model.handled, &[closing.reason], false);
    }

    fn sync(&mut self, conn: usize) {
        self.flush(conn);
        let Some(c) = self.clients[conn].as_mut() else {
            return;
        };
        let (from, to) = (c.read, c.model.replies.len());
        let got = self.read_exact(conn, to - from);
        let c = self.clients[conn].as_mut().expect("open client");
        if got[..] != c.model.replies[from..to] {
            self.fail(format!("conn {conn}: replies differ from the echoed frames"));
        }
        c.read = to;
    }

    fn reset(&mut self, conn: usize, sync: bool) {
        if self.clients[conn].is_none() {
            return;
        }
        if sync {
            self.sync(conn);
        }
        let Some(c) = self.clients[conn].take() else {
            return;
        };
        let lg = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `lg` is a valid `linger` and the size passed matches it;
        // the descriptor is open (owned by `c.sock`).
        let rc = unsafe {
            libc::setsockopt(
                c.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&lg as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
        let Client { sock, id, model, .. } = c;
        drop(sock);
        self.check_closed(conn, id, &model.handled, &[AKG_ERROR], !sync);
    }

    /// Closes `conn` from this thread by id, once every reply is in: the
    /// server must close it gracefully (whatever the reason) with `reason`
    /// and nothing more to read.
    fn close_id(&mut self, conn: usize, reason: u16) {
        self.client(conn);
        self.sync(conn);
        let Some(mut c) = self.clients[conn].take() else {
            return; // the model closed it during the sync
        };
        close_id(c.id, reason);
        let (got, eos) = Self::read_to_end(&mut c);
        if !got.is_empty() || eos != Eos::Fin {
            self.fail(format!(
                "conn {conn}: after close_id({reason:#x}): got {} bytes then {eos:?}, expected none then Fin",
                got.len()
            ));
        }
        self.check_closed(conn, c.id, &c.model.handled, &[reason], false);
    }

    /// Queues `bytes` for `conn` from this thread, once every reply is in,
    /// and reads them back.
    fn send_to(&mut self, conn: usize, bytes: &[u8]) {
        self.client(conn);
        self.sync(conn);
        let Some(c) = self.clients[conn].as_mut() else {
            return;
        };
        if !send_to(c.id, bytes) {
            self.fail(format!(
                "conn {conn}: send_to refused although the connection is open"
            ));
        }
        c.model.replies.extend_from_slice(bytes);
        self.sync(conn);
    }

    /// Half-closes `conn`: the server must dispatch what is left, reply,
    /// and close as `AKG_CLOSED` after every reply.
    fn finish(&mut self, conn: usize) {
        self.flush(conn);
        let Some(mut c) = self.clients[conn].take() else {
            return;
        };
        if let Err(e) = c.sock.shutdown(Shutdown::Write) {
            self.fail(format!("conn {conn}: shutdown: {e}"));
        }
        let (got, eos) = Self::read_to_end(&mut c);
        let want = &c.model.replies[c.read..];
        if got != want || eos != Eos::Fin {
            self.fail(format!(
                "conn {conn}: after our FIN: got {} reply bytes then {eos:?}, expected {} then Fin",
                got.len(),
                want.len()
            ));
        }
        self.check_closed(conn, c.id, &c.model.handled, &[AKG_CLOSED], false);
    }
}

/// Fuzz target `ops`: up to 8 operations on up to 3 client connections to
/// a server running in this process (see [`OPS_STX`] and the `ID_*`
/// handlers). Each operation is one byte (`conn << 4 | kind`, see
/// `Op::decode`) and its arguments: valid frames of any id (echo, handler
/// close, handler close + `Stop`, `Stop`, unregistered, reserved), corrupt
/// stx, boundary lengths (0, 7, 8, 9, 1499, 1500, 1501, 0xffff), raw bytes,
/// lone heads, bursts of up to 96 KiB, each written whole, held for the
/// next write, or split in two writes; syncs (read every reply so far),
/// resets (`SO_LINGER` 0), half-close and reopen, `close_id` and `send_to`
/// from this thread. Every reply, close (FIN or reset, reason) and handler
/// call is checked against a model of docs/C-API.md's semantics; every connection must
/// get exactly one close callback and no handler call after it.
/// Connections left open are half-closed and checked at the end. All waits
/// are bounded (5 s per event). Example: the [module](self)'s.
pub fn ops(data: &[u8]) {
    let _serial = OPS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = Run {
        port: server_port(),
        clients: (0..CONNS).map(|_| None).collect(),
        log: Vec::new(),
    };
    let mut cur = Cursor::new(data);
    for i in 0..MAX_OPS {
        if cur.is_empty() {
            break;
        }
        let op = Op::decode(&mut cur, (i as u8).wrapping_mul(37));
        run.log.push(op.describe());
        match op {
            Op::Send {
                conn, bytes, mode, ..
            } => run.send(conn, &bytes, mode),
            Op::Sync { conn } => run.sync(conn),
            Op::Reset { conn, sync } => run.reset(conn, sync),
            Op::Reopen { conn } => {
                run.finish(conn);
                run.connect(conn);
            }
            Op::CloseId { conn, reason } => run.close_id(conn, reason),
            Op::SendTo { conn, bytes } => run.send_to(conn, &bytes),
        }
    }
    for conn in 0..CONNS {
        run.finish(conn);
    }
    let v = std::mem::take(&mut events().violations);
    if !v.is_empty() {
        run.fail(format!("server callbacks out of order:\n  {}", v.join("\n  ")));
    }
}

// ===========================================================================
// proxy: the PROXY protocol header parser
// ===========================================================================

// This section's own imports, kept here so that it stays one block.
use std::net::{IpAddr, Ipv6Addr};

use crate::proto::{BadProxy, MAX_PROXY_HEADER, PROXY_ANY, PROXY_V1, PROXY_V2, Proxied, parse_proxy};

/// What `parse_proxy` returns.
type Parsed = Result<Option<(Proxied, usize)>, BadProxy>;

/// The longest v1 line (proxy-protocol.txt, 2.1).
const PROXY_V1_MAX: usize = 107;

/// Bytes appended after a decision, which must not change it.
const PROXY_TAILS: [&[u8]; 5] = [
    b"\r\n",
    b"\0",
    b"\xff",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c",
];

/// Bytes, printable.
fn show(b: &[u8]) -> String {
    format!("\"{}\" ({} bytes)", b.escape_ascii(), b.len())
}

/// Checks `parse_proxy` on `data` under every mode: bits other than the
/// two version bits (`extra`) change nothing; no version bit refuses
/// everything; each version alone owns the first bytes it can begin with
/// (`P`, `\r`), and both together answer as the one that owns them. Then
/// [`check_proxy_stream`] under each version, and, once `data` holds a
/// whole header (or enough to refuse it), agreement with
/// [`proxy_reference`]. Returns the results under `PROXY_V1` and
/// `PROXY_V2`.
fn check_proxy(data: &[u8], extra: u32, ctx: &dyn Fn() -> String) -> (Parsed, Parsed) {
    let [none, one, two, any] = [0, PROXY_V1, PROXY_V2, PROXY_ANY].map(|m| parse_proxy(data, m));
    for (m, r) in [(0, none), (PROXY_V1, one), (PROXY_V2, two), (PROXY_ANY, any)] {
        let got = parse_proxy(data, m | extra);
        assert_eq!(got, r, "mode {m} | {extra:#x} differs from mode {m}; {}", ctx());
    }
    assert_eq!(
        none,
        Err(BadProxy::Missing),
        "mode 0 accepted something; {}",
        ctx()
    );
    let missing = Err(BadProxy::Missing);
    let want = match data.first() {
        None => [Ok(None); 3],
        Some(b'P') => [one, missing, one],
        Some(b'\r') => [missing, two, two],
        Some(_) => [missing; 3],
    };
    assert_eq!(
        [one, two, any],
        want,
        "results under PROXY_V1, PROXY_V2, PROXY_ANY; {}",
        ctx()
    );
    check_proxy_stream(data, PROXY_V1, one, ctx);
    check_proxy_stream(data, PROXY_V2, two, ctx);
    if let Some(want) = proxy_reference(data) {
        let ok = match want {
            Ok((what, n)) => any == Ok(Some((what, n))),
            Err(()) => any.is_err(),
        };
        assert!(ok, "PROXY_ANY gives {any:?}, the reference {want:?}; {}", ctx());
    }
    (one, two)
}

/// A v1 or v2 header read whole, independently of the parser (with `std`'s
/// address and number parsers): `None` while `data` is too short to tell
/// (no CRLF yet in a v1 line shorter than 107 bytes, fewer than the 16 +
/// length bytes of a v2 header), else the header and its length, or
/// `Err` if `data` does not begin with a valid one.
fn proxy_reference(data: &[u8]) -> Option<Result<(Proxied, usize), ()>> {
    match data.first()? {
        b'P' => proxy_reference_v1(data),
        b'\r' => proxy_reference_v2(data),
        _ => Some(Err(())),
    }
}

/// Version 1: the line up to the first CRLF, which must end within 107
/// bytes: `PROXY`, then `UNKNOWN` alone or with a space and anything, or
/// exactly five single-space-separated fields of the protocol's format.
fn proxy_reference_v1(data: &[u8]) -> Option<Result<(Proxied, usize), ()>> {
    let end = match data.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i + 2 <= PROXY_V1_MAX => i,
        None if data.len() < PROXY_V1_MAX => return None,
        _ => return Some(Err(())),
    };
    let n = end + 2;
    let Some(body) = data[..end].strip_prefix(b"PROXY ") else {
        return Some(Err(()));
    };
    if body == b"UNKNOWN" || body.starts_with(b"UNKNOWN ") {
        return Some(Ok((Proxied::Local, n)));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Some(Err(()));
    };
    let fields: Vec<&str> = text.split(' ').collect();
    let &[proto, src, dst, sport, dport] = &fields[..] else {
        return Some(Err(()));
    };
    let port = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = p.len() > 1 && p.starts_with('0');
        if digits && !leading_zero {
            p.parse::<u16>().ok()
        } else {
            None
        }
    };
    let ip = |a: &str| match proto {
        "TCP4" => a.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "TCP6" => a.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    };
    Some(match (ip(src), ip(dst), port(sport), port(dport)) {
        (Some(s), Some(d), Some(sp), Some(dp)) => Ok((
            Proxied::Addr {
                src: SocketAddr::new(s, sp),
                dst: SocketAddr::new(d, dp),
            },
            n,
        )),
        _ => Err(()),
    })
}

/// Version 2: the signature, version 2, a length within
/// `MAX_PROXY_HEADER`, then `LOCAL` (anything after), or `PROXY` of a
/// family and transport in the table below, the address block within the
/// length and, after a block of known size, TLVs that end exactly at the
/// header's end.
fn proxy_reference_v2(data: &[u8]) -> Option<Result<(Proxied, usize), ()>> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if data.len() < 16 {
        let k = data.len().min(SIG.len());
        return (data[..k] != SIG[..k]).then_some(Err(()));
    }
    let n = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if data[..12] != *SIG || n > MAX_PROXY_HEADER || !matches!(data[12], 0x20 | 0x21) {
        return Some(Err(()));
    }
    let h = data.get(..n)?;
    if data[12] == 0x20 {
        return Some(Ok((Proxied::Local, n)));
    }
    // (address block, TLVs checked after it)
    let (block, what) = match data[13] {
        0x00 | 0x01 | 0x02 | 0x10 | 0x20 | 0x30 => return Some(Ok((Proxied::Local, n))),
        0x11 => {
            let a = |i: usize| IpAddr::V4(Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]));
            let p = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
            (
                12,
                (n >= 28).then(|| Proxied::Addr {
                    src: SocketAddr::new(a(16), p(24)),
                    dst: SocketAddr::new(a(20), p(26)),
                }),
            )
        }
        0x21 => {
            let a = |i: usize| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&h[i..i + 16]).unwrap_or_default(),
                ))
            };
            let p = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
            (
                36,
                (n >= 52).then(|| Proxied::Addr {
                    src: SocketAddr::new(a(16), p(48)),
                    dst: SocketAddr::new(a(32), p(50)),
                }),
            )
        }
        0x31 | 0x32 => (216, (n >= 232).then_some(Proxied::Local)),
        _ => return Some(Err(())),
    };
    let Some(what) = what else {
        return Some(Err(()));
    };
    let mut at = 16 + block;
    while at < n {
        if n - at < 3 {
            return Some(Err(()));
        }
        at += 3 + usize::from(u16::from_be_bytes([h[at + 1], h[at + 2]]));
    }
    Some(if at == n { Ok((what, n)) } else { Err(()) })
}

/// The properties of a byte-at-a-time decision, for `got`, the result on
/// `data` under `mode`: every prefix shorter than the point where it is
/// decided (the header's end, or the first byte that settles an error) is
/// pending, the prefix ending there gives `got` already, and bytes
/// appended there or at the end change nothing; a header fits in
/// `MAX_PROXY_HEADER` (a v1 line in 107 bytes), as does a pending input,
/// and an error is settled within as many bytes.
fn check_proxy_stream(data: &[u8], mode: u32, got: Parsed, ctx: &dyn Fn() -> String) {
    let max = if data.first() == Some(&b'P') {
        PROXY_V1_MAX
    } else {
        MAX_PROXY_HEADER
    };
    // The first prefix that is not pending, and what it gives.
    let first = (0..=data.len()).find_map(|k| match parse_proxy(&data[..k], mode) {
        Ok(None) => None,
        r => Some((k, r)),
    });
    let decided = match (got, first) {
        (Ok(None), None) => {
            assert!(
                data.len() < max,
                "mode {mode}: still pending after {} bytes; {}",
                data.len(),
                ctx()
            );
            return;
        }
        (Ok(Some((what, n))), Some((k, r))) => {
            assert!(
                n > 0 && n <= data.len() && n <= max,
                "mode {mode}: a header of {n} bytes; {}",
                ctx()
            );
            assert_eq!(
                (k, r),
                (n, got),
                "mode {mode}: a header of {n} bytes, but the first decided prefix is {k} bytes; {}",
                ctx()
            );
            if let Proxied::Addr { src, dst } = what {
                assert_eq!(
                    src.is_ipv4(),
                    dst.is_ipv4(),
                    "mode {mode}: {src} and {dst} are of different families; {}",
                    ctx()
                );
            }
            n
        }
        (Err(e), Some((k, r))) => {
            assert_eq!(
                r,
                got,
                "mode {mode}: {e:?} on the whole input, but the prefix of {k} bytes gives {r:?}; {}",
                ctx()
            );
            assert!(
                k > 0 && k <= max,
                "mode {mode}: {e:?} settled only at byte {k}; {}",
                ctx()
            );
            k
        }
        (_, first) => panic!(
            "mode {mode}: {got:?} on the whole input, but the first decided prefix gives {first:?}; {}",
            ctx()
        ),
    };
    for at in [decided, data.len()] {
        for tail in PROXY_TAILS {
            let mut v = data[..at].to_vec();
            v.extend_from_slice(tail);
            let r = parse_proxy(&v, mode);
            assert_eq!(
                r,
                got,
                "mode {mode}: {} appended after {at} bytes changed the result; {}",
                show(tail),
                ctx()
            );
        }
    }
}

/// What the encoder's header must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyWant {
    /// This, and the header is all of the built bytes.
    Header(Proxied),
    /// Refused as too long.
    TooLong,
    /// Refused as malformed (a v2 UDP header).
    Malformed,
}

/// An IPv6 address as text, in one of the forms `form` selects: bit 0,
/// groups zero-padded to 4 digits; bit 1, uppercase; bits 2-3: 8 groups,
/// the longest run of zero groups as `::`, the last two groups as a
/// dotted quad (with the `::` too if bit 4), or `Ipv6Addr`'s `Display`.
fn proxy_six_text(g: [u16; 8], form: u8) -> String {
    let (pad, upper, style) = (form & 1 != 0, form & 2 != 0, (form >> 2) & 3);
    if style == 3 {
        return Ipv6Addr::from(g).to_string();
    }
    let dotted = style == 2;
    let groups = if dotted { &g[..6] } else { &g[..] };
    let text = |x: &u16| match (pad, upper) {
        (true, true) => format!("{x:04X}"),
        (true, false) => format!("{x:04x}"),
        (false, true) => format!("{x:X}"),
        (false, false) => format!("{x:x}"),
    };
    let join = |gs: &[u16]| gs.iter().map(text).collect::<Vec<_>>().join(":");
    // The longest run of zero groups (the first of equals).
    let mut run: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < groups.len() {
        let len = groups[i..].iter().take_while(|&&x| x == 0).count();
        if len > 0 && run.is_none_or(|(_, l)| len > l) {
            run = Some((i, len));
        }
        i += len.max(1);
    }
    let compress = style == 1 || (dotted && form & 16 != 0);
    let mut s = match run {
        Some((at, len)) if compress => format!("{}::{}", join(&groups[..at]), join(&groups[at + len..])),
        _ => join(groups),
    };
    if dotted {
        if !s.ends_with(':') {
            s.push(':');
        }
        let [a, b] = g[6].to_be_bytes();
        let [c, d] = g[7].to_be_bytes();
        s.push_str(&format!("{a}.{b}.{c}.{d}"));
    }
    s
}

/// Builds a header from the input, as a sender would, independently of
/// the parser: the bytes, the version's mode, and what it must give.
fn proxy_encode(cur: &mut Cursor<'_>) -> (Vec<u8>, u32, ProxyWant) {
    let kind = cur.u8() % 9;
    let port = |cur: &mut Cursor<'_>| u16::from_be_bytes([cur.u8(), cur.u8()]);
    let bytes = |cur: &mut Cursor<'_>, n: usize| -> Vec<u8> { (0..n).map(|_| cur.u8()).collect() };
    let (header, want) = match kind {
        // v1 TCP4, as `Ipv4Addr`'s Display writes the addresses.
        0 => {
            let (src, dst) = (Ipv4Addr::from(cur.u32()), Ipv4Addr::from(cur.u32()));
            let (sport, dport) = (port(cur), port(cur));
            let line = format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n");
            let what = Proxied::Addr {
                src: SocketAddr::new(IpAddr::V4(src), sport),
                dst: SocketAddr::new(IpAddr::V4(dst), dport),
            };
            (line.into_bytes(), ProxyWant::Header(what))
        }
        // v1 TCP6: each address's groups (some zeroed by a mask, for
        // runs of zeros) in a form of `proxy_six_text`.
        1 => {
            let mut six = || {
                let mut g = [0u16; 8];
                let zero = cur.u8();
                for (i, x) in g.iter_mut().enumerate() {
                    *x = if zero & 1 << i != 0 { 0 } else { cur.u16() };
                }
                let form = cur.u8();
                (g, proxy_six_text(g, form))
            };
            let ((src, src_text), (dst, dst_text)) = (six(), six());
            let (sport, dport) = (port(cur), port(cur));
            let line = format!("PROXY TCP6 {src_text} {dst_text} {sport} {dport}\r\n");
            let want = if line.len() > PROXY_V1_MAX {
                ProxyWant::TooLong
            } else {
                ProxyWant::Header(Proxied::Addr {
                    src: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), sport),
                    dst: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), dport),
                })
            };
            (line.into_bytes(), want)
        }
        // v1 UNKNOWN, alone or with a space and up to 127 bytes without LF.
        2 => {
            let b = cur.u8();
            let mut line = b"PROXY UNKNOWN".to_vec();
            if b & 0x80 != 0 {
                line.push(b' ');
                line.extend(
                    bytes(cur, usize::from(b & 0x7f))
                        .into_iter()
                        .map(|c| if c == b'\n' { b'n' } else { c }),
                );
            }
            line.extend_from_slice(b"\r\n");
            let want = if line.len() > PROXY_V1_MAX {
                ProxyWant::TooLong
            } else {
                ProxyWant::Header(Proxied::Local)
            };
            (line, want)
        }
        // v2.
        _ => {
            let (ver_cmd, fam, block, want) = match kind {
                3 => {
                    let (src, dst, sport, dport) = (cur.u32(), cur.u32(), port(cur), port(cur));
                    let mut block = src.to_be_bytes().to_vec();
                    block.extend_from_slice(&dst.to_be_bytes());
                    block.extend_from_slice(&sport.to_be_bytes());
                    block.extend_from_slice(&dport.to_be_bytes());
                    let what = Proxied::Addr {
                        src: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(src)), sport),
                        dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(dst)), dport),
                    };
                    (0x21, 0x11, block, ProxyWant::Header(what))
                }
                4 => {
                    let mut block = bytes(cur, 32);
                    let (sport, dport) = (port(cur), port(cur));
                    let ip =
                        |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default()));
                    let what = Proxied::Addr {
                        src: SocketAddr::new(ip(&block[..16]), sport),
                        dst: SocketAddr::new(ip(&block[16..]), dport),
                    };
                    block.extend_from_slice(&sport.to_be_bytes());
                    block.extend_from_slice(&dport.to_be_bytes());
                    (0x21, 0x21, block, ProxyWant::Header(what))
                }
                // LOCAL: any family, any bytes (not necessarily TLVs).
                5 => {
                    let fam = cur.u8();
                    let n = usize::from(cur.u8());
                    (0x20, fam, bytes(cur, n), ProxyWant::Header(Proxied::Local))
                }
                // PROXY with the family or the transport unspecified: any bytes.
                6 => {
                    let fam = [0x00, 0x01, 0x02, 0x10, 0x20, 0x30][usize::from(cur.u8() % 6)];
                    let n = usize::from(cur.u8());
                    (0x21, fam, bytes(cur, n), ProxyWant::Header(Proxied::Local))
                }
                // AF_UNIX, stream or datagram.
                7 => {
                    let fam = if cur.u8() & 1 == 0 { 0x31 } else { 0x32 };
                    (0x21, fam, bytes(cur, 216), ProxyWant::Header(Proxied::Local))
                }
                // UDP over IPv4 or IPv6.
                _ => {
                    let (fam, n) = if cur.u8() & 1 == 0 { (0x12, 12) } else { (0x22, 36) };
                    (0x21, fam, bytes(cur, n), ProxyWant::Malformed)
                }
            };
            // TLVs: up to 7, each of any type, with a value of 0 to 127
            // bytes or a multiple of 16 up to 2,032.
            let mut rest = block;
            for _ in 0..cur.u8() % 8 {
                let t = cur.u8();
                let b = cur.u8();
                let n = if b & 0x80 != 0 {
                    usize::from(b & 0x7f) * 16
                } else {
                    usize::from(b)
                };
                rest.push(t);
                rest.extend_from_slice(&(n as u16).to_be_bytes());
                rest.extend(bytes(cur, n));
            }
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[ver_cmd, fam]);
            h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            h.extend_from_slice(&rest);
            let want = if h.len() > MAX_PROXY_HEADER && want != ProxyWant::Malformed {
                ProxyWant::TooLong
            } else {
                want
            };
            (h, want)
        }
    };
    let mode = if kind < 3 { PROXY_V1 } else { PROXY_V2 };
    (header, mode, want)
}

/// Fuzz target `proxy`: `proto::parse_proxy`. The input is
///
/// * byte 0: bit 7 clear: the rest of the input is parsed as it is; bit 7
///   set: the rest builds a header. Bits 0-6, shifted left by 2, are mode
///   bits beyond the two versions', which must change nothing.
/// * Built: one byte, the kind (modulo 9): v1 `TCP4`, v1 `TCP6`, v1
///   `UNKNOWN`; v2 `PROXY` over TCP/IPv4, over TCP/IPv6, v2 `LOCAL` (any
///   family byte and up to 255 bytes of anything), v2 `PROXY` of an
///   unspecified family or transport (one byte picks which, then up to 255
///   bytes of anything), over `AF_UNIX` (216 bytes), over UDP (refused).
///   Then the kind's fields, in order, taken from the input (0 past its
///   end): an IPv4 address as a little-endian u32 (its number), ports as
///   big-endian u16, v2 IPv6 addresses as their 16 bytes; a v1 IPv6
///   address is a byte of groups to zero (bit i, group i), the other
///   groups as little-endian u16, then a byte choosing its text form (see
///   `proxy_six_text`); v1 `UNKNOWN`: a byte, bit 7 for a space and
///   `b & 0x7f` bytes (LF made `n`). A v2 header's fields are followed by
///   a byte giving up to 7 TLVs, each a type byte, a length byte (`b`, or
///   `(b & 0x7f) * 16` if bit 7 is set) and the value. The input's
///   remaining bytes follow the header as the client's data.
///
/// Every input is checked under each mode against the properties of a
/// byte-at-a-time decision (see `check_proxy`, `check_proxy_stream`): no
/// prefix of a header or of the bytes settling an error is decided,
/// nothing after them matters, a header is at most `MAX_PROXY_HEADER`
/// bytes (107 for v1); and where the input holds a whole header, the
/// parser must agree with an independent reading of it
/// (`proxy_reference`, built on `std`'s parsers). A built header must give
/// exactly the addresses it was built from and its own length, or
/// `TooLong` if it is longer than allowed, or `Malformed` for UDP; under
/// the other version alone it is `Missing`. Example: the [module](self)'s.
pub fn proxy(data: &[u8]) {
    let mut cur = Cursor::new(data);
    let b0 = cur.u8();
    let extra = u32::from(b0 & 0x7f) << 2;
    if b0 & 0x80 == 0 {
        let rest = cur.rest();
        let _ = check_proxy(rest, extra, &|| format!("input {}", show(rest)));
        return;
    }
    let (header, mode, want) = proxy_encode(&mut cur);
    let mut stream = header.clone();
    stream.extend_from_slice(cur.rest());
    let ctx = || {
        format!(
            "built header {} (mode {mode}, want {want:?}), then {}",
            show(&header),
            show(&stream[header.len()..])
        )
    };
    let (one, two) = check_proxy(&stream, extra, &ctx);
    let got = if mode == PROXY_V1 { one } else { two };
    let ok = match want {
        ProxyWant::Header(what) => got == Ok(Some((what, header.len()))),
        ProxyWant::TooLong => got == Err(BadProxy::TooLong),
        ProxyWant::Malformed => matches!(got, Err(BadProxy::Malformed(_))),
    };
    assert!(ok, "got {got:?}; {}", ctx());
}
