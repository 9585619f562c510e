//! `palisade robustness`: robust accuracy over a sweep of budgets, as JSON, PNG, SVG and HTML.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use palisade_attack::{AttackSpec, Norm, RobustnessReport, robustness};
use palisade_report::Written;
use serde::Serialize;

use super::Outcome;
use super::attack::TargetArgs;
use crate::output::Ctx;

/// The attacks a sweep can contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SweepAttack {
    /// FGSM (L∞).
    Fgsm,
    /// PGD L∞ (random start).
    Pgd,
    /// PGD L2 (random start).
    PgdL2,
    /// APGD-CE (L∞).
    ApgdCe,
    /// AutoAttack standard (L∞).
    Autoattack,
    /// Square (L∞, black-box).
    Square,
    /// DeepFool (L2, one run read at every budget).
    Deepfool,
    /// C&W L2 with a binary search (one run read at every budget).
    Cw,
}

/// Arguments of `palisade robustness`.
#[derive(Debug, Args)]
pub struct RobustnessArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Attacks to sweep; default: fgsm, pgd, deepfool for models with gradients, square otherwise.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<SweepAttack>,
    /// L∞ budgets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.05,0.1,0.15,0.2,0.25,0.3"
    )]
    pub eps: Vec<f32>,
    /// L2 budgets.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,1.5,2,2.5,3")]
    pub eps_l2: Vec<f32>,
    /// Iterations of PGD and APGD.
    #[arg(long, default_value_t = 40)]
    pub steps: u32,
    /// Square's query budget per sample.
    #[arg(long, default_value_t = 1000)]
    pub queries: u32,
    /// Exit 1 when any curve falls below this accuracy within the sweep.
    #[arg(long)]
    pub fail_below: Option<f32>,
    /// Output folder.
    #[arg(long, default_value = "palisade-robustness")]
    pub out: PathBuf,
}

/// The JSON of `palisade robustness` on stdout.
#[derive(Debug, Serialize)]
pub struct RobustnessCliOutput {
    /// Data set.
    pub data: String,
    /// The curves.
    pub report: RobustnessReport,
    /// Files written.
    pub files: Written,
    /// Curves that fell below `--fail-below`.
    pub below_threshold: Vec<String>,
}

/// Runs `palisade robustness`.
pub fn run(ctx: &Ctx, args: RobustnessArgs) -> anyhow::Result<Outcome> {
    let model = open_model_for(&args)?;
    let (data_name, part) = args.target.data()?;
    let white = model.as_differentiable().is_some();
    let attacks = if args.attacks.is_empty() {
        if white {
            vec![SweepAttack::Fgsm, SweepAttack::Pgd, SweepAttack::Deepfool]
        } else {
            vec![SweepAttack::Square]
        }
    } else {
        args.attacks.clone()
    };
    let steps = args.steps;
    let suite: Vec<(AttackSpec, Vec<f32>)> = attacks
        .iter()
        .map(|a| match a {
            SweepAttack::Fgsm => (AttackSpec::fgsm(1.0), args.eps.clone()),
            SweepAttack::Pgd => (AttackSpec::pgd(Norm::Linf, 1.0, steps), args.eps.clone()),
            SweepAttack::PgdL2 => (AttackSpec::pgd(Norm::L2, 1.0, steps), args.eps_l2.clone()),
            SweepAttack::ApgdCe => {
                let mut s = AttackSpec::apgd(Norm::Linf, 1.0, palisade_attack::Loss::Ce);
                if let AttackSpec::Apgd(a) = &mut s {
                    a.steps = steps;
                }
                (s, args.eps.clone())
            }
            SweepAttack::Autoattack => (AttackSpec::auto_attack(Norm::Linf, 1.0), args.eps.clone()),
            SweepAttack::Square => (
                AttackSpec::square(Norm::Linf, 1.0, args.queries),
                args.eps.clone(),
            ),
            SweepAttack::Deepfool => (AttackSpec::deep_fool(), args.eps_l2.clone()),
            SweepAttack::Cw => {
                // C&W with a binary search over c (5 rounds), as a robustness figure needs.
                let mut s = AttackSpec::cw_l2();
                if let AttackSpec::CwL2(c) = &mut s {
                    c.binary_search_steps = 5;
                }
                (s, args.eps_l2.clone())
            }
        })
        .collect();
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
    let pb = super::common::bar(ctx, total as u64, "sweep");
    let report = robustness(
        model.as_ref(),
        part.x.view(),
        &part.y,
        &suite,
        &args.target.options(),
        &|done, _| pb.set_position(done as u64),
    )
    .with_context(|| format!("robustness sweep of {}", args.target.model.display()))?;
    pb.finish_and_clear();
    let files = palisade_report::write_robustness(&report, &args.out, "robustness")
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    let below_threshold: Vec<String> = match args.fail_below {
        Some(t) => report
            .curves
            .iter()
            .filter(|c| c.points.iter().any(|p| p.robust_accuracy < t))
            .map(|c| c.attack.clone())
            .collect(),
        None => Vec::new(),
    };
    let out = RobustnessCliOutput {
        data: data_name,
        report,
        files,
        below_threshold,
    };
    ctx.emit(&out, |o| {
        let mut s = format!(
            "{} on {} samples of {}: clean accuracy {:.1}%\n",
            o.report.model,
            o.report.samples,
            o.data,
            100.0 * o.report.clean_accuracy
        );
        for c in &o.report.curves {
            let pts: Vec<String> = c
                .points
                .iter()
                .map(|p| format!("{}→{:.1}%", p.eps, 100.0 * p.robust_accuracy))
                .collect();
            s.push_str(&format!(
                "  {:10} ({}): {}\n",
                c.attack,
                c.norm,
                pts.join("  ")
            ));
        }
        s.push_str(&format!(
            "wrote {}, {}, {}, {}",
            o.files.json.display(),
            o.files.png.display(),
            o.files.svg.display(),
            o.files.html.display()
        ));
        if !o.below_threshold.is_empty() {
            s.push_str(&format!(
                "\nbelow threshold: {}",
                o.below_threshold.join(", ")
            ));
        }
        s
    })?;
    Ok(if out.below_threshold.is_empty() {
        Outcome::Success
    } else {
        Outcome::Findings
    })
}

fn open_model_for(args: &RobustnessArgs) -> anyhow::Result<Box<dyn palisade_core::Classifier>> {
    super::common::open_model(&args.target.model)
}
