//! FGSM, BIM/PGD (L∞, L2) and MI-FGSM: one projected-gradient loop with early stopping.

use ndarray::{Array2, Axis, Zip};

use crate::oracle::{Batch, Found, GoalLabels, reached};
use crate::tensor::{l2, normal, pick, project_l2, project_linf, rows, sample_rng, uniform_pm1};
use crate::{AttackError, Loss, Norm, Stopping};

/// One projected-gradient run.
pub(crate) struct PgdRun {
    pub(crate) norm: Norm,
    pub(crate) eps: f32,
    pub(crate) alpha: f32,
    pub(crate) steps: u32,
    pub(crate) random_start: bool,
    pub(crate) loss: Loss,
    /// MI-FGSM momentum decay; `None` for plain PGD.
    pub(crate) momentum: Option<f32>,
}

impl PgdRun {
    /// Runs `restarts` times; each restart only on the samples no earlier run fooled.
    pub(crate) fn run(&self, b: &Batch<'_>, restarts: u32) -> Result<Found, AttackError> {
        Found::restarts(b, restarts, |sub, r| self.once(sub, r))
    }

    fn once(&self, b: &Batch<'_>, stream: u64) -> Result<Found, AttackError> {
        let o = b.oracle;
        let range = o.range;
        let mut found = Found::clean(b);
        let n = b.len();
        let mut idx: Vec<usize> = (0..n).collect();
        let mut x0 = b.x.clone();
        let mut xa = b.x.clone();
        if self.random_start {
            for (i, mut row) in xa.axis_iter_mut(Axis(0)).enumerate() {
                let mut rng = sample_rng(b.seed, b.ids[i], stream);
                match self.norm {
                    Norm::Linf => row.mapv_inplace(|v| v + self.eps * uniform_pm1(&mut rng)),
                    Norm::L2 => {
                        let mut d: Vec<f32> = (0..row.len()).map(|_| normal(&mut rng)).collect();
                        let nd = l2(ndarray::ArrayView1::from(&d[..])).max(1e-12);
                        let radius = self.eps * rand::Rng::random::<f32>(&mut rng);
                        d.iter_mut().for_each(|v| *v *= radius / nd);
                        Zip::from(&mut row).and(&d[..]).for_each(|a, &dv| *a += dv);
                    }
                }
            }
            self.project(&mut xa, &x0, range);
        }
        let mut goals = b.goals.clone();
        let mut mom = self.momentum.map(|_| Array2::<f32>::zeros(xa.dim()));
        for k in 0..=self.steps {
            let gl = GoalLabels::of(&goals);
            let (obj, sign) = gl.objective(self.loss);
            let last = k == self.steps;
            let (logits, grad) = if last {
                (o.logits(xa.view())?, None)
            } else {
                let (z, _, g) = o.value_and_grad(xa.view(), &obj)?;
                (z, Some(g))
            };
            let succ = reached(&logits, &goals);
            if b.stopping != Stopping::Fixed {
                for (r, &s) in succ.iter().enumerate() {
                    if s && !found.success[idx[r]] {
                        found.adv.row_mut(idx[r]).assign(&xa.row(r));
                        found.success[idx[r]] = true;
                    }
                }
            }
            if last {
                for (r, &i) in idx.iter().enumerate() {
                    if !found.success[i] {
                        found.adv.row_mut(i).assign(&xa.row(r));
                        found.success[i] = succ[r];
                    }
                }
                break;
            }
            let Some(mut g) = grad else { break };
            if sign < 0.0 {
                g.mapv_inplace(|v| -v);
            }
            if b.stopping == Stopping::Early && succ.iter().any(|&s| s) {
                let keep: Vec<usize> = (0..idx.len()).filter(|&r| !succ[r]).collect();
                idx = pick(&idx, &keep);
                x0 = rows(&x0, &keep);
                xa = rows(&xa, &keep);
                g = rows(&g, &keep);
                goals = pick(&goals, &keep);
                mom = mom.map(|m| rows(&m, &keep));
                if idx.is_empty() {
                    break;
                }
            }
            self.step(&mut xa, &x0, g, mom.as_mut(), range);
        }
        Ok(found)
    }

    fn project(&self, xa: &mut Array2<f32>, x0: &Array2<f32>, range: palisade_core::InputRange) {
        match self.norm {
            Norm::Linf => project_linf(xa, x0.view(), self.eps, range),
            Norm::L2 => project_l2(xa, x0.view(), self.eps, range),
        }
    }

    fn step(
        &self,
        xa: &mut Array2<f32>,
        x0: &Array2<f32>,
        mut g: Array2<f32>,
        mom: Option<&mut Array2<f32>>,
        range: palisade_core::InputRange,
    ) {
        if let (Some(m), Some(mu)) = (mom, self.momentum) {
            for (mut gr, mut mr) in g.axis_iter_mut(Axis(0)).zip(m.axis_iter_mut(Axis(0))) {
                let l1 = gr.iter().map(|v| v.abs()).sum::<f32>() / gr.len().max(1) as f32;
                let l1 = l1.max(1e-12);
                Zip::from(&mut mr)
                    .and(&gr)
                    .for_each(|m, &gv| *m = mu * *m + gv / l1);
                gr.assign(&mr);
            }
        }
        match self.norm {
            Norm::Linf => {
                Zip::from(&mut *xa)
                    .and(&g)
                    .for_each(|a, &gv| *a += self.alpha * sign(gv));
            }
            Norm::L2 => {
                for (mut a, gr) in xa.axis_iter_mut(Axis(0)).zip(g.axis_iter(Axis(0))) {
                    let n = l2(gr) + 1e-10;
                    Zip::from(&mut a)
                        .and(&gr)
                        .for_each(|a, &gv| *a += self.alpha * gv / n);
                }
            }
        }
        self.project(xa, x0, range);
    }
}

/// `sign` with `sign(0) = 0`, as torch's.
pub(crate) fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
