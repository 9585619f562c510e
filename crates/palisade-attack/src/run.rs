//! The entry point: validate, pick labels and targets, split into batches (in parallel), run,
//! verify the result with one forward pass, and report.

use std::time::Instant;

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn};
use palisade_core::{Classifier, InputRange};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::apgd::ApgdRun;
use crate::oracle::{Batch, Found, Goal, Oracle, argmax};
use crate::pgd::PgdRun;
use crate::tensor::{l2, linf, median, sample_rng};
use crate::{AttackError, AttackSpec, LabelSource, Loss, Norm, RunOptions, Stopping, TargetMode};

/// Summary statistics of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of values.
    pub count: usize,
    /// Mean (0 when empty).
    pub mean: f32,
    /// Median (0 when empty).
    pub median: f32,
    /// Largest value (0 when empty).
    pub max: f32,
}

impl Stats {
    /// Statistics of `v`.
    pub fn of(v: &[f32]) -> Self {
        Stats {
            count: v.len(),
            mean: if v.is_empty() {
                0.0
            } else {
                (v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64) as f32
            },
            median: median(v).unwrap_or(0.0),
            max: v.iter().copied().fold(0.0, f32::max),
        }
    }
}

/// Norms of the perturbations of the samples the attack fooled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerturbationStats {
    /// L2 norms.
    pub l2: Stats,
    /// L∞ norms.
    pub linf: Stats,
}

/// Model queries of a black-box attack.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueryStats {
    /// Queries over all samples.
    pub total: u64,
    /// Mean per attacked sample.
    pub mean_per_sample: f32,
    /// Median over the fooled samples (queries to success).
    pub median_to_success: f32,
}

/// One component of an ensemble and how many samples it fooled first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentReport {
    /// The component.
    pub attack: String,
    /// Samples it fooled that the earlier components had not.
    pub fooled: usize,
}

/// The JSON summary of one attack run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// Attack name.
    pub attack: String,
    /// Every parameter of the attack.
    pub parameters: AttackSpec,
    /// Norm the perturbation is bounded or measured in.
    pub norm: Norm,
    /// Budget in input units; `null` for minimal-perturbation attacks.
    pub eps: Option<f32>,
    /// Iterations (steps, Adam steps, queries), where the attack has them.
    pub steps: Option<u32>,
    /// Step size in input units, where the attack has one.
    pub step_size: Option<f32>,
    /// Runs per sample (restarts, binary-search rounds, targets).
    pub restarts: Option<u32>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Which labels the attack moved away from.
    pub labels: LabelSource,
    /// Targeting.
    pub target: TargetMode,
    /// Stopping rule.
    pub stopping: Stopping,
    /// Samples per model call.
    pub batch_size: usize,
    /// Model name.
    pub model: String,
    /// The model's declared input range (every example lies inside it).
    pub input_range: InputRange,
    /// Number of samples.
    pub samples: usize,
    /// Accuracy on the clean inputs (true labels given).
    pub clean_accuracy: Option<f32>,
    /// Accuracy on the adversarial examples (true labels given).
    pub robust_accuracy: Option<f32>,
    /// Samples attacked (those whose clean prediction did not already meet the goal, or all
    /// under `fixed` stopping).
    pub attacked: usize,
    /// Attacked samples whose adversarial example meets the goal.
    pub fooled: usize,
    /// `fooled / attacked`.
    pub success_rate: f32,
    /// Perturbation norms of the fooled samples.
    pub perturbation: PerturbationStats,
    /// Queries (black-box attacks).
    pub queries: Option<QueryStats>,
    /// Per-sample forward passes the attack made.
    pub forward_evaluations: u64,
    /// Per-sample forward+backward passes the attack made.
    pub gradient_evaluations: u64,
    /// Ensemble components, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentReport>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The outcome of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The label attacked (true label or clean prediction).
    pub label: usize,
    /// The target, when targeted.
    pub target: Option<usize>,
    /// True label, when given.
    pub true_label: Option<usize>,
    /// Prediction on the clean input.
    pub clean_prediction: usize,
    /// Prediction on the adversarial example.
    pub adversarial_prediction: usize,
    /// Whether the sample was attacked (see [`AttackReport::attacked`]).
    pub attacked: bool,
    /// Whether the adversarial example meets the goal.
    pub success: bool,
    /// L2 norm of the perturbation.
    pub l2: f32,
    /// L∞ norm of the perturbation.
    pub linf: f32,
    /// Model queries (black-box attacks).
    pub queries: u64,
}

