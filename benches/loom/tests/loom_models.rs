//! Exhaustive (bounded) checks of the log ring model in src/ (the worker
//! side is modelled over the real code instead: `make loom` also runs the
//! `loom_` tests of libmario itself, see src/mailbox.rs): every
//! interleaving of the threads, and every value each atomic load may return under the
//! C++/Rust memory model as loom implements it, up to the preemption bound.
//!
//! Run: `cargo test --release` in benches/loom (about 15 s on 2 cores).
//! The bound defaults to [`DEFAULT_PREEMPTIONS`]; `LOOM_MAX_PREEMPTIONS=N`
//! overrides it (4: about 4 minutes, 1.9 million executions; higher is
//! slower still and more thorough). `-- --nocapture` prints, per test, the
//! executions explored and the situations reached.
//!
//! Each `broken_*` module runs a model with one part of the protocol
//! removed: its `model` test is `#[ignore]`d, and its `is_caught` test runs
//! `model` in a child process and requires it to fail with the panic that
//! names the bug. They show that the models catch the bugs the real
//! protocol is there to prevent.

use std::sync::atomic::Ordering as Ghost;

use loom::sync::Arc;
use loom::thread;

use mario_loom::logq::{self, Hub, LogVariant};

/// Preemption bound used unless `LOOM_MAX_PREEMPTIONS` is set.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Explores every execution of `f` (up to the preemption bound), then
/// requires that the executions reached each situation in `reach` (noted
/// by the models with [`cover`]): a guard against models that pass because
/// loom never explored the interesting interleavings (loom 0.7's partial
/// order reduction is known to skip some: tests/litmus.rs).
fn check(reach: &[&str], f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let t0 = std::time::Instant::now();
    mario_loom::take_coverage();
    b.check(move || {
        counted.fetch_add(1, Ghost::Relaxed);
        f()
    });
    let seen = mario_loom::take_coverage();
    let name = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!(
        "{name}: {} executions in {:.1?} (preemption bound {:?}); reached {seen:?}",
        runs.load(Ghost::Relaxed),
        t0.elapsed(),
        b.preemption_bound
    );
    let missing: Vec<_> = reach.iter().filter(|l| !seen.contains(*l)).collect();
    assert!(missing.is_empty(), "{name}: no execution reached {missing:?}");
}

/// A deliberately broken model: `$name::model` (ignored on its own) runs
/// it; `$name::is_caught` runs that in a child process and requires it to
/// fail with `$expected` in its output.
macro_rules! broken {
    ($name:ident, $expected:literal, $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            #[ignore = "broken on purpose: run by is_caught"]
            fn model() $body

            #[test]
            fn is_caught() {
                mario_loom::expect_failure(concat!(stringify!($name), "::model"), $expected);
            }
        }
    };
}

fn rec(fd: i32, line: &[u8]) -> (i32, Vec<u8>) {
    (fd, line.to_vec())
}

// ---------------------------------------------------------------------------
// The log ring and the log thread (src/logq/).

/// Three records of 7, 8 and 7 bytes through a 16-byte ring (15 usable):
/// the third only fits once the log thread has freed the first, and it
/// wraps around the end. The producer retries a full queue (the real
/// callers drop the line instead; retrying makes the expected output
/// known). Checks: the log thread, which sleeps whenever it finds nothing,
/// is always woken (no lost wake-up: it would stay parked and loom would
/// report a deadlock), every byte arrives, in order, untorn, and no byte of
/// the ring is touched by both sides without happens-before (loom's
/// `UnsafeCell` tracking).
fn log_ring_model(v: LogVariant) {
    let recs = [rec(1, b"a"), rec(2, b"bc"), rec(1, b"d")];
    let total: usize = recs.iter().map(|r| r.1.len()).sum();
    let hub = Arc::new(Hub::new(v));
    let q = hub.create_queue(16);
    let log = Hub::start(&hub, total);
    for (fd, line) in &recs {
        while q.push(&hub, *fd, line).is_err() {
            thread::yield_now();
        }
    }
    log.join().unwrap();
    logq::assert_same_records(&hub.written(), &recs);
}

#[test]
fn log_ring_wraps_in_order_and_never_loses_a_wakeup() {
    check(
        &[
            "log: record wraps around the ring's end",
            "log: push refused, ring full",
            "log: log thread parked",
            "log: notify woke the log thread",
            "log: re-check found a record after raising the flag",
        ],
        || log_ring_model(LogVariant::REAL),
    );
}

/// The wake-up alone: two records that fill the ring exactly (no retry
/// loop, so a lost wake-up can only end in a deadlock, never in a spinning
/// producer).
fn log_wakeup_model(v: LogVariant) {
    let recs = [rec(1, b"a"), rec(2, b"bc")];
    let hub = Arc::new(Hub::new(v));
    let q = hub.create_queue(16);
    let log = Hub::start(&hub, 3);
    for (fd, line) in &recs {
        q.push(&hub, *fd, line).expect("both records fit");
    }
    log.join().unwrap();
    logq::assert_same_records(&hub.written(), &recs);
}

#[test]
fn log_thread_never_sleeps_through_a_push() {
    check(
        &[
            "log: log thread parked",
            "log: notify woke the log thread",
            "log: re-check found a record after raising the flag",
        ],
        || log_wakeup_model(LogVariant::REAL),
    );
}

