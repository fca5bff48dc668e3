//! The C sample server `c-examples/maritcp` (c-examples/README.md), built
//! with ASan/UBSan (`target/ctests/maritcp-asan`) and as shipped
//! (`c-examples/maritcp`), and the `mario_client` program.

mod common;
mod protocol;

use common::*;
use protocol::*;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Settings for most tests (PORT is added by `Proc::maritcp`).
const CONF: &str = "TIMEOUT 30\nWORKERNUM 2\nCONNNUM 1024\n";

/// Runs `bin` (with `args`) in `dir` until it exits, killing it after
/// `limit`.
fn run_bounded(bin: &Path, args: &[&str], dir: &Path, limit: Duration) -> Output {
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: killing our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{} {args:?} did not exit within {limit:?}", bin.display());
        }
    }
}

#[test]
fn login_answered_exactly() {
    let p = Proc::maritcp(CONF, true);
    check_login_exact(p.port);
    check_pipelined(p.port);
    p.stop_clean();
}

#[test]
fn many_connections_at_once() {
    let p = Proc::maritcp("TIMEOUT 30\nWORKERNUM 4\nCONNNUM 1024\n", true);
    check_many_connections(p.port, 4, 400, 5);
    check_login_exact(p.port);
    p.stop_clean();
}

/// The shipped (non-sanitizer) build: every protocol check.
#[test]
fn plain_build_protocol() {
    let p = Proc::maritcp(CONF, false);
    check_all(p.port);
    let s = p.stop_clean();
    assert!(s.stdout.contains("maritcp stopped"), "stdout:\n{}", s.stdout);
}

#[test]
fn wrong_login_length_closes_and_logs_an_error() {
    let p = Proc::maritcp(CONF, true);
    for len in [8, 9, 11, 12] {
        check_wrong_length(p.port, len);
    }
    check_wrong_length_after_good(p.port);
    // One error line per bad LOGIN, on stderr, through the log thread.
    let errors = || p.stderr().lines().filter(|l| l.contains("[ERROR]")).count();
    assert!(
        wait_for(Duration::from_secs(5), || errors() >= 5),
        "expected 5 [ERROR] lines on stderr, got {}:\n{}",
        errors(),
        p.stderr()
    );
    // The server is unharmed.
    check_login_exact(p.port);
    p.stop_clean();
}

/// ECHO (0x6102): the whole packet comes back unchanged at every size up
/// to `MAX_PKG_LEN`, pipelined, in pieces and between LOGINs; a packet over
/// `MAX_PKG_LEN` closes the connection as any other bad frame.
#[test]
fn echo_returns_the_packet_unchanged() {
    const ECHO: u16 = 0x6102;
    let p = Proc::maritcp(CONF, true);
    let echo = |len: usize, seed: u8| {
        let body: Vec<u8> = (0..len - 8).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        frame(STX, ECHO, &body)
    };
    let mut s = connect(p.port);
    for len in [8, 9, 10, 100, 1400, 1500] {
        let pkt = echo(len, len as u8);
        s.write_all(&pkt).unwrap();
        let mut got = vec![0u8; len];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, pkt, "ECHO of {len} bytes");
    }
    // Pipelined with LOGINs, written in 7-byte pieces.
    let mut batch = Vec::new();
    let mut expect = Vec::new();
    for i in 0..40u8 {
        batch.extend(login(u16::from(i)));
        expect.extend(reply());
        batch.extend(echo(1400, i));
        expect.extend(echo(1400, i));
    }
    for chunk in batch.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    let mut got = vec![0u8; expect.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == expect, "pipelined ECHO and LOGIN replies differ");
    expect_quiet(&mut s, Duration::from_millis(200));
    let mut big = connect(p.port);
    big.write_all(&frame(STX, ECHO, &[0u8; 1493])).unwrap();
    expect_closed_silently(&mut big, Duration::from_secs(1), "ECHO of 1,501 bytes");
    p.stop_clean();
}

#[test]
fn framework_refuses_bad_frames() {
    let p = Proc::maritcp(CONF, true);
    check_bad_frames(p.port);
    p.stop_clean();
}

