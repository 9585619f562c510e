//! Row-wise helpers over flat batches `[N, D]`: norms, projections, clipping, seeded noise.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};
use palisade_core::InputRange;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// L2 norm of a vector (accumulated in f64).
pub(crate) fn l2(r: ArrayView1<'_, f32>) -> f32 {
    r.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt() as f32
}

/// L∞ norm of a vector.
pub(crate) fn linf(r: ArrayView1<'_, f32>) -> f32 {
    r.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Projects `adv` onto the L∞ ball of radius `eps` around `x`, intersected with the range.
pub(crate) fn project_linf(
    adv: &mut Array2<f32>,
    x: ArrayView2<'_, f32>,
    eps: f32,
    range: InputRange,
) {
    ndarray::Zip::from(adv).and(x).for_each(|a, &x0| {
        *a = a.clamp(x0 - eps, x0 + eps).clamp(range.min, range.max);
    });
}

/// Projects `adv` onto the L2 ball of radius `eps` around `x` (radial scaling), then clips to
/// the range (which only shortens the perturbation).
pub(crate) fn project_l2(
    adv: &mut Array2<f32>,
    x: ArrayView2<'_, f32>,
    eps: f32,
    range: InputRange,
) {
    for (mut a, x0) in adv.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
        project_l2_row(a.view_mut(), x0, eps, range);
    }
}

/// [`project_l2`] for one sample.
pub(crate) fn project_l2_row(
    mut a: ArrayViewMut1<'_, f32>,
    x0: ArrayView1<'_, f32>,
    eps: f32,
    range: InputRange,
) {
    let mut d = &a - &x0;
    let n = l2(d.view());
    if n > eps && n > 0.0 {
        // A hair inside the ball so that rounding never leaves it.
        let f = eps / n * (1.0 - 1e-7);
        d.mapv_inplace(|v| v * f);
    }
    ndarray::Zip::from(&mut a)
        .and(&x0)
        .and(&d)
        .for_each(|a, &x, &d| *a = (x + d).clamp(range.min, range.max));
}

/// Selects rows by index (owned, standard layout).
pub(crate) fn rows(a: &Array2<f32>, keep: &[usize]) -> Array2<f32> {
    a.select(Axis(0), keep)
}

/// Selects entries by index.
pub(crate) fn pick<T: Clone>(v: &[T], keep: &[usize]) -> Vec<T> {
    keep.iter().map(|&i| v[i].clone()).collect()
}

/// A reproducible random stream for one sample of one run: the same seed, sample id and stream
/// give the same numbers whatever the batch size, thread count or early stopping.
pub(crate) fn sample_rng(seed: u64, sample: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(splitmix(seed ^ splitmix(sample.wrapping_add(0x9e37))));
    r.set_stream(stream);
    r
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// A uniform draw in `[-1, 1)`.
pub(crate) fn uniform_pm1(rng: &mut ChaCha8Rng) -> f32 {
    rng.random::<f32>() * 2.0 - 1.0
}

/// `+1` or `-1` with equal probability.
pub(crate) fn rademacher(rng: &mut ChaCha8Rng) -> f32 {
    if rng.random::<bool>() { 1.0 } else { -1.0 }
}

/// Median of a slice (NaN-free); `None` when empty.
pub(crate) fn median(v: &[f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    })
}
