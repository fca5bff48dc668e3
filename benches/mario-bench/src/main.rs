//! mario-bench: load generator for servers speaking the MarioTCP frame
//! (8-byte head {u32 stx, u16 pkglen, u16 akg_id} in host byte order + body).
//!
//! Modes: `rps` (requests/s and latency over N connections with D requests in
//! flight each), `cps` (connect + one request + close cycles per second),
//! `hold` (hold N connections with churn and random sends, counting every
//! failure) and `bw` (bandwidth: N connections with D ECHO packets of SIZE
//! bytes in flight each, every echo checked byte for byte). Run
//! `mario-bench --help` for the options.
//!
//! Output: progress on stderr once a second (unless --quiet), a table on
//! stdout (unless --json-only) and one JSON line on stdout.

mod args;
mod procfs;
mod worker;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use args::{Config, Mode};
use worker::*;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args::parse(&argv) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mario-bench: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    end_on_sigusr1();
    let limit = raise_nofile();
    let need = cfg.conns as u64 + 64;
    if limit < need {
        eprintln!(
            "mario-bench: {} connections need about {need} open files, the limit is {limit}",
            cfg.conns
        );
        return ExitCode::from(2);
    }
    if let Some(pid) = cfg.pid
        && (procfs::rss_kib(pid).is_none() || procfs::cpu_seconds(&pid.to_string()).is_none())
    {
        eprintln!("mario-bench: --pid {pid}: cannot read /proc/{pid}/stat and status");
        return ExitCode::from(2);
    }
    ExitCode::from(run(&cfg))
}

/// Set by SIGUSR1: end the measured window now (see `end_on_sigusr1`).
static END_NOW: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    END_NOW.store(true, Ordering::Relaxed);
}

