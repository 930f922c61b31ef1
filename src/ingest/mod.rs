//! Ingestion: the Kafka consumer-group member over the input topics, decoding
//! and validating in batches, and routing of refused records to the
//! dead-letter topic.
//!
//! The routing rule is pure ([`route`]): a record becomes either a
//! [`SourcedEvent`] or a [`DeadLetter`], never nothing. This module owns the
//! consumer and the dead-letter records; it does not commit offsets. It
//! reports, per batch, the next offset of every partition it read
//! ([`IngestBatch::next_offsets`]) so that the caller commits them only
//! together with the outputs they caused.

pub mod align;
mod dead_letter;
pub mod history;
mod partition;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tracing::{info, warn};

pub use dead_letter::{header, DeadLetter, DeadLetterSink};
pub use partition::partition_for;

use crate::config::{Config, ConfigError, OffsetReset};
use crate::event::{Decoders, Event, Framing, Reason};
use crate::telemetry::Metrics;

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

/// What one poll produced.
#[derive(Debug, Default)]
pub struct IngestBatch {
    /// Valid events, in consumption order.
    pub events: Vec<SourcedEvent>,
    /// Refused records, in consumption order.
    pub dead_letters: Vec<DeadLetter>,
    /// For every (topic, partition) read: the offset after the last record.
    pub next_offsets: BTreeMap<(Arc<str>, i32), i64>,
}

impl IngestBatch {
    /// Records in the batch (events plus dead letters).
    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next offsets as a list ready to commit.
    pub fn offsets_to_commit(&self) -> Result<TopicPartitionList, IngestError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.next_offsets {
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))
                .map_err(IngestError::kafka("building the offset list"))?;
        }
        Ok(tpl)
    }
}

/// Logs assignment changes of the consumer group.
pub struct IngestContext;

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = %describe(tpl), "Partitions assigned.")
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = %describe(tpl), "Partitions revoked.")
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance failed."),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect();
    parts.join(",")
}

/// A consumer-group member reading the input topics in routed batches, with
/// a plain (non-transactional) dead-letter writer: for tools and jobs that
/// read the input outside the run loop (e.g. replaying history). The run
/// loop itself consumes through `pipeline`, with [`route`], inside its
/// transactions.
pub struct Ingestor {
    consumer: StreamConsumer<IngestContext>,
    decoder: Decoders,
    topics: Vec<String>,
    max_dead_letter_bytes: usize,
    batch_size: usize,
    batch_max_wait: Duration,
    metrics: Metrics,
    /// Interned topic names, so events share one allocation per topic.
    topic_names: BTreeMap<String, Arc<str>>,
}

/// An [`Ingestor`] batch's most records, by default.
pub const BATCH_SIZE: usize = 1000;
/// Longest wait to fill an [`Ingestor`] batch once its first record
/// arrived, by default.
pub const BATCH_MAX_WAIT: Duration = Duration::from_millis(50);

impl Ingestor {
    /// Sets the batch size and the longest wait to fill a batch once its
    /// first record arrived (defaults [`BATCH_SIZE`], [`BATCH_MAX_WAIT`]).
    pub fn with_batching(mut self, size: usize, max_wait: Duration) -> Self {
        self.batch_size = size.max(1);
        self.batch_max_wait = max_wait;
        self
    }

    /// Builds the consumer (not yet subscribed). Auto-commit is off: offsets
    /// are committed by the caller with the outputs they caused.
    pub fn build(config: &Config, metrics: Metrics) -> Result<Self, IngestError> {
        let mut client = member_config(config)?;
        client.set("enable.partition.eof", "false");
        let consumer: StreamConsumer<IngestContext> = client
            .create_with_context(IngestContext)
            .map_err(IngestError::kafka("creating the consumer"))?;
        Ok(Ingestor {
            consumer,
            decoder: config.decoders(),
            topics: config.input.topics.clone(),
            max_dead_letter_bytes: config.dead_letter.max_value_bytes,
            batch_size: BATCH_SIZE,
            batch_max_wait: BATCH_MAX_WAIT,
            metrics,
            topic_names: BTreeMap::new(),
        })
    }

