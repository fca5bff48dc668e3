//! The PROXY protocol header parser on arbitrary bytes and on built
//! headers: see `mario::harness::fuzzing::proxy` for the input format and
//! the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mario::harness::fuzzing::proxy(data));
