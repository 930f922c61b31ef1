//! Segment decisions: from a model's segment probabilities to a
//! [`SegmentChange`], with hysteresis so
//! customers do not flap between segments.
//!
//! Pure and synchronous: the run loop calls it for every scored customer; the
//! trainer's offline evaluation can call it too.

pub mod risk;

use serde::Serialize;

use crate::event::proto::{SegmentChange, Trigger};
use crate::state::Decision;

/// Hysteresis rules (from `[decide]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// A challenger segment must beat the current one by this much probability.
    pub margin: f32,
    /// A segment holds at least this long (event time, ms) before it may change.
    pub min_dwell_ms: i64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            margin: 0.1,
            min_dwell_ms: 86_400_000,
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
        }
    }

    #[test]
    fn first_classification_then_hysteresis() {
        let rules = Hysteresis {
            margin: 0.1,
            min_dwell_ms: 1_000,
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
