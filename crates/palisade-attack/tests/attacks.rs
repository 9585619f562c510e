//! Attacks on a nonlinear model (a trained MLP with exact manual backprop) and on linear models
//! with analytic answers. Every test compares against something that could come out otherwise.

mod support;

use std::sync::OnceLock;

use palisade_attack::*;
use palisade_core::ndarray::{Array1, Array2, ArrayD, IxDyn, array};
use palisade_core::{Classifier, InputRange, LinearClassifier, Objective, value_and_grad};
use support::{BlackBox, CLASSES, Mlp, dataset};

fn model() -> &'static Mlp {
    static M: OnceLock<Mlp> = OnceLock::new();
    M.get_or_init(Mlp::trained)
}

fn data() -> &'static (ArrayD<f32>, Vec<usize>) {
    static D: OnceLock<(ArrayD<f32>, Vec<usize>)> = OnceLock::new();
    D.get_or_init(|| dataset(100, 99))
}

fn run(spec: AttackSpec, opts: &RunOptions) -> AttackOutput {
    let (x, y) = data();
    run_attack(model(), x.view(), Some(y), &spec, opts).unwrap()
}

fn robust(spec: AttackSpec) -> f32 {
    run(spec, &RunOptions::default())
        .report
        .robust_accuracy
        .unwrap()
}

fn pgd(norm: Norm, eps: f32, steps: u32, random_start: bool, restarts: u32) -> AttackSpec {
    AttackSpec::Pgd(Pgd {
        norm,
        eps,
        alpha: 2.5 * eps / steps as f32,
        steps,
        random_start,
        restarts,
        loss: Loss::Ce,
        target: TargetMode::None,
    })
}

#[test]
fn the_test_model_is_accurate_and_its_gradient_exact() {
    let (x, y) = data();
    let pred = model().predict(x.view()).unwrap();
    let acc = pred.iter().zip(y).filter(|(p, y)| p == y).count() as f32 / y.len() as f32;
    assert!(acc >= 0.9, "clean accuracy {acc}");
    // Finite differences of the summed CE against the manual backprop.
    let x2 = x
        .slice_axis(palisade_core::ndarray::Axis(0), (0..2).into())
        .to_owned();
    let obj = Objective::CrossEntropy { labels: &y[..2] };
    let vg = value_and_grad(model(), x2.view(), &obj).unwrap();
    let h = 1e-2f32;
    for k in (0..72).step_by(7) {
        let mut xp = x2.clone();
        let mut xm = x2.clone();
        xp.as_slice_mut().unwrap()[k] += h;
        xm.as_slice_mut().unwrap()[k] -= h;
        let fp = value_and_grad(model(), xp.view(), &obj).unwrap().loss.sum();
        let fm = value_and_grad(model(), xm.view(), &obj).unwrap().loss.sum();
        let fd = (fp - fm) / (2.0 * h);
        let g = vg.grad.as_slice().unwrap()[k];
        assert!(
            (fd - g).abs() < 2e-3 * (1.0 + g.abs()),
            "{k}: fd {fd} vs {g}"
        );
    }
}

#[test]
fn pgd_is_at_least_as_strong_as_fgsm_and_both_hurt() {
    for eps in [0.05f32, 0.1] {
        let fgsm = robust(AttackSpec::fgsm(eps));
        let pgd = robust(pgd(Norm::Linf, eps, 20, false, 1));
        let clean = run(AttackSpec::fgsm(eps), &RunOptions::default())
            .report
            .clean_accuracy
            .unwrap();
        assert!(pgd <= fgsm, "eps {eps}: PGD {pgd} > FGSM {fgsm}");
        assert!(
            fgsm < clean,
            "eps {eps}: FGSM {fgsm} did not reduce clean {clean}"
        );
    }
    // Larger budgets never help the model.
    let a = robust(pgd(Norm::Linf, 0.05, 20, false, 1));
    let b = robust(pgd(Norm::Linf, 0.15, 20, false, 1));
    assert!(b <= a && b < 0.5, "eps 0.05 → {a}, eps 0.15 → {b}");
}

