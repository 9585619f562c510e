//! Times the ONNX interpreter's `value_and_grad` (cross-entropy) at batch 128, next to tract's
//! and the interpreter's forward passes.
//!
//! ```sh
//! cargo run --release -p palisade-model --example onnx_vjp_throughput -- [MODEL.onnx] [BATCH] [ITERS]
//! ```
//! Default model: the bundled `models/mnist_cnn_public.onnx`.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use palisade_core::{Classifier, Objective, value_and_grad};
use palisade_model::onnx::{OnnxModel, OnnxOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx")
    });
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let iters: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let model = OnnxModel::open(&path, &OnnxOptions::default())?;
    let diff = model
        .as_differentiable()
        .ok_or("the interpreter does not support this model")?;
    let mut shape = vec![batch];
    shape.extend_from_slice(&model.info().input_shape);
    let mut rng = StdRng::seed_from_u64(0);
    let x = ArrayD::from_shape_fn(IxDyn(&shape), |_| rng.random::<f32>());
    let labels = model.predict(x.view())?;
    let obj = Objective::CrossEntropy { labels: &labels };

    let time = |name: &str, f: &mut dyn FnMut()| {
        for _ in 0..3 {
            f();
        }
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let per = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{name:<34} {:8.2} ms/batch  {:9.0} images/s",
            per * 1e3,
            batch as f64 / per
        );
    };
    println!(
        "model {} batch {batch}, {iters} iterations, {} rayon threads",
        path.display(),
        rayon_threads()
    );
    time("tract logits", &mut || {
        model.logits(x.view()).unwrap();
    });
    time("interpreter logits (Flex)", &mut || {
        model.interpreter_logits(x.view()).unwrap();
    });
    time("interpreter value_and_grad (CE)", &mut || {
        value_and_grad(diff, x.view(), &obj).unwrap();
    });
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
