//! What to run: the attacks and their parameters, and how to run them. These types are also the
//! `parameters` part of the JSON report, so a report says exactly what was run.

use serde::{Deserialize, Serialize};

/// The norm a perturbation is measured (and bounded) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Largest absolute change of any input value.
    Linf,
    /// Euclidean length of the perturbation.
    L2,
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Norm::Linf => "L∞",
            Norm::L2 => "L2",
        })
    }
}

/// The loss a gradient attack ascends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Cross-entropy (of the label; of the target, descended, when targeted).
    #[default]
    Ce,
    /// The Carlini–Wagner margin of the logits.
    Cw,
    /// Croce & Hein's difference of logits ratio (targeted DLR when targeted).
    Dlr,
}

/// Which class a targeted attack aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    /// Untargeted: any wrong class is a success.
    #[default]
    None,
    /// A uniformly random class other than the label (seeded).
    Random,
    /// The class the model finds least likely on the clean input.
    LeastLikely,
    /// The explicit targets passed in [`RunOptions::targets`].
    Given,
}

/// FGSM (L∞, Goodfellow et al.) or its L2 variant FGM: one gradient step of size ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fgsm {
    /// Norm of the step.
    pub norm: Norm,
    /// Perturbation budget, in input units.
    pub eps: f32,
    /// Targeted or not.
    #[serde(default)]
    pub target: TargetMode,
}

/// BIM/PGD (Kurakin et al., Madry et al.): projected gradient ascent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pgd {
    /// Norm of the ball.
    pub norm: Norm,
    /// Radius of the ball, in input units.
    pub eps: f32,
    /// Step size α, in input units.
    pub alpha: f32,
    /// Number of gradient steps.
    pub steps: u32,
    /// Start from a uniformly random point of the ball (PGD) or from the input (BIM).
    pub random_start: bool,
    /// Number of runs; a restart re-runs only the samples no earlier run fooled.
    pub restarts: u32,
    /// Loss to ascend.
    #[serde(default)]
    pub loss: Loss,
    /// Targeted or not.
    #[serde(default)]
    pub target: TargetMode,
}

/// MI-FGSM (Dong et al.): L∞ PGD with an L1-normalised momentum on the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MiFgsm {
    /// Radius of the L∞ ball.
    pub eps: f32,
    /// Step size α.
    pub alpha: f32,
    /// Number of gradient steps.
    pub steps: u32,
    /// Momentum decay μ.
    pub decay: f32,
    /// Targeted or not.
    #[serde(default)]
    pub target: TargetMode,
}

/// Carlini & Wagner's L2 attack: Adam in tanh space on `‖δ‖² + c·max(margin, −κ)`, with a binary
/// search over `c` per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CwL2 {
    /// Initial trade-off constant c.
    pub c: f32,
    /// Confidence κ.
    pub kappa: f32,
    /// Adam steps per value of c.
    pub steps: u32,
    /// Adam learning rate.
    pub lr: f32,
    /// Values of c tried per sample (1: no search, as torchattacks).
    pub binary_search_steps: u32,
    /// Stop a sample when its cost stops decreasing (checked every steps/10).
    pub abort_early: bool,
    /// Targeted or not.
    #[serde(default)]
    pub target: TargetMode,
}

/// DeepFool (Moosavi-Dezfooli et al.): iterated linearisation to the nearest decision boundary, L2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeepFool {
    /// Maximum iterations.
    pub steps: u32,
    /// Overshoot applied to the accumulated perturbation.
    pub overshoot: f32,
    /// Number of most likely classes considered (including the label); 0: all.
    pub candidates: u32,
}

/// APGD (Croce & Hein): step-size-free PGD with momentum and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Apgd {
    /// Norm of the ball.
    pub norm: Norm,
    /// Radius of the ball.
    pub eps: f32,
    /// Iterations per run.
    pub steps: u32,
    /// Runs (restarts re-run only the survivors).
    pub restarts: u32,
    /// Loss: `ce` or `dlr` (untargeted). For targeted APGD use [`ApgdT`].
    pub loss: Loss,
    /// Decrease threshold ρ for halving the step.
    pub rho: f32,
}

/// Targeted APGD with the targeted DLR loss, over the most likely wrong classes in turn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ApgdT {
    /// Norm of the ball.
    pub norm: Norm,
    /// Radius of the ball.
    pub eps: f32,
    /// Iterations per target.
    pub steps: u32,
    /// Number of target classes tried (the most likely wrong ones first).
    pub target_classes: u32,
    /// Decrease threshold ρ for halving the step.
    pub rho: f32,
}

/// Square attack (Andriushchenko et al.): random search on the scores, query only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Square {
    /// Norm of the ball (L2 needs image-shaped inputs, `[H, W]` or `[C, H, W]`).
    pub norm: Norm,
    /// Radius of the ball.
    pub eps: f32,
    /// Query budget per sample (the initialisation counts as one).
    pub queries: u32,
    /// Initial fraction of the input changed per step.
    pub p_init: f32,
}

