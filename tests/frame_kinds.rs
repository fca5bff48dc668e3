//! The framings other than the classic `HEAD` (`mario_set_framing`),
//! against the instrumented C server (testsrv, built with ASan/UBSan) over
//! loopback: for every kind, frames of every size at the boundaries, a
//! stream split at every byte offset, 10,000 frames pipelined in one write,
//! random cuts of random streams, oversize and malformed input closed within
//! 100 ms with exactly one close callback and one warning, and the settings
//! `mario_set_framing` refuses.
//!
//! testsrv echoes each frame as a record: its length (u32, little-endian)
//! then its bytes, so the tests see exactly what the frame handler got.
mod common;
use common::*;
use mario::{AKG_CLOSED, AKG_ERROR};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// One framing under test: testsrv's settings, and how a payload goes on
/// the wire and what the frame handler then sees.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// 2-byte big-endian length field at offset 0 counting the body; max
    /// frame 1,026 bytes.
    Len2Be,
    /// 3 bytes of header, a 4-byte little-endian length field counting the
    /// whole frame (adjust -7); max frame 100,000 bytes (over the worker's
    /// 64 KiB read buffer).
    Len4LeWhole,
    /// 1-byte length field, default max frame.
    Len1,
    /// 8-byte big-endian length field, default max frame (65,536).
    Len8Be,
    /// Lines ending "\n" (or "\r\n"), max 100 bytes.
    LineLf,
    /// Lines ending "<=>", default max (4,096).
    LineMulti,
    /// Frames of 7 bytes.
    Fixed7,
    /// Frames of 70,000 bytes (over the read buffer).
    FixedBig,
    /// Whatever each read returned.
    Raw,
}

const ALL: [Kind; 9] = [
    Kind::Len2Be,
    Kind::Len4LeWhole,
    Kind::Len1,
    Kind::Len8Be,
    Kind::LineLf,
    Kind::LineMulti,
    Kind::Fixed7,
    Kind::FixedBig,
    Kind::Raw,
];

impl Kind {
    fn env(self) -> Vec<(&'static str, &'static str)> {
        let mut e = vec![("TS_WORKERS", "2"), ("TS_OUTLIMIT", "268435456")];
        e.extend_from_slice(match self {
            Kind::Len2Be => &[
                ("TS_FRAMING", "length"),
                ("TS_LSIZE", "2"),
                ("TS_BE", "1"),
                ("TS_MAXFRAME", "1026"),
            ][..],
            Kind::Len4LeWhole => &[
                ("TS_FRAMING", "length"),
                ("TS_LOFF", "3"),
                ("TS_LSIZE", "4"),
                ("TS_LADJ", "-7"),
                ("TS_MAXFRAME", "100000"),
            ],
            Kind::Len1 => &[("TS_FRAMING", "length"), ("TS_LSIZE", "1")],
            Kind::Len8Be => &[("TS_FRAMING", "length"), ("TS_LSIZE", "8"), ("TS_BE", "1")],
            Kind::LineLf => &[("TS_FRAMING", "line"), ("TS_MAXFRAME", "100")],
            Kind::LineMulti => &[("TS_FRAMING", "line"), ("TS_DELIM", "<=>")],
            Kind::Fixed7 => &[("TS_FRAMING", "fixed"), ("TS_FSIZE", "7")],
            Kind::FixedBig => &[("TS_FRAMING", "fixed"), ("TS_FSIZE", "70000")],
            Kind::Raw => &[("TS_FRAMING", "raw")],
        });
        e
    }

    /// The largest payload a frame may carry.
    fn max_payload(self) -> usize {
        match self {
            Kind::Len2Be => 1024,
            Kind::Len4LeWhole => 100_000 - 7,
            Kind::Len1 => 255,
            Kind::Len8Be => 65_536 - 8,
            Kind::LineLf => 100,
            Kind::LineMulti => 4096,
            Kind::Fixed7 => 7,
            Kind::FixedBig => 70_000,
            Kind::Raw => 65_536,
        }
    }

    /// Payload sizes at the boundaries of this kind.
    fn boundary_sizes(self) -> Vec<usize> {
        let m = self.max_payload();
        match self {
            Kind::Fixed7 | Kind::FixedBig => vec![m],
            Kind::Len4LeWhole => vec![0, 1, 2, 65_536 - 8, 65_536 - 7, 65_536 - 6, 4096, m - 1, m],
            Kind::Len8Be => vec![0, 1, 2, 65_536 - 8 - 1, m],
            Kind::Raw => vec![1, 2, 100],
            _ => vec![0, 1, 2, m / 2, m - 1, m],
        }
    }

