//! Objectives over logits, with their exact derivatives.
//!
//! Backends only differentiate the network; every objective an attack maximises or minimises is
//! written here once, over the logits `[N, C]`.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::ModelError;

/// An objective over logits; attacks choose whether to ascend or descend it.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Cross-entropy `logsumexp(z) − z_y` of each sample.
    CrossEntropy {
        /// Class `y` of each sample.
        labels: &'a [usize],
    },
    /// The Carlini–Wagner margin `z_y − max_{j≠y} z_j` (positive while `y` wins).
    Margin {
        /// Class `y` of each sample.
        labels: &'a [usize],
    },
    /// Croce & Hein's difference of logits ratio, `−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)`,
    /// with `π` the logits sorted in decreasing order. Needs at least 3 classes.
    Dlr {
        /// Class `y` of each sample.
        labels: &'a [usize],
    },
    /// Targeted DLR, `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`. Needs at least 4 classes.
    TargetedDlr {
        /// Class `y` of each sample.
        labels: &'a [usize],
        /// Target class `t` of each sample.
        targets: &'a [usize],
    },
    /// A single logit of each sample, `z_c`.
    Logit {
        /// Class `c` of each sample.
        classes: &'a [usize],
    },
    /// `Σ_j w_j z_j` per sample: any linear functional of the logits.
    Weighted(ArrayView2<'a, f32>),
}

const DLR_EPS: f32 = 1e-12;

