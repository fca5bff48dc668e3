//! Throughput of the worker's decoder (`Framing::scan`) for every framing,
//! on one core, without sockets: a 64 KiB buffer (the worker's read
//! buffer) full of frames is scanned again and again, as a worker does
//! with each read, the frame callback touching each frame.
//!
//!     cargo bench --bench decoders [-- SECONDS_PER_CASE]   (0.4 s by default;
//!                                                          a quick check under cargo test)
//!
//! Prints one JSON object per case: `{"case", "payload", "frames_per_s",
//! "bytes_per_s", "vs_head"}` where `vs_head` is the case's frames/s over
//! the classic HEAD's with the same payload, measured in the same run.
//! `make bench` runs it and puts the table in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mario::{Framing, Head};

const STX: u32 = 0x8eb6_9af7;
const RBUF: usize = 64 * 1024;

/// One case: its name, the framing and how a payload goes on the wire.
struct Case {
    name: &'static str,
    framing: Framing,
    encode: fn(&[u8]) -> Vec<u8>,
}

fn head_le(p: &[u8]) -> Vec<u8> {
    let h = Head {
        stx: STX,
        pkglen: (8 + p.len()) as u16,
        akg_id: 0x0101,
    };
    [&h.to_bytes()[..], p].concat()
}

fn head_be(p: &[u8]) -> Vec<u8> {
    let mut v = STX.to_be_bytes().to_vec();
    v.extend_from_slice(&((8 + p.len()) as u16).to_be_bytes());
    v.extend_from_slice(&0x0101u16.to_be_bytes());
    v.extend_from_slice(p);
    v
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "HEAD (classic, host order)",
            framing: Framing::default(),
            encode: head_le,
        },
        Case {
            name: "HEAD big-endian",
            framing: Framing::Head {
                big_endian: true,
                max_frame: 1500,
            },
            encode: head_be,
        },
        Case {
            name: "LENGTH 2-byte BE field",
            framing: Framing::Length {
                offset: 0,
                size: 2,
                adjust: 0,
                big_endian: true,
                max_frame: 65536,
            },
            encode: |p| [&(p.len() as u16).to_be_bytes()[..], p].concat(),
        },
        Case {
            name: "LENGTH offset 2, 4-byte LE, adjust -6",
            framing: Framing::Length {
                offset: 2,
                size: 4,
                adjust: -6,
                big_endian: false,
                max_frame: 65536,
            },
            encode: |p| [&[1u8, 2][..], &((6 + p.len()) as u32).to_le_bytes(), p].concat(),
        },
        Case {
            name: "LINE \"\\n\"",
            framing: Framing::Line {
                delimiter: b"\n".to_vec(),
                max_frame: 4096,
            },
            encode: |p| [p, b"\n"].concat(),
        },
        Case {
            name: "LINE \"\\r\\n\\r\\n\"",
            framing: Framing::Line {
                delimiter: b"\r\n\r\n".to_vec(),
                max_frame: 4096,
            },
            encode: |p| [p, b"\r\n\r\n"].concat(),
        },
        Case {
            name: "FIXED",
            framing: Framing::Fixed { size: 0 },
            encode: |p| p.to_vec(),
        },
    ]
}

/// A read buffer's worth of frames for `payload`-byte payloads; the
/// complete frames' total length.
fn fill(case: &Case, payload: usize) -> (Vec<u8>, usize) {
    // Printable payload bytes: never a delimiter.
    let p: Vec<u8> = (0..payload).map(|i| b'a' + (i % 26) as u8).collect();
    let frame = (case.encode)(&p);
    let mut buf = Vec::with_capacity(RBUF);
    while buf.len() + frame.len() <= RBUF {
        buf.extend_from_slice(&frame);
    }
    let used = buf.len();
    (buf, used)
}

/// Frames per second and bytes per second of `scan` over `buf`.
fn measure(framing: &Framing, buf: &mut [u8], used: usize, secs: f64) -> (f64, f64) {
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut sink = 0usize;
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while t0.elapsed() < limit {
        for _ in 0..16 {
            let end = framing.scan(black_box(&mut *buf), STX, 0, |_, rest, len| {
                sink = sink.wrapping_add(len ^ rest[0] as usize);
                frames += 1;
                true
            });
            assert_eq!(end, mario::proto::Scan::Used(used));
            bytes += used as u64;
        }
    }
    black_box(sink);
    let t = t0.elapsed().as_secs_f64();
    (frames as f64 / t, bytes as f64 / t)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` a
    // short run only checks that every case decodes.
    let full = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if full { 0.4 } else { 0.002 });
    for payload in [16usize, 200] {
        let mut head_rate = None;
        for case in cases() {
            let framing = match case.framing {
                Framing::Fixed { .. } => Framing::Fixed {
                    size: (case.encode)(&vec![b'a'; payload]).len() as u32,
                },
                ref f => f.clone(),
            };
            let (mut buf, used) = fill(&case, payload);
            // Warm up, then the median of three runs.
            measure(&framing, &mut buf, used, secs / 8.0);
            let mut runs: Vec<(f64, f64)> = (0..3)
                .map(|_| measure(&framing, &mut buf, used, secs / 3.0))
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (fps, bps) = runs[1];
            let base = *head_rate.get_or_insert(fps);
            println!(
                "{{\"case\": \"{}\", \"payload\": {payload}, \"frames_per_s\": {fps:.0}, \"bytes_per_s\": {bps:.0}, \"vs_head\": {:.3}}}",
                case.name.replace('\\', "\\\\").replace('"', "\\\""),
                fps / base
            );
        }
    }
}