    /// A payload of `len` bytes from `rng` that the kind can carry (no
    /// delimiter inside a line).
    fn payload(self, rng: &mut Rng, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        rng.fill(&mut p);
        if matches!(self, Kind::LineLf | Kind::LineMulti) {
            for b in &mut p {
                // Printable, and never '\n', '\r', '<', '=' or '>'.
                *b = b'a' + *b % 26;
            }
        }
        p
    }

    /// The bytes on the wire for `payload`, and the frame the handler gets.
    /// `alt` picks the kind's variant where there is one ("\r\n" lines).
    fn encode(self, payload: &[u8], alt: bool) -> (Vec<u8>, Vec<u8>) {
        let n = payload.len();
        let wire = match self {
            Kind::Len2Be => [&(n as u16).to_be_bytes()[..], payload].concat(),
            Kind::Len4LeWhole => [&b"hdr"[..], &((n + 7) as u32).to_le_bytes(), payload].concat(),
            Kind::Len1 => [&[n as u8][..], payload].concat(),
            Kind::Len8Be => [&(n as u64).to_be_bytes()[..], payload].concat(),
            Kind::LineLf => [payload, if alt { b"\r\n" } else { b"\n" }].concat(),
            Kind::LineMulti => [payload, b"<=>"].concat(),
            Kind::Fixed7 | Kind::FixedBig | Kind::Raw => payload.to_vec(),
        };
        let frame = match self {
            Kind::LineLf | Kind::LineMulti => payload.to_vec(),
            _ => wire.clone(),
        };
        (wire, frame)
    }

    /// A payload size for random streams.
    fn random_size(self, rng: &mut Rng) -> usize {
        match self {
            Kind::Fixed7 | Kind::FixedBig => self.max_payload(),
            Kind::Len1 => rng.range(0, 255),
            _ => match rng.range(0, 4) {
                0 => rng.range(0, 7),
                1 => rng.range(0, self.max_payload().min(2000)),
                _ => rng.range(0, 300),
            }
            .min(self.max_payload()),
        }
    }
}

/// Frames for `payloads`: the whole stream and the frames expected.
fn stream_of(kind: Kind, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut wire = Vec::new();
    let mut frames = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let (w, f) = kind.encode(p, i % 2 == 1);
        wire.extend_from_slice(&w);
        frames.push(f);
    }
    (wire, frames)
}

/// Reads one echo record: the frame the handler got.
fn read_record(c: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len)?;
    let mut f = vec![0u8; u32::from_le_bytes(len) as usize];
    c.read_exact(&mut f)?;
    Ok(f)
}

/// Sends `writes` from another thread (pausing where asked) while this
/// thread reads back one record per expected frame (RAW: records until
/// their bytes add up to the stream); checks each frame.
fn exchange(
    c: &mut TcpStream,
    kind: Kind,
    writes: Vec<(Vec<u8>, Option<Duration>)>,
    frames: &[Vec<u8>],
    what: &str,
) {
    let writer = spawn_writes(c, writes);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    if let Kind::Raw = kind {
        let want: Vec<u8> = frames.concat();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let f = read_record(c).unwrap_or_else(|e| panic!("{what}: after {} bytes: {e}", got.len()));
            assert!(!f.is_empty(), "{what}: an empty raw frame");
            assert!(f.len() <= 65_536, "{what}: a raw frame of {} bytes", f.len());
            got.extend_from_slice(&f);
        }
        assert!(got == want, "{what}: raw bytes differ");
    } else {
        for (i, want) in frames.iter().enumerate() {
            let got = read_record(c).unwrap_or_else(|e| panic!("{what}: frame {i}: {e}"));
            assert!(
                got == *want,
                "{what}: frame {i}: got {} bytes {:02x?}.., want {} bytes {:02x?}..",
                got.len(),
                &got[..got.len().min(16)],
                want.len(),
                &want[..want.len().min(16)]
            );
        }
    }
    writer.join().expect("writer thread");
}

/// The `EV close` lines logged so far, as (reason, frames).
fn close_events(p: &Proc) -> Vec<(u16, u32)> {
    p.stdout()
        .lines()
        .filter(|l| l.contains("EV close serial="))
        .map(|l| {
            let field = |name: &str| -> u32 {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {l}"))
            };
            (field("reason=") as u16, field("packets="))
        })
        .collect()
}

