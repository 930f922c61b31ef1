//! A consumer-group member reading the input topics in batches through
//! the [`Intake`](super::Intake): for tools and jobs that read the input
//! outside the run loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

use super::{Accepted, Intake};
use crate::config::member_config;
use crate::config::Config;
use crate::event::Reason;
use crate::ingest::{now_ms, source_record, DeadLetter, IngestError, SourcedEvent};
use crate::telemetry::Metrics;

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
    intake: Intake,
    topics: Vec<String>,
    batch_size: usize,
    batch_max_wait: Duration,
    metrics: Metrics,
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
            intake: Intake::reader(config),
            topics: config.input.topics.clone(),
            batch_size: BATCH_SIZE,
            batch_max_wait: BATCH_MAX_WAIT,
            metrics,
        })
    }

    /// Checks that the input topics exist, then joins the group (and the
    /// intake's partition check starts, with the first topic's count).
    pub fn subscribe(&mut self, timeout: Duration) -> Result<(), IngestError> {
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
        if let Some(m) = (metadata.topics().iter())
            .find(|m| Some(m.name()) == self.topics.first().map(String::as_str))
        {
            self.intake.set_partitions(m.partitions().len() as i32);
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
        let intake = &mut self.intake;
        let mut handle = |batch: &mut IngestBatch, msg: &BorrowedMessage<'_>| {
            let topic = intake.topic(msg.topic());
            *consumed.entry(topic.clone()).or_default() += 1;
            let record = source_record(msg);
            batch
                .next_offsets
                .insert((topic.clone(), record.partition), record.offset + 1);
            match intake.accept(&record, &topic, now_ms) {
                Accepted::Event(e) => batch.events.push(*e),
                Accepted::Refused(d) => batch.dead_letters.push(d),
                // The reader's intake has no erasure topic.
                Accepted::Erasure(_) => {}
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