    /// Checks that the input topics exist, then joins the group.
    pub fn subscribe(&self, timeout: Duration) -> Result<(), IngestError> {
        let metadata = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(IngestError::kafka("fetching cluster metadata"))?;
        let missing: Vec<String> = self
            .topics
            .iter()
            .filter(|t| {
                !metadata
                    .topics()
                    .iter()
                    .any(|m| m.name() == t.as_str() && m.error().is_none())
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(IngestError::MissingTopics(missing));
        }
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(IngestError::kafka("subscribing to the input topics"))
    }

    /// The underlying consumer (for committing and for group metadata).
    pub fn consumer(&self) -> &StreamConsumer<IngestContext> {
        &self.consumer
    }

    /// The partitions currently assigned to this instance.
    pub fn assignment(&self) -> Result<Vec<(String, i32)>, IngestError> {
        let tpl = self
            .consumer
            .assignment()
            .map_err(IngestError::kafka("reading the assignment"))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect())
    }

    /// The consumer's position (next offset to read) per assigned partition;
    /// `None` before the first record of a partition was fetched.
    pub fn positions(&self) -> Result<Vec<(String, i32, Option<i64>)>, IngestError> {
        let tpl = self
            .consumer
            .position()
            .map_err(IngestError::kafka("reading positions"))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset().to_raw()))
            .collect())
    }

    /// Waits up to `idle_wait` for a first record, then gathers more for at
    /// most the batch wait or until the batch size (see [`Ingestor::with_batching`]), and
    /// routes each of them. An empty batch means nothing arrived.
    pub async fn next_batch(&mut self, idle_wait: Duration) -> Result<IngestBatch, IngestError> {
        let mut batch = IngestBatch::default();
        let mut consumed: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let now_ms = now_ms();
        let first = match tokio::time::timeout(idle_wait, self.consumer.recv()).await {
            Err(_) => return Ok(batch),
            Ok(r) => r.map_err(IngestError::kafka("receiving records"))?,
        };
        let decoder = &self.decoder;
        let names = &mut self.topic_names;
        let max_dlq = self.max_dead_letter_bytes;
        let mut handle = |batch: &mut IngestBatch, msg: &BorrowedMessage<'_>| {
            let topic = intern(names, msg.topic());
            *consumed.entry(topic.clone()).or_default() += 1;
            let record = source_record(msg);
            batch
                .next_offsets
                .insert((topic.clone(), record.partition), record.offset + 1);
            match route(decoder, &record, &topic, now_ms, max_dlq) {
                Routed::Event(e) => batch.events.push(e),
                Routed::DeadLetter(d) => batch.dead_letters.push(d),
            }
        };
        handle(&mut batch, &first);
        drop(first);
        let deadline = tokio::time::Instant::now() + self.batch_max_wait;
        while batch.len() < self.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(msg)) => handle(&mut batch, &msg),
                Ok(Err(e)) => {
                    // Keep what we have; the error surfaces on the next call
                    // if it persists.
                    warn!(error = %e, "Consumer error while filling a batch.");
                    break;
                }
            }
        }
        self.record_metrics(&batch, &consumed);
        Ok(batch)
    }

    fn record_metrics(&self, batch: &IngestBatch, consumed: &BTreeMap<Arc<str>, u64>) {
        let m = &self.metrics;
        for (topic, n) in consumed {
            m.records_consumed.with_label_values(&[topic]).inc_by(*n);
        }
        let mut accepted: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in &batch.events {
            *accepted
                .entry((&e.topic, e.event.kind().as_str()))
                .or_default() += 1;
        }
        for ((topic, kind), n) in accepted {
            m.events_accepted
                .with_label_values(&[topic, kind])
                .inc_by(n);
        }
        let mut refused: BTreeMap<Reason, u64> = BTreeMap::new();
        for d in &batch.dead_letters {
            *refused.entry(d.reason).or_default() += 1;
            if d.truncated {
                m.dead_letters_truncated.inc();
            }
        }
        for (reason, n) in refused {
            m.dead_letters
                .with_label_values(&[reason.stage().as_str(), reason.as_str()])
                .inc_by(n);
        }
        m.batch_records.observe(batch.len() as f64);
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
