//! The in-memory dataset type and its splits.

use ndarray::{ArrayD, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::DataError;

/// A sensitive attribute kept apart from the features (fairness audits, attribute inference):
/// one category index per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensitive {
    /// Column name.
    pub name: String,
    /// Category names; `values[i]` indexes into it.
    pub categories: Vec<String>,
    /// Category of each sample.
    pub values: Vec<usize>,
}

/// A labelled dataset in memory: inputs `x` (`[N, ...sample_shape]`, f32), one class per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Inputs, batch first.
    pub x: ArrayD<f32>,
    /// Class of each sample (`< class_names.len()`).
    pub y: Vec<usize>,
    /// Name of each class.
    pub class_names: Vec<String>,
    /// Name of each feature for tabular data (after encoding); empty for images.
    pub feature_names: Vec<String>,
    /// A sensitive attribute kept out of `x`, if any.
    pub sensitive: Option<Sensitive>,
    /// The valid input range, `(min, max)`: `(0, 1)` for images scaled from bytes; `None` for
    /// standardised tabular data, which is unbounded.
    pub input_range: Option<(f32, f32)>,
}

impl Dataset {
    /// Builds a dataset, checking that labels, sensitive values and inputs agree.
    pub fn new(x: ArrayD<f32>, y: Vec<usize>, class_names: Vec<String>) -> Result<Self, DataError> {
        let d = Dataset {
            x,
            y,
            class_names,
            feature_names: Vec::new(),
            sensitive: None,
            input_range: None,
        };
        d.validate()?;
        Ok(d)
    }

    /// Checks the invariants: `x` has a batch axis of `y.len()`, every label and sensitive
    /// value is in range.
    pub fn validate(&self) -> Result<(), DataError> {
        let n = self.y.len();
        if self.x.ndim() == 0 || self.x.shape()[0] != n {
            return Err(DataError::Invalid(format!(
                "inputs of shape {:?} for {n} labels",
                self.x.shape()
            )));
        }
        if let Some(bad) = self.y.iter().find(|&&c| c >= self.class_names.len()) {
            return Err(DataError::Invalid(format!(
                "label {bad} out of range for {} classes",
                self.class_names.len()
            )));
        }
        if let Some(s) = &self.sensitive
            && (s.values.len() != n || s.values.iter().any(|&v| v >= s.categories.len()))
        {
            return Err(DataError::Invalid(format!(
                "sensitive attribute '{}' does not match the samples",
                s.name
            )));
        }
        Ok(())
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.x.shape()[1..]
    }

    /// The samples at `indices` (in that order), with their labels and sensitive values.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        if let Some(bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!(
                "index {bad} out of range for {} samples",
                self.len()
            )));
        }
        Ok(Dataset {
            x: self.x.select(Axis(0), indices),
            y: indices.iter().map(|&i| self.y[i]).collect(),
            class_names: self.class_names.clone(),
            feature_names: self.feature_names.clone(),
            sensitive: self.sensitive.as_ref().map(|s| Sensitive {
                name: s.name.clone(),
                categories: s.categories.clone(),
                values: indices.iter().map(|&i| s.values[i]).collect(),
            }),
            input_range: self.input_range,
        })
    }

    /// The first `n` samples (all of them if there are fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        // Indices are in range by construction.
        self.select(&idx).unwrap_or_else(|_| self.clone())
    }

    /// Splits into two parts after a seeded shuffle: the first holds `fraction` of the
    /// samples (rounded down), the second the rest.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::Invalid(format!(
                "split fraction {fraction} is not in (0, 1)"
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let k = (self.len() as f64 * fraction) as usize;
        Ok((self.select(&idx[..k])?, self.select(&idx[k..])?))
    }

    /// Number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes()];
        for &y in &self.y {
            c[y] += 1;
        }
        c
    }
}

/// A dataset's two standard parts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTest {
    /// Training part.
    pub train: Dataset,
    /// Test part.
    pub test: Dataset,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn ds(n: usize) -> Dataset {
        let x = ArrayD::from_shape_fn(IxDyn(&[n, 2]), |ix| (ix[0] * 2 + ix[1]) as f32);
        let mut d = Dataset::new(
            x,
            (0..n).map(|i| i % 3).collect(),
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap();
        d.sensitive = Some(Sensitive {
            name: "s".into(),
            categories: vec!["u".into(), "v".into()],
            values: (0..n).map(|i| i % 2).collect(),
        });
        d
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let d = ds(10);
        let (a, b) = d.split(0.7, 3).unwrap();
        assert_eq!((a.len(), b.len()), (7, 3));
        let mut firsts: Vec<f32> =
            a.x.index_axis(Axis(1), 0)
                .iter()
                .chain(b.x.index_axis(Axis(1), 0).iter())
                .copied()
                .collect();
        firsts.sort_by(f32::total_cmp);
        assert_eq!(firsts, (0..10).map(|i| (2 * i) as f32).collect::<Vec<_>>());
        // Labels and sensitive values travel with their rows.
        for (row, (&y, &s)) in
            a.x.axis_iter(Axis(0))
                .zip(a.y.iter().zip(&a.sensitive.as_ref().unwrap().values))
        {
            let i = (row[0] / 2.0) as usize;
            assert_eq!((y, s), (i % 3, i % 2));
        }
        assert_eq!(d.split(0.7, 3).unwrap(), (a, b));
        assert!(d.split(1.0, 0).is_err());
        assert!(d.select(&[10]).is_err());
        assert_eq!(d.class_counts(), vec![4, 3, 3]);
    }

    #[test]
    fn mismatched_labels_are_rejected() {
        let x = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
        assert!(Dataset::new(x.clone(), vec![0, 1], vec!["a".into(), "b".into()]).is_err());
        assert!(Dataset::new(x, vec![0, 1, 2], vec!["a".into(), "b".into()]).is_err());
    }
}
