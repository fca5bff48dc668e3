//! The cluster example `c-examples/pushsrv.c` (built with ASan/UBSan:
//! `target/ctests/pushsrv-asan`) as it is deployed: a real `redis-server`,
//! two instances on 127.0.0.2 and 127.0.0.3 expecting the PROXY protocol,
//! and a real `haproxy` in front of them (tests/balancer: `mode tcp`,
//! round robin, `send-proxy-v2`, health checks every 200 ms), all on
//! loopback. 200 users log in through HAProxy from 127.0.0.9 (each
//! instance must log that real address, not HAProxy's), then push to each
//! other in rounds, each message carrying (round, sender, seq per sender
//! and receiver, time sent):
//!
//! 1. 10 senders, one push in flight each: the latency of a message;
//! 2. all 200, four in flight each: every message reaches its user, on
//!    whichever instance holds it, exactly once and in order;
//! 3. instance a is killed (SIGKILL) a third of the way in: its users must
//!    see the close at once and log in again through HAProxy straight
//!    away (backing off between attempts), landing on b; between b's users
//!    nothing is lost, and what a's senders were told was published
//!    reached b's users;
//! 4. all 200 on b: again exactly once, in order.
//!
//! Then b stops cleanly on SIGTERM (no leak, no error logged). A second
//! test stops and restarts Redis under one instance.
//!
//! redis-server and haproxy are required (`.ci/run` installs them): a
//! machine without them fails here, it does not skip.
//!
//! `cargo test --features harness --test cluster -- --nocapture` prints
//! the figures (messages, rate, delivery latency, reconnection).

mod balancer;
mod common;
use balancer::{HaProxy, connect_from};
use common::*;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The PROXY protocol between HAProxy and the instances: HAProxy sends a
/// v2 header (`send-proxy-v2`), the instances expect it from 127.0.0.1
/// only (`-x v2 -s 127.0.0.1`) and log the real client's address, which
/// the test checks. `false` runs the same test without it (the instances
/// then see every client as HAProxy).
const PROXY_V2: bool = true;

/// The instances' build: the sanitizer one (leaks are checked at the
/// survivor's clean exit). `c-examples/pushsrv` is the shipped one.
const PUSHSRV: &str = "target/ctests/pushsrv-asan";

const USERS: u32 = 200;
/// Messages each user pushes per round.
const K: u32 = 20;
/// Each user pushes to random users among this many random others (so
/// that most sender/receiver pairs carry several messages, in order).
const FRIENDS: usize = 8;
/// Client threads, each driving USERS / THREADS sockets.
const THREADS: usize = 4;
/// The clients' own address: the instances log it when the PROXY
/// protocol is on (HAProxy connects to them from 127.0.0.1), as
/// tests/haproxy.rs checks for maritcp.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

// The protocol of c-examples/pushsrv.c (its top comment).
const STX: u32 = 0x4853_5550;
const ID_LOGIN: u16 = 0x0101;
const ID_LOGIN_OK: u16 = 0x0102;
const ID_PUSH: u16 = 0x0201;
const ID_PUSH_OK: u16 = 0x0202;
const ID_PUSH_ERR: u16 = 0x0203;
const ID_DELIVER: u16 = 0x0301;

/// The end of every payload: bytes a text protocol would trip on, so
/// that the PUBLISH must be binary-safe.
const TAIL: [u8; 8] = [0, b'\r', b'\n', b'%', b'b', 0xff, 0, b'*'];
/// round, sender, seq (per sender and receiver), sent at (ns), TAIL.
const PAYLOAD_LEN: usize = 4 + 4 + 4 + 8 + TAIL.len();

// ---------------------------------------------------------------------------
// Processes

/// Fails the test with a clear message if `prog` is not installed.
fn require(prog: &str, package: &str) {
    let ok = Command::new(prog)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{prog} is not installed: this test needs it (apt-get install {package}; .ci/run installs it)"
    );
}

/// Starts `prog ARGS` in `dir` with its output in files there; killed
/// (SIGKILL) when dropped, even on a panic.
fn spawn(prog: &Path, args: &[String], dir: &Path, port: u16) -> Proc {
    let out = dir.join("stdout.txt");
    let err = dir.join("stderr.txt");
    let child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", prog.display()));
    Proc {
        child: Some(child),
        port,
        dir: dir.to_path_buf(),
        out,
        err,
    }
}

/// A port free a moment ago on `ip`.
fn free_port_on(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .unwrap()
        .port()
}

