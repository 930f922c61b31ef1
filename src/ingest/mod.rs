//! Ingestion: records off Kafka. The routing rule and the dead-letter
//! records, the producer's partitioner, and the event-time merge of a
//! partition's topics ([`align`]). The clients' settings are
//! `config::clients`'s (so the pure state layer, which restores from the
//! changelog, need not know this one).
//!
//! The routing rule is pure ([`route`]): a record becomes either a
//! [`SourcedEvent`] or a [`DeadLetter`], never nothing. The per-record step
//! from a record to a customer's state, which routes through it, is
//! [`crate::intake`].

pub mod align;
mod dead_letter;
mod partition;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{BorrowedMessage, Headers, Message};

pub use dead_letter::{header, DeadLetter, DeadLetterSink};
pub use partition::partition_for;

use crate::config::ConfigError;
use crate::event::{Decoders, Event, Framing};

/// Errors of the ingest stage. Bad input is never an error here: it becomes a
/// [`DeadLetter`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The configuration could not be turned into clients.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka client call failed (external: retry with backoff, or give up).
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Topics the instance needs do not exist on the cluster.
    #[error("missing topics: {0:?}; create them first (for the local broker: `make topics`)")]
    MissingTopics(Vec<String>),
}

impl crate::error::Classify for IngestError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            IngestError::Config(e) => crate::error::Classify::class(e),
            IngestError::Kafka { source, .. } => crate::error::Classify::class(source),
            IngestError::MissingTopics(_) => crate::error::ErrorClass::BadInput,
        }
    }
}

impl IngestError {
    pub(crate) fn kafka(
        what: &'static str,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> IngestError {
        move |source| IngestError::Kafka { what, source }
    }
}

/// A record as read from Kafka, borrowed (so the routing rule is testable
/// without a broker).
#[derive(Debug, Clone)]
pub struct SourceRecord<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Broker or producer timestamp, when present.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record headers (kept on dead letters).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A valid event and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedEvent {
    /// The event.
    pub event: Event,
    /// How its value was framed.
    pub framing: Framing,
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// What becomes of one record: exactly one of these, never nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A valid event for the state stage.
    Event(SourcedEvent),
    /// A refused record for the dead-letter topic.
    DeadLetter(DeadLetter),
}

/// Decides what becomes of one record.
pub fn route(
    decoders: &Decoders,
    record: &SourceRecord<'_>,
    topic: &Arc<str>,
    now_ms: i64,
    max_dead_letter_bytes: usize,
) -> Routed {
    let decoder = decoders.for_topic(topic);
    match decoder.decode(record.key, record.value, now_ms) {
        Ok((event, framing)) => Routed::Event(SourcedEvent {
            event,
            framing,
            topic: topic.clone(),
            partition: record.partition,
            offset: record.offset,
        }),
        Err(rejection) => {
            Routed::DeadLetter(DeadLetter::new(record, rejection, max_dead_letter_bytes))
        }
    }
}

/// One shared `Arc<str>` per topic name, so per-record bookkeeping does not
/// allocate.
pub fn intern(names: &mut BTreeMap<String, Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(t) = names.get(topic) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(topic);
    names.insert(topic.to_string(), t.clone());
    t
}

/// The borrowed view of a consumed message.
pub fn source_record<'a>(msg: &'a BorrowedMessage<'a>) -> SourceRecord<'a> {
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    SourceRecord {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key: msg.key(),
        value: msg.payload(),
        headers,
    }
}

/// Wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(crate::units::millis)
        .unwrap_or(0)
}
