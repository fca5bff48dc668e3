//! Shared support for the integration tests: builds the C programs once,
//! starts servers on free loopback ports, and speaks the frame protocol.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use mario::Head;

pub mod capture;
pub mod lines;

/// The stx of maritcp (and of testsrv when started with `TS_STX`).
pub const STX: u32 = 0x8eb6_9af7;
/// testsrv packet ids (see tests/c/testsrv.c).
pub const ID_ECHO: u16 = 0x0001;
pub const ID_CLOSE0: u16 = 0x0002;
pub const ID_CLOSEM1: u16 = 0x0003;
pub const ID_FAIL: u16 = 0x0004;
pub const ID_INFO: u16 = 0x0005;
pub const ID_SUB: u16 = 0x0007;
pub const ID_FLOOD: u16 = 0x0008;
/// maritcp's LOGIN.
pub const ID_LOGIN: u16 = 0x6101;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds libmario, the examples and the sanitizer-built C test programs
/// once per test binary (`make all ctests`).
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| make(&["all", "ctests"]));
}

/// Runs `make -s ARGS` in the repository; fails the test with its output
/// if it fails.
pub fn make(args: &[&str]) {
    let out = Command::new("make")
        .arg("-s")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "mario-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A port for a server under test: free a moment ago, and below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), so no client socket of another test can take it between now
/// and the server's bind (a port the kernel hands out for `bind(:0)` is in
/// that range, and was taken that way now and then under load). Ports of
/// one test process are handed out in turn from a per-process start, each
/// checked by binding it on every IPv4 address; if that range is too small
/// here, the kernel's choice.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_536);
    if ephemeral > LOW + 1_000 {
        let span = ephemeral - LOW;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let k = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
            let port = (LOW + (start + k) % span) as u16;
            if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return port;
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// A server process under test, with stdout/stderr captured to files.
pub struct Proc {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub out: PathBuf,
    pub err: PathBuf,
}

/// What a stopped server left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub const ASAN_OPTIONS: &str = "detect_leaks=1:abort_on_error=0:exitcode=86:halt_on_error=1";
pub const UBSAN_OPTIONS: &str = "print_stacktrace=1:halt_on_error=1:exitcode=87";

impl Proc {
    fn spawn(bin: &Path, args: &[&str], env: &[(&str, String)], dir: PathBuf, port: u16) -> Proc {
        Proc::spawn_prepared(bin, args, env, dir, port, |c| c)
    }

    fn spawn_prepared(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        dir: PathBuf,
        port: u16,
        prep: impl FnOnce(Command) -> Command,
    ) -> Proc {
        let out = dir.join("stdout.txt");
        let err = dir.join("stderr.txt");
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let mut cmd = prep(cmd);
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .env("ASAN_OPTIONS", ASAN_OPTIONS)
            .env("UBSAN_OPTIONS", UBSAN_OPTIONS);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc {
            child: Some(child),
            port,
            dir,
            out,
            err,
        }
    }

    /// Starts target/ctests/testsrv with the given `TS_*` settings on a
    /// free port and waits until it listens.
    pub fn testsrv(env: &[(&str, &str)]) -> Proc {
        Proc::ctest("testsrv", env)
    }

    /// Starts the C test program target/ctests/`name` (which reads
    /// `TS_PORT`) with the given `TS_*` settings on a free port and waits
    /// until it listens.
    pub fn ctest(name: &str, env: &[(&str, &str)]) -> Proc {
        ensure_built();
        for _ in 0..5 {
            let port = free_port();
            let mut e: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
            e.push(("TS_PORT", port.to_string()));
            let mut p = Proc::spawn(
                &root().join("target/ctests").join(name),
                &[],
                &e,
                scratch_dir(name),
                port,
            );
            if p.wait_started() {
                return p;
            }
            let _ = p.kill();
        }
        panic!("{name} did not start");
    }

    /// Starts the C test program target/ctests/`name` on `port` (its
    /// `TS_PORT`) with `env`; `prep` may adjust or replace the command
    /// first (its directory, output files and environment are set after).
    /// Waits until it listens. `Err`: it exited first (its output).
    pub fn ctest_with(
        name: &str,
        port: u16,
        env: &[(&str, &str)],
        prep: impl FnOnce(Command) -> Command,
    ) -> Result<Proc, Stopped> {
        ensure_built();
        let mut e: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        e.push(("TS_PORT", port.to_string()));
        let mut p = Proc::spawn_prepared(
            &root().join("target/ctests").join(name),
            &[],
            &e,
            scratch_dir(name),
            port,
            prep,
        );
        if p.wait_started() {
            return Ok(p);
        }
        Err(p.stop())
    }

    /// Like [`Proc::testsrv`], with the server's descriptor limit set to
    /// `nofile` (soft and hard) before it starts.
    pub fn testsrv_nofile(env: &[(&str, &str)], nofile: u32) -> Proc {
        ensure_built();
        let port = free_port();
        let mut e: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        e.push(("TS_PORT", port.to_string()));
        let script = format!(
            "ulimit -n {nofile} && exec {}",
            root().join("target/ctests/testsrv").display()
        );
        let mut p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", &script],
            &e,
            scratch_dir("testsrv"),
            port,
        );
        assert!(
            p.wait_started(),
            "testsrv (nofile {nofile}) did not start: {}",
            p.stderr()
        );
        p
    }

    /// Starts maritcp (`asan`: the sanitizer build) in the foreground in a
    /// scratch directory whose init.conf is `conf` plus a free PORT line.
    pub fn maritcp(conf: &str, asan: bool) -> Proc {
        ensure_built();
        let bin = if asan {
            root().join("target/ctests/maritcp-asan")
        } else {
            root().join("c-examples/maritcp")
        };
        Proc::maritcp_at(&bin, conf, &[])
    }

    /// Starts the maritcp binary `bin` (any build of c-examples/) as
    /// [`Proc::maritcp`] does, with `env` added to its environment.
    pub fn maritcp_at(bin: &Path, conf: &str, env: &[(&str, String)]) -> Proc {
        for _ in 0..5 {
            let port = free_port();
            let dir = scratch_dir("maritcp");
            std::fs::write(dir.join("init.conf"), format!("{conf}\nPORT {port}\n")).unwrap();
            let mut p = Proc::spawn(bin, &["-f"], env, dir, port);
            if p.wait_started() {
                return p;
            }
            let _ = p.kill();
        }
        panic!("maritcp did not start");
    }

    fn wait_started(&mut self) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self
                .stdout()
                .contains("--------------start server ok--------------")
            {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the server wrote to stdout so far: while it runs, only whole
    /// lines (a line it is still writing would parse as a cut one).
    pub fn stdout(&self) -> String {
        let mut s = std::fs::read_to_string(&self.out).unwrap_or_default();
        if self.child.is_some() {
            s.truncate(s.rfind('\n').map_or(0, |i| i + 1));
        }
        s
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until stdout contains `pat`.
    pub fn wait_stdout(&self, pat: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if self.stdout().contains(pat) {
                return true;
            }
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `EV close serial=S ...` line of connection `serial`, if logged
    /// (complete lines only: the log thread may be writing the last one).
    pub fn close_event(&self, serial: u32) -> Option<String> {
        let key = format!("EV close serial={serial} ");
        self.stdout()
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find(|l| l.contains(&key))
            .map(|l| l.trim_end().to_string())
    }

    /// Waits for the close event of `serial` and returns (reason, packets).
    pub fn wait_close_event(&self, serial: u32, timeout: Duration) -> Option<(u16, u32)> {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.close_event(serial) {
                let field = |name: &str| -> u32 {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("no {name} in {l}"))
                };
                return Some((field("reason=") as u16, field("packets=")));
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Number of `EV close` lines for `serial` (must be exactly one).
    pub fn close_event_count(&self, serial: u32) -> usize {
        let key = format!("EV close serial={serial} ");
        self.stdout().lines().filter(|l| l.contains(&key)).count()
    }

    /// SIGTERM, then wait up to 15 s for exit.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not stop within 15 s of SIGTERM\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Stopped {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Stops the server and asserts a clean exit: status 0, no sanitizer
    /// report, no VIOLATION line.
    pub fn stop_clean(self) -> Stopped {
        let s = self.stop();
        assert!(
            s.status.success() && !s.stderr.contains("VIOLATION") && !s.stderr.contains("Sanitizer"),
            "unclean stop: {:?}\nstdout (tail):\n{}\nstderr:\n{}",
            s.status,
            tail(&s.stdout, 40),
            s.stderr
        );
        let unexpected = unexpected_log_lines(&s.stdout, &s.stderr);
        assert!(
            unexpected.is_empty(),
            "unexpected log lines:\n{}",
            unexpected.join("\n")
        );
        s
    }

    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Parses `SUMMARY connected=.. closed=.. packets=.. violations=..`.
pub fn summary(stdout: &str, key: &str) -> u64 {
    let l = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY"))
        .expect("SUMMARY line");
    l.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {l}"))
}

/// A client connection with a 5 s read timeout.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn frame(stx: u32, id: u16, body: &[u8]) -> Vec<u8> {
    Head::frame(stx, id, body).expect("a frame of at most 65,535 bytes")
}

/// Reads one frame (head + body).
pub fn read_frame(s: &mut TcpStream) -> io::Result<(Head, Vec<u8>)> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    let head = Head::parse(&h).unwrap();
    let mut body = vec![0u8; (head.pkglen as usize).saturating_sub(8)];
    s.read_exact(&mut body)?;
    Ok((head, body))
}

/// testsrv INFO: (serial, slot, worker, workers).
pub fn info(s: &mut TcpStream, stx: u32) -> (u32, u32, u16, u16) {
    s.write_all(&frame(stx, ID_INFO, &[])).unwrap();
    let (h, b) = read_frame(s).expect("INFO reply");
    assert_eq!(h.akg_id, ID_INFO);
    (
        u32::from_ne_bytes(b[0..4].try_into().unwrap()),
        u32::from_ne_bytes(b[4..8].try_into().unwrap()),
        u16::from_ne_bytes(b[8..10].try_into().unwrap()),
        u16::from_ne_bytes(b[10..12].try_into().unwrap()),
    )
}

/// A client whose receive buffer is small (4 KiB, set before connecting),
/// so that output it does not read stays in the server.
pub fn connect_small_rcvbuf(port: u16) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address and option values are valid for their sizes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        let s: TcpStream = std::os::fd::FromRawFd::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

/// True if the server closes `s` within `within` (EOF or reset), ignoring
/// any bytes it still sends.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < within {
        let left = within.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// Reads `s` to its end, `chunk` bytes at a time, pausing `pause` between
/// reads and handing each read's bytes to `on_bytes`: the byte count and
/// how the stream ended (Ok: FIN; Err: a reset or the read timeout).
pub fn read_until_end(
    s: &mut TcpStream,
    chunk: usize,
    pause: Duration,
    mut on_bytes: impl FnMut(&[u8]),
) -> (usize, io::Result<()>) {
    let mut n = 0;
    let mut buf = vec![0u8; chunk];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(k) => {
                n += k;
                on_bytes(&buf[..k]);
            }
            Err(e) => break Err(e),
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    };
    (n, end)
}

/// Closes with RST.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid `linger` value and size on an open socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
}

pub fn half_close(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------
// A Rust API server running on a thread of this process.

/// A server of the Rust API on a thread of this process.
pub struct Running<S = ()> {
    pub server: Arc<mario::Server<S>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    pub port: u16,
}

impl<S: Send + 'static> Running<S> {
    /// Builds `b` on a free port, runs it on a new thread and waits until
    /// it listens.
    pub fn start(b: mario::ServerBuilder<S>) -> Running<S> {
        let server = Arc::new(b.port(0).build().expect("build server"));
        let s = server.clone();
        let thread = std::thread::spawn(move || s.run());
        let port = server
            .wait_listening(Duration::from_secs(10))
            .expect("server listening");
        assert_ne!(port, 0, "port 0 must be replaced by the bound port");
        assert_eq!(server.port(), port);
        Running {
            server,
            thread: Some(thread),
            port,
        }
    }

    /// A client connected to it (5 s read timeout).
    pub fn connect(&self) -> TcpStream {
        connect(self.port)
    }

    /// Stops the server from this thread: `run` must then return `Ok`
    /// promptly.
    pub fn stop(mut self) {
        let t0 = Instant::now();
        self.server.stop_handle().stop();
        let t = self.thread.take().unwrap();
        while !t.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "run did not return after stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join()
            .expect("server thread")
            .expect("run returns Ok after stop");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            t0.elapsed()
        );
    }
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // A failed test: stop without waiting for it here.
            let h = self.server.stop_handle();
            std::thread::spawn(move || h.stop());
        }
    }
}

