//! The burn backends Palisade runs on: Flex (pure-Rust CPU) for inference and its autodiff
//! decorator for gradients.

/// The CPU backend for inference (burn's pure-Rust Flex backend).
pub type Cpu = burn::backend::Flex;

/// The CPU backend with reverse-mode autodiff, for input gradients and training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
