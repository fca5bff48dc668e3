//! One load-generating thread: its own mio `Poll` (edge-triggered) over a
//! share of the connections ("slots").
//!
//! In rps, cps and hold all requests are the same frame, so a connection's
//! unsent output is always a suffix of `depth` back-to-back copies of it
//! (`tmpl`): we keep only a byte count, and never allocate per request. In bw
//! every packet carries its connection's tag and its own sequence number, so
//! that an echo can be checked byte for byte against the packet it answers:
//! the packets are built into the connection's own output buffer (at most
//! `depth` packets, its capacity kept). Replies are read into one scratch
//! buffer per thread and parsed by their `pkglen`; only a partial frame left at
//! the end of a read is copied into the connection's own (normally empty)
//! buffer.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::args::{Config, Mode};

pub const HEAD_LEN: usize = 8;
/// Connect / reply timeout: a slot waiting longer than this is a failure.
const TIMEOUT_NS: u64 = 5_000_000_000;
const SCAN_EVERY_NS: u64 = 250_000_000;
/// Longest the final drain may take (timeouts fire before that).
const DRAIN_MAX_NS: u64 = 7_000_000_000;
/// Scratch read buffer: always holds a whole maximum-size frame.
const READ_BUF: usize = 256 * 1024;
/// Connections being established at once (whole process) in rps and hold;
/// in hold, a connection is being established until its LOGIN is answered.
const MAX_CONNECTING: usize = 1000;
/// Random picks tried before a churn or send is given up as "skipped".
const PICK_TRIES: usize = 32;

/// Phases, set by the main thread.
pub const WARMUP: u8 = 0; // hold: the set-up phase
pub const MEASURE: u8 = 1;
pub const DRAIN: u8 = 2;
pub const STOP: u8 = 3;

/// Failure kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Connect = 0,
    Eof = 1,
    Reset = 2,
    Timeout = 3,
    Protocol = 4,
    Io = 5,
    /// bw: an echo that is not, byte for byte, the packet it answers.
    Mismatch = 6,
}
pub const KINDS: [&str; 7] = ["connect", "eof", "reset", "timeout", "protocol", "io", "mismatch"];

/// Counter indices (per thread, published to `Shared`).
/// Main operations: rps replies, cps completed cycles, hold answered sends (not LOGINs).
pub const C_OPS_TOTAL: usize = 0;
pub const C_OPS_MEASURED: usize = 1;
/// Every reply frame received (LOGINs included).
pub const C_REPLIES_TOTAL: usize = 2;
/// Requests written (whole) to a socket.
pub const C_SENT_TOTAL: usize = 3;
/// Successful connects.
pub const C_CONNECTS: usize = 4;
/// hold: connections open and logged in now.
pub const C_HELD: usize = 5;
/// hold: churn reopens completed (LOGIN answered) in the measured window.
pub const C_RECONNECTS: usize = 6;
pub const C_SKIPPED_SENDS: usize = 7;
pub const C_SKIPPED_CHURN: usize = 8;
/// hold: 1 once the set-up phase is over on this thread.
pub const C_SETUP_DONE: usize = 9;
/// hold: failures during set-up.
pub const C_SETUP_FAILURES: usize = 10;
/// Bytes written (client to server) and read (server to client) in the
/// measured window.
pub const C_BYTES_OUT: usize = 11;
pub const C_BYTES_IN: usize = 12;
pub const C_ERR: usize = 13; // .. C_ERR + KINDS.len()
pub const NC: usize = C_ERR + KINDS.len();

#[repr(align(128))]
pub struct Counters(pub [AtomicU64; NC]);

pub struct Shared {
    pub phase: AtomicU8,
    pub threads: Vec<Counters>,
}

