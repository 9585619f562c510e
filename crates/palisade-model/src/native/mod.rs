//! Native networks on burn (flex backend): architectures, seeded training, checkpoints, and
//! [`NativeNet`], which implements [`Classifier`](palisade_core::Classifier) and
//! [`Differentiable`](palisade_core::Differentiable) with exact input gradients.

mod arch;
mod checkpoint;
mod error;
mod model;
mod net;
mod train;

pub use arch::Arch;
pub use checkpoint::{ARCH_FILE, ArchFile, FORMAT, WEIGHTS_FILE, is_checkpoint};
pub use error::NativeError;
pub use model::{NativeMeta, NativeNet};
pub use train::{
    EpochStats, Optimizer, Progress, Samples, Schedule, StepResult, TrainConfig, TrainReport,
    Trainer, train,
};

use burn::tensor::Device;

/// The device native networks run on: burn's pure-Rust `flex` CPU backend, unless the crate
/// was built with an optional backend feature and `PALISADE_DEVICE` names it (`cpu`, `cuda`,
/// `wgpu`, `tch`). Read once per process.
pub fn device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| match std::env::var("PALISADE_DEVICE").as_deref() {
            #[cfg(feature = "cpu")]
            Ok("cpu") => Device::cpu(),
            #[cfg(feature = "cuda")]
            Ok("cuda") => Device::cuda(0),
            #[cfg(feature = "wgpu")]
            Ok("wgpu") => Device::wgpu(Default::default()),
            #[cfg(feature = "tch")]
            Ok("tch") => Device::libtorch(),
            _ => Device::flex(),
        })
        .clone()
}

/// The name of the backend [`device`] uses.
pub fn device_name() -> &'static str {
    match std::env::var("PALISADE_DEVICE").as_deref() {
        #[cfg(feature = "cpu")]
        Ok("cpu") => "cpu",
        #[cfg(feature = "cuda")]
        Ok("cuda") => "cuda",
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => "wgpu",
        #[cfg(feature = "tch")]
        Ok("tch") => "tch",
        _ => "flex",
    }
}

/// Metadata with class names "0", "1", ... for `classes` classes.
pub fn default_meta(
    name: impl Into<String>,
    classes: usize,
    input_range: palisade_core::InputRange,
) -> NativeMeta {
    NativeMeta {
        name: name.into(),
        class_names: model::index_names(classes),
        input_range,
        training: None,
    }
}

#[cfg(test)]
mod tests;
