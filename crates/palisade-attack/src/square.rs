//! Square attack (Andriushchenko et al., 2020): score-based random search with square-shaped
//! updates whose size shrinks on a fixed schedule. Follows autoattack/square.py; every sample
//! has its own seeded random stream and window positions, so batching changes nothing.

use ndarray::{Array1, Array2, Axis};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::oracle::{Batch, Found, Goal};
use crate::tensor::{rademacher, sample_rng};
use crate::{AttackError, Norm, Square};

/// Shape of one sample as (channels, height, width).
fn chw(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [c, h, w] => (*c, *h, *w),
        [h, w] => (1, *h, *w),
        [w] => (1, 1, *w),
        other => (1, 1, other.iter().product()),
    }
}

/// Whether Square L2 can run on samples of this shape (it needs images of at least 5×5).
pub(crate) fn l2_shape_ok(shape: &[usize]) -> bool {
    matches!(shape.len(), 2 | 3) && {
        let (_, h, w) = chw(shape);
        h >= 5 && w >= 5
    }
}

fn p_selection(p_init: f32, it: u32, n_iters: u32) -> f32 {
    let it = (f64::from(it) / f64::from(n_iters.max(1)) * 10000.0) as u32;
    let div = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        _ => 512.0,
    };
    p_init / div
}

/// `z_y − max_{j≠y} z_j` of each row (positive while the label wins).
fn margins(z: &Array2<f32>, goals: &[Goal]) -> Array1<f32> {
    Array1::from_iter(z.axis_iter(Axis(0)).zip(goals).map(|(r, g)| {
        let other = r
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != g.label)
            .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
        r[g.label] - other
    }))
}

