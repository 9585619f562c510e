//! The parsers of untrusted input (the fuzz targets' entry points) never panic: random bytes and
//! single-byte mutations of real bundles.

use proptest::prelude::*;

const BUNDLES: [&[u8]; 3] = [
    include_bytes!("data/oms/model.sig"),
    include_bytes!("data/oms/model.shards64-sha256.sig"),
    include_bytes!("data/oms/spec/valid/certificate.bundle.json"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        palisade_supply::fuzzing::bundle(&data);
        palisade_supply::fuzzing::statement(&data);
        palisade_supply::fuzzing::pem_key(&data);
        palisade_supply::fuzzing::provenance(&data);
        palisade_supply::fuzzing::age_file(&data);
    }

    #[test]
    fn mutated_bundles(which in 0usize..3, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut b = BUNDLES[which].to_vec();
        let i = pos.index(b.len());
        b[i] = byte;
        palisade_supply::fuzzing::bundle(&b);
        palisade_supply::fuzzing::statement(&b);
    }
}
