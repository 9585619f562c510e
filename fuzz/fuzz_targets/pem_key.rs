//! Fuzz target: `palisade_supply::fuzzing::pem_key` must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_supply::fuzzing::pem_key(data);
});