/// The stats thread logs `online number: N` every 60 s, N counting the
/// connections logged in and still open. (Waits about a minute.)
#[test]
fn online_count_in_stats_line() {
    // TIMEOUT 0: no timeouts, the connections below idle for a minute.
    let p = Proc::maritcp("TIMEOUT 0\nWORKERNUM 2\nCONNNUM 64\n", true);
    let t_start = Instant::now();
    let mut logged: Vec<_> = (0..7).map(|_| connect(p.port)).collect();
    for (i, s) in logged.iter_mut().enumerate() {
        s.write_all(&login(100 + i as u16)).unwrap();
        expect_reply(s);
    }
    // Connected but never logged in: not counted.
    let idle: Vec<_> = (0..2).map(|_| connect(p.port)).collect();
    // A bad LOGIN: never counted.
    check_wrong_length(p.port, 11);
    // Logged in, then gone: uncounted by the logout handler (one FIN, one
    // RST, one half-close).
    reset(logged.pop().unwrap());
    drop(logged.pop().unwrap());
    let mut half = logged.pop().unwrap();
    half_close(&half);
    assert_eq!(read_until_closed(&mut half, Duration::from_secs(2)), Some(vec![]));
    let expected = logged.len();
    assert_eq!(expected, 4);

    assert!(
        p.wait_stdout("online number:", Duration::from_secs(75)),
        "no stats line after {:?}\nstdout:\n{}",
        t_start.elapsed(),
        tail(&p.stdout(), 20)
    );
    let out = p.stdout();
    let line = out.lines().find(|l| l.contains("online number:")).unwrap();
    assert!(line.contains("[INFO]"), "{line}");
    let n: usize = line
        .rsplit("online number:")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("bad stats line {line:?}"));
    assert_eq!(n, expected, "stats line {line:?}");
    // Next to it, the server's own numbers (mario_get_stats): 10
    // connections (7 logged in, 2 idle, 1 bad LOGIN), 6 still open.
    let stats = out
        .lines()
        .find(|l| l.contains("[INFO] stats: "))
        .unwrap_or_else(|| panic!("no stats line next to {line:?}:\n{}", tail(&out, 20)));
    for want in [
        "connections=6 ",
        "accepted=10 ",
        "refused=0 ",
        "out_queued=0 ",
        "stalls=0 ",
        "stalled_workers=0 ",
        "pool_queued=0 ",
    ] {
        assert!(stats.contains(want), "{want:?} not in {stats:?}");
    }
    // TIMEOUT 0 disables timeouts: a minute of silence closed nothing.
    for s in logged.iter_mut() {
        s.write_all(&login(1)).unwrap();
        expect_reply(s);
    }
    drop(idle);
    p.stop_clean();
}

/// METRICS in init.conf serves the statistics for Prometheus; the
/// shipped init.conf leaves it unset.
#[test]
fn metrics_served_when_configured() {
    let shipped = std::fs::read_to_string(root().join("c-examples/init.conf")).unwrap();
    assert!(
        !shipped.lines().any(|l| l.starts_with("METRICS")),
        "the shipped init.conf must not serve metrics"
    );
    let maddr = format!("127.0.0.1:{}", free_port());
    let p = Proc::maritcp(
        &format!("TIMEOUT 30\nWORKERNUM 2\nCONNNUM 16\nMETRICS {maddr}\n"),
        true,
    );
    assert!(
        p.stdout().contains(&format!("metrics         {maddr}")),
        "{}",
        p.stdout()
    );
    let mut s = connect(p.port);
    s.write_all(&login(7)).unwrap();
    expect_reply(&mut s);
    let body = |addr: &str| -> String {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut all = String::new();
        std::io::Read::read_to_string(&mut c, &mut all).unwrap();
        all
    };
    assert!(
        wait_for(Duration::from_secs(5), || {
            let text = body(&maddr);
            text.starts_with("HTTP/1.1 200 OK\r\n")
                && text
                    .lines()
                    .filter(|l| l.starts_with("mario_connections{"))
                    .map(|l| l.ends_with(" 1") as u32)
                    .sum::<u32>()
                    == 1
                && text
                    .lines()
                    .filter(|l| l.starts_with("mario_packets_received_total{"))
                    .map(|l| l.ends_with(" 1") as u32)
                    .sum::<u32>()
                    == 1
        }),
        "{}",
        body(&maddr)
    );
    drop(s);
    p.stop_clean();
}

/// TIMEOUT is the read timeout: an idle connection is closed after it.
#[test]
fn idle_connection_times_out() {
    let p = Proc::maritcp("TIMEOUT 1\nWORKERNUM 2\nCONNNUM 16\n", true);
    let mut s = connect(p.port);
    s.write_all(&login(5)).unwrap();
    expect_reply(&mut s);
    let t0 = Instant::now();
    expect_closed_silently(&mut s, Duration::from_secs(5), "idle connection with TIMEOUT 1");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed after {:?}",
        t0.elapsed()
    );
    p.stop_clean();
}

