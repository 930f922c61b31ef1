//! `[output]`: where segment changes go.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{check_topic_name, Problems};

/// Where segment changes go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The segment topic, keyed by customer id. With `{segment}` in the name,
    /// one topic per segment (e.g. `segments.{segment}`).
    pub topic: String,
    /// `protobuf` (`segstream.v1.SegmentChange`) or `json`.
    pub format: OutputFormat,
    /// Current membership: a compacted topic, partitioned like the input,
    /// holding each customer's latest classification under their id (a
    /// tombstone once evicted), written in the same transaction as the
    /// change. Read from the beginning, it gives every customer's segment.
    /// Empty: not written.
    pub current_topic: String,
    /// With one topic per segment, what a move A -> B writes to A's topic:
    /// `record` (an EXITED SegmentChange) or `tombstone` (a null value).
    pub exits: ExitRecords,
    /// A change is live (not replay) only if its partition's event time is
    /// within this of the decision's wall clock.
    #[serde(with = "humantime_serde")]
    pub live_age: Duration,
    /// ... and its partition's input lag is at most this many records.
    pub live_lag: i64,
    /// Risk flags (`segstream.v1.RiskFlag`, raised and cleared, keyed by
    /// customer; rules in `[risk]`). Empty: the rules do not run.
    pub risk_topic: String,
    /// Live outcomes (`segstream.v1.Outcome`, keyed by customer): every
    /// `train.sample_every` (or `outcomes_every`) of event time each customer of the evaluation
    /// population (active within `train.lookback`) is predicted as of that
    /// cut, and once `train.horizon` has passed the prediction is published
    /// here with what the customer did. Empty: no snapshots are taken.
    pub outcomes_topic: String,
    /// Cuts of the live outcomes this far apart instead of
    /// `train.sample_every` (0, the default: `train.sample_every`). Whole
    /// days; the cost of snapshots falls as it grows (one capture of every
    /// active customer per cut).
    #[serde(with = "humantime_serde")]
    pub outcomes_every: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            topic: "customer-segments".into(),
            format: OutputFormat::Protobuf,
            current_topic: "customer-segments.current".into(),
            exits: ExitRecords::Record,
            live_age: Duration::from_secs(300),
            live_lag: 10_000,
            risk_topic: String::new(),
            outcomes_topic: String::new(),
            outcomes_every: Duration::ZERO,
        }
    }
}

/// What leaving a segment writes to that segment's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitRecords {
    /// A SegmentChange with membership EXITED.
    #[default]
    Record,
    /// A tombstone (null value) under the customer's key: with a compacted
    /// segment topic, the topic is the member set.
    Tombstone,
}

impl OutputConfig {
    /// The topic a change to `segment` goes to.
    pub fn topic_for(&self, segment: &str) -> String {
        self.topic.replace("{segment}", segment)
    }
}

/// Encoding of output records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// `segstream.v1.SegmentChange` protobuf.
    #[default]
    Protobuf,
    /// The JSON form (snake_case field names).
    Json,
}

impl OutputConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let out = self;
        if let Err(why) = check_topic_name(&out.topic_for("segment")) {
            p.add("output.topic", why.to_string());
        }
        if !out.current_topic.is_empty() {
            if let Err(why) = check_topic_name(&out.current_topic) {
                p.add("output.current_topic", why.to_string());
            }
        }
        if !out.outcomes_topic.is_empty() {
            if let Err(why) = check_topic_name(&out.outcomes_topic) {
                p.add("output.outcomes_topic", why.to_string());
            }
        }
        if out.live_age < Duration::from_secs(1) || out.live_age > Duration::from_secs(30 * 86_400)
        {
            p.add("output.live_age", "must be between 1s and 30days");
        }
        if out.live_lag < 0 {
            p.add("output.live_lag", "must be 0 or more");
        }
    }
}
