//! Segment decisions: from a model's segment probabilities to a
//! [`SegmentChange`], with hysteresis so
//! customers do not flap between segments.
//!
//! Pure and synchronous: the run loop calls it for every scored customer; the
//! trainer's offline evaluation can call it too.

pub mod risk;

use serde::Serialize;

use crate::event::proto::{Reason, SegmentChange, Trigger};
use crate::state::Decision;

/// Hysteresis rules (from `[decide]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// A challenger segment must beat the current one by this much probability.
    pub margin: f32,
    /// A segment holds at least this long (event time, ms) before it may change.
    pub min_dwell_ms: i64,
    /// Customer features named in a change's reasons (the rest are summed
    /// as `other_features`).
    pub reasons: usize,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            margin: 0.1,
            min_dwell_ms: crate::units::DAY_MS,
            reasons: 5,
        }
    }
}

/// Index of the highest probability (the first one on ties).
pub fn argmax(probs: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, p) in probs.iter().enumerate() {
        if !p.is_finite() {
            continue;
        }
        if best.is_none_or(|(_, b)| *p > b) {
            best = Some((i, *p));
        }
    }
    best.map(|(i, _)| i)
}

impl Hysteresis {
    /// The segment (index into `segments`) the customer moves to, if any.
    /// A first classification always happens; so does a move away from a
    /// segment the model no longer knows.
    pub fn decide(
        &self,
        current: &Decision,
        segments: &[String],
        probs: &[f32],
        as_of_ms: i64,
    ) -> Option<usize> {
        let best = argmax(probs)?;
        if current.segment.is_empty() {
            return Some(best);
        }
        let Some(cur) = segments.iter().position(|s| *s == current.segment) else {
            return Some(best);
        };
        if best == cur {
            return None;
        }
        if probs[best] - probs[cur] < self.margin {
            return None;
        }
        if as_of_ms.saturating_sub(current.since_ms) < self.min_dwell_ms {
            return None;
        }
        Some(best)
    }
}

/// The model outputs for one customer.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// Segment names.
    pub segments: &'a [String],
    /// Probability per segment.
    pub probs: &'a [f32],
    /// Purchase probability.
    pub purchase: f32,
    /// Churn probability.
    pub churn: f32,
    /// Predicted spend.
    pub spend: f32,
    /// Model version.
    pub model_version: &'a str,
    /// The explanation output's rows for this customer ([K, F + 2], see
    /// [`crate::model::SEGMENT_CONTRIBUTIONS`]); empty when the model gives
    /// none.
    pub contributions: &'a [f32],
}

impl crate::config::DecideConfig {
    /// The rules in force.
    pub fn rules(&self) -> Hysteresis {
        Hysteresis {
            margin: self.margin,
            min_dwell_ms: crate::units::millis(self.min_dwell),
            reasons: self.reasons,
        }
    }
}

/// Name of the reason that sums the customer features not listed.
pub const OTHER_FEATURES: &str = "other_features";

/// The reasons for `segment` from a customer's explanation rows
/// ([K, F + 2]), against `against` (the segment the customer leaves; `None`
/// on a first classification: against the average segment, which the rows
/// are centered on). Each part is its contribution to ln p(segment) -
/// ln p(against): the `top` customer features that pushed most towards
/// `segment` and the sequence pathway, the largest push first, then the sum
/// of the other features; and the baseline. Baseline plus every
/// contribution is that difference. Empty for rows of another shape.
pub fn explain(
    contributions: &[f32],
    segment: usize,
    against: Option<usize>,
    top: usize,
) -> (Vec<Reason>, f32) {
    let names = crate::features::customer_feature_names();
    let width = crate::model::CONTRIBUTION_WIDTH;
    let row_of = |s: usize| contributions.get(s * width..(s + 1) * width);
    let Some(to) = row_of(segment) else {
        return (Vec::new(), 0.0);
    };
    let row: Vec<f32> = match against.filter(|a| *a != segment) {
        Some(a) => match row_of(a) {
            Some(from) => to.iter().zip(from).map(|(t, f)| t - f).collect(),
            None => return (Vec::new(), 0.0),
        },
        None => to.to_vec(),
    };
    let f = names.len();
    let mut order: Vec<usize> = (0..f).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let top = top.min(f);
    let reason = |feature: &str, contribution: f32| Reason {
        feature: feature.to_string(),
        contribution,
        value: None,
        unit: String::new(),
    };
    let mut reasons: Vec<Reason> = order[..top]
        .iter()
        .map(|&j| reason(&names[j], row[j]))
        .chain(std::iter::once(reason(
            crate::model::CONTRIBUTION_SEQUENCE,
            row[f],
        )))
        .collect();
    reasons.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    if top < f {
        reasons.push(reason(
            OTHER_FEATURES,
            order[top..].iter().map(|&j| row[j]).sum(),
        ));
    }
    (reasons, row[f + 1])
}