fn assert_within(out: &AttackOutput, norm: Norm, eps: f32) {
    let (x, _) = data();
    let n = x.shape()[0];
    let d = x.len() / n;
    let xa = out.adversarial.as_slice().unwrap();
    let xc = x.as_slice().unwrap();
    assert!(
        xa.iter().all(|v| (0.0..=1.0).contains(v)),
        "{}: output outside [0, 1]",
        out.report.attack
    );
    for i in 0..n {
        let dl: Vec<f32> = (0..d).map(|j| xa[i * d + j] - xc[i * d + j]).collect();
        let size = match norm {
            Norm::Linf => dl.iter().fold(0.0f32, |m, v| m.max(v.abs())),
            Norm::L2 => dl.iter().map(|v| v * v).sum::<f32>().sqrt(),
        };
        assert!(
            size <= eps + 1e-6,
            "{} sample {i}: {norm} {size} > ε {eps}",
            out.report.attack
        );
    }
}

#[test]
fn every_budgeted_attack_stays_in_the_ball_and_the_range() {
    let li = 0.1f32;
    let l2 = 0.8f32;
    let specs = [
        (AttackSpec::fgsm(li), Norm::Linf, li),
        (
            AttackSpec::Fgsm(Fgsm {
                norm: Norm::L2,
                eps: l2,
                target: TargetMode::None,
            }),
            Norm::L2,
            l2,
        ),
        (pgd(Norm::Linf, li, 10, true, 2), Norm::Linf, li),
        (pgd(Norm::L2, l2, 10, true, 2), Norm::L2, l2),
        (
            AttackSpec::MiFgsm(MiFgsm {
                eps: li,
                alpha: 0.02,
                steps: 10,
                decay: 1.0,
                target: TargetMode::None,
            }),
            Norm::Linf,
            li,
        ),
        (
            AttackSpec::Apgd(Apgd {
                norm: Norm::Linf,
                eps: li,
                steps: 20,
                restarts: 2,
                loss: Loss::Ce,
                rho: 0.75,
            }),
            Norm::Linf,
            li,
        ),
        (
            AttackSpec::Apgd(Apgd {
                norm: Norm::L2,
                eps: l2,
                steps: 20,
                restarts: 1,
                loss: Loss::Dlr,
                rho: 0.75,
            }),
            Norm::L2,
            l2,
        ),
        (
            AttackSpec::ApgdT(ApgdT {
                norm: Norm::Linf,
                eps: li,
                steps: 20,
                target_classes: 3,
                rho: 0.75,
            }),
            Norm::Linf,
            li,
        ),
        (AttackSpec::square(Norm::Linf, li, 100), Norm::Linf, li),
        (AttackSpec::square(Norm::L2, l2, 100), Norm::L2, l2),
        (
            AttackSpec::AutoAttack(AutoAttack {
                norm: Norm::Linf,
                eps: li,
                apgd_steps: 20,
                target_classes: 3,
                square_queries: 100,
            }),
            Norm::Linf,
            li,
        ),
    ];
    for stopping in [Stopping::Early, Stopping::Fixed] {
        for (spec, norm, eps) in specs {
            let out = run(
                spec,
                &RunOptions {
                    stopping,
                    ..RunOptions::default()
                },
            );
            assert_within(&out, norm, eps);
            assert_eq!(out.report.eps, Some(eps));
            assert_eq!(out.report.norm, norm);
            let clean = out.report.clean_accuracy.unwrap();
            assert!(
                out.report.robust_accuracy.unwrap() < clean,
                "{} did not reduce accuracy {clean}",
                out.report.attack
            );
        }
    }
}

#[test]
fn stronger_attacks_are_stronger() {
    let eps = 0.08f32;
    let fgsm = robust(AttackSpec::fgsm(eps));
    let apgd = robust(AttackSpec::apgd(Norm::Linf, eps, Loss::Ce));
    let aa = robust(AttackSpec::AutoAttack(AutoAttack {
        norm: Norm::Linf,
        eps,
        apgd_steps: 50,
        target_classes: 4,
        square_queries: 200,
    }));
    assert!(apgd <= fgsm, "APGD {apgd} vs FGSM {fgsm}");
    assert!(aa <= apgd, "AutoAttack {aa} vs APGD-CE {apgd}");
}