/// Waits until `n` close events are logged and returns them.
fn wait_close_events(p: &Proc, n: usize) -> Vec<(u16, u32)> {
    let ok = wait_for(Duration::from_secs(5), || close_events(p).len() >= n);
    let ev = close_events(p);
    assert!(ok && ev.len() == n, "{} close events, want {n}: {ev:?}", ev.len());
    ev
}

#[test]
fn every_kind_delivers_frames_of_every_boundary_size() {
    for kind in ALL {
        let p = Proc::testsrv(&kind.env());
        let mut rng = Rng::new(0xb0da + kind as u64);
        let payloads: Vec<Vec<u8>> = kind
            .boundary_sizes()
            .into_iter()
            .map(|n| kind.payload(&mut rng, n))
            .collect();
        let (wire, frames) = stream_of(kind, &payloads);
        let mut c = connect(p.port);
        if let Kind::Raw = kind {
            // A raw read is what arrived; pause between writes so that a
            // one-byte write is seen as one frame at least once.
            for (w, f) in payloads.iter().zip(&frames) {
                exchange(
                    &mut c,
                    kind,
                    vec![(w.clone(), None)],
                    std::slice::from_ref(f),
                    "raw",
                );
            }
        } else {
            exchange(&mut c, kind, vec![(wire, None)], &frames, &format!("{kind:?}"));
        }
        drop(c);
        let ev = wait_close_events(&p, 1);
        assert_eq!(ev[0].0, AKG_CLOSED, "{kind:?}");
        if !matches!(kind, Kind::Raw) {
            assert_eq!(ev[0].1 as usize, frames.len(), "{kind:?}");
        }
        let s = p.stop_clean();
        assert_eq!(summary(&s.stdout, "violations"), 0, "{kind:?}");
    }
}

#[test]
fn a_stream_split_at_every_offset_gives_the_same_frames() {
    for kind in ALL {
        if let Kind::FixedBig = kind {
            continue; // 70,000 offsets: covered by the random cuts below
        }
        let p = Proc::testsrv(&kind.env());
        let mut rng = Rng::new(0x5b11 + kind as u64);
        let sizes: &[usize] = match kind {
            Kind::Fixed7 => &[7, 7, 7, 7, 7],
            Kind::Raw => &[200],
            _ => &[0, 1, 5, 40, 150],
        };
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| kind.payload(&mut rng, n.min(kind.max_payload())))
            .collect();
        let (wire, frames) = stream_of(kind, &payloads);
        let mut c = connect(p.port);
        for off in 1..wire.len() {
            // The first part on its own (a pause) near the frames' edges
            // and at every 8th offset; back-to-back writes otherwise.
            let pause = (off < 12 || off % 8 == 0).then_some(Duration::from_millis(1));
            let writes = vec![(wire[..off].to_vec(), pause), (wire[off..].to_vec(), None)];
            exchange(&mut c, kind, writes, &frames, &format!("{kind:?} split at {off}"));
        }
        drop(c);
        let ev = wait_close_events(&p, 1);
        assert_eq!(ev[0].0, AKG_CLOSED, "{kind:?}");
        if !matches!(kind, Kind::Raw) {
            assert_eq!(ev[0].1 as usize, frames.len() * (wire.len() - 1), "{kind:?}");
        }
        let s = p.stop_clean();
        assert_eq!(summary(&s.stdout, "violations"), 0, "{kind:?}");
    }
}

#[test]
fn ten_thousand_frames_pipelined_in_one_write() {
    for kind in ALL {
        if matches!(kind, Kind::Raw | Kind::FixedBig) {
            continue; // raw has no frames of its own; 700 MB is not a test
        }
        let p = Proc::testsrv(&kind.env());
        let mut rng = Rng::new(0x1000 + kind as u64);
        let payloads: Vec<Vec<u8>> = (0..10_000)
            .map(|_| {
                let n = kind.random_size(&mut rng).min(300);
                kind.payload(&mut rng, if matches!(kind, Kind::Fixed7) { 7 } else { n })
            })
            .collect();
        let (wire, frames) = stream_of(kind, &payloads);
        let mut c = connect(p.port);
        exchange(
            &mut c,
            kind,
            vec![(wire, None)],
            &frames,
            &format!("{kind:?} pipelined"),
        );
        drop(c);
        assert_eq!(wait_close_events(&p, 1), vec![(AKG_CLOSED, 10_000)], "{kind:?}");
        let s = p.stop_clean();
        assert_eq!(summary(&s.stdout, "packets"), 10_000, "{kind:?}");
    }
}

