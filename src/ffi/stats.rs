//! The statistics of the C ABI: `mario_stats`, `mario_get_stats`,
//! `mario_get_worker_stats`, `mario_format_prometheus`,
//! `mario_serve_metrics` (docs/C-API.md, "Statistics"). Thin shims over
//! the server's statistics (`stats`) and their Prometheus text
//! (`metrics`).
//!
//! Uses: stats, metrics.

use std::ffi::{CStr, c_char};

use super::{SERVER, guard, shared, shared_or_say, sint32, uint32};
use crate::metrics;
use crate::stats::Counters;

/// `mario_stats`: a server's or one worker's statistics, the Rust
/// [`Counters`] (`#[repr(C)]`; the header documents each field and its
/// unit). Size-versioned: fields are only ever added at the end.
/// docs/C-API.md, "Statistics"; example: the [module](crate::ffi#example)'s
/// second.
pub type mario_stats = Counters;

/// Copies `st` into the caller's `size` bytes at `out`: the first
/// `min(size, sizeof(mario_stats))` bytes of it, zeros after them (a
/// caller's newer, larger struct). Returns the bytes of `st` copied.
///
/// # Safety
///
/// `out` is valid for writes of `size` bytes.
unsafe fn fill(st: &mario_stats, out: *mut mario_stats, size: usize) -> sint32 {
    let n = size.min(size_of::<mario_stats>());
    let out = out.cast::<u8>();
    // SAFETY: `st` is `n <= sizeof` readable bytes; `out` is valid for
    // `size >= n` bytes (the caller's contract) and cannot overlap a
    // local; bytes need no alignment.
    unsafe {
        std::ptr::copy_nonoverlapping((st as *const mario_stats).cast::<u8>(), out, n);
        std::ptr::write_bytes(out.add(n), 0, size - n);
    }
    n as sint32
}

/// Fills `*out` with the server's statistics, the sum over its workers
/// (`workers` is their number), size-versioned: pass
/// `sizeof(mario_stats)` as `size`. The library writes
/// `min(size, sizeof(its mario_stats))` bytes (a program built against an
/// older, smaller struct gets the fields it knows) and zeros the rest of
/// `size`; returns the bytes it wrote, or -1 (nothing written) when `s` is
/// not a server or `out` is NULL. Any thread, any time after `init_server`
/// (zeros before `start_server`, the final numbers after it returns).
/// Example: c-examples/collect.c; docs/C-API.md, "Statistics".
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` from `init_server`; `out` is NULL or valid
/// for writes of `size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_get_stats(s: *mut SERVER, out: *mut mario_stats, size: usize) -> sint32 {
    guard("mario_get_stats", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared(s) }) else {
            return -1;
        };
        if out.is_null() {
            return -1;
        }
        let st = srv.stats().total;
        // SAFETY: the caller's contract.
        unsafe { fill(&st, out, size) }
    })
}

/// As `mario_get_stats`, for worker `worker` (0 ..
/// `s->workers->size - 1`) alone: `workers` is 1, `stalled_workers` 0 or 1.
/// -1 also when there is no such worker.
/// docs/C-API.md, "Statistics".
///
/// # Safety
///
/// As for `mario_get_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_get_worker_stats(
    s: *mut SERVER,
    worker: uint32,
    out: *mut mario_stats,
    size: usize,
) -> sint32 {
    guard("mario_get_worker_stats", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared(s) }) else {
            return -1;
        };
        if out.is_null() {
            return -1;
        }
        let Some(c) = srv.stats().workers.get(worker as usize).copied() else {
            return -1;
        };
        // SAFETY: the caller's contract.
        unsafe { fill(&c, out, size) }
    })
}

