//! Times the native MNIST CNN's training step (forward, cross-entropy, backward, Adam update)
//! and input-gradient step (forward + backward to the input, inference mode) at batch 128.
//!
//! `cargo run --release -p palisade-model --example train_step_bench -- [iters]`; threads come
//! from `RAYON_NUM_THREADS`, the backend from `PALISADE_DEVICE` (see `native::device`).
//! Prints one JSON line (milliseconds, median over `iters`). Used by `bench/train_bench.sh`.

use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use palisade_core::{Objective, value_and_grad};
use palisade_model::native::{Arch, TrainConfig, Trainer, default_meta, device_name};
use rand::{Rng, SeedableRng};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let batch = 128;
    let arch = Arch::mnist_cnn(0.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x: Vec<f32> = (0..batch * 784).map(|_| rng.random::<f32>()).collect();
    let y: Vec<usize> = (0..batch).map(|i| i % 10).collect();

    let mut trainer = Trainer::new(&arch, &TrainConfig::default())?;
    for _ in 0..3 {
        trainer.step(x.clone(), &y, 1e-3)?;
    }
    let mut train_ms = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        trainer.step(x.clone(), &y, 1e-3)?;
        train_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let model = trainer.snapshot(default_meta("bench", 10, Default::default()))?;
    let xa = ArrayD::from_shape_vec(IxDyn(&[batch, 1, 28, 28]), x)?;
    let obj = Objective::CrossEntropy { labels: &y };
    for _ in 0..3 {
        value_and_grad(&model, xa.view(), &obj)?;
    }
    let mut grad_ms = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        value_and_grad(&model, xa.view(), &obj)?;
        grad_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{{\"backend\": \"{}\", \"batch\": {batch}, \"iters\": {iters}, \"train_step_ms\": {:.3}, \"input_grad_ms\": {:.3}}}",
        device_name(),
        median(train_ms),
        median(grad_ms)
    );
    Ok(())
}