/// Puts the customer's own value, in its unit, on each named feature of
/// `reasons`, from the customer's feature row `features` (encoded as the
/// featurizer encodes it).
pub fn with_values(
    reasons: &mut [Reason],
    features: &[f32],
    norm: &crate::features::Normalization,
) {
    let names = crate::features::customer_feature_names();
    for r in reasons {
        let Some(j) = names.iter().position(|n| *n == r.feature) else {
            continue;
        };
        if let Some((value, unit)) = features
            .get(j)
            .and_then(|v| crate::features::customer_feature_value(j, *v, norm))
        {
            r.value = Some(value);
            r.unit = unit.to_string();
        }
    }
}

/// Applies a scoring to the customer's decision memory and returns the
/// change to publish, if the segment changed.
pub fn apply(
    rules: &Hysteresis,
    customer_id: &str,
    decision: &mut Decision,
    scored: Scored<'_>,
    as_of_ms: i64,
    decided_at_ms: i64,
    trigger: Trigger,
) -> Option<SegmentChange> {
    let to = rules.decide(decision, scored.segments, scored.probs, as_of_ms);
    decision.scores = scored.probs.to_vec();
    decision.model_version = scored.model_version.to_string();
    decision.decided_at_ms = decided_at_ms;
    decision.purchase_probability = scored.purchase;
    decision.churn_probability = scored.churn;
    decision.predicted_spend = scored.spend;
    decision.as_of_ms = as_of_ms;
    let to = to?;
    let previous = std::mem::replace(&mut decision.segment, scored.segments[to].clone());
    decision.since_ms = as_of_ms;
    let from = scored.segments.iter().position(|s| *s == previous);
    let (reasons, reasons_baseline) = explain(scored.contributions, to, from, rules.reasons);
    Some(SegmentChange {
        customer_id: customer_id.to_string(),
        segment: decision.segment.clone(),
        previous_segment: previous,
        scores: scored
            .segments
            .iter()
            .cloned()
            .zip(scored.probs.iter().copied())
            .collect(),
        purchase_probability: scored.purchase,
        churn_probability: scored.churn,
        predicted_spend: scored.spend,
        model_version: scored.model_version.to_string(),
        as_of_ms,
        decided_at_ms,
        trigger: trigger as i32,
        membership: crate::event::proto::Membership::Entered as i32,
        live: false,
        reasons,
        reasons_baseline,
    })
}

/// The JSON form of a `SegmentChange`, for JSON consumers (snake_case names,
/// the trigger as `EVENT`, `INACTIVITY` or `MODEL_UPDATE`).
#[derive(Debug, Serialize)]
pub struct SegmentChangeJson<'a> {
    customer_id: &'a str,
    segment: &'a str,
    previous_segment: &'a str,
    scores: std::collections::BTreeMap<&'a str, f32>,
    purchase_probability: f32,
    churn_probability: f32,
    predicted_spend: f32,
    model_version: &'a str,
    as_of_ms: i64,
    decided_at_ms: i64,
    trigger: &'static str,
    membership: &'static str,
    live: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<ReasonJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons_baseline: Option<f32>,
}

