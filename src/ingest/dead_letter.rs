//! Dead-letter records: the refused record's original key, value and headers,
//! plus headers naming the stage, the reason code, a message and the source
//! coordinates.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{IngestError, SourceRecord};
use crate::config::Config;
use crate::event::{Reason, Rejection, Stage};

/// Header names written on every dead-letter record (part of the contract).
pub mod header {
    /// The prefix of every segstream dead-letter header.
    pub const PREFIX: &str = "segstream.dlq.";
    /// Stage that refused the record (`decode`, `validate`, ...).
    pub const STAGE: &str = "segstream.dlq.stage";
    /// Low-cardinality reason code (see `event::Reason`).
    pub const REASON: &str = "segstream.dlq.reason";
    /// Human-readable explanation.
    pub const MESSAGE: &str = "segstream.dlq.message";
    /// Source topic.
    pub const TOPIC: &str = "segstream.dlq.source.topic";
    /// Source partition (decimal).
    pub const PARTITION: &str = "segstream.dlq.source.partition";
    /// Source offset (decimal).
    pub const OFFSET: &str = "segstream.dlq.source.offset";
    /// Source record timestamp in ms (decimal), when the record had one.
    pub const TIMESTAMP: &str = "segstream.dlq.source.timestamp_ms";
    /// Size of the original value in bytes (decimal).
    pub const ORIGINAL_SIZE: &str = "segstream.dlq.original_size";
    /// `true` when the value was cut to `dead_letter.max_value_bytes`.
    pub const TRUNCATED: &str = "segstream.dlq.truncated";
}

/// A refused record on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Stage that refused it.
    pub stage: Stage,
    /// Why.
    pub reason: Reason,
    /// Details.
    pub message: String,
    /// Source topic.
    pub source_topic: String,
    /// Source partition.
    pub source_partition: i32,
    /// Source offset.
    pub source_offset: i64,
    /// Source timestamp.
    pub source_timestamp_ms: Option<i64>,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value (possibly truncated).
    pub value: Vec<u8>,
    /// Size of the original value.
    pub original_size: usize,
    /// Whether `value` was cut.
    pub truncated: bool,
    /// Original headers (a null value stays null), without the
    /// `segstream.dlq.*` headers of an earlier dead-lettering: a re-driven
    /// record carries only this refusal's.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// Builds the dead letter for `record` refused with `rejection`.
    pub fn new(record: &SourceRecord<'_>, rejection: Rejection, max_value_bytes: usize) -> Self {
        let value = record.value.unwrap_or_default();
        let truncated = value.len() > max_value_bytes;
        DeadLetter {
            stage: rejection.stage,
            reason: rejection.reason,
            message: rejection.message,
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
            source_timestamp_ms: record.timestamp_ms,
            key: record.key.map(<[u8]>::to_vec),
            value: value[..value.len().min(max_value_bytes)].to_vec(),
            original_size: value.len(),
            truncated,
            headers: record
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with(header::PREFIX))
                .cloned()
                .collect(),
        }
    }

    /// The original headers followed by the segstream ones.
    pub fn kafka_headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(self.headers.len() + 9);
        for (k, v) in &self.headers {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let size = self.original_size.to_string();
        let mut ours: Vec<(&str, String)> = vec![
            (header::STAGE, self.stage.as_str().to_string()),
            (header::REASON, self.reason.as_str().to_string()),
            (header::MESSAGE, self.message.clone()),
            (header::TOPIC, self.source_topic.clone()),
            (header::PARTITION, partition),
            (header::OFFSET, offset),
            (header::ORIGINAL_SIZE, size),
            (header::TRUNCATED, self.truncated.to_string()),
        ];
        if let Some(ts) = self.source_timestamp_ms {
            ours.push((header::TIMESTAMP, ts.to_string()));
        }
        for (k, v) in &ours {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        h
    }
}

/// Writes dead letters to the dead-letter topic and waits for every
/// acknowledgement, so that the caller may commit the source offsets after.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterSink {
    /// An idempotent producer sized for `dead_letter.max_value_bytes`.
    pub fn build(config: &Config) -> Result<Self, IngestError> {
        let mut client = config.kafka.producer_config()?;
        // Room for the value plus the original and segstream headers.
        let max = (config.dead_letter.max_value_bytes + 256 * 1024).max(1_000_000);
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", max.to_string())
            .set("message.timeout.ms", "60000");
        let producer = client
            .create()
            .map_err(IngestError::kafka("creating the dead-letter producer"))?;
        Ok(DeadLetterSink {
            producer,
            topic: config.dead_letter.topic.clone(),
        })
    }

    /// Sends every dead letter and waits until all are acknowledged.
    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), IngestError> {
        let mut pending = Vec::with_capacity(letters.len());
        for d in letters {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .payload(&d.value)
                .headers(d.kafka_headers());
            if let Some(k) = &d.key {
                record = record.key(k);
            }
            let delivery =
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| IngestError::Kafka {
                        what: "queueing a dead letter",
                        source: e,
                    })?;
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(IngestError::Kafka {
                        what: "writing a dead letter",
                        source: e,
                    })
                }
                Err(_canceled) => {
                    return Err(IngestError::Kafka {
                        what: "writing a dead letter",
                        source: rdkafka::error::KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(())
    }

    /// Waits for queued records to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), IngestError> {
        use rdkafka::producer::Producer;
        self.producer
            .flush(timeout)
            .map_err(IngestError::kafka("flushing the dead-letter producer"))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;

    /// Regression (issue 16): a null header value became an empty one, and a
    /// re-driven dead letter kept its old `segstream.dlq.*` headers before
    /// the new ones, so a reader taking the first value saw a stale reason.
    #[test]
    fn null_headers_stay_null_and_old_dead_letter_headers_are_dropped() {
        let record = SourceRecord {
            topic: "events.browse",
            partition: 2,
            offset: 7,
            timestamp_ms: Some(1),
            key: Some(b"c-1"),
            value: Some(b"{"),
            headers: vec![
                ("trace".into(), None),
                (header::REASON.into(), Some(b"late".to_vec())),
                (header::OFFSET.into(), Some(b"99".to_vec())),
                ("x".into(), Some(b"1".to_vec())),
            ],
        };
        let d = DeadLetter::new(&record, Rejection::new(Reason::InvalidJson, "bad"), 1024);
        assert_eq!(
            d.headers,
            vec![
                ("trace".to_string(), None),
                ("x".to_string(), Some(b"1".to_vec()))
            ]
        );
        let h = d.kafka_headers();
        let all: Vec<(String, Option<Vec<u8>>)> = h
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(all[0], ("trace".to_string(), None));
        let first = |k: &str| {
            all.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(first(header::REASON).as_deref(), Some(&b"invalid_json"[..]));
        assert_eq!(first(header::OFFSET).as_deref(), Some(&b"7"[..]));
        assert_eq!(all.iter().filter(|(n, _)| n == header::REASON).count(), 1);
    }
}
