//! Errors of the dataset readers.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong when reading or writing a dataset. Variants that concern a file carry its
/// path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the expected magic bytes.
    #[error("{}: not a {format} file (bad magic {found})", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The format that was expected.
        format: &'static str,
        /// The bytes found, as hex.
        found: String,
    },
    /// The file ends before its header says it should.
    #[error("{}: truncated: expected {expected} bytes of data, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Shapes that do not fit together (images and labels, rows and columns, image sizes).
    #[error("{}: shape mismatch: {message}", path.display())]
    Shape {
        /// The file or directory.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// The file is well-formed up to a point, then malformed.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file is valid but uses something this reader does not support (an object array, a
    /// dtype, an image format).
    #[error("{}: unsupported: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        message: String,
    },
    /// A size limit was exceeded (protects against decompression bombs and absurd headers).
    #[error("{}: {message}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which limit.
        message: String,
    },
    /// An argument that cannot be used (split fractions, column names).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn shape(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Shape {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }
}
