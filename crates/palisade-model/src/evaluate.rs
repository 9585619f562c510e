//! Accuracy, per-class accuracy and mean cross-entropy of any [`Classifier`] on labelled data.

use ndarray::{ArrayViewD, Axis};
use palisade_core::{Classifier, ModelError, Objective, argmax_rows};
use serde::{Deserialize, Serialize};

/// Accuracy of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class index.
    pub class: usize,
    /// Samples of this class.
    pub samples: usize,
    /// Of which classified correctly.
    pub correct: usize,
    /// `correct / samples` (0 when there are none).
    pub accuracy: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// Samples classified correctly.
    pub correct: usize,
    /// `correct / samples`.
    pub accuracy: f64,
    /// Mean cross-entropy of the labels under the model's logits.
    pub loss: f64,
    /// Accuracy of each class (`num_classes` entries).
    pub per_class: Vec<ClassAccuracy>,
}

/// Evaluates `model` on `x` (`[N, ...input_shape]`) with labels `y`, `batch` samples at a time.
/// `progress` receives the number of samples done after each batch.
pub fn evaluate(
    model: &dyn Classifier,
    x: ArrayViewD<'_, f32>,
    y: &[usize],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Evaluation, ModelError> {
    let n = model.info().check_batch(x.shape())?;
    let classes = model.info().num_classes;
    if y.len() != n {
        return Err(ModelError::Labels(format!(
            "{} labels for {n} samples",
            y.len()
        )));
    }
    if n == 0 {
        return Err(ModelError::Labels("no samples to evaluate".into()));
    }
    let batch = batch.max(1);
    let mut per_class: Vec<ClassAccuracy> = (0..classes)
        .map(|class| ClassAccuracy {
            class,
            samples: 0,
            correct: 0,
            accuracy: 0.0,
        })
        .collect();
    let (mut correct, mut loss) = (0usize, 0f64);
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let xb = x.slice_axis(Axis(0), (start..end).into());
        let yb = &y[start..end];
        let objective = Objective::CrossEntropy { labels: yb };
        objective.check(end - start, classes)?;
        let z = model.logits(xb)?;
        let (l, _) = objective.value_and_dlogits(z.view());
        loss += l.iter().map(|&v| f64::from(v)).sum::<f64>();
        for (p, &t) in argmax_rows(z.view()).into_iter().zip(yb) {
            per_class[t].samples += 1;
            if p == t {
                per_class[t].correct += 1;
                correct += 1;
            }
        }
        start = end;
        progress(end);
    }
    for c in &mut per_class {
        c.accuracy = if c.samples == 0 {
            0.0
        } else {
            c.correct as f64 / c.samples as f64
        };
    }
    Ok(Evaluation {
        samples: n,
        correct,
        accuracy: correct as f64 / n as f64,
        loss: loss / n as f64,
        per_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, ArrayD, IxDyn};
    use palisade_core::{InputRange, LinearClassifier};

    #[test]
    fn counts_per_class_and_loss() {
        // logits = x (identity weights): the prediction is the argmax of the input.
        let m = LinearClassifier::new(
            "id",
            vec![3],
            InputRange::default(),
            Array2::eye(3),
            Array1::zeros(3),
        )
        .unwrap();
        let x = ArrayD::from_shape_vec(
            IxDyn(&[4, 3]),
            vec![1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 0., 0.],
        )
        .unwrap();
        let y = [0, 1, 2, 2];
        let mut seen = Vec::new();
        let e = evaluate(&m, x.view(), &y, 3, &mut |d| seen.push(d)).unwrap();
        assert_eq!(seen, vec![3, 4]);
        assert_eq!(e.correct, 3);
        assert_eq!(e.per_class[2].samples, 2);
        assert_eq!(e.per_class[2].correct, 1);
        let ce_right = (2.0 + 1f64.exp()).ln() - 1.0;
        let ce_wrong = (2.0 + 1f64.exp()).ln();
        assert!((e.loss - (3.0 * ce_right + ce_wrong) / 4.0).abs() < 1e-5);
        assert!(evaluate(&m, x.view(), &y[..2], 3, &mut |_| {}).is_err());
    }
}
