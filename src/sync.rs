//! The atomics of the cross-thread paths (the mailbox and placement), from
//! `std`, or from `loom` when the crate is built with `--cfg loom` to run
//! the loom models of those paths over the real code (`make loom`).
//!
//! Uses: nothing of the crate.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, fence};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, fence};
