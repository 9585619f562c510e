//! Fuzz target: `palisade_scan::fuzzing::safetensors` must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_scan::fuzzing::safetensors(data);
});
