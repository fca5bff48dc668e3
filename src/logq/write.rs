//! Writing log records where they go: one `write` per run of records for
//! the same descriptor (the log file instead of standard output and error
//! when one is set), the library's own messages to the callback when one
//! is set, retrying short writes and `EINTR`, bounded retries on `EAGAIN`,
//! and `SIGPIPE` blocked on the writing thread.
//!
//! Uses: `super::dest` (where records go).

use std::io;
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};

use super::dest::{DEST, LEVEL_FD, Level};

/// How long a write to a non-blocking fd that reports `EAGAIN` is retried
/// (without progress) before its bytes are dropped.
const EAGAIN_BUDGET: Duration = Duration::from_millis(100);

/// Writes a chunk taken by a queue, one `write` per run of consecutive
/// records for the same descriptor; hands the library's own messages to
/// the callback, one by one, when one is set.
pub(super) fn write_records(scratch: &[u8], records: &[(i32, usize)]) {
    let callback = DEST.callback();
    let mut start = 0;
    let mut i = 0;
    while i < records.len() {
        let fd = records[i].0;
        if fd <= LEVEL_FD
            && let Some((f, user)) = callback
        {
            let end = records[i].1;
            let line = scratch[start..end]
                .strip_suffix(b"\n")
                .unwrap_or(&scratch[start..end]);
            let mut c = Vec::with_capacity(line.len() + 1);
            c.extend_from_slice(line);
            c.push(0);
            // SAFETY: the callback was registered with the documented
            // signature; `c` is a NUL-terminated copy valid for the call.
            unsafe {
                f(
                    LEVEL_FD - fd,
                    c.as_ptr().cast(),
                    line.len(),
                    user as *mut std::ffi::c_void,
                )
            };
            start = end;
            i += 1;
            continue;
        }
        while i + 1 < records.len() && records[i + 1].0 == fd {
            i += 1;
        }
        let end = records[i].1;
        let to = if fd <= LEVEL_FD {
            if LEVEL_FD - fd == Level::Error as i32 {
                libc::STDERR_FILENO
            } else {
                libc::STDOUT_FILENO
            }
        } else {
            fd
        };
        write_fd(DEST.fd_for(to), &scratch[start..end]);
        start = end;
        i += 1;
    }
}

/// Writes all of `buf` to `fd` (never closing it). Retries `EINTR` and short
/// writes; on `EAGAIN` retries for up to [`EAGAIN_BUDGET`] without progress;
/// on any other error drops the rest. Returns whether everything was written.
pub(super) fn write_fd(fd: i32, mut buf: &[u8]) -> bool {
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

/// The current time as ISO 8601 in UTC with milliseconds
/// (`2026-11-30T12:45:17.123Z`), the timestamp of the library's own
/// messages.
pub(crate) fn now_iso() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
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
