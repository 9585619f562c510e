//! `palisade model check`: can white-box attacks trust this model's gradients?
//!
//! Three measurements on a few random inputs drawn uniformly from the declared input range:
//! 1. the interpreter's logits against tract's (max absolute difference);
//! 2. the interpreter's input gradient of a random linear functional of the logits against
//!    central finite differences of tract's logits, on a random subset of coordinates per
//!    sample (cosine and relative error);
//! 3. whether the interpreter supports the graph at all.
//!
//! The model is trusted when all three pass the thresholds of [`CheckOptions`].

use std::path::Path;

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use palisade_core::{Classifier, Objective, value_and_grad};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::onnx::{OnnxError, OnnxModel, OnnxOptions, OnnxSummary, inspect};

/// Settings of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Random inputs to test.
    pub samples: usize,
    /// Coordinates per input whose finite difference is computed.
    pub coords: usize,
    /// Finite-difference step, as a fraction of the input range's width.
    pub step: f32,
    /// Seed of the random inputs, functionals and coordinates.
    pub seed: u64,
    /// Largest accepted |interpreter − tract| logit difference, relative to max(1, max |logit|).
    pub logits_tolerance: f32,
    /// Smallest accepted per-input cosine between the gradient and finite differences.
    pub min_cosine: f32,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            samples: 4,
            coords: 256,
            step: 1e-2,
            seed: 0,
            logits_tolerance: 1e-3,
            min_cosine: 0.99,
        }
    }
}

/// Interpreter versus tract on the same inputs.
#[derive(Debug, Clone, Serialize)]
pub struct LogitsComparison {
    /// Inputs compared.
    pub samples: usize,
    /// Largest |interpreter − tract| over all logits.
    pub max_abs_diff: f32,
    /// Largest |logit| (tract), the scale of the difference.
    pub max_abs_logit: f32,
}

/// Analytic gradient versus central finite differences.
#[derive(Debug, Clone, Serialize)]
pub struct GradientComparison {
    /// Inputs compared.
    pub samples: usize,
    /// Coordinates per input.
    pub coords: usize,
    /// Absolute finite-difference step.
    pub step: f32,
    /// Smallest per-input cosine.
    pub cosine_min: f32,
    /// Mean per-input cosine.
    pub cosine_mean: f32,
    /// Largest per-input relative error ‖g − fd‖ / ‖fd‖.
    pub rel_error_max: f32,
}

/// The outcome of `model check`; serialised as its `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The file checked.
    pub model: String,
    /// What the file declares.
    pub summary: OnnxSummary,
    /// Why the file cannot be used as a classifier at all, if it cannot.
    pub classifier_error: Option<String>,
    /// Why the interpreter cannot differentiate the graph, if it cannot.
    pub interpreter_error: Option<String>,
    /// Per-sample input shape, when the model opened as a classifier.
    pub input_shape: Option<Vec<usize>>,
    /// Number of classes, when the model opened as a classifier.
    pub num_classes: Option<usize>,
    /// Logits comparison, when both runtimes ran.
    pub logits: Option<LogitsComparison>,
    /// Gradient comparison, when the interpreter ran.
    pub gradients: Option<GradientComparison>,
    /// Whether white-box attacks can trust the gradients.
    pub trusted: bool,
    /// Why not, one line each (empty when trusted).
    pub reasons: Vec<String>,
}

/// Checks an ONNX model file. `Err` only when the file cannot be read as ONNX at all; a model
/// that opens but fails a check gives a report with `trusted: false`.
pub fn check_onnx(
    path: &Path,
    onnx: &OnnxOptions,
    opts: &CheckOptions,
) -> Result<CheckReport, OnnxError> {
    let summary = inspect(path)?;
    let mut report = CheckReport {
        model: path.display().to_string(),
        summary,
        classifier_error: None,
        interpreter_error: None,
        input_shape: None,
        num_classes: None,
        logits: None,
        gradients: None,
        trusted: false,
        reasons: Vec::new(),
    };
    if !report.summary.unsupported_ops.is_empty() {
        let list: Vec<String> = report
            .summary
            .unsupported_ops
            .iter()
            .map(|(op, node)| format!("{op} (first at node '{node}')"))
            .collect();
        report.reasons.push(format!(
            "operators the interpreter does not support: {}",
            list.join(", ")
        ));
    }
    let model = match OnnxModel::open(path, onnx) {
        Ok(m) => m,
        Err(e @ (OnnxError::Io { .. } | OnnxError::Decode(_) | OnnxError::TooLarge { .. })) => {
            return Err(e);
        }
        Err(e) => {
            report
                .reasons
                .push(format!("cannot be used as a classifier: {e}"));
            report.classifier_error = Some(e.to_string());
            return Ok(report);
        }
    };
    report.input_shape = Some(model.info().input_shape.clone());
    report.num_classes = Some(model.info().num_classes);
    if let Err(e) = model.interpreter_status() {
        report.interpreter_error = Some(e.to_string());
        if !matches!(e, OnnxError::UnsupportedOp { .. }) {
            report.reasons.push(format!("interpreter: {e}"));
        }
        return Ok(report);
    }
    match measure(&model, opts) {
        Ok((l, g)) => {
            let scale = l.max_abs_logit.max(1.0);
            if l.max_abs_diff.is_nan() || l.max_abs_diff > opts.logits_tolerance * scale {
                report.reasons.push(format!(
                    "interpreter logits differ from tract's by {:.3e} (tolerance {:.1e})",
                    l.max_abs_diff,
                    opts.logits_tolerance * scale
                ));
            }
            if g.cosine_min.is_nan() || g.cosine_min < opts.min_cosine {
                report.reasons.push(format!(
                    "gradient cosine with finite differences {:.5} < {}",
                    g.cosine_min, opts.min_cosine
                ));
            }
            report.logits = Some(l);
            report.gradients = Some(g);
        }
        Err(e) => report
            .reasons
            .push(format!("running the check failed: {e}")),
    }
    report.trusted = report.reasons.is_empty();
    Ok(report)
}