impl Shared {
    pub fn new(n: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(WARMUP),
            threads: (0..n)
                .map(|_| Counters(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Sum of counter `i` over the threads.
    pub fn sum(&self, i: usize) -> u64 {
        self.threads.iter().map(|c| c.0[i].load(Ordering::Relaxed)).sum()
    }

    pub fn errors(&self) -> u64 {
        (C_ERR..NC).map(|i| self.sum(i)).sum()
    }
}

pub struct WorkerResult {
    pub hist: Histogram<u64>,
    pub churn_hist: Histogram<u64>,
    pub cnt: [u64; NC],
}

pub fn new_hist() -> Histogram<u64> {
    // nanoseconds, 1 ns .. 100 s, 3 significant digits
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Closed,
    Connecting,
    Open,
}

struct Slot {
    stream: Option<TcpStream>,
    /// Bumped on every close, part of the token: stale events are ignored.
    generation: u32,
    st: St,
    /// An "open" is in progress: connecting; hold: until the LOGIN reply; cps: the whole cycle.
    inflight: bool,
    /// hold: LOGIN answered.
    logged: bool,
    /// hold: this connection was reopened by churn.
    churned: bool,
    /// In the open queue.
    queued: bool,
    /// Requests sent (or queued) and not answered yet.
    outstanding: u32,
    /// Ring head in `times`.
    head: u32,
    /// Bytes not yet written: a suffix of `tmpl` (bw: of `out`).
    pending: u32,
    /// bw: packets queued for this connection, the last `pending` bytes unsent.
    out: Vec<u8>,
    /// bw: sequence numbers of the next packet to send and to be echoed.
    seq_sent: u32,
    seq_echoed: u32,
    /// When the connect started (ns).
    started: u64,
    /// Last progress (ns), for timeouts.
    last: u64,
    /// Partial reply frame carried over between reads.
    partial: Vec<u8>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            stream: None,
            generation: 0,
            st: St::Closed,
            inflight: false,
            logged: false,
            churned: false,
            queued: false,
            outstanding: 0,
            head: 0,
            pending: 0,
            out: Vec::new(),
            seq_sent: 0,
            seq_echoed: 0,
            started: 0,
            last: 0,
            partial: Vec::new(),
        }
    }
}

/// Parses complete frames at the start of `buf`: (frames, bytes consumed), or
/// Err on a bad head (wrong stx, pkglen < 8).
pub fn parse_frames(buf: &[u8], stx: u32) -> Result<(u32, usize), ()> {
    let mut pos = 0;
    let mut n = 0;
    while buf.len() - pos >= HEAD_LEN {
        let h = &buf[pos..pos + HEAD_LEN];
        let s = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
        let len = u16::from_ne_bytes([h[4], h[5]]) as usize;
        if s != stx || len < HEAD_LEN {
            return Err(());
        }
        if buf.len() - pos < len {
            break;
        }
        pos += len;
        n += 1;
    }
    Ok((n, pos))
}

/// Offsets in a bw packet of the connection's tag and of the sequence number.
const BW_TAG: usize = HEAD_LEN;
const BW_SEQ: usize = HEAD_LEN + 4;

/// The bw packet template: head (host byte order), room for the tag and the
/// sequence number (zeros), then a fixed byte pattern up to `size`.
pub fn echo_frame(stx: u32, id: u16, size: usize) -> Vec<u8> {
    let mut f = request_frame(stx, id, size - HEAD_LEN, 0);
    for (j, b) in f.iter_mut().enumerate().skip(BW_SEQ + 4) {
        *b = (j as u8).wrapping_mul(31).wrapping_add(7);
    }
    f
}

/// A connection's tag in its bw packets: worker thread and slot.
fn bw_tag(tid: usize, slot: usize) -> u32 {
    ((tid as u32) << 20) ^ slot as u32
}

/// Checks that the whole frames `buf` holds (as `parse_frames` cut them)
/// are, byte for byte, the bw packets `tmpl` with `tag` and the sequence
/// numbers from `seq` on: the number of frames, or Err at the first that
/// differs.
pub fn verify_echoes(buf: &[u8], tmpl: &[u8], tag: u32, seq: u32) -> Result<u32, ()> {
    let n = tmpl.len();
    let mut k = 0u32;
    let mut pos = 0;
    while pos < buf.len() {
        let f = &buf[pos..buf.len().min(pos + n)];
        let ok = f.len() == n
            && u16::from_ne_bytes([f[4], f[5]]) as usize == n
            && f[..BW_TAG] == tmpl[..BW_TAG]
            && f[BW_TAG..BW_SEQ] == tag.to_ne_bytes()
            && f[BW_SEQ..BW_SEQ + 4] == seq.wrapping_add(k).to_ne_bytes()
            && f[BW_SEQ + 4..] == tmpl[BW_SEQ + 4..];
        if !ok {
            return Err(());
        }
        pos += n;
        k += 1;
    }
    Ok(k)
}

/// One request frame: head (host byte order) + body (u16 uid, then zeros).
pub fn request_frame(stx: u32, id: u16, body: usize, uid: u16) -> Vec<u8> {
    let len = HEAD_LEN + body;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&stx.to_ne_bytes());
    f.extend_from_slice(&(len as u16).to_ne_bytes());
    f.extend_from_slice(&id.to_ne_bytes());
    f.extend_from_slice(&uid.to_ne_bytes()[..body.min(2)]);
    f.resize(len, 0);
    f
}