#[test]
fn random_streams_cut_at_random_points_give_the_same_frames() {
    let seed = std::env::var("MARIO_TEST_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x6672_616d_6573);
    eprintln!("MARIO_TEST_SEED=0x{seed:x}");
    for kind in ALL {
        let p = Proc::testsrv(&kind.env());
        let mut rng = Rng::new(seed ^ (kind as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut c = connect(p.port);
        let mut n_frames = 0;
        for round in 0..8 {
            let n = if let Kind::FixedBig = kind {
                3
            } else {
                rng.range(20, 300)
            };
            let payloads: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = kind.random_size(&mut rng);
                    kind.payload(&mut rng, len)
                })
                .collect();
            let (wire, frames) = stream_of(kind, &payloads);
            n_frames += frames.len();
            let writes = random_writes(&mut rng, &wire, 80_000, 20);
            exchange(
                &mut c,
                kind,
                writes,
                &frames,
                &format!("seed 0x{seed:x} {kind:?} round {round}"),
            );
        }
        drop(c);
        let ev = wait_close_events(&p, 1);
        if !matches!(kind, Kind::Raw) {
            assert_eq!(
                ev,
                vec![(AKG_CLOSED, n_frames as u32)],
                "seed 0x{seed:x} {kind:?}"
            );
        }
        p.stop_clean();
    }
}

/// Sends `good` then `bad` on a new connection and checks that the good
/// frame is echoed, then that the server closes within 100 ms of the bad
/// bytes.
fn closed_after(p: &Proc, kind: Kind, good: &[u8], bad: &[u8], what: &str) {
    let mut c = connect(p.port);
    let frames = [kind.encode(good, false).1];
    exchange(
        &mut c,
        kind,
        vec![(kind.encode(good, false).0, None)],
        &frames,
        what,
    );
    let t0 = Instant::now();
    c.write_all(bad).unwrap();
    let closed = closed_within(&mut c, Duration::from_millis(100));
    assert!(closed, "{what}: not closed within 100 ms ({:?})", t0.elapsed());
}

#[test]
fn oversize_and_malformed_frames_close_within_100ms_with_one_close_and_one_warning() {
    struct Case {
        kind: Kind,
        bad: Vec<u8>,
        warning: &'static str,
    }
    let cases = [
        // One byte over max_frame (1,026 = 2 + 1,024).
        Case {
            kind: Kind::Len2Be,
            bad: 1025u16.to_be_bytes().to_vec(),
            warning: "a frame of 1027 bytes, over the framing's max_frame",
        },
        Case {
            kind: Kind::Len2Be,
            bad: [0xff, 0xff].to_vec(),
            warning: "a frame of 65537 bytes, over the framing's max_frame",
        },
        // A field counting the whole frame that is less than the header.
        Case {
            kind: Kind::Len4LeWhole,
            bad: [&b"hdr"[..], &6u32.to_le_bytes()].concat(),
            warning: "a length field of -1 after adjustment",
        },
        Case {
            kind: Kind::Len4LeWhole,
            bad: [&b"hdr"[..], &100_001u32.to_le_bytes()].concat(),
            warning: "a frame of 100001 bytes, over the framing's max_frame",
        },
        // The largest 8-byte field: no overflow anywhere.
        Case {
            kind: Kind::Len8Be,
            bad: u64::MAX.to_be_bytes().to_vec(),
            warning: "over the framing's max_frame",
        },
        // A line of 101 bytes (max 100), complete.
        Case {
            kind: Kind::LineLf,
            bad: [&[b'x'; 101][..], b"\n"].concat(),
            warning: "a frame of 101 bytes, over the framing's max_frame",
        },
        // A line that can no longer end within 100 bytes: no delimiter yet.
        Case {
            kind: Kind::LineLf,
            bad: vec![b'y'; 102],
            warning: "a line of at least 102 bytes, over the framing's max_frame",
        },
        Case {
            kind: Kind::LineMulti,
            bad: vec![b'z'; 5000],
            warning: "over the framing's max_frame",
        },
    ];
    for kind in [
        Kind::Len2Be,
        Kind::Len4LeWhole,
        Kind::Len8Be,
        Kind::LineLf,
        Kind::LineMulti,
    ] {
        let p = Proc::testsrv(&kind.env());
        let mine: Vec<&Case> = cases.iter().filter(|c| c.kind as u8 == kind as u8).collect();
        for (i, case) in mine.iter().enumerate() {
            closed_after(&p, kind, b"ok", &case.bad, &format!("{kind:?} case {i}"));
            let ev = wait_close_events(&p, i + 1);
            assert_eq!(ev[i], (AKG_ERROR, 1), "{kind:?} case {i}: close event");
        }
        // The server goes on serving.
        let mut c = connect(p.port);
        let (w, f) = kind.encode(b"after", false);
        exchange(&mut c, kind, vec![(w, None)], &[f], "after the bad ones");
        drop(c);
        wait_close_events(&p, mine.len() + 1);
        let s = p.stop_clean();
        let warnings: Vec<&str> = s
            .stdout
            .lines()
            .chain(s.stderr.lines())
            .filter(|l| l.contains("closing") && l.contains("[WARN]"))
            .collect();
        assert_eq!(warnings.len(), mine.len(), "{kind:?}: warnings {warnings:#?}");
        for (case, line) in mine.iter().zip(&warnings) {
            assert!(
                line.contains(case.warning),
                "{kind:?}: {line:?} lacks {:?}",
                case.warning
            );
        }
        assert_eq!(summary(&s.stdout, "violations"), 0);
    }
}

#[test]
fn a_frame_without_a_frame_handler_closes_its_connection_with_a_warning() {
    let mut env = Kind::LineLf.env();
    env.push(("TS_NOFRAMEFUNC", "1"));
    let p = Proc::testsrv(&env);
    let mut c = connect(p.port);
    c.write_all(b"hello\n").unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    assert_eq!(wait_close_events(&p, 1), vec![(AKG_CLOSED, 0)]);
    let s = p.stop_clean();
    assert!(
        s.stdout.contains("no frame handler is registered")
            || s.stderr.contains("no frame handler is registered"),
        "no warning:\n{}",
        tail(&s.stdout, 10)
    );
}

#[test]
fn a_frame_handler_closes_or_fails_and_later_frames_are_not_delivered() {
    let p = Proc::testsrv(&Kind::LineLf.env());
    // close_err_conn from the handler (reason `closed`, as for packets):
    // "a" is echoed, "b" never is.
    let mut c = connect(p.port);
    c.write_all(b"a\nCLOSE\nb\n").unwrap();
    assert_eq!(read_record(&mut c).unwrap(), b"a");
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "after CLOSE: {rest:?}");
    assert_eq!(wait_close_events(&p, 1), vec![(AKG_CLOSED, 2)]);
    // A non-zero return: closed as an error.
    let mut c = connect(p.port);
    c.write_all(b"FAIL\r\nb\n").unwrap();
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "after FAIL: {rest:?}");
    assert_eq!(wait_close_events(&p, 2)[1], (AKG_ERROR, 1));
    p.stop_clean();
}

