//! A connection's input path, one `recv` at a time: put the carried partial
//! packet back at the start of the worker's read buffer, read after it,
//! dispatch every complete packet in place, and carry what is left (the
//! beginning of one packet) until the next read.
//!
//! The worker calls [`read_once`] with the real `recv`; the fuzz harness
//! (feature `harness`) calls the same function with simulated reads.
//!
//! Uses: conn::record, proto, sys (`Io`).

use std::io;
use std::os::fd::RawFd;

use super::record::Conn;
use crate::proto::{self, Head, Scan};
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
    /// Decoding ended early (a bad head, or the packet callback returned
    /// false) with `avail` bytes in the buffer; nothing is carried. The
    /// caller closes the connection.
    Stopped {
        /// How [`proto::scan`] ended.
        end: Scan,
        /// Bytes in the read buffer for this read (carried + new).
        avail: usize,
    },
}

/// Reads once from connection `p` into `rbuf` with `recv(fd, buf)` and
/// dispatches the complete packets through `on_packet(head, rest)` (as for
/// [`proto::scan`]: `rest` starts at the packet). `now` is the current
/// tick: it becomes the connection's last read, and the start of a packet
/// that begins in this read and stays incomplete.
///
/// `p` must be a live record with no other reference in use; none is held
/// while `on_packet` runs, so the callback may reach the connection again
/// (and close it).
pub(crate) fn read_once(
    p: *mut Conn,
    rbuf: &mut [u8],
    stx: u32,
    now: u32,
    recv: impl FnOnce(RawFd, &mut [u8]) -> Io,
    on_packet: impl FnMut(Head, &mut [u8]) -> bool,
) -> Input {
    // SAFETY: the caller's contract; the reference ends before `on_packet`.
    let c = unsafe { &mut *p };
    let carried = proto::carry_in(&mut c.partial, rbuf);
    let n = match recv(c.fd, &mut rbuf[carried..]) {
        Io::Done(0) => return Input::Eof,
        Io::Done(n) => n,
        Io::WouldBlock => {
            proto::carry_out(&mut c.partial, &rbuf[..carried]);
            return Input::Drained;
        }
        Io::Err(e) => return Input::Failed(e),
    };
    c.last_read = now;
    let avail = carried + n;
    let used = match proto::scan(&mut rbuf[..avail], stx, on_packet) {
        Scan::Used(used) => used,
        end => return Input::Stopped { end, avail },
    };
    // SAFETY: as above; the callbacks have returned.
    let c = unsafe { &mut *p };
    if used < avail && (carried == 0 || used > 0) {
        // A new packet began in this read.
        c.packet_start = now;
    }
    proto::carry_out(&mut c.partial, &rbuf[used..avail]);
    Input::Read {
        full: n == rbuf.len() - carried,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SIZE_OF_HEAD;

    const STX: u32 = 0x8eb6_9af7;

    fn feed(c: &mut Conn, rbuf: &mut [u8], bytes: &[u8], now: u32, got: &mut Vec<Vec<u8>>) -> Input {
        read_once(
            c,
            rbuf,
            STX,
            now,
            |_, buf| {
                buf[..bytes.len()].copy_from_slice(bytes);
                Io::Done(bytes.len())
            },
            |h, rest| {
                got.push(rest[..h.pkglen as usize].to_vec());
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
        assert_eq!(c.partial, stream[a.len()..cut]);
        assert_eq!((c.last_read, c.packet_start), (5, 5));
        // Would-block keeps the partial as it was.
        let r = read_once(&mut c, &mut rbuf, STX, 6, |_, _| Io::WouldBlock, |_, _| true);
        assert!(matches!(r, Input::Drained));
        assert_eq!(c.partial, stream[a.len()..cut]);
        assert_eq!(c.last_read, 5);
        assert!(matches!(
            feed(&mut c, &mut rbuf, &stream[cut..], 7, &mut got),
            Input::Read { .. }
        ));
        assert_eq!(got, vec![a, b]);
        assert!(c.partial.is_empty());
        assert_eq!(c.partial.capacity(), 0, "an idle connection keeps no buffer");
        assert_eq!(c.packet_start, 5, "no packet began in the last read");
    }

    #[test]
    fn eof_errors_bad_heads_and_full_reads_are_reported() {
        let mut c = Conn::new(0, std::ptr::null_mut());
        let mut rbuf = vec![0u8; 2 * SIZE_OF_HEAD];
        let mut got = Vec::new();
        assert!(matches!(
            read_once(&mut c, &mut rbuf, STX, 0, |_, _| Io::Done(0), |_, _| true),
            Input::Eof
        ));
        let e = read_once(
            &mut c,
            &mut rbuf,
            STX,
            0,
            |_, _| Io::Err(io::Error::from_raw_os_error(libc::ECONNRESET)),
            |_, _| true,
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
}
