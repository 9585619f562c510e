//! Seeded, reproducible training of the native architectures.
//!
//! Every source of randomness (initial weights, shuffling, dropout masks) is drawn from
//! generators seeded by [`TrainConfig::seed`] and owned by the trainer, so the same seed, data
//! and configuration give the same weights, whatever else runs in the process.

use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use ndarray::ArrayViewD;
use palisade_core::{Classifier, InputRange, argmax_rows};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::NativeError;
use super::arch::Arch;
use super::model::{NativeMeta, NativeNet, init_params};
use super::net::{DropoutCtx, Network, to_host};

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent with (heavy-ball) momentum; `momentum: 0` is plain SGD.
    Sgd {
        /// Momentum coefficient in `[0, 1)`.
        momentum: f32,
    },
    /// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, as PyTorch's defaults).
    Adam,
}

/// The learning-rate schedule, applied per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply the rate by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Cosine annealing from the base rate to zero over all steps.
    Cosine,
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// The optimiser.
    pub optimizer: Optimizer,
    /// Base learning rate.
    pub lr: f64,
    /// L2 weight decay (added to the gradient; 0 disables it).
    pub weight_decay: f32,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Seed of every random choice (initial weights, shuffling, dropout).
    pub seed: u64,
}

impl Default for TrainConfig {
    /// Adam, learning rate 1e-3 with cosine decay, batch 128, 5 epochs, seed 0.
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 128,
            optimizer: Optimizer::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Cosine,
            seed: 0,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), NativeError> {
        let bad = |m: String| Err(NativeError::Config(m));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad(format!("{} epochs", self.epochs));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return bad(format!("batch size {}", self.batch_size));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {}", self.weight_decay));
        }
        if let Optimizer::Sgd { momentum } = self.optimizer
            && !(0.0..1.0).contains(&momentum)
        {
            return bad(format!("momentum {momentum} is not in [0, 1)"));
        }
        if let Schedule::Step { every, gamma } = self.schedule
            && (every == 0 || !(gamma.is_finite() && gamma > 0.0))
        {
            return bad(format!("step schedule every {every} epochs, gamma {gamma}"));
        }
        Ok(())
    }

    /// The learning rate at 0-based `step` of `total`, in 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize, step: usize, total: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { every, gamma } => {
                self.lr * f64::from(gamma).powi((epoch / every.max(1)) as i32)
            }
            Schedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    fn optimizer(&self) -> ModuleOptimizer {
        let wd = (self.weight_decay > 0.0).then_some(WeightDecayConfig {
            penalty: self.weight_decay,
        });
        match self.optimizer {
            Optimizer::Sgd { momentum } => SgdConfig::new()
                .with_weight_decay(wd)
                .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                    momentum: f64::from(momentum),
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init(),
            Optimizer::Adam => AdamConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(wd)
                .init(),
        }
    }
}

/// A labelled set of samples, borrowed.
#[derive(Debug, Clone)]
pub struct Samples<'a> {
    /// Inputs `[N, ...input_shape]`.
    pub x: ArrayViewD<'a, f32>,
    /// Class of each sample.
    pub y: &'a [usize],
}

/// Results of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch (with dropout on).
    pub train_loss: f32,
    /// Training accuracy over the epoch (predictions made while training).
    pub train_accuracy: f32,
    /// Accuracy on the validation set, if one was given.
    pub val_accuracy: Option<f32>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (validation included).
    pub seconds: f64,
}

/// Progress reported to the caller while training.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Training starts: total steps.
    Start {
        /// Steps over all epochs.
        total_steps: usize,
    },
    /// One optimiser step is done.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// Steps done so far over all epochs.
        done: usize,
        /// Loss of this step's batch.
        loss: f32,
    },
    /// An epoch is done.
    Epoch(&'a EpochStats),
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The configuration used.
    pub config: TrainConfig,
    /// Training samples.
    pub samples: usize,
    /// Per-epoch results.
    pub epochs: Vec<EpochStats>,
    /// Total wall-clock seconds.
    pub seconds: f64,
}

