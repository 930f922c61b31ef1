//! Live quality metrics: every published [`Outcome`] counted per model
//! version, so that Prometheus (and the dashboard) show, per model, the
//! mean predicted against the realized purchase and churn rates, the spend
//! ratio, a reliability curve (outcomes by predicted-probability decile),
//! the realized rates per predicted segment, and a running AUC.
//!
//! Labels stay bounded: model version (the versions served), output
//! (`purchase`, `churn`, `spend_minor`), decile, segment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{CounterVec, GaugeVec, IntCounterVec, Opts};

use crate::event::proto::Outcome;

/// Fine bins of a predicted probability for the running AUC (ties within a
/// bin count one half: the AUC is within 1 / AUC_BINS of the exact one).
const AUC_BINS: usize = 1000;

/// Per (model version, output): (negatives, positives) per fine bin.
type Bins = HashMap<(String, &'static str), Vec<[u64; 2]>>;

/// The outcome metrics (part of [`super::Metrics`]).
#[derive(Debug, Clone)]
pub struct OutcomeMetrics {
    /// Outcomes published, by model version.
    pub outcomes: IntCounterVec,
    /// Sum of predictions, by model version and output.
    pub predicted: CounterVec,
    /// Sum of realized values (purchases, churns, spend), by model version
    /// and output.
    pub realized: CounterVec,
    /// Outcomes by predicted-probability decile and realized value.
    pub reliability: IntCounterVec,
    /// Outcomes by predicted segment, all and those that purchased or churned.
    pub by_segment: IntCounterVec,
    /// Running AUC of this instance's outcomes since it started.
    pub auc: GaugeVec,
    /// Per (model version, output): (negatives, positives) per fine bin.
    bins: Arc<Mutex<Bins>>,
}

impl OutcomeMetrics {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        Ok(OutcomeMetrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "segstream_outcomes_total",
                    "Live outcomes published (predictions checked against what happened), by model version.",
                ),
                &["model_version"],
            )?,
            predicted: CounterVec::new(
                Opts::new(
                    "segstream_outcome_predicted_total",
                    "Sum of the predictions of published outcomes: purchase and churn probability, spend (minor units).",
                ),
                &["model_version", "output"],
            )?,
            realized: CounterVec::new(
                Opts::new(
                    "segstream_outcome_realized_total",
                    "Sum of what happened in published outcomes: purchasers, churners, spend (minor units).",
                ),
                &["model_version", "output"],
            )?,
            reliability: IntCounterVec::new(
                Opts::new(
                    "segstream_outcome_reliability_total",
                    "Outcomes by predicted-probability decile (0 = [0, 0.1)) and whether it happened.",
                ),
                &["model_version", "output", "decile", "happened"],
            )?,
            by_segment: IntCounterVec::new(
                Opts::new(
                    "segstream_outcome_segment_total",
                    "Outcomes by predicted segment: all, and those that purchased or churned.",
                ),
                &["model_version", "segment", "realized"],
            )?,
            auc: GaugeVec::new(
                Opts::new(
                    "segstream_outcome_auc",
                    "AUC of the predicted purchase and churn probability on this instance's outcomes since it started.",
                ),
                &["model_version", "output"],
            )?,
            bins: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.outcomes.clone()),
            Box::new(self.predicted.clone()),
            Box::new(self.realized.clone()),
            Box::new(self.reliability.clone()),
            Box::new(self.by_segment.clone()),
            Box::new(self.auc.clone()),
        ]
    }

    /// Counts a batch of published outcomes (once per cycle).
    pub fn observe(&self, outcomes: &[Outcome]) {
        if outcomes.is_empty() {
            return;
        }
        let mut touched: Vec<(String, &'static str)> = Vec::new();
        let Ok(mut bins) = self.bins.lock() else {
            return;
        };
        for o in outcomes {
            let v = o.model_version.as_str();
            self.outcomes.with_label_values(&[v]).inc();
            let pairs = [
                ("purchase", o.purchase_probability, o.purchased),
                ("churn", o.churn_probability, o.churned),
            ];
            for (output, p, happened) in pairs {
                self.predicted
                    .with_label_values(&[v, output])
                    .inc_by(f64::from(p.clamp(0.0, 1.0)));
                self.realized
                    .with_label_values(&[v, output])
                    .inc_by(if happened { 1.0 } else { 0.0 });
                let decile = ((p.clamp(0.0, 1.0) * 10.0) as usize).min(9);
                self.reliability
                    .with_label_values(&[v, output, DECILES[decile], bool_name(happened)])
                    .inc();
                let fine = ((p.clamp(0.0, 1.0) * AUC_BINS as f32) as usize).min(AUC_BINS - 1);
                let key = (v.to_string(), output);
                bins.entry(key.clone())
                    .or_insert_with(|| vec![[0, 0]; AUC_BINS])[fine][usize::from(happened)] += 1;
                if !touched.contains(&key) {
                    touched.push(key);
                }
            }
            self.predicted
                .with_label_values(&[v, "spend_minor"])
                .inc_by(f64::from(o.predicted_spend.max(0.0)));
            self.realized
                .with_label_values(&[v, "spend_minor"])
                .inc_by(o.spend_minor.max(0) as f64);
            self.by_segment
                .with_label_values(&[v, &o.segment, "all"])
                .inc();
            if o.purchased {
                self.by_segment
                    .with_label_values(&[v, &o.segment, "purchased"])
                    .inc();
            }
            if o.churned {
                self.by_segment
                    .with_label_values(&[v, &o.segment, "churned"])
                    .inc();
            }
        }
        for key in touched {
            if let Some(auc) = bins.get(&key).and_then(|b| binned_auc(b)) {
                self.auc.with_label_values(&[&key.0, key.1]).set(auc);
            }
        }
    }
}

