//! What can go wrong when an ONNX model is read, planned or run.

use std::path::PathBuf;

use palisade_core::ModelError;
use thiserror::Error;

/// An error from the ONNX runtime: reading, decoding, planning or running a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The model file (or one of its external-data files) could not be read.
    #[error("cannot read '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than an ONNX protobuf may be.
    #[error("'{path}' is {size} bytes, over the {limit}-byte limit of an ONNX protobuf")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model (protobuf decoding failed): {0}")]
    Decode(#[from] prost::DecodeError),
    /// The protobuf decoded but does not describe a usable model.
    #[error("invalid ONNX model: {0}")]
    Invalid(String),
    /// The model is valid ONNX but not a classifier Palisade can drive (one float input
    /// `[N, ...]`, first output `[N, C]`).
    #[error("not a classifier: {0}")]
    NotAClassifier(String),
    /// The differentiable interpreter does not implement this operator.
    #[error("unsupported ONNX op '{op}' (node '{node}')")]
    UnsupportedOp {
        /// The operator type, e.g. `LSTM`.
        op: String,
        /// The node's name (or its first output when the node has no name).
        node: String,
    },
    /// A node whose attributes or operands the interpreter cannot handle.
    #[error("node '{node}' ({op}): {reason}")]
    Node {
        /// The operator type.
        op: String,
        /// The node's name.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// An initializer stored outside the model file that is refused or unreadable.
    #[error("external data '{location}': {reason}")]
    ExternalData {
        /// The location recorded in the model.
        location: String,
        /// Why it was refused.
        reason: String,
    },
    /// tract (the inference runtime) rejected or failed to run the model.
    #[error("tract: {0}")]
    Tract(String),
    /// The interpreter's backend failed (a bug or an unexpected shape, caught at run time).
    #[error("interpreter: {0}")]
    Runtime(String),
}

impl OnnxError {
    pub(crate) fn node(op: &str, node: &str, reason: impl Into<String>) -> Self {
        OnnxError::Node {
            op: op.to_string(),
            node: node.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<OnnxError> for ModelError {
    fn from(e: OnnxError) -> Self {
        ModelError::backend("ONNX", e)
    }
}
