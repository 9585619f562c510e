//! Decoding plus the checks against a model: whatever passes is a batch of the model's shape,
//! finite and in range, holding the input's values (which leave the request); whatever is
//! refused leaves the request as it was.
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
    let Ok(mut r) = decode_request(data, None) else {
        return;
    };
    let before = r.clone();
    match check_request(&model, &mut r) {
        Ok(x) => {
            assert_eq!(&x.shape()[1..], &[1, 2, 2]);
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(x.iter().copied().collect::<Vec<_>>(), before.inputs[0].data);
            assert!(r.inputs[0].data.is_empty());
        }
        // Debug, not ==, so that NaN values compare equal to themselves.
        Err(_) => assert_eq!(format!("{r:?}"), format!("{before:?}")),
    }
});
