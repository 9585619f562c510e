use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD, Axis};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Objective};

/// The closed interval of valid input values. Attacks clip to it; data outside it is an error,
/// never silently clamped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputRange {
    /// Smallest valid input value.
    pub min: f32,
    /// Largest valid input value.
    pub max: f32,
}

impl Default for InputRange {
    fn default() -> Self {
        InputRange { min: 0.0, max: 1.0 }
    }
}

impl InputRange {
    /// Whether every value of `x` lies in the range (NaN does not).
    pub fn contains_all(&self, x: ArrayViewD<'_, f32>) -> bool {
        x.iter().all(|&v| v >= self.min && v <= self.max)
    }
}

/// What a caller needs to know about a classifier before sending it data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// A human-readable name (file stem, architecture name).
    pub name: String,
    /// Shape of one sample, without the batch axis, e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
    /// Number of classes (width of the logits).
    pub num_classes: usize,
    /// The valid input range.
    pub input_range: InputRange,
}

impl ModelInfo {
    /// Checks that `shape` is `[N, ...input_shape]` and returns N.
    pub fn check_batch(&self, shape: &[usize]) -> Result<usize, ModelError> {
        if shape.len() != self.input_shape.len() + 1 || shape[1..] != self.input_shape[..] {
            return Err(ModelError::Shape {
                expected: self.input_shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(shape[0])
    }

    /// Number of input features of one sample.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
}

/// Black-box access to a classifier: logits for a batch.
pub trait Classifier: Send + Sync {
    /// Shape, classes and input range.
    fn info(&self) -> &ModelInfo;

    /// Logits `[N, C]` for a batch `[N, ...input_shape]`.
    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError>;

    /// Class probabilities (softmax of the logits).
    fn probabilities(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        Ok(softmax_rows(self.logits(x)?.view()))
    }

    /// Predicted class of each sample.
    fn predict(&self, x: ArrayViewD<'_, f32>) -> Result<Vec<usize>, ModelError> {
        Ok(argmax_rows(self.logits(x)?.view()))
    }

    /// Gradient access, when this model has gradients that can be trusted.
    fn as_differentiable(&self) -> Option<&dyn Differentiable> {
        None
    }
}

/// White-box access: gradients with respect to the input.
pub trait Differentiable: Classifier {
    /// One forward and one backward pass over a batch.
    ///
    /// `cotangent` receives the logits `[N, C]` and returns `∂objective/∂logits` (same shape).
    /// The result is the logits and `Jᵀ·cotangent`, the gradient of the objective with respect to
    /// the input, shaped like `x`.
    fn vjp(
        &self,
        x: ArrayViewD<'_, f32>,
        cotangent: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
    ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError>;
}

/// Logits, per-sample objective values, and the gradient of their sum with respect to the input.
#[derive(Debug, Clone)]
pub struct ValueAndGrad {
    /// Logits `[N, C]` at the input.
    pub logits: Array2<f32>,
    /// Objective value of each sample `[N]`.
    pub loss: Array1<f32>,
    /// Gradient of the summed objective with respect to the input, shaped like the input.
    pub grad: ArrayD<f32>,
}

/// Evaluates `objective` and its input gradient in one forward/backward pass.
pub fn value_and_grad(
    model: &dyn Differentiable,
    x: ArrayViewD<'_, f32>,
    objective: &Objective<'_>,
) -> Result<ValueAndGrad, ModelError> {
    let n = model.info().check_batch(x.shape())?;
    objective.check(n, model.info().num_classes)?;
    let mut loss = None;
    let (logits, grad) = model.vjp(x, &mut |z| {
        let (l, d) = objective.value_and_dlogits(z);
        loss = Some(l);
        d
    })?;
    let loss = loss.ok_or_else(|| {
        ModelError::backend(
            "vjp",
            "the backend returned without evaluating the objective",
        )
    })?;
    Ok(ValueAndGrad { logits, loss, grad })
}

/// Row-wise softmax, numerically stable.
pub fn softmax_rows(z: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut p = z.to_owned();
    for mut row in p.axis_iter_mut(Axis(0)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    p
}

/// Index of the largest value of each row (first on ties).
pub fn argmax_rows(z: ArrayView2<'_, f32>) -> Vec<usize> {
    z.axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}
