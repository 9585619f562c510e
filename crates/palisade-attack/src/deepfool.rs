//! DeepFool (Moosavi-Dezfooli et al., 2016), L2: step to the nearest boundary of the linearised
//! classifier, accumulate, overshoot, repeat until the label changes.

use ndarray::{Array2, Axis, Zip};
use palisade_core::Objective;

use crate::oracle::{Batch, Found, reached};
use crate::tensor::{l2, pick, rows};
use crate::{AttackError, DeepFool};

pub(crate) fn run(p: &DeepFool, b: &Batch<'_>) -> Result<Found, AttackError> {
    let o = b.oracle;
    let range = o.range;
    let classes = o.classes;
    let n = b.len();
    let mut found = Found::clean(b);
    let k = if p.candidates == 0 {
        classes
    } else {
        (p.candidates as usize).clamp(2, classes)
    };
    // Candidate classes: the k−1 most likely classes other than the label, on the clean input.
    let clean = o.logits(b.x.view())?;
    let mut cands: Vec<Vec<usize>> = clean
        .axis_iter(Axis(0))
        .zip(&b.goals)
        .map(|(r, g)| {
            let mut ix: Vec<usize> = (0..classes).filter(|&c| c != g.label).collect();
            ix.sort_by(|&a, &c| r[c].total_cmp(&r[a]));
            ix.truncate(k - 1);
            ix
        })
        .collect();
    let mut idx: Vec<usize> = (0..n).collect();
    let mut x0 = b.x.clone();
    let mut xa = b.x.clone();
    let mut r_tot = Array2::<f32>::zeros(xa.dim());
    let mut goals = b.goals.clone();
    let mut logits = clean;
    for it in 0..=p.steps {
        let succ = reached(&logits, &goals);
        for (r, &s) in succ.iter().enumerate() {
            if s {
                found.success[idx[r]] = true;
                found.adv.row_mut(idx[r]).assign(&xa.row(r));
            }
        }
        if succ.iter().any(|&s| s) {
            let keep: Vec<usize> = (0..idx.len()).filter(|&r| !succ[r]).collect();
            idx = pick(&idx, &keep);
            x0 = rows(&x0, &keep);
            xa = rows(&xa, &keep);
            r_tot = rows(&r_tot, &keep);
            goals = pick(&goals, &keep);
            cands = pick(&cands, &keep);
        }
        if idx.is_empty() || it == p.steps {
            break;
        }
        let m = idx.len();
        let mut best = vec![f32::INFINITY; m];
        let mut step = Array2::<f32>::zeros(xa.dim());
        for j in 0..k - 1 {
            let mut wts = Array2::<f32>::zeros((m, classes));
            for r in 0..m {
                wts[[r, cands[r][j]]] += 1.0;
                wts[[r, goals[r].label]] -= 1.0;
            }
            let (_, f, g) = o.value_and_grad(xa.view(), &Objective::Weighted(wts.view()))?;
            for r in 0..m {
                let wn = l2(g.row(r));
                if wn <= 0.0 {
                    continue;
                }
                let ratio = f[r].abs() / wn;
                if ratio < best[r] {
                    best[r] = ratio;
                    let scale = (ratio + 1e-4) / wn;
                    Zip::from(step.row_mut(r))
                        .and(g.row(r))
                        .for_each(|s, &gv| *s = scale * gv);
                }
            }
        }
        r_tot += &step;
        Zip::from(&mut xa)
            .and(&x0)
            .and(&r_tot)
            .for_each(|a, &x, &rt| *a = (x + (1.0 + p.overshoot) * rt).clamp(range.min, range.max));
        logits = o.logits(xa.view())?;
    }
    for (r, &i) in idx.iter().enumerate() {
        found.adv.row_mut(i).assign(&xa.row(r));
    }
    Ok(found)
}