fn exited(p: &mut Proc) -> bool {
    matches!(p.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
}

/// redis-server on 127.0.0.1:`port`, persisting nothing, in `dir`.
fn start_redis(dir: &Path, port: u16) -> Proc {
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = spawn(Path::new("redis-server"), &args, dir, port);
    let ok = wait_for(Duration::from_secs(10), || {
        exited(&mut p) || redis_cmd(port, "PING").is_ok_and(|r| r == "+PONG\r\n")
    });
    assert!(
        ok && !exited(&mut p),
        "redis-server did not start:\n{}",
        p.stdout()
    );
    p
}

/// One inline command to Redis; its reply's first line.
fn redis_cmd(port: u16, cmd: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// A pushsrv instance on `ip`, its Redis on 127.0.0.1:`redis_port`, run
/// in a new directory under `dir`; `proxy`: behind HAProxy (PROXY_V2).
fn start_pushsrv(ip: Ipv4Addr, redis_port: u16, dir: &Path, proxy: bool) -> Proc {
    let bin = root().join(PUSHSRV);
    for _ in 0..5 {
        let port = free_port_on(ip);
        let mut args: Vec<String> = [
            "-a",
            &ip.to_string(),
            "-p",
            &port.to_string(),
            "-r",
            &format!("127.0.0.1:{redis_port}"),
            "-w",
            "2",
            "-t",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if proxy && PROXY_V2 {
            args.extend(["-x", "v2", "-s", "127.0.0.1"].map(String::from));
        }
        let run = dir.join(format!("pushsrv-{ip}-{port}"));
        std::fs::create_dir_all(&run).unwrap();
        let mut p = spawn(&bin, &args, &run, port);
        let ok = wait_for(Duration::from_secs(10), || {
            exited(&mut p) || p.stdout().contains("start server ok")
        });
        if ok && !exited(&mut p) {
            return p;
        }
        eprintln!(
            "pushsrv on {ip}:{port} did not start (retrying):\n{}{}",
            p.stdout(),
            p.stderr()
        );
    }
    panic!("pushsrv did not start on {ip}");
}

/// HAProxy's statistics of the backend's servers (`show stat` on its
/// stats socket): server name -> column -> value.
fn haproxy_stat(h: &HaProxy) -> io::Result<HashMap<String, HashMap<String, String>>> {
    let mut s = UnixStream::connect(h.dir.join("stats.sock"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"show stat\n")?;
    let mut csv = String::new();
    s.read_to_string(&mut csv)?;
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .map(str::to_string)
        .collect();
    if !header.iter().any(|h| h == "status") {
        return Err(io::Error::other(format!("no stats header in {csv:?}")));
    }
    Ok(lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .filter(|row: &HashMap<String, String>| {
            row.get("pxname").is_some_and(|p| p == "back")
                && row.get("svname").is_some_and(|s| s != "BACKEND")
        })
        .map(|row| (row["svname"].clone(), row))
        .collect())
}

/// "a: DOWN, 12 retries, 3 redispatches; b: ..." for the figures.
fn haproxy_summary(h: &HaProxy) -> String {
    let Ok(stat) = haproxy_stat(h) else {
        return "no stats".to_string();
    };
    let mut names: Vec<&String> = stat.keys().collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            let row = &stat[*n];
            let get = |k: &str| row.get(k).map_or("?", |v| v.as_str());
            format!(
                "{n}: {}, {} connections, {} retries, {} redispatches",
                get("status"),
                get("stot"),
                get("wretr"),
                get("wredis")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `login uid=N peer=ADDR` lines an instance logged: (uid, peer).
fn logins(p: &Proc) -> Vec<(u32, String)> {
    p.stdout()
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("login uid=")? + "login uid=".len()..];
            let mut w = rest.split_whitespace();
            let uid = w.next()?.parse().ok()?;
            let peer = w.next()?.strip_prefix("peer=")?.to_string();
            Some((uid, peer))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The client side

fn packet(id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&STX.to_le_bytes());
    v.extend_from_slice(&(8 + body.len() as u16).to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads one packet from a blocking socket: (id, body).
fn read_packet(s: &mut TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    let stx = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let len = u16::from_le_bytes(h[4..6].try_into().unwrap()) as usize;
    if stx != STX || len < 8 {
        return Err(io::Error::other(format!("bad head {h:02x?}")));
    }
    let mut body = vec![0u8; len - 8];
    s.read_exact(&mut body)?;
    Ok((u16::from_le_bytes(h[6..8].try_into().unwrap()), body))
}

/// Connects from CLIENT_IP to `to` (HAProxy) and logs `uid` in: the
/// socket (non-blocking) and its local port. `Err` if any step fails or the reply does not come
/// within `wait`.
fn login(to: SocketAddr, uid: u32, wait: Duration) -> io::Result<(TcpStream, u16)> {
    let mut s = connect_from(CLIENT_IP, to)?;
    let port = s.local_addr()?.port();
    s.set_read_timeout(Some(wait))?;
    s.write_all(&packet(ID_LOGIN, &uid.to_le_bytes()))?;
    let (id, body) = read_packet(&mut s)?;
    if id != ID_LOGIN_OK || body != uid.to_le_bytes() {
        return Err(io::Error::other(format!("LOGIN {uid}: got {id:#x} {body:02x?}")));
    }
    s.set_nonblocking(true)?;
    Ok((s, port))
}

/// One round: users with uid < `senders` push `k` messages each to random
/// friends, at most `window` unanswered at a time. With `relogin`, a user
/// whose connection closes logs in again through HAProxy (backing off
/// between attempts) and pushes nothing more this round.
#[derive(Clone, Copy)]
struct Spec {
    round: u32,
    senders: u32,
    k: u32,
    window: usize,
    relogin: bool,
    haproxy: SocketAddr,
}

/// What the client threads share with the test's thread.
#[derive(Default)]
struct Live {
    stop: AtomicBool,
    /// DELIVERs of the current round.
    delivered: AtomicU64,
    /// PUSH_OK and PUSH_ERR of the current round.
    answered: AtomicU64,
    /// Users done with the round: every push answered, or the connection
    /// closed (with `relogin`: and logged in again).
    done: AtomicU64,
    /// Connections closed by the other side.
    closed: AtomicU64,
}

/// A user's connection.
enum Link {
    /// Logged in.
    Up(TcpStream),
    /// LOGIN sent on a new connection at `since`, no answer yet.
    LoggingIn(TcpStream, Instant),
    /// Closed: connect again at `retry` (with `relogin`).
    Down(Instant),
}

const RELOGIN_WAIT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One user: its connection, what it pushed and what it received.
struct User {
    uid: u32,
    link: Link,
    local_port: u16,
    friends: Vec<u32>,
    rng: Rng,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    // This round's pushes.
    spec: Option<Spec>,
    plan: Vec<u32>,
    next: usize,
    done: bool,
    /// Pushes not yet answered, oldest first: (round, target).
    pending: VecDeque<(u32, u32)>,
    /// Pushes made, per (round, target): the next seq.
    sent: HashMap<(u32, u32), u32>,
    /// Pushes answered PUSH_OK, per (round, target).
    acked: HashMap<(u32, u32), u32>,
    push_errs: u64,
    /// PUSH_OK's receiver counts, per (round, receivers).
    receivers: HashMap<(u32, u32), u64>,
    /// DELIVERs per (round, sender): the next seq expected.
    got: HashMap<(u32, u32), u32>,
    /// Delivery latencies, per round (ns).
    latency: HashMap<u32, Vec<u64>>,
    violations: Vec<String>,
    /// The round in which the user logged in again: messages pushed while
    /// it was away are lost, so its seqs of that round may jump forward.
    relogged_in: Option<u32>,
    gaps: u64,
    closed_at: Option<Instant>,
    back_at: Option<Instant>,
    backoff: Duration,
    attempts: u32,
}

impl User {
    fn new(uid: u32, sock: TcpStream, local_port: u16) -> User {
        let mut rng = Rng::new(0x5eed_0000 + u64::from(uid));
        let mut friends = Vec::new();
        while friends.len() < FRIENDS {
            let f = rng.range(0, USERS as usize - 1) as u32;
            if f != uid && !friends.contains(&f) {
                friends.push(f);
            }
        }
        User {
            uid,
            link: Link::Up(sock),
            local_port,
            friends,
            rng,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            spec: None,
            plan: Vec::new(),
            next: 0,
            done: true,
            pending: VecDeque::new(),
            sent: HashMap::new(),
            acked: HashMap::new(),
            push_errs: 0,
            receivers: HashMap::new(),
            got: HashMap::new(),
            latency: HashMap::new(),
            violations: Vec::new(),
            relogged_in: None,
            gaps: 0,
            closed_at: None,
            back_at: None,
            backoff: BACKOFF_MIN,
            attempts: 0,
        }
    }

    fn is_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    fn sock(&mut self) -> Option<&mut TcpStream> {
        match &mut self.link {
            Link::Up(s) | Link::LoggingIn(s, _) => Some(s),
            Link::Down(_) => None,
        }
    }

    /// Sets up a round; returns whether the user is done already.
    fn start_round(&mut self, spec: Spec) -> bool {
        self.spec = Some(spec);
        let k = if self.uid < spec.senders && self.is_up() {
            spec.k
        } else {
            0
        };
        self.plan = (0..k)
            .map(|_| self.friends[self.rng.range(0, FRIENDS - 1)])
            .collect();
        self.next = 0;
        self.done = self.plan.is_empty() && (self.is_up() || !spec.relogin);
        self.done
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("user {}: {what}", self.uid));
        }
    }

    fn mark_done(&mut self, live: &Live) {
        if !self.done {
            self.done = true;
            live.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Work that is due: pushes up to the window, a new connection and
    /// LOGIN, a LOGIN that took too long; then writes what the socket takes.
    fn tick(&mut self, live: &Live, epoch: Instant) {
        let spec = self.spec.expect("a round");
        let now = Instant::now();
        match &self.link {
            Link::Up(_) => {
                while self.next < self.plan.len() && self.pending.len() < spec.window {
                    self.queue_push(spec.round, epoch);
                }
            }
            Link::Down(retry) if spec.relogin && now >= *retry => {
                self.attempts += 1;
                match connect_from(CLIENT_IP, spec.haproxy).and_then(|s| {
                    s.set_nonblocking(true)?;
                    Ok(s)
                }) {
                    Ok(s) => {
                        self.local_port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                        self.wbuf = packet(ID_LOGIN, &self.uid.to_le_bytes());
                        self.link = Link::LoggingIn(s, now);
                    }
                    Err(_) => self.retry_later(),
                }
            }
            Link::LoggingIn(_, since) if now.duration_since(*since) > RELOGIN_WAIT => {
                self.retry_later();
            }
            _ => {}
        }
        self.flush(live);
    }

    fn retry_later(&mut self) {
        self.link = Link::Down(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.wbuf.clear();
        self.rbuf.clear();
    }

    fn queue_push(&mut self, round: u32, epoch: Instant) {
        let target = self.plan[self.next];
        self.next += 1;
        let seq = self.sent.entry((round, target)).or_insert(0);
        let mut body = Vec::with_capacity(4 + PAYLOAD_LEN);
        body.extend_from_slice(&target.to_le_bytes());
        body.extend_from_slice(&round.to_le_bytes());
        body.extend_from_slice(&self.uid.to_le_bytes());
        body.extend_from_slice(&seq.to_le_bytes());
        body.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        body.extend_from_slice(&TAIL);
        *seq += 1;
        self.wbuf.extend_from_slice(&packet(ID_PUSH, &body));
        self.pending.push_back((round, target));
    }

    fn flush(&mut self, live: &Live) {
        while !self.wbuf.is_empty() {
            let s = match &mut self.link {
                Link::Up(s) | Link::LoggingIn(s, _) => s,
                Link::Down(_) => return,
            };
            match s.write(&self.wbuf) {
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.closed(live),
            }
        }
    }

    /// The other side closed the connection (or it failed).
    fn closed(&mut self, live: &Live) {
        let relogin = self.spec.is_some_and(|s| s.relogin);
        match self.link {
            Link::Up(_) => {
                self.closed_at = Some(Instant::now());
                live.closed.fetch_add(1, Ordering::AcqRel);
                self.link = Link::Down(Instant::now());
                self.backoff = BACKOFF_MIN;
                self.wbuf.clear();
                self.rbuf.clear();
                if !relogin {
                    self.mark_done(live);
                }
            }
            // HAProxy gave up on this LOGIN's connection: try again.
            Link::LoggingIn(..) => self.retry_later(),
            Link::Down(_) => {}
        }
    }

    /// Reads what there is and handles every complete packet.
    fn read(&mut self, buf: &mut [u8], live: &Live, epoch: Instant) {
        loop {
            let Some(s) = self.sock() else { return };
            match s.read(buf) {
                Ok(0) => return self.closed(live),
                Ok(n) => self.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.closed(live),
            }
        }
        let mut at = 0;
        while self.rbuf.len() - at >= 8 {
            let h = &self.rbuf[at..at + 8];
            let stx = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let len = u16::from_le_bytes(h[4..6].try_into().unwrap()) as usize;
            let id = u16::from_le_bytes(h[6..8].try_into().unwrap());
            if stx != STX || len < 8 {
                self.violation(format!("bad head {h:02x?}"));
                return self.closed(live);
            }
            if self.rbuf.len() - at < len {
                break;
            }
            let body = self.rbuf[at + 8..at + len].to_vec();
            at += len;
            self.packet(id, &body, live, epoch);
            if self.rbuf.is_empty() {
                return; // closed or logged in again meanwhile
            }
        }
        self.rbuf.drain(..at);
    }

    fn packet(&mut self, id: u16, body: &[u8], live: &Live, epoch: Instant) {
        let spec = self.spec.expect("a round");
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
        match id {
            ID_LOGIN_OK if matches!(self.link, Link::LoggingIn(..)) => {
                if body != self.uid.to_le_bytes() {
                    return self.violation(format!("LOGIN_OK {body:02x?}"));
                }
                let Link::LoggingIn(s, _) = std::mem::replace(&mut self.link, Link::Down(Instant::now()))
                else {
                    unreachable!()
                };
                self.link = Link::Up(s);
                self.back_at = Some(Instant::now());
                self.relogged_in = Some(spec.round);
                // What was in flight on the old connection is lost; this
                // round's pushes end here.
                self.pending.clear();
                self.next = self.plan.len();
                self.mark_done(live);
            }
            ID_PUSH_OK | ID_PUSH_ERR if body.len() == 4 && self.is_up() => {
                let Some(key) = self.pending.pop_front() else {
                    return self.violation(format!("{id:#x} for no push"));
                };
                if id == ID_PUSH_OK {
                    *self.acked.entry(key).or_insert(0) += 1;
                    *self.receivers.entry((key.0, u32_at(0))).or_insert(0) += 1;
                } else {
                    self.push_errs += 1;
                }
                if key.0 == spec.round {
                    live.answered.fetch_add(1, Ordering::AcqRel);
                }
                if self.next == self.plan.len() && self.pending.is_empty() {
                    self.mark_done(live);
                }
            }
            ID_DELIVER if body.len() == PAYLOAD_LEN && body[20..] == TAIL => {
                let (round, sender, seq) = (u32_at(0), u32_at(4), u32_at(8));
                let sent_ns = u64::from_le_bytes(body[12..20].try_into().unwrap());
                let now_ns = epoch.elapsed().as_nanos() as u64;
                let next = self.got.get(&(round, sender)).copied().unwrap_or(0);
                if seq < next || (seq > next && self.relogged_in != Some(round)) {
                    self.violation(format!(
                        "round {round}: from {sender} seq {seq}, expected {next} (a duplicate, out of order or a gap)"
                    ));
                } else if seq > next {
                    self.gaps += 1; // pushed while this user was away
                }
                self.got.insert((round, sender), seq + 1);
                self.latency
                    .entry(round)
                    .or_default()
                    .push(now_ns.saturating_sub(sent_ns));
                if round == spec.round {
                    live.delivered.fetch_add(1, Ordering::AcqRel);
                }
            }
            _ => self.violation(format!("unexpected packet {id:#x} of {} bytes", body.len())),
        }
    }
}

/// One client thread: drives its users until `live.stop`.
fn drive(users: &mut [User], live: &Live, epoch: Instant) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut which: Vec<usize> = Vec::new();
    while !live.stop.load(Ordering::Acquire) {
        fds.clear();
        which.clear();
        for (i, u) in users.iter_mut().enumerate() {
            u.tick(live, epoch);
            let wants_out = !u.wbuf.is_empty();
            if let Some(s) = u.sock() {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN | if wants_out { libc::POLLOUT } else { 0 },
                    revents: 0,
                });
                which.push(i);
            }
        }
        // SAFETY: `fds` is a valid array of fds.len() pollfd records.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        if n <= 0 {
            continue;
        }
        for (k, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let u = &mut users[which[k]];
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                u.read(&mut buf, live, epoch);
            }
            if p.revents & libc::POLLOUT != 0 {
                u.flush(live);
            }
        }
    }
}

/// Runs one round on THREADS client threads until `until(live)` says it
/// is over (checked every 5 ms, after `during(live)`); fails after
/// `limit`. Returns how long it took.
fn run_round(
    users: &mut [User],
    spec: Spec,
    epoch: Instant,
    limit: Duration,
    mut during: impl FnMut(&Live),
    mut until: impl FnMut(&Live) -> bool,
) -> Duration {
    let live = Live::default();
    let already_done = users
        .iter_mut()
        .map(|u| u.start_round(spec))
        .filter(|&d| d)
        .count();
    live.done.store(already_done as u64, Ordering::Release);
    let t0 = Instant::now();
    let chunk = users.len().div_ceil(THREADS);
    let ok = std::thread::scope(|s| {
        for part in users.chunks_mut(chunk) {
            let live = &live;
            s.spawn(move || drive(part, live, epoch));
        }
        let ok = wait_for(limit, || {
            during(&live);
            until(&live)
        });
        live.stop.store(true, Ordering::Release);
        ok
    });
    let took = t0.elapsed();
    assert!(
        ok,
        "round {} not over within {limit:?}: {} answered, {} delivered, {} users done of {}, {} closed\n{}",
        spec.round,
        live.answered.load(Ordering::Acquire),
        live.delivered.load(Ordering::Acquire),
        live.done.load(Ordering::Acquire),
        users.len(),
        live.closed.load(Ordering::Acquire),
        violations(users).join("\n")
    );
    took
}

/// An exact round: over when all `pushes` are answered and delivered,
/// and 200 ms more passed (time for a duplicate to show). Returns how long
/// the pushes took to be answered and delivered.
fn exact_round(users: &mut [User], spec: Spec, epoch: Instant) -> Duration {
    let pushes = u64::from(spec.senders * spec.k);
    let t0 = Instant::now();
    let mut all_at = None;
    run_round(
        users,
        spec,
        epoch,
        Duration::from_secs(20),
        |_| {},
        |live| {
            let all = live.answered.load(Ordering::Acquire) == pushes
                && live.delivered.load(Ordering::Acquire) >= pushes;
            all && all_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(200)
        },
    );
    // Until everything was answered and delivered (not the 200 ms after).
    let took = all_at.map_or(t0.elapsed(), |at: Instant| at.duration_since(t0));
    let v = violations(users);
    assert!(v.is_empty(), "round {}:\n{}", spec.round, v.join("\n"));
    let everyone: Vec<u32> = (0..USERS).collect();
    assert_eq!(check_exact(users, spec.round, &everyone, &everyone), pushes);
    assert!(
        users.iter().all(|u| u.push_errs == 0),
        "PUSH_ERR in round {}",
        spec.round
    );
    took
}

fn violations(users: &[User]) -> Vec<String> {
    users.iter().flat_map(|u| u.violations.iter().cloned()).collect()
}

/// Every message of `round` from a sender in `senders` to a receiver in
/// `receivers` arrived exactly once, in order: the receiver's next seq
/// per sender is what the sender pushed to it (and the seq checks saw no
/// gap, duplicate or reordering). Returns the number of messages.
fn check_exact(users: &[User], round: u32, senders: &[u32], receivers: &[u32]) -> u64 {
    let mut n = 0;
    for &s in senders {
        for &r in receivers {
            let sent = users[s as usize].sent.get(&(round, r)).copied().unwrap_or(0);
            let got = users[r as usize].got.get(&(round, s)).copied().unwrap_or(0);
            assert_eq!(
                sent, got,
                "round {round}: {s} pushed {sent} message(s) to {r}, which got {got}"
            );
            n += u64::from(sent);
        }
    }
    n
}

/// (p50, p99, max) in ms of `round`'s delivery latencies.
fn latency(users: &[User], round: u32) -> (f64, f64, f64) {
    let mut all: Vec<u64> = users
        .iter()
        .filter_map(|u| u.latency.get(&round))
        .flatten()
        .copied()
        .collect();
    all.sort_unstable();
    if all.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64 / 1e6;
    (at(0.5), at(0.99), at(1.0))
}

/// PUSH_OK's receiver counts in `round`: receivers -> pushes.
fn receivers_seen(users: &[User], round: u32) -> HashMap<u32, u64> {
    let mut m = HashMap::new();
    for u in users {
        for (&(r, n), &c) in &u.receivers {
            if r == round {
                *m.entry(n).or_insert(0) += c;
            }
        }
    }
    m
}

fn total_sent(users: &[User], round: u32) -> u64 {
    users
        .iter()
        .flat_map(|u| u.sent.iter())
        .filter(|((r, _), _)| *r == round)
        .map(|(_, &n)| u64::from(n))
        .sum()
}

fn report(users: &[User], round: u32, what: &str, pushes: u64, took: Duration) {
    let (p50, p99, max) = latency(users, round);
    println!(
        "round {round} ({what}): {pushes} messages in {took:.2?} ({:.0}/s), delivery latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        pushes as f64 / took.as_secs_f64()
    );
}

/// The test's scratch directory, removed at the end unless the test failed.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn cluster_behind_haproxy() {
    require("redis-server", "redis-server");
    require("haproxy", "haproxy");
    ensure_built();
    let t_start = Instant::now();
    let epoch = Instant::now();
    let scratch = Scratch(scratch_dir("cluster"));

    // Redis, two instances, HAProxy.
    let redis_port = free_port();
    let redis_dir = scratch.0.join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let _redis = start_redis(&redis_dir, redis_port);
    let ip_a = Ipv4Addr::new(127, 0, 0, 2);
    let ip_b = Ipv4Addr::new(127, 0, 0, 3);
    let mut a = start_pushsrv(ip_a, redis_port, &scratch.0, true);
    let b = start_pushsrv(ip_b, redis_port, &scratch.0, true);
    let h = HaProxy::start(
        &[
            ("a", SocketAddr::from((ip_a, a.port))),
            ("b", SocketAddr::from((ip_b, b.port))),
        ],
        if PROXY_V2 { "send-proxy-v2" } else { "" },
    );
    assert!(
        h.wait_status(&["a", "b"], Duration::from_secs(10)),
        "haproxy did not see both instances up: {:?}\n{}",
        h.status(),
        h.log()
    );
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, h.port));
    println!(
        "cluster: redis :{redis_port}, pushsrv {ip_a}:{} and {ip_b}:{}, haproxy :{} (PROXY v2 {}), up in {:.2?}",
        a.port,
        b.port,
        h.port,
        if PROXY_V2 { "on" } else { "off" },
        t_start.elapsed()
    );

    // 200 users log in through HAProxy.
    let t0 = Instant::now();
    let mut users: Vec<User> = (0..USERS)
        .map(|uid| {
            let (s, port) = login(front, uid, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("user {uid}: login through haproxy: {e}"));
            User::new(uid, s, port)
        })
        .collect();
    let login_time = t0.elapsed();
    // Where each landed, from the instances' logs (written by their log
    // threads: wait for every line).
    assert!(
        wait_for(Duration::from_secs(5), || logins(&a).len() + logins(&b).len()
            == USERS as usize),
        "expected {USERS} login lines, got {} on a and {} on b",
        logins(&a).len(),
        logins(&b).len()
    );
    let on_a: Vec<u32> = logins(&a).iter().map(|(u, _)| *u).collect();
    let on_b: Vec<u32> = logins(&b).iter().map(|(u, _)| *u).collect();
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "round robin must give both instances users: a {}, b {}",
        on_a.len(),
        on_b.len()
    );
    check_peers(&users, &logins(&a));
    check_peers(&users, &logins(&b));
    println!(
        "login: {USERS} users in {login_time:.2?} ({} on a, {} on b)",
        on_a.len(),
        on_b.len()
    );
    let full = u64::from(USERS * K);
    let spec = |round, senders, window, relogin| Spec {
        round,
        senders,
        k: K,
        window,
        relogin,
        haproxy: front,
    };

    // Round 1, light load (10 senders, one push in flight each): the
    // latency of one message through the cluster.
    let light = spec(1, 10, 1, false);
    let took = exact_round(&mut users, light, epoch);
    report(&users, 1, "2 instances, 10 senders", u64::from(10 * K), took);

    // Round 2: everyone pushes, 4 in flight each. Every message reaches
    // its user, on whichever instance holds it, exactly once, in order.
    let took = exact_round(&mut users, spec(2, USERS, 4, false), epoch);
    assert_eq!(
        receivers_seen(&users, 2),
        HashMap::from([(2, full)]),
        "PUSH_OK receivers (both instances subscribed)"
    );
    report(&users, 2, "2 instances, 200 senders", full, took);

    // Round 3: a is killed (SIGKILL) a third of the way in; its users see
    // their connection close, log in again through HAProxy (b, once its
    // health check has found a down), and push nothing more this round.
    let killed_at = std::cell::Cell::new(None);
    let mut quiet: Option<(u64, Instant)> = None;
    let n_a = on_a.len() as u64;
    let r3_start = Instant::now();
    let took = run_round(
        &mut users,
        spec(3, USERS, 1, true),
        epoch,
        Duration::from_secs(30),
        |live| {
            if killed_at.get().is_none() && live.answered.load(Ordering::Acquire) >= full / 3 {
                // SAFETY: killing our own child, not yet reaped.
                unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
                killed_at.set(Some(Instant::now()));
            }
        },
        |live| {
            // Over once a's users are back, every other user has its
            // pushes answered, and no delivery came for 300 ms.
            if killed_at.get().is_none()
                || live.closed.load(Ordering::Acquire) < n_a
                || live.done.load(Ordering::Acquire) < u64::from(USERS)
            {
                return false;
            }
            let d = live.delivered.load(Ordering::Acquire);
            match quiet {
                Some((n, since)) if n == d => since.elapsed() > Duration::from_millis(300),
                _ => {
                    quiet = Some((d, Instant::now()));
                    false
                }
            }
        },
    );
    let killed_at = killed_at.get().unwrap();
    let _ = a.child.as_mut().unwrap().wait();
    let v = violations(&users);
    assert!(v.is_empty(), "round 3:\n{}", v.join("\n"));
    // a's users saw their connection close at once and came back; b's
    // kept theirs.
    let (mut close_after, mut back_after, mut attempts) = (Duration::ZERO, Duration::ZERO, 0);
    for &u in &on_a {
        let user = &users[u as usize];
        let closed = user
            .closed_at
            .unwrap_or_else(|| panic!("user {u} (on a) still connected after a was killed"));
        close_after = close_after.max(closed.saturating_duration_since(killed_at));
        assert!(user.is_up(), "user {u} (on a) not logged in again");
        back_after = back_after.max(user.back_at.unwrap().saturating_duration_since(killed_at));
        attempts += user.attempts;
    }
    assert!(
        close_after < Duration::from_secs(2),
        "a's users saw the close after {close_after:?}"
    );
    assert!(
        on_b.iter().all(|&u| users[u as usize].closed_at.is_none()),
        "a user of b lost its connection"
    );
    // b to b: exact. To b's users: every push answered PUSH_OK arrived.
    // To anyone: no more than was pushed (and, by the seq checks, no
    // duplicate, no reordering, and no gap but while a user was away).
    let b_to_b = check_exact(&users, 3, &on_b, &on_b);
    let everyone: Vec<u32> = (0..USERS).collect();
    for &s in &everyone {
        for &r in &everyone {
            let sent = users[s as usize].sent.get(&(3, r)).copied().unwrap_or(0);
            let acked = users[s as usize].acked.get(&(3, r)).copied().unwrap_or(0);
            let got = users[r as usize].got.get(&(3, s)).copied().unwrap_or(0);
            assert!(got <= sent, "round 3: {r} got up to seq {got} of {sent} from {s}");
            if on_b.contains(&r) {
                assert!(
                    acked <= got,
                    "round 3: {s} was told {acked} pushed to {r}, which got {got}"
                );
            }
        }
    }
    let gaps: u64 = users.iter().map(|u| u.gaps).sum();
    println!(
        "round 3 (a killed {:.2?} in): {} pushed, {b_to_b} between b's users all delivered; \
         a's {n_a} users closed within {close_after:.2?}, all back on b within {back_after:.2?} \
         of the kill ({attempts} connection attempts, {gaps} gaps while away); round over in {took:.2?}",
        killed_at.duration_since(r3_start),
        total_sent(&users, 3),
    );
    // b logged a's users in again, from their new connections.
    let want = on_b.len() + on_a.len();
    assert!(
        wait_for(Duration::from_secs(5), || logins(&b).len() >= want),
        "b logged {} logins, expected {want}",
        logins(&b).len()
    );
    let b_logins = logins(&b);
    let relogins = &b_logins[on_b.len()..];
    check_peers(&users, relogins);
    let mut again: Vec<u32> = relogins.iter().map(|(u, _)| *u).collect();
    again.sort_unstable();
    again.dedup();
    let mut want_again = on_a.clone();
    want_again.sort_unstable();
    assert_eq!(again, want_again, "b's new logins are a's users");
    println!("haproxy: {}", haproxy_summary(&h));

    // Round 4: everyone on b, everyone pushes: every message delivered
    // exactly once, in order.
    let took = exact_round(&mut users, spec(4, USERS, 4, false), epoch);
    assert_eq!(
        receivers_seen(&users, 4),
        HashMap::from([(1, full)]),
        "PUSH_OK receivers (only b subscribed)"
    );
    report(&users, 4, "b alone, 200 senders", full, took);

    // b stops cleanly (SIGTERM): every connection closed, no leak, no
    // error logged.
    drop(users);
    let s = b.stop_clean();
    // Every connection HAProxy made carried a good header (health checks
    // included: LOCAL), from the trusted source.
    assert!(
        !s.stdout.contains("PROXY protocol header"),
        "{}",
        tail(&s.stdout, 20)
    );
    let last = s.stdout.lines().find(|l| l.contains("pushsrv stopped:"));
    assert!(last.is_some(), "{}", tail(&s.stdout, 5));
    println!("b: {}", last.unwrap());
    println!("whole test: {:.2?}", t_start.elapsed());
}

