use thiserror::Error;

/// What can go wrong when a model is asked for logits or gradients.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The batch does not have the model's per-sample input shape.
    #[error("input shape {got:?} does not match the model's [N, {expected:?}]")]
    Shape {
        /// The per-sample shape the model declares.
        expected: Vec<usize>,
        /// The full shape that was given (batch first).
        got: Vec<usize>,
    },
    /// Labels or target classes that do not fit the batch or the model.
    #[error("labels: {0}")]
    Labels(String),
    /// The model has no trustworthy gradient access.
    #[error("model '{0}' offers no gradient access (black-box only)")]
    NotDifferentiable(String),
    /// The backend failed; the message says where.
    #[error("{context}: {source}")]
    Backend {
        /// What the backend was doing.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ModelError {
    /// Wraps a backend error with what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ModelError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}
