//! The typed errors of every attack.

use palisade_core::ModelError;
use thiserror::Error;

use crate::Norm;

/// What can stop an attack before it runs or while it runs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttackError {
    /// Epsilon is negative, not finite, or larger than the input range allows in this norm.
    #[error(
        "epsilon {eps} is out of range for the {norm} norm: expected 0 ≤ ε ≤ {max} (ε is in input units; the model's input range is [{range_min}, {range_max}])"
    )]
    Epsilon {
        /// The epsilon that was given.
        eps: f32,
        /// Its norm.
        norm: Norm,
        /// The largest meaningful epsilon for this norm and input size.
        max: f32,
        /// Lower end of the model's input range.
        range_min: f32,
        /// Upper end of the model's input range.
        range_max: f32,
    },
    /// A data value lies outside the model's declared input range (or is NaN).
    #[error(
        "input value {value} at flat index {index} (sample {sample}) lies outside the model's input range [{min}, {max}]; rescale the data, it is never clamped silently"
    )]
    OutOfRange {
        /// Flat index of the first offending value.
        index: usize,
        /// Sample it belongs to.
        sample: usize,
        /// The value.
        value: f32,
        /// Lower end of the range.
        min: f32,
        /// Upper end of the range.
        max: f32,
    },
    /// The data does not have the model's per-sample shape.
    #[error("data shape {got:?} does not match the model's [N, {expected:?}]")]
    Shape {
        /// The per-sample shape of the model.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// Labels or targets that do not fit the data or the model's class count.
    #[error("labels: {0}")]
    Labels(String),
    /// A white-box attack on a model without trusted gradients.
    #[error(
        "attack '{attack}' needs gradients, but model '{model}' is black-box only; use square or hop_skip_jump"
    )]
    NotDifferentiable {
        /// The attack.
        attack: String,
        /// The model.
        model: String,
    },
    /// A parameter that makes no sense (zero steps, a negative step size, ...).
    #[error("parameter {name}: {reason}")]
    Parameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl AttackError {
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        AttackError::Parameter {
            name,
            reason: reason.into(),
        }
    }
}
