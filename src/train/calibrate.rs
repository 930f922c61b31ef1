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
