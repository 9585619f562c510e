//! Robust accuracy over a sweep of budgets: one curve per attack.
//!
//! Budgeted attacks (FGSM, PGD, APGD, Square, AutoAttack) run once per ε. A minimal-perturbation
//! attack (C&W, DeepFool, HopSkipJump) runs once; its curve is read off the per-sample L2 norms
//! (a sample counts as broken at ε when the attack fooled it within ε).

use std::time::Instant;

use ndarray::ArrayViewD;
use palisade_core::Classifier;
use serde::{Deserialize, Serialize};

use crate::{AttackError, AttackSpec, Norm, RunOptions, run_attack};

/// One point of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Budget, in input units.
    pub eps: f32,
    /// Accuracy under the attack at this budget.
    pub robust_accuracy: f32,
    /// Median L2 of the fooled samples (0 when none).
    pub median_l2: f32,
    /// Seconds spent on this point (0 for points read off a minimal-perturbation run).
    pub seconds: f64,
}

/// Robust accuracy of one attack against ε.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Attack name.
    pub attack: String,
    /// Norm of ε.
    pub norm: Norm,
    /// Parameters (ε of the template is replaced at each point).
    pub parameters: AttackSpec,
    /// Points in increasing ε.
    pub points: Vec<CurvePoint>,
}

/// The JSON of `palisade robustness`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessReport {
    /// Model name.
    pub model: String,
    /// Number of samples.
    pub samples: usize,
    /// Clean accuracy.
    pub clean_accuracy: f32,
    /// Run options (seed, batch size, labels, stopping).
    pub options: RunOptions,
    /// One curve per attack.
    pub curves: Vec<Curve>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs every `(attack, budgets)` pair against true `labels` and collects the curves.
/// `progress` is called after each completed run with (done, total).
pub fn robustness(
    model: &dyn Classifier,
    x: ArrayViewD<'_, f32>,
    labels: &[usize],
    suite: &[(AttackSpec, Vec<f32>)],
    opts: &RunOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<RobustnessReport, AttackError> {
    let start = Instant::now();
    let total: usize = suite
        .iter()
        .map(|(s, e)| {
            if s.eps().is_some() {
                e.iter().filter(|&&v| v > 0.0).count()
            } else {
                1
            }
        })
        .sum();
    let mut done = 0;
    let mut clean_accuracy = None;
    let mut curves = Vec::with_capacity(suite.len());
    for (spec, budgets) in suite {
        let mut eps: Vec<f32> = budgets.clone();
        if let Some(bad) = eps.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(AttackError::param(
                "eps",
                format!("sweep budgets must be finite and ≥ 0, got {bad}"),
            ));
        }
        eps.sort_by(f32::total_cmp);
        eps.dedup();
        let mut points = Vec::with_capacity(eps.len());
        if spec.eps().is_some() {
            for &e in &eps {
                if e == 0.0 {
                    let acc = match clean_accuracy {
                        Some(a) => a,
                        None => clean(model, x.view(), labels, opts)?,
                    };
                    clean_accuracy = Some(acc);
                    points.push(CurvePoint {
                        eps: 0.0,
                        robust_accuracy: acc,
                        median_l2: 0.0,
                        seconds: 0.0,
                    });
                    continue;
                }
                let out = run_attack(model, x.view(), Some(labels), &spec.with_eps(e), opts)?;
                clean_accuracy = out.report.clean_accuracy.or(clean_accuracy);
                points.push(CurvePoint {
                    eps: e,
                    robust_accuracy: out.report.robust_accuracy.unwrap_or(0.0),
                    median_l2: out.report.perturbation.l2.median,
                    seconds: out.report.seconds,
                });
                done += 1;
                progress(done, total);
            }
        } else {
            let out = run_attack(model, x.view(), Some(labels), spec, opts)?;
            clean_accuracy = out.report.clean_accuracy.or(clean_accuracy);
            for &e in &eps {
                let correct = out
                    .samples
                    .iter()
                    .filter(|s| {
                        s.true_label == Some(s.clean_prediction)
                            && !(s.success && s.attacked && s.l2 <= e)
                    })
                    .count();
                let within: Vec<f32> = out
                    .samples
                    .iter()
                    .filter(|s| s.success && s.attacked && s.l2 <= e)
                    .map(|s| s.l2)
                    .collect();
                points.push(CurvePoint {
                    eps: e,
                    robust_accuracy: correct as f32 / labels.len() as f32,
                    median_l2: crate::tensor::median(&within).unwrap_or(0.0),
                    seconds: 0.0,
                });
            }
            done += 1;
            progress(done, total);
        }
        curves.push(Curve {
            attack: spec.name().into(),
            norm: spec.norm(),
            parameters: *spec,
            points,
        });
    }
    let clean_accuracy = match clean_accuracy {
        Some(a) => a,
        None => clean(model, x.view(), labels, opts)?,
    };
    Ok(RobustnessReport {
        model: model.info().name.clone(),
        samples: labels.len(),
        clean_accuracy,
        options: opts.clone(),
        curves,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Clean accuracy via an ε = 0 FGSM run (which validates the data the same way).
fn clean(
    model: &dyn Classifier,
    x: ArrayViewD<'_, f32>,
    labels: &[usize],
    opts: &RunOptions,
) -> Result<f32, AttackError> {
    let out = run_attack(model, x.view(), Some(labels), &AttackSpec::fgsm(0.0), opts);
    match out {
        Ok(o) => Ok(o.report.clean_accuracy.unwrap_or(0.0)),
        Err(AttackError::NotDifferentiable { .. }) => {
            let out = run_attack(
                model,
                x,
                Some(labels),
                &AttackSpec::square(Norm::Linf, 0.0, 1),
                opts,
            )?;
            Ok(out.report.clean_accuracy.unwrap_or(0.0))
        }
        Err(e) => Err(e),
    }
}
