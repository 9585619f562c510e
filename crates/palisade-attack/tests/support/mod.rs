//! Test models without any ML engine: a one-hidden-layer tanh MLP with exact manual backprop
//! (trained here on a synthetic image task), and a black-box wrapper.
#![allow(dead_code)]

use palisade_core::ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn};
use palisade_core::{Classifier, Differentiable, InputRange, ModelError, ModelInfo, softmax_rows};

/// `z = W2·tanh(W1·x + b1) + b2`.
#[derive(Clone)]
pub struct Mlp {
    info: ModelInfo,
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
}

/// A tiny deterministic generator (tests must not depend on rand's algorithms).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
    pub fn gauss(&mut self) -> f32 {
        let u1 = self.next_f32().max(1e-7);
        let u2 = self.next_f32();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

pub const SIDE: usize = 6;
pub const CLASSES: usize = 5;

/// A synthetic image task: `CLASSES` random prototypes in [0.2, 0.8]^(6×6), samples are
/// prototypes plus noise, clipped to [0, 1]. Returns (x `[n, 1, 6, 6]`, labels).
pub fn dataset(n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
    let d = SIDE * SIDE;
    let mut proto = Lcg::new(7);
    let protos: Vec<Vec<f32>> = (0..CLASSES)
        .map(|_| (0..d).map(|_| 0.2 + 0.6 * proto.next_f32()).collect())
        .collect();
    let mut g = Lcg::new(seed);
    let mut x = ArrayD::<f32>::zeros(IxDyn(&[n, 1, SIDE, SIDE]));
    let mut y = Vec::with_capacity(n);
    let flat = x.as_slice_mut().unwrap();
    for i in 0..n {
        let c = i % CLASSES;
        y.push(c);
        for j in 0..d {
            flat[i * d + j] = (protos[c][j] + 0.18 * g.gauss()).clamp(0.0, 1.0);
        }
    }
    (x, y)
}

impl Mlp {
    pub fn random(d: usize, hidden: usize, classes: usize, seed: u64, shape: Vec<usize>) -> Self {
        let mut g = Lcg::new(seed);
        let s1 = (1.0 / d as f32).sqrt();
        let s2 = (1.0 / hidden as f32).sqrt();
        Mlp {
            info: ModelInfo {
                name: "mlp".into(),
                input_shape: shape,
                num_classes: classes,
                input_range: InputRange::default(),
            },
            w1: Array2::from_shape_fn((hidden, d), |_| g.gauss() * s1),
            b1: Array1::zeros(hidden),
            w2: Array2::from_shape_fn((classes, hidden), |_| g.gauss() * s2),
            b2: Array1::zeros(classes),
        }
    }

    /// The MLP trained (full-batch gradient descent with momentum) on [`dataset`].
    pub fn trained() -> Self {
        let (x, y) = dataset(400, 1);
        let n = y.len();
        let xf = x.into_shape_with_order((n, SIDE * SIDE)).unwrap();
        let mut m = Mlp::random(SIDE * SIDE, 24, CLASSES, 3, vec![1, SIDE, SIDE]);
        let lr = 0.5f32;
        let mu = 0.9f32;
        let mut v = (
            Array2::<f32>::zeros(m.w1.dim()),
            Array1::<f32>::zeros(m.b1.len()),
            Array2::<f32>::zeros(m.w2.dim()),
            Array1::<f32>::zeros(m.b2.len()),
        );
        for _ in 0..300 {
            let (h, z) = m.forward(xf.view());
            let mut dz = softmax_rows(z.view());
            for (i, &c) in y.iter().enumerate() {
                dz[[i, c]] -= 1.0;
            }
            dz.mapv_inplace(|a| a / n as f32);
            let dw2 = dz.t().dot(&h);
            let db2 = dz.sum_axis(Axis(0));
            let mut da = dz.dot(&m.w2);
            da.zip_mut_with(&h, |a, &hv| *a *= 1.0 - hv * hv);
            let dw1 = da.t().dot(&xf);
            let db1 = da.sum_axis(Axis(0));
            v.0 = &v.0 * mu - &(dw1 * lr);
            v.1 = &v.1 * mu - &(db1 * lr);
            v.2 = &v.2 * mu - &(dw2 * lr);
            v.3 = &v.3 * mu - &(db2 * lr);
            m.w1 += &v.0;
            m.b1 += &v.1;
            m.w2 += &v.2;
            m.b2 += &v.3;
        }
        m
    }

    fn forward(&self, x: ArrayView2<'_, f32>) -> (Array2<f32>, Array2<f32>) {
        let h = (x.dot(&self.w1.t()) + &self.b1).mapv(f32::tanh);
        let z = h.dot(&self.w2.t()) + &self.b2;
        (h, z)
    }

    fn flat<'a>(&self, x: &'a ArrayViewD<'_, f32>) -> Result<ArrayView2<'a, f32>, ModelError> {
        let n = self.info.check_batch(x.shape())?;
        x.view()
            .into_shape_with_order((n, self.info.input_len()))
            .map_err(|e| ModelError::backend("flatten", e))
    }
}

impl Classifier for Mlp {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        Ok(self.forward(self.flat(&x)?).1)
    }
    fn as_differentiable(&self) -> Option<&dyn Differentiable> {
        Some(self)
    }
}

impl Differentiable for Mlp {
    fn vjp(
        &self,
        x: ArrayViewD<'_, f32>,
        cotangent: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
    ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError> {
        let xf = self.flat(&x)?;
        let (h, z) = self.forward(xf);
        let dz = cotangent(z.view());
        let mut da = dz.dot(&self.w2);
        da.zip_mut_with(&h, |a, &hv| *a *= 1.0 - hv * hv);
        let dx = da.dot(&self.w1);
        Ok((z, dx.into_shape_with_order(IxDyn(x.shape())).unwrap()))
    }
}

/// The same model without gradient access.
pub struct BlackBox(pub Mlp);

impl Classifier for BlackBox {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }
    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        self.0.logits(x)
    }
}
