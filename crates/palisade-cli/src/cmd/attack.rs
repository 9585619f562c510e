//! `palisade attack`: one evasion attack on a model and labelled data; writes the adversarial
//! examples (NPY) and a JSON summary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use palisade_attack::{
    Apgd, ApgdT, AttackOutput, AttackReport, AttackSpec, AutoAttack, CwL2, DeepFool, Fgsm,
    HopSkipJump, LabelSource, Loss, MiFgsm, Norm, Pgd, RunOptions, SampleResult, Square, Stopping,
    TargetMode, run_attack,
};
use palisade_data::Dataset;
use serde::Serialize;

use super::Outcome;
use super::common::{load_idx, open_model};
use super::eval::Split;
use crate::output::Ctx;

/// The attacks `--attack` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackName {
    /// Fast gradient sign method (one step; L2 with --norm l2).
    Fgsm,
    /// Projected gradient descent (random start by default).
    Pgd,
    /// Basic iterative method: PGD without random start.
    Bim,
    /// Momentum iterative FGSM (L∞).
    Mifgsm,
    /// Carlini–Wagner L2.
    Cw,
    /// DeepFool (L2, minimal perturbation).
    Deepfool,
    /// APGD with cross-entropy.
    ApgdCe,
    /// APGD with the DLR loss.
    ApgdDlr,
    /// Targeted APGD (DLR) over the most likely wrong classes.
    ApgdT,
    /// Square attack (black-box, scores).
    Square,
    /// HopSkipJump (black-box, labels only; L2, unbounded).
    Hsj,
    /// AutoAttack standard: APGD-CE, APGD-T, Square.
    Autoattack,
}

/// Norm flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormArg {
    /// L∞.
    Linf,
    /// L2.
    L2,
}

impl From<NormArg> for Norm {
    fn from(n: NormArg) -> Norm {
        match n {
            NormArg::Linf => Norm::Linf,
            NormArg::L2 => Norm::L2,
        }
    }
}

/// Labels flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelsArg {
    /// The data set's true labels.
    True,
    /// The model's clean predictions.
    Predictions,
}

/// Stopping flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoppingArg {
    /// Drop a sample at its first success (fastest robust accuracy).
    Early,
    /// Run every step, keep the first success (checks `early`).
    FirstSuccess,
    /// Run every step, return the final iterate (torchattacks' semantics).
    Fixed,
}

/// Target flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Untargeted.
    None,
    /// A random wrong class (seeded).
    Random,
    /// The least likely class.
    LeastLikely,
}

/// Loss flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    /// Cross-entropy.
    Ce,
    /// Carlini–Wagner margin.
    Cw,
    /// Difference of logits ratio.
    Dlr,
}

/// Model, data and run options shared by `attack` and `robustness`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The model: an ONNX file or a native checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// IDX folder in the MNIST layout; default: the bundled MNIST subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Part of the data to attack.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Attack the first N samples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples per model call.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Labels to attack.
    #[arg(long, value_enum, default_value = "true")]
    pub labels: LabelsArg,
    /// Stopping rule of iterative attacks.
    #[arg(long, value_enum, default_value = "early")]
    pub stopping: StoppingArg,
}

impl TargetArgs {
    /// The run options.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            seed: self.seed,
            batch_size: self.batch_size,
            labels: match self.labels {
                LabelsArg::True => LabelSource::TrueLabels,
                LabelsArg::Predictions => LabelSource::Predictions,
            },
            stopping: match self.stopping {
                StoppingArg::Early => Stopping::Early,
                StoppingArg::FirstSuccess => Stopping::FirstSuccess,
                StoppingArg::Fixed => Stopping::Fixed,
            },
            targets: None,
        }
    }

    /// Loads the data part (and its display name).
    pub fn data(&self) -> anyhow::Result<(String, Dataset)> {
        let (name, tt) = load_idx(self.data.as_deref())?;
        let mut part = match self.split {
            Split::Test => tt.test,
            Split::Train => tt.train,
        };
        if let Some(n) = self.limit {
            if n == 0 {
                anyhow::bail!("--limit must be at least 1");
            }
            part = part.head(n);
        }
        Ok((name, part))
    }
}

