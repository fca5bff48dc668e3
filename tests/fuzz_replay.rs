//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same harnesses the nightly `cargo fuzz` targets call
//! (`mario::harness::fuzzing::{frames, ops, proxy}`), on stable. `make fuzz`
//! grows and minimizes that corpus.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

fn replay(target: &str, harness: fn(&[u8])) {
    let t0 = Instant::now();
    let files = corpus(target);
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!(
            "{target}: {}",
            f.file_name().unwrap_or_default().to_string_lossy()
        );
        harness(&data);
    }
    eprintln!("{target}: {} inputs in {:?}", files.len(), t0.elapsed());
}

#[test]
fn frames_corpus() {
    replay("frames", mario::harness::fuzzing::frames);
}

#[test]
fn ops_corpus() {
    replay("ops", mario::harness::fuzzing::ops);
}

#[test]
fn proxy_corpus() {
    replay("proxy", mario::harness::fuzzing::proxy);
}
