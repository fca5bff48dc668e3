//! Two gaps of loom 0.7.3 that shape the models in src/, pinned down by
//! litmus tests. If a loom upgrade closes a gap, its test here fails and
//! the matching workaround in src/ can go.

use std::sync::atomic::AtomicUsize as Ghost;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*, fence};
use loom::thread;

/// The wake-up pattern of `Hub::notify` / `Mailbox::notify` reduced
/// to six lines. T2 is the sleeper (raise the flag, lower it, raise it
/// again, fence, look for work); T1 is the waker (maybe clear the flag with
/// `take`, publish work, fence, look at the flag). C++20 forbids the
/// outcome "T1 saw the flag down, T2 saw no work, and T1 never took the
/// flag" ([atomics.fences]: whichever fence is first in the total order
/// makes the other side see the store before it). With `swap`, loom 0.7.3
/// reports it anyway: a `swap` that reads `false` still writes `false`,
/// and loom does not order that write before T2's later `store(true)`
/// (read-modify-write atomicity is missing from its modification order, see
/// tokio-rs/loom#389 and #282).
fn sleeper_waker(take: fn(&AtomicBool) -> bool) {
    loom::model(move || {
        let flag = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicUsize::new(0));
        let (f2, w2) = (flag.clone(), work.clone());
        let sleeper = thread::spawn(move || {
            f2.store(true, SeqCst);
            fence(SeqCst);
            f2.store(false, Relaxed);
            f2.store(true, SeqCst);
            fence(SeqCst);
            w2.load(Acquire)
        });
        let took = flag.load(Relaxed) && take(&flag);
        work.store(1, Release);
        fence(SeqCst);
        let saw_flag = flag.load(Relaxed);
        let saw_work = sleeper.join().unwrap() == 1;
        assert!(saw_flag || saw_work || took, "lost wake-up");
    });
}

mod rmw_atomicity_gap {
    use super::*;

    #[test]
    #[ignore = "fails on loom 0.7.3 although C++ forbids the outcome: run by is_caught"]
    fn model() {
        sleeper_waker(|f| f.swap(false, AcqRel));
    }

    /// loom 0.7.3 still reports the forbidden outcome for `swap`.
    #[test]
    fn is_caught() {
        mario_loom::expect_failure("rmw_atomicity_gap::model", "lost wake-up");
    }
}

/// The same with `compare_exchange(true, false)`, which writes nothing when
/// it fails: loom judges it right. This is the form `mario_loom::swap_false`
/// uses for the real code's `swap(false, AcqRel)`.
#[test]
fn rmw_atomicity_gap_cas_form_passes() {
    sleeper_waker(mario_loom::swap_false);
}

/// loom's partial-order reduction remembers one last access per atomic: a
/// thread's own load of an atomic hides earlier loads by other threads
/// from the race check of its next store (tokio-rs/loom#392, #166). Here
/// the main thread's load races with the spawned thread's store, yet loom
/// explores a single execution and the main thread never sees 1. The
/// models read offsets their thread alone stores with `unsync_load` (see
/// `logq::own_load`), and every model test requires its executions to reach
/// named situations (`check` in loom_models.rs), so that such a gap shows up
/// as a failure instead of a vacuous pass.
#[test]
fn dpor_gap_own_load_hides_a_race() {
    let runs = std::sync::Arc::new(Ghost::new(0));
    let saw_one = std::sync::Arc::new(Ghost::new(0));
    let (r, s) = (runs.clone(), saw_one.clone());
    loom::model(move || {
        r.fetch_add(1, Relaxed);
        let a = Arc::new(AtomicUsize::new(0));
        let a2 = a.clone();
        let t = thread::spawn(move || {
            let x = a2.load(Relaxed);
            a2.store(x + 1, Release);
        });
        if a.load(Acquire) == 1 {
            s.fetch_add(1, Relaxed);
        }
        t.join().unwrap();
    });
    assert_eq!(
        (runs.load(Relaxed), saw_one.load(Relaxed)),
        (1, 0),
        "loom now explores this race: the gap is closed"
    );
}
