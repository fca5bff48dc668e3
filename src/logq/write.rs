//! Writing log records to their descriptors: one `write` per run of
//! records for the same descriptor, retrying short writes and `EINTR`,
//! bounded retries on `EAGAIN`, and `SIGPIPE` blocked on the writing thread.
//!
//! Uses: nothing of the crate.

use std::io;
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};

/// How long a write to a non-blocking fd that reports `EAGAIN` is retried
/// (without progress) before its bytes are dropped.
const EAGAIN_BUDGET: Duration = Duration::from_millis(100);

/// Writes a chunk taken by [`LogQueue::take`], one `write` per run of
/// consecutive records with the same fd.
pub(super) fn write_records(scratch: &[u8], records: &[(i32, usize)]) {
    let mut start = 0;
    let mut i = 0;
    while i < records.len() {
        let fd = records[i].0;
        while i + 1 < records.len() && records[i + 1].0 == fd {
            i += 1;
        }
        let end = records[i].1;
        write_fd(fd, &scratch[start..end]);
        start = end;
        i += 1;
    }
}

/// Writes all of `buf` to `fd` (never closing it). Retries `EINTR` and short
/// writes; on `EAGAIN` retries for up to [`EAGAIN_BUDGET`] without progress;
/// on any other error drops the rest. Returns whether everything was written.
fn write_fd(fd: i32, mut buf: &[u8]) -> bool {
    let mut stalled_since: Option<Instant> = None;
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole
        // call, and `write` does not keep the pointer. The fd is only written
        // to, never closed.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            // `0 < n <= buf.len()`.
            buf = &buf[n as usize..];
            stalled_since = None;
            continue;
        }
        if n == 0 {
            return false;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= EAGAIN_BUDGET {
                    return false;
                }
                thread::sleep(Duration::from_millis(1));
            }
            _ => return false,
        }
    }
    true
}

/// Blocks `SIGPIPE` in the calling thread (the log thread), so that a closed
/// pipe or socket on a log fd yields `EPIPE` instead of killing a host that
/// did not ignore the signal.
pub(super) fn block_sigpipe() {
    // SAFETY: `set` is a plain C struct, initialised by `sigemptyset` before
    // use; `pthread_sigmask` only changes the calling thread's mask and
    // accepts a null old-set pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut());
    }
}