#[test]
fn auto_attack_keeps_the_first_success_and_accounts_for_every_component() {
    let out = run(
        AttackSpec::AutoAttack(AutoAttack {
            norm: Norm::Linf,
            eps: 0.06,
            apgd_steps: 30,
            target_classes: 4,
            square_queries: 100,
        }),
        &RunOptions::default(),
    );
    let by_components: usize = out.report.components.iter().map(|c| c.fooled).sum();
    assert_eq!(by_components, out.report.fooled);
    assert_eq!(out.report.components[0].attack, "apgd_ce");
    assert!(out.report.components[0].fooled > 0);
}

#[test]
fn deep_fool_reaches_the_analytic_minimal_distance_on_a_linear_model() {
    // Three classes in 4-D, range wide enough that clipping never binds.
    let w = array![
        [1.0f32, 0.5, -0.3, 0.2],
        [-0.4, 1.2, 0.7, -0.5],
        [0.3, -0.8, 1.1, 0.9]
    ];
    let b = array![0.1f32, -0.2, 0.05];
    let range = InputRange {
        min: -10.0,
        max: 10.0,
    };
    let m = LinearClassifier::new("lin", vec![4], range, w.clone(), b.clone()).unwrap();
    let mut g = support::Lcg::new(5);
    let n = 40;
    let x = ArrayD::from_shape_fn(IxDyn(&[n, 4]), |_| g.gauss());
    let pred = m.predict(x.view()).unwrap();
    let spec = AttackSpec::DeepFool(DeepFool {
        steps: 50,
        overshoot: 0.0,
        candidates: 0,
    });
    let out = run_attack(
        &m,
        x.view(),
        None,
        &spec,
        &RunOptions {
            labels: LabelSource::Predictions,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        out.report.fooled, n,
        "DeepFool must fool every sample of a linear model"
    );
    for (i, s) in out.samples.iter().enumerate() {
        let xi: Array1<f32> = (0..4).map(|j| x[[i, j]]).collect();
        let y = pred[i];
        let dmin = (0..3)
            .filter(|&k| k != y)
            .map(|k| {
                let dw = &w.row(y) - &w.row(k);
                let f = dw.dot(&xi) + b[y] - b[k];
                f.abs() / dw.dot(&dw).sqrt()
            })
            .fold(f32::INFINITY, f32::min);
        assert!(
            (s.l2 - dmin).abs() <= 2e-3 * (1.0 + dmin),
            "sample {i}: DeepFool L2 {} vs analytic minimum {dmin}",
            s.l2
        );
    }
}

#[test]
fn deep_fool_fools_nearly_everything_on_the_mlp_with_small_perturbations() {
    let out = run(AttackSpec::deep_fool(), &RunOptions::default());
    assert!(
        out.report.success_rate >= 0.98,
        "success {}",
        out.report.success_rate
    );
    // Near-minimal: within 1.5× of C&W with a binary search (the strongest L2 attack here).
    let cw = run(
        AttackSpec::CwL2(CwL2 {
            c: 1.0,
            kappa: 0.0,
            steps: 200,
            lr: 0.05,
            binary_search_steps: 6,
            abort_early: true,
            target: TargetMode::None,
        }),
        &RunOptions::default(),
    );
    let (df, cw) = (
        out.report.perturbation.l2.median,
        cw.report.perturbation.l2.median,
    );
    assert!(
        df < 1.5 * cw && df > 0.0,
        "DeepFool median L2 {df} vs C&W {cw}"
    );
}

#[test]
fn cw_finds_smaller_perturbations_than_pgd_l2() {
    let eps = 1.5f32;
    let pgd = run(
        pgd(Norm::L2, eps, 40, false, 1),
        &RunOptions {
            stopping: Stopping::Fixed,
            ..RunOptions::default()
        },
    );
    let cw = run(
        AttackSpec::CwL2(CwL2 {
            c: 1.0,
            kappa: 0.0,
            steps: 200,
            lr: 0.05,
            binary_search_steps: 6,
            abort_early: true,
            target: TargetMode::None,
        }),
        &RunOptions::default(),
    );
    assert!(
        cw.report.success_rate >= 0.9,
        "C&W success {}",
        cw.report.success_rate
    );
    assert!(
        pgd.report.success_rate >= 0.9,
        "PGD success {}",
        pgd.report.success_rate
    );
    let (c, p) = (
        cw.report.perturbation.l2.median,
        pgd.report.perturbation.l2.median,
    );
    assert!(c < p, "C&W median L2 {c} not below PGD-L2's {p}");
}

#[test]
fn cw_binary_search_shrinks_the_perturbation() {
    let one = run(
        AttackSpec::CwL2(CwL2 {
            c: 10.0,
            kappa: 0.0,
            steps: 100,
            lr: 0.05,
            binary_search_steps: 1,
            abort_early: false,
            target: TargetMode::None,
        }),
        &RunOptions::default(),
    );
    let many = run(
        AttackSpec::CwL2(CwL2 {
            c: 10.0,
            kappa: 0.0,
            steps: 100,
            lr: 0.05,
            binary_search_steps: 6,
            abort_early: false,
            target: TargetMode::None,
        }),
        &RunOptions::default(),
    );
    assert!(many.report.fooled >= one.report.fooled);
    assert!(many.report.perturbation.l2.median < one.report.perturbation.l2.median);
}

#[test]
fn black_box_attacks_reduce_accuracy_and_count_queries() {
    let (x, y) = data();
    let bb = BlackBox(model().clone());
    let sq = run_attack(
        &bb,
        x.view(),
        Some(y),
        &AttackSpec::square(Norm::Linf, 0.15, 300),
        &RunOptions::default(),
    )
    .unwrap();
    let clean = sq.report.clean_accuracy.unwrap();
    assert!(
        sq.report.robust_accuracy.unwrap() < clean - 0.3,
        "Square: {:?} from {clean}",
        sq.report.robust_accuracy
    );
    let q = sq.report.queries.unwrap();
    assert!(q.total > 0 && q.mean_per_sample <= 300.0 && q.median_to_success >= 1.0);
    assert!(sq.samples.iter().all(|s| s.queries <= 300));
    assert_eq!(sq.report.gradient_evaluations, 0);

    let short = AttackSpec::HopSkipJump(HopSkipJump {
        max_iter: 1,
        max_queries: 3000,
        init_evals: 50,
        max_evals: 400,
        init_size: 100,
        gamma: 1.0,
    });
    let long = AttackSpec::HopSkipJump(HopSkipJump {
        max_iter: 25,
        max_queries: 3000,
        init_evals: 50,
        max_evals: 400,
        init_size: 100,
        gamma: 1.0,
    });
    let a = run_attack(&bb, x.view(), Some(y), &short, &RunOptions::default()).unwrap();
    let b = run_attack(&bb, x.view(), Some(y), &long, &RunOptions::default()).unwrap();
    assert!(
        b.report.robust_accuracy.unwrap() <= 0.05,
        "HSJ robust accuracy {:?}",
        b.report.robust_accuracy
    );
    assert!(b.samples.iter().all(|s| s.queries <= 3000));
    assert!(b.report.queries.unwrap().total > a.report.queries.unwrap().total);
    assert!(
        b.report.perturbation.l2.median < 0.8 * a.report.perturbation.l2.median,
        "HSJ did not shrink the perturbation: {} → {}",
        a.report.perturbation.l2.median,
        b.report.perturbation.l2.median
    );
    assert_within(&b, Norm::L2, 6.0);
}

#[test]
fn early_stopping_gives_the_answer_of_the_full_run_with_less_work() {
    for spec in [
        pgd(Norm::Linf, 0.07, 20, true, 3),
        pgd(Norm::L2, 0.6, 20, true, 2),
        AttackSpec::Apgd(Apgd {
            norm: Norm::Linf,
            eps: 0.07,
            steps: 30,
            restarts: 2,
            loss: Loss::Dlr,
            rho: 0.75,
        }),
        AttackSpec::ApgdT(ApgdT {
            norm: Norm::Linf,
            eps: 0.07,
            steps: 20,
            target_classes: 3,
            rho: 0.75,
        }),
    ] {
        let early = run(
            spec,
            &RunOptions {
                stopping: Stopping::Early,
                ..RunOptions::default()
            },
        );
        let full = run(
            spec,
            &RunOptions {
                stopping: Stopping::FirstSuccess,
                ..RunOptions::default()
            },
        );
        assert_eq!(
            early.report.robust_accuracy,
            full.report.robust_accuracy,
            "{}",
            spec.name()
        );
        let se: Vec<bool> = early.samples.iter().map(|s| s.success).collect();
        let sf: Vec<bool> = full.samples.iter().map(|s| s.success).collect();
        assert_eq!(se, sf, "{}", spec.name());
        assert!(
            early.report.gradient_evaluations < full.report.gradient_evaluations,
            "{}: early {} vs full {}",
            spec.name(),
            early.report.gradient_evaluations,
            full.report.gradient_evaluations
        );
    }
}

#[test]
fn fixed_stopping_does_the_full_work() {
    let steps = 10;
    let out = run(
        pgd(Norm::Linf, 0.1, steps, false, 1),
        &RunOptions {
            stopping: Stopping::Fixed,
            ..RunOptions::default()
        },
    );
    assert_eq!(out.report.attacked, 100);
    assert_eq!(out.report.gradient_evaluations, 100 * u64::from(steps));
}

#[test]
fn seeds_reproduce_whatever_the_batch_size() {
    for spec in [
        pgd(Norm::Linf, 0.06, 10, true, 2),
        AttackSpec::square(Norm::Linf, 0.08, 50),
        AttackSpec::square(Norm::L2, 0.6, 50),
    ] {
        let a = run(
            spec,
            &RunOptions {
                seed: 4,
                batch_size: 100,
                ..RunOptions::default()
            },
        );
        let b = run(
            spec,
            &RunOptions {
                seed: 4,
                batch_size: 7,
                ..RunOptions::default()
            },
        );
        let c = run(
            spec,
            &RunOptions {
                seed: 5,
                batch_size: 100,
                ..RunOptions::default()
            },
        );
        assert_eq!(a.adversarial, b.adversarial, "{}", spec.name());
        assert_ne!(a.adversarial, c.adversarial, "{}", spec.name());
        assert_eq!(a.report.seed, 4);
    }
}

#[test]
fn targeted_attacks_reach_their_targets() {
    let spec = AttackSpec::Pgd(Pgd {
        norm: Norm::Linf,
        eps: 0.25,
        alpha: 0.02,
        steps: 40,
        random_start: false,
        restarts: 1,
        loss: Loss::Ce,
        target: TargetMode::Random,
    });
    let out = run(spec, &RunOptions::default());
    assert!(
        out.report.success_rate > 0.8,
        "targeted success {}",
        out.report.success_rate
    );
    for s in &out.samples {
        let t = s.target.unwrap();
        assert_ne!(t, s.label);
        if s.success {
            assert_eq!(s.adversarial_prediction, t);
        }
    }
    let (_, y) = data();
    let targets: Vec<usize> = y.iter().map(|&c| (c + 1) % CLASSES).collect();
    let given = run(
        AttackSpec::Pgd(Pgd {
            target: TargetMode::Given,
            ..match spec {
                AttackSpec::Pgd(p) => p,
                _ => unreachable!(),
            }
        }),
        &RunOptions {
            targets: Some(targets.clone()),
            ..RunOptions::default()
        },
    );
    assert!(
        given
            .samples
            .iter()
            .zip(&targets)
            .all(|(s, &t)| s.target == Some(t))
    );
}

#[test]
fn the_report_says_which_labels_were_attacked() {
    let (x, _) = data();
    let spec = AttackSpec::fgsm(0.1);
    let out = run_attack(
        model(),
        x.view(),
        None,
        &spec,
        &RunOptions {
            labels: LabelSource::Predictions,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(out.report.labels, LabelSource::Predictions);
    assert_eq!(out.report.clean_accuracy, None);
    assert!(out.samples.iter().all(|s| s.label == s.clean_prediction));
    let err = run_attack(model(), x.view(), None, &spec, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, AttackError::Labels(_)), "{err}");

    let out = run(
        pgd(Norm::Linf, 0.1, 7, true, 2),
        &RunOptions {
            seed: 9,
            ..RunOptions::default()
        },
    );
    let v: serde_json::Value = serde_json::to_value(&out.report).unwrap();
    assert_eq!(v["norm"], "linf");
    assert_eq!(v["steps"], 7);
    assert_eq!(v["restarts"], 2);
    assert_eq!(v["seed"], 9);
    assert_eq!(v["labels"], "true_labels");
    assert_eq!(v["parameters"]["attack"], "pgd");
    assert!((v["step_size"].as_f64().unwrap() - 2.5 * 0.1 / 7.0).abs() < 1e-6);
    let back: AttackReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, out.report);
}

#[test]
fn bad_input_is_an_error_never_a_clamp() {
    let (x, y) = data();
    let m = model();
    let o = RunOptions::default();
    let e = |spec: AttackSpec| run_attack(m, x.view(), Some(y), &spec, &o).unwrap_err();
    assert!(matches!(
        e(AttackSpec::fgsm(-0.1)),
        AttackError::Epsilon { .. }
    ));
    assert!(
        matches!(e(AttackSpec::fgsm(8.0)), AttackError::Epsilon { .. }),
        "8 means 8/255: rejected"
    );
    assert!(matches!(
        e(AttackSpec::fgsm(f32::NAN)),
        AttackError::Epsilon { .. }
    ));
    assert!(
        matches!(
            e(pgd(Norm::L2, 7.0, 10, false, 1)),
            AttackError::Epsilon { .. }
        ),
        "L2 ε above √36"
    );
    assert!(matches!(
        e(AttackSpec::Pgd(Pgd {
            steps: 0,
            ..match pgd(Norm::Linf, 0.1, 1, false, 1) {
                AttackSpec::Pgd(p) => p,
                _ => unreachable!(),
            }
        })),
        AttackError::Parameter { .. }
    ));

    let mut bad = x.clone();
    bad.as_slice_mut().unwrap()[40] = 1.5;
    let err = run_attack(m, bad.view(), Some(y), &AttackSpec::fgsm(0.1), &o).unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::OutOfRange {
                index: 40,
                sample: 1,
                ..
            }
        ),
        "{err}"
    );
    bad.as_slice_mut().unwrap()[40] = f32::NAN;
    assert!(matches!(
        run_attack(m, bad.view(), Some(y), &AttackSpec::fgsm(0.1), &o),
        Err(AttackError::OutOfRange { .. })
    ));

    let wrong = ArrayD::<f32>::zeros(IxDyn(&[3, 1, 5, 5]));
    assert!(matches!(
        run_attack(
            m,
            wrong.view(),
            Some(&[0, 1, 2]),
            &AttackSpec::fgsm(0.1),
            &o
        ),
        Err(AttackError::Shape { .. })
    ));
    assert!(matches!(
        run_attack(m, x.view(), Some(&y[..5]), &AttackSpec::fgsm(0.1), &o),
        Err(AttackError::Labels(_))
    ));
    let mut yb = y.clone();
    yb[3] = CLASSES;
    assert!(matches!(
        run_attack(m, x.view(), Some(&yb), &AttackSpec::fgsm(0.1), &o),
        Err(AttackError::Labels(_))
    ));

    let bb = BlackBox(m.clone());
    let err = run_attack(&bb, x.view(), Some(y), &AttackSpec::fgsm(0.1), &o).unwrap_err();
    assert!(
        matches!(err, AttackError::NotDifferentiable { .. }),
        "{err}"
    );
    // Square L2 on flat (tabular) inputs is refused with a reason.
    let lin = LinearClassifier::new(
        "lin",
        vec![4],
        InputRange::default(),
        Array2::eye(4),
        Array1::zeros(4),
    )
    .unwrap();
    let xt = ArrayD::from_elem(IxDyn(&[2, 4]), 0.5f32);
    assert!(matches!(
        run_attack(
            &lin,
            xt.view(),
            Some(&[0, 1]),
            &AttackSpec::square(Norm::L2, 0.5, 10),
            &o
        ),
        Err(AttackError::Parameter { .. })
    ));
}

#[test]
fn robustness_curves_fall_with_epsilon() {
    let (x, y) = data();
    let suite = vec![
        (
            pgd(Norm::Linf, 0.1, 10, false, 1),
            vec![0.0, 0.03, 0.06, 0.1],
        ),
        (AttackSpec::deep_fool(), vec![0.0, 0.3, 0.6, 1.0]),
    ];
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let rep = robustness(
        model(),
        x.view(),
        y,
        &suite,
        &RunOptions::default(),
        &|_, _| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(calls.into_inner(), 4);
    assert_eq!(rep.curves.len(), 2);
    for c in &rep.curves {
        assert_eq!(
            c.points[0].robust_accuracy, rep.clean_accuracy,
            "{}",
            c.attack
        );
        for w in c.points.windows(2) {
            assert!(
                w[1].robust_accuracy <= w[0].robust_accuracy,
                "{}: {:?}",
                c.attack,
                c.points
            );
        }
        assert!(c.points.last().unwrap().robust_accuracy < rep.clean_accuracy);
    }
}