/// SIGUSR1 ends the measured window at once, as if --duration had passed:
/// the run drains and reports as usual. A driver running several
/// processes (benches/scale.py) ends them all together this way, whenever
/// each one finished its set-up. Before the window starts, the signal is
/// remembered and the window ends as soon as it starts.
fn end_on_sigusr1() {
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an
    // atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft limit.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill in / read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// What the main thread measured around the window.
#[derive(Default)]
struct Window {
    /// Seconds from the start to the measured window (warm-up or set-up).
    before_s: f64,
    duration_s: f64,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    rss_before: Option<u64>,
    rss_max: Option<u64>,
}

fn run(cfg: &Config) -> u8 {
    let k = cfg.threads;
    let shared = Shared::new(k);
    let pid = cfg.pid.map(|p| p.to_string());
    let mut win = Window {
        rss_before: cfg.pid.and_then(procfs::rss_kib),
        ..Window::default()
    };
    win.rss_max = win.rss_before;
    let mut no_connect = false;

    // Without a warm-up the workers measure from their first request.
    let mut phase = WARMUP;
    let (mut cpu0, mut self0) = (None, None);
    if cfg.mode != Mode::Hold && cfg.warmup == 0.0 {
        phase = MEASURE;
        cpu0 = pid.as_deref().and_then(procfs::cpu_seconds);
        self0 = procfs::cpu_seconds("self");
        shared.phase.store(MEASURE, Ordering::Release);
    }
    let start = Instant::now();
    let results: Vec<WorkerResult> = thread::scope(|sc| {
        let handles: Vec<_> = (0..k)
            .map(|t| {
                let n = cfg.conns / k + usize::from(t < cfg.conns % k);
                let shared = &shared;
                thread::Builder::new()
                    .name(format!("bench-{t}"))
                    .spawn_scoped(sc, move || Worker::new(cfg, shared, t, k, n).run())
                    .expect("spawn worker")
            })
            .collect();

        let mut t0 = start;
        let mut next_tick = start + Duration::from_secs(1);
        let mut last_ops = 0u64;
        let mut last_reconn = 0u64;
        loop {
            let now = Instant::now();
            let el = now - start;
            if shared.sum(C_CONNECTS) == 0 {
                let failed: u64 = shared.errors();
                if failed >= cfg.conns as u64 || el > Duration::from_secs(6) {
                    shared.phase.store(STOP, Ordering::Release);
                    no_connect = true;
                    break;
                }
            }
            if now >= next_tick {
                next_tick += Duration::from_secs(1);
                if let Some(p) = cfg.pid {
                    win.rss_max = win.rss_max.max(procfs::rss_kib(p));
                }
                if !cfg.quiet {
                    let ops = shared.sum(C_OPS_TOTAL);
                    let reconn = shared.sum(C_RECONNECTS);
                    progress(
                        cfg,
                        &shared,
                        phase,
                        el.as_secs_f64(),
                        ops - last_ops,
                        reconn - last_reconn,
                    );
                    last_ops = ops;
                    last_reconn = reconn;
                }
            }
            let start_measure = match cfg.mode {
                Mode::Hold => shared.sum(C_SETUP_DONE) == k as u64,
                _ => el.as_secs_f64() >= cfg.warmup,
            };
            if phase == WARMUP && start_measure {
                phase = MEASURE;
                t0 = now;
                cpu0 = pid.as_deref().and_then(procfs::cpu_seconds);
                self0 = procfs::cpu_seconds("self");
                win.before_s = el.as_secs_f64();
                shared.phase.store(MEASURE, Ordering::Release);
            }
            if phase == MEASURE
                && ((now - t0).as_secs_f64() >= cfg.duration || END_NOW.load(Ordering::Relaxed))
            {
                let cpu1 = pid.as_deref().and_then(procfs::cpu_seconds);
                let self1 = procfs::cpu_seconds("self");
                win.duration_s = (now - t0).as_secs_f64();
                shared.phase.store(DRAIN, Ordering::Release);
                win.server_cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
                win.client_cpu_s = self0.zip(self1).map(|(a, b)| b - a);
                if let Some(p) = cfg.pid {
                    win.rss_max = win.rss_max.max(procfs::rss_kib(p));
                }
                break;
            }
            let mut wake = next_tick.min(now + Duration::from_millis(50));
            if phase == MEASURE {
                wake = wake.min(t0 + Duration::from_secs_f64(cfg.duration));
            } else if cfg.mode != Mode::Hold {
                wake = wake.min(start + Duration::from_secs_f64(cfg.warmup));
            }
            thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    });

    let mut cnt = [0u64; NC];
    let mut hist = new_hist();
    let mut churn_hist = new_hist();
    for r in &results {
        for (a, b) in cnt.iter_mut().zip(r.cnt.iter()) {
            *a += b;
        }
        hist.add(&r.hist).expect("histogram add");
        churn_hist.add(&r.churn_hist).expect("histogram add");
    }
    if no_connect || cnt[C_CONNECTS] == 0 {
        eprintln!("mario-bench: could not connect to {}", cfg.addr);
        return 2;
    }
    if !cfg.json_only {
        print!("{}", table(cfg, &cnt, &hist, &churn_hist, &win));
    }
    println!("{}", json(cfg, &cnt, &hist, &churn_hist, &win));
    0
}

fn phase_name(cfg: &Config, phase: u8) -> &'static str {
    match (phase, cfg.mode) {
        (WARMUP, Mode::Hold) => "setup",
        (WARMUP, _) => "warmup",
        (MEASURE, _) => "measure",
        _ => "drain",
    }
}

fn progress(cfg: &Config, sh: &Shared, phase: u8, el: f64, d_ops: u64, d_reconn: u64) {
    let ph = phase_name(cfg, phase);
    let errs = sh.errors();
    let line = match cfg.mode {
        Mode::Rps => format!(
            "rps  {ph:<7} {el:6.1}s  rate {:>9}/s  total {:>12}  errors {errs}",
            group(d_ops),
            group(sh.sum(C_OPS_TOTAL)),
        ),
        Mode::Cps => format!(
            "cps  {ph:<7} {el:6.1}s  rate {:>9}/s  total {:>12}  errors {errs}",
            group(d_ops),
            group(sh.sum(C_OPS_TOTAL)),
        ),
        Mode::Hold => format!(
            "hold {ph:<7} {el:6.1}s  held {:>6}/{}  sends {:>7}/s  churn {:>6}/s  failures {errs}  skipped {}",
            sh.sum(C_HELD),
            cfg.conns,
            group(d_ops),
            group(d_reconn),
            sh.sum(C_SKIPPED_SENDS) + sh.sum(C_SKIPPED_CHURN),
        ),
        Mode::Bw => format!(
            "bw   {ph:<7} {el:6.1}s  rate {:>9}/s  {:.2} Gbit/s each way  total {:>12}  errors {errs}",
            group(d_ops),
            gbit(d_ops * cfg.req_len() as u64, 1.0),
            group(sh.sum(C_OPS_TOTAL)),
        ),
    };
    eprintln!("{line}");
}

/// 1234567 -> "1,234,567"
fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Latency quantiles in µs (the histograms hold nanoseconds); None without samples.
struct Lat {
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
}

fn lat(h: &Histogram<u64>) -> Lat {
    if h.is_empty() {
        return Lat {
            p50: None,
            p99: None,
            p999: None,
            max: None,
            mean: None,
        };
    }
    let us = |v: u64| Some(v as f64 / 1000.0);
    Lat {
        p50: us(h.value_at_quantile(0.5)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: Some(h.mean() / 1000.0),
    }
}

fn ops_word(cfg: &Config) -> &'static str {
    match cfg.mode {
        Mode::Cps => "connection",
        Mode::Bw => "packet",
        _ => "request",
    }
}

/// Operations the server CPU time is divided by.
fn server_ops(cfg: &Config, cnt: &[u64; NC]) -> u64 {
    match cfg.mode {
        // every request/reply exchange in the window: sends and the LOGINs of reopened connections
        Mode::Hold => cnt[C_OPS_MEASURED] + cnt[C_RECONNECTS],
        _ => cnt[C_OPS_MEASURED],
    }
}

fn per_op_us(cfg: &Config, cnt: &[u64; NC], win: &Window) -> Option<f64> {
    let ops = server_ops(cfg, cnt);
    win.server_cpu_s.filter(|_| ops > 0).map(|c| c * 1e6 / ops as f64)
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// `bytes` over `secs` in Gbit/s (10^9 bits per second).
fn gbit(bytes: u64, secs: f64) -> f64 {
    rate(bytes, secs) * 8.0 / 1e9
}

/// bw: server CPU seconds per GB (10^9 bytes) moved, both directions
/// counted: the bytes the clients wrote plus the bytes they read back.
fn cpu_s_per_gb(cnt: &[u64; NC], win: &Window) -> Option<f64> {
    let bytes = cnt[C_BYTES_OUT] + cnt[C_BYTES_IN];
    win.server_cpu_s
        .filter(|_| bytes > 0)
        .map(|c| c / (bytes as f64 / 1e9))
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    }
}

fn table(
    cfg: &Config,
    cnt: &[u64; NC],
    hist: &Histogram<u64>,
    churn: &Histogram<u64>,
    win: &Window,
) -> String {
    let mut t = String::new();
    let errs: u64 = cnt[C_ERR..].iter().sum();
    let kinds: Vec<String> = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} {}", cnt[C_ERR + i]))
        .collect();
    let ops = cnt[C_OPS_MEASURED];
    let l = lat(hist);
    let _ = match cfg.mode {
        Mode::Rps => writeln!(
            t,
            "mario-bench rps {}: {} connections x depth {}, {} thread(s)",
            cfg.addr, cfg.conns, cfg.depth, cfg.threads
        ),
        Mode::Cps => writeln!(
            t,
            "mario-bench cps {}: concurrency {}, {} thread(s){}",
            cfg.addr,
            cfg.conns,
            cfg.threads,
            if cfg.rst { ", RST close" } else { "" }
        ),
        Mode::Hold => writeln!(
            t,
            "mario-bench hold {}: {} connections, churn {}/s, sends {}/s, {} thread(s){}",
            cfg.addr,
            cfg.conns,
            cfg.churn,
            cfg.sends,
            cfg.threads,
            if cfg.rst { ", RST close" } else { "" }
        ),
        Mode::Bw => writeln!(
            t,
            "mario-bench bw {}: {} connections x depth {} x {} B echoed (id {:#06x}), {} thread(s)",
            cfg.addr,
            cfg.conns,
            cfg.depth,
            cfg.req_len(),
            cfg.id,
            cfg.threads
        ),
    };
    let before = if cfg.mode == Mode::Hold {
        "set-up"
    } else {
        "warm-up"
    };
    let _ = writeln!(
        t,
        "  {:<22}{:.2} s (after {:.2} s {before})",
        "measured", win.duration_s, win.before_s
    );
    {
        // One "  label  value" row each; the counts per second are over the
        // measured window.
        let per_s = |n: u64| group(rate(n, win.duration_s) as u64);
        let replies_and_sends = || {
            format!(
                "{} received, {} sent (incl. warm-up and drain)",
                group(cnt[C_REPLIES_TOTAL]),
                group(cnt[C_SENT_TOTAL])
            )
        };
        let mut row = |label: &str, value: String| {
            let _ = writeln!(t, "  {label:<22}{value}");
        };
        match cfg.mode {
            Mode::Rps => {
                row("requests", group(ops));
                row("rate", format!("{} req/s", per_s(ops)));
                row("requests total", replies_and_sends());
            }
            Mode::Cps => {
                row("connections", group(ops));
                row("rate", format!("{} conn/s", per_s(ops)));
                row(
                    "connections total",
                    format!("{} (incl. warm-up and drain)", group(cnt[C_CONNECTS])),
                );
            }
            Mode::Hold => {
                row("held at the end", format!("{} of {}", cnt[C_HELD], cfg.conns));
                row("requests answered", format!("{} ({}/s)", group(ops), per_s(ops)));
                row(
                    "reconnects",
                    format!("{} ({}/s)", group(cnt[C_RECONNECTS]), per_s(cnt[C_RECONNECTS])),
                );
                row(
                    "skipped (none idle)",
                    format!("sends {}, churn {}", cnt[C_SKIPPED_SENDS], cnt[C_SKIPPED_CHURN]),
                );
            }
            Mode::Bw => {
                row("packets echoed", group(ops));
                row("rate", format!("{} packets/s", per_s(ops)));
                row(
                    "bandwidth",
                    format!(
                        "{:.3} Gbit/s out (to the server), {:.3} Gbit/s in",
                        gbit(cnt[C_BYTES_OUT], win.duration_s),
                        gbit(cnt[C_BYTES_IN], win.duration_s)
                    ),
                );
                row("packets total", replies_and_sends());
            }
        }
    }
    let _ = writeln!(
        t,
        "  {:<22}p50 {}  p99 {}  p99.9 {}  max {}  mean {}",
        "latency (us)",
        opt(l.p50, 1),
        opt(l.p99, 1),
        opt(l.p999, 1),
        opt(l.max, 1),
        opt(l.mean, 1)
    );
    if cfg.mode == Mode::Hold {
        let c = lat(churn);
        let _ = writeln!(
            t,
            "  {:<22}p50 {}  p99 {}  max {}",
            "reconnect+LOGIN (us)",
            opt(c.p50, 1),
            opt(c.p99, 1),
            opt(c.max, 1)
        );
    }
    let ename = if cfg.mode == Mode::Hold {
        "failures"
    } else {
        "errors"
    };
    let _ = writeln!(t, "  {:<22}{errs} ({})", ename, kinds.join(", "));
    if cfg.mode == Mode::Hold {
        let _ = writeln!(t, "  {:<22}{}", "  during set-up", cnt[C_SETUP_FAILURES]);
    }
    if cfg.pid.is_some() {
        let _ = writeln!(
            t,
            "  {:<22}{} s ({} us/{})",
            "server CPU",
            opt(win.server_cpu_s, 2),
            opt(per_op_us(cfg, cnt, win), 2),
            ops_word(cfg)
        );
        if cfg.mode == Mode::Bw {
            let _ = writeln!(
                t,
                "  {:<22}{} s per GB moved (both directions)",
                "",
                opt(cpu_s_per_gb(cnt, win), 3)
            );
        }
        let _ = writeln!(
            t,
            "  {:<22}{} KiB before, {} KiB max",
            "server RSS",
            win.rss_before.map_or("-".into(), group),
            win.rss_max.map_or("-".into(), group)
        );
    }
    if let Some(c) = win.client_cpu_s {
        let _ = writeln!(
            t,
            "  {:<22}{c:.2} s ({:.0}% of a core)",
            "client CPU",
            if win.duration_s > 0.0 {
                c / win.duration_s * 100.0
            } else {
                0.0
            }
        );
    }
    t
}

