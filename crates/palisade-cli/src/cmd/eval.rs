//! `palisade eval`: accuracy, per-class accuracy and loss of a model on labelled data.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use palisade_model::evaluate::Evaluation;
use serde::Serialize;

use super::Outcome;
use super::common::{evaluate_with_bar, load_idx, open_model, per_class_line};
use crate::output::Ctx;

/// Which part of the data to evaluate on.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The test part.
    Test,
    /// The training part.
    Train,
}

/// Arguments of `palisade eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model: a native checkpoint (directory, model.json or model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// IDX folder in the MNIST layout; default: the bundled MNIST subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Part of the data to evaluate on.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Evaluate the first N samples only.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The JSON report of `palisade eval`.
#[derive(Debug, Serialize)]
pub struct EvalOutput {
    /// The model evaluated.
    pub model: String,
    /// Data set name.
    pub data: String,
    /// Part evaluated.
    pub split: Split,
    /// Results.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// Seconds spent.
    pub seconds: f64,
}

/// Runs `palisade eval`.
pub fn run(ctx: &Ctx, args: EvalArgs) -> anyhow::Result<Outcome> {
    let model = open_model(&args.model)?;
    let (data, tt) = load_idx(args.data.as_deref())?;
    let mut part = match args.split {
        Split::Test => tt.test,
        Split::Train => tt.train,
    };
    if let Some(n) = args.limit {
        part = part.head(n);
    }
    let started = Instant::now();
    let evaluation = evaluate_with_bar(ctx, model.as_ref(), &part)?;
    let out = EvalOutput {
        model: args.model.display().to_string(),
        data,
        split: args.split,
        evaluation,
        seconds: started.elapsed().as_secs_f64(),
    };
    ctx.emit(&out, |o| {
        format!(
            "{} on {} ({:?}, {} samples): accuracy {:.2}% ({} / {}), loss {:.4}, {:.1}s\nper class: {}",
            o.model,
            o.data,
            o.split,
            o.evaluation.samples,
            100.0 * o.evaluation.accuracy,
            o.evaluation.correct,
            o.evaluation.samples,
            o.evaluation.loss,
            o.seconds,
            per_class_line(&o.evaluation)
        )
    })?;
    Ok(Outcome::Success)
}
