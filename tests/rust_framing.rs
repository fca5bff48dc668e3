//! The Rust API's framing choice (`ServerBuilder::framing`) and its
//! `on_frame` handler, in-process over loopback: a line server, a
//! length-field server with frames larger than the read buffer, big-endian
//! `HEAD` packets from `send_packet`, and settings the builder refuses.

mod common;
use common::*;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mario::{AKG_CLOSED, AKG_ERROR, Framing, Server, Verdict};

#[test]
fn a_line_server_gets_each_line_without_its_delimiter() {
    let closes: Arc<Mutex<Vec<u16>>> = Arc::default();
    let closes2 = closes.clone();
    let r = Running::start(
        Server::builder()
            .workers(2)
            .framing(Framing::Line {
                delimiter: b"\n".to_vec(),
                max_frame: 64,
            })
            .on_frame(|c, _, line| {
                if line == b"quit" {
                    c.close(AKG_CLOSED);
                    return Ok(Verdict::Continue);
                }
                let mut reply = b"> ".to_vec();
                reply.extend_from_slice(line);
                reply.push(b'\n');
                c.send(&reply);
                Ok(Verdict::Continue)
            })
            .on_close(move |_, _, reason| closes2.lock().unwrap().push(reason)),
    );
    let mut s = r.connect();
    // "\r\n" and "\n" endings, an empty line, a line cut in three writes.
    s.write_all(b"hello\r\n\nwor").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    s.write_all(b"l").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    s.write_all(b"d\nquit\nnever\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"> hello\n> \n> world\n");
    assert!(wait_for(Duration::from_secs(5), || closes.lock().unwrap().len() == 1));
    assert_eq!(*closes.lock().unwrap(), vec![AKG_CLOSED]);

    // A line over max_frame (64): closed as an error, once.
    let mut s = r.connect();
    s.write_all(&[b'x'; 65]).unwrap();
    s.write_all(b"\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_millis(100)));
    assert!(wait_for(Duration::from_secs(5), || closes.lock().unwrap().len() == 2));
    assert_eq!(*closes.lock().unwrap(), vec![AKG_CLOSED, AKG_ERROR]);
    r.stop();
}

#[test]
fn a_length_field_server_gets_whole_frames_larger_than_the_read_buffer() {
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let sizes2 = sizes.clone();
    let r = Running::start(
        Server::builder()
            .workers(1)
            .output_limit(16 << 20)
            .framing(Framing::Length {
                offset: 0,
                size: 4,
                adjust: 0,
                big_endian: true,
                max_frame: 4 << 20,
            })
            .on_frame(move |c, _, f| {
                sizes2.lock().unwrap().push(f.len());
                // The frame includes its length field: echo it whole.
                c.send(f);
                Ok(Verdict::Continue)
            }),
    );
    let mut s = r.connect();
    let mut want = Vec::new();
    let mut rng = Rng::new(77);
    let lens = [0usize, 1, 65_531, 65_532, 65_533, 200_000, (4 << 20) - 4];
    for &n in &lens {
        let mut body = vec![0u8; n];
        rng.fill(&mut body);
        want.extend_from_slice(&(n as u32).to_be_bytes());
        want.extend_from_slice(&body);
    }
    let mut w = s.try_clone().unwrap();
    let all = want.clone();
    let writer = std::thread::spawn(move || w.write_all(&all).unwrap());
    let mut got = vec![0u8; want.len()];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == want, "echoed frames differ");
    assert_eq!(
        *sizes.lock().unwrap(),
        lens.iter().map(|n| n + 4).collect::<Vec<_>>()
    );
    r.stop();
}

#[test]
fn big_endian_head_packets_round_trip_through_send_packet() {
    const ID: u16 = 0x0102;
    let r = Running::start(
        Server::builder()
            .workers(1)
            .stx(STX)
            .framing(Framing::Head {
                big_endian: true,
                max_frame: 1500,
            })
            .on_packet(ID, |c, _, pkt| {
                let body = pkt.body().to_vec();
                c.send_packet(ID + 1, &body);
                Ok(Verdict::Continue)
            }),
    );
    let mut s = r.connect();
    let mut pkt = Vec::new();
    pkt.extend_from_slice(&STX.to_be_bytes());
    pkt.extend_from_slice(&13u16.to_be_bytes());
    pkt.extend_from_slice(&ID.to_be_bytes());
    pkt.extend_from_slice(b"hello");
    s.write_all(&pkt).unwrap();
    let mut got = [0u8; 13];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], &STX.to_be_bytes());
    assert_eq!(&got[4..6], &13u16.to_be_bytes());
    assert_eq!(&got[6..8], &(ID + 1).to_be_bytes());
    assert_eq!(&got[8..], b"hello");
    r.stop();
}

#[test]
fn the_builder_refuses_bad_framings_naming_the_field() {
    let cases = [
        (
            Framing::Length {
                offset: 0,
                size: 3,
                adjust: 0,
                big_endian: false,
                max_frame: 100,
            },
            "length_size is 3",
        ),
        (Framing::Fixed { size: 0 }, "frame_size is 0"),
        (
            Framing::Line {
                delimiter: Vec::new(),
                max_frame: 10,
            },
            "delimiter is 0 bytes",
        ),
    ];
    for (f, msg) in cases {
        let e = match Server::builder().port(0).framing(f.clone()).build() {
            Ok(_) => panic!("{f:?} accepted"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{f:?}");
        assert!(e.to_string().contains(msg), "{f:?}: {e}");
    }
}