/// A JSON object written by hand: keys in a fixed order, numbers or null.
struct Json(String);

impl Json {
    fn new() -> Json {
        Json(String::from("{"))
    }
    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{k}\":");
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }
    fn int(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.0, "{v}");
    }
    fn num(&mut self, k: &str, v: Option<f64>, decimals: usize) {
        self.key(k);
        match v {
            Some(x) if x.is_finite() => {
                let _ = write!(self.0, "{x:.decimals$}");
            }
            _ => self.0.push_str("null"),
        }
    }
    fn opt_int(&mut self, k: &str, v: Option<u64>) {
        self.key(k);
        match v {
            Some(x) => {
                let _ = write!(self.0, "{x}");
            }
            None => self.0.push_str("null"),
        }
    }
    fn kinds(&mut self, k: &str, cnt: &[u64; NC]) {
        self.key(k);
        self.0.push('{');
        for (i, name) in KINDS.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "\"{name}\":{}", cnt[C_ERR + i]);
        }
        self.0.push('}');
    }
    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn json(
    cfg: &Config,
    cnt: &[u64; NC],
    hist: &Histogram<u64>,
    churn: &Histogram<u64>,
    win: &Window,
) -> String {
    let mut j = Json::new();
    let ops = cnt[C_OPS_MEASURED];
    let errs: u64 = cnt[C_ERR..].iter().sum();
    j.str("mode", cfg.mode.name());
    j.str("addr", &cfg.addr.to_string());
    j.int("threads", cfg.threads as u64);
    match cfg.mode {
        Mode::Rps => {
            j.int("conns", cfg.conns as u64);
            j.int("depth", cfg.depth as u64);
            j.num("warmup_s", Some(win.before_s), 3);
            j.num("duration_s", Some(win.duration_s), 6);
            j.int("requests", ops);
            j.num("rate", Some(rate(ops, win.duration_s)), 1);
            j.int("requests_total", cnt[C_REPLIES_TOTAL]);
            j.int("sent_total", cnt[C_SENT_TOTAL]);
            j.int("connections_total", cnt[C_CONNECTS]);
        }
        Mode::Cps => {
            j.int("concurrency", cfg.conns as u64);
            j.num("warmup_s", Some(win.before_s), 3);
            j.num("duration_s", Some(win.duration_s), 6);
            j.int("connections", ops);
            j.num("rate", Some(rate(ops, win.duration_s)), 1);
            j.int("connections_total", cnt[C_CONNECTS]);
            j.int("cycles_total", cnt[C_OPS_TOTAL]);
            j.int("requests_total", cnt[C_REPLIES_TOTAL]);
        }
        Mode::Hold => {
            j.int("conns", cfg.conns as u64);
            j.int("churn", cfg.churn);
            j.int("sends", cfg.sends);
            j.num("setup_s", Some(win.before_s), 3);
            j.num("duration_s", Some(win.duration_s), 6);
            j.int("held", cnt[C_HELD]);
            j.int("requests", ops);
            j.num("rate", Some(rate(ops, win.duration_s)), 1);
            j.int("reconnects", cnt[C_RECONNECTS]);
            j.num("churn_rate", Some(rate(cnt[C_RECONNECTS], win.duration_s)), 1);
            j.int("requests_total", cnt[C_REPLIES_TOTAL]);
            j.int("sent_total", cnt[C_SENT_TOTAL]);
            j.int("connections_total", cnt[C_CONNECTS]);
            j.int("skipped_sends", cnt[C_SKIPPED_SENDS]);
            j.int("skipped_churn", cnt[C_SKIPPED_CHURN]);
        }
        Mode::Bw => {
            j.int("conns", cfg.conns as u64);
            j.int("depth", cfg.depth as u64);
            j.int("size", cfg.req_len() as u64);
            j.num("warmup_s", Some(win.before_s), 3);
            j.num("duration_s", Some(win.duration_s), 6);
            j.int("packets", ops);
            j.num("rate", Some(rate(ops, win.duration_s)), 1);
            j.num("gbit_out", Some(gbit(cnt[C_BYTES_OUT], win.duration_s)), 4);
            j.num("gbit_in", Some(gbit(cnt[C_BYTES_IN], win.duration_s)), 4);
            j.int("bytes_out", cnt[C_BYTES_OUT]);
            j.int("bytes_in", cnt[C_BYTES_IN]);
            j.int("packets_total", cnt[C_REPLIES_TOTAL]);
            j.int("sent_total", cnt[C_SENT_TOTAL]);
            j.int("connections_total", cnt[C_CONNECTS]);
        }
    }
    let l = lat(hist);
    j.num("p50_us", l.p50, 1);
    j.num("p99_us", l.p99, 1);
    j.num("p999_us", l.p999, 1);
    j.num("max_us", l.max, 1);
    j.num("mean_us", l.mean, 1);
    if cfg.mode == Mode::Hold {
        let c = lat(churn);
        j.num("churn_p50_us", c.p50, 1);
        j.num("churn_p99_us", c.p99, 1);
        j.num("churn_max_us", c.max, 1);
    }
    j.int("errors", errs);
    j.kinds("errors_by_kind", cnt);
    if cfg.mode == Mode::Hold {
        j.kinds("failures", cnt);
        j.int("failures_total", errs);
        j.int("setup_failures", cnt[C_SETUP_FAILURES]);
    }
    if cfg.mode == Mode::Bw {
        j.kinds("failures", cnt);
        j.int("failures_total", errs);
        j.int("mismatches", cnt[C_ERR + Kind::Mismatch as usize]);
    }
    j.num("server_cpu_s", win.server_cpu_s, 3);
    j.num("server_cpu_us_per_op", per_op_us(cfg, cnt, win), 3);
    if cfg.mode == Mode::Bw {
        j.num("server_cpu_s_per_gb", cpu_s_per_gb(cnt, win), 4);
    }
    j.opt_int("rss_before_kib", win.rss_before);
    j.opt_int("rss_max_kib", win.rss_max);
    j.num("client_cpu_s", win.client_cpu_s, 3);
    j.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn json_object() {
        let mut j = Json::new();
        j.str("a", "x\"y");
        j.int("b", 3);
        j.num("c", None, 1);
        j.num("d", Some(1.25), 2);
        assert_eq!(j.finish(), r#"{"a":"x\"y","b":3,"c":null,"d":1.25}"#);
    }
}
