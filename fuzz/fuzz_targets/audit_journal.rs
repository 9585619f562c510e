//! The audit journal's record reader: any bytes give the records up to the first torn or
//! corrupt one, never a panic, and those records re-encode to exactly the bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_gateway::audit::fuzzing::journal(data);
});
