//! A `log` sink that keeps what the servers of this test process log, for
//! tests of the Rust API (whose messages go through the `log` crate).

use std::sync::{Mutex, Once};

struct Capture;
static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());
static CAPTURE: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        RECORDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once per process), at every level.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).expect("install the capturing logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// How many captured messages of `level` contain `needle`.
pub fn logged_count(level: log::Level, needle: &str) -> usize {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, m)| *l == level && m.contains(needle))
        .count()
}

/// How many captured messages of `level` contain every one of `needles`.
pub fn logged_with_all(level: log::Level, needles: &[&str]) -> usize {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, m)| *l == level && needles.iter().all(|n| m.contains(n)))
        .count()
}
