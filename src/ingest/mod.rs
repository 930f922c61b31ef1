//! Ingestion: records off Kafka. The consumer settings every reader of the
//! input uses, the routing rule and the dead-letter records, the producer's
//! partitioner, and the event-time merge of a partition's topics
//! ([`align`]).
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
use rdkafka::ClientConfig;

pub use dead_letter::{header, DeadLetter, DeadLetterSink};
pub use partition::partition_for;

use crate::config::{Config, ConfigError, OffsetReset};
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

/// Consumer settings for a stream processor, each set only where the
/// configuration leaves it unset (`[kafka.properties]` and
/// `[kafka.consumer_properties]` win). The pipeline and the benchmarks use
/// the same ones, so the benchmarks measure what runs.
pub fn consumer_defaults(c: &mut ClientConfig) {
    set_unset(
        c,
        &[
            // librdkafka's statistics every second: the lag gauge and the
            // event-time merge's "read to its end" come from them.
            ("statistics.interval.ms", "1000"),
            // When the local queue is over queued.min.messages /
            // queued.max.messages.kbytes, librdkafka waits this long before it
            // fetches again: 1000 ms by default, a one-second stall of the whole
            // pipeline each time the application drains more slowly than the
            // fetcher fills (ingest measured at 0.24x raw with the default).
            ("fetch.queue.backoff.ms", "10"),
            // Prefetch up to 64 MiB per partition set instead of a message
            // count: a steady supply for decoding without unbounded memory.
            ("queued.max.messages.kbytes", "65536"),
            // A fetch request returns as soon as 1 byte is there (live latency)
            // but waits at most 100 ms when there is nothing (idle topics).
            ("fetch.wait.max.ms", "100"),
        ],
    );
}

/// The settings of a member of the pipeline's consumer group (a stream
/// thread): the group, no automatic commits or offset stores (offsets go
/// into each cycle's transaction), `read_committed`, the range assignor
/// (the same partition numbers of every input topic: state is
/// co-partitioned) and `input.auto_offset_reset`, on top of
/// [`consumer_defaults`]. The one builder of group members.
pub fn member_config(cfg: &Config) -> Result<ClientConfig, ConfigError> {
    let mut c = cfg.kafka.consumer_config()?;
    consumer_defaults(&mut c);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range")
        .set(
            "auto.offset.reset",
            match cfg.input.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        );
    Ok(c)
}

/// The settings of a reader of committed records outside the pipeline's
/// group (restore, snapshots, erasure lists, history, `show` commands,
/// benchmarks): its own `group` id (librdkafka assigns partitions only with
/// one; ids next to `kafka.group_id` fall under the same prefix ACL), no
/// commits, `read_committed`, partition EOF events when `eof`, on top of
/// [`consumer_defaults`]. The one builder of such readers.
pub fn reader_config(
    kafka: &crate::config::KafkaConfig,
    group: &str,
    eof: bool,
) -> Result<ClientConfig, ConfigError> {
    let mut c = kafka.consumer_config()?;
    reader_defaults(&mut c, group, eof);
    Ok(c)
}

/// [`reader_config`]'s settings applied to a client configuration built
/// elsewhere (the restore and benchmark readers take one).
pub fn reader_defaults(c: &mut ClientConfig, group: &str, eof: bool) {
    consumer_defaults(c);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("isolation.level", "read_committed");
}

/// Producer settings for the transactional producer, each set only where
/// the configuration leaves it unset.
pub fn producer_defaults(c: &mut ClientConfig) {
    set_unset(
        c,
        &[
            // A commit cycle's records go out in few large batches; the commit
            // flushes anyway, so a short linger costs no latency at the end.
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            // Room for a whole cycle's outputs, changelog and dead letters
            // without QueueFull back-off in the middle of a cycle.
            ("queue.buffering.max.messages", "1000000"),
            // Right after a commit the transaction coordinator answers the
            // next cycle's AddOffsetsToTxn with CONCURRENT_TRANSACTIONS until
            // the previous markers are written (milliseconds); the retry then
            // waits 10 ms, not librdkafka's 100 (it still doubles per retry,
            // up to retry.backoff.max.ms).
            ("retry.backoff.ms", "10"),
        ],
    );
}

/// Sets each property the configuration leaves unset.
fn set_unset(c: &mut ClientConfig, defaults: &[(&str, &str)]) {
    for (key, value) in defaults {
        if c.get(key).is_none() {
            c.set(*key, *value);
        }
    }
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
