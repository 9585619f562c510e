//! HopSkipJump (Chen, Jordan & Wainwright, 2020), L2, untargeted, decision-based: only the
//! predicted label is used. Follows ART's implementation; samples run in lockstep so that every
//! query round is one batched model call, and each sample has its own seeded random stream.

use ndarray::{Array1, Array2, Axis, Zip};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::oracle::{Batch, Found, Goal, argmax};
use crate::tensor::{l2, normal, sample_rng};
use crate::{AttackError, HopSkipJump};

/// Rows times evaluations per gradient-estimation call (bounds memory: ~50 MB for MNIST).
const ESTIMATE_ROWS: usize = 16_384;
/// Rounds of uniform noise tried as a starting point before other samples are.
const NOISE_TRIES: u32 = 10;
/// Halvings tried by the geometric step-size search before a step is given up.
const MAX_HALVINGS: u32 = 12;

struct Ctx<'a, 'o> {
    b: &'a Batch<'o>,
    queries: Vec<u64>,
}

impl Ctx<'_, '_> {
    /// Whether each row of `x` (belonging to samples `who`) is adversarial; counts one query each.
    fn adversarial(&mut self, x: &Array2<f32>, who: &[usize]) -> Result<Vec<bool>, AttackError> {
        let z = self.b.oracle.logits_chunked(x.view())?;
        Ok(z.axis_iter(Axis(0))
            .zip(who)
            .map(|(r, &i)| {
                self.queries[i] += 1;
                is_adv(&self.b.goals[i], argmax(r))
            })
            .collect())
    }
}

fn is_adv(g: &Goal, pred: usize) -> bool {
    match g.target {
        Some(t) => pred == t,
        None => pred != g.label,
    }
}

pub(crate) fn run(p: &HopSkipJump, b: &Batch<'_>) -> Result<Found, AttackError> {
    let o = b.oracle;
    let range = o.range;
    let n = b.len();
    let d = o.dim();
    let theta = p.gamma / (d as f32).powf(1.5);
    let bs_iters = ((1.0 / theta).log2().ceil() as u32).max(1);
    let mut rngs: Vec<ChaCha8Rng> = b.ids.iter().map(|&i| sample_rng(b.seed, i, 11)).collect();
    let mut cx = Ctx {
        b,
        queries: vec![0; n],
    };
    let mut adv = b.x.clone();
    let mut have = vec![false; n];
    // 1. A first adversarial point: uniform noise over the input range for the first
    //    NOISE_TRIES rounds, then the other samples of the batch, nearest first (noise often
    //    lands in a single class, whose own samples it can never start from).
    let mut neighbours: Vec<Vec<usize>> = Vec::new();
    for round in 0..p.init_size {
        let todo: Vec<usize> = (0..n)
            .filter(|&i| !have[i] && cx.queries[i] < u64::from(p.max_queries))
            .collect();
        if todo.is_empty() {
            break;
        }
        let mut cand = Array2::<f32>::zeros((todo.len(), d));
        let mut who = Vec::with_capacity(todo.len());
        let mut rows = Vec::with_capacity(todo.len());
        for &i in &todo {
            let k = who.len();
            if round < NOISE_TRIES {
                let rng = &mut rngs[i];
                cand.row_mut(k)
                    .mapv_inplace(|_| range.min + (range.max - range.min) * rng.random::<f32>());
            } else {
                if neighbours.is_empty() {
                    neighbours = nearest(&b.x);
                }
                let Some(&j) = neighbours[i].get((round - NOISE_TRIES) as usize) else {
                    continue;
                };
                cand.row_mut(k).assign(&b.x.row(j));
            }
            who.push(i);
            rows.push(k);
        }
        if who.is_empty() {
            break;
        }
        let cand = crate::tensor::rows(&cand, &rows);
        let ok = cx.adversarial(&cand, &who)?;
        for (k, &i) in who.iter().enumerate() {
            if ok[k] {
                adv.row_mut(i).assign(&cand.row(k));
                have[i] = true;
            }
        }
    }
    let started: Vec<usize> = (0..n).filter(|&i| have[i]).collect();
    boundary_search(&mut cx, &mut adv, &started, bs_iters, p.max_queries)?;
    let mut dist: Array1<f32> =
        Array1::from_iter((0..n).map(|i| l2((&adv.row(i) - &b.x.row(i)).view())));

    // 2. Iterations: estimate the gradient at the boundary, step along it, search back.
    for t in 1..=p.max_iter {
        let num_evals =
            ((f64::from(p.init_evals) * f64::from(t).sqrt()) as u32).clamp(1, p.max_evals.max(1));
        let cost = u64::from(num_evals) + u64::from(MAX_HALVINGS) + u64::from(bs_iters);
        let act: Vec<usize> = (0..n)
            .filter(|&i| have[i] && cx.queries[i] + cost <= u64::from(p.max_queries))
            .collect();
        if act.is_empty() {
            break;
        }
        // Probe radius: 0.1·range on the first iteration, √d·θ·dist after (ART).
        let deltas: Vec<f32> = act
            .iter()
            .map(|&i| {
                if t == 1 {
                    0.1 * (range.max - range.min)
                } else {
                    (d as f32).sqrt() * theta * dist[i]
                }
            })
            .collect();
        let per_call = (ESTIMATE_ROWS / num_evals as usize).max(1);
        let mut grads = Array2::<f32>::zeros((act.len(), d));
        for (g0, group) in act.chunks(per_call).enumerate() {
            let ne = num_evals as usize;
            let mut probes = Array2::<f32>::zeros((group.len() * ne, d));
            let mut dirs = Array2::<f32>::zeros((group.len() * ne, d));
            let mut who = Vec::with_capacity(group.len() * ne);
            for (k, &i) in group.iter().enumerate() {
                let delta = deltas[g0 * per_call + k];
                for e in 0..ne {
                    let row = k * ne + e;
                    let mut u: Vec<f32> = (0..d).map(|_| normal(&mut rngs[i])).collect();
                    let un = l2(ndarray::ArrayView1::from(&u[..])).max(1e-12);
                    u.iter_mut().for_each(|v| *v /= un);
                    let base = adv.row(i);
                    let mut pr = probes.row_mut(row);
                    let mut dr = dirs.row_mut(row);
                    for j in 0..d {
                        let v = (base[j] + delta * u[j]).clamp(range.min, range.max);
                        pr[j] = v;
                        dr[j] = (v - base[j]) / delta;
                    }
                    who.push(i);
                }
            }
            let ok = cx.adversarial(&probes, &who)?;
            for (k, _) in group.iter().enumerate() {
                let phis: Vec<f32> = (0..ne)
                    .map(|e| if ok[k * ne + e] { 1.0 } else { -1.0 })
                    .collect();
                let mean = phis.iter().sum::<f32>() / ne as f32;
                let mut g = grads.row_mut(g0 * per_call + k);
                for (e, &phi) in phis.iter().enumerate() {
                    let wgt = if mean == 1.0 || mean == -1.0 {
                        phi
                    } else {
                        phi - mean
                    };
                    Zip::from(&mut g)
                        .and(dirs.row(k * ne + e))
                        .for_each(|gv, &dv| *gv += wgt * dv / ne as f32);
                }
                let gn = l2(g.view()).max(1e-12);
                g.mapv_inplace(|v| v / gn);
            }
        }
        // Geometric step-size search: halve until the step stays adversarial.
        let mut eps: Vec<f32> = act
            .iter()
            .map(|&i| 2.0 * dist[i] / (t as f32).sqrt())
            .collect();
        let mut pending: Vec<usize> = (0..act.len()).collect();
        let mut moved = Vec::new();
        for _ in 0..MAX_HALVINGS {
            if pending.is_empty() {
                break;
            }
            let mut cand = Array2::<f32>::zeros((pending.len(), d));
            for (k, &a) in pending.iter().enumerate() {
                eps[a] /= 2.0;
                let i = act[a];
                Zip::from(cand.row_mut(k))
                    .and(adv.row(i))
                    .and(grads.row(a))
                    .for_each(|c, &x, &g| *c = (x + eps[a] * g).clamp(range.min, range.max));
            }
            let who: Vec<usize> = pending.iter().map(|&a| act[a]).collect();
            let ok = cx.adversarial(&cand, &who)?;
            let mut still = Vec::new();
            for (k, &a) in pending.iter().enumerate() {
                if ok[k] {
                    adv.row_mut(act[a]).assign(&cand.row(k));
                    moved.push(act[a]);
                } else {
                    still.push(a);
                }
            }
            pending = still;
        }
        moved.sort_unstable();
        boundary_search(&mut cx, &mut adv, &moved, bs_iters, p.max_queries)?;
        for &i in &act {
            dist[i] = l2((&adv.row(i) - &b.x.row(i)).view());
        }
    }
    Ok(Found {
        adv,
        success: have,
        queries: cx.queries,
    })
}