/// Arguments of `palisade attack`.
#[derive(Debug, Args)]
pub struct AttackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The attack.
    #[arg(long, value_enum)]
    pub attack: AttackName,
    /// Norm of the budget (fgsm, pgd, bim, apgd-*, square, autoattack).
    #[arg(long, value_enum, default_value = "linf")]
    pub norm: NormArg,
    /// Budget in input units (the model's input range; [0, 1] for images scaled by 1/255).
    #[arg(long)]
    pub eps: Option<f32>,
    /// Step size in input units (pgd, bim, mifgsm); default 2.5·ε/steps (bim, mifgsm: ε/steps).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Iterations (pgd/bim/mifgsm 40, cw 100, deepfool 50, apgd 100, hsj 50).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Runs; a restart only re-runs the samples not yet fooled (pgd, apgd).
    #[arg(long, default_value_t = 1)]
    pub restarts: u32,
    /// Random start in the ball (pgd; bim never).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub random_start: bool,
    /// Loss (pgd, bim).
    #[arg(long, value_enum, default_value = "ce")]
    pub loss: LossArg,
    /// Targeting (fgsm, pgd, bim, mifgsm, cw).
    #[arg(long, value_enum, default_value = "none")]
    pub target_class: TargetArg,
    /// MI-FGSM momentum decay.
    #[arg(long, default_value_t = 1.0)]
    pub decay: f32,
    /// C&W trade-off constant (initial value of the binary search).
    #[arg(long, default_value_t = 1.0)]
    pub c: f32,
    /// C&W confidence κ.
    #[arg(long, default_value_t = 0.0)]
    pub kappa: f32,
    /// C&W Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// C&W values of c tried per sample (1: no search).
    #[arg(long, default_value_t = 1)]
    pub binary_search_steps: u32,
    /// DeepFool overshoot.
    #[arg(long, default_value_t = 0.02)]
    pub overshoot: f32,
    /// APGD-T and AutoAttack target classes.
    #[arg(long, default_value_t = 9)]
    pub target_classes: u32,
    /// Query budget per sample (square 5000, hsj 10000; autoattack's Square 5000).
    #[arg(long)]
    pub queries: Option<u32>,
    /// Output folder for adversarial.npy and attack.json.
    #[arg(long, default_value = "palisade-attack")]
    pub out: PathBuf,
}

impl AttackArgs {
    fn eps(&self) -> anyhow::Result<f32> {
        self.eps
            .with_context(|| format!("--eps is required for {:?}", self.attack))
    }

    /// The attack described by the flags.
    pub fn spec(&self) -> anyhow::Result<AttackSpec> {
        let norm: Norm = self.norm.into();
        let target = match self.target_class {
            TargetArg::None => TargetMode::None,
            TargetArg::Random => TargetMode::Random,
            TargetArg::LeastLikely => TargetMode::LeastLikely,
        };
        let loss = match self.loss {
            LossArg::Ce => Loss::Ce,
            LossArg::Cw => Loss::Cw,
            LossArg::Dlr => Loss::Dlr,
        };
        Ok(match self.attack {
            AttackName::Fgsm => AttackSpec::Fgsm(Fgsm {
                norm,
                eps: self.eps()?,
                target,
            }),
            AttackName::Pgd | AttackName::Bim => {
                let eps = self.eps()?;
                let steps = self.steps.unwrap_or(40);
                let bim = self.attack == AttackName::Bim;
                let alpha = self.alpha.unwrap_or(if bim {
                    eps / steps.max(1) as f32
                } else {
                    2.5 * eps / steps.max(1) as f32
                });
                AttackSpec::Pgd(Pgd {
                    norm,
                    eps,
                    alpha,
                    steps,
                    random_start: self.random_start && !bim,
                    restarts: self.restarts,
                    loss,
                    target,
                })
            }
            AttackName::Mifgsm => {
                let eps = self.eps()?;
                let steps = self.steps.unwrap_or(40);
                AttackSpec::MiFgsm(MiFgsm {
                    eps,
                    alpha: self.alpha.unwrap_or(eps / steps.max(1) as f32),
                    steps,
                    decay: self.decay,
                    target,
                })
            }
            AttackName::Cw => AttackSpec::CwL2(CwL2 {
                c: self.c,
                kappa: self.kappa,
                steps: self.steps.unwrap_or(100),
                lr: self.lr,
                binary_search_steps: self.binary_search_steps,
                abort_early: true,
                target,
            }),
            AttackName::Deepfool => AttackSpec::DeepFool(DeepFool {
                steps: self.steps.unwrap_or(50),
                overshoot: self.overshoot,
                candidates: 0,
            }),
            AttackName::ApgdCe | AttackName::ApgdDlr => AttackSpec::Apgd(Apgd {
                norm,
                eps: self.eps()?,
                steps: self.steps.unwrap_or(100),
                restarts: self.restarts,
                loss: if self.attack == AttackName::ApgdCe {
                    Loss::Ce
                } else {
                    Loss::Dlr
                },
                rho: 0.75,
            }),
            AttackName::ApgdT => AttackSpec::ApgdT(ApgdT {
                norm,
                eps: self.eps()?,
                steps: self.steps.unwrap_or(100),
                target_classes: self.target_classes,
                rho: 0.75,
            }),
            AttackName::Square => AttackSpec::Square(Square {
                norm,
                eps: self.eps()?,
                queries: self.queries.unwrap_or(5000),
                p_init: 0.8,
            }),
            AttackName::Hsj => {
                let mut h = match AttackSpec::hop_skip_jump(self.queries.unwrap_or(10_000)) {
                    AttackSpec::HopSkipJump(h) => h,
                    _ => unreachable!("hop_skip_jump builds a HopSkipJump"),
                };
                if let Some(s) = self.steps {
                    h.max_iter = s;
                }
                AttackSpec::HopSkipJump(HopSkipJump { ..h })
            }
            AttackName::Autoattack => AttackSpec::AutoAttack(AutoAttack {
                norm,
                eps: self.eps()?,
                apgd_steps: self.steps.unwrap_or(100),
                target_classes: self.target_classes,
                square_queries: self.queries.unwrap_or(5000),
            }),
        })
    }
}