/// Writes the server's statistics in the Prometheus text exposition format
/// 0.0.4 (the families of docs/C-API.md, "Statistics", a `worker` label on
/// every sample) to `buf`, like `snprintf`: at most `len - 1` bytes and a
/// NUL when `len > 0`; returns the length of the whole text (without the
/// NUL), so a return `>= len` means it was cut. Call with `len` 0 (`buf`
/// may then be NULL) to learn the length; the numbers move, so leave some
/// room. 0 (and an empty string) when `s` is not a server. Any thread.
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` from `init_server`; `buf` is NULL (nothing
/// written) or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_format_prometheus(s: *mut SERVER, buf: *mut c_char, len: usize) -> usize {
    guard("mario_format_prometheus", || {
        // SAFETY: the caller's contract.
        let text = match unsafe { shared(s) } {
            Some(srv) => metrics::prometheus(&srv.stats()),
            None => String::new(),
        };
        if !buf.is_null() && len > 0 {
            let n = text.len().min(len - 1);
            // SAFETY: `buf` is valid for `len > n` bytes (the caller's
            // contract) and does not overlap `text`.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        text.len()
    })
}

/// Serves the server's statistics over HTTP on `addr` (`"127.0.0.1:9100"`,
/// `"[::1]:9100"`, `"0.0.0.0:9100"`), on a thread of its own (never a worker):
/// `GET /metrics` gets 200 with the text of `mario_format_prometheus`
/// (`Content-Type: text/plain; version=0.0.4`), other paths 404, other
/// methods 405; one request per connection, each closed after 5 s at most
/// however slow the client; an idle endpoint costs no CPU. Call it after
/// `init_server`, before or after `start_server`; it stops when
/// `start_server` returns. Returns 0, or -1 with the reason on stderr (not
/// a server, NULL or bad address, address in use, server stopped).
/// Example: c-examples/mario.c; docs/C-API.md, "Statistics".
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` from `init_server`; `addr` is NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_serve_metrics(s: *mut SERVER, addr: *const c_char) -> sint32 {
    guard("mario_serve_metrics", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "mario_serve_metrics") }) else {
            return -1;
        };
        if addr.is_null() {
            eprintln!("mario_serve_metrics: no address given");
            return -1;
        }
        // SAFETY: the caller's contract.
        let Ok(addr) = unsafe { CStr::from_ptr(addr) }.to_str() else {
            eprintln!("mario_serve_metrics: the address is not UTF-8");
            return -1;
        };
        match srv.serve_metrics(addr) {
            Ok(bound) => {
                log::info!("metrics: serving http://{bound}/metrics");
                0
            }
            Err(e) => {
                eprintln!("mario_serve_metrics: {e}");
                -1
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// The layout tests/header.rs checks on the C side (`_Static_assert`).
    #[test]
    fn mario_stats_layout_matches_the_header() {
        assert_eq!(offset_of!(mario_stats, connections), 0);
        assert_eq!(offset_of!(mario_stats, log_dropped), 96);
        assert_eq!(offset_of!(mario_stats, workers), 104);
        assert_eq!(offset_of!(mario_stats, stalled_workers), 108);
        assert_eq!(size_of::<mario_stats>(), 112);
    }

    #[test]
    fn a_smaller_size_gets_the_prefix_a_larger_one_zeros() {
        let st = mario_stats {
            connections: 1,
            accepted: 2,
            refused: 3,
            workers: 4,
            ..mario_stats::default()
        };
        let mut buf = [0xabu8; 130];
        // SAFETY: `buf` has room for every size used.
        unsafe {
            assert_eq!(fill(&st, buf.as_mut_ptr().cast(), 12), 12);
            assert_eq!(&buf[..12], &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
            assert!(buf[12..].iter().all(|&b| b == 0xab));
            assert_eq!(fill(&st, buf.as_mut_ptr().cast(), 0), 0);
            assert_eq!(fill(&st, buf.as_mut_ptr().cast(), 120), 112);
            assert_eq!(buf[104], 4);
            assert!(buf[112..120].iter().all(|&b| b == 0));
            assert!(buf[120..].iter().all(|&b| b == 0xab));
        }
    }
}
