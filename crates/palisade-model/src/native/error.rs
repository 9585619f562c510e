//! Errors of the native-network runtime.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong when building, training, saving or loading a native network.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The architecture description is not usable (zero sizes, input too small for the layers).
    #[error("architecture: {0}")]
    Arch(String),
    /// The training configuration is not usable.
    #[error("training configuration: {0}")]
    Config(String),
    /// Training data that does not fit the architecture.
    #[error("training data: {0}")]
    Data(String),
    /// Training diverged (the loss became NaN or infinite).
    #[error("training diverged at epoch {epoch}, step {step}: loss is {loss}")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The non-finite loss.
        loss: f32,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is corrupt or does not match its architecture file.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

impl NativeError {
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        NativeError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NativeError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<NativeError> for palisade_core::ModelError {
    fn from(e: NativeError) -> Self {
        palisade_core::ModelError::backend("native network", e)
    }
}