/// One reason in the JSON form.
#[derive(Debug, Serialize)]
pub struct ReasonJson<'a> {
    feature: &'a str,
    contribution: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    unit: &'a str,
}

/// Name of a trigger in the JSON form and in headers.
pub fn trigger_name(t: i32) -> &'static str {
    match Trigger::try_from(t) {
        Ok(Trigger::Event) => "EVENT",
        Ok(Trigger::Inactivity) => "INACTIVITY",
        Ok(Trigger::ModelUpdate) => "MODEL_UPDATE",
        Ok(Trigger::Evicted) => "EVICTED",
        Ok(Trigger::Erased) => "ERASED",
        _ => "UNSPECIFIED",
    }
}

/// Name of a membership in the JSON form and in headers.
pub fn membership_name(m: i32) -> &'static str {
    match crate::event::proto::Membership::try_from(m) {
        Ok(crate::event::proto::Membership::Entered) => "ENTERED",
        Ok(crate::event::proto::Membership::Exited) => "EXITED",
        _ => "UNSPECIFIED",
    }
}

impl<'a> SegmentChangeJson<'a> {
    /// Borrows a change.
    pub fn new(c: &'a SegmentChange) -> Self {
        SegmentChangeJson {
            customer_id: &c.customer_id,
            segment: &c.segment,
            previous_segment: &c.previous_segment,
            scores: c.scores.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
            purchase_probability: c.purchase_probability,
            churn_probability: c.churn_probability,
            predicted_spend: c.predicted_spend,
            model_version: &c.model_version,
            as_of_ms: c.as_of_ms,
            decided_at_ms: c.decided_at_ms,
            trigger: trigger_name(c.trigger),
            membership: membership_name(c.membership),
            live: c.live,
            reasons: c
                .reasons
                .iter()
                .map(|r| ReasonJson {
                    feature: &r.feature,
                    contribution: r.contribution,
                    value: r.value,
                    unit: &r.unit,
                })
                .collect(),
            reasons_baseline: (!c.reasons.is_empty()).then_some(c.reasons_baseline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    fn scored<'a>(segments: &'a [String], probs: &'a [f32]) -> Scored<'a> {
        Scored {
            segments,
            probs,
            purchase: 0.3,
            churn: 0.1,
            spend: 12.0,
            model_version: "m1",
            contributions: &[],
        }
    }

    #[test]
    fn reasons_list_the_largest_contributions_and_keep_the_total() {
        let f = crate::features::CUSTOMER_DIM;
        let w = f + 2;
        // Two segments; segment 1's row: feature j contributes (j - 20) / 10,
        // sequence 0.25, baseline -0.5.
        let mut rows = vec![0.0; 2 * w];
        for j in 0..f {
            rows[w + j] = (j as f32 - 20.0) / 10.0;
        }
        rows[w + f] = 0.25;
        rows[w + f + 1] = -0.5;
        let (reasons, baseline) = explain(&rows, 1, None, 2);
        let names = crate::features::customer_feature_names();
        let fields: Vec<&str> = reasons.iter().map(|r| r.feature.as_str()).collect();
        // The features that push most towards segment 1 first: the last two
        // (the largest j), then the sequence (+0.25); then the rest.
        assert_eq!(
            fields,
            [
                names[f - 1].as_str(),
                names[f - 2].as_str(),
                "sequence",
                OTHER_FEATURES
            ]
        );
        assert!(reasons[0].contribution > reasons[1].contribution);
        assert_eq!(baseline, -0.5);
        let total: f32 = rows[w..].iter().sum();
        let listed: f32 = reasons.iter().map(|r| r.contribution).sum::<f32>() + baseline;
        assert!((total - listed).abs() < 1e-4, "{total} vs {listed}");
        // Against segment 0 (all zeros here) the parts are the same; against
        // segment 1 itself, too (no difference with itself is taken).
        assert_eq!(explain(&rows, 1, Some(0), 2), (reasons.clone(), baseline));
        assert_eq!(explain(&rows, 1, Some(1), 2), (reasons.clone(), baseline));
        // Against a segment that favours feature 0 above all, feature 0
        // argues against the change: it is not among the top reasons.
        let mut other = rows.clone();
        other[0] = 5.0;
        let (against, _) = explain(&other, 1, Some(0), 2);
        assert!(against.iter().all(|r| r.feature != names[0]), "{against:?}");
        let total: f32 = (0..w).map(|j| other[w + j] - other[j]).sum();
        let (parts, base) = explain(&other, 1, Some(0), 2);
        let listed: f32 = parts.iter().map(|r| r.contribution).sum::<f32>() + base;
        assert!((total - listed).abs() < 1e-4, "{total} vs {listed}");
        // No explanation output, or a row of another shape: no reasons.
        assert!(explain(&[], 0, None, 5).0.is_empty());
        assert!(explain(&rows[..w + 3], 1, None, 5).0.is_empty());
    }

    #[test]
    fn first_classification_then_hysteresis() {
        let rules = Hysteresis {
            margin: 0.1,
            min_dwell_ms: 1_000,
            reasons: 5,
        };
        let s = segs();
        let mut d = Decision::default();
        let c = apply(
            &rules,
            "c1",
            &mut d,
            scored(&s, &[0.2, 0.5, 0.3]),
            10_000,
            1,
            Trigger::Event,
        )
        .expect("first classification");
        assert_eq!((c.segment.as_str(), c.previous_segment.as_str()), ("b", ""));
        assert_eq!(c.scores["b"], 0.5);
        assert_eq!(d.since_ms, 10_000);

        // Challenger ahead but within the margin: no change (scores still updated).
        assert!(apply(
            &rules,
            "c1",
            &mut d,
            scored(&s, &[0.44, 0.4, 0.16]),
            20_000,
            2,
            Trigger::Event
        )
        .is_none());
        assert_eq!(d.scores, vec![0.44, 0.4, 0.16]);
        // Beyond the margin but within the minimum dwell: no change.
        assert!(apply(
            &rules,
            "c1",
            &mut d,
            scored(&s, &[0.7, 0.2, 0.1]),
            10_500,
            3,
            Trigger::Event
        )
        .is_none());
        // Both: change, chained to the previous segment.
        let c = apply(
            &rules,
            "c1",
            &mut d,
            scored(&s, &[0.7, 0.2, 0.1]),
            11_000,
            4,
            Trigger::Inactivity,
        )
        .unwrap();
        assert_eq!(
            (c.segment.as_str(), c.previous_segment.as_str()),
            ("a", "b")
        );
        assert_eq!(trigger_name(c.trigger), "INACTIVITY");
        assert_eq!(d.segment, "a");
    }

    #[test]
    fn unknown_current_segment_moves_at_once_and_nan_is_ignored() {
        let rules = Hysteresis::default();
        let s = segs();
        let mut d = Decision {
            segment: "retired".into(),
            since_ms: 100,
            ..Decision::default()
        };
        let c = apply(
            &rules,
            "c",
            &mut d,
            scored(&s, &[0.1, 0.2, 0.7]),
            100,
            1,
            Trigger::ModelUpdate,
        )
        .unwrap();
        assert_eq!(
            (c.segment.as_str(), c.previous_segment.as_str()),
            ("c", "retired")
        );
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.05]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn json_form_is_stable() {
        let s = segs();
        let mut d = Decision::default();
        let c = apply(
            &Hysteresis::default(),
            "c9",
            &mut d,
            scored(&s, &[0.2, 0.5, 0.3]),
            5,
            6,
            Trigger::Event,
        )
        .unwrap();
        let v = serde_json::to_value(SegmentChangeJson::new(&c)).unwrap();
        assert_eq!(v["segment"], "b");
        assert_eq!(v["trigger"], "EVENT");
        assert_eq!(v["scores"]["c"], serde_json::json!(0.3f32));
        assert_eq!(v["as_of_ms"], 5);
    }
}
