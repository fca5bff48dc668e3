//! The frame decoder under fuzzer-chosen read splits: see
//! `mario::harness::fuzzing::frames` for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mario::harness::fuzzing::frames(data));
