//! The model as the attacks see it: flat batches `[N, D]` in, logits and gradients out, with the
//! work counted.

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, IxDyn};
use palisade_core::{Classifier, Differentiable, InputRange, Objective, value_and_grad};

use crate::{AttackError, Loss};

/// Largest number of rows sent to the model in one call by query-heavy attacks.
pub(crate) const MAX_QUERY_ROWS: usize = 1024;

/// Logits `[N, C]`, per-sample objective `[N]`, input gradient `[N, D]`.
pub(crate) type LossGrad = (Array2<f32>, Array1<f32>, Array2<f32>);

/// A classifier seen through flat batches.
pub(crate) struct Oracle<'a> {
    model: &'a dyn Classifier,
    grad_model: Option<&'a dyn Differentiable>,
    shape: Vec<usize>,
    pub(crate) range: InputRange,
    pub(crate) classes: usize,
    forwards: AtomicU64,
    gradients: AtomicU64,
}

impl<'a> Oracle<'a> {
    pub(crate) fn new(model: &'a dyn Classifier) -> Self {
        let info = model.info();
        Oracle {
            model,
            grad_model: model.as_differentiable(),
            shape: info.input_shape.clone(),
            range: info.input_range,
            classes: info.num_classes,
            forwards: AtomicU64::new(0),
            gradients: AtomicU64::new(0),
        }
    }

    /// Per-sample shape.
    pub(crate) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Features per sample.
    pub(crate) fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Samples evaluated forward only, and forward+backward.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.forwards.load(Ordering::Relaxed),
            self.gradients.load(Ordering::Relaxed),
        )
    }

    fn full_shape(&self, n: usize) -> Vec<usize> {
        let mut s = Vec::with_capacity(self.shape.len() + 1);
        s.push(n);
        s.extend_from_slice(&self.shape);
        s
    }

    /// Logits of a batch.
    pub(crate) fn logits(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>, AttackError> {
        let n = x.nrows();
        if n == 0 {
            return Ok(Array2::zeros((0, self.classes)));
        }
        let x = x.as_standard_layout();
        let v = x
            .view()
            .into_shape_with_order(IxDyn(&self.full_shape(n)))
            .map_err(|e| AttackError::param("input", e.to_string()))?;
        let z = self.model.logits(v)?;
        self.forwards.fetch_add(n as u64, Ordering::Relaxed);
        if z.dim() != (n, self.classes) {
            return Err(AttackError::Labels(format!(
                "the model returned logits {:?} for a batch of {n} and {} classes",
                z.shape(),
                self.classes
            )));
        }
        Ok(z)
    }

    /// Logits of a large batch, in calls of at most [`MAX_QUERY_ROWS`] rows.
    pub(crate) fn logits_chunked(
        &self,
        x: ArrayView2<'_, f32>,
    ) -> Result<Array2<f32>, AttackError> {
        self.logits_in(x, MAX_QUERY_ROWS)
    }

    /// Logits of a batch, in calls of at most `rows` rows.
    pub(crate) fn logits_in(
        &self,
        x: ArrayView2<'_, f32>,
        rows: usize,
    ) -> Result<Array2<f32>, AttackError> {
        let n = x.nrows();
        if n <= rows {
            return self.logits(x);
        }
        let mut out = Array2::zeros((n, self.classes));
        let mut i = 0;
        while i < n {
            let j = (i + rows).min(n);
            let z = self.logits(x.slice_axis(Axis(0), ndarray::Slice::from(i..j)))?;
            out.slice_axis_mut(Axis(0), ndarray::Slice::from(i..j))
                .assign(&z);
            i = j;
        }
        Ok(out)
    }

    /// Logits, per-sample objective and input gradient (rows are per sample).
    pub(crate) fn value_and_grad(
        &self,
        x: ArrayView2<'_, f32>,
        objective: &Objective<'_>,
    ) -> Result<LossGrad, AttackError> {
        let n = x.nrows();
        let d = x.ncols();
        if n == 0 {
            return Ok((
                Array2::zeros((0, self.classes)),
                Array1::zeros(0),
                Array2::zeros((0, d)),
            ));
        }
        let gm = self
            .grad_model
            .ok_or_else(|| AttackError::NotDifferentiable {
                attack: "gradient".into(),
                model: self.model.info().name.clone(),
            })?;
        let x = x.as_standard_layout();
        let v = x
            .view()
            .into_shape_with_order(IxDyn(&self.full_shape(n)))
            .map_err(|e| AttackError::param("input", e.to_string()))?;
        let vg = value_and_grad(gm, v, objective)?;
        self.gradients.fetch_add(n as u64, Ordering::Relaxed);
        let grad = vg
            .grad
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((n, d))
            .map_err(|e| AttackError::param("gradient", e.to_string()))?;
        Ok((vg.logits, vg.loss, grad))
    }
}

/// What counts as success for one sample: leaving `label`, or reaching `target`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    pub(crate) label: usize,
    pub(crate) target: Option<usize>,
}

impl Goal {
    pub(crate) fn reached(&self, logits: ArrayView1<'_, f32>) -> bool {
        let p = argmax(logits);
        match self.target {
            Some(t) => p == t,
            None => p != self.label,
        }
    }
}

