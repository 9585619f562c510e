//! Model runtimes behind the `palisade-core` classifier abstraction.
//!
//! - [`onnx`]: ONNX files loaded at run time: tract for logits, a differentiable interpreter
//!   over burn operations for input gradients.
//! - [`check`]: `palisade model check`: compares the two runtimes and the gradients against
//!   finite differences, and says whether white-box attacks can trust the model.
//! - [`open`]: opens a model file, choosing the runtime by content.
//! - [`native`]: networks built and trained in Rust on burn's `flex` CPU backend (MLP, small
//!   CNN, small ResNet), with seeded training and safetensors checkpoints.
//! - [`evaluate`]: accuracy, per-class accuracy and loss of any classifier.
//! - [`gradcheck`]: input gradients against finite differences.
//!
//! Optional burn backends (`tch`, `cuda`, `wgpu`, `cpu`) are cargo features, off by default;
//! nothing requires them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod check;
pub mod evaluate;
pub mod gradcheck;
pub mod native;
pub mod onnx;

use std::path::Path;

use palisade_core::{Classifier, InputRange, ModelError};

/// How to open a model whose file does not record everything Palisade needs.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The valid input range (default `[0, 1]`).
    pub input_range: Option<InputRange>,
    /// The per-sample input shape, for models whose non-batch dimensions are symbolic.
    pub input_shape: Option<Vec<usize>>,
}

/// The model formats [`open`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// An ONNX protobuf.
    Onnx,
}

/// Recognises a model file by its content (not its extension).
pub fn detect(path: &Path) -> Result<Format, ModelError> {
    let bytes = onnx::read_model_bytes(path)?;
    if onnx::looks_like_onnx(&bytes) {
        return Ok(Format::Onnx);
    }
    Err(ModelError::backend(
        format!("open '{}'", path.display()),
        "not a recognised model format (expected an ONNX protobuf)",
    ))
}

/// Opens a model file as a classifier, choosing the runtime by content.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn Classifier>, ModelError> {
    match detect(path)? {
        Format::Onnx => {
            let opts = onnx::OnnxOptions {
                input_range: options.input_range,
                input_shape: options.input_shape.clone(),
            };
            Ok(Box::new(onnx::OnnxModel::open(path, &opts)?))
        }
    }
}
