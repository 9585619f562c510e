//! Model runtimes behind the `palisade-core` classifier abstraction.
//!
//! - [`native`]: networks built and trained in Rust on burn's `flex` CPU backend (MLP, small
//!   CNN, small ResNet), with seeded training and safetensors checkpoints.
//! - [`evaluate`]: accuracy, per-class accuracy and loss of any classifier.
//! - [`gradcheck`]: input gradients against finite differences.
//!
//! Optional burn backends (`tch`, `cuda`, `wgpu`, `cpu`) are cargo features, off by default;
//! nothing requires them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod evaluate;
pub mod gradcheck;
pub mod native;
