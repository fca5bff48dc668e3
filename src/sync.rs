//! The atomics of the cross-thread paths (the mailbox and placement), from
//! `std`, or from `loom` when the crate is built with `--cfg loom` to run
//! the loom models of those paths over the real code (`make loom`).
//!
//! Under `--cfg loom` only, [`broken`] lets a model switch one step of the
//! protocol off, to show that the model catches the bug that makes; in
//! every other build it is the constant `false`.
//!
//! Uses: nothing of the crate.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, fence};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, fence};

/// A step of a lock-free protocol that a loom model may break on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The `SeqCst` fence a sender issues before it looks at `sleeping`.
    NotifyFence,
    /// The worker's second look at its queues after raising `sleeping`.
    Recheck,
    /// Reserving command bytes with one read-modify-write (broken: a load,
    /// a check, then an add).
    BudgetRmw,
    /// The placement cap test `count >= cap` (broken: `>`).
    CapTest,
}

/// Whether the running loom model broke `step` (never, outside loom).
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn broken(_step: Step) -> bool {
    false
}

#[cfg(loom)]
static BROKEN: std::sync::Mutex<Option<Step>> = std::sync::Mutex::new(None);

/// Whether the running loom model broke `step`.
#[cfg(loom)]
pub(crate) fn broken(step: Step) -> bool {
    *BROKEN.lock().unwrap() == Some(step)
}

/// Breaks `step` (or nothing) for the loom models that follow.
#[cfg(loom)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn set_broken(step: Option<Step>) {
    *BROKEN.lock().unwrap() = step;
}