fn check_samples(arch: &Arch, s: &Samples<'_>, what: &str) -> Result<usize, NativeError> {
    let shape = arch.input_shape();
    let got = s.x.shape();
    if got.len() != shape.len() + 1 || got[1..] != shape[..] {
        return Err(NativeError::Data(format!(
            "{what} inputs have shape {got:?}, the architecture needs [N, {shape:?}]"
        )));
    }
    let n = got[0];
    if s.y.len() != n {
        return Err(NativeError::Data(format!(
            "{what}: {n} inputs but {} labels",
            s.y.len()
        )));
    }
    let classes = arch.num_classes();
    if let Some(bad) = s.y.iter().find(|&&c| c >= classes) {
        return Err(NativeError::Data(format!(
            "{what}: label {bad} out of range for {classes} classes"
        )));
    }
    if s.x.iter().any(|v| !v.is_finite()) {
        return Err(NativeError::Data(format!(
            "{what} inputs hold NaN or infinite values"
        )));
    }
    Ok(n)
}

/// One optimiser step's results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// Samples of the batch the network classified correctly (before the update).
    pub correct: usize,
}

/// A network being trained: owns the parameters, the optimiser state and the dropout
/// generator. [`train`] drives it over epochs; benchmarks drive single steps.
pub struct Trainer {
    arch: Arch,
    config: TrainConfig,
    input_shape: Vec<usize>,
    net: Network,
    optim: ModuleOptimizer,
    dropout_rng: StdRng,
    device: burn::tensor::Device,
}

impl Trainer {
    /// A trainer with parameters initialised from `config.seed`.
    pub fn new(arch: &Arch, config: &TrainConfig) -> Result<Trainer, NativeError> {
        config.check()?;
        let params = init_params(arch, config.seed)?;
        let device = super::device().autodiff();
        Ok(Trainer {
            arch: arch.clone(),
            config: config.clone(),
            input_shape: arch.input_shape(),
            net: Network::build(arch, params, &device)?,
            optim: config.optimizer(),
            dropout_rng: StdRng::seed_from_u64(config.seed ^ 0x4452_4f50_4f55_5421),
            device,
        })
    }

