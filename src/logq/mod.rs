//! The logging core: bounded single-producer byte rings (`LOG_QUEUE`), the
//! log thread that writes them out, and the `log` crate sink. A leaf: it
//! knows nothing of connections or servers.
//!
//! A [`LogQueue`] is a ring of bytes holding records `(fd, length, bytes)`.
//! One thread produces into it ([`LogQueue::push`]); the log thread
//! ([`start_log_thread`]) drains every registered queue and writes each
//! record to its file descriptor, in order per queue. The log thread sleeps
//! when every queue is empty and is woken by the next push, so an idle
//! process spends no CPU on logging. [`flush`] waits until everything pushed
//! so far has been written (and writes it on the calling thread when the log
//! thread was never started).
//!
//! [`install_logger`] routes the `log` crate's messages into these queues:
//! the calling thread's own queue if it registered one with
//! [`set_thread_queue`], otherwise a shared fallback queue.
//!
//! A Rust program normally installs a logger of its own and never needs
//! this module (see the crate's "Logging"); C applications get it through
//! `init_server` and the header's `slog_*` macros (docs/C-API.md,
//! "Logging"). Everything here is process-wide and may be called from any
//! thread.
//!
//! # Example
//!
//! A queue of one's own, writing to a file's descriptor:
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//! use mario::logq::{LogQueue, flush, start_log_thread};
//!
//! let path = std::env::temp_dir().join(format!("mario-logq-{}.txt", std::process::id()));
//! let file = std::fs::File::create(&path)?;
//!
//! start_log_thread()?;
//! let q: &'static LogQueue = LogQueue::create(); // lives for the process
//! q.push(file.as_raw_fd(), b"first line\n").expect("room in the queue");
//! q.push(file.as_raw_fd(), b"second line\n").expect("room in the queue");
//! assert!(flush(Duration::from_secs(5))); // written, in order
//! assert_eq!(std::fs::read_to_string(&path)?, "first line\nsecond line\n");
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The library's own messages, into a file ([`set_log_file`]) that
//! `logrotate` may rename ([`reopen_log`]):
//!
//! ```
//! use std::time::Duration;
//! use mario::logq::{flush, install_logger, reopen_log, set_log_file};
//!
//! let path = std::env::temp_dir().join(format!("mario-log-{}.log", std::process::id()));
//! let rotated = path.with_extension("log.1");
//! assert!(install_logger()); // the `log` crate's messages go to the log thread
//! set_log_file(Some(&path))?; // instead of standard output and error
//! log::info!("before the rotation");
//! assert!(flush(Duration::from_secs(5)));
//!
//! std::fs::rename(&path, &rotated)?; // what logrotate does, then:
//! reopen_log();
//! log::warn!("after it");
//! assert!(flush(Duration::from_secs(5)));
//!
//! let old = std::fs::read_to_string(&rotated)?;
//! assert!(old.ends_with("[INFO] before the rotation\n"), "{old}"); // "[<UTC time>] [INFO] ..."
//! assert!(std::fs::read_to_string(&path)?.ends_with("[WARN] after it\n"));
//! set_log_file(None)?; // back to standard output and error
//! # std::fs::remove_file(&path)?;
//! # std::fs::remove_file(&rotated)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Concurrency protocol
//!
//! * Producer side: a push holds the queue's producer flag (uncontended when
//!   the queue is used as intended, by one thread), writes the record into
//!   the free part of the ring and publishes it with a `Release` store of the
//!   private write offset.
//! * Consumer side: every drain of a queue happens under its hub's consumer
//!   mutex (held by the log thread while it drains and writes, or by
//!   [`flush`] when it writes on the caller's thread). The consumer reads only
//!   published bytes and frees them with a `Release` store of the private
//!   read offset.
//! * Sleep / wake-up: the log thread sets a `sleeping` flag, issues a
//!   `SeqCst` fence, re-checks every queue and only then parks (with a one
//!   second safety timeout). A producer, after publishing, issues a `SeqCst`
//!   fence and loads the flag; only if it is set does it clear it and
//!   unpark the thread. The two fences guarantee that either the log thread
//!   sees the new record or the producer sees the flag: no lost wake-up.

//!
//! # Files
//!
//! * `ring`: [`LogQueue`], the ring itself (producer and consumer halves).
//! * `hub`: the registry of queues, the log thread and [`flush`].
//! * `write`: writing records to their descriptors.
//! * `sink`: the `log` crate sink ([`install_logger`]).
//! * `dest`: where the log thread writes: a log file ([`set_log_file`],
//!   [`reopen_log`]) or the standard descriptors, and a callback for the
//!   library's own messages ([`set_log_callback`]).
//!
//! Uses: nothing of the crate.

mod dest;
mod hub;
mod ring;
mod sink;
mod write;

#[cfg(test)]
mod tests;

pub use dest::{Level, LogCallback, reopen_log, set_log_callback};
#[cfg(test)]
pub(crate) use hub::log_thread_wakeups;
pub use hub::{flush, start_log_thread};
pub use ring::{
    DEFAULT_QUEUE_BYTES, LogQueue, MAX_LOG_LINE_LENGTH, MAX_QUEUE_BYTES, MIN_QUEUE_BYTES, QueueFull,
};

/// Sends what the log thread would write to standard output and standard
/// error to the file at `path` instead (appending; created with mode 0640),
/// or back to them with `None`. Takes effect before the log thread's next
/// write (it is woken for it). Fails, changing nothing, if the file cannot
/// be opened; the error names the OS reason. Any thread. Example: the
/// [module](crate::logq#example)'s second. C: `mario_set_log_file`.
pub fn set_log_file(path: Option<&std::path::Path>) -> std::io::Result<()> {
    dest::set_log_file(path)?;
    hub::wake_log_thread();
    Ok(())
}
pub use sink::{clear_thread_queue, install_logger, set_thread_queue};
