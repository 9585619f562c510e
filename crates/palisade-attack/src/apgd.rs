//! APGD (Croce & Hein, 2020): PGD without a step-size parameter. The step starts at 2ε and is
//! halved at checkpoints when the loss oscillates or stops improving; the iterate moves with
//! momentum 0.75. Follows the reference implementation (autoattack/autopgd_base.py).

use ndarray::{Array1, Array2, Axis, Zip};

use crate::oracle::{Batch, Found, Goal, GoalLabels, reached};
use crate::pgd::sign;
use crate::tensor::{l2, normal, pick, project_l2, project_linf, rows, sample_rng, uniform_pm1};
use crate::{AttackError, Loss, Norm, Stopping};

/// One APGD configuration.
pub(crate) struct ApgdRun {
    pub(crate) norm: Norm,
    pub(crate) eps: f32,
    pub(crate) steps: u32,
    pub(crate) loss: Loss,
    pub(crate) rho: f32,
}

/// Per-sample state of the active samples.
struct State {
    idx: Vec<usize>,
    goals: Vec<Goal>,
    obj: GoalLabels,
    x0: Array2<f32>,
    xa: Array2<f32>,
    x_old: Array2<f32>,
    grad: Array2<f32>,
    x_best: Array2<f32>,
    grad_best: Array2<f32>,
    loss_best: Array1<f32>,
    loss_best_last_check: Array1<f32>,
    reduced_last_check: Vec<bool>,
    step: Vec<f32>,
    history: Vec<Vec<f32>>,
}

impl State {
    fn retain(&mut self, keep: &[usize]) {
        self.idx = pick(&self.idx, keep);
        self.goals = pick(&self.goals, keep);
        self.obj = GoalLabels {
            labels: pick(&self.obj.labels, keep),
            targets: self.obj.targets.as_ref().map(|t| pick(t, keep)),
        };
        for a in [
            &mut self.x0,
            &mut self.xa,
            &mut self.x_old,
            &mut self.grad,
            &mut self.x_best,
            &mut self.grad_best,
        ] {
            *a = rows(a, keep);
        }
        self.loss_best = self.loss_best.select(Axis(0), keep);
        self.loss_best_last_check = self.loss_best_last_check.select(Axis(0), keep);
        self.reduced_last_check = pick(&self.reduced_last_check, keep);
        self.step = pick(&self.step, keep);
        self.history = pick(&self.history, keep);
    }
}

impl ApgdRun {
    /// Untargeted APGD with `restarts` runs (each on the survivors).
    pub(crate) fn run(&self, b: &Batch<'_>, restarts: u32) -> Result<Found, AttackError> {
        Found::restarts(b, restarts, |sub, r| {
            let labels = sub.goals.iter().map(|g| g.label).collect();
            self.once(
                sub,
                GoalLabels {
                    labels,
                    targets: None,
                },
                r,
            )
        })
    }

    /// APGD-T: targeted DLR towards the most likely wrong classes in turn; success is any
    /// misclassification.
    pub(crate) fn run_targeted(
        &self,
        b: &Batch<'_>,
        target_classes: u32,
    ) -> Result<Found, AttackError> {
        let o = b.oracle;
        let mut found = Found::clean(b);
        let clean = o.logits(b.x.view())?;
        let order: Vec<Vec<usize>> = clean
            .axis_iter(Axis(0))
            .map(|r| {
                let mut ix: Vec<usize> = (0..r.len()).collect();
                ix.sort_by(|&a, &c| r[c].total_cmp(&r[a]));
                ix
            })
            .collect();
        let n_targets = (target_classes as usize).min(o.classes.saturating_sub(1));
        for t in 0..n_targets {
            let todo = found.survivors();
            if todo.is_empty() {
                break;
            }
            let sub = b.subset(&todo);
            let labels: Vec<usize> = sub.goals.iter().map(|g| g.label).collect();
            // The (t+1)-th most likely class other than the label.
            let targets = todo
                .iter()
                .zip(&labels)
                .map(|(&i, &y)| {
                    order[i]
                        .iter()
                        .copied()
                        .filter(|&c| c != y)
                        .nth(t)
                        .unwrap_or(y)
                })
                .collect();
            let f = self.once(
                &sub,
                GoalLabels {
                    labels,
                    targets: Some(targets),
                },
                100 + t as u64,
            )?;
            found.merge(&todo, f, true);
        }
        Ok(found)
    }

    fn project(&self, a: &mut Array2<f32>, x0: &Array2<f32>, range: palisade_core::InputRange) {
        match self.norm {
            Norm::Linf => project_linf(a, x0.view(), self.eps, range),
            Norm::L2 => project_l2(a, x0.view(), self.eps, range),
        }
    }

