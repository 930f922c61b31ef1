//! What a decision writes: the pure part of a cycle's output. A segment
//! change becomes its ENTERED record on the new segment's topic, an EXITED
//! record (or tombstone) on the old segment's topic when topics are per
//! segment, and the customer's row in the current-membership topic; an
//! evicted customer leaves their segment and the current topic. The run loop
//! only sends what this module returns, so the contract is unit-tested here.

use prost::Message as _;

use crate::config::{ExitRecords, OutputConfig, OutputFormat};
use crate::decide::{self, SegmentChangeJson};
use crate::event::proto::{Membership, Outcome, RiskFlag, SegmentChange, Trigger};
use crate::state::Exit;

/// One record to send inside the cycle's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition (the current topic is co-partitioned with the
    /// input); `None`: the producer's partitioner.
    pub partition: Option<i32>,
    /// The customer id.
    pub key: String,
    /// The encoded change; `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// `segstream.*` headers.
    pub headers: Vec<(&'static str, String)>,
}

/// Whether a decision counts as live (see `SegmentChange.live`): not a
/// model-update rescoring, the partition's event time within
/// `output.live_age` of the decision's wall clock, and the partition's input
/// lag at most `output.live_lag` records.
pub fn is_live(
    out: &OutputConfig,
    trigger: i32,
    as_of_ms: i64,
    decided_at_ms: i64,
    lag: i64,
) -> bool {
    let age_ms = decided_at_ms.saturating_sub(as_of_ms);
    trigger != Trigger::ModelUpdate as i32
        && age_ms <= crate::units::millis(out.live_age)
        && lag <= out.live_lag
}

