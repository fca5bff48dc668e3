//! Where the log thread writes: the process-wide log settings.
//!
//! * A **log file** ([`set_log_file`]) takes the lines that would go to
//!   standard output and standard error (appending, created 0640);
//!   [`reopen_log`] asks for it to be reopened by path (for `logrotate`), and
//!   is async-signal-safe: it only raises a flag, which the log thread acts
//!   on before it next writes (within a second, when it is idle).
//! * A **callback** ([`set_log_callback`]) receives the library's own
//!   messages instead of the descriptors, on the log thread.
//! * The library's own messages travel in the queues under a [`LEVEL_FD`]
//!   marker instead of a descriptor, so the log thread decides where they
//!   go when it writes them.
//!
//! Every change of destination is applied by the drainer ([`Dest::apply`],
//! under the hub's drain lock), so a write never races a reopen.
//!
//! Uses: nothing of the crate.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};

/// Descriptor markers of the library's own messages: `LEVEL_FD - level`
/// for the level values of [`Level`] (1 error .. 4 debug), all negative.
pub(crate) const LEVEL_FD: i32 = -1;

/// The levels of `mario_set_log_level` and of the log callback
/// (`MARIO_LOG_*`, the `i32` values), from the most quiet to the most
/// verbose.
///
/// ```
/// use mario::logq::Level;
///
/// assert_eq!(Level::from_i32(2), Level::Warn);
/// assert_eq!(Level::from_i32(99), Level::Debug); // clamped
/// assert_eq!(Level::of(log::Level::Trace), Level::Debug);
/// assert_eq!(Level::Info.filter(), log::LevelFilter::Info);
/// assert!(Level::Error < Level::Warn);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    /// Nothing is logged.
    Off = 0,
    /// Errors only.
    Error = 1,
    /// Warnings and errors.
    Warn = 2,
    /// Information, warnings and errors (the default).
    Info = 3,
    /// Everything.
    Debug = 4,
}

impl Level {
    /// The level of `value` (clamped into `Off..=Debug`: 0 or less is
    /// `Off`, 4 or more `Debug`). Example: [`Level`].
    pub fn from_i32(value: i32) -> Level {
        match value {
            i32::MIN..=0 => Level::Off,
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            _ => Level::Debug,
        }
    }

    /// The `log` crate's filter for this level (`Debug` lets `trace`
    /// through too). Example: [`Level`].
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Level::Off => log::LevelFilter::Off,
            Level::Error => log::LevelFilter::Error,
            Level::Warn => log::LevelFilter::Warn,
            Level::Info => log::LevelFilter::Info,
            Level::Debug => log::LevelFilter::Trace,
        }
    }

    /// The level of a `log` record (trace counts as debug). Example:
    /// [`Level`].
    pub fn of(level: log::Level) -> Level {
        match level {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug | log::Level::Trace => Level::Debug,
        }
    }
}

/// The callback of [`set_log_callback`]: `(level, line, len, user)`;
/// `level` is a [`Level`] value (1 error .. 4 debug), `line` is
/// NUL-terminated and valid during the call only, `len` counts neither the
/// NUL nor a newline; `user` is what was registered with it. Called on the
/// log thread. Example: [`set_log_callback`]. C: `mario_log_callback`.
pub type LogCallback = unsafe extern "C" fn(level: c_int, line: *const c_char, len: usize, user: *mut c_void);

/// The process-wide destination state.
pub(super) struct Dest {
    /// The log file's descriptor, or -1 (standard output and error).
    file_fd: AtomicI32,
    /// Its path, for reopening; and a descriptor opened by `set_log_file`
    /// that the drainer has not switched to yet (`Some(-1)`: back to the
    /// standard descriptors).
    file: Mutex<(Option<CString>, Option<i32>)>,
    /// Raised by `reopen_log` (async-signal-safe), lowered by the drainer.
    reopen: AtomicBool,
    callback: Mutex<Option<(LogCallback, usize)>>,
}

/// The one destination state of the process.
pub(super) static DEST: Dest = Dest {
    file_fd: AtomicI32::new(-1),
    file: Mutex::new((None, None)),
    reopen: AtomicBool::new(false),
    callback: Mutex::new(None),
};