    fn once(&self, b: &Batch<'_>, obj: GoalLabels, stream: u64) -> Result<Found, AttackError> {
        let o = b.oracle;
        let range = o.range;
        let n = b.len();
        let mut found = Found::clean(b);
        let n_iter = self.steps as usize;
        let n_iter_2 = ((0.22 * n_iter as f64) as usize).max(1);
        let n_iter_min = ((0.06 * n_iter as f64) as usize).max(1);
        let size_decr = ((0.03 * n_iter as f64) as usize).max(1);

        let mut xa = b.x.clone();
        for (i, mut row) in xa.axis_iter_mut(Axis(0)).enumerate() {
            let mut rng = sample_rng(b.seed, b.ids[i], stream);
            let t: Vec<f32> = match self.norm {
                Norm::Linf => (0..row.len()).map(|_| uniform_pm1(&mut rng)).collect(),
                Norm::L2 => (0..row.len()).map(|_| normal(&mut rng)).collect(),
            };
            let scale = match self.norm {
                Norm::Linf => t.iter().fold(0.0f32, |m, v| m.max(v.abs())),
                Norm::L2 => l2(ndarray::ArrayView1::from(&t[..])),
            }
            .max(1e-12);
            Zip::from(&mut row)
                .and(&t[..])
                .for_each(|a, &tv| *a += self.eps * tv / scale);
        }
        self.project(&mut xa, &b.x, range);

        let (obj_f, sgn) = obj.objective(self.loss);
        let (z, l, mut g) = o.value_and_grad(xa.view(), &obj_f)?;
        let l = l.mapv(|v| v * sgn);
        if sgn < 0.0 {
            g.mapv_inplace(|v| -v);
        }
        let mut st = State {
            idx: (0..n).collect(),
            goals: b.goals.clone(),
            obj,
            x0: b.x.clone(),
            x_old: xa.clone(),
            x_best: xa.clone(),
            xa,
            grad_best: g.clone(),
            grad: g,
            loss_best_last_check: l.clone(),
            loss_best: l,
            // As the reference (`zeros == zeros`): no "no improvement" halving at the first checkpoint.
            reduced_last_check: vec![true; n],
            step: vec![2.0 * self.eps; n],
            history: vec![Vec::with_capacity(n_iter); n],
        };
        self.record(&mut st, &mut found, &z, b.stopping);

        let mut k = n_iter_2;
        let mut counter3 = 0usize;
        for i in 0..n_iter {
            if st.idx.is_empty() {
                break;
            }
            let a = if i > 0 { 0.75f32 } else { 1.0 };
            let grad2 = &st.xa - &st.x_old;
            st.x_old.assign(&st.xa);
            let mut x1 = st.xa.clone();
            match self.norm {
                Norm::Linf => {
                    for (r, (mut row, gr)) in x1
                        .axis_iter_mut(Axis(0))
                        .zip(st.grad.axis_iter(Axis(0)))
                        .enumerate()
                    {
                        let s = st.step[r];
                        Zip::from(&mut row)
                            .and(&gr)
                            .for_each(|x, &gv| *x += s * sign(gv));
                    }
                }
                Norm::L2 => {
                    for (r, (mut row, gr)) in x1
                        .axis_iter_mut(Axis(0))
                        .zip(st.grad.axis_iter(Axis(0)))
                        .enumerate()
                    {
                        let s = st.step[r] / (l2(gr) + 1e-12);
                        Zip::from(&mut row).and(&gr).for_each(|x, &gv| *x += s * gv);
                    }
                }
            }
            self.project(&mut x1, &st.x0, range);
            Zip::from(&mut x1)
                .and(&st.xa)
                .and(&grad2)
                .for_each(|x1, &xa, &g2| *x1 = xa + (*x1 - xa) * a + g2 * (1.0 - a));
            self.project(&mut x1, &st.x0, range);
            st.xa = x1;

            let (obj_f, sgn) = st.obj.objective(self.loss);
            let (z, l, mut g) = o.value_and_grad(st.xa.view(), &obj_f)?;
            if sgn < 0.0 {
                g.mapv_inplace(|v| -v);
            }
            st.grad = g;
            for r in 0..st.idx.len() {
                let lv = l[r] * sgn;
                st.history[r].push(lv);
                if lv > st.loss_best[r] {
                    st.x_best.row_mut(r).assign(&st.xa.row(r));
                    st.grad_best.row_mut(r).assign(&st.grad.row(r));
                    st.loss_best[r] = lv;
                }
            }
            self.record(&mut st, &mut found, &z, b.stopping);
            counter3 += 1;
            if counter3 == k {
                for r in 0..st.idx.len() {
                    let h = &st.history[r];
                    let mut ups = 0usize;
                    for c in 0..k {
                        let j = i as isize - c as isize;
                        let cur = if j >= 0 { h[j as usize] } else { 0.0 };
                        let prev = if j >= 1 { h[j as usize - 1] } else { 0.0 };
                        if cur > prev {
                            ups += 1;
                        }
                    }
                    let osc = (ups as f32) <= k as f32 * self.rho;
                    let no_impr =
                        !st.reduced_last_check[r] && st.loss_best_last_check[r] >= st.loss_best[r];
                    let reduce = osc || no_impr;
                    st.reduced_last_check[r] = reduce;
                    st.loss_best_last_check[r] = st.loss_best[r];
                    if reduce {
                        st.step[r] /= 2.0;
                        let xb = st.x_best.row(r).to_owned();
                        st.xa.row_mut(r).assign(&xb);
                        let gb = st.grad_best.row(r).to_owned();
                        st.grad.row_mut(r).assign(&gb);
                    }
                }
                k = k.saturating_sub(size_decr).max(n_iter_min);
                counter3 = 0;
            }
        }
        for (r, &i) in st.idx.iter().enumerate() {
            if !found.success[i] {
                found.adv.row_mut(i).assign(&st.x_best.row(r));
            }
        }
        Ok(found)
    }

    /// Keeps the first success of each sample; drops it from the active set when stopping early.
    /// `z` are the logits of the current iterate `xa`.
    fn record(&self, st: &mut State, found: &mut Found, z: &Array2<f32>, stopping: Stopping) {
        let succ = reached(z, &st.goals);
        if !succ.iter().any(|&s| s) {
            return;
        }
        for (r, &s) in succ.iter().enumerate() {
            if s && !found.success[st.idx[r]] {
                found.success[st.idx[r]] = true;
                found.adv.row_mut(st.idx[r]).assign(&st.xa.row(r));
            }
        }
        if stopping == Stopping::Early {
            let keep: Vec<usize> = (0..st.idx.len()).filter(|&r| !succ[r]).collect();
            st.retain(&keep);
        }
    }
}
