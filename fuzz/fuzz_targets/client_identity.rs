//! What a mutual TLS client's certificate presents (`identity::ClientIdentity::of_der`) and the
//! names a key is bound to (`SubjectName`'s parse): any bytes are read without a panic, and
//! every name comes out in a canonical form that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_gateway::identity::fuzz_property(data);
});
