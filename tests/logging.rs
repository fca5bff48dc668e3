//! Logging through the C API (tests/c/logtest.c), and the idle cost of a
//! server: an idle libmario process must not burn CPU (the original's log
//! thread spun at a quarter of a core).
mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `MAX_LOG_LINE_LENGTH`: the longest line, newline included.
const MAX_LINE: usize = 2048;
const QUEUES: usize = 4;
const LINES: usize = 20_000;

/// Runs a C test program to completion (at most `limit`), returning
/// (success, stdout, stderr).
fn run_c(name: &str, env: &[(&str, String)], limit: Duration) -> (bool, String, String) {
    ensure_built();
    let dir = scratch_dir(name);
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut cmd = Command::new(root().join("target/ctests").join(name));
    cmd.current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish within {limit:?}\nstdout (tail):\n{}",
                tail(&std::fs::read_to_string(&out).unwrap_or_default(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap()).into_owned();
    (status.success(), stdout, stderr)
}

/// Splits `... q<k> line <i>` into (prefix, k, i).
fn parse_numbered(line: &str) -> Option<(&str, usize, usize)> {
    let pos = line.rfind(" line ")?;
    let i = line[pos + 6..].parse().ok()?;
    let before = &line[..pos];
    let q = before.rfind('q')?;
    let k = before[q + 1..].parse().ok()?;
    Some((&before[..q], k, i))
}

/// Whether `prefix` is `[<seconds>] ` followed by `rest`.
fn timed_prefix(prefix: &str, rest: &str) -> bool {
    let Some(p) = prefix.strip_prefix('[') else {
        return false;
    };
    let Some(end) = p.find("] ") else { return false };
    let secs = &p[..end];
    !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) && &p[end + 2..] == rest
}

/// The prefix each macro form of logtest.c (chosen by `i % 6`) produces,
/// and whether it goes to stderr.
fn check_form(i: usize, prefix: &str) -> bool {
    match i % 6 {
        0 => prefix == "[ERROR] ",
        1 => prefix == "[INFO] ",
        2 => prefix == "[WARN] ",
        3 => timed_prefix(prefix, "[ERROR] "),
        4 => timed_prefix(prefix, "[INFO] [log_one] "),
        _ => timed_prefix(prefix, "[WARN] "),
    }
}

fn to_stderr(i: usize) -> bool {
    matches!(i % 6, 0 | 3)
}

fn field<'a>(stdout: &'a str, line_start: &str, key: &str) -> &'a str {
    let l = stdout
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no line starting with {line_start:?}"));
    l.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {l}"))
}

