//! IDX parsing (after optional gzip decompression) never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.idx");
    if let Ok(bytes) = palisade_data::io::maybe_gunzip(p, data, 1 << 24) {
        let _ = palisade_data::idx::parse_idx(p, &bytes);
    }
});
