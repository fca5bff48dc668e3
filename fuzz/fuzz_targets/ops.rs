//! Operation sequences against a real in-process server, checked against
//! a model: see `mario::harness::fuzzing::ops` for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mario::harness::fuzzing::ops(data));
