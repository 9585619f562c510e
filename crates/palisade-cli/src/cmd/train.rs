//! `palisade train`: train a native network on an IDX folder (default: the bundled MNIST
//! subset), evaluate it on the test part after every epoch, save a checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use palisade_core::InputRange;
use palisade_model::evaluate::Evaluation;
use palisade_model::native::{
    self, Arch, EpochStats, Optimizer, Progress, Samples, Schedule, TrainConfig,
};
use serde::Serialize;

use super::Outcome;
use super::common::{bar, evaluate_with_bar, load_idx, per_class_line};
use crate::output::Ctx;

/// Native architectures.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArchKind {
    /// Conv32 → Conv64 → FC128 (the reference MNIST CNN).
    Cnn,
    /// Multi-layer perceptron (`--hidden`).
    Mlp,
    /// Small ResNet (widths 16/32/64, one block per stage).
    Resnet,
}

/// Optimisers.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptKind {
    /// Adam.
    Adam,
    /// SGD with momentum (`--momentum`).
    Sgd,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchedKind {
    /// Cosine annealing to zero.
    Cosine,
    /// Multiply by `--gamma` every `--step-every` epochs.
    Step,
    /// Constant.
    Constant,
}

/// Arguments of `palisade train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// IDX folder in the MNIST layout (e.g. ../shared/data/mnist); default: the bundled subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Architecture.
    #[arg(long, value_enum, default_value = "cnn")]
    pub arch: ArchKind,
    /// Hidden widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "256,128")]
    pub hidden: Vec<usize>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptKind,
    /// Learning rate (default 1e-3 for Adam, 0.05 for SGD).
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: SchedKind,
    /// Epochs between decays of the step schedule.
    #[arg(long, default_value_t = 2)]
    pub step_every: usize,
    /// Decay factor of the step schedule.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Dropout probability before the last layer (CNN) or after each hidden layer (MLP).
    #[arg(long, default_value_t = 0.25)]
    pub dropout: f32,
    /// Seed of every random choice: same seed, same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training samples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Checkpoint directory to write (model.json + model.safetensors).
    #[arg(long, default_value = "palisade-state/model")]
    pub out: PathBuf,
}

/// The JSON report of `palisade train`.
#[derive(Debug, Serialize)]
pub struct TrainOutput {
    /// Data set name.
    pub data: String,
    /// The architecture trained.
    pub arch: Arch,
    /// Training configuration.
    pub config: TrainConfig,
    /// Training samples.
    pub train_samples: usize,
    /// Per-epoch results (`val_accuracy` is the test accuracy).
    pub epochs: Vec<EpochStats>,
    /// Final evaluation on the test part.
    pub test: Evaluation,
    /// Seconds spent training (per-epoch test evaluation included).
    pub train_seconds: f64,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
}

impl TrainArgs {
    fn arch(&self, shape: &[usize], classes: usize) -> anyhow::Result<Arch> {
        Ok(match self.arch {
            ArchKind::Mlp => Arch::Mlp {
                input_shape: shape.to_vec(),
                hidden: self.hidden.clone(),
                classes,
                dropout: self.dropout,
            },
            ArchKind::Cnn | ArchKind::Resnet => {
                let [c, h, w] = shape else {
                    anyhow::bail!(
                        "the {:?} architecture needs image samples [C, H, W], the data has {shape:?}",
                        self.arch
                    );
                };
                match self.arch {
                    ArchKind::Cnn => Arch::Cnn {
                        channels: *c,
                        height: *h,
                        width: *w,
                        conv: [32, 64],
                        fc: 128,
                        classes,
                        dropout: self.dropout,
                    },
                    _ => Arch::ResNet {
                        channels: *c,
                        height: *h,
                        width: *w,
                        widths: vec![16, 32, 64],
                        blocks: 1,
                        classes,
                    },
                }
            }
        })
    }

