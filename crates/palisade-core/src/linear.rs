//! A linear (softmax-regression) classifier with exact gradients.
//!
//! Small and analytic: logistic regression on tabular data, and a reference against which
//! attacks and gradient checks are tested without any ML engine.

use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};

use crate::{Classifier, Differentiable, InputRange, ModelError, ModelInfo};

/// `logits = W · flatten(x) + b`, with `W` of shape `[C, D]`.
#[derive(Debug, Clone)]
pub struct LinearClassifier {
    info: ModelInfo,
    weight: Array2<f32>,
    bias: Array1<f32>,
}

impl LinearClassifier {
    /// A linear classifier over samples of `input_shape`; `weight` is `[C, D]` with `D` the
    /// product of `input_shape`, `bias` is `[C]`.
    pub fn new(
        name: impl Into<String>,
        input_shape: Vec<usize>,
        input_range: InputRange,
        weight: Array2<f32>,
        bias: Array1<f32>,
    ) -> Result<Self, ModelError> {
        let d: usize = input_shape.iter().product();
        let (c, wd) = weight.dim();
        if wd != d || bias.len() != c || c == 0 {
            return Err(ModelError::Shape {
                expected: vec![c, d],
                got: vec![weight.nrows(), weight.ncols(), bias.len()],
            });
        }
        Ok(LinearClassifier {
            info: ModelInfo {
                name: name.into(),
                input_shape,
                num_classes: c,
                input_range,
            },
            weight,
            bias,
        })
    }

    /// The weight matrix `[C, D]`.
    pub fn weight(&self) -> &Array2<f32> {
        &self.weight
    }

    /// The bias `[C]`.
    pub fn bias(&self) -> &Array1<f32> {
        &self.bias
    }

    fn flat<'a>(&self, x: &'a ArrayViewD<'_, f32>) -> Result<ArrayView2<'a, f32>, ModelError> {
        let n = self.info.check_batch(x.shape())?;
        x.view()
            .into_shape_with_order((n, self.info.input_len()))
            .map_err(|e| ModelError::backend("flatten input (is it contiguous?)", e))
    }
}

impl Classifier for LinearClassifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let xf = self.flat(&x)?;
        Ok(xf.dot(&self.weight.t()) + &self.bias)
    }

    fn as_differentiable(&self) -> Option<&dyn Differentiable> {
        Some(self)
    }
}

impl Differentiable for LinearClassifier {
    fn vjp(
        &self,
        x: ArrayViewD<'_, f32>,
        cotangent: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
    ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError> {
        let logits = self.logits(x.view())?;
        let cot = cotangent(logits.view());
        if cot.dim() != logits.dim() {
            return Err(ModelError::Labels(format!(
                "cotangent of shape {:?} for logits {:?}",
                cot.shape(),
                logits.shape()
            )));
        }
        let g = cot.dot(&self.weight);
        let grad = g
            .into_shape_with_order(IxDyn(x.shape()))
            .map_err(|e| ModelError::backend("reshape gradient", e))?;
        Ok((logits, grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Objective, value_and_grad};
    use ndarray::{Array, array};

    fn model() -> LinearClassifier {
        let w = Array::from_shape_fn((4, 6), |(i, j)| ((i * 7 + j * 3) % 5) as f32 * 0.3 - 0.6);
        LinearClassifier::new(
            "lin",
            vec![2, 3],
            InputRange::default(),
            w,
            array![0.1, -0.2, 0.0, 0.3],
        )
        .unwrap()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let m = model();
        let x = Array::from_shape_fn(IxDyn(&[2, 2, 3]), |ix| {
            (ix[0] * 6 + ix[1] * 3 + ix[2]) as f32 / 12.0
        });
        let labels = [1, 3];
        let obj = Objective::CrossEntropy { labels: &labels };
        let vg = value_and_grad(&m, x.view(), &obj).unwrap();
        let h = 1e-2f32;
        for (k, g) in vg.grad.iter().enumerate() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp.as_slice_mut().unwrap()[k] += h;
            xm.as_slice_mut().unwrap()[k] -= h;
            let fp = value_and_grad(&m, xp.view(), &obj).unwrap().loss.sum();
            let fm = value_and_grad(&m, xm.view(), &obj).unwrap().loss.sum();
            let fd = (fp - fm) / (2.0 * h);
            assert!((fd - g).abs() < 1e-3, "element {k}: fd {fd} vs {g}");
        }
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let m = model();
        let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 2]));
        assert!(matches!(m.logits(x.view()), Err(ModelError::Shape { .. })));
        let bad = value_and_grad(
            &m,
            ArrayD::<f32>::zeros(IxDyn(&[1, 2, 3])).view(),
            &Objective::CrossEntropy { labels: &[9] },
        );
        assert!(matches!(bad, Err(ModelError::Labels(_))));
    }
}