#[test]
fn log_queues_deliver_every_line_in_order() {
    let (ok, stdout, stderr) = run_c(
        "logtest",
        &[("LT_LINES", LINES.to_string()), ("LT_QUEUES", QUEUES.to_string())],
        Duration::from_secs(60),
    );
    assert!(
        ok && !stderr.contains("Sanitizer") && !stderr.contains("runtime error"),
        "logtest failed\nstdout (tail):\n{}\nstderr (tail):\n{}",
        tail(&stdout, 20),
        tail(&stderr, 20)
    );
    assert!(stdout.contains("\nDONE\n"), "no DONE:\n{}", tail(&stdout, 20));

    // Every line, in both streams, fits MAX_LOG_LINE_LENGTH with its newline.
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} does not end with a newline"
        );
        for l in text.lines() {
            assert!(
                l.len() < MAX_LINE,
                "{name} line of {} bytes: {:.80}...",
                l.len(),
                l
            );
        }
    }

    // A full queue: record_log returned -1 at once and kept doing so.
    let fit: usize = field(&stdout, "FULL fit=", "fit=").parse().unwrap();
    let rejected: usize = field(&stdout, "FULL fit=", "rejected=").parse().unwrap();
    let reject_us: u64 = field(&stdout, "FULL fit=", "reject_us=").parse().unwrap();
    assert!(fit >= 100, "only {fit} lines fit in a fresh queue");
    assert_eq!(rejected, 1000, "record_log on a full queue must return -1");
    assert!(
        reject_us < 200_000,
        "1000 rejected record_log calls took {reject_us} us"
    );
    // Everything that fit before the log thread started came out, in order,
    // and nothing that was rejected did.
    let full: Vec<&str> = stdout.lines().filter(|l| l.starts_with("[INFO] full ")).collect();
    let want: Vec<String> = (0..fit)
        .map(|i| format!("[INFO] full {i}"))
        .chain(std::iter::once("[INFO] full after drain".to_string()))
        .collect();
    assert_eq!(full, want, "lines of the queue filled before start_log_thread");
    assert_eq!(
        field(&stdout, "FULL again=", "again="),
        "0",
        "a drained queue takes lines again"
    );

    // Every numbered line of every queue, in order per queue and stream,
    // each with the prefix its macro writes.
    // got[queue][0: stdout, 1: stderr]
    let mut got: Vec<[Vec<usize>; 2]> = (0..QUEUES).map(|_| [Vec::new(), Vec::new()]).collect();
    for (s, text) in [&stdout, &stderr].into_iter().enumerate() {
        for l in text.lines() {
            if let Some((prefix, k, i)) = parse_numbered(l) {
                assert!(k < QUEUES && i < LINES, "unexpected line {l:?}");
                assert!(
                    check_form(i, prefix),
                    "line {l:?} has the wrong prefix for form {}",
                    i % 6
                );
                got[k][s].push(i);
            }
        }
    }
    for (k, g) in got.iter().enumerate() {
        let want_out: Vec<usize> = (0..LINES).filter(|&i| !to_stderr(i)).collect();
        let want_err: Vec<usize> = (0..LINES).filter(|&i| to_stderr(i)).collect();
        assert!(
            g[0] == want_out,
            "queue {k}: stdout lines missing or out of order ({} of {})",
            g[0].len(),
            want_out.len()
        );
        assert!(
            g[1] == want_err,
            "queue {k}: stderr lines missing or out of order ({} of {})",
            g[1].len(),
            want_err.len()
        );
        assert!(
            stdout.contains(&format!("THREAD q{k} retries=")),
            "no THREAD line for q{k}"
        );
    }

    // The 5000-byte line arrives cut, once, between lines 100 and 101 of q0.
    let out: Vec<&str> = stdout.lines().collect();
    let long: Vec<usize> = (0..out.len())
        .filter(|&n| out[n].starts_with("[INFO] q0 long "))
        .collect();
    assert_eq!(long.len(), 1, "the long line must arrive exactly once");
    let l = out[long[0]];
    let body = &l["[INFO] q0 long ".len()..];
    assert!(body.bytes().all(|b| b == b'x'), "long line corrupted");
    let n = l.len() + 1; // with its newline
    assert!(
        (MAX_LINE - 8..=MAX_LINE).contains(&n),
        "long line arrived as {n} bytes with its newline (want at most {MAX_LINE}, cut not dropped)"
    );
    let pos = |i: usize| {
        out.iter()
            .position(|x| x.ends_with(&format!(" q0 line {i}")))
            .unwrap()
    };
    assert!(
        pos(100) < long[0] && long[0] < pos(101),
        "the long line is out of order"
    );
}