/// Files written by `palisade attack`.
#[derive(Debug, Serialize)]
pub struct AttackFiles {
    /// Adversarial examples, float32, shaped like the input.
    pub adversarial: PathBuf,
    /// The summary and per-sample results.
    pub json: PathBuf,
}

/// The JSON of `palisade attack` (stdout: without per-sample results; `attack.json`: with).
#[derive(Debug, Serialize)]
pub struct AttackCliOutput<'a> {
    /// Model file.
    pub model: String,
    /// Data set.
    pub data: String,
    /// Part attacked.
    pub split: Split,
    /// The summary.
    pub report: &'a AttackReport,
    /// Files written.
    pub files: &'a AttackFiles,
    /// Per-sample results (file only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<&'a [SampleResult]>,
}

/// Runs `palisade attack`.
pub fn run(ctx: &Ctx, args: AttackArgs) -> anyhow::Result<Outcome> {
    let spec = args.spec()?;
    let model = open_model(&args.target.model)?;
    let (data_name, part) = args.target.data()?;
    let pb = super::common::bar(ctx, 1, spec.name());
    pb.set_message(format!("{} samples", part.len()));
    let out: AttackOutput = run_attack(
        model.as_ref(),
        part.x.view(),
        Some(&part.y),
        &spec,
        &args.target.options(),
    )
    .with_context(|| format!("{} on {}", spec.name(), args.target.model.display()))?;
    pb.finish_and_clear();

    let files = AttackFiles {
        adversarial: args.out.join("adversarial.npy"),
        json: args.out.join("attack.json"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let shape = out.adversarial.shape().to_vec();
    let flat: Vec<f32> = out.adversarial.iter().copied().collect();
    palisade_report::write_atomic(
        &files.adversarial,
        &palisade_report::npy_f32(&shape, &flat)?,
    )?;
    let doc = AttackCliOutput {
        model: args.target.model.display().to_string(),
        data: data_name,
        split: args.target.split,
        report: &out.report,
        files: &files,
        samples: Some(&out.samples),
    };
    palisade_report::write_atomic(&files.json, &serde_json::to_vec_pretty(&doc)?)?;
    let doc = AttackCliOutput {
        samples: None,
        ..doc
    };
    ctx.emit(&doc, |d| {
        let r = d.report;
        let pct = |v: Option<f32>| v.map_or("n/a".to_string(), |a| format!("{:.1}%", 100.0 * a));
        let eps = r.eps.map_or("minimal".to_string(), |e| format!("ε {e}"));
        let mut s = format!(
            "{} ({} {eps}) on {} samples of {}: clean {} → robust {}, fooled {}/{} ({:.1}%), median L2 {:.3}, median L∞ {:.3}, {:.1}s",
            r.attack,
            r.norm,
            r.samples,
            d.data,
            pct(r.clean_accuracy),
            pct(r.robust_accuracy),
            r.fooled,
            r.attacked,
            100.0 * r.success_rate,
            r.perturbation.l2.median,
            r.perturbation.linf.median,
            r.seconds
        );
        if let Some(q) = r.queries {
            s.push_str(&format!(
                "\nqueries: {} total, {:.0} per sample, median {:.0} to success",
                q.total, q.mean_per_sample, q.median_to_success
            ));
        }
        s.push_str(&format!(
            "\nwrote {} and {}",
            d.files.adversarial.display(),
            d.files.json.display()
        ));
        s
    })?;
    Ok(if out.report.fooled > 0 {
        Outcome::Findings
    } else {
        Outcome::Success
    })
}
