//! Evaluation of any model's outputs against example labels: segment
//! accuracy and macro-F1, AUC and calibration error of the purchase and churn
//! probabilities, and spend error. The same code judges the Transformer, the
//! baselines and the current champion.

use std::collections::BTreeMap;

use super::examples::Labels;
use crate::model::reference::Outputs;
use crate::model::Segment;

/// Metric names, in report order, and whether higher is better.
pub const METRICS: [(&str, bool); 10] = [
    ("segment_accuracy", true),
    ("segment_macro_f1", true),
    ("purchase_auc", true),
    ("churn_auc", true),
    ("purchase_calibration_error", false),
    ("churn_calibration_error", false),
    ("spend_mae", false),
    ("spend_log_rmse", false),
    ("spend_sum_ratio", true),
    ("examples", true),
];

/// Scores `out` (one row per label) against `labels`.
pub fn evaluate(out: &Outputs, labels: &[Labels], segments: usize) -> BTreeMap<String, f64> {
    let n = labels.len();
    let mut m = BTreeMap::new();
    let predicted: Vec<usize> = (0..n)
        .map(|i| {
            crate::decide::argmax(&out.segment_probs[i * segments..(i + 1) * segments]).unwrap_or(0)
        })
        .collect();
    let truth: Vec<usize> = labels.iter().map(|l| l.segment.index()).collect();
    let correct = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
    m.insert("segment_accuracy".into(), ratio(correct, n));
    m.insert(
        "segment_macro_f1".into(),
        macro_f1(&predicted, &truth, segments.max(Segment::COUNT)),
    );
    let bought: Vec<bool> = labels.iter().map(|l| l.purchased).collect();
    let churned: Vec<bool> = labels.iter().map(|l| l.churned).collect();
    m.insert(
        "purchase_auc".into(),
        auc(&out.purchase_probability, &bought),
    );
    m.insert("churn_auc".into(), auc(&out.churn_probability, &churned));
    m.insert(
        "purchase_calibration_error".into(),
        calibration_error(&out.purchase_probability, &bought),
    );
    m.insert(
        "churn_calibration_error".into(),
        calibration_error(&out.churn_probability, &churned),
    );
    let (mut abs, mut sq, mut total_p, mut total_y) = (0f64, 0f64, 0f64, 0f64);
    for (p, l) in out.predicted_spend.iter().zip(labels) {
        let y = l.spend_minor.max(0) as f64;
        let p = f64::from(p.max(0.0));
        abs += (p - y).abs() / 100.0;
        sq += (p.ln_1p() - y.ln_1p()).powi(2);
        total_p += p;
        total_y += y;
    }
    // Predicted over actual spend, summed over the examples: 1 when the
    // spend head is an unbiased expected value.
    if total_y > 0.0 {
        m.insert("spend_sum_ratio".into(), total_p / total_y);
    }
    m.insert("spend_mae".into(), abs / n.max(1) as f64);
    m.insert("spend_log_rmse".into(), (sq / n.max(1) as f64).sqrt());
    m.insert("examples".into(), n as f64);
    m
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Macro-averaged F1 over the classes that occur in the labels or the
/// predictions.
pub fn macro_f1(predicted: &[usize], truth: &[usize], classes: usize) -> f64 {
    let mut tp = vec![0usize; classes];
    let mut fp = vec![0usize; classes];
    let mut fneg = vec![0usize; classes];
    for (&p, &t) in predicted.iter().zip(truth) {
        if p == t {
            tp[t] += 1;
        } else {
            fp[p] += 1;
            fneg[t] += 1;
        }
    }
    let mut sum = 0.0;
    let mut present = 0;
    for k in 0..classes {
        if tp[k] + fp[k] + fneg[k] == 0 {
            continue;
        }
        present += 1;
        let denom = 2 * tp[k] + fp[k] + fneg[k];
        sum += ratio(2 * tp[k], denom);
    }
    if present == 0 {
        0.0
    } else {
        sum / present as f64
    }
}

/// Area under the ROC curve (Mann-Whitney, ties counted half); 0.5 when one
/// class is absent.
pub fn auc(scores: &[f32], positive: &[bool]) -> f64 {
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * pairs[i..=j].iter().filter(|p| p.1).count() as f64;
        i = j + 1;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Expected calibration error over 10 equal-width probability bins.
pub fn calibration_error(probs: &[f32], positive: &[bool]) -> f64 {
    let mut bins = [(0f64, 0f64, 0usize); 10];
    for (&p, &y) in probs.iter().zip(positive) {
        let b = ((p.clamp(0.0, 1.0) * 10.0) as usize).min(9);
        bins[b].0 += f64::from(p);
        bins[b].1 += f64::from(u8::from(y));
        bins[b].2 += 1;
    }
    let n = probs.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|(p, y, _)| (p - y).abs() / n)
        .sum()
}

/// A Markdown table: one row per metric, one column per model.
pub fn table(models: &[(&str, &BTreeMap<String, f64>)]) -> String {
    let mut s = String::from("| metric |");
    for (name, _) in models {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n| --- |");
    for _ in models {
        s.push_str(" ---: |");
    }
    s.push('\n');
    for (metric, higher) in METRICS {
        let arrow = if metric == "examples" {
            ""
        } else if metric == "spend_sum_ratio" {
            " (→1)"
        } else if higher {
            " (↑)"
        } else {
            " (↓)"
        };
        s.push_str(&format!("| {metric}{arrow} |"));
        for (_, m) in models {
            match m.get(metric) {
                Some(v) if metric == "examples" => s.push_str(&format!(" {v:.0} |")),
                Some(v) => s.push_str(&format!(" {v:.4} |")),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_reversed_rankings() {
        let y = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &y), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &y), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &y), 0.5);
        assert_eq!(auc(&[0.1, 0.6, 0.5, 0.9], &y), 0.75);
    }

    #[test]
    fn macro_f1_averages_classes() {
        assert_eq!(macro_f1(&[0, 1, 2], &[0, 1, 2], 5), 1.0);
        // Class 0: tp 1, fn 1 → 2/3; class 1: fp 1 → 0.
        let f = macro_f1(&[0, 1], &[0, 0], 5);
        assert!((f - (2.0 / 3.0) / 2.0).abs() < 1e-12, "{f}");
    }

    #[test]
    fn calibration_error_is_zero_when_frequencies_match() {
        let p = [0.25f32; 8];
        let y = [true, false, false, false, true, false, false, false];
        assert!(calibration_error(&p, &y).abs() < 1e-9);
        assert!((calibration_error(&[0.9, 0.9], &[false, false]) - 0.9).abs() < 1e-6);
    }
}
