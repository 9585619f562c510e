//! Renders a robustness report built by hand and checks what a reader would check.

use palisade_attack::{AttackSpec, Curve, CurvePoint, Norm, RobustnessReport, RunOptions};
use palisade_report::{
    ReportError, robustness_html, robustness_png, robustness_svg, write_robustness,
};

fn report() -> RobustnessReport {
    let pts = |v: &[(f32, f32)]| {
        v.iter()
            .map(|&(eps, a)| CurvePoint {
                eps,
                robust_accuracy: a,
                median_l2: eps * 5.0,
                seconds: 0.5,
            })
            .collect()
    };
    RobustnessReport {
        model: "mnist<cnn>".into(),
        samples: 1000,
        clean_accuracy: 0.983,
        options: RunOptions::default(),
        curves: vec![
            Curve {
                attack: "fgsm".into(),
                norm: Norm::Linf,
                parameters: AttackSpec::fgsm(0.3),
                points: pts(&[(0.0, 0.983), (0.1, 0.808), (0.2, 0.3), (0.3, 0.025)]),
            },
            Curve {
                attack: "pgd".into(),
                norm: Norm::Linf,
                parameters: AttackSpec::pgd(Norm::Linf, 0.3, 40),
                points: pts(&[(0.0, 0.983), (0.1, 0.67), (0.2, 0.05), (0.3, 0.0)]),
            },
            Curve {
                attack: "deep_fool".into(),
                norm: Norm::L2,
                parameters: AttackSpec::deep_fool(),
                points: pts(&[(0.0, 0.983), (1.0, 0.8), (2.0, 0.2), (3.0, 0.01)]),
            },
        ],
        seconds: 12.5,
    }
}

#[test]
fn png_is_a_png_of_two_panels() {
    let png = robustness_png(&report()).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR width and height, big-endian at bytes 16..24.
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (1520, 520));
    let mut one = report();
    one.curves.retain(|c| c.norm == Norm::Linf);
    let png1 = robustness_png(&one).unwrap();
    assert_eq!(u32::from_be_bytes(png1[16..20].try_into().unwrap()), 760);
}

#[test]
fn svg_and_html_carry_the_figures_and_escape_names() {
    let r = report();
    let svg = robustness_svg(&r).unwrap();
    assert!(svg.contains("<svg") && svg.contains("pgd") && svg.contains("deep_fool"));
    let html = robustness_html(&r, &svg).unwrap();
    assert!(html.contains("98.3%"), "clean accuracy shown");
    assert!(html.contains("2.5%"), "FGSM at 0.3 shown");
    assert!(html.contains("mnist&lt;cnn&gt;"), "model name escaped");
    assert!(html.contains("<svg"), "chart inline");
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("http://") || html.contains("www.w3.org"),
        "nothing fetched"
    );
}

#[test]
fn empty_reports_are_refused_and_nothing_is_written() {
    let mut r = report();
    r.curves.clear();
    assert!(matches!(
        robustness_png(&r),
        Err(ReportError::NothingToPlot)
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    assert!(write_robustness(&r, &out, "robustness").is_err());
    assert!(!out.exists());
}

#[test]
fn write_robustness_writes_four_files() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_robustness(&report(), &dir.path().join("r"), "robustness").unwrap();
    for p in [&w.json, &w.png, &w.svg, &w.html] {
        assert!(std::fs::metadata(p).unwrap().len() > 100, "{}", p.display());
    }
    let back: RobustnessReport = serde_json::from_slice(&std::fs::read(&w.json).unwrap()).unwrap();
    assert_eq!(back, report());
    let leftovers = std::fs::read_dir(dir.path().join("r"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        });
    assert_eq!(leftovers.count(), 0);
    if let Ok(keep) = std::env::var("PALISADE_KEEP_PLOT") {
        std::fs::copy(&w.png, keep).unwrap();
    }
}