/// `flush` with no log thread (it drains on the caller's thread) while a
/// producer pushes into a 16-byte ring without retrying: whatever `push`
/// accepted is written exactly once, in order; what it refused (full) is
/// never written; the consumer never reads a byte being written.
#[test]
fn log_flush_on_caller_races_a_producer() {
    let reach = [
        "log: flush wrote records on the caller's thread",
        "log: flush saw records pending and waits",
        "log: push refused, ring full",
    ];
    check(&reach, || {
        let hub = Arc::new(Hub::new(LogVariant::REAL));
        let q = hub.create_queue(16);
        let (h2, q2) = (hub.clone(), q.clone());
        let producer = thread::spawn(move || {
            let recs = [rec(1, b"a"), rec(2, b"bc"), rec(1, b"d")];
            let mut ok = Vec::new();
            for (fd, line) in &recs {
                if q2.push(&h2, *fd, line).is_ok() {
                    ok.push((*fd, line.clone()));
                }
            }
            ok
        });
        assert!(hub.flush());
        let ok = producer.join().unwrap();
        assert!(hub.flush());
        assert!(q.is_empty());
        logq::assert_same_records(&hub.written(), &ok);
    });
}

/// Two threads push into the same queue at once (a misuse the spin lock
/// makes safe) while the caller flushes: no two writers are ever in the
/// ring together (loom would see concurrent writes to its bytes), every
/// accepted record comes out whole and in its producer's order, a refused
/// one never, and the flag is always released (a later push succeeds; no
/// deadlock).
#[test]
fn log_producer_spin_lock_serialises_producers() {
    let reach = [
        "log: producer flag contended",
        "log: flush wrote records on the caller's thread",
    ];
    check(&reach, || {
        let hub = Arc::new(Hub::new(LogVariant::REAL));
        let q = hub.create_queue(16);
        let spawn = |fd: i32, line: &'static [u8]| {
            let (h, q) = (hub.clone(), q.clone());
            thread::spawn(move || {
                if q.push(&h, fd, line).is_ok() {
                    vec![(fd, line.to_vec())]
                } else {
                    Vec::new()
                }
            })
        };
        let a = spawn(1, b"a");
        let b = spawn(2, b"b");
        assert!(hub.flush());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(hub.flush());
        logq::assert_interleaving(&hub.written(), &[a.clone(), b.clone()]);
        // The flag is free again.
        q.push(&hub, 3, b"z").expect("producer flag left taken");
        assert!(hub.flush());
        let mut all = hub.written();
        assert_eq!(all.pop(), Some(rec(3, b"z")));
    });
}

/// `flush` with the log thread running: it returns only once everything
/// pushed before it was written by the log thread (and it cannot deadlock
/// with the log thread over the drain mutex).
#[test]
fn log_flush_waits_for_the_log_thread() {
    let reach = [
        "log: flush found the drain mutex taken",
        "log: flush saw records pending and waits",
        "log: log thread parked",
    ];
    check(&reach, || {
        let recs = [rec(1, b"a"), rec(2, b"b")];
        let hub = Arc::new(Hub::new(LogVariant::REAL));
        let q = hub.create_queue(16);
        let log = Hub::start(&hub, 2);
        for (fd, line) in &recs {
            q.push(&hub, *fd, line).unwrap();
        }
        assert!(hub.flush());
        assert_eq!(hub.written_bytes.load(Ghost::SeqCst), 2, "flush returned early");
        logq::assert_same_records(&hub.written(), &recs);
        log.join().unwrap();
    });
}

/// A queue created while the log thread runs (its snapshot of the registry
/// is stale until `registered` changes): its first record is still written
/// and the log thread still woken.
#[test]
fn log_queue_registered_while_the_log_thread_sleeps() {
    let reach = [
        "log: consumer refreshed a stale registry snapshot",
        "log: log thread parked",
        "log: notify woke the log thread",
    ];
    check(&reach, || {
        let hub = Arc::new(Hub::new(LogVariant::REAL));
        let _first = hub.create_queue(16);
        let log = Hub::start(&hub, 1);
        let q = hub.create_queue(16);
        q.push(&hub, 7, b"x").unwrap();
        log.join().unwrap();
        logq::assert_same_records(&hub.written(), &[rec(7, b"x")]);
    });
}

broken!(broken_log_notify_without_fence_loses_a_wakeup, "deadlock", {
    check(&[], || {
        log_wakeup_model(LogVariant {
            notify_fence: false,
            ..LogVariant::REAL
        })
    });
});

broken!(broken_log_run_without_fence_loses_a_wakeup, "deadlock", {
    check(&[], || {
        log_wakeup_model(LogVariant {
            run_fence: false,
            ..LogVariant::REAL
        })
    });
});

broken!(broken_log_run_without_recheck_loses_a_wakeup, "deadlock", {
    check(&[], || {
        log_wakeup_model(LogVariant {
            recheck: false,
            ..LogVariant::REAL
        })
    });
});

broken!(
    broken_log_relaxed_head_lets_the_consumer_read_unwritten_bytes,
    "Causality violation",
    {
        check(&[], || {
            log_ring_model(LogVariant {
                head_release: false,
                ..LogVariant::REAL
            })
        });
    }
);

broken!(
    broken_log_relaxed_tail_lets_the_producer_overwrite_unread_bytes,
    "Causality violation",
    {
        check(&[], || {
            log_ring_model(LogVariant {
                tail_release: false,
                ..LogVariant::REAL
            })
        });
    }
);

broken!(
    broken_log_without_producer_lock_two_writers_collide,
    "Causality violation",
    {
        check(&[], || {
            let hub = Arc::new(Hub::new(LogVariant {
                producer_lock: false,
                ..LogVariant::REAL
            }));
            let q = hub.create_queue(16);
            let (h, q2) = (hub.clone(), q.clone());
            let t = thread::spawn(move || {
                let _ = q2.push(&h, 1, b"a");
            });
            let _ = q.push(&hub, 2, b"b");
            t.join().unwrap();
        });
    }
);