/// Opens `path` for appending, created 0640.
fn open_append(path: &CString) -> io::Result<i32> {
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o640 as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

impl Dest {
    /// The drainer, before it writes (with the drain lock held): switches to
    /// a newly set file, or reopens the file by its path if asked to.
    pub(super) fn apply(&self) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match file.1.take() {
            Some(fd) => Some(fd),
            None if self.reopen.swap(false, Ordering::Acquire) => match &file.0 {
                Some(path) => match open_append(path) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        // Keep writing to the open one; say so there.
                        let msg = format!("libmario: cannot reopen the log file: {e}\n");
                        // SAFETY: a valid buffer; a short or failed write
                        // of this notice is acceptable.
                        unsafe {
                            libc::write(self.fd_for(libc::STDERR_FILENO), msg.as_ptr().cast(), msg.len())
                        };
                        None
                    }
                },
                None => None,
            },
            None => None,
        };
        if let Some(fd) = next {
            let old = self.file_fd.swap(fd, Ordering::AcqRel);
            if old >= 0 {
                // SAFETY: the drainer owns the log file's descriptor; nobody
                // writes to it outside the drain lock, which we hold.
                unsafe { libc::close(old) };
            }
        }
    }

    /// Where a record for descriptor `fd` goes: the log file for standard
    /// output and error when one is set, else `fd` itself.
    pub(super) fn fd_for(&self, fd: i32) -> i32 {
        let file = self.file_fd.load(Ordering::Acquire);
        if file >= 0 && (fd == libc::STDOUT_FILENO || fd == libc::STDERR_FILENO) {
            file
        } else {
            fd
        }
    }

    /// The callback for the library's own messages, if one is set.
    pub(super) fn callback(&self) -> Option<(LogCallback, usize)> {
        *self.callback.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// See `logq::set_log_file` (which also wakes the log thread).
pub(super) fn set_log_file(path: Option<&Path>) -> io::Result<()> {
    let mut file = DEST.file.lock().unwrap_or_else(PoisonError::into_inner);
    match path {
        Some(p) => {
            let c = CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a log file path with a NUL byte")
            })?;
            let fd = open_append(&c)?;
            if let Some(pending) = file.1.replace(fd).filter(|&fd| fd >= 0) {
                // SAFETY: a descriptor we opened and never handed out.
                unsafe { libc::close(pending) };
            }
            file.0 = Some(c);
        }
        None => {
            if let Some(pending) = file.1.replace(-1).filter(|&fd| fd >= 0) {
                // SAFETY: as above.
                unsafe { libc::close(pending) };
            }
            file.0 = None;
        }
    }
    Ok(())
}

/// Asks the log thread to reopen the log file by its path (after
/// `logrotate` renamed it). Async-signal-safe: it only raises a flag, acted
/// on before the log thread's next write (within about a second when it is
/// idle). No line is lost or written twice: lines before the reopen go to
/// the old file, lines after to the new one. Without a log file
/// ([`set_log_file`](crate::logq::set_log_file)) it does nothing. Example: the
/// [module](crate::logq#example)'s second. C: `mario_reopen_log`.
pub fn reopen_log() {
    DEST.reopen.store(true, Ordering::Release);
}

/// Routes the library's own messages (not `record_log` lines) to
/// `callback` instead of standard output and error, or back with `None`.
/// The callback runs on the log thread, never on a worker; `user` is
/// passed back to it untouched (the caller keeps what it points to alive
/// and usable from the log thread while the callback is registered). Any
/// thread. C: `mario_set_log_callback`.
///
/// ```
/// use std::ffi::{c_char, c_int, c_void};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use mario::logq::{Level, flush, install_logger, set_log_callback};
///
/// static WARNINGS: AtomicUsize = AtomicUsize::new(0);
///
/// unsafe extern "C" fn on_line(level: c_int, line: *const c_char, len: usize, user: *mut c_void) {
///     // SAFETY: the library passes a line of `len` bytes, valid during the call.
///     let text = unsafe { std::slice::from_raw_parts(line.cast::<u8>(), len) };
///     assert!(text.ends_with(b"a warning"));
///     if Level::from_i32(level) == Level::Warn {
///         // SAFETY: `user` is the static registered below.
///         unsafe { &*user.cast::<AtomicUsize>() }.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// install_logger();
/// set_log_callback(Some((on_line, (&raw const WARNINGS).cast_mut().cast())));
/// log::warn!("a warning");
/// assert!(flush(Duration::from_secs(5)));
/// assert_eq!(WARNINGS.load(Ordering::Relaxed), 1);
/// set_log_callback(None);
/// ```
pub fn set_log_callback(callback: Option<(LogCallback, *mut c_void)>) {
    *DEST.callback.lock().unwrap_or_else(PoisonError::into_inner) = callback.map(|(f, u)| (f, u as usize));
}