/// HopSkipJump (Chen et al.): decision-based, labels only, L2, untargeted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HopSkipJump {
    /// Maximum iterations (gradient estimate, step, boundary search).
    pub max_iter: u32,
    /// Query budget per sample; a sample stops when it is spent.
    pub max_queries: u32,
    /// Queries of the first gradient estimate (grows as √t).
    pub init_evals: u32,
    /// Cap on the queries of one gradient estimate.
    pub max_evals: u32,
    /// Random draws tried to find a first adversarial point.
    pub init_size: u32,
    /// γ, which sets the boundary-search precision θ = γ / d^{3/2}.
    pub gamma: f32,
}

/// The AutoAttack "standard" ensemble: APGD-CE, then APGD-T, then Square, each on the samples
/// the earlier ones did not fool; for each sample the first success is kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AutoAttack {
    /// Norm of the ball.
    pub norm: Norm,
    /// Radius of the ball.
    pub eps: f32,
    /// APGD iterations (100 in AutoAttack).
    pub apgd_steps: u32,
    /// APGD-T target classes (9 in AutoAttack).
    pub target_classes: u32,
    /// Square queries (5000 in AutoAttack); 0 leaves Square out.
    pub square_queries: u32,
}

/// One attack and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "attack", rename_all = "snake_case")]
pub enum AttackSpec {
    /// See [`Fgsm`].
    Fgsm(Fgsm),
    /// See [`Pgd`] (BIM is PGD without random start).
    Pgd(Pgd),
    /// See [`MiFgsm`].
    MiFgsm(MiFgsm),
    /// See [`CwL2`].
    CwL2(CwL2),
    /// See [`DeepFool`].
    DeepFool(DeepFool),
    /// See [`Apgd`].
    Apgd(Apgd),
    /// See [`ApgdT`].
    ApgdT(ApgdT),
    /// See [`Square`].
    Square(Square),
    /// See [`HopSkipJump`].
    HopSkipJump(HopSkipJump),
    /// See [`AutoAttack`].
    AutoAttack(AutoAttack),
}

