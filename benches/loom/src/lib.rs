//! loom model of libmario's log ring and log thread.
//!
//! The worker side (the mailbox's wake-up protocol, its byte budget, the
//! placement cap) is checked over the real code: libmario's own `loom_`
//! tests, built with `--cfg loom` so that `src/sync.rs` hands it loom's
//! atomics (`make loom` runs both). The log ring uses `thread::park`, a
//! `OnceLock` and raw byte copies that loom cannot stand in for without
//! rewriting it, so [`logq`] is a line-by-line copy of that protocol with
//! loom's types: the same atomics, the same orderings, the same fences, the
//! same checks, in the same order. Every modelled step names the function
//! of src/logq/ it copies (src/logq/ has not changed since the model was
//! written: `git log src/logq*`). What is deliberately not copied is said
//! where it is left out; none of it takes part in the protocol (statistics
//! counters, time-outs, the byte-level framing of log lines).
//!
//! * [`logq`]: the log ring (`LogQueue::push` / `take`, the producer spin
//!   lock), the log thread's sleep and wake-up (`Hub::run` / `notify`),
//!   `Hub::flush`, and registering a queue while the log thread runs.
//!
//! Each protocol takes a variant switch set to the real code by default;
//! the tests also run deliberately broken variants (a fence removed, the
//! re-check before sleeping removed, the generation check removed, ...) and
//! expect loom to find the bug, which shows that the models can fail.
//!
//! Properties are checked with "ghost" state: plain `std` atomics and cells
//! that loom does not see (no extra schedule points, no extra
//! synchronisation); loom runs one model thread at a time, so they simply
//! record what happened in the order it happened. The models also note
//! situations they reach ([`cover`]); each test requires its executions to
//! have reached a list of them, so that a model cannot pass because loom
//! never explored the interleavings that matter.
//!
//! Two departures from the source work around gaps of loom 0.7.3, each
//! value-for-value equivalent and explained where it is made (litmus tests
//! in tests/litmus.rs pin the gaps down): [`swap_false`] for the wakers'
//! `swap(false)`, and `logq::own_load` for a `Relaxed` load of an offset by
//! the thread that alone stores it.

pub mod logq;

use loom::sync::atomic::{AtomicBool, Ordering};

/// `flag.swap(false, Ordering::AcqRel)` as the log's waker uses it
/// (`Hub::notify`, src/logq/hub.rs), modelled as
/// `compare_exchange(true, false, AcqRel, Acquire)`.
///
/// Why: loom 0.7 does not enforce the atomicity of read-modify-writes in its
/// modification order. A `swap` that reads `false` still writes `false`, and
/// loom then fails to order that write before the sleeper's next
/// `store(true)`; a later `Relaxed` load after a `SeqCst` fence may then
/// return the swap's `false` although C++ forbids it (the store of `true`
/// precedes the load's fence through the sleeper's fence). loom reports the
/// resulting lost wake-up, which cannot happen. tests/litmus.rs shows the
/// gap on a six-line litmus test, and that the form below is judged right.
///
/// For these protocols the two are the same: when the flag is `true` both
/// write `false` and acquire the sleeper's `Release`/`SeqCst` store; when it
/// is `false`, the swap rewrites the value it read, which nobody can tell
/// apart from not writing (the only stores of `false` are the sleeper's own
/// `Relaxed` ones and other wakers' swaps, and no reader relies on
/// synchronising with a swap that found the flag down), while the failed
/// exchange performs the same `Acquire` read.
pub fn swap_false(flag: &AtomicBool) -> bool {
    flag.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Runs the `#[ignore]`d test `name` of the calling test binary in a child
/// process and checks that it fails with `expected` in its output. Broken
/// variants are run this way because a failing loom model often aborts its
/// process (its threads' loom objects are dropped after the model is torn
/// down), which `#[should_panic]` cannot catch.
pub fn expect_failure(name: &str, expected: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("running 1 test"),
        "{name}: no such test in this binary:\n{text}"
    );
    assert!(
        !out.status.success(),
        "{name}: loom found no failure, expected {expected:?}"
    );
    assert!(
        text.contains(expected),
        "{name}: failed, but without {expected:?}:\n{text}"
    );
}

thread_local! {
    static COVERAGE: std::cell::RefCell<std::collections::BTreeSet<&'static str>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Ghost: notes that an execution reached the situation `label`. loom runs
/// a model's threads as coroutines on the test's own thread, so this
/// collects the labels of every execution of the current test.
pub fn cover(label: &'static str) {
    COVERAGE.with(|c| {
        c.borrow_mut().insert(label);
    });
}

/// The labels noted since the last call (see [`cover`]).
pub fn take_coverage() -> std::collections::BTreeSet<&'static str> {
    COVERAGE.with(|c| std::mem::take(&mut *c.borrow_mut()))
}
