//! Input gradients checked against central finite differences: whether white-box attacks can
//! trust a model's gradients.

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use palisade_core::{Differentiable, ModelError, Objective, value_and_grad};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Relative error below which gradients are called trustworthy.
pub const TOLERANCE: f64 = 1e-2;

/// The outcome of [`check_gradients`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientCheck {
    /// Random directions probed.
    pub directions: usize,
    /// Step of the central differences (per input element).
    pub step: f32,
    /// Largest relative error between `⟨∇f, v⟩` and `(f(x+hv) − f(x−hv)) / 2h`.
    pub max_relative_error: f64,
    /// The tolerance applied.
    pub tolerance: f64,
    /// Whether every direction agreed within the tolerance.
    pub passed: bool,
}

/// Compares the input gradient of the summed cross-entropy at `x` (labels `labels`) with
/// central finite differences along `directions` random ±1 directions drawn from `seed`.
pub fn check_gradients(
    model: &dyn Differentiable,
    x: ArrayViewD<'_, f32>,
    labels: &[usize],
    directions: usize,
    seed: u64,
) -> Result<GradientCheck, ModelError> {
    let obj = Objective::CrossEntropy { labels };
    let vg = value_and_grad(model, x.view(), &obj)?;
    let f = |x: &ArrayD<f32>| -> Result<f64, ModelError> {
        let z = model.logits(x.view())?;
        Ok(obj
            .value_and_dlogits(z.view())
            .0
            .iter()
            .map(|&v| f64::from(v))
            .sum())
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = 1e-3f32;
    let mut worst = 0f64;
    let base = x.to_owned();
    for _ in 0..directions {
        let v = ArrayD::from_shape_fn(IxDyn(x.shape()), |_| {
            if rng.random::<bool>() { 1f32 } else { -1.0 }
        });
        let fd = (f(&(&base + &(&v * h)))? - f(&(&base - &(&v * h)))?) / (2.0 * f64::from(h));
        let an: f64 = vg
            .grad
            .iter()
            .zip(v.iter())
            .map(|(&g, &d)| f64::from(g) * f64::from(d))
            .sum();
        let err = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-3);
        worst = worst.max(err);
    }
    Ok(GradientCheck {
        directions,
        step: h,
        max_relative_error: worst,
        tolerance: TOLERANCE,
        passed: worst.is_finite() && worst <= TOLERANCE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, ArrayView2};
    use palisade_core::{Classifier, InputRange, LinearClassifier, ModelInfo};

    #[test]
    fn passes_exact_gradients_and_fails_wrong_ones() {
        let w = Array2::from_shape_fn((3, 4), |(i, j)| (i as f32 - j as f32) * 0.3);
        let lin = LinearClassifier::new("lin", vec![4], InputRange::default(), w, Array1::zeros(3))
            .unwrap();
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 4]), |ix| (ix[0] + ix[1]) as f32 * 0.1);
        let ok = check_gradients(&lin, x.view(), &[0, 2], 4, 1).unwrap();
        assert!(ok.passed, "{ok:?}");

        /// Reports twice the true gradient.
        struct Liar(LinearClassifier);
        impl Classifier for Liar {
            fn info(&self) -> &ModelInfo {
                self.0.info()
            }
            fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
                self.0.logits(x)
            }
        }
        impl Differentiable for Liar {
            fn vjp(
                &self,
                x: ArrayViewD<'_, f32>,
                c: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
            ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError> {
                let (z, g) = self.0.vjp(x, c)?;
                Ok((z, g * 2.0))
            }
        }
        let bad = check_gradients(&Liar(lin), x.view(), &[0, 2], 4, 1).unwrap();
        assert!(!bad.passed);
    }
}