impl Objective<'_> {
    /// Checks the objective against a batch of `n` samples and `classes` classes.
    pub fn check(&self, n: usize, classes: usize) -> Result<(), ModelError> {
        let check_labels = |name: &str, l: &[usize]| -> Result<(), ModelError> {
            if l.len() != n {
                return Err(ModelError::Labels(format!(
                    "{} {name} for a batch of {n}",
                    l.len()
                )));
            }
            if let Some(bad) = l.iter().find(|&&c| c >= classes) {
                return Err(ModelError::Labels(format!(
                    "{name} {bad} out of range for {classes} classes"
                )));
            }
            Ok(())
        };
        match self {
            Objective::CrossEntropy { labels } | Objective::Margin { labels } => {
                check_labels("labels", labels)
            }
            Objective::Dlr { labels } => {
                if classes < 3 {
                    return Err(ModelError::Labels("DLR needs at least 3 classes".into()));
                }
                check_labels("labels", labels)
            }
            Objective::TargetedDlr { labels, targets } => {
                if classes < 4 {
                    return Err(ModelError::Labels(
                        "targeted DLR needs at least 4 classes".into(),
                    ));
                }
                check_labels("labels", labels)?;
                check_labels("targets", targets)
            }
            Objective::Logit { classes: c } => check_labels("classes", c),
            Objective::Weighted(w) => {
                if w.dim() != (n, classes) {
                    return Err(ModelError::Labels(format!(
                        "weights of shape {:?} for logits [{n}, {classes}]",
                        w.shape()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Per-sample values and `∂value/∂logits`. Call [`Objective::check`] first.
    pub fn value_and_dlogits(&self, z: ArrayView2<'_, f32>) -> (Array1<f32>, Array2<f32>) {
        let (n, c) = z.dim();
        let mut value = Array1::<f32>::zeros(n);
        let mut d = Array2::<f32>::zeros((n, c));
        for (i, row) in z.axis_iter(Axis(0)).enumerate() {
            let mut drow = d.row_mut(i);
            match self {
                Objective::CrossEntropy { labels } => {
                    let y = labels[i];
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
                    let lse = m + s.ln();
                    value[i] = lse - row[y];
                    for j in 0..c {
                        drow[j] = (row[j] - lse).exp();
                    }
                    drow[y] -= 1.0;
                }
                Objective::Margin { labels } => {
                    let y = labels[i];
                    let m = best_other(&row, y);
                    value[i] = row[y] - row[m];
                    drow[y] += 1.0;
                    drow[m] -= 1.0;
                }
                Objective::Dlr { labels } => {
                    let y = labels[i];
                    let m = best_other(&row, y);
                    let order = sorted_desc(&row);
                    let (p1, p3) = (order[0], order[2]);
                    let num = row[y] - row[m];
                    let den = row[p1] - row[p3] + DLR_EPS;
                    value[i] = -num / den;
                    drow[y] -= 1.0 / den;
                    drow[m] += 1.0 / den;
                    drow[p1] += num / (den * den);
                    drow[p3] -= num / (den * den);
                }
                Objective::TargetedDlr { labels, targets } => {
                    let (y, t) = (labels[i], targets[i]);
                    let order = sorted_desc(&row);
                    let (p1, p3, p4) = (order[0], order[2], order[3]);
                    let num = row[y] - row[t];
                    let den = row[p1] - 0.5 * (row[p3] + row[p4]) + DLR_EPS;
                    value[i] = -num / den;
                    drow[y] -= 1.0 / den;
                    drow[t] += 1.0 / den;
                    let k = num / (den * den);
                    drow[p1] += k;
                    drow[p3] -= 0.5 * k;
                    drow[p4] -= 0.5 * k;
                }
                Objective::Logit { classes } => {
                    value[i] = row[classes[i]];
                    drow[classes[i]] = 1.0;
                }
                Objective::Weighted(w) => {
                    let wr = w.row(i);
                    value[i] = wr.dot(&row);
                    drow.assign(&wr);
                }
            }
        }
        (value, d)
    }
}

/// Index of the largest logit other than `y`.
fn best_other(row: &ndarray::ArrayView1<'_, f32>, y: usize) -> usize {
    let mut best = usize::MAX;
    for (j, &v) in row.iter().enumerate() {
        if j != y && (best == usize::MAX || v > row[best]) {
            best = j;
        }
    }
    best
}

/// Class indices sorted by decreasing logit (stable).
fn sorted_desc(row: &ndarray::ArrayView1<'_, f32>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Central finite differences of each objective's value agree with its analytic derivative.
    fn check_fd(obj: Objective<'_>, z: Array2<f32>) {
        let (_, d) = obj.value_and_dlogits(z.view());
        let h = 1e-3f32;
        for i in 0..z.nrows() {
            for j in 0..z.ncols() {
                let mut zp = z.clone();
                zp[[i, j]] += h;
                let mut zm = z.clone();
                zm[[i, j]] -= h;
                let fd = (obj.value_and_dlogits(zp.view()).0[i]
                    - obj.value_and_dlogits(zm.view()).0[i])
                    / (2.0 * h);
                assert!(
                    (fd - d[[i, j]]).abs() < 2e-2 * (1.0 + fd.abs()),
                    "{obj:?} [{i},{j}]: fd {fd} vs analytic {}",
                    d[[i, j]]
                );
            }
        }
    }

    fn logits() -> Array2<f32> {
        array![
            [2.0, -1.0, 0.5, 0.1, 3.0],
            [0.3, 0.2, -0.4, 1.7, -2.0],
            [-1.0, 4.0, 2.5, 0.0, 1.1]
        ]
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let labels = [0, 3, 2];
        let targets = [1, 0, 4];
        check_fd(Objective::CrossEntropy { labels: &labels }, logits());
        check_fd(Objective::Margin { labels: &labels }, logits());
        check_fd(Objective::Dlr { labels: &labels }, logits());
        check_fd(
            Objective::TargetedDlr {
                labels: &labels,
                targets: &targets,
            },
            logits(),
        );
        check_fd(Objective::Logit { classes: &targets }, logits());
        let w = logits().mapv(|v| v * 0.1);
        check_fd(Objective::Weighted(w.view()), logits());
    }

    #[test]
    fn known_values() {
        let z = array![[0.0f32, 0.0], [1.0, 3.0]];
        let (ce, _) = Objective::CrossEntropy { labels: &[0, 1] }.value_and_dlogits(z.view());
        assert!((ce[0] - 2f32.ln()).abs() < 1e-6);
        assert!((ce[1] - (1.0 + (-2f32).exp()).ln()).abs() < 1e-6);
        let (m, _) = Objective::Margin { labels: &[0, 0] }.value_and_dlogits(z.view());
        assert_eq!(m.to_vec(), vec![0.0, -2.0]);
    }

    #[test]
    fn check_rejects_bad_labels() {
        assert!(
            Objective::CrossEntropy { labels: &[0, 7] }
                .check(2, 5)
                .is_err()
        );
        assert!(
            Objective::CrossEntropy { labels: &[0] }
                .check(2, 5)
                .is_err()
        );
        assert!(Objective::Dlr { labels: &[0, 1] }.check(2, 2).is_err());
    }
}
