//! The `log` crate sink: the library's own messages (and a Rust
//! application's, if it wants) become lines `[<ISO 8601 UTC time>]
//! [<LEVEL>] <message>` in a log queue (the calling thread's own, or a
//! shared fallback), marked with their level so that the log thread sends
//! them to the callback, the log file or standard output / error.
//!
//! Uses: `super::ring` (the queues), `super::hub` (starting the log thread,
//! flushing), `super::dest` (the level marker), `super::write` (the time).

use std::cell::Cell;
use std::fmt;
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::time::Duration;

use super::dest::{LEVEL_FD, Level};
use super::hub::{flush, start_log_thread};
use super::ring::{LogQueue, MAX_LOG_LINE_LENGTH};
use super::write::now_iso;

thread_local! {
    /// The queue the logger uses for messages of this thread.
    static THREAD_QUEUE: Cell<Option<&'static LogQueue>> = const { Cell::new(None) };
}

/// Shared queue for threads without their own; the mutex keeps it
/// single-producer.
static FALLBACK_QUEUE: Mutex<Option<&'static LogQueue>> = Mutex::new(None);

/// Makes the `log` crate sink ([`install_logger`]) put this thread's
/// messages into `q`. The calling thread must then be `q`'s only producer
/// (as for any [`LogQueue`]). A worker does this for its own queue, so that
/// its threads never share one.
///
/// ```
/// use std::time::Duration;
/// use mario::logq::{LogQueue, clear_thread_queue, flush, install_logger, set_thread_queue};
///
/// install_logger();
/// let q = LogQueue::create();
/// set_thread_queue(q);
/// log::info!("into this thread's own queue");
/// assert!(flush(Duration::from_secs(5))); // written to standard output
/// clear_thread_queue(); // back to the shared queue
/// ```
pub fn set_thread_queue(q: &'static LogQueue) {
    THREAD_QUEUE.with(|c| c.set(Some(q)));
}

/// Undoes [`set_thread_queue`] for this thread: its messages go to the
/// shared fallback queue again. Example: [`set_thread_queue`].
pub fn clear_thread_queue() {
    THREAD_QUEUE.with(|c| c.set(None));
}

/// A line being formatted: at most [`MAX_LOG_LINE_LENGTH`] bytes, the rest
/// is cut.
pub(super) struct LineBuf {
    buf: [u8; MAX_LOG_LINE_LENGTH],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            buf: [0; MAX_LOG_LINE_LENGTH],
            len: 0,
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line with `'\n'` (`write_str` always leaves room for it).
    fn end_line(&mut self) {
        self.buf[self.len] = b'\n';
        self.len += 1;
    }
}

impl fmt::Write for LineBuf {
    /// Appends what fits, cut on a character boundary (one byte is kept
    /// for the newline), so a cut line stays valid UTF-8.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = (self.buf.len() - 1).saturating_sub(self.len);
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `[<time>] [<LEVEL>] <message>\n`, cut to
/// [`MAX_LOG_LINE_LENGTH`]; `time` is ISO 8601 in UTC with milliseconds.
pub(super) fn format_line(time: &str, level: log::Level, args: &fmt::Arguments<'_>) -> LineBuf {
    let mut line = LineBuf::new();
    // `LineBuf::write_str` never fails; a failing `Display` impl inside
    // `args` only shortens the line.
    let _ = fmt::Write::write_fmt(&mut line, format_args!("[{time}] [{}] {args}", level.as_str()));
    line.end_line();
    line
}

/// The logger installed by [`install_logger`].
pub(super) struct MarioLogger;

pub(super) static LOGGER: MarioLogger = MarioLogger;

/// Starts the global log thread on the first message.
static LAZY_START: Once = Once::new();

impl MarioLogger {
    /// Formats and queues `record`, without the level check.
    pub(super) fn emit(&self, record: &log::Record<'_>) {
        LAZY_START.call_once(|| {
            // On failure, lines wait in their queues until `flush`.
            let _ = start_log_thread();
        });
        let line = format_line(&now_iso(), record.level(), record.args());
        // The log thread decides where the line goes (callback, file or
        // standard output / error) from its level.
        let fd = LEVEL_FD - Level::of(record.level()) as i32;
        // `try_with`: during thread teardown the thread-local may be gone.
        match THREAD_QUEUE.try_with(Cell::get).ok().flatten() {
            Some(queue) => {
                // A full queue drops the line, as `record_log` does.
                let _ = queue.push(fd, line.as_bytes());
            }
            None => {
                let mut fallback = FALLBACK_QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
                let queue = *fallback.get_or_insert_with(LogQueue::create);
                let _ = queue.push(fd, line.as_bytes());
            }
        }
    }
}

impl log::Log for MarioLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.emit(record);
        }
    }

    fn flush(&self) {
        flush(Duration::from_secs(1));
    }
}

/// The level filter from `MARIO_LOG` (`error`, `warn`, `info`, `debug`,
/// `trace` or `off`, any case); `Info` when unset or not understood.
fn level_from_env() -> log::LevelFilter {
    std::env::var("MARIO_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(log::LevelFilter::Info)
}

/// Installs the library's `log` crate sink (once): messages become lines
/// `[<ISO 8601 UTC time>] [<LEVEL>] <message>` queued for the log thread (started on
/// the first message), to stderr for errors and stdout otherwise. The
/// maximum level is `Info`, or the one named by the `MARIO_LOG` environment
/// variable (`error`, `warn`, `info`, `debug`, `trace` or `off`, any case),
/// read at the first call. Any thread; `init_server` calls it for C
/// applications. A Rust program that installs its own logger (e.g.
/// `env_logger`) first gets the library's messages there instead.
/// Example: the [module](crate::logq#example)'s second.
///
/// Returns `true` if our logger is the installed one (also on later calls),
/// `false` if another logger was installed first (it then receives the
/// library's messages).
pub fn install_logger() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&LOGGER).is_ok();
        if ok {
            log::set_max_level(level_from_env());
        }
        ok
    })
}