/// An output record that could not be encoded (a bug: the records are
/// built here from values that always encode).
#[derive(Debug, thiserror::Error)]
#[error("encoding a {what} as JSON: {source}")]
pub struct EncodeError {
    /// The message type.
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

impl EncodeError {
    fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> EncodeError {
        move |source| EncodeError { what, source }
    }
}

/// Encodes a change in the configured format.
pub fn encode(c: &SegmentChange, format: OutputFormat) -> Result<Vec<u8>, EncodeError> {
    match format {
        OutputFormat::Protobuf => Ok(c.encode_to_vec()),
        OutputFormat::Json => serde_json::to_vec(&SegmentChangeJson::new(c))
            .map_err(EncodeError::json("SegmentChange")),
    }
}

fn per_segment(out: &OutputConfig) -> bool {
    out.topic.contains("{segment}")
}

fn headers(c: &SegmentChange) -> Vec<(&'static str, String)> {
    vec![
        ("segstream.segment", c.segment.clone()),
        (
            "segstream.trigger",
            decide::trigger_name(c.trigger).to_string(),
        ),
        ("segstream.model_version", c.model_version.clone()),
        (
            "segstream.membership",
            decide::membership_name(c.membership).to_string(),
        ),
        ("segstream.live", c.live.to_string()),
    ]
}

/// The records of one segment change (`c.membership` and `c.live` already
/// set by the caller are overwritten: ENTERED, and `live` as given).
pub fn for_change(
    out: &OutputConfig,
    partition: i32,
    mut entered: SegmentChange,
    live: bool,
) -> Result<Vec<OutRecord>, EncodeError> {
    entered.membership = Membership::Entered as i32;
    entered.live = live;
    let value = encode(&entered, out.format)?;
    let headers = headers(&entered);
    let mut records = Vec::with_capacity(3);
    if per_segment(out)
        && !entered.previous_segment.is_empty()
        && out.topic_for(&entered.previous_segment) != out.topic_for(&entered.segment)
    {
        records.push(exit_record(out, &entered.previous_segment, &entered)?);
    }
    let current = (!out.current_topic.is_empty()).then(|| OutRecord {
        topic: out.current_topic.clone(),
        partition: Some(partition),
        key: entered.customer_id.clone(),
        value: Some(value.clone()),
        headers: headers.clone(),
    });
    records.push(OutRecord {
        topic: out.topic_for(&entered.segment),
        partition: None,
        key: entered.customer_id,
        value: Some(value),
        headers,
    });
    records.extend(current);
    Ok(records)
}

/// An outcome in the configured format.
pub fn encode_outcome(o: &Outcome, format: OutputFormat) -> Result<Vec<u8>, EncodeError> {
    match format {
        OutputFormat::Protobuf => Ok(o.encode_to_vec()),
        OutputFormat::Json => {
            serde_json::to_vec(&OutcomeJson::new(o)).map_err(EncodeError::json("Outcome"))
        }
    }
}

/// The JSON form of an [`Outcome`] (snake_case field names, every field
/// present).
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OutcomeJson {
    /// See the proto's fields.
    pub customer_id: String,
    /// The cut time (ms).
    pub cut_ms: i64,
    /// The horizon (ms).
    pub horizon_ms: i64,
    /// The model version that predicted.
    pub model_version: String,
    /// Predicted segment.
    pub segment: String,
    /// Predicted purchase probability.
    pub purchase_probability: f32,
    /// Predicted churn probability.
    pub churn_probability: f32,
    /// Predicted spend (minor units).
    pub predicted_spend: f32,
    /// Realized: purchased.
    pub purchased: bool,
    /// Realized: no activity.
    pub churned: bool,
    /// Realized spend (minor units).
    pub spend_minor: i64,
    /// The segment the outcomes define.
    pub realized_segment: String,
    /// Wall clock of the resolution (ms).
    pub resolved_at_ms: i64,
    /// `champion`, `baseline` or `shadow`.
    pub role: String,
    /// The champion's customer features as of the cut, binned against its
    /// drift reference (empty without one).
    #[serde(default)]
    pub feature_bins: Vec<u32>,
}

impl OutcomeJson {
    /// The JSON form of `o`.
    pub fn new(o: &Outcome) -> Self {
        OutcomeJson {
            customer_id: o.customer_id.clone(),
            cut_ms: o.cut_ms,
            horizon_ms: o.horizon_ms,
            model_version: o.model_version.clone(),
            segment: o.segment.clone(),
            purchase_probability: o.purchase_probability,
            churn_probability: o.churn_probability,
            predicted_spend: o.predicted_spend,
            purchased: o.purchased,
            churned: o.churned,
            spend_minor: o.spend_minor,
            realized_segment: o.realized_segment.clone(),
            resolved_at_ms: o.resolved_at_ms,
            role: o.role.clone(),
            feature_bins: o.feature_bins.clone(),
        }
    }
}

impl OutcomeJson {
    /// The record this JSON form is of.
    pub fn into_outcome(self) -> Outcome {
        Outcome {
            customer_id: self.customer_id,
            cut_ms: self.cut_ms,
            horizon_ms: self.horizon_ms,
            model_version: self.model_version,
            segment: self.segment,
            purchase_probability: self.purchase_probability,
            churn_probability: self.churn_probability,
            predicted_spend: self.predicted_spend,
            purchased: self.purchased,
            churned: self.churned,
            spend_minor: self.spend_minor,
            realized_segment: self.realized_segment,
            resolved_at_ms: self.resolved_at_ms,
            role: self.role,
            feature_bins: self.feature_bins,
        }
    }
}

/// The record of an outcome on `output.outcomes_topic`, keyed by customer.
pub fn for_outcome(out: &OutputConfig, o: &Outcome) -> Result<OutRecord, EncodeError> {
    Ok(OutRecord {
        topic: out.outcomes_topic.clone(),
        partition: None,
        key: o.customer_id.clone(),
        value: Some(encode_outcome(o, out.format)?),
        headers: vec![
            ("segstream.model_version", o.model_version.clone()),
            ("segstream.cut_ms", o.cut_ms.to_string()),
            ("segstream.role", o.role.clone()),
        ],
    })
}

/// The records of an evicted or erased customer who was in a segment: an
/// EXITED change (trigger EVICTED or ERASED, no new segment) or a tombstone
/// on that segment's topic, and a tombstone in the current topic.
pub fn for_exit(
    out: &OutputConfig,
    partition: i32,
    exit: &Exit,
    as_of_ms: i64,
    decided_at_ms: i64,
    live: bool,
) -> Result<Vec<OutRecord>, EncodeError> {
    let (customer_id, segment) = (exit.customer_id.as_str(), exit.segment.as_str());
    let exited = SegmentChange {
        customer_id: customer_id.to_string(),
        segment: String::new(),
        previous_segment: segment.to_string(),
        as_of_ms,
        decided_at_ms,
        trigger: if exit.erased {
            Trigger::Erased
        } else {
            Trigger::Evicted
        } as i32,
        membership: Membership::Exited as i32,
        live,
        ..SegmentChange::default()
    };
    let mut records = vec![exit_record(out, segment, &exited)?];
    if !out.current_topic.is_empty() {
        records.push(OutRecord {
            topic: out.current_topic.clone(),
            partition: Some(partition),
            key: customer_id.to_string(),
            value: None,
            headers: headers(&exited),
        });
    }
    Ok(records)
}

/// The record that says the customer left `left` (to `c.segment`, or to
/// none), on `left`'s topic.
fn exit_record(
    out: &OutputConfig,
    left: &str,
    c: &SegmentChange,
) -> Result<OutRecord, EncodeError> {
    let mut exited = c.clone();
    exited.membership = Membership::Exited as i32;
    let value = match out.exits {
        ExitRecords::Record => Some(encode(&exited, out.format)?),
        ExitRecords::Tombstone => None,
    };
    Ok(OutRecord {
        topic: out.topic_for(left),
        partition: None,
        key: c.customer_id.clone(),
        value,
        headers: headers(&exited),
    })
}

/// The record of a risk flag raised or cleared.
pub fn for_risk(
    out: &OutputConfig,
    customer_id: &str,
    t: &crate::decide::risk::Transition,
    cause: crate::decide::risk::Cause,
    as_of_ms: i64,
    decided_at_ms: i64,
    live: bool,
) -> Result<OutRecord, EncodeError> {
    use crate::decide::risk;
    let flag = RiskFlag {
        customer_id: customer_id.to_string(),
        rule: t.finding.rule.as_str().to_string(),
        raised: t.raised,
        severity: if t.raised {
            risk::severity(t.finding.score)
        } else {
            "LOW"
        }
        .to_string(),
        score: t.finding.score,
        evidence: t
            .finding
            .evidence
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect(),
        rules_version: risk::RULES_VERSION.to_string(),
        as_of_ms,
        decided_at_ms,
        live,
        reason: cause.as_str().to_string(),
    };
    let value = match out.format {
        OutputFormat::Protobuf => flag.encode_to_vec(),
        OutputFormat::Json => serde_json::to_vec(&serde_json::json!({
            "customer_id": flag.customer_id,
            "rule": flag.rule,
            "raised": flag.raised,
            "severity": flag.severity,
            "score": flag.score,
            "evidence": flag.evidence,
            "rules_version": flag.rules_version,
            "as_of_ms": flag.as_of_ms,
            "decided_at_ms": flag.decided_at_ms,
            "live": flag.live,
            "reason": flag.reason,
        }))
        .map_err(EncodeError::json("RiskFlag"))?,
    };
    Ok(OutRecord {
        topic: out.risk_topic.clone(),
        partition: None,
        key: customer_id.to_string(),
        value: Some(value),
        headers: vec![
            ("segstream.risk.rule", flag.rule),
            (
                "segstream.risk.state",
                if flag.raised { "RAISED" } else { "CLEARED" }.to_string(),
            ),
            ("segstream.risk.reason", flag.reason),
            ("segstream.live", live.to_string()),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    fn change(id: &str, from: &str, to: &str) -> SegmentChange {
        SegmentChange {
            customer_id: id.into(),
            segment: to.into(),
            previous_segment: from.into(),
            model_version: "m1".into(),
            trigger: Trigger::Event as i32,
            ..SegmentChange::default()
        }
    }

    fn exit(id: &str, segment: &str) -> Exit {
        Exit {
            customer_id: id.into(),
            segment: segment.into(),
            risk_flags: 0,
            erased: false,
        }
    }

    fn per_segment_out(exits: ExitRecords) -> OutputConfig {
        OutputConfig {
            topic: "seg.{segment}".into(),
            exits,
            ..OutputConfig::default()
        }
    }

    #[test]
    fn a_move_exits_the_old_topic_enters_the_new_and_updates_current() {
        let out = per_segment_out(ExitRecords::Record);
        let r = for_change(&out, 2, change("c1", "a", "b"), true).unwrap();
        let topics: Vec<&str> = r.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["seg.a", "seg.b", "customer-segments.current"]);
        let exit = SegmentChange::decode(r[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(exit.membership, Membership::Exited as i32);
        assert_eq!(
            (exit.previous_segment.as_str(), exit.segment.as_str()),
            ("a", "b")
        );
        let enter = SegmentChange::decode(r[1].value.as_deref().unwrap()).unwrap();
        assert_eq!(enter.membership, Membership::Entered as i32);
        assert!(enter.live);
        assert_eq!(r[2].partition, Some(2));
        assert_eq!(r[2].value, r[1].value, "current holds the entered change");
        assert!(r[1].headers.contains(&("segstream.live", "true".into())));
        assert!(r[0]
            .headers
            .contains(&("segstream.membership", "EXITED".into())));
    }

    #[test]
    fn tombstone_exits_and_single_topic_moves() {
        let out = per_segment_out(ExitRecords::Tombstone);
        let r = for_change(&out, 0, change("c1", "a", "b"), false).unwrap();
        assert_eq!(r[0].topic, "seg.a");
        assert_eq!(r[0].value, None);
        // A first classification exits nothing.
        let r = for_change(&out, 0, change("c1", "", "b"), false).unwrap();
        assert_eq!(r.len(), 2);
        // One topic for all segments: a move is one record (plus current).
        let single = OutputConfig {
            current_topic: String::new(),
            ..OutputConfig::default()
        };
        let r = for_change(&single, 0, change("c1", "a", "b"), false).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].topic, "customer-segments");
    }

    #[test]
    fn an_eviction_exits_the_segment_and_tombstones_current() {
        let out = per_segment_out(ExitRecords::Record);
        let r = for_exit(&out, 1, &exit("c1", "a"), 5, 6, true).unwrap();
        assert_eq!(r[0].topic, "seg.a");
        let exit = SegmentChange::decode(r[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(exit.trigger, Trigger::Evicted as i32);
        assert_eq!(exit.segment, "");
        assert_eq!(
            (r[1].topic.as_str(), r[1].value.as_ref()),
            ("customer-segments.current", None)
        );
        assert_eq!(r[1].partition, Some(1));
    }

    /// A consumer of one segment topic that adds a key on ENTERED and
    /// removes it on EXITED or a tombstone keeps that segment's exact member
    /// set through any sequence of moves and evictions.
    #[test]
    fn one_segment_topic_gives_the_exact_member_set() {
        for exits in [ExitRecords::Record, ExitRecords::Tombstone] {
            let out = per_segment_out(exits);
            let segments = ["a", "b", "c"];
            let mut truth: BTreeMap<String, String> = BTreeMap::new();
            let mut topics: BTreeMap<String, Vec<OutRecord>> = BTreeMap::new();
            let mut x: u64 = 7;
            for step in 0..2_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let id = format!("c{}", (x >> 33) % 40);
                let records = if (x >> 20) % 9 == 0 {
                    match truth.remove(&id) {
                        Some(seg) => for_exit(&out, 0, &exit(&id, &seg), step, step, true).unwrap(),
                        None => continue,
                    }
                } else {
                    let to = segments[((x >> 40) % 3) as usize];
                    let from = truth.get(&id).cloned().unwrap_or_default();
                    if from == to {
                        continue;
                    }
                    truth.insert(id.clone(), to.to_string());
                    for_change(&out, 0, change(&id, &from, to), true).unwrap()
                };
                for r in records {
                    topics.entry(r.topic.clone()).or_default().push(r);
                }
            }
            for seg in segments {
                let mut members = BTreeSet::new();
                for r in topics.get(&out.topic_for(seg)).into_iter().flatten() {
                    let entered = r.value.as_deref().is_some_and(|v| {
                        SegmentChange::decode(v).unwrap().membership == Membership::Entered as i32
                    });
                    if entered {
                        members.insert(r.key.clone());
                    } else {
                        members.remove(&r.key);
                    }
                }
                let want: BTreeSet<String> = truth
                    .iter()
                    .filter(|(_, s)| s.as_str() == seg)
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(members, want, "segment {seg} with {exits:?}");
            }
        }
    }

    #[test]
    fn live_is_recent_event_time_small_lag_and_not_a_model_update() {
        let out = OutputConfig {
            live_age: Duration::from_secs(60),
            live_lag: 100,
            ..OutputConfig::default()
        };
        let ev = Trigger::Event as i32;
        assert!(is_live(&out, ev, 1_000_000, 1_030_000, 5));
        assert!(
            !is_live(&out, ev, 1_000_000, 1_090_000, 5),
            "old event time"
        );
        assert!(
            !is_live(&out, ev, 1_000_000, 1_030_000, 500),
            "lagging input"
        );
        assert!(!is_live(
            &out,
            Trigger::ModelUpdate as i32,
            1_000_000,
            1_000_000,
            0
        ));
        assert!(is_live(
            &out,
            Trigger::Inactivity as i32,
            1_000_000,
            1_000_000,
            0
        ));
    }
}
