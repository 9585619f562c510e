//! Output hardening: what leaves the model leaves only in the form the policy allows.
//!
//! The infer service never writes a body; it puts the raw logits on the response as a
//! [`Prediction`]. This guard turns them into the revealed scores (logits, probabilities or the
//! label alone), adds Laplace or Gaussian noise, rounds, keeps the top k, and only then encodes
//! the OIP response. Raw logits therefore cannot reach a client around the policy.
//!
//! Order: scores → noise → (label: argmax) → rounding → top-k.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use ndarray::{Array2, Axis};
use std::time::Instant;

use super::{Decision, Guard, Next, Prediction, call_next, error_response, off_worker_if};
use crate::model::ServedModel;
use crate::oip::{self, OutputData, OutputTensor};
use crate::policy::{NoiseKind, OutputPolicy, Reveal};
use crate::stats::Served;

/// Outputs up to this many values are hardened and encoded on the async worker; larger ones on a
/// blocking thread.
const INLINE_VALUES: usize = 4096;

/// The output-hardening guard.
#[derive(Debug, Clone, Default)]
pub struct Harden;

fn laplace(rng: &mut impl rand::Rng, b: f32) -> f32 {
    // Inverse CDF; u in (-1/2, 1/2).
    let u: f64 = rng.random::<f64>() - 0.5;
    let u = u.clamp(-0.5 + 1e-12, 0.5 - 1e-12);
    (-(b as f64) * u.signum() * (1.0 - 2.0 * u.abs()).ln()) as f32
}

fn gaussian(rng: &mut impl rand::Rng, sigma: f32) -> f32 {
    // Box–Muller.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * sigma as f64) as f32
}

/// `v` to `decimals` places; a value that rounds to zero is `+0.0`, whatever its sign (a `-0.0`
/// would tell the client which side of zero the hidden score fell, 2026-12-06 review).
fn round_to(v: f32, decimals: u32) -> f32 {
    let f = 10f64.powi(decimals as i32);
    ((v as f64 * f).round() / f) as f32 + 0.0
}

/// Applies `policy` to logits `[N, C]`, giving the output tensors a client may see.
pub fn harden(
    model: &ServedModel,
    policy: &OutputPolicy,
    logits: &Array2<f32>,
) -> Vec<OutputTensor> {
    let n = logits.nrows();
    let mut scores = match policy.reveal {
        Reveal::Probabilities => palisade_core::softmax_rows(logits.view()),
        Reveal::Logits | Reveal::Label => logits.clone(),
    };
    if let Some(noise) = policy.noise
        && noise.scale > 0.0
    {
        let mut rng = rand::rng();
        scores.mapv_inplace(|v| {
            v + match noise.kind {
                NoiseKind::Laplace => laplace(&mut rng, noise.scale),
                NoiseKind::Gaussian => gaussian(&mut rng, noise.scale),
            }
        });
    }
    if policy.reveal == Reveal::Label {
        let labels = palisade_core::argmax_rows(scores.view());
        return vec![OutputTensor {
            name: "label".into(),
            shape: vec![n],
            data: OutputData::I64(labels.into_iter().map(|l| l as i64).collect()),
        }];
    }
    if let Some(d) = policy.round {
        scores.mapv_inplace(|v| round_to(v, d));
    }
    match policy.top_k {
        None => vec![OutputTensor {
            name: model.output_name.clone(),
            shape: vec![n, scores.ncols()],
            data: OutputData::F32(scores.iter().copied().collect()),
        }],
        Some(k) => {
            let k = k.min(scores.ncols());
            let mut vals = Vec::with_capacity(n * k);
            let mut idx = Vec::with_capacity(n * k);
            for row in scores.axis_iter(Axis(0)) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                for &j in &order[..k] {
                    vals.push(row[j]);
                    idx.push(j as i64);
                }
            }
            vec![
                OutputTensor {
                    name: model.output_name.clone(),
                    shape: vec![n, k],
                    data: OutputData::F32(vals),
                },
                OutputTensor {
                    name: model.classes_output_name(),
                    shape: vec![n, k],
                    data: OutputData::I64(idx),
                },
            ]
        }
    }
}