/// Runs the logits and gradient comparisons.
pub fn measure(
    model: &OnnxModel,
    opts: &CheckOptions,
) -> Result<(LogitsComparison, GradientComparison), palisade_core::ModelError> {
    let info = model.info().clone();
    let k = opts.samples.max(1);
    let d = info.input_len();
    let c = info.num_classes;
    let range = info.input_range;
    let width = range.max - range.min;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut shape = vec![k];
    shape.extend_from_slice(&info.input_shape);
    let x = ArrayD::from_shape_fn(IxDyn(&shape), |_| range.min + width * rng.random::<f32>());

    // 1. Logits: interpreter against tract.
    let tl = model.logits(x.view())?;
    let il = model.interpreter_logits(x.view())?;
    let max_abs_diff =
        (&tl - &il).iter().fold(
            0.0f32,
            |m, v| if v.is_nan() { f32::NAN } else { m.max(v.abs()) },
        );
    let max_abs_logit = tl.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let logits = LogitsComparison {
        samples: k,
        max_abs_diff,
        max_abs_logit,
    };

    // 2. Gradient of Σ w·logits against central differences of tract's logits.
    let w = Array2::from_shape_fn((k, c), |_| rng.random::<f32>() * 2.0 - 1.0);
    let grad = value_and_grad(model, x.view(), &Objective::Weighted(w.view()))?.grad;
    let grad = grad
        .into_shape_with_order((k, d))
        .map_err(|e| palisade_core::ModelError::backend("gradient", e))?;
    let xf = x
        .into_shape_with_order((k, d))
        .map_err(|e| palisade_core::ModelError::backend("input", e))?;
    let h = opts.step * if width > 0.0 { width } else { 1.0 };
    let m = opts.coords.clamp(1, d);
    let mut cosines = Vec::with_capacity(k);
    let mut rel_max = 0.0f32;
    for i in 0..k {
        let coords = sample(&mut rng, d, m).into_vec();
        let mut batch = Array2::<f32>::zeros((2 * m, d));
        for (j, &cj) in coords.iter().enumerate() {
            let mut plus = batch.row_mut(2 * j);
            plus.assign(&xf.row(i));
            plus[cj] += h;
            let mut minus = batch.row_mut(2 * j + 1);
            minus.assign(&xf.row(i));
            minus[cj] -= h;
        }
        let mut fd = Vec::with_capacity(m);
        let wi = w.row(i);
        for chunk in batch.axis_chunks_iter(Axis(0), 256) {
            let mut cs = vec![chunk.nrows()];
            cs.extend_from_slice(&info.input_shape);
            let xb = chunk
                .to_owned()
                .into_shape_with_order(IxDyn(&cs))
                .map_err(|e| palisade_core::ModelError::backend("batch", e))?;
            let z = model.logits(xb.view())?;
            for pair in z.axis_chunks_iter(Axis(0), 2) {
                let fp: f64 = pair
                    .row(0)
                    .iter()
                    .zip(wi)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let fm: f64 = pair
                    .row(1)
                    .iter()
                    .zip(wi)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                fd.push(((fp - fm) / (2.0 * h as f64)) as f32);
            }
        }
        let g: Vec<f32> = coords.iter().map(|&cj| grad[[i, cj]]).collect();
        let (cos, rel) = cosine_rel(&g, &fd);
        cosines.push(cos);
        rel_max = if rel.is_nan() {
            f32::NAN
        } else {
            rel_max.max(rel)
        };
    }
    let cosine_min = cosines
        .iter()
        .fold(1.0f32, |a, &b| if b.is_nan() { f32::NAN } else { a.min(b) });
    let cosine_mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    Ok((
        logits,
        GradientComparison {
            samples: k,
            coords: m,
            step: h,
            cosine_min,
            cosine_mean,
            rel_error_max: rel_max,
        },
    ))
}

/// Cosine of two vectors and the relative error ‖a − b‖ / ‖b‖ (both 1 and 0 when the two are
/// zero).
pub fn cosine_rel(a: &[f32], b: &[f32]) -> (f32, f32) {
    let (mut ab, mut aa, mut bb, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
        dd += (x - y) * (x - y);
    }
    if aa == 0.0 && bb == 0.0 {
        return (1.0, 0.0);
    }
    let cos = ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE);
    let rel = dd.sqrt() / bb.sqrt().max(f64::MIN_POSITIVE);
    (cos as f32, rel as f32)
}