/// With the PROXY protocol on, each login line names the client's own
/// address (CLIENT_IP and the port it connected from), not HAProxy's.
fn check_peers(users: &[User], lines: &[(u32, String)]) {
    for (uid, peer) in lines {
        if PROXY_V2 {
            let want = format!("{CLIENT_IP}:{}", users[*uid as usize].local_port);
            assert_eq!(*peer, want, "login of {uid}: the real client's address");
        } else {
            assert!(
                peer.starts_with("127.0.0.1:"),
                "login of {uid} from {peer}: HAProxy's address"
            );
        }
    }
}

/// A blocking client logged in as `uid` straight to an instance (5 s
/// read timeout).
fn direct_login(srv: SocketAddr, uid: u32) -> TcpStream {
    let (s, _) = login(srv, uid, Duration::from_secs(5)).expect("login");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// PUSH `text` to `to` on a blocking client; the reply: (id, its value).
fn push(s: &mut TcpStream, to: u32, text: &[u8]) -> (u16, u32) {
    let mut body = to.to_le_bytes().to_vec();
    body.extend_from_slice(text);
    s.write_all(&packet(ID_PUSH, &body)).unwrap();
    let (id, b) = read_packet(s).expect("PUSH reply");
    (id, u32::from_le_bytes(b[..4].try_into().unwrap()))
}

/// What pushsrv.c's top comment promises of one instance: a second login
/// of a uid replaces the first (whose connection closes), a connection may
/// log in again as another uid, a message for nobody here is dropped,
/// the largest payload goes through intact, and malformed or early
/// packets close the connection.
#[test]
fn one_instance_keeps_its_protocol() {
    require("redis-server", "redis-server");
    ensure_built();
    let scratch = Scratch(scratch_dir("pushsrv-proto"));
    let redis_port = free_port();
    let _redis = start_redis(&scratch.0, redis_port);
    let p = start_pushsrv(Ipv4Addr::LOCALHOST, redis_port, &scratch.0, false);
    let srv = SocketAddr::from((Ipv4Addr::LOCALHOST, p.port));
    let quiet = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
            "expected nothing, got {r:?} {:02x?}",
            &b[..*r.as_ref().unwrap_or(&0)]
        );
    };

    // A second login of uid 5 replaces the first, whose connection closes.
    let mut first = direct_login(srv, 5);
    let mut second = direct_login(srv, 5);
    assert!(
        closed_within(&mut first, Duration::from_secs(2)),
        "the replaced login's connection stays open"
    );
    let mut sender = direct_login(srv, 6);
    assert_eq!(push(&mut sender, 5, b"to the second"), (ID_PUSH_OK, 1));
    assert_eq!(
        read_packet(&mut second).unwrap(),
        (ID_DELIVER, b"to the second".to_vec())
    );

    // The second logs in again as 7: nothing more for 5 reaches it.
    second.write_all(&packet(ID_LOGIN, &7u32.to_le_bytes())).unwrap();
    assert_eq!(
        read_packet(&mut second).unwrap(),
        (ID_LOGIN_OK, 7u32.to_le_bytes().to_vec())
    );
    assert_eq!(push(&mut sender, 5, b"nobody"), (ID_PUSH_OK, 1));
    let big: Vec<u8> = (0..1488u32).map(|i| (i * 7 + 1) as u8).collect();
    assert_eq!(push(&mut sender, 7, &big), (ID_PUSH_OK, 1));
    assert_eq!(read_packet(&mut second).unwrap(), (ID_DELIVER, big));
    quiet(&mut second);

    // An empty payload is a message too.
    assert_eq!(push(&mut sender, 7, b""), (ID_PUSH_OK, 1));
    assert_eq!(read_packet(&mut second).unwrap(), (ID_DELIVER, Vec::new()));

    // PUSH before LOGIN, a short LOGIN, a short PUSH: closed, no reply.
    for bad in [packet(ID_PUSH, &[7, 0, 0, 0, b'x']), packet(ID_LOGIN, &[7, 0])] {
        let mut c = TcpStream::connect(srv).unwrap();
        c.write_all(&bad).unwrap();
        let mut rest = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = c.read_to_end(&mut rest);
        assert!(r.is_ok() && rest.is_empty(), "{bad:02x?}: {r:?} {rest:02x?}");
    }
    sender.write_all(&packet(ID_PUSH, &[7, 0])).unwrap();
    assert!(closed_within(&mut sender, Duration::from_secs(2)), "a short PUSH");
    quiet(&mut second);
    drop((second, sender));
    let s = p.stop();
    assert!(
        s.status.success() && !s.stderr.contains("Sanitizer"),
        "{:?}\n{}",
        s.status,
        s.stderr
    );
    assert_eq!(s.stderr, "", "nothing on stderr (no error)");
    assert!(
        s.stdout
            .contains("pushsrv stopped: logins=4 pushes=4 push_errors=0 delivered=3"),
        "{}",
        tail(&s.stdout, 5)
    );
}