/// An idlesrv process (tests/c/idlesrv.c) on a free port.
struct Idle {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Idle {
    fn start(rtimeout: u32) -> Idle {
        ensure_built();
        for _ in 0..5 {
            let port = free_port();
            let dir = scratch_dir("idlesrv");
            let out = dir.join("stdout.txt");
            let mut child = Command::new(root().join("target/ctests/idlesrv"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
                .env("ASAN_OPTIONS", ASAN_OPTIONS)
                .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
                .env("TS_PORT", port.to_string())
                .env("TS_WORKERS", "2")
                .env("TS_RTIMEOUT", rtimeout.to_string())
                .spawn()
                .expect("spawn idlesrv");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                let s = std::fs::read_to_string(&out).unwrap_or_default();
                if s.contains("--------------start server ok--------------") {
                    return Idle { child, port, out };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("idlesrv did not start");
    }

    /// SIGTERM, then asserts a clean exit within 15 s.
    fn stop_clean(mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "idlesrv did not stop");
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = std::fs::read_to_string(self.out.with_file_name("stderr.txt")).unwrap_or_default();
        assert!(
            status.success() && !err.contains("Sanitizer"),
            "idlesrv: {status:?}\n{err}"
        );
        assert!(std::fs::read_to_string(&self.out).unwrap().contains("STOPPED"));
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 50 idle connections, 5 s: the server process must stay (nearly) at zero
/// CPU, with and without armed read timers.
fn idle_cpu(rtimeout: u32) {
    let srv = Idle::start(rtimeout);
    let pid = srv.child.id();
    let mut conns: Vec<_> = (0..50u32).map(|_| connect(srv.port)).collect();
    for (n, c) in conns.iter_mut().enumerate() {
        let f = frame(DEFAULT_STX, ID_ECHO, &(n as u32).to_ne_bytes());
        c.write_all(&f).unwrap();
        let mut back = vec![0u8; f.len()];
        c.read_exact(&mut back).expect("echo reply");
        assert_eq!(back, f);
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_seconds(pid) - cpu0;
    eprintln!("idle server (read timeout {rtimeout} s, 50 connections): {used:.3} s CPU in 5 s");
    assert!(
        used < 0.05,
        "idle server (read timeout {rtimeout}) used {used:.3} s of CPU in 5 s"
    );
    // The connections are still there and served.
    for c in conns.iter_mut() {
        assert!(
            !closed_within(c, Duration::from_millis(1)),
            "an idle connection was closed"
        );
        let f = frame(DEFAULT_STX, ID_ECHO, b"still");
        c.write_all(&f).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut back = vec![0u8; f.len()];
        c.read_exact(&mut back).expect("echo reply after idling");
        assert_eq!(back, f);
    }
    drop(conns);
    srv.stop_clean();
}

const DEFAULT_STX: u32 = 0xffff_ffff;

#[test]
fn idle_server_uses_no_cpu() {
    idle_cpu(0);
}

#[test]
fn idle_server_with_read_timers_uses_no_cpu() {
    idle_cpu(30);
}

/// A C log line cut at `MAX_LOG_LINE_LENGTH` ends before any UTF-8
/// character the cut would split (2-, 3- and 4-byte characters, after 0 to
/// 3 ASCII bytes): every line is valid UTF-8, ends with a newline and is at
/// most 2,048 bytes, and at most a character's worth shorter than the cut.
#[test]
fn long_c_log_lines_are_cut_on_character_boundaries() {
    ensure_built();
    let out = Command::new(root().join("target/ctests/utf8log"))
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .output()
        .expect("run utf8log");
    assert!(
        out.status.success(),
        "utf8log: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&[u8]> = out
        .stdout
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"[INFO] "))
        .collect();
    assert_eq!(lines.len(), 12, "{}", String::from_utf8_lossy(&out.stdout));
    for (i, l) in lines.iter().enumerate() {
        let char_len = [2, 3, 4][i / 4];
        assert!(
            l.ends_with(b"\n") && l.len() <= MAX_LINE,
            "line {i}: {} bytes",
            l.len()
        );
        assert!(
            l.len() > MAX_LINE - 1 - char_len,
            "line {i}: cut too short ({} bytes)",
            l.len()
        );
        assert!(
            std::str::from_utf8(l).is_ok(),
            "line {i} is not UTF-8: ends {:x?}",
            &l[l.len() - 5..]
        );
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("DONE"));
}

/// Configurable logging from C (tests/c/logcfg.c): levels filter the
/// `slog_*` macros before formatting; a log file takes the standard
/// output's and error's lines and survives a rename + `mario_reopen_log`
/// from a SIGHUP handler with no line lost or written twice; lines a full
/// queue refused are reported; the library's own messages reach the
/// callback on a thread that is not a worker.
#[test]
fn log_levels_file_reopen_drops_and_callback() {
    ensure_built();
    let dir = scratch_dir("logcfg");
    let out = Command::new(root().join("target/ctests/logcfg"))
        .arg(&dir)
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .output()
        .expect("run logcfg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "logcfg:\n{stdout}\n{stderr}"
    );
    // Levels: at WARN, info is dropped, warn and error kept.
    assert!(
        !stdout.contains("filtered info") && !stdout.contains("never formatted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[WARN] kept warn") && stderr.contains("[ERROR] kept err"),
        "{stdout}\n{stderr}"
    );
    // The file and its rotation: every line once, each file in order.
    let old = std::fs::read_to_string(dir.join("app.log.1")).unwrap();
    let new = std::fs::read_to_string(dir.join("app.log")).unwrap();
    let numbers = |s: &str| -> Vec<u32> {
        s.lines()
            .filter_map(|l| l.strip_prefix("[INFO] line "))
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (a, b) = (numbers(&old), numbers(&new));
    assert_eq!(a, (1..=1000).collect::<Vec<u32>>(), "the rotated file");
    assert_eq!(b, (1001..=2000).collect::<Vec<u32>>(), "the reopened file");
    assert!(
        !stdout.contains("line 1") && !stdout.contains("line 2000"),
        "lines on stdout"
    );
    // Dropped lines: reported, in all, as many as were refused.
    let refused: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REFUSED "))
        .and_then(|n| n.parse().ok())
        .expect("REFUSED");
    let reported: u64 = new
        .lines()
        .filter(|l| l.ends_with(" log line(s) dropped: a log queue was full"))
        .filter_map(|l| {
            l.split("] [WARN] ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(reported, refused, "{new}");
    // The callback: an error, off the workers, ISO 8601 UTC timestamp.
    let cb = stdout
        .lines()
        .find(|l| l.starts_with("CALLBACK "))
        .expect("CALLBACK");
    assert!(cb.starts_with("CALLBACK level=1 on_worker=0 line=["), "{cb}");
    assert!(cb.contains("] [ERROR] pkg error, length: 8 pkglen: 5"), "{cb}");
    let ts = cb.split("line=[").nth(1).unwrap().split(']').next().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
}