/// Binary search on the segment from each clean input to its adversarial point, keeping the
/// adversarial end, for `iters` rounds (so that the bracket is narrower than θ).
fn boundary_search(
    cx: &mut Ctx<'_, '_>,
    adv: &mut Array2<f32>,
    who: &[usize],
    iters: u32,
    max_queries: u32,
) -> Result<(), AttackError> {
    let who: Vec<usize> = who
        .iter()
        .copied()
        .filter(|&i| cx.queries[i] + u64::from(iters) <= u64::from(max_queries))
        .collect();
    if who.is_empty() {
        return Ok(());
    }
    let x = &cx.b.x;
    let d = x.ncols();
    let mut lo = vec![0.0f32; who.len()];
    let mut hi = vec![1.0f32; who.len()];
    for _ in 0..iters {
        let mut cand = Array2::<f32>::zeros((who.len(), d));
        for (k, &i) in who.iter().enumerate() {
            let mid = 0.5 * (lo[k] + hi[k]);
            Zip::from(cand.row_mut(k))
                .and(x.row(i))
                .and(adv.row(i))
                .for_each(|c, &x0, &a| *c = (1.0 - mid) * x0 + mid * a);
        }
        let ok = cx.adversarial(&cand, &who)?;
        for k in 0..who.len() {
            let mid = 0.5 * (lo[k] + hi[k]);
            if ok[k] {
                hi[k] = mid;
            } else {
                lo[k] = mid;
            }
        }
    }
    for (k, &i) in who.iter().enumerate() {
        let h = hi[k];
        let row: Vec<f32> = x
            .row(i)
            .iter()
            .zip(adv.row(i).iter())
            .map(|(&x0, &a)| (1.0 - h) * x0 + h * a)
            .collect();
        adv.row_mut(i).assign(&ndarray::ArrayView1::from(&row[..]));
    }
    Ok(())
}

/// For each sample, the other samples of the batch by increasing L2 distance.
fn nearest(x: &Array2<f32>) -> Vec<Vec<usize>> {
    let n = x.nrows();
    (0..n)
        .map(|i| {
            let mut d: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (l2((&x.row(i) - &x.row(j)).view()), j))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            d.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}