const DECILES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

fn bool_name(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// The AUC of binned scores (negatives, positives per bin, ascending):
/// the probability that a positive scores above a negative, ties one half.
/// `None` without both classes.
pub fn binned_auc(bins: &[[u64; 2]]) -> Option<f64> {
    let (neg, pos) = bins
        .iter()
        .fold((0u64, 0u64), |(n, p), b| (n + b[0], p + b[1]));
    if neg == 0 || pos == 0 {
        return None;
    }
    let mut below = 0f64;
    let mut sum = 0f64;
    for b in bins {
        sum += b[1] as f64 * (below + 0.5 * b[0] as f64);
        below += b[0] as f64;
    }
    Some(sum / (neg as f64 * pos as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binned_auc_is_one_half_on_ties_and_one_when_separated() {
        assert_eq!(binned_auc(&[[3, 3]]), Some(0.5));
        assert_eq!(binned_auc(&[[3, 0], [0, 2]]), Some(1.0));
        assert_eq!(binned_auc(&[[0, 2], [3, 0]]), Some(0.0));
        assert_eq!(binned_auc(&[[3, 0]]), None);
    }

    #[test]
    fn outcomes_are_counted_per_model_version() {
        let m = OutcomeMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        let o = |p: f32, purchased: bool| Outcome {
            customer_id: "c".into(),
            model_version: "m1".into(),
            segment: "active_buyer".into(),
            purchase_probability: p,
            churn_probability: 1.0 - p,
            predicted_spend: 10.0,
            purchased,
            churned: !purchased,
            spend_minor: if purchased { 20 } else { 0 },
            ..Outcome::default()
        };
        m.observe(&[o(0.9, true), o(0.2, false), o(0.6, true)]);
        assert_eq!(m.outcomes.with_label_values(&["m1"]).get(), 3);
        let predicted = m.predicted.with_label_values(&["m1", "purchase"]).get();
        assert!((predicted - 1.7).abs() < 1e-6, "{predicted}");
        assert_eq!(
            m.realized.with_label_values(&["m1", "spend_minor"]).get(),
            40.0
        );
        assert_eq!(m.auc.with_label_values(&["m1", "purchase"]).get(), 1.0);
        assert_eq!(
            m.reliability
                .with_label_values(&["m1", "purchase", "9", "true"])
                .get(),
            1
        );
        assert_eq!(
            m.by_segment
                .with_label_values(&["m1", "active_buyer", "purchased"])
                .get(),
            2
        );
    }
}
