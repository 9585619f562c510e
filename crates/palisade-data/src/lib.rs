//! Datasets for Palisade, read into one in-memory type, [`Dataset`]: inputs as an f32
//! `ndarray` (batch first), one class per sample, class names, and for tabular data the feature
//! names and a sensitive attribute kept apart from the features.
//!
//! Readers:
//! - [`idx`]: IDX files (MNIST, Fashion-MNIST), raw or gzip, and MNIST-style folders.
//! - [`tabular`]: CSV with numeric standardisation, one-hot categoricals, a label column and a
//!   sensitive-attribute column; UCI Adult presets.
//! - [`npy`]: NumPy `.npy`/`.npz`, read and write; object arrays are refused.
//! - [`images`]: folders of PNG images, one subfolder per class.
//!
//! Every reader treats its input as untrusted: sizes are checked before allocating, errors are
//! typed ([`DataError`]) and name the file, and nothing panics on malformed bytes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod dataset;
mod error;
pub mod idx;
pub mod images;
pub mod io;
pub mod npy;
pub mod tabular;

pub use dataset::{Dataset, Sensitive, TrainTest};
pub use error::DataError;
pub use ndarray;
