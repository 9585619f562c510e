//! The classifier abstraction that every Palisade attack, defence, detector and the gateway
//! works on.
//!
//! A model is a [`Classifier`] (black-box: logits for a batch). A model whose gradients can be
//! trusted is also [`Differentiable`]: one forward and one backward pass give the logits and the
//! vector-Jacobian product of any cotangent on the logits with respect to the input. Every loss
//! an attack needs (cross-entropy, the Carlini–Wagner margin, DLR, a single logit) is then
//! computed here, once, over the logits ([`Objective`]), so that a native burn network, an ONNX
//! file and any future backend give the same losses by construction.
//!
//! This crate does no I/O and depends on no ML engine: backends live in `palisade-model`.
//!
//! Tensors are `ndarray` arrays, batch first: inputs `[N, ...input_shape]`, logits `[N, C]`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod classifier;
mod error;
mod linear;
mod loss;

pub use classifier::{
    Classifier, Differentiable, InputRange, ModelInfo, ValueAndGrad, argmax_rows, softmax_rows,
    value_and_grad,
};
pub use error::ModelError;
pub use linear::LinearClassifier;
pub use loss::Objective;

/// Re-exported so that downstream crates name the same `ndarray` version.
pub use ndarray;