    /// One step of the optimiser at learning rate `lr` on a batch: `x` is the flattened batch
    /// (`y.len()` samples, row-major), `y` the labels (checked by the caller).
    pub fn step(&mut self, x: Vec<f32>, y: &[usize], lr: f64) -> Result<StepResult, NativeError> {
        let b = y.len();
        let d: usize = self.input_shape.iter().product();
        let classes = self.arch.num_classes();
        if b == 0 || x.len() != b * d || y.iter().any(|&c| c >= classes) {
            return Err(NativeError::Data(format!(
                "batch of {} values and {b} labels for samples of {d} values and {classes} classes",
                x.len()
            )));
        }
        let mut onehot = vec![0f32; b * classes];
        for (r, &c) in y.iter().enumerate() {
            onehot[r * classes + c] = 1.0;
        }
        let xt = Tensor::<2>::from_data(TensorData::new(x, [b, d]), &self.device);
        let dropout = DropoutCtx {
            prob: self.arch.dropout(),
            rng: &mut self.dropout_rng,
        };
        let logits = self.net.forward(xt, &self.input_shape, Some(dropout));
        let z = to_host(logits.clone().detach())?;
        let target = Tensor::<2>::from_data(TensorData::new(onehot, [b, classes]), &self.device);
        let loss = (log_softmax(logits, 1) * target)
            .sum()
            .mul_scalar(-1.0 / b as f64);
        let loss_value = to_host(loss.clone().detach())?.data[0];
        if !loss_value.is_finite() {
            return Ok(StepResult {
                loss: loss_value,
                correct: 0,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        let net = std::mem::replace(&mut self.net, placeholder(&self.arch)?);
        self.net = self.optim.step(lr, net, grads);
        let correct = z
            .data
            .chunks(classes)
            .zip(y)
            .filter(|(row, c)| argmax(row) == **c)
            .count();
        Ok(StepResult {
            loss: loss_value,
            correct,
        })
    }

    /// The network in inference mode, as a classifier.
    pub fn snapshot(&self, meta: NativeMeta) -> Result<NativeNet, NativeError> {
        NativeNet::from_network(self.arch.clone(), self.net.valid(), meta)
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
}

/// A parameter-free stand-in used while the optimiser consumes the network.
fn placeholder(arch: &Arch) -> Result<Network, NativeError> {
    let _ = arch;
    Ok(Network::Mlp(super::net::MlpNet::empty()))
}

/// Trains `arch` on `train` and returns the network (in inference mode) and a report.
///
/// `meta` names the classes and the input range (recorded in the checkpoint); the report is
/// also stored in the network's `meta.training`. `progress` is called after every step and
/// epoch.
pub fn train(
    arch: &Arch,
    config: &TrainConfig,
    train: Samples<'_>,
    val: Option<Samples<'_>>,
    meta: NativeMeta,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(NativeNet, TrainReport), NativeError> {
    config.check()?;
    let n = check_samples(arch, &train, "training")?;
    if n == 0 {
        return Err(NativeError::Data("no training samples".into()));
    }
    if let Some(v) = &val {
        check_samples(arch, v, "validation")?;
    }
    let d: usize = arch.input_shape().iter().product();
    let flat: Vec<f32> = train.x.iter().copied().collect();

    // Independent streams from one seed: weights and dropout (in the trainer), shuffling.
    let mut trainer = Trainer::new(arch, config)?;
    let mut shuffle_rng = StdRng::seed_from_u64(config.seed ^ 0x5348_5546_464c_4521);
    let steps_per_epoch = n.div_ceil(config.batch_size);
    let total = steps_per_epoch * config.epochs;
    progress(Progress::Start { total_steps: total });

    let started = Instant::now();
    let mut order: Vec<usize> = (0..n).collect();
    let mut epochs = Vec::new();
    let mut done = 0usize;
    let mut lr = config.lr;
    for epoch in 0..config.epochs {
        let epoch_start = Instant::now();
        order.shuffle(&mut shuffle_rng);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for (s, idx) in order.chunks(config.batch_size).enumerate() {
            let mut xb = Vec::with_capacity(idx.len() * d);
            let mut yb = Vec::with_capacity(idx.len());
            for &i in idx {
                xb.extend_from_slice(&flat[i * d..(i + 1) * d]);
                yb.push(train.y[i]);
            }
            lr = config.lr_at(epoch, done, total);
            let r = trainer.step(xb, &yb, lr)?;
            if !r.loss.is_finite() {
                return Err(NativeError::Diverged {
                    epoch: epoch + 1,
                    step: s + 1,
                    loss: r.loss,
                });
            }
            loss_sum += f64::from(r.loss) * idx.len() as f64;
            correct += r.correct;
            done += 1;
            progress(Progress::Step {
                epoch: epoch + 1,
                done,
                loss: r.loss,
            });
        }
        let val_accuracy = match &val {
            Some(v) => Some(accuracy_of(&trainer, v)?),
            None => None,
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: (loss_sum / n as f64) as f32,
            train_accuracy: correct as f32 / n as f32,
            val_accuracy,
            lr,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        progress(Progress::Epoch(&stats));
        epochs.push(stats);
    }
    let report = TrainReport {
        config: config.clone(),
        samples: n,
        epochs,
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut meta = meta;
    meta.training = serde_json::to_value(&report).ok();
    let model = trainer.snapshot(meta)?;
    Ok((model, report))
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

fn accuracy_of(trainer: &Trainer, v: &Samples<'_>) -> Result<f32, NativeError> {
    let classes = trainer.arch.num_classes();
    let snapshot = trainer.snapshot(NativeMeta {
        name: "validation".into(),
        class_names: super::model::index_names(classes),
        input_range: InputRange {
            min: f32::MIN,
            max: f32::MAX,
        },
        training: None,
    })?;
    let z = snapshot
        .logits(v.x.view())
        .map_err(|e| NativeError::Backend(e.to_string()))?;
    let pred = argmax_rows(z.view());
    let correct = pred.iter().zip(v.y).filter(|(p, y)| p == y).count();
    Ok(correct as f32 / v.y.len().max(1) as f32)
}