#[test]
fn big_endian_head_dispatches_by_id_in_network_order() {
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_FRAMING", "head"),
        ("TS_BE", "1"),
        ("TS_MAXFRAME", "4000"),
    ]);
    let be = |len: usize, id: u16, fill: u8| -> Vec<u8> {
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&STX.to_be_bytes());
        f.extend_from_slice(&(len as u16).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.resize(len, fill);
        f
    };
    let mut c = connect(p.port);
    // Sizes at the boundaries of max_frame 4,000 (over the classic 1,500).
    let frames: Vec<Vec<u8>> = [8usize, 9, 1500, 1501, 3999, 4000]
        .iter()
        .map(|&n| be(n, ID_ECHO, n as u8))
        .collect();
    let want = frames.concat();
    c.write_all(&want).unwrap();
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert!(got == want, "echo of big-endian packets differs");
    // One over max_frame is a bad head, as in the original: closed.
    c.write_all(&be(4001, ID_ECHO, 1)).unwrap();
    assert!(closed_within(&mut c, Duration::from_millis(100)));
    assert_eq!(wait_close_events(&p, 1), vec![(AKG_CLOSED, 6)]);
    // A host-order head is not this server's: the stx does not match.
    let mut c = connect(p.port);
    c.write_all(&frame(STX, ID_ECHO, b"host order")).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    assert_eq!(wait_close_events(&p, 2)[1], (AKG_CLOSED, 0));
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