pub(crate) fn run(p: &Square, b: &Batch<'_>) -> Result<Found, AttackError> {
    let o = b.oracle;
    let range = o.range;
    let (c, h, w) = chw(o.shape());
    let d = c * h * w;
    let n = b.len();
    let eps = p.eps;
    let mut rngs: Vec<ChaCha8Rng> = b.ids.iter().map(|&i| sample_rng(b.seed, i, 7)).collect();
    let mut found = Found::clean(b);
    // Initialisation: vertical stripes (L∞) or a grid of pseudo-Gaussian squares (L2).
    let mut best = b.x.clone();
    for (i, mut row) in best.axis_iter_mut(Axis(0)).enumerate() {
        let rng = &mut rngs[i];
        match p.norm {
            Norm::Linf => {
                for ch in 0..c {
                    for col in 0..w {
                        let v = eps * rademacher(rng);
                        for r in 0..h {
                            row[(ch * h + r) * w + col] += v;
                        }
                    }
                }
            }
            Norm::L2 => {
                let mut delta = vec![0.0f32; d];
                let sq = h / 5;
                let sp = (h - sq * 5) / 2;
                let mut vh = sp;
                for _ in 0..h / sq {
                    let mut vw = sp;
                    for _ in 0..w / sq {
                        let pert = meta_pseudo_gaussian(sq, rng);
                        for ch in 0..c {
                            let sgn = rademacher(rng);
                            update_window(&mut delta, (c, h, w), (ch, vh, vw, sq), |v, k| {
                                v + sgn * pert[k]
                            });
                        }
                        vw += sq;
                    }
                    vh += sq;
                }
                let nd = norm2(&delta) + 1e-12;
                for (a, dv) in row.iter_mut().zip(&delta) {
                    *a += eps * dv / nd;
                }
            }
        }
        row.mapv_inplace(|v| v.clamp(range.min, range.max));
    }
    let z = o.logits(best.view())?;
    let mut margin = margins(&z, &b.goals);
    let mut loss = margin.clone();
    for q in &mut found.queries {
        *q = 1;
    }
    let budget = p.queries.max(1);
    for it in 0..budget - 1 {
        let act: Vec<usize> = (0..n).filter(|&i| margin[i] > 0.0).collect();
        if act.is_empty() {
            break;
        }
        let pr = p_selection(p.p_init, it, budget);
        let mut cand = Array2::<f32>::zeros((act.len(), d));
        for (k, &i) in act.iter().enumerate() {
            let rng = &mut rngs[i];
            let x0 = b.x.row(i);
            let xb = best.row(i);
            let mut row = cand.row_mut(k);
            match p.norm {
                Norm::Linf => {
                    let (sh, sw) = if h == 1 {
                        (1, ((pr * d as f32 / c as f32).round() as usize).clamp(1, w))
                    } else {
                        let sz =
                            ((pr * d as f32 / c as f32).sqrt().round() as usize).clamp(1, h.min(w));
                        (sz, sz)
                    };
                    let vh = rng.random_range(0..=h - sh);
                    let vw = rng.random_range(0..=w - sw);
                    row.assign(&xb);
                    for ch in 0..c {
                        let v = 2.0 * eps * rademacher(rng);
                        for r in vh..vh + sh {
                            for col in vw..vw + sw {
                                let j = (ch * h + r) * w + col;
                                row[j] = (row[j] + v)
                                    .clamp(x0[j] - eps, x0[j] + eps)
                                    .clamp(range.min, range.max);
                            }
                        }
                    }
                }
                Norm::L2 => {
                    let mut sz = ((pr * d as f32 / c as f32).sqrt().round() as usize).max(3);
                    if sz.is_multiple_of(2) {
                        sz += 1;
                    }
                    let sz = sz.min(h.min(w));
                    let mut delta: Vec<f32> =
                        xb.iter().zip(x0.iter()).map(|(a, b)| a - b).collect();
                    let vh = rng.random_range(0..=h - sz);
                    let vw = rng.random_range(0..=w - sz);
                    let vh2 = rng.random_range(0..=h - sz);
                    let vw2 = rng.random_range(0..=w - sz);
                    let norm_image = norm2(&delta);
                    // Norm of the perturbation under the union of both windows.
                    let mut under = 0.0f64;
                    for ch in 0..c {
                        for r in 0..h {
                            for col in 0..w {
                                let in1 =
                                    (vh..vh + sz).contains(&r) && (vw..vw + sz).contains(&col);
                                let in2 =
                                    (vh2..vh2 + sz).contains(&r) && (vw2..vw2 + sz).contains(&col);
                                if in1 || in2 {
                                    let v = f64::from(delta[(ch * h + r) * w + col]);
                                    under += v * v;
                                }
                            }
                        }
                    }
                    let norm_windows = under.sqrt() as f32;
                    let pert = meta_pseudo_gaussian(sz, rng);
                    let mut news = Vec::with_capacity(c);
                    for ch in 0..c {
                        let sgn = rademacher(rng);
                        let old: Vec<f32> = window(&delta, (c, h, w), ch, vh, vw, sz);
                        let on = norm2(&old) + 1e-12;
                        let mut nd: Vec<f32> = pert
                            .iter()
                            .zip(&old)
                            .map(|(p, o)| p * sgn + o / on)
                            .collect();
                        let nn = norm2(&nd).max(1e-12);
                        let target = ((eps * eps - norm_image * norm_image).max(0.0) / c as f32
                            + norm_windows * norm_windows)
                            .sqrt();
                        nd.iter_mut().for_each(|v| *v = *v / nn * target);
                        news.push(nd);
                    }
                    for ch in 0..c {
                        update_window(&mut delta, (c, h, w), (ch, vh2, vw2, sz), |_, _| 0.0);
                    }
                    for (ch, nd) in news.iter().enumerate() {
                        update_window(&mut delta, (c, h, w), (ch, vh, vw, sz), |_, k| nd[k]);
                    }
                    let dn = norm2(&delta) + 1e-12;
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (x0[j] + eps * delta[j] / dn).clamp(range.min, range.max);
                    }
                }
            }
        }
        let goals: Vec<Goal> = act.iter().map(|&i| b.goals[i]).collect();
        let z = o.logits(cand.view())?;
        let m = margins(&z, &goals);
        for (k, &i) in act.iter().enumerate() {
            found.queries[i] += 1;
            if m[k] < loss[i] || m[k] <= 0.0 {
                loss[i] = m[k].min(loss[i]);
                margin[i] = m[k];
                best.row_mut(i).assign(&cand.row(k));
            }
        }
    }
    for i in 0..n {
        found.adv.row_mut(i).assign(&best.row(i));
        found.success[i] = margin[i] <= 0.0 && b.goals[i].target.is_none();
    }
    Ok(found)
}

