//! Arbitrary bytes as an ONNX model: decoding, planning and (when it opens) one inference and
//! one gradient must return errors, never panic.
//!
//! tract panics on some malformed graphs (an `Unsqueeze` whose axes exceed the rank, found here
//! with tract-hir 0.23.9); palisade catches those where it calls tract (`onnx/caught.rs`) and
//! returns an error, which is the behaviour under test. libFuzzer's panic hook would abort on
//! the caught panics too, so this target replaces it with one that only remembers the last
//! panic: a panic that escapes palisade is still a finding, reported with that panic's message
//! and location.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use palisade_model::onnx::{OnnxModel, OnnxOptions};

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

fn open_and_run(data: &[u8]) {
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

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            let text = info.to_string();
            LAST_PANIC.with(|p| *p.borrow_mut() = text);
        }));
    },
    |data: &[u8]| {
        if std::panic::catch_unwind(|| open_and_run(data)).is_err() {
            LAST_PANIC.with(|p| eprintln!("a panic escaped palisade: {}", p.borrow()));
            std::process::abort();
        }
    }
);