/// Index of the largest value (first on ties).
pub(crate) fn argmax(r: ArrayView1<'_, f32>) -> usize {
    let mut best = 0;
    for (j, &v) in r.iter().enumerate() {
        if v > r[best] {
            best = j;
        }
    }
    best
}

/// Success of each row of a logits batch.
pub(crate) fn reached(logits: &Array2<f32>, goals: &[Goal]) -> Vec<bool> {
    logits
        .axis_iter(Axis(0))
        .zip(goals)
        .map(|(r, g)| g.reached(r))
        .collect()
}

/// Labels and targets of a set of goals, for building objectives.
pub(crate) struct GoalLabels {
    pub(crate) labels: Vec<usize>,
    pub(crate) targets: Option<Vec<usize>>,
}

impl GoalLabels {
    pub(crate) fn of(goals: &[Goal]) -> Self {
        let targeted = goals.first().is_some_and(|g| g.target.is_some());
        GoalLabels {
            labels: goals.iter().map(|g| g.label).collect(),
            targets: targeted.then(|| goals.iter().map(|g| g.target.unwrap_or(g.label)).collect()),
        }
    }

    /// The objective for `loss` and the sign that turns it into something to ascend.
    pub(crate) fn objective(&self, loss: Loss) -> (Objective<'_>, f32) {
        match (loss, &self.targets) {
            (Loss::Ce, None) => (
                Objective::CrossEntropy {
                    labels: &self.labels,
                },
                1.0,
            ),
            (Loss::Ce, Some(t)) => (Objective::CrossEntropy { labels: t }, -1.0),
            (Loss::Cw, None) => (
                Objective::Margin {
                    labels: &self.labels,
                },
                -1.0,
            ),
            (Loss::Cw, Some(t)) => (Objective::Margin { labels: t }, 1.0),
            (Loss::Dlr, None) => (
                Objective::Dlr {
                    labels: &self.labels,
                },
                1.0,
            ),
            (Loss::Dlr, Some(t)) => (
                Objective::TargetedDlr {
                    labels: &self.labels,
                    targets: t,
                },
                1.0,
            ),
        }
    }
}

/// A batch of samples handed to one attack: clean inputs, goals, ids for seeded randomness.
pub(crate) struct Batch<'o> {
    pub(crate) oracle: &'o Oracle<'o>,
    pub(crate) x: Array2<f32>,
    pub(crate) goals: Vec<Goal>,
    pub(crate) ids: Vec<u64>,
    pub(crate) seed: u64,
    pub(crate) stopping: crate::Stopping,
}

impl Batch<'_> {
    pub(crate) fn len(&self) -> usize {
        self.x.nrows()
    }

    /// The sub-batch of the given rows.
    pub(crate) fn subset(&self, keep: &[usize]) -> Self {
        Batch {
            oracle: self.oracle,
            x: crate::tensor::rows(&self.x, keep),
            goals: crate::tensor::pick(&self.goals, keep),
            ids: crate::tensor::pick(&self.ids, keep),
            seed: self.seed,
            stopping: self.stopping,
        }
    }
}

/// What an attack returns for a batch: the examples, whether each reached its goal, and the
/// model queries each one cost.
pub(crate) struct Found {
    pub(crate) adv: Array2<f32>,
    pub(crate) success: Vec<bool>,
    pub(crate) queries: Vec<u64>,
}

impl Found {
    /// Starts from the clean inputs, nothing found yet.
    pub(crate) fn clean(b: &Batch<'_>) -> Self {
        Found {
            adv: b.x.clone(),
            success: vec![false; b.len()],
            queries: vec![0; b.len()],
        }
    }

    /// Merges the result of an attack run on the rows `rows` of this batch: successes replace,
    /// failures replace only when `replace_failures` (the final iterate of the last run).
    pub(crate) fn merge(&mut self, rows: &[usize], other: Found, replace_failures: bool) {
        for (k, &i) in rows.iter().enumerate() {
            self.queries[i] += other.queries[k];
            if other.success[k] || (replace_failures && !self.success[i]) {
                self.adv.row_mut(i).assign(&other.adv.row(k));
                self.success[i] |= other.success[k];
            }
        }
    }

    /// Runs `once(sub_batch, run_index)` up to `runs` times, each time only on the samples no
    /// earlier run fooled; the last run's final iterate is kept for the others.
    pub(crate) fn restarts(
        b: &Batch<'_>,
        runs: u32,
        mut once: impl FnMut(&Batch<'_>, u64) -> Result<Found, AttackError>,
    ) -> Result<Found, AttackError> {
        let mut found = Found::clean(b);
        for r in 0..runs.max(1) {
            let todo = found.survivors();
            if todo.is_empty() {
                break;
            }
            let f = once(&b.subset(&todo), u64::from(r))?;
            found.merge(&todo, f, true);
        }
        Ok(found)
    }

    /// Rows not yet successful.
    pub(crate) fn survivors(&self) -> Vec<usize> {
        (0..self.success.len())
            .filter(|&i| !self.success[i])
            .collect()
    }
}