/// Redis stops under a running instance: PUSH gets PUSH_ERR, the instance
/// logs a bounded number of errors and does not crash; once Redis is
/// back, it subscribes again and delivers.
#[test]
fn redis_outage() {
    require("redis-server", "redis-server");
    ensure_built();
    let scratch = Scratch(scratch_dir("outage"));
    let redis_port = free_port();
    let mut redis = start_redis(&scratch.0, redis_port);
    let p = start_pushsrv(Ipv4Addr::LOCALHOST, redis_port, &scratch.0, false);
    let srv = SocketAddr::from((Ipv4Addr::LOCALHOST, p.port));
    let mut alice = direct_login(srv, 1);
    let mut bob = direct_login(srv, 2);
    assert_eq!(push(&mut alice, 2, b"before"), (ID_PUSH_OK, 1));
    assert_eq!(read_packet(&mut bob).unwrap(), (ID_DELIVER, b"before".to_vec()));

    // Redis goes away for 1.5 s.
    redis.kill().unwrap();
    let t0 = Instant::now();
    let (id, v) = push(&mut alice, 2, b"lost");
    assert_eq!((id, v), (ID_PUSH_ERR, 2), "a PUSH while Redis is down");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "PUSH_ERR took {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1500) - t0.elapsed().min(Duration::from_millis(1500)));
    let errors = p.stderr().lines().filter(|l| l.contains("[ERROR]")).count();
    assert!(
        (1..=3).contains(&errors),
        "expected 1 to 3 error lines while Redis is down (not one per retry), got {errors}:\n{}",
        p.stderr()
    );

    // Redis is back (same port): the instance subscribes again.
    let _redis = start_redis(&scratch.0, redis_port);
    assert!(
        wait_for(Duration::from_secs(5), || p
            .stdout()
            .matches("subscribed to push.*")
            .count()
            == 2),
        "no second subscription:\n{}",
        p.stdout()
    );
    // The pool thread's connection broke: the next PUSH makes another.
    let ok = wait_for(Duration::from_secs(5), || {
        push(&mut alice, 2, b"after").0 == ID_PUSH_OK
    });
    assert!(ok, "PUSH never succeeded again");
    assert_eq!(read_packet(&mut bob).unwrap(), (ID_DELIVER, b"after".to_vec()));
    drop((alice, bob));
    let s = p.stop();
    assert!(s.status.success(), "{:?}\n{}", s.status, s.stderr);
    assert!(!s.stderr.contains("Sanitizer"), "{}", s.stderr);
    assert!(s.stdout.contains("pushsrv stopped:"), "{}", s.stdout);
}
