//! Carlini & Wagner's L2 attack: Adam on `w` with `x' = lo + (tanh(w)+1)/2·(hi−lo)`, minimising
//! `‖x'−x‖² + c·max(margin, −κ)`, with a per-sample binary search over `c`.

use ndarray::{Array1, Array2, Axis, Zip};
use palisade_core::Objective;

use crate::oracle::{Batch, Found, Goal};
use crate::tensor::{pick, rows};
use crate::{AttackError, CwL2};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;

pub(crate) fn run(p: &CwL2, b: &Batch<'_>) -> Result<Found, AttackError> {
    let o = b.oracle;
    let (lo, hi) = (o.range.min, o.range.max);
    let span = hi - lo;
    let n = b.len();
    let mut found = Found::clean(b);
    let mut best_l2 = vec![f32::INFINITY; n];
    let mut c = vec![p.c; n];
    let mut lower = vec![0.0f32; n];
    let mut upper = vec![1e10f32; n];
    let w0 =
        b.x.mapv(|v| ((((v - lo) / span) * 2.0 - 1.0).clamp(-1.0, 1.0) * 0.999_999).atanh());
    let check_every = (p.steps / 10).max(1);
    for _ in 0..p.binary_search_steps.max(1) {
        let mut idx: Vec<usize> = (0..n).collect();
        let mut x0 = b.x.clone();
        let mut w = w0.clone();
        let mut m = Array2::<f32>::zeros(w.dim());
        let mut v = Array2::<f32>::zeros(w.dim());
        let mut goals: Vec<Goal> = b.goals.clone();
        let mut cs = c.clone();
        let mut prev = vec![1e10f32; n];
        let mut round_success = vec![false; n];
        for step in 0..p.steps {
            if idx.is_empty() {
                break;
            }
            let t = w.mapv(f32::tanh);
            let adv = t.mapv(|tv| lo + (tv + 1.0) * 0.5 * span);
            let targeted = goals.first().is_some_and(|g| g.target.is_some());
            let cls: Vec<usize> = goals.iter().map(|g| g.target.unwrap_or(g.label)).collect();
            let (z, margin, g) =
                o.value_and_grad(adv.view(), &Objective::Margin { labels: &cls })?;
            // f = max(margin, −κ) untargeted; max(−margin_t, −κ) targeted.
            let s = if targeted { -1.0f32 } else { 1.0 };
            let diff = &adv - &x0;
            let l2sq: Array1<f32> = diff.map_axis(Axis(1), |r| r.iter().map(|d| d * d).sum());
            let mut cost = vec![0.0f32; idx.len()];
            let mut grad = diff.mapv(|d| 2.0 * d);
            for r in 0..idx.len() {
                let f = s * margin[r];
                let active = f > -p.kappa;
                cost[r] = l2sq[r] + cs[r] * f.max(-p.kappa);
                if active {
                    let k = cs[r] * s;
                    Zip::from(grad.row_mut(r))
                        .and(g.row(r))
                        .for_each(|a, &gv| *a += k * gv);
                }
                if goals[r].reached(z.row(r)) {
                    let i = idx[r];
                    round_success[i] = true;
                    if l2sq[r] < best_l2[i] {
                        best_l2[i] = l2sq[r];
                        found.adv.row_mut(i).assign(&adv.row(r));
                        found.success[i] = true;
                    }
                }
            }
            // Chain rule through the tanh box, then one Adam step.
            Zip::from(&mut grad)
                .and(&t)
                .for_each(|gv, &tv| *gv *= (1.0 - tv * tv) * 0.5 * span);
            let k = step as i32 + 1;
            let bc1 = 1.0 - BETA1.powi(k);
            let bc2 = 1.0 - BETA2.powi(k);
            Zip::from(&mut w)
                .and(&mut m)
                .and(&mut v)
                .and(&grad)
                .for_each(|w, m, v, &gv| {
                    *m = BETA1 * *m + (1.0 - BETA1) * gv;
                    *v = BETA2 * *v + (1.0 - BETA2) * gv * gv;
                    *w -= p.lr * (*m / bc1) / ((*v / bc2).sqrt() + ADAM_EPS);
                });
            if p.abort_early && step % check_every == 0 {
                let keep: Vec<usize> = (0..idx.len()).filter(|&r| cost[r] <= prev[r]).collect();
                prev.copy_from_slice(&cost);
                if keep.len() < idx.len() {
                    idx = pick(&idx, &keep);
                    x0 = rows(&x0, &keep);
                    w = rows(&w, &keep);
                    m = rows(&m, &keep);
                    v = rows(&v, &keep);
                    goals = pick(&goals, &keep);
                    cs = pick(&cs, &keep);
                    prev = pick(&prev, &keep);
                }
            }
        }
        for i in 0..n {
            if round_success[i] {
                upper[i] = upper[i].min(c[i]);
                if upper[i] < 1e9 {
                    c[i] = 0.5 * (lower[i] + upper[i]);
                }
            } else {
                lower[i] = lower[i].max(c[i]);
                c[i] = if upper[i] < 1e9 {
                    0.5 * (lower[i] + upper[i])
                } else {
                    c[i] * 10.0
                };
            }
        }
    }
    Ok(found)
}
