//! Evasion attacks on the Palisade classifier abstraction, and robustness evaluation.
//!
//! White-box attacks (FGSM, BIM/PGD in L∞ and L2, MI-FGSM, C&W L2, DeepFool, APGD-CE/DLR,
//! APGD-T, the AutoAttack standard ensemble) use [`palisade_core::Differentiable`] through
//! [`palisade_core::value_and_grad`]; black-box attacks (Square on scores, HopSkipJump on labels)
//! only call [`palisade_core::Classifier::logits`] and count every query. Any backend works: a
//! native network, an ONNX file, a remote endpoint.
//!
//! Semantics are explicit:
//! - inputs lie in the model's declared [`palisade_core::InputRange`]; data outside it is an
//!   error ([`AttackError::OutOfRange`]), never clamped; every example is clipped to it;
//! - ε is in input units and checked ([`AttackError::Epsilon`]);
//! - the report says which labels were attacked ([`LabelSource`]), with every parameter and the
//!   seed; the same seed gives the same examples whatever the batch size or thread count.
//!
//! Work is not wasted: under [`Stopping::Early`] a sample leaves the iteration at its first
//! success, samples misclassified from the start are not attacked, and restarts and ensemble
//! members only run on the survivors.
//!
//! ```
//! use palisade_attack::{AttackSpec, Norm, RunOptions, run_attack};
//! use palisade_core::{InputRange, LinearClassifier, ndarray::{Array, array}};
//!
//! let w = array![[1.0f32, -1.0], [-1.0, 1.0]];
//! let model = LinearClassifier::new("toy", vec![2], InputRange::default(), w, array![0.0, 0.0]).unwrap();
//! let x = array![[0.6f32, 0.4], [0.3, 0.7]].into_dyn();
//! let out = run_attack(&model, x.view(), Some(&[0, 1]), &AttackSpec::pgd(Norm::Linf, 0.2, 10),
//!                      &RunOptions::default()).unwrap();
//! assert_eq!(out.report.robust_accuracy, Some(0.0));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apgd;
mod cw;
mod deepfool;
mod error;
mod hsj;
mod oracle;
mod pgd;
mod run;
mod spec;
mod square;
mod sweep;
mod tensor;

pub use error::AttackError;
pub use run::{
    AttackOutput, AttackReport, ComponentReport, PerturbationStats, QueryStats, SampleResult,
    Stats, run_attack,
};
pub use spec::{
    Apgd, ApgdT, AttackSpec, AutoAttack, CwL2, DeepFool, Fgsm, HopSkipJump, LabelSource, Loss,
    MiFgsm, Norm, Pgd, RunOptions, Square, Stopping, TargetMode,
};
pub use sweep::{Curve, CurvePoint, RobustnessReport, robustness};