/// The process's CPU time (user + system) in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The process's resident set in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// xorshift64* PRNG with a fixed seed, for reproducible random tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Error-level log lines a test run may legitimately produce: the library's
/// own reports of bad input and overload, and the sample server's. Anything
/// else at error level (or any panic, sanitizer or violation report) fails
/// the run, as nginx's test suite does with its error log.
pub const EXPECTED_ERRORS: &[&str] = &[
    "pkg error, length:",
    "invalid akg_id:",
    "workers are too busy",
    "accept: ",
    "invalid login packet",
    "over its cap",
];

/// The lines of a server's output that no test expects.
pub fn unexpected_log_lines(stdout: &str, stderr: &str) -> Vec<String> {
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| {
            let bad = l.contains("[ERROR]")
                || l.contains("panick")
                || l.contains("VIOLATION")
                || l.contains("Sanitizer")
                || l.contains("runtime error");
            bad && !EXPECTED_ERRORS.iter().any(|e| l.contains(e))
        })
        .map(str::to_string)
        .collect()
}

/// `bytes` cut into writes at random points (1..=8 bytes, up to 1,600, up
/// to 6,000 or up to `max_cut`, equally likely), one write in `pause_one_in`
/// followed by a pause of 0.1 to 3 ms.
pub fn random_writes(
    rng: &mut Rng,
    bytes: &[u8],
    max_cut: usize,
    pause_one_in: u64,
) -> Vec<(Vec<u8>, Option<Duration>)> {
    let mut writes = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let cut = match rng.range(0, 3) {
            0 => rng.range(1, 8),
            1 => rng.range(1, 1600),
            2 => rng.range(1, 6000),
            _ => rng.range(1, max_cut),
        };
        let end = (at + cut).min(bytes.len());
        let pause = rng
            .chance(pause_one_in)
            .then(|| Duration::from_micros(rng.range(100, 3000) as u64));
        writes.push((bytes[at..end].to_vec(), pause));
        at = end;
    }
    writes
}

/// Sends `writes` on a clone of `c` from a new thread, pausing after those
/// with a pause; join the handle once the replies are read.
pub fn spawn_writes(c: &TcpStream, writes: Vec<(Vec<u8>, Option<Duration>)>) -> std::thread::JoinHandle<()> {
    let mut w = c.try_clone().expect("clone");
    std::thread::spawn(move || {
        for (bytes, pause) in writes {
            w.write_all(&bytes).expect("write");
            if let Some(d) = pause {
                std::thread::sleep(d);
            }
        }
    })
}

/// `ms` milliseconds times `MARIO_TEST_TIME_SCALE` (default 1): the
/// latency bounds of tests that `make sanitize` runs on a library slowed
/// down by a sanitizer.
pub fn scaled_ms(ms: u64) -> Duration {
    let k: u64 = std::env::var("MARIO_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Duration::from_millis(ms * k.max(1))
}

/// Polls `f` every 5 ms until it is true or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