impl Guard for Harden {
    async fn handle(self, req: Request, next: Next) -> Response {
        let mut resp = call_next(next, req).await;
        let Some(pred) = resp.extensions_mut().remove::<Prediction>() else {
            return resp;
        };
        let heavy = pred.logits.len() > INLINE_VALUES;
        let started = Instant::now();
        let (queued_at, queue, infer, rows) =
            (pred.queued_at, pred.queue, pred.infer, pred.logits.nrows());
        let encode = move || {
            let v = &pred.validated;
            let tensors = harden(&v.model, &v.model.policy.output, &pred.logits);
            oip::encode_response(&v.model.name, &v.model.version, &v.request, &tensors)
                .map_err(|e| e.to_string())
        };
        // A large batch's scores take milliseconds to harden and encode: on a blocking thread,
        // not on the async worker that every connection shares.
        let enc = match off_worker_if(heavy, "response encoding", encode).await {
            Ok(Ok(e)) => e,
            Err(r) => return r,
            Ok(Err(e)) => {
                let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, &e);
                r.extensions_mut().insert(Decision::Error);
                return r;
            }
        };
        let (mut parts, _) = resp.into_parts();
        let ct = if enc.header_len.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        };
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        if let Some(h) = enc.header_len
            && let Ok(v) = HeaderValue::from_str(&h.to_string())
        {
            parts.headers.insert(oip::HEADER_LENGTH, v);
        }
        parts.extensions.insert(Decision::Allowed);
        let encoded_at = Instant::now();
        parts.extensions.insert(Served {
            rows,
            queued_at,
            encoded_at,
            queue,
            infer,
            output: encoded_at - started,
        });
        Response::from_parts(parts, Body::from(enc.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Noise, Policy};
    use palisade_core::{InputRange, LinearClassifier};
    use std::sync::Arc;

    fn model(policy: Policy) -> ServedModel {
        let c = LinearClassifier::new(
            "t",
            vec![2],
            InputRange::default(),
            Array2::zeros((4, 2)),
            ndarray::Array1::zeros(4),
        )
        .unwrap();
        ServedModel {
            name: "t".into(),
            version: "1".into(),
            classifier: Arc::new(c),
            policy,
            input_name: "x".into(),
            output_name: "y".into(),
            platform: "test".into(),
            stats: Default::default(),
        }
    }

    #[test]
    fn top_k_round_label_probabilities() {
        let logits = ndarray::array![[0.1234f32, 3.0, -1.0, 2.5], [5.0, 0.0, 0.0, 0.0]];
        let mut p = Policy::default();
        p.output.top_k = Some(2);
        p.output.round = Some(1);
        let m = model(p.clone());
        let t = harden(&m, &p.output, &logits);
        assert_eq!(t[0].data, OutputData::F32(vec![3.0, 2.5, 5.0, 0.0]));
        assert_eq!(t[1].data, OutputData::I64(vec![1, 3, 0, 1]));
        assert_eq!(t[1].name, "y_classes");

        p.output = OutputPolicy {
            reveal: Reveal::Label,
            ..Default::default()
        };
        let t = harden(&m, &p.output, &logits);
        assert_eq!(t[0].data, OutputData::I64(vec![1, 0]));

        p.output.reveal = Reveal::Probabilities;
        let t = harden(&m, &p.output, &logits);
        let OutputData::F32(v) = &t[0].data else {
            panic!()
        };
        assert!((v[..4].iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_score_rounded_to_zero_carries_no_sign() {
        let logits = ndarray::array![[-0.0001f32, 0.0001, -0.004, -2.0]];
        let mut p = Policy::default();
        p.output.round = Some(2);
        let t = harden(&model(p.clone()), &p.output, &logits);
        let OutputData::F32(v) = &t[0].data else {
            panic!()
        };
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, [0.0f32, 0.0, 0.0, -2.0].map(f32::to_bits), "{v:?}");
    }

    #[test]
    fn noise_has_the_right_scale() {
        let logits = Array2::<f32>::zeros((2000, 10));
        for (kind, scale, var) in [
            (NoiseKind::Laplace, 0.5f32, 2.0 * 0.25),
            (NoiseKind::Gaussian, 0.5f32, 0.25),
        ] {
            let mut p = Policy::default();
            p.output.noise = Some(Noise { kind, scale });
            let m = model(p.clone());
            let t = harden(&m, &p.output, &logits);
            let OutputData::F32(v) = &t[0].data else {
                panic!()
            };
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let var_hat =
                v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
            assert!(mean.abs() < 0.05, "{kind:?} mean {mean}");
            assert!(
                (var_hat - var).abs() < 0.1 * var,
                "{kind:?} var {var_hat} vs {var}"
            );
        }
    }
}
