//! `palisade model`: inspect and check model files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use palisade_core::InputRange;
use palisade_model::check::{CheckOptions, CheckReport, check_onnx};
use palisade_model::onnx::{OnnxOptions, OnnxSummary, inspect};

use crate::cmd::Outcome;
use crate::output::Ctx;

/// `palisade model ...`
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Inputs, outputs, opset, operators and parameter count of a model file.
    Info {
        /// The model file (ONNX).
        model: PathBuf,
    },
    /// Compare tract and the differentiable interpreter, and the gradients against finite
    /// differences: can white-box attacks trust this model? Exit 0 trusted, 1 not trusted.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The model file (ONNX).
    model: PathBuf,
    /// Random inputs to test.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Coordinates per input checked by finite differences.
    #[arg(long, default_value_t = 256)]
    coords: usize,
    /// Finite-difference step, as a fraction of the input range.
    #[arg(long, default_value_t = 1e-2)]
    step: f32,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Smallest accepted gradient cosine.
    #[arg(long, default_value_t = 0.99)]
    min_cosine: f32,
    /// Smallest valid input value.
    #[arg(long, default_value_t = 0.0)]
    min: f32,
    /// Largest valid input value.
    #[arg(long, default_value_t = 1.0)]
    max: f32,
    /// Per-sample input shape (comma-separated) for models whose input dims are symbolic.
    #[arg(long, value_delimiter = ',')]
    input_shape: Option<Vec<usize>>,
}

/// Runs `palisade model ...`.
pub fn run(ctx: &Ctx, args: ModelArgs) -> anyhow::Result<Outcome> {
    match args.command {
        ModelCommand::Info { model } => {
            let s = inspect(&model).with_context(|| format!("model info {}", model.display()))?;
            ctx.emit(&s, info_text)?;
            Ok(Outcome::Success)
        }
        ModelCommand::Check(a) => {
            if !(a.min.is_finite() && a.max.is_finite()) || a.min >= a.max {
                anyhow::bail!("--min {} must be below --max {}, both finite", a.min, a.max);
            }
            let onnx = OnnxOptions {
                input_range: Some(InputRange {
                    min: a.min,
                    max: a.max,
                }),
                input_shape: a.input_shape.clone(),
            };
            let opts = CheckOptions {
                samples: a.samples,
                coords: a.coords,
                step: a.step,
                seed: a.seed,
                min_cosine: a.min_cosine,
                ..CheckOptions::default()
            };
            let report = check_onnx(&a.model, &onnx, &opts)
                .with_context(|| format!("model check {}", a.model.display()))?;
            ctx.emit(&report, check_text)?;
            Ok(if report.trusted {
                Outcome::Success
            } else {
                Outcome::Findings
            })
        }
    }
}

fn decls(d: &[palisade_model::onnx::TensorDecl]) -> String {
    d.iter()
        .map(|t| format!("{} {} [{}]", t.name, t.dtype, t.shape.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn info_text(s: &OnnxSummary) -> String {
    let ops: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    let mut out = format!(
        "producer:   {}\nopset:      {} (IR {})\ninputs:     {}\noutputs:    {}\nparameters: {}\nops:        {}",
        if s.producer.is_empty() {
            "?"
        } else {
            &s.producer
        },
        s.opset,
        s.ir_version,
        decls(&s.inputs),
        decls(&s.outputs),
        s.parameters,
        ops.join(" ")
    );
    if s.unsupported_ops.is_empty() {
        out.push_str("\ngradients:  every operator is supported by the differentiable interpreter");
    } else {
        let u: Vec<&str> = s.unsupported_ops.keys().map(String::as_str).collect();
        out.push_str(&format!(
            "\ngradients:  unsupported operators: {}",
            u.join(", ")
        ));
    }
    out
}

fn check_text(r: &CheckReport) -> String {
    let mut out = format!("model:        {}\n", r.model);
    if let (Some(shape), Some(c)) = (&r.input_shape, r.num_classes) {
        out.push_str(&format!(
            "classifier:   input [N, {shape:?}] → {c} classes\n"
        ));
    }
    if let Some(l) = &r.logits {
        out.push_str(&format!(
            "logits:       interpreter vs tract max |Δ| {:.2e} (max |logit| {:.2}, {} inputs)\n",
            l.max_abs_diff, l.max_abs_logit, l.samples
        ));
    }
    if let Some(g) = &r.gradients {
        out.push_str(&format!(
            "gradients:    vs finite differences: cosine min {:.6} mean {:.6}, rel. error max {:.2e} ({} inputs × {} coords, step {:.1e})\n",
            g.cosine_min, g.cosine_mean, g.rel_error_max, g.samples, g.coords, g.step
        ));
    }
    if !r.summary.unsupported_ops.is_empty() {
        let u: Vec<String> = r
            .summary
            .unsupported_ops
            .iter()
            .map(|(op, node)| format!("{op} (node '{node}')"))
            .collect();
        out.push_str(&format!("unsupported:  {}\n", u.join(", ")));
    }
    if r.trusted {
        out.push_str("verdict:      TRUSTED: white-box attacks can use this model's gradients");
    } else {
        out.push_str("verdict:      NOT TRUSTED for white-box attacks (black-box only)");
        for reason in &r.reasons {
            out.push_str(&format!("\n  - {reason}"));
        }
    }
    out
}