#[test]
fn sigterm_stops_cleanly_and_config_is_printed() {
    let p = Proc::maritcp(
        "# comment line\nTIMEOUT 9\nWORKERNUM 3\nCONNNUM 77\nUSERNUM 55\nFILENUM 66\nUNKNOWN 1\n",
        true,
    );
    let out = p.stdout();
    let value = |name: &str| -> Option<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let port = p.port.to_string();
    for (name, want) in [
        ("port", port.as_str()),
        ("timeout", "9"),
        ("workernum", "3"),
        ("connnum", "77"),
        ("usernum", "55"),
        ("filenum", "66"),
    ] {
        assert_eq!(
            value(name).as_deref(),
            Some(want),
            "{name} line in stdout:\n{out}"
        );
    }
    // Logged-in clients at stop time are closed (the logout handler runs
    // under ASan).
    let mut clients: Vec<_> = (0..5).map(|_| connect(p.port)).collect();
    for s in clients.iter_mut() {
        s.write_all(&login(9)).unwrap();
        expect_reply(s);
    }
    let s = p.stop_clean();
    assert_eq!(s.status.code(), Some(0));
    assert!(s.stdout.contains("maritcp stopped"), "stdout:\n{}", s.stdout);
    assert!(s.stdout.contains("got SIGTERM"), "stdout:\n{}", s.stdout);
    for c in clients.iter_mut() {
        assert_eq!(read_until_closed(c, Duration::from_secs(2)), Some(vec![]));
    }
}

#[test]
fn bad_config_exits_1() {
    ensure_built();
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("port 0", Some("PORT 0\nWORKERNUM 2\nCONNNUM 16\n"), "PORT"),
        ("no port", Some("WORKERNUM 2\nCONNNUM 16\n"), "PORT"),
        ("bad number", Some("PORT 8082\nWORKERNUM two\n"), "WORKERNUM"),
        ("no init.conf", None, "init.conf"),
    ];
    for bin in ["target/ctests/maritcp-asan", "c-examples/maritcp"] {
        for (what, conf, mention) in cases {
            let dir = scratch_dir("maritcp-badconf");
            if let Some(c) = conf {
                std::fs::write(dir.join("init.conf"), c).unwrap();
            }
            let o = run_bounded(&root().join(bin), &["-f"], &dir, Duration::from_secs(20));
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            assert_eq!(
                o.status.code(),
                Some(1),
                "{bin}, {what}: status\nstdout:\n{out}\nstderr:\n{err}"
            );
            assert!(
                err.contains("[error]") && err.contains(mention) && !err.contains("Sanitizer"),
                "{bin}, {what}: stderr should explain, mentioning {mention}:\n{err}"
            );
            assert!(!out.contains("start server ok"), "{bin}, {what}: started:\n{out}");
        }
    }
}

#[test]
fn mario_client_against_maritcp() {
    let p = Proc::maritcp(CONF, true);
    let client = root().join("c-examples/mario_client");
    let dir = scratch_dir("mario-client");
    let port = p.port.to_string();
    for uid in ["42", "0", "65535"] {
        let o = run_bounded(&client, &["127.0.0.1", &port, uid], &dir, Duration::from_secs(10));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "uid {uid}: {out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains("reply: stx=0x8eb69af7 pkglen=8 akg_id=0x6101"),
            "{out}"
        );
    }
    let o = run_bounded(&client, &["127.0.0.1", &port], &dir, Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(0), "default uid");
    // Against a port where nothing listens: exit 1.
    let free = free_port().to_string();
    let o = run_bounded(&client, &["127.0.0.1", &free, "1"], &dir, Duration::from_secs(10));
    assert_eq!(
        o.status.code(),
        Some(1),
        "no server: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    p.stop_clean();
}

/// The pid of a process of ours whose working directory is `dir`.
fn pid_with_cwd(dir: &Path) -> Option<i32> {
    let dir = dir.canonicalize().ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        (cwd == dir && exe.file_name()? == "maritcp").then_some(pid)
    })
}

/// By default maritcp daemonizes like the original: the parent exits 0 at
/// once and the daemon serves.
#[test]
fn default_mode_daemonizes() {
    ensure_built();
    let dir = scratch_dir("maritcp-daemon");
    let port = free_port();
    std::fs::write(
        dir.join("init.conf"),
        format!("TIMEOUT 30\nWORKERNUM 2\nCONNNUM 16\nPORT {port}\n"),
    )
    .unwrap();
    let out = dir.join("stdout.txt");
    let status = Command::new(root().join("c-examples/maritcp"))
        .current_dir(&dir)
        .env_remove("MARITCP_FOREGROUND")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .status()
        .expect("run maritcp");
    // Whatever happens next, kill the daemon we started.
    struct Daemon(std::path::PathBuf);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                match pid_with_cwd(&self.0) {
                    // SAFETY: the daemon we started (found by its scratch
                    // working directory); it ignores SIGTERM.
                    Some(pid) => unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    },
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let daemon = Daemon(dir.clone());
    assert!(status.success(), "parent exit: {status:?}");
    let started = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("start server ok")
    });
    assert!(
        started,
        "daemon did not start:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let pid = pid_with_cwd(&dir).expect("daemon process");
    // It runs in its own session.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    assert_eq!(fields[3], pid.to_string(), "daemon is a session leader (setsid)");
    check_login_exact(port);
    drop(daemon);
    assert!(
        wait_for(Duration::from_secs(5), || pid_with_cwd(&dir).is_none()),
        "daemon still running"
    );
}
