//! The shipped `libmario.a` holds the library, not its test and benchmark
//! harnesses (`src/harness/`, feature `harness`): its symbol table shows
//! none of their symbols, while it does show the C interface and the core.
//!
//! The table is read with `readelf -sW -C`: GNU `nm` 2.40 hands the
//! objects to its LLVM 14 plugin first (they carry an `.llvmbc` section)
//! and then lists nothing for them (`nm --target=elf64-x86-64` works).

mod common;

use std::process::Command;

#[test]
fn release_library_has_no_harness_symbols() {
    common::ensure_built();
    let lib = common::root().join("target/release/libmario.a");
    let out = Command::new("readelf")
        .args(["-sW", "-C"])
        .arg(&lib)
        .output()
        .expect("run readelf");
    assert!(
        out.status.success(),
        "readelf {}: {}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let syms = String::from_utf8_lossy(&out.stdout);
    // The check can see what it looks for: the C entry points and the
    // core's own (demangled) symbols are there.
    for want in [" init_server\n", " mario_bufferevent_write\n", "mario::worker::"] {
        assert!(syms.contains(want), "{want:?} not found: is this libmario.a?");
    }
    let harness: Vec<&str> = syms
        .lines()
        .filter(|l| l.contains("mario::harness") || l.contains("IdleTable") || l.contains("fuzzing::"))
        .take(10)
        .collect();
    assert!(
        harness.is_empty(),
        "harness code in the shipped library:\n{}",
        harness.join("\n")
    );
}
