//! Decoding plus the checks against a model: whatever passes is a batch of the model's shape,
//! finite and in range.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade_core::{InputRange, LinearClassifier, ndarray};
use palisade_gateway::guard::validate::check_request;
use palisade_gateway::oip::decode_request;
use palisade_gateway::{Policy, ServedModel};

fuzz_target!(|data: &[u8]| {
    let model = ServedModel {
        name: "m".into(),
        version: "1".into(),
        classifier: Arc::new(
            LinearClassifier::new(
                "m",
                vec![1, 2, 2],
                InputRange::default(),
                ndarray::Array2::zeros((3, 4)),
                ndarray::Array1::zeros(3),
            )
            .unwrap(),
        ),
        policy: Policy::default(),
        input_name: "input".into(),
        output_name: "logits".into(),
        platform: "fuzz".into(),
    };
    let Ok(r) = decode_request(data, None) else {
        return;
    };
    if let Ok(x) = check_request(&model, &r) {
        assert_eq!(&x.shape()[1..], &[1, 2, 2]);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
