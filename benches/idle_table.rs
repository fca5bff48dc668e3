//! Memory and timer cost of idle connections, without sockets.
//!
//! Drives one worker's connection table and timing wheel (the same records
//! and code paths as a running worker) with 1 million idle connections
//! (one worker holds at most 2^20 slots, `ConnId`'s slot field) and reports our bytes per connection (counted by this binary's
//! allocator) and the cost of a one-second timer tick.
//!
//!     cargo bench --features harness --bench idle_table [-- N]   (1 M by default; 100 k under cargo test)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`: the full 1 M. Under `cargo test`
    // (no flag) a quick 100 k smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 100_000 });
    let rt = 300;
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let mut table = mario::harness::sim::IdleTable::new(rt);
    // Connections arrive over the first `rt` seconds, as on a live server.
    let per_tick = n.div_ceil(rt as usize);
    let mut opened = 0;
    let mut tick_ns = Vec::new();
    let mut seen_total = 0;
    while opened < n {
        let k = per_tick.min(n - opened);
        table.open(k);
        opened += k;
        let t = Instant::now();
        let (seen, _) = table.tick();
        tick_ns.push(t.elapsed().as_nanos() as f64);
        seen_total += seen;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let heap = LIVE.load(Ordering::Relaxed) - heap0;
    let rss = rss_kib().saturating_sub(rss0);
    // Steady state: every connection was active a moment ago, so each tick
    // re-files the entries that come due (the lazy wheel's real work).
    table.touch(1);
    let mut steady = Vec::new();
    let mut steady_seen = 0;
    for _ in 0..(2 * rt) {
        let t = Instant::now();
        let (seen, expired) = table.tick();
        steady.push(t.elapsed().as_nanos() as f64);
        steady_seen += seen;
        if expired > 0 {
            break;
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let max_steady = steady.iter().cloned().fold(0.0, f64::max);
    println!("idle connections          {n}");
    println!("heap bytes per connection {:.1}", heap as f64 / n as f64);
    println!("rss bytes per connection  {:.1}", rss as f64 * 1024.0 / n as f64);
    println!("fill time                 {fill_s:.2} s");
    println!(
        "tick while filling        median {:.0} us ({} entries looked at in all)",
        med(&mut tick_ns) / 1e3,
        seen_total
    );
    println!(
        "tick in steady state      median {:.0} us, max {:.0} us, {:.1} ns per entry looked at",
        med(&mut steady.clone()) / 1e3,
        max_steady / 1e3,
        steady.iter().sum::<f64>() / steady_seen.max(1) as f64
    );
    println!(
        "{{\"bench\":\"idle_table\",\"conns\":{n},\"heap_bytes_per_conn\":{:.1},\"rss_bytes_per_conn\":{:.1},\"tick_median_us\":{:.1},\"tick_max_us\":{:.1},\"ns_per_entry\":{:.2}}}",
        heap as f64 / n as f64,
        rss as f64 * 1024.0 / n as f64,
        med(&mut steady) / 1e3,
        max_steady / 1e3,
        steady.iter().sum::<f64>() / steady_seen.max(1) as f64
    );
    assert_eq!(table.len(), n);
}
