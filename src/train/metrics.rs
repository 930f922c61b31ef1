//! Evaluation of any model's outputs against example labels: segment
//! accuracy and macro-F1, AUC and calibration error of the purchase and churn
//! probabilities, and spend error. The same code judges the Transformer, the
//! baselines and the current champion.

use std::collections::BTreeMap;

use super::examples::Labels;
use crate::model::reference::Outputs;
use crate::model::Segment;

/// Metric names, in report order, and whether higher is better.
pub const METRICS: [(&str, bool); 11] = [
    ("segment_accuracy", true),
    ("segment_macro_f1", true),
    ("purchase_auc", true),
    ("churn_auc", true),
    ("purchase_calibration_error", false),
    ("churn_calibration_error", false),
    ("spend_mae", false),
    ("spend_log_rmse", false),
    ("spend_sum_ratio", true),
    ("spend_max_ratio", false),
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
    let (mut max_p, mut max_y) = (0f64, 0f64);
    for (p, l) in out.predicted_spend.iter().zip(labels) {
        let y = l.spend_minor.max(0) as f64;
        let p = f64::from(p.max(0.0));
        abs += (p - y).abs() / 100.0;
        sq += (p.ln_1p() - y.ln_1p()).powi(2);
        total_p += p;
        total_y += y;
        max_p = max_p.max(p);
        max_y = max_y.max(y);
    }
    // The largest single prediction over the largest actual spend: an
    // expected value stays below 1; far above, the head explodes on a
    // heavy tail.
    if max_y > 0.0 {
        m.insert("spend_max_ratio".into(), max_p / max_y);
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
        } else if metric == "spend_max_ratio" {
            " (≤1)"
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

/// A paired bootstrap interval of the difference of one metric between two
/// models scored on the same examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    /// The metric of the first model minus the second's, on all examples.
    pub difference: f64,
    /// 2.5th percentile of the resampled differences.
    pub low: f64,
    /// 97.5th percentile of the resampled differences.
    pub high: f64,
}

impl Margin {
    /// Whether the interval holds 0: the two models tie on this metric.
    pub fn tie(&self) -> bool {
        self.low <= 0.0 && self.high >= 0.0
    }

    /// "ahead", "behind" or "tie", for a metric where `higher` is better.
    pub fn verdict(&self, higher: bool) -> &'static str {
        if self.tie() {
            "tie"
        } else if (self.difference > 0.0) == higher {
            "ahead"
        } else {
            "behind"
        }
    }
}

/// One measured margin: challenger − reference on a metric, with its
/// interval and verdict ("ahead", "behind", "tie", for the challenger).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MarginLine {
    /// The model compared.
    pub challenger: String,
    /// The model it is compared against.
    pub reference: String,
    /// The metric.
    pub metric: String,
    /// Challenger minus reference, on all examples.
    pub difference: f64,
    /// 2.5th percentile of the resampled differences.
    pub low: f64,
    /// 97.5th percentile of the resampled differences.
    pub high: f64,
    /// "ahead", "behind" or "tie".
    pub verdict: String,
}

fn higher_is_better(metric: &str) -> bool {
    METRICS
        .iter()
        .find(|(k, _)| *k == metric)
        .is_none_or(|(_, h)| *h)
}

/// The examples models are judged on: their labels, whose they are, and
/// the number of segments.
#[derive(Debug, Clone, Copy)]
pub struct Judged<'a> {
    /// One per example.
    pub labels: &'a [Labels],
    /// The customer of each example.
    pub customer: &'a [u32],
    /// Segments in the outputs.
    pub segments: usize,
}

/// Bootstrap resamples of a [`margin`].
pub const RESAMPLES: usize = 200;

/// The paired bootstrap interval (95 %, percentile) of `metric(a) -
/// metric(b)` over `labels`: each of `resamples` resamples draws customers
/// (`customer[i]` is example `i`'s) with replacement, takes all their
/// examples, and scores both models on the same draw, so what the two
/// share (the examples' difficulty) cancels. Customers, not examples, are
/// drawn: one customer's examples at successive cut times are alike, and
/// drawing them one by one would make the interval too narrow.
/// Deterministic for a `seed`.
pub fn margin(
    a: &Outputs,
    b: &Outputs,
    on: &Judged<'_>,
    metric: &str,
    resamples: usize,
    seed: u64,
) -> Margin {
    let Judged {
        labels,
        customer,
        segments,
    } = *on;
    let of = |out: &Outputs, idx: &[usize]| -> f64 {
        let sub = select(out, idx, segments);
        let l: Vec<Labels> = idx.iter().map(|&i| labels[i]).collect();
        evaluate(&sub, &l, segments)
            .get(metric)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let all: Vec<usize> = (0..labels.len()).collect();
    let difference = of(a, &all) - of(b, &all);
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, c) in customer.iter().enumerate().take(labels.len()) {
        groups.entry(*c).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().collect();
    let mut rng = crate::rng::Rng::new(seed);
    let mut idx = Vec::with_capacity(labels.len());
    let mut diffs: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            idx.clear();
            for _ in 0..groups.len() {
                idx.extend_from_slice(&groups[rng.below(groups.len())]);
            }
            of(a, &idx) - of(b, &idx)
        })
        .filter(|d| d.is_finite())
        .collect();
    if diffs.is_empty() {
        return Margin {
            difference,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((diffs.len() - 1) as f64 * q).round() as usize];
    Margin {
        difference,
        low: at(0.025),
        high: at(0.975),
    }
}

