//! Arbitrary bytes as an ONNX model: decoding, planning and (when it opens) one inference and
//! one gradient must return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_model::onnx::{OnnxModel, OnnxOptions};

fuzz_target!(|data: &[u8]| {
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
});