    fn config(&self) -> TrainConfig {
        let (optimizer, lr) = match self.optimizer {
            OptKind::Adam => (Optimizer::Adam, 1e-3),
            OptKind::Sgd => (
                Optimizer::Sgd {
                    momentum: self.momentum,
                },
                0.05,
            ),
        };
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch,
            optimizer,
            lr: self.lr.unwrap_or(lr),
            weight_decay: self.weight_decay,
            schedule: match self.schedule {
                SchedKind::Cosine => Schedule::Cosine,
                SchedKind::Constant => Schedule::Constant,
                SchedKind::Step => Schedule::Step {
                    every: self.step_every,
                    gamma: self.gamma,
                },
            },
            seed: self.seed,
        }
    }
}

/// Trains, evaluates and saves; shared with `palisade demo`.
pub fn train_and_save(
    ctx: &Ctx,
    args: &TrainArgs,
) -> anyhow::Result<(TrainOutput, native::NativeNet)> {
    let (data_name, mut tt) = load_idx(args.data.as_deref())?;
    if let Some(n) = args.limit {
        tt.train = tt.train.head(n);
    }
    let arch = args.arch(tt.train.sample_shape(), tt.train.num_classes())?;
    let config = args.config();
    let (lo, hi) = tt.train.input_range.unwrap_or((0.0, 1.0));
    let mut meta = native::default_meta(
        format!("{}-{}", arch.kind(), data_name_stem(&data_name)),
        arch.num_classes(),
        InputRange { min: lo, max: hi },
    );
    meta.class_names = tt.train.class_names.clone();

    let pb = bar(ctx, 0, "train");
    let quiet = !ctx.progress();
    let started = Instant::now();
    let (model, report) = native::train(
        &arch,
        &config,
        Samples {
            x: tt.train.x.view(),
            y: &tt.train.y,
        },
        Some(Samples {
            x: tt.test.x.view(),
            y: &tt.test.y,
        }),
        meta,
        &mut |p| match p {
            Progress::Start { total_steps } => pb.set_length(total_steps as u64),
            Progress::Step { epoch, loss, .. } => {
                pb.inc(1);
                pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
            }
            Progress::Epoch(s) => {
                if !quiet {
                    pb.println(epoch_line(s));
                }
            }
        },
    )
    .context("training")?;
    pb.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();
    let test = evaluate_with_bar(ctx, &model, &tt.test)?;
    let checkpoint = model
        .save(&args.out)
        .with_context(|| format!("saving the checkpoint to {}", args.out.display()))?;
    Ok((
        TrainOutput {
            data: data_name,
            arch,
            config,
            train_samples: report.samples,
            epochs: report.epochs,
            test,
            train_seconds,
            checkpoint,
        },
        model,
    ))
}

fn data_name_stem(name: &str) -> String {
    std::path::Path::new(name)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
        .replace(' ', "-")
}

/// One line per epoch.
pub fn epoch_line(s: &EpochStats) -> String {
    let val = s
        .val_accuracy
        .map(|a| format!(", test acc {:.2}%", 100.0 * a))
        .unwrap_or_default();
    format!(
        "epoch {:>3}: loss {:.4}, train acc {:.2}%{val}, lr {:.2e}, {:.1}s",
        s.epoch,
        s.train_loss,
        100.0 * s.train_accuracy,
        s.lr,
        s.seconds
    )
}

/// Runs `palisade train`.
pub fn run(ctx: &Ctx, args: TrainArgs) -> anyhow::Result<Outcome> {
    let (out, _) = train_and_save(ctx, &args)?;
    ctx.emit(&out, |o| {
        format!(
            "trained {} on {} ({} samples, {} epochs) in {:.1}s\ntest accuracy {:.2}% ({} / {}), loss {:.4}\nper class: {}\ncheckpoint: {}",
            o.arch.kind(),
            o.data,
            o.train_samples,
            o.epochs.len(),
            o.train_seconds,
            100.0 * o.test.accuracy,
            o.test.correct,
            o.test.samples,
            o.test.loss,
            per_class_line(&o.test),
            o.checkpoint.display()
        )
    })?;
    Ok(Outcome::Success)
}