impl AttackSpec {
    /// The attack's name, as in the JSON.
    pub fn name(&self) -> &'static str {
        match self {
            AttackSpec::Fgsm(_) => "fgsm",
            AttackSpec::Pgd(_) => "pgd",
            AttackSpec::MiFgsm(_) => "mi_fgsm",
            AttackSpec::CwL2(_) => "cw_l2",
            AttackSpec::DeepFool(_) => "deep_fool",
            AttackSpec::Apgd(_) => "apgd",
            AttackSpec::ApgdT(_) => "apgd_t",
            AttackSpec::Square(_) => "square",
            AttackSpec::HopSkipJump(_) => "hop_skip_jump",
            AttackSpec::AutoAttack(_) => "auto_attack",
        }
    }

    /// Norm the attack is bounded or measured in.
    pub fn norm(&self) -> Norm {
        match self {
            AttackSpec::Fgsm(a) => a.norm,
            AttackSpec::Pgd(a) => a.norm,
            AttackSpec::MiFgsm(_) => Norm::Linf,
            AttackSpec::CwL2(_) | AttackSpec::DeepFool(_) | AttackSpec::HopSkipJump(_) => Norm::L2,
            AttackSpec::Apgd(a) => a.norm,
            AttackSpec::ApgdT(a) => a.norm,
            AttackSpec::Square(a) => a.norm,
            AttackSpec::AutoAttack(a) => a.norm,
        }
    }

    /// The perturbation budget; `None` for minimal-perturbation attacks (C&W, DeepFool, HSJ).
    pub fn eps(&self) -> Option<f32> {
        match self {
            AttackSpec::Fgsm(a) => Some(a.eps),
            AttackSpec::Pgd(a) => Some(a.eps),
            AttackSpec::MiFgsm(a) => Some(a.eps),
            AttackSpec::Apgd(a) => Some(a.eps),
            AttackSpec::ApgdT(a) => Some(a.eps),
            AttackSpec::Square(a) => Some(a.eps),
            AttackSpec::AutoAttack(a) => Some(a.eps),
            AttackSpec::CwL2(_) | AttackSpec::DeepFool(_) | AttackSpec::HopSkipJump(_) => None,
        }
    }

    /// The same attack with another budget (for sweeps); step sizes keep their ratio to ε
    /// (when the template's ε is positive); minimal-perturbation attacks are unchanged.
    pub fn with_eps(mut self, eps: f32) -> Self {
        let rescale = |alpha: &mut f32, old: f32| {
            if old > 0.0 {
                *alpha *= eps / old;
            }
        };
        match &mut self {
            AttackSpec::Fgsm(a) => a.eps = eps,
            AttackSpec::Pgd(a) => {
                rescale(&mut a.alpha, a.eps);
                a.eps = eps;
            }
            AttackSpec::MiFgsm(a) => {
                rescale(&mut a.alpha, a.eps);
                a.eps = eps;
            }
            AttackSpec::Apgd(a) => a.eps = eps,
            AttackSpec::ApgdT(a) => a.eps = eps,
            AttackSpec::Square(a) => a.eps = eps,
            AttackSpec::AutoAttack(a) => a.eps = eps,
            AttackSpec::CwL2(_) | AttackSpec::DeepFool(_) | AttackSpec::HopSkipJump(_) => {}
        }
        self
    }

    /// Whether the attack needs gradients (white-box).
    pub fn needs_gradients(&self) -> bool {
        !matches!(self, AttackSpec::Square(_) | AttackSpec::HopSkipJump(_))
    }

    /// The targeting mode of the attack.
    pub fn target_mode(&self) -> TargetMode {
        match self {
            AttackSpec::Fgsm(a) => a.target,
            AttackSpec::Pgd(a) => a.target,
            AttackSpec::MiFgsm(a) => a.target,
            AttackSpec::CwL2(a) => a.target,
            _ => TargetMode::None,
        }
    }

    /// FGSM with the usual defaults.
    pub fn fgsm(eps: f32) -> Self {
        AttackSpec::Fgsm(Fgsm {
            norm: Norm::Linf,
            eps,
            target: TargetMode::None,
        })
    }

    /// PGD with Madry et al.'s step rule (α = 2.5·ε/steps), random start, one run, CE.
    pub fn pgd(norm: Norm, eps: f32, steps: u32) -> Self {
        AttackSpec::Pgd(Pgd {
            norm,
            eps,
            alpha: 2.5 * eps / steps.max(1) as f32,
            steps,
            random_start: true,
            restarts: 1,
            loss: Loss::Ce,
            target: TargetMode::None,
        })
    }

    /// C&W L2 with torchattacks' defaults (c 1, κ 0, 100 steps, lr 0.01, no binary search).
    pub fn cw_l2() -> Self {
        AttackSpec::CwL2(CwL2 {
            c: 1.0,
            kappa: 0.0,
            steps: 100,
            lr: 0.01,
            binary_search_steps: 1,
            abort_early: true,
            target: TargetMode::None,
        })
    }

    /// DeepFool with the paper's defaults (50 steps, overshoot 0.02, all classes).
    pub fn deep_fool() -> Self {
        AttackSpec::DeepFool(DeepFool {
            steps: 50,
            overshoot: 0.02,
            candidates: 0,
        })
    }

    /// APGD with AutoAttack's defaults (100 iterations, 1 run, ρ 0.75).
    pub fn apgd(norm: Norm, eps: f32, loss: Loss) -> Self {
        AttackSpec::Apgd(Apgd {
            norm,
            eps,
            steps: 100,
            restarts: 1,
            loss,
            rho: 0.75,
        })
    }

    /// Targeted APGD with AutoAttack's defaults (100 iterations, 9 targets).
    pub fn apgd_t(norm: Norm, eps: f32) -> Self {
        AttackSpec::ApgdT(ApgdT {
            norm,
            eps,
            steps: 100,
            target_classes: 9,
            rho: 0.75,
        })
    }

    /// Square with AutoAttack's defaults (p_init 0.8), `queries` per sample.
    pub fn square(norm: Norm, eps: f32, queries: u32) -> Self {
        AttackSpec::Square(Square {
            norm,
            eps,
            queries,
            p_init: 0.8,
        })
    }

    /// HopSkipJump with ART's defaults (init 100 evals, cap 10,000, γ 1) and a query budget.
    pub fn hop_skip_jump(max_queries: u32) -> Self {
        AttackSpec::HopSkipJump(HopSkipJump {
            max_iter: 50,
            max_queries,
            init_evals: 100,
            max_evals: 10_000,
            init_size: 100,
            gamma: 1.0,
        })
    }

    /// The AutoAttack standard ensemble (APGD-CE, APGD-T with 9 targets, Square 5000).
    pub fn auto_attack(norm: Norm, eps: f32) -> Self {
        AttackSpec::AutoAttack(AutoAttack {
            norm,
            eps,
            apgd_steps: 100,
            target_classes: 9,
            square_queries: 5000,
        })
    }
}

/// Which labels the attack moves away from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The true labels (torchattacks, and ART when labels are passed).
    #[default]
    TrueLabels,
    /// The model's own clean predictions (ART without labels; avoids label leaking).
    Predictions,
}

/// When an iterative attack stops working on a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stopping {
    /// A sample is dropped at its first success and that example is kept; samples misclassified
    /// from the start are not attacked. The fast way to a robust-accuracy answer.
    #[default]
    Early,
    /// Every sample runs every step, but the first success is kept: the same answer as `Early`,
    /// for checking it, at the cost of the full run.
    FirstSuccess,
    /// Every sample runs every step and the final iterate is returned (torchattacks' semantics,
    /// fixed work: the throughput benchmark).
    Fixed,
}

/// How to run an attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Seed of every random choice (random starts, targets, Square, HopSkipJump).
    pub seed: u64,
    /// Samples per model call.
    pub batch_size: usize,
    /// Which labels to attack.
    pub labels: LabelSource,
    /// Stopping rule of iterative attacks.
    pub stopping: Stopping,
    /// Explicit targets, for [`TargetMode::Given`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<usize>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 0,
            batch_size: 128,
            labels: LabelSource::TrueLabels,
            stopping: Stopping::Early,
            targets: None,
        }
    }
}