/// The rows `idx` of `out` (explanations left out).
fn select(out: &Outputs, idx: &[usize], segments: usize) -> Outputs {
    let pick = |v: &[f32]| -> Vec<f32> {
        idx.iter()
            .map(|&i| v.get(i).copied().unwrap_or(0.0))
            .collect()
    };
    Outputs {
        segment_probs: idx
            .iter()
            .flat_map(|&i| {
                out.segment_probs[i * segments..(i + 1) * segments]
                    .iter()
                    .copied()
            })
            .collect(),
        purchase_probability: pick(&out.purchase_probability),
        churn_probability: pick(&out.churn_probability),
        predicted_spend: pick(&out.predicted_spend),
        segment_contributions: Vec::new(),
    }
}

/// Each challenger's [`margin`] against a reference model, on its metrics.
#[derive(Debug, Clone)]
pub struct Margins {
    reference: String,
    /// (challenger, metric, margin), in the order asked.
    rows: Vec<(String, String, Margin)>,
}

impl Margins {
    /// The margins of each challenger (name, outputs, metrics) against
    /// `reference` on the examples `on`.
    pub fn of(
        reference: (&str, &Outputs),
        challengers: &[(&str, &Outputs, &[&str])],
        on: &Judged<'_>,
        seed: u64,
    ) -> Margins {
        let rows = challengers
            .iter()
            .flat_map(|(name, out, metrics)| {
                metrics.iter().map(move |metric| {
                    let m = margin(out, reference.1, on, metric, RESAMPLES, seed);
                    (name.to_string(), metric.to_string(), m)
                })
            })
            .collect();
        Margins {
            reference: reference.0.to_string(),
            rows,
        }
    }

    /// `challenger`'s margin on `metric`, when it was measured.
    pub fn get(&self, challenger: &str, metric: &str) -> Option<&Margin> {
        self.rows
            .iter()
            .find(|(n, m, _)| n == challenger && m == metric)
            .map(|(_, _, margin)| margin)
    }

    /// Every margin measured, with its verdict.
    pub fn lines(&self) -> Vec<MarginLine> {
        self.rows
            .iter()
            .map(|(name, metric, m)| MarginLine {
                challenger: name.clone(),
                reference: self.reference.clone(),
                metric: metric.clone(),
                difference: m.difference,
                low: m.low,
                high: m.high,
                verdict: m.verdict(higher_is_better(metric)).to_string(),
            })
            .collect()
    }

    /// Report lines: "name − reference: metric +0.0012 [−0.0004, +0.0031] (tie)".
    pub fn report(&self) -> String {
        let mut text = format!(
            "Margins against the {} (paired bootstrap over customers, {RESAMPLES} resamples, 95 %; a margin whose interval holds 0 is a tie):\n",
            self.reference
        );
        for (name, metric, m) in &self.rows {
            let higher = higher_is_better(metric);
            text.push_str(&format!(
                "  {name} − {}: {metric} {:+.4} [{:+.4}, {:+.4}] ({})\n",
                self.reference,
                m.difference,
                m.low,
                m.high,
                m.verdict(higher)
            ));
        }
        text
    }

    /// The bounds for the manifest: `margin_<challenger>_<metric>_low`/`_high`.
    pub fn stored(&self) -> BTreeMap<String, f64> {
        let mut stored = BTreeMap::new();
        for (name, metric, m) in &self.rows {
            let key = format!("margin_{}_{metric}", name.replace([' ', ',', '/'], "_"));
            stored.insert(format!("{key}_low"), m.low);
            stored.insert(format!("{key}_high"), m.high);
        }
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that ranks every buyer first is ahead of one that ranks
    /// them at random, by an interval that excludes 0; a model against
    /// itself ties at exactly 0.
    #[test]
    fn the_margin_of_a_better_ranking_excludes_zero_and_a_copy_ties() {
        let n = 400;
        let mut rng = crate::rng::Rng::new(3);
        let labels: Vec<Labels> = (0..n)
            .map(|i| Labels {
                segment: Segment::ALL[0],
                purchased: i % 3 == 0,
                churned: false,
                spend_minor: 0,
            })
            .collect();
        let out = |p: Vec<f32>| Outputs {
            segment_probs: vec![1.0; n],
            purchase_probability: p,
            churn_probability: vec![0.5; n],
            predicted_spend: vec![0.0; n],
            segment_contributions: Vec::new(),
        };
        let good = out((0..n)
            .map(|i| {
                if i % 3 == 0 {
                    0.6 + 0.3 * rng.unit_f32()
                } else {
                    0.7 * rng.unit_f32()
                }
            })
            .collect());
        let random = out((0..n).map(|_| rng.unit_f32()).collect());
        let customer: Vec<u32> = (0..n as u32).map(|i| i / 4).collect();
        let on = Judged {
            labels: &labels,
            customer: &customer,
            segments: 1,
        };
        let m = margin(&good, &random, &on, "purchase_auc", RESAMPLES, 1);
        assert!(
            m.low > 0.0 && m.difference > m.low && m.high > m.difference,
            "{m:?}"
        );
        assert_eq!(m.verdict(true), "ahead");
        assert_eq!(m.verdict(false), "behind");
        let same = margin(&good, &good, &on, "purchase_auc", RESAMPLES, 1);
        assert_eq!((same.difference, same.low, same.high), (0.0, 0.0, 0.0));
        assert!(same.tie());
        assert_eq!(same.verdict(true), "tie");
    }

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