#[test]
fn settings_mario_set_framing_refuses_name_the_field() {
    ensure_built();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("TS_FRAMING", "length"), ("TS_LSIZE", "3")], "length_size is 3"),
        (&[("TS_FRAMING", "length"), ("TS_LSIZE", "0")], "length_size is 0"),
        (
            &[("TS_FRAMING", "length"), ("TS_LSIZE", "258")],
            "length_size is 258",
        ),
        (
            &[("TS_FRAMING", "length"), ("TS_LSIZE", "4"), ("TS_LOFF", "70000")],
            "length_offset is 70000",
        ),
        (
            &[
                ("TS_FRAMING", "length"),
                ("TS_LSIZE", "4"),
                ("TS_LOFF", "10"),
                ("TS_MAXFRAME", "12"),
            ],
            "max_frame is 12",
        ),
        (
            &[
                ("TS_FRAMING", "length"),
                ("TS_LSIZE", "4"),
                ("TS_MAXFRAME", "67108865"),
            ],
            "max_frame is 67108865",
        ),
        (&[("TS_FRAMING", "fixed")], "frame_size is 0"),
        (
            &[("TS_FRAMING", "fixed"), ("TS_FSIZE", "67108865")],
            "frame_size is 67108865",
        ),
        (
            &[("TS_FRAMING", "line"), ("TS_DELIM", "")],
            "delimiter is 0 bytes",
        ),
        (
            &[("TS_FRAMING", "line"), ("TS_DELIM", "0123456789abcdefg")],
            "delimiter is 17 bytes",
        ),
        (
            &[("TS_FRAMING", "line"), ("TS_MAXFRAME", "40000")],
            "max_frame is 40000",
        ),
        (&[("TS_FRAMING", "head"), ("TS_MAXFRAME", "7")], "max_frame is 7"),
        (
            &[("TS_FRAMING", "head"), ("TS_MAXFRAME", "65536")],
            "max_frame is 65536",
        ),
        (&[("TS_FRAMING", "9")], "kind is 9"),
    ];
    for (env, message) in cases {
        let mut cmd = Command::new(root().join("target/ctests/testsrv"));
        cmd.env("TS_PORT", free_port().to_string())
            .env("ASAN_OPTIONS", ASAN_OPTIONS)
            .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
            .stdin(Stdio::null());
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run testsrv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("mario_set_framing: {message}")) && stderr.contains("FRAMING_REFUSED"),
            "{env:?}: stderr lacks {message:?}:\n{stderr}"
        );
    }
}

/// The server's virtual memory size, in KiB.
fn vm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A length field announcing a 64 MiB frame reserves nothing much until
/// the bytes come: 200 connections that each sent a header and one byte
/// cost the server a few hundred KiB, not 200 x 64 MiB of address space
/// (which a memory limit would turn into an abort of the whole process).
/// The frame still completes when its bytes arrive.
#[test]
fn announced_lengths_reserve_nothing_until_the_bytes_arrive() {
    const MAX: u32 = 64 << 20;
    let p = Proc::testsrv(&[
        ("TS_WORKERS", "2"),
        ("TS_OUTLIMIT", "268435456"),
        ("TS_FRAMING", "length"),
        ("TS_LSIZE", "4"),
        ("TS_BE", "1"),
        ("TS_MAXFRAME", "67108864"),
    ]);
    let pid = p.pid();
    let header = (MAX - 4).to_be_bytes();
    let mut conns: Vec<TcpStream> = (0..200).map(|_| connect(p.port)).collect();
    let before = vm_kib(pid);
    for c in &mut conns {
        c.write_all(&header).unwrap();
        c.write_all(b"x").unwrap();
    }
    // Let the server read them all.
    thread::sleep(Duration::from_millis(300));
    let grown = vm_kib(pid).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "200 announced 64 MiB frames grew the server by {grown} KiB"
    );
    // One of them completes: the whole 64 MiB frame is delivered.
    let mut c = conns.pop().unwrap();
    let body: Vec<u8> = (0..MAX as usize - 5).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&body).unwrap());
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let frame = read_record(&mut c).unwrap();
    writer.join().unwrap();
    assert_eq!(frame.len(), MAX as usize);
    assert_eq!(&frame[..5], &[header[0], header[1], header[2], header[3], b'x']);
    assert!(frame[5..].iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    drop(conns);
    drop(c);
    wait_close_events(&p, 200);
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