fn err_kind(e: &io::Error) -> Kind {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => Kind::Reset,
        ErrorKind::UnexpectedEof => Kind::Eof,
        ErrorKind::TimedOut => Kind::Timeout,
        _ => Kind::Io,
    }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: fd is an open socket; the option value is a valid c_int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Source address number `i` spread over 127.0.0.0/8.
pub fn source_addr(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, ((i / 250) % 250) as u8, (i % 250 + 1) as u8)
}

/// A sockaddr for `addr`, with its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (ss, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// Starts a non-blocking connect. `src`: loopback source address to bind first;
/// `rst`: close with a RST; `nodelay`: TCP_NODELAY (needed to pipeline requests).
pub fn start_connect(
    addr: &SocketAddr,
    src: Option<Ipv4Addr>,
    rst: bool,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; the stream closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if nodelay {
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if rst {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and linger struct.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(ip) = src {
        // Let connect() pick the port (4-tuple unique), not bind(): ports never run out.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let (ss, len) = sockaddr(&SocketAddr::from((ip, 0)));
        // SAFETY: ss holds a valid sockaddr_in of length len.
        if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a valid sockaddr of length len.
    if unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// A xorshift64* generator: enough to pick random connections.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

pub struct Worker<'a> {
    cfg: &'a Config,
    shared: &'a Shared,
    tid: usize,
    nthreads: usize,
    poll: Poll,
    slots: Vec<Slot>,
    /// Send times ring, `depth` per slot.
    times: Vec<u64>,
    depth: usize,
    /// `depth` copies of the request (bw: one packet, its tag and sequence zero).
    tmpl: Vec<u8>,
    bw: bool,
    req_len: usize,
    buf: Vec<u8>,
    base: Instant,
    hist: Histogram<u64>,
    churn_hist: Histogram<u64>,
    cnt: [u64; NC],
    rng: Rng,
    phase: u8,
    connecting: usize,
    max_connecting: usize,
    /// Slots with an open in progress (see `Slot::inflight`).
    inflight: usize,
    outstanding: u64,
    queue: VecDeque<u32>,
    /// Failed slots to retry at the next scan (rps, cps).
    retry: Vec<u32>,
    src_seq: u64,
    spread: bool,
    churn_rate: f64,
    send_rate: f64,
    churn_done: u64,
    sends_done: u64,
    measure_start: u64,
    drain_start: u64,
}

impl<'a> Worker<'a> {
    /// Worker `tid` of `nthreads`, owning `nslots` slots.
    pub fn new(
        cfg: &'a Config,
        shared: &'a Shared,
        tid: usize,
        nthreads: usize,
        nslots: usize,
    ) -> Worker<'a> {
        let bw = cfg.mode == Mode::Bw;
        let depth = if matches!(cfg.mode, Mode::Rps | Mode::Bw) {
            cfg.depth
        } else {
            1
        };
        let frame = if bw {
            echo_frame(cfg.stx, cfg.id, cfg.req_len())
        } else {
            request_frame(cfg.stx, cfg.id, cfg.body, 1)
        };
        let tmpl = if bw { frame.clone() } else { frame.repeat(depth) };
        let share = nslots as f64 / cfg.conns as f64;
        Worker {
            cfg,
            shared,
            tid,
            nthreads,
            poll: Poll::new().expect("mio Poll"),
            slots: (0..nslots).map(|_| Slot::new()).collect(),
            times: vec![0; nslots * depth],
            depth,
            tmpl,
            bw,
            req_len: frame.len(),
            buf: vec![0; READ_BUF],
            base: Instant::now(),
            hist: new_hist(),
            churn_hist: new_hist(),
            cnt: [0; NC],
            rng: Rng::new(0x5eed ^ ((tid as u64 + 1) << 20) ^ std::process::id() as u64),
            phase: WARMUP,
            connecting: 0,
            max_connecting: if cfg.mode == Mode::Cps {
                usize::MAX
            } else {
                MAX_CONNECTING.div_ceil(nthreads).max(1)
            },
            inflight: 0,
            outstanding: 0,
            queue: (0..nslots as u32).collect(),
            retry: Vec::new(),
            src_seq: 0,
            spread: cfg.spread_sources(),
            churn_rate: cfg.churn as f64 * share,
            send_rate: cfg.sends as f64 * share,
            churn_done: 0,
            sends_done: 0,
            measure_start: 0,
            drain_start: 0,
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    #[inline]
    fn measuring(&self) -> bool {
        self.phase == MEASURE
    }

    fn publish(&self) {
        let c = &self.shared.threads[self.tid].0;
        for (a, v) in c.iter().zip(self.cnt.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
    }

    pub fn run(mut self) -> WorkerResult {
        for s in &mut self.slots {
            s.queued = true;
        }
        let mut events = Events::with_capacity(1024);
        let mut next_scan = 0;
        loop {
            let ph = self.shared.phase.load(Ordering::Acquire);
            if ph != self.phase {
                self.enter_phase(ph);
            }
            if self.phase == STOP {
                break;
            }
            let now = self.now();
            if self.phase == DRAIN
                && ((self.inflight == 0 && self.outstanding == 0) || now - self.drain_start > DRAIN_MAX_NS)
            {
                break;
            }
            if self.cfg.mode == Mode::Hold
                && self.phase == WARMUP
                && self.cnt[C_SETUP_DONE] == 0
                && self.queue.is_empty()
                && self.inflight == 0
            {
                self.cnt[C_SETUP_DONE] = 1;
                self.cnt[C_SETUP_FAILURES] = self.cnt[C_ERR..].iter().sum();
                self.publish();
            }
            self.open_queued(now);
            if self.cfg.mode == Mode::Hold && self.phase == MEASURE {
                self.pace(now);
            }
            let paced = self.cfg.mode == Mode::Hold && self.phase == MEASURE;
            let timeout = if paced {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll: {e}");
            }
            for ev in events.iter() {
                self.handle(ev);
            }
            let now = self.now();
            if now >= next_scan {
                self.scan(now);
                next_scan = now + SCAN_EVERY_NS;
            }
            self.publish();
        }
        self.finish()
    }

    fn enter_phase(&mut self, ph: u8) {
        let now = self.now();
        if ph == MEASURE && self.phase != MEASURE {
            self.measure_start = now;
            self.churn_done = 0;
            self.sends_done = 0;
        }
        if ph >= DRAIN && self.phase < DRAIN {
            self.drain_start = now;
            for i in self.queue.drain(..) {
                self.slots[i as usize].queued = false;
            }
            self.retry.clear();
        }
        self.phase = ph;
    }

    fn finish(mut self) -> WorkerResult {
        let now = self.now();
        // Anything still waiting after the drain is a missing reply.
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.st != St::Closed && (s.inflight || s.outstanding > 0) {
                self.fail(i, Kind::Timeout, now);
            }
        }
        let held = self.cnt[C_HELD];
        for i in 0..self.slots.len() {
            self.close(i);
        }
        // report the connections held at the end, not after our own closes
        self.cnt[C_HELD] = held;
        self.publish();
        WorkerResult {
            hist: self.hist,
            churn_hist: self.churn_hist,
            cnt: self.cnt,
        }
    }

    fn open_queued(&mut self, now: u64) {
        // hold counts the LOGIN in flight too (`inflight`). On loopback the
        // handshake is over inside connect() and the LOGIN is written at
        // once, so `connecting` alone never reaches the cap: the set-up would
        // open every connection in one pass, reading no reply meanwhile, and
        // on a loaded machine (a million sockets, a hundred processes on two
        // cores: make scale) that pass outlasted the 5 s reply timeout.
        let busy = |w: &Self| {
            if w.cfg.mode == Mode::Hold {
                w.inflight
            } else {
                w.connecting
            }
        };
        while busy(self) < self.max_connecting {
            let Some(i) = self.queue.pop_front() else { break };
            self.slots[i as usize].queued = false;
            self.open(i as usize, now);
        }
    }

    /// Starts a connection on closed slot `i`.
    fn open(&mut self, i: usize, now: u64) {
        let src = if self.spread {
            let n = self.src_seq * self.nthreads as u64 + self.tid as u64;
            self.src_seq += 1;
            Some(source_addr(n % 62_500))
        } else {
            None
        };
        let pipelined = matches!(self.cfg.mode, Mode::Rps | Mode::Bw);
        let mut stream = match start_connect(&self.cfg.addr, src, self.cfg.rst, pipelined) {
            Ok(s) => s,
            Err(e) => {
                self.count_failure(if e.raw_os_error() == Some(libc::EMFILE) {
                    Kind::Io
                } else {
                    Kind::Connect
                });
                self.after_failure(i);
                return;
            }
        };
        let s = &mut self.slots[i];
        let token = Token(((s.generation as usize) << 32) | i);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            eprintln!("mario-bench: register fd {}: {e}", stream.as_raw_fd());
            self.count_failure(Kind::Io);
            self.after_failure(i);
            return;
        }
        s.stream = Some(stream);
        s.st = St::Connecting;
        s.inflight = true;
        s.started = now;
        s.last = now;
        self.connecting += 1;
        self.inflight += 1;
        // Queue the first requests and try to write them at once: on loopback the
        // handshake is usually over when connect() returns (saving a wake-up and a
        // getsockopt), and a write while still in SYN_SENT just says EAGAIN.
        let n = if pipelined { self.depth as u32 } else { 1 };
        self.send(i, n, now);
    }

    fn count_failure(&mut self, k: Kind) {
        self.cnt[C_ERR + k as usize] += 1;
    }

    /// Closes slot `i` (not a failure by itself) and fixes the accounting.
    fn close(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.st == St::Closed {
            return;
        }
        if s.st == St::Connecting {
            self.connecting -= 1;
        }
        if s.inflight {
            self.inflight -= 1;
        }
        if s.logged {
            self.cnt[C_HELD] -= 1;
        }
        self.outstanding -= s.outstanding as u64;
        // sent_total counts requests written whole: take back those that never were
        self.cnt[C_SENT_TOTAL] -= (s.pending as usize).div_ceil(self.req_len) as u64;
        s.stream = None;
        s.st = St::Closed;
        s.generation = s.generation.wrapping_add(1);
        s.inflight = false;
        s.logged = false;
        s.churned = false;
        s.outstanding = 0;
        s.head = 0;
        s.pending = 0;
        s.out.clear();
        s.seq_sent = 0;
        s.seq_echoed = 0;
        s.partial.clear();
    }

    fn fail(&mut self, i: usize, k: Kind, _now: u64) {
        self.count_failure(k);
        self.close(i);
        self.after_failure(i);
    }

    /// rps and cps reopen failed slots (after a pause, at the next scan); hold leaves them closed.
    fn after_failure(&mut self, i: usize) {
        if self.cfg.mode != Mode::Hold && self.phase < DRAIN {
            self.retry.push(i as u32);
        }
    }

    fn handle(&mut self, ev: &mio::event::Event) {
        let t = ev.token().0;
        let i = t & 0xffff_ffff;
        let generation = (t >> 32) as u32;
        let Some(s) = self.slots.get(i) else { return };
        if s.generation != generation {
            return;
        }
        match s.st {
            St::Closed => {}
            St::Connecting => {
                if !(ev.is_writable() || ev.is_error() || ev.is_write_closed() || ev.is_read_closed()) {
                    return;
                }
                let now = self.now();
                let err = s.stream.as_ref().map(|st| st.take_error());
                match err {
                    Some(Ok(None)) if ev.is_writable() && !ev.is_error() => {
                        self.established(i, now);
                        self.flush(i, now);
                    }
                    Some(Ok(None)) if !(ev.is_error() || ev.is_write_closed()) => {}
                    _ => self.fail(i, Kind::Connect, now),
                }
            }
            St::Open => {
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.readable(i, ev.is_read_closed() || ev.is_error());
                }
                let s = &self.slots[i];
                if ev.is_writable() && s.generation == generation && s.st == St::Open && s.pending > 0 {
                    let now = self.now();
                    self.flush(i, now);
                }
            }
        }
    }

    /// The connection on slot `i` is established.
    fn established(&mut self, i: usize, now: u64) {
        self.cnt[C_CONNECTS] += 1;
        self.connecting -= 1;
        let s = &mut self.slots[i];
        s.st = St::Open;
        s.last = now;
        if matches!(self.cfg.mode, Mode::Rps | Mode::Bw) {
            s.inflight = false;
            self.inflight -= 1;
        }
    }

    /// Queues `n` more requests on slot `i` and writes.
    fn send(&mut self, i: usize, n: u32, now: u64) {
        let d = self.depth as u32;
        let s = &mut self.slots[i];
        debug_assert!(s.outstanding + n <= d);
        if s.outstanding == 0 {
            s.last = now;
        }
        let base = i * self.depth;
        for k in 0..n {
            self.times[base + ((s.head + s.outstanding + k) % d) as usize] = now;
        }
        if self.bw {
            // Drop the packets written already, then append the new ones.
            let written = s.out.len() - s.pending as usize;
            s.out.drain(..written);
            let tag = bw_tag(self.tid, i);
            for _ in 0..n {
                let at = s.out.len();
                s.out.extend_from_slice(&self.tmpl);
                s.out[at + BW_TAG..at + BW_SEQ].copy_from_slice(&tag.to_ne_bytes());
                s.out[at + BW_SEQ..at + BW_SEQ + 4].copy_from_slice(&s.seq_sent.to_ne_bytes());
                s.seq_sent = s.seq_sent.wrapping_add(1);
            }
        }
        s.outstanding += n;
        s.pending += n * self.req_len as u32;
        self.outstanding += n as u64;
        self.cnt[C_SENT_TOTAL] += n as u64;
        self.flush(i, now);
    }

    /// Writes what is pending on slot `i`. A slot still connecting becomes
    /// established by its first successful write.
    fn flush(&mut self, i: usize, now: u64) {
        let measuring = self.measuring();
        let s = &mut self.slots[i];
        let Some(stream) = s.stream.as_ref() else { return };
        let src = if self.bw { &s.out[..] } else { &self.tmpl[..] };
        let mut w: &TcpStream = stream;
        let mut wrote = false;
        let mut err = None;
        while s.pending > 0 {
            match w.write(&src[src.len() - s.pending as usize..]) {
                Ok(0) => {
                    err = Some(Kind::Io);
                    break;
                }
                Ok(n) => {
                    s.pending -= n as u32;
                    wrote = true;
                    if measuring {
                        self.cnt[C_BYTES_OUT] += n as u64;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(err_kind(&e));
                    break;
                }
            }
        }
        let connecting = s.st == St::Connecting;
        if wrote && connecting {
            self.established(i, now);
        }
        if let Some(k) = err {
            self.fail(i, if connecting && !wrote { Kind::Connect } else { k }, now);
        }
    }

    /// Reads everything available on open slot `i` and handles the replies.
    fn readable(&mut self, i: usize, closed: bool) {
        let stx = self.cfg.stx;
        let measuring = self.measuring();
        let tag = bw_tag(self.tid, i);
        let s = &mut self.slots[i];
        let generation = s.generation;
        let Some(stream) = s.stream.as_ref() else { return };
        let mut r: &TcpStream = stream;
        let buf = &mut self.buf[..];
        let mut have = s.partial.len();
        if have > 0 {
            buf[..have].copy_from_slice(&s.partial);
            s.partial.clear();
        }
        let mut replies = 0u32;
        let mut bad: Option<Kind> = None;
        loop {
            let space = buf.len() - have;
            match r.read(&mut buf[have..]) {
                Ok(0) => {
                    bad = Some(Kind::Eof);
                    break;
                }
                Ok(n) => {
                    have += n;
                    if measuring {
                        self.cnt[C_BYTES_IN] += n as u64;
                    }
                    match parse_frames(&buf[..have], stx) {
                        Ok((f, used)) => {
                            if self.bw {
                                let first = s.seq_echoed;
                                // Echoes of packets not sent yet are caught in `replies`.
                                if verify_echoes(&buf[..used], &self.tmpl, tag, first).is_err() {
                                    bad = Some(Kind::Mismatch);
                                    have = 0;
                                    break;
                                }
                                s.seq_echoed = first.wrapping_add(f);
                            }
                            replies += f;
                            buf.copy_within(used..have, 0);
                            have -= used;
                        }
                        Err(()) => {
                            bad = Some(Kind::Protocol);
                            have = 0;
                            break;
                        }
                    }
                    // Edge-triggered: a short read drained the socket (data or a
                    // FIN arriving later raises a new edge), unless a FIN is
                    // already known: then read on to see it.
                    if n < space && !closed {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    bad = Some(err_kind(&e));
                    break;
                }
            }
        }
        if have > 0 {
            s.partial.extend_from_slice(&buf[..have]);
        }
        let now = self.now();
        if let Some(k @ (Kind::Protocol | Kind::Mismatch)) = bad {
            // Nothing of this read is counted: the stream cannot be trusted.
            self.fail(i, k, now);
            return;
        }
        if replies > 0 {
            self.replies(i, replies, now);
        }
        let s = &self.slots[i];
        if let Some(k) = bad
            && s.generation == generation
            && s.st == St::Open
        {
            self.fail(i, k, now);
        }
    }

    fn pop_time(&mut self, i: usize) -> u64 {
        let d = self.depth as u32;
        let s = &mut self.slots[i];
        let t = self.times[i * self.depth + s.head as usize];
        s.head = (s.head + 1) % d;
        s.outstanding -= 1;
        self.outstanding -= 1;
        t
    }

    fn replies(&mut self, i: usize, n: u32, now: u64) {
        if n > self.slots[i].outstanding {
            self.fail(i, Kind::Protocol, now);
            return;
        }
        self.cnt[C_REPLIES_TOTAL] += n as u64;
        self.slots[i].last = now;
        let measuring = self.measuring();
        match self.cfg.mode {
            Mode::Rps | Mode::Bw => {
                for _ in 0..n {
                    let t = self.pop_time(i);
                    if measuring {
                        self.hist.saturating_record(now.saturating_sub(t).max(1));
                    }
                }
                self.cnt[C_OPS_TOTAL] += n as u64;
                if measuring {
                    self.cnt[C_OPS_MEASURED] += n as u64;
                }
                if self.phase < DRAIN {
                    self.send(i, n, now);
                }
            }
            Mode::Cps => {
                self.pop_time(i);
                let started = self.slots[i].started;
                self.cnt[C_OPS_TOTAL] += 1;
                if measuring {
                    self.cnt[C_OPS_MEASURED] += 1;
                    self.hist.saturating_record(now.saturating_sub(started).max(1));
                }
                self.close(i);
                if self.phase < DRAIN {
                    self.open(i, now);
                }
            }
            Mode::Hold => {
                for _ in 0..n {
                    let t = self.pop_time(i);
                    let s = &mut self.slots[i];
                    if !s.logged {
                        s.logged = true;
                        s.inflight = false;
                        self.inflight -= 1;
                        self.cnt[C_HELD] += 1;
                        if s.churned && measuring {
                            self.cnt[C_RECONNECTS] += 1;
                            self.churn_hist
                                .saturating_record(now.saturating_sub(s.started).max(1));
                        }
                    } else {
                        self.cnt[C_OPS_TOTAL] += 1;
                        if measuring {
                            self.cnt[C_OPS_MEASURED] += 1;
                            self.hist.saturating_record(now.saturating_sub(t).max(1));
                        }
                    }
                }
            }
        }
    }

    /// Timeouts, and failed slots back into the open queue.
    fn scan(&mut self, now: u64) {
        for i in std::mem::take(&mut self.retry) {
            let s = &mut self.slots[i as usize];
            if s.st == St::Closed && !s.queued && self.phase < DRAIN {
                s.queued = true;
                self.queue.push_back(i);
            }
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.st != St::Closed
                && (s.inflight || s.outstanding > 0 || s.pending > 0)
                && now.saturating_sub(s.last) > TIMEOUT_NS
            {
                self.fail(i, Kind::Timeout, now);
            }
        }
    }

    /// hold: churn and sends due by now, spread evenly over each second.
    fn pace(&mut self, now: u64) {
        let el = now.saturating_sub(self.measure_start) as f64 / 1e9;
        let due = (self.churn_rate * el) as u64;
        while self.churn_done < due {
            self.churn_done += 1;
            self.churn_one(now);
        }
        let due = (self.send_rate * el) as u64;
        while self.sends_done < due {
            self.sends_done += 1;
            self.send_one(now);
        }
    }

    fn churn_one(&mut self, now: u64) {
        let n = self.slots.len();
        for _ in 0..PICK_TRIES {
            let i = self.rng.below(n);
            let s = &self.slots[i];
            let idle_held = s.st == St::Open && s.logged && s.outstanding == 0;
            let dead = s.st == St::Closed && !s.queued;
            if idle_held || dead {
                self.close(i);
                self.open(i, now);
                self.slots[i].churned = true;
                return;
            }
        }
        self.cnt[C_SKIPPED_CHURN] += 1;
    }

    fn send_one(&mut self, now: u64) {
        let n = self.slots.len();
        for _ in 0..PICK_TRIES {
            let i = self.rng.below(n);
            let s = &self.slots[i];
            if s.st == St::Open && s.logged && s.outstanding == 0 {
                self.send(i, 1, now);
                return;
            }
        }
        self.cnt[C_SKIPPED_SENDS] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let stx = 0x8eb6_9af7;
        let f = request_frame(stx, 0x6101, 2, 7);
        assert_eq!(f.len(), 10);
        assert_eq!(&f[..4], &stx.to_ne_bytes());
        assert_eq!(u16::from_ne_bytes([f[4], f[5]]), 10);
        assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 0x6101);
        assert_eq!(u16::from_ne_bytes([f[8], f[9]]), 7);
        let mut b = f.repeat(3);
        assert_eq!(parse_frames(&b, stx), Ok((3, 30)));
        assert_eq!(parse_frames(&b[..25], stx), Ok((2, 20)));
        assert_eq!(parse_frames(&b[..5], stx), Ok((0, 0)));
        assert_eq!(parse_frames(&b, 1), Err(()));
        b[14] = 3; // second frame: pkglen 3
        assert_eq!(parse_frames(&b, stx), Err(()));
        let bare = request_frame(stx, 1, 0, 7);
        assert_eq!(bare.len(), 8);
        assert_eq!(parse_frames(&bare, stx), Ok((1, 8)));
        let one = request_frame(stx, 1, 1, 0x0107);
        assert_eq!((one.len(), one[8]), (9, 0x0107u16.to_ne_bytes()[0]));
        let big = request_frame(stx, 1, 1000, 0);
        assert_eq!(parse_frames(&big[..500], stx), Ok((0, 0)));
        assert_eq!(parse_frames(&big, stx), Ok((1, 1008)));
    }

    #[test]
    fn echoes_checked_byte_for_byte() {
        let stx = 0x8eb6_9af7;
        let t = echo_frame(stx, 0x6102, 40);
        assert_eq!(t.len(), 40);
        assert_eq!(u16::from_ne_bytes([t[4], t[5]]), 40);
        assert_eq!(u16::from_ne_bytes([t[6], t[7]]), 0x6102);
        assert_eq!(&t[8..16], &[0; 8]);
        let pkt = |tag: u32, seq: u32| {
            let mut p = t.clone();
            p[8..12].copy_from_slice(&tag.to_ne_bytes());
            p[12..16].copy_from_slice(&seq.to_ne_bytes());
            p
        };
        let two = [pkt(5, 7), pkt(5, 8)].concat();
        assert_eq!(verify_echoes(&two, &t, 5, 7), Ok(2));
        assert_eq!(verify_echoes(&[], &t, 5, 7), Ok(0));
        assert_eq!(verify_echoes(&two, &t, 5, 8), Err(()), "sequence");
        assert_eq!(verify_echoes(&two, &t, 6, 7), Err(()), "another connection's");
        let swapped = [pkt(5, 8), pkt(5, 7)].concat();
        assert_eq!(verify_echoes(&swapped, &t, 5, 7), Err(()), "order");
        for at in [0, 5, 7, 20, 39, 79] {
            let mut b = two.clone();
            b[at] ^= 1;
            assert_eq!(verify_echoes(&b, &t, 5, 7), Err(()), "byte {at}");
        }
        assert_eq!(verify_echoes(&two[..79], &t, 5, 7), Err(()), "cut short");
        assert_eq!(
            verify_echoes(&request_frame(stx, 0x6102, 0, 0), &t, 0, 0),
            Err(()),
            "a bare head"
        );
    }

    #[test]
    fn sources_and_rng() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(251), Ipv4Addr::new(127, 0, 1, 2));
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
        }
    }
}
