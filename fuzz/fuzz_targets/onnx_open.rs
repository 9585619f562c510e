//! Arbitrary bytes as an ONNX model: decoding, planning and (when it opens) one inference and
//! one gradient must return errors, never panic.
//!
//! tract panics on some malformed graphs (an `Unsqueeze` whose axes exceed the rank, found here
//! with tract-hir 0.23.9); palisade catches those where it calls tract (`onnx/caught.rs`) and
//! returns an error, which is the behaviour under test. libFuzzer's panic hook aborts on every
//! panic, caught or not, so this target wraps it with `quiet_caught_panics`, as `palisade` does
//! its own: a panic palisade catches passes silently, any other still aborts as a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_model::onnx::{OnnxModel, OnnxOptions, quiet_caught_panics};

fuzz_target!(
    init: quiet_caught_panics(),
    |data: &[u8]| {
        let opts = OnnxOptions::default();
        if let Ok(m) = OnnxModel::from_bytes(data, "fuzz", &opts) {
            use palisade_core::Classifier;
            let info = m.info().clone();
            if info.input_len() <= 1 << 16 {
                let mut shape = vec![1];
                shape.extend_from_slice(&info.input_shape);
                let x = palisade_core::ndarray::ArrayD::<f32>::zeros(shape);
                let _ = m.logits(x.view());
                let _ = m.interpreter_logits(x.view());
            }
        }
    }
);
