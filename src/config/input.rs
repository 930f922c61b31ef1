//! `[input]`, `[validation]` and `[dead_letter]`: what is read, what is accepted, where refusals go.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{check_topic_name, range, Problems};
use crate::event::{Encoding, Limits};

/// Input topics and how they are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Topics to consume; every one must be keyed by customer id.
    pub topics: Vec<String>,
    /// `auto` (detect protobuf or JSON per record), `protobuf`, `json`, or
    /// `confluent` (only Confluent-framed records, either body).
    pub encoding: Encoding,
    /// Per-topic overrides of `encoding`, for topics whose producers all use
    /// one encoding, e.g. `{ "events.browse" = "protobuf" }`: a record in
    /// another encoding is dead-lettered (`invalid_protobuf` or
    /// `invalid_json`) instead of being detected. Keys must be input topics.
    pub topic_encodings: BTreeMap<String, Encoding>,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: OffsetReset,
    /// No longer used: the pipeline reads record by record and commits
    /// every `pipeline.commit_interval`. Accepted, whatever its value, so
    /// that older files still load; [`Config::deprecated`] names it.
    #[serde(default, skip_serializing)]
    pub batch_size: Option<serde::de::IgnoredAny>,
    /// No longer used, as `batch_size`.
    #[serde(default, skip_serializing)]
    pub batch_max_wait: Option<serde::de::IgnoredAny>,
    /// Event-time alignment: a partition's input topics are merged by event
    /// time (smallest first), so a catch-up after lag does not turn valid
    /// events late. A topic with nothing buffered but records still to read
    /// is waited for at most this long (cf. Kafka Streams
    /// `max.task.idle.ms`); a topic read to its end is never waited for.
    /// `0s` turns alignment off.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// Records buffered per input topic partition for the alignment before
    /// that partition's fetching pauses (resumed at half).
    pub max_buffered: usize,
    /// How the producers of the input map a customer id to a partition:
    /// `crc32` (librdkafka's default `consistent_random`: the Python, Go,
    /// .NET and Node clients, and segstream's own tools) or `murmur2` (the
    /// Java client's and Kafka Streams' default). The lookup endpoint uses it
    /// to find a customer's partition.
    pub partitioner: Partitioner,
    /// Refuse (dead-letter as `wrong_partition`) an event whose record is
    /// not in the partition its `customer_id` hashes to under
    /// `partitioner`: a producer with another partitioner, or without a
    /// key, would otherwise split the customer's state silently.
    pub check_partition: bool,
}

/// A producer partitioner for keyed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// CRC-32 of the key (librdkafka `consistent`/`consistent_random`).
    #[default]
    Crc32,
    /// murmur2 of the key (Java client, librdkafka `murmur2_random`).
    Murmur2,
}

impl Partitioner {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Crc32 => "crc32",
            Partitioner::Murmur2 => "murmur2",
        }
    }
}

/// Input topics used when none are configured.
pub fn default_input_topics() -> Vec<String> {
    ["events.browse", "events.purchase", "events.review"]
        .map(String::from)
        .to_vec()
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            topics: default_input_topics(),
            encoding: Encoding::Auto,
            topic_encodings: BTreeMap::new(),
            auto_offset_reset: OffsetReset::Earliest,
            batch_size: None,
            batch_max_wait: None,
            max_idle: Duration::from_secs(5),
            partitioner: Partitioner::Crc32,
            check_partition: true,
            max_buffered: 20_000,
        }
    }
}

/// Kafka `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// Start from the beginning of each partition.
    #[default]
    Earliest,
    /// Start from the end.
    Latest,
}

impl InputConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let i = self;
        if i.topics.is_empty() {
            p.add("input.topics", "at least one input topic is required");
        }
        for (n, t) in i.topics.iter().enumerate() {
            if let Err(why) = check_topic_name(t) {
                p.add(format!("input.topics[{n}]"), why.to_string());
            }
            if i.topics[..n].contains(t) {
                p.add(
                    format!("input.topics[{n}]"),
                    format!("topic {t:?} is listed twice"),
                );
            }
        }
        for t in i.topic_encodings.keys() {
            if !i.topics.contains(t) {
                p.add(
                    format!("input.topic_encodings.{t}"),
                    "is not one of input.topics",
                );
            }
        }
        range(p, "input.max_buffered", i.max_buffered, 100, 10_000_000);
        if i.max_idle > Duration::from_secs(600) {
            p.add("input.max_idle", "must be at most 10m");
        }
    }
}

/// Contract bounds (see `event::Limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest accepted record value, in bytes.
    pub max_event_bytes: usize,
    /// Longest id (event, customer, order, product, session), in bytes.
    pub max_id_bytes: usize,
    /// Longest category or currency, in bytes.
    pub max_name_bytes: usize,
    /// Longest review text, in bytes.
    pub max_text_bytes: usize,
    /// Most line items per purchase.
    pub max_line_items: usize,
    /// Oldest accepted event time, as an age relative to now (e.g. `1095d`).
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// Furthest accepted event time into the future (clock skew), e.g. `10m`.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Refuse records whose Kafka key is not their `customer_id`.
    pub require_key_match: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let l = Limits::default();
        ValidationConfig {
            max_event_bytes: l.max_event_bytes,
            max_id_bytes: l.max_id_bytes,
            max_name_bytes: l.max_name_bytes,
            max_text_bytes: l.max_text_bytes,
            max_line_items: l.max_line_items,
            max_past: Duration::from_millis(l.max_past_ms.unsigned_abs()),
            max_future: Duration::from_millis(l.max_future_ms.unsigned_abs()),
            require_key_match: l.require_key_match,
        }
    }
}

impl ValidationConfig {
    /// The limits the decoder enforces.
    pub fn limits(&self) -> Limits {
        let ms = crate::units::millis;
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_id_bytes: self.max_id_bytes,
            max_name_bytes: self.max_name_bytes,
            max_text_bytes: self.max_text_bytes,
            max_line_items: self.max_line_items,
            max_past_ms: ms(self.max_past),
            max_future_ms: ms(self.max_future),
            require_key_match: self.require_key_match,
        }
    }
}

impl ValidationConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let v = self;
        range(
            p,
            "validation.max_event_bytes",
            v.max_event_bytes,
            16,
            16 << 20,
        );
        range(p, "validation.max_id_bytes", v.max_id_bytes, 8, 4096);
        range(p, "validation.max_name_bytes", v.max_name_bytes, 8, 4096);
        range(p, "validation.max_text_bytes", v.max_text_bytes, 0, 1 << 20);
        range(p, "validation.max_line_items", v.max_line_items, 1, 100_000);
        if v.max_past.is_zero() {
            p.add("validation.max_past", "must be greater than zero");
        }
    }
}

/// The dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Topic receiving refused records with their original bytes and reasons.
    pub topic: String,
    /// Values longer than this are cut to this length (headers then say
    /// `segstream.dlq.truncated=true` and give the original size), so one
    /// oversized record cannot exceed the dead-letter topic's own limit.
    pub max_value_bytes: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            topic: "segstream-dlq".to_string(),
            max_value_bytes: 512 * 1024,
        }
    }
}

impl DeadLetterConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let d = self;
        if let Err(why) = check_topic_name(&d.topic) {
            p.add("dead_letter.topic", why.to_string());
        }
        range(
            p,
            "dead_letter.max_value_bytes",
            d.max_value_bytes,
            1024,
            16 << 20,
        );
    }
}
