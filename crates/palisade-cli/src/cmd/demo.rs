//! `palisade demo`: the main job on the embedded defaults. Today: train the native CNN on the
//! bundled MNIST subset for a short run, evaluate it, and check its input gradients.

use std::path::PathBuf;

use clap::Args;
use palisade_model::gradcheck::{GradientCheck, check_gradients};
use serde::Serialize;

use super::Outcome;
use super::common::per_class_line;
use super::train::{
    ArchKind, OptKind, SchedKind, TrainArgs, TrainOutput, epoch_line, train_and_save,
};
use crate::output::Ctx;

/// Arguments of `palisade demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Training epochs over the bundled 6,000 images.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Seed of the training run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the trained checkpoint.
    #[arg(long, default_value = "palisade-state/demo-cnn")]
    pub out: PathBuf,
}

/// The JSON report of `palisade demo`.
#[derive(Debug, Serialize)]
pub struct DemoOutput {
    /// Training and test results of the native CNN.
    pub native_cnn: TrainOutput,
    /// Input gradients of the trained CNN against finite differences.
    pub gradient_check: GradientCheck,
}

/// Runs `palisade demo`.
pub fn run(ctx: &Ctx, args: DemoArgs) -> anyhow::Result<Outcome> {
    let train = TrainArgs {
        data: None,
        arch: ArchKind::Cnn,
        hidden: Vec::new(),
        epochs: args.epochs,
        batch: 128,
        optimizer: OptKind::Adam,
        lr: None,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: SchedKind::Cosine,
        step_every: 2,
        gamma: 0.1,
        dropout: 0.25,
        seed: args.seed,
        limit: None,
        out: args.out,
    };
    let (native_cnn, model) = train_and_save(ctx, &train)?;
    let (_, tt) = super::common::load_idx(None)?;
    let probe = tt.test.head(8);
    let gradient_check = check_gradients(&model, probe.x.view(), &probe.y, 8, args.seed)?;
    let out = DemoOutput {
        native_cnn,
        gradient_check,
    };
    ctx.emit(&out, |o| {
        let t = &o.native_cnn;
        let g = &o.gradient_check;
        let epochs: Vec<String> = t.epochs.iter().map(epoch_line).collect();
        format!(
            "Palisade demo: native CNN (Conv32-Conv64-FC128) on the {}\n{}\ntrained {} images in {:.1}s\ntest accuracy {:.2}% on {} images (loss {:.4})\nper class: {}\ninput gradients vs finite differences: max relative error {:.2e} over {} directions ({})\ncheckpoint: {}\nnext: palisade eval --model {}",
            t.data,
            epochs.join("\n"),
            t.train_samples,
            t.train_seconds,
            100.0 * t.test.accuracy,
            t.test.samples,
            t.test.loss,
            per_class_line(&t.test),
            g.max_relative_error,
            g.directions,
            if g.passed { "trustworthy" } else { "NOT trustworthy" },
            t.checkpoint.display(),
            t.checkpoint.parent().map(|p| p.display().to_string()).unwrap_or_default()
        )
    })?;
    Ok(if out.gradient_check.passed {
        Outcome::Success
    } else {
        Outcome::Findings
    })
}