/// Adversarial examples, shaped like the input, with the report and per-sample outcomes.
#[derive(Debug, Clone)]
pub struct AttackOutput {
    /// The adversarial examples (the clean input where nothing was found or nothing attacked).
    pub adversarial: ArrayD<f32>,
    /// The summary.
    pub report: AttackReport,
    /// Per-sample outcomes.
    pub samples: Vec<SampleResult>,
}

/// Runs `spec` on `model` over the batch `x` (`[N, ...input_shape]`, inside the model's input
/// range). `labels` are the true labels; they are required for [`LabelSource::TrueLabels`] and
/// used for accuracies when given.
pub fn run_attack(
    model: &dyn Classifier,
    x: ArrayViewD<'_, f32>,
    labels: Option<&[usize]>,
    spec: &AttackSpec,
    opts: &RunOptions,
) -> Result<AttackOutput, AttackError> {
    let start = Instant::now();
    let oracle = Oracle::new(model);
    let info = model.info().clone();
    let n = validate(&info, x.view(), labels, spec, opts)?;
    if spec.needs_gradients() && model.as_differentiable().is_none() {
        return Err(AttackError::NotDifferentiable {
            attack: spec.name().into(),
            model: info.name.clone(),
        });
    }
    let d = oracle.dim();
    let flat: Array2<f32> = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, d))
        .map_err(|e| AttackError::param("data", e.to_string()))?;

    // Clean predictions, in batches.
    let clean_logits = oracle.logits_in(flat.view(), opts.batch_size)?;
    let clean_pred: Vec<usize> = clean_logits.axis_iter(Axis(0)).map(argmax).collect();
    let attack_labels: Vec<usize> = match opts.labels {
        LabelSource::TrueLabels => labels
            .ok_or_else(|| AttackError::Labels("true labels requested but none given".into()))?
            .to_vec(),
        LabelSource::Predictions => clean_pred.clone(),
    };
    let targets = choose_targets(
        spec.target_mode(),
        opts,
        &attack_labels,
        &clean_logits,
        oracle.classes,
    )?;
    let goals: Vec<Goal> = (0..n)
        .map(|i| Goal {
            label: attack_labels[i],
            target: targets.as_ref().map(|t| t[i]),
        })
        .collect();
    let attacked: Vec<usize> = (0..n)
        .filter(|&i| opts.stopping == Stopping::Fixed || !goals[i].reached(clean_logits.row(i)))
        .collect();

    let bs = opts.batch_size;
    let chunks: Vec<&[usize]> = attacked.chunks(bs).collect();
    let results: Vec<(Found, Vec<Option<usize>>)> = chunks
        .par_iter()
        .map(|rows| {
            let b = Batch {
                oracle: &oracle,
                x: crate::tensor::rows(&flat, rows),
                goals: rows.iter().map(|&i| goals[i]).collect(),
                ids: rows.iter().map(|&i| i as u64).collect(),
                seed: opts.seed,
                stopping: opts.stopping,
            };
            attack_batch(spec, &b)
        })
        .collect::<Result<_, _>>()?;
    let mut adv = flat.clone();
    let mut queries = vec![0u64; n];
    let mut component = vec![None; n];
    for (rows, (f, comp)) in chunks.iter().zip(results) {
        for (k, &i) in rows.iter().enumerate() {
            adv.row_mut(i).assign(&f.adv.row(k));
            queries[i] = f.queries[k];
            component[i] = comp[k];
        }
    }
    let (fw_attack, grads) = oracle.counts();

    // Verify: one forward pass over the final examples decides success, never the bookkeeping.
    let adv_logits = oracle.logits_in(adv.view(), bs)?;
    let adv_pred: Vec<usize> = adv_logits.axis_iter(Axis(0)).map(argmax).collect();
    let is_attacked = {
        let mut v = vec![false; n];
        attacked.iter().for_each(|&i| v[i] = true);
        v
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let delta = &adv.row(i) - &flat.row(i);
        let success = match goals[i].target {
            Some(t) => adv_pred[i] == t,
            None => adv_pred[i] != goals[i].label,
        };
        samples.push(SampleResult {
            label: goals[i].label,
            target: goals[i].target,
            true_label: labels.map(|l| l[i]),
            clean_prediction: clean_pred[i],
            adversarial_prediction: adv_pred[i],
            attacked: is_attacked[i],
            success,
            l2: l2(delta.view()),
            linf: linf(delta.view()),
            queries: queries[i],
        });
    }
    let fooled: Vec<&SampleResult> = samples.iter().filter(|s| s.attacked && s.success).collect();
    let acc = |f: &dyn Fn(&SampleResult) -> usize| {
        labels.map(|l| samples.iter().zip(l).filter(|(s, y)| f(s) == **y).count() as f32 / n as f32)
    };
    let black_box = !spec.needs_gradients() || matches!(spec, AttackSpec::AutoAttack(_));
    let q_fooled: Vec<f32> = fooled.iter().map(|s| s.queries as f32).collect();
    let total_q: u64 = queries.iter().sum();
    let components = match spec {
        AttackSpec::AutoAttack(a) => auto_components(a)
            .iter()
            .enumerate()
            .map(|(c, name)| ComponentReport {
                attack: (*name).into(),
                fooled: (0..n)
                    .filter(|&i| component[i] == Some(c) && samples[i].success)
                    .count(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let (steps, step_size, restarts) = schedule(spec);
    let report = AttackReport {
        attack: spec.name().into(),
        parameters: *spec,
        norm: spec.norm(),
        eps: spec.eps(),
        steps,
        step_size,
        restarts,
        seed: opts.seed,
        labels: opts.labels,
        target: spec.target_mode(),
        stopping: opts.stopping,
        batch_size: bs,
        model: info.name.clone(),
        input_range: info.input_range,
        samples: n,
        clean_accuracy: acc(&|s| s.clean_prediction),
        robust_accuracy: acc(&|s| s.adversarial_prediction),
        attacked: attacked.len(),
        fooled: fooled.len(),
        success_rate: if attacked.is_empty() {
            0.0
        } else {
            fooled.len() as f32 / attacked.len() as f32
        },
        perturbation: PerturbationStats {
            l2: Stats::of(&fooled.iter().map(|s| s.l2).collect::<Vec<_>>()),
            linf: Stats::of(&fooled.iter().map(|s| s.linf).collect::<Vec<_>>()),
        },
        queries: black_box.then(|| QueryStats {
            total: total_q,
            mean_per_sample: if attacked.is_empty() {
                0.0
            } else {
                total_q as f32 / attacked.len() as f32
            },
            median_to_success: median(&q_fooled).unwrap_or(0.0),
        }),
        forward_evaluations: fw_attack,
        gradient_evaluations: grads,
        components,
        seconds: start.elapsed().as_secs_f64(),
    };
    let mut shape = vec![n];
    shape.extend_from_slice(&info.input_shape);
    let adversarial = adv
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| AttackError::param("output", e.to_string()))?;
    Ok(AttackOutput {
        adversarial,
        report,
        samples,
    })
}

fn auto_components(a: &crate::AutoAttack) -> Vec<&'static str> {
    let mut v = vec!["apgd_ce", "apgd_t"];
    if a.square_queries > 0 {
        v.push("square");
    }
    v
}

/// (steps, step size, runs) of an attack, for the report.
fn schedule(spec: &AttackSpec) -> (Option<u32>, Option<f32>, Option<u32>) {
    match spec {
        AttackSpec::Fgsm(a) => (Some(1), Some(a.eps), Some(1)),
        AttackSpec::Pgd(a) => (Some(a.steps), Some(a.alpha), Some(a.restarts)),
        AttackSpec::MiFgsm(a) => (Some(a.steps), Some(a.alpha), Some(1)),
        AttackSpec::CwL2(a) => (Some(a.steps), Some(a.lr), Some(a.binary_search_steps)),
        AttackSpec::DeepFool(a) => (Some(a.steps), None, Some(1)),
        AttackSpec::Apgd(a) => (Some(a.steps), None, Some(a.restarts)),
        AttackSpec::ApgdT(a) => (Some(a.steps), None, Some(a.target_classes)),
        AttackSpec::Square(a) => (Some(a.queries), None, Some(1)),
        AttackSpec::HopSkipJump(a) => (Some(a.max_iter), None, Some(1)),
        AttackSpec::AutoAttack(a) => (Some(a.apgd_steps), None, Some(a.target_classes)),
    }
}

/// Runs the attack on one batch; for ensembles also says which component fooled each sample.
fn attack_batch(
    spec: &AttackSpec,
    b: &Batch<'_>,
) -> Result<(Found, Vec<Option<usize>>), AttackError> {
    let none = || vec![None; b.len()];
    let found = match spec {
        AttackSpec::Fgsm(a) => PgdRun {
            norm: a.norm,
            eps: a.eps,
            alpha: a.eps,
            steps: 1,
            random_start: false,
            loss: Loss::Ce,
            momentum: None,
        }
        .run(b, 1)?,
        AttackSpec::Pgd(a) => PgdRun {
            norm: a.norm,
            eps: a.eps,
            alpha: a.alpha,
            steps: a.steps,
            random_start: a.random_start,
            loss: a.loss,
            momentum: None,
        }
        .run(b, a.restarts)?,
        AttackSpec::MiFgsm(a) => PgdRun {
            norm: Norm::Linf,
            eps: a.eps,
            alpha: a.alpha,
            steps: a.steps,
            random_start: false,
            loss: Loss::Ce,
            momentum: Some(a.decay),
        }
        .run(b, 1)?,
        AttackSpec::CwL2(a) => crate::cw::run(a, b)?,
        AttackSpec::DeepFool(a) => crate::deepfool::run(a, b)?,
        AttackSpec::Apgd(a) => ApgdRun {
            norm: a.norm,
            eps: a.eps,
            steps: a.steps,
            loss: a.loss,
            rho: a.rho,
        }
        .run(b, a.restarts)?,
        AttackSpec::ApgdT(a) => ApgdRun {
            norm: a.norm,
            eps: a.eps,
            steps: a.steps,
            loss: Loss::Dlr,
            rho: a.rho,
        }
        .run_targeted(b, a.target_classes)?,
        AttackSpec::Square(a) => crate::square::run(a, b)?,
        AttackSpec::HopSkipJump(a) => crate::hsj::run(a, b)?,
        AttackSpec::AutoAttack(a) => return auto_attack(a, b),
    };
    Ok((found, none()))
}

/// APGD-CE, then APGD-T, then Square, each on the survivors; the first success is kept.
fn auto_attack(
    a: &crate::AutoAttack,
    b: &Batch<'_>,
) -> Result<(Found, Vec<Option<usize>>), AttackError> {
    let mut found = Found::clean(b);
    let mut comp = vec![None; b.len()];
    for (c, name) in auto_components(a).iter().enumerate() {
        let todo = found.survivors();
        if todo.is_empty() {
            break;
        }
        let sub = b.subset(&todo);
        let f = match *name {
            "apgd_ce" => ApgdRun {
                norm: a.norm,
                eps: a.eps,
                steps: a.apgd_steps,
                loss: Loss::Ce,
                rho: 0.75,
            }
            .run(&sub, 1)?,
            "apgd_t" => ApgdRun {
                norm: a.norm,
                eps: a.eps,
                steps: a.apgd_steps,
                loss: Loss::Dlr,
                rho: 0.75,
            }
            .run_targeted(&sub, a.target_classes)?,
            _ => crate::square::run(
                &crate::Square {
                    norm: a.norm,
                    eps: a.eps,
                    queries: a.square_queries,
                    p_init: 0.8,
                },
                &sub,
            )?,
        };
        for (k, &i) in todo.iter().enumerate() {
            if f.success[k] {
                comp[i] = Some(c);
            }
        }
        found.merge(&todo, f, true);
    }
    Ok((found, comp))
}

fn choose_targets(
    mode: TargetMode,
    opts: &RunOptions,
    labels: &[usize],
    clean: &Array2<f32>,
    classes: usize,
) -> Result<Option<Vec<usize>>, AttackError> {
    let n = labels.len();
    Ok(match mode {
        TargetMode::None => None,
        TargetMode::Random => Some(
            (0..n)
                .map(|i| {
                    let mut rng = sample_rng(opts.seed, i as u64, 3);
                    let k = rng.random_range(0..classes - 1);
                    if k >= labels[i] { k + 1 } else { k }
                })
                .collect(),
        ),
        TargetMode::LeastLikely => Some(
            clean
                .axis_iter(Axis(0))
                .map(|r| {
                    let mut best = 0;
                    for (j, &v) in r.iter().enumerate() {
                        if v < r[best] {
                            best = j;
                        }
                    }
                    best
                })
                .collect(),
        ),
        TargetMode::Given => {
            let t = opts.targets.as_ref().ok_or_else(|| {
                AttackError::Labels("target mode 'given' needs targets in the run options".into())
            })?;
            if t.len() != n {
                return Err(AttackError::Labels(format!(
                    "{} targets for {n} samples",
                    t.len()
                )));
            }
            for (i, (&tg, &y)) in t.iter().zip(labels).enumerate() {
                if tg >= classes {
                    return Err(AttackError::Labels(format!(
                        "target {tg} of sample {i} is out of range for {classes} classes"
                    )));
                }
                if tg == y {
                    return Err(AttackError::Labels(format!(
                        "target of sample {i} equals its label {y}"
                    )));
                }
            }
            Some(t.clone())
        }
    })
}

/// Checks everything before any work: shapes, range, labels, epsilon, parameters.
fn validate(
    info: &palisade_core::ModelInfo,
    x: ArrayViewD<'_, f32>,
    labels: Option<&[usize]>,
    spec: &AttackSpec,
    opts: &RunOptions,
) -> Result<usize, AttackError> {
    let range = info.input_range;
    if !(range.min.is_finite() && range.max.is_finite() && range.min < range.max) {
        return Err(AttackError::param(
            "input_range",
            format!(
                "the model declares an empty or infinite range [{}, {}]",
                range.min, range.max
            ),
        ));
    }
    let n = info
        .check_batch(x.shape())
        .map_err(|_| AttackError::Shape {
            expected: info.input_shape.clone(),
            got: x.shape().to_vec(),
        })?;
    if n == 0 {
        return Err(AttackError::param("data", "no samples"));
    }
    let classes = info.num_classes;
    if classes < 2 {
        return Err(AttackError::Labels(format!(
            "the model has {classes} class(es); attacks need at least 2"
        )));
    }
    let d = info.input_len();
    if let Some((k, &v)) = x
        .iter()
        .enumerate()
        .find(|(_, v)| !(**v >= range.min && **v <= range.max))
    {
        return Err(AttackError::OutOfRange {
            index: k,
            sample: k / d.max(1),
            value: v,
            min: range.min,
            max: range.max,
        });
    }
    if let Some(l) = labels {
        if l.len() != n {
            return Err(AttackError::Labels(format!(
                "{} labels for {n} samples",
                l.len()
            )));
        }
        if let Some((i, &y)) = l.iter().enumerate().find(|(_, y)| **y >= classes) {
            return Err(AttackError::Labels(format!(
                "label {y} of sample {i} is out of range for the model's {classes} classes"
            )));
        }
    }
    if opts.batch_size == 0 {
        return Err(AttackError::param("batch_size", "must be at least 1"));
    }
    if let Some(eps) = spec.eps() {
        let span = range.max - range.min;
        let max = match spec.norm() {
            Norm::Linf => span,
            Norm::L2 => span * (d as f32).sqrt(),
        };
        if !(eps.is_finite() && (0.0..=max).contains(&eps)) {
            return Err(AttackError::Epsilon {
                eps,
                norm: spec.norm(),
                max,
                range_min: range.min,
                range_max: range.max,
            });
        }
    }
    let pos = |name: &'static str, v: f32| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(AttackError::param(
                name,
                format!("must be positive and finite, got {v}"),
            ))
        }
    };
    let at_least_1 = |name: &'static str, v: u32| {
        if v >= 1 {
            Ok(())
        } else {
            Err(AttackError::param(name, "must be at least 1"))
        }
    };
    let unit = |name: &'static str, v: f32| {
        if v > 0.0 && v <= 1.0 {
            Ok(())
        } else {
            Err(AttackError::param(
                name,
                format!("must lie in (0, 1], got {v}"),
            ))
        }
    };
    let need_classes = |k: usize, what: &str| {
        if classes >= k {
            Ok(())
        } else {
            Err(AttackError::Labels(format!(
                "{what} needs at least {k} classes, the model has {classes}"
            )))
        }
    };
    match spec {
        AttackSpec::Fgsm(_) => {}
        AttackSpec::Pgd(a) => {
            at_least_1("steps", a.steps)?;
            at_least_1("restarts", a.restarts)?;
            pos("alpha", a.alpha)?;
            if a.loss == Loss::Dlr {
                need_classes(
                    if a.target == TargetMode::None { 3 } else { 4 },
                    "the DLR loss",
                )?;
            }
        }
        AttackSpec::MiFgsm(a) => {
            at_least_1("steps", a.steps)?;
            pos("alpha", a.alpha)?;
            if !(a.decay.is_finite() && a.decay >= 0.0) {
                return Err(AttackError::param(
                    "decay",
                    "must be finite and non-negative",
                ));
            }
        }
        AttackSpec::CwL2(a) => {
            at_least_1("steps", a.steps)?;
            at_least_1("binary_search_steps", a.binary_search_steps)?;
            pos("c", a.c)?;
            pos("lr", a.lr)?;
            if !(a.kappa.is_finite() && a.kappa >= 0.0) {
                return Err(AttackError::param(
                    "kappa",
                    "must be finite and non-negative",
                ));
            }
        }
        AttackSpec::DeepFool(a) => {
            at_least_1("steps", a.steps)?;
            if !(a.overshoot.is_finite() && a.overshoot >= 0.0) {
                return Err(AttackError::param(
                    "overshoot",
                    "must be finite and non-negative",
                ));
            }
            if a.candidates == 1 {
                return Err(AttackError::param("candidates", "0 (all) or at least 2"));
            }
        }
        AttackSpec::Apgd(a) => {
            at_least_1("steps", a.steps)?;
            at_least_1("restarts", a.restarts)?;
            unit("rho", a.rho)?;
            if a.loss == Loss::Dlr {
                need_classes(3, "APGD-DLR")?;
            }
        }
        AttackSpec::ApgdT(a) => {
            at_least_1("steps", a.steps)?;
            at_least_1("target_classes", a.target_classes)?;
            unit("rho", a.rho)?;
            need_classes(4, "APGD-T (targeted DLR)")?;
        }
        AttackSpec::Square(a) => {
            at_least_1("queries", a.queries)?;
            unit("p_init", a.p_init)?;
            if a.norm == Norm::L2 && !crate::square::l2_shape_ok(&info.input_shape) {
                return Err(AttackError::param(
                    "norm",
                    format!(
                        "Square L2 needs image samples ([H, W] or [C, H, W], at least 5×5); the model takes {:?}",
                        info.input_shape
                    ),
                ));
            }
        }
        AttackSpec::HopSkipJump(a) => {
            at_least_1("max_iter", a.max_iter)?;
            at_least_1("max_queries", a.max_queries)?;
            at_least_1("init_evals", a.init_evals)?;
            at_least_1("max_evals", a.max_evals)?;
            at_least_1("init_size", a.init_size)?;
            pos("gamma", a.gamma)?;
        }
        AttackSpec::AutoAttack(a) => {
            at_least_1("apgd_steps", a.apgd_steps)?;
            at_least_1("target_classes", a.target_classes)?;
            need_classes(4, "AutoAttack (APGD-T)")?;
            if a.norm == Norm::L2
                && a.square_queries > 0
                && !crate::square::l2_shape_ok(&info.input_shape)
            {
                return Err(AttackError::param(
                    "square_queries",
                    "Square L2 needs image samples; set square_queries to 0 for this model",
                ));
            }
        }
    }
    Ok(n)
}
