//! Coverage-guided fuzzing of record decoding (`make fuzz`).
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)] // each target uses one check
mod harness;

libfuzzer_sys::fuzz_target!(init: harness::init(), |data: &[u8]| harness::decode(data));