fn norm2(v: &[f32]) -> f32 {
    v.iter()
        .map(|&a| f64::from(a) * f64::from(a))
        .sum::<f64>()
        .sqrt() as f32
}

fn window(
    delta: &[f32],
    (_, h, w): (usize, usize, usize),
    ch: usize,
    vh: usize,
    vw: usize,
    s: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(s * s);
    for r in vh..vh + s {
        for col in vw..vw + s {
            out.push(delta[(ch * h + r) * w + col]);
        }
    }
    out
}

/// Applies `f(old, k)` to each value of the `s × s` window at (`vh`, `vw`) of channel `ch`, `k`
/// the row-major index inside the window.
fn update_window(
    delta: &mut [f32],
    (_, h, w): (usize, usize, usize),
    (ch, vh, vw, s): (usize, usize, usize, usize),
    f: impl Fn(f32, usize) -> f32,
) {
    for (k, r) in (vh..vh + s).enumerate() {
        for (l, col) in (vw..vw + s).enumerate() {
            let j = (ch * h + r) * w + col;
            delta[j] = f(delta[j], k * s + l);
        }
    }
}

/// A `x × y` block of centred rings with weights 1/(k+1)², L2-normalised (row-major).
fn pseudo_gaussian_rect(x: usize, y: usize) -> Vec<f32> {
    let mut delta = vec![0.0f32; x * y];
    let (xc, yc) = (x / 2 + 1, y / 2 + 1);
    let (mut c0, mut c1) = (xc as isize - 1, yc as isize - 1);
    for counter in 0..xc.max(yc) {
        let r0 = c0.max(0) as usize;
        let r1 = ((c0 + 2 * counter as isize + 1).min(x as isize)).max(0) as usize;
        let q0 = c1.max(0) as usize;
        let q1 = ((c1 + 2 * counter as isize + 1).min(y as isize)).max(0) as usize;
        let v = 1.0 / ((counter + 1) * (counter + 1)) as f32;
        for r in r0..r1 {
            for q in q0..q1 {
                delta[r * y + q] += v;
            }
        }
        c0 -= 1;
        c1 -= 1;
    }
    let n = norm2(&delta).max(1e-12);
    delta.iter_mut().for_each(|v| *v /= n);
    delta
}

/// Two pseudo-Gaussian halves of opposite sign, normalised, randomly transposed.
fn meta_pseudo_gaussian(s: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let top = s / 2;
    let mut delta = vec![0.0f32; s * s];
    if top > 0 {
        let a = pseudo_gaussian_rect(top, s);
        delta[..top * s].copy_from_slice(&a);
    }
    let b = pseudo_gaussian_rect(s - top, s);
    for (k, v) in b.iter().enumerate() {
        delta[top * s + k] = -v;
    }
    let n = norm2(&delta).max(1e-12);
    delta.iter_mut().for_each(|v| *v /= n);
    if rng.random::<f32>() > 0.5 {
        let mut t = vec![0.0f32; s * s];
        for r in 0..s {
            for q in 0..s {
                t[q * s + r] = delta[r * s + q];
            }
        }
        delta = t;
    }
    delta
}
