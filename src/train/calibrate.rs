//! Calibration of a candidate's outputs on the validation examples, the same
//! for every candidate: Platt scaling of the purchase and churn
//! probabilities and the spend factor (see [`Calibration`]). The served
//! model is calibrated on every validation example; the report's figures
//! are cross-fitted (customers split in two halves, each calibrated on the
//! other), so its calibration error and spend ratio are not in-sample.

use super::examples::{ExampleSet, Labels};
use super::net::Calibration;
use crate::model::reference::Outputs;

/// `ln(p / (1 - p))`, with `p` kept off 0 and 1.
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// The calibration of uncalibrated outputs `raw` fitted on the examples of
/// `set` that `keep` selects.
pub fn fit(raw: &Outputs, set: &ExampleSet, keep: &dyn Fn(usize) -> bool) -> Calibration {
    let rows: Vec<usize> = (0..set.len()).filter(|&i| keep(i)).collect();
    let logits = |p: &[f32]| rows.iter().map(|&i| logit(p[i])).collect::<Vec<_>>();
    let labels =
        |f: fn(&Labels) -> bool| rows.iter().map(|&i| f(&set.labels[i])).collect::<Vec<_>>();
    Calibration {
        purchase: Calibration::platt(&logits(&raw.purchase_probability), &labels(|l| l.purchased)),
        churn: Calibration::platt(&logits(&raw.churn_probability), &labels(|l| l.churned)),
        smear: Calibration::smearing(
            &rows
                .iter()
                .map(|&i| raw.predicted_spend[i])
                .collect::<Vec<_>>(),
            &rows
                .iter()
                .map(|&i| set.labels[i].spend_minor)
                .collect::<Vec<_>>(),
        ),
    }
}

/// `raw` calibrated by `c`.
pub fn apply(raw: &Outputs, c: &Calibration) -> Outputs {
    let mut out = raw.clone();
    let platt = |p: f32, (a, b): (f32, f32)| 1.0 / (1.0 + (-(a * logit(p) + b)).exp());
    for i in 0..out.purchase_probability.len() {
        out.purchase_probability[i] = platt(raw.purchase_probability[i], c.purchase);
        out.churn_probability[i] = platt(raw.churn_probability[i], c.churn);
        out.predicted_spend[i] = raw.predicted_spend[i] * c.smear;
    }
    out
}

/// How the calibration holds one cut time ahead: fitted on the validation
/// examples before the last cut time, applied to those at the last one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forward {
    /// The last cut time (ms).
    pub cut_ms: i64,
    /// Examples at it.
    pub examples: usize,
    /// Mean predicted purchase probability at it.
    pub predicted_purchase: f64,
    /// Share of its examples that purchased.
    pub realized_purchase: f64,
    /// Predicted over actual spend, summed over its examples.
    pub spend_ratio: f64,
}

impl Forward {
    /// Mean predicted over realized purchase rate (1: calibrated).
    pub fn purchase_ratio(&self) -> f64 {
        self.predicted_purchase / self.realized_purchase.max(1e-9)
    }
}

/// [`Forward`] for uncalibrated outputs `raw` of `set`; `None` with fewer
/// than two cut times or no purchase at the last.
pub fn forward(raw: &Outputs, set: &ExampleSet) -> Option<Forward> {
    let last = set.cut_ms.iter().copied().max()?;
    if !set.cut_ms.iter().any(|c| *c < last) {
        return None;
    }
    let calibrated = apply(raw, &fit(raw, set, &|i| set.cut_ms[i] < last));
    let rows: Vec<usize> = (0..set.len()).filter(|&i| set.cut_ms[i] == last).collect();
    let n = rows.len() as f64;
    let bought = rows.iter().filter(|&&i| set.labels[i].purchased).count() as f64;
    let actual: f64 = rows
        .iter()
        .map(|&i| set.labels[i].spend_minor.max(0) as f64)
        .sum();
    let predicted: f64 = rows
        .iter()
        .map(|&i| f64::from(calibrated.predicted_spend[i]))
        .sum();
    (bought > 0.0).then(|| Forward {
        cut_ms: last,
        examples: rows.len(),
        predicted_purchase: rows
            .iter()
            .map(|&i| f64::from(calibrated.purchase_probability[i]))
            .sum::<f64>()
            / n,
        realized_purchase: bought / n,
        spend_ratio: predicted / actual.max(1e-9),
    })
}

/// The cross-fitted outputs (each example calibrated on the half of the
/// customers it is not in) and the calibration fitted on every example.
pub fn cross_fitted(raw: &Outputs, set: &ExampleSet) -> (Outputs, Calibration) {
    let fold: Vec<bool> = set.customer.iter().map(|c| c % 2 == 0).collect();
    let halves = [fit(raw, set, &|i| fold[i]), fit(raw, set, &|i| !fold[i])];
    let calibrated = [apply(raw, &halves[0]), apply(raw, &halves[1])];
    let mut crossed = raw.clone();
    for (i, f) in fold.iter().enumerate() {
        // Calibrated by the half the example is not in.
        let c = &calibrated[usize::from(*f)];
        crossed.purchase_probability[i] = c.purchase_probability[i];
        crossed.churn_probability[i] = c.churn_probability[i];
        crossed.predicted_spend[i] = c.predicted_spend[i];
    }
    (crossed, fit(raw, set, &|_| true))
}
