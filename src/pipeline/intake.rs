//! The run loop's side of the per-record step ([`crate::intake`]): a
//! consumed record is accepted by the thread's `Intake`, held for the
//! event-time merge of its partition (pausing a partition that runs
//! ahead), and what the merge releases is applied to the partition's store
//! by the `Intake` again, or goes to the dead letters; its effects go into
//! the open cycle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::clients::PipelineContext;
use super::cycle::{RiskChange, Why};
use super::{Pipeline, PipelineError, TxnError};
use crate::ingest;
use crate::ingest::align::Backlog;
use crate::intake::{Accepted, Applied, ErasureRequest};
use crate::telemetry::kafka_log;

/// A consumed record in the aligner.
pub(super) struct Held {
    item: HeldItem,
    offset: i64,
    timestamp_ms: i64,
}

#[cfg(test)]
impl Held {
    /// An erasure request of `id` held for partition `partition`.
    pub(super) fn erasure_for_test(partition: i32, id: &str) -> Held {
        Held {
            item: HeldItem {
                accepted: Accepted::Erasure(ErasureRequest {
                    partition,
                    id: id.into(),
                    offset: 0,
                    through_ms: 0,
                }),
                source: None,
            },
            offset: 0,
            timestamp_ms: 0,
        }
    }
}

/// What the merge holds of a record. An erasure request has no event time:
/// the merge releases it before any input record of its partition, and
/// holds the input while the erasure partition has records to come (up to
/// `input.max_idle`), so a request is applied before the events it covers
/// that were read in the same catch-up.
pub(super) struct HeldItem {
    accepted: Accepted,
    /// The original record of an event, for a `late` dead letter.
    source: Option<OwnedSource>,
}

/// An owned copy of a consumed record.
pub(super) struct OwnedSource {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

impl OwnedSource {
    fn of(record: &ingest::SourceRecord<'_>) -> Self {
        OwnedSource {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record.headers.clone(),
            timestamp_ms: record.timestamp_ms,
        }
    }

    fn record<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        offset: i64,
    ) -> ingest::SourceRecord<'a> {
        ingest::SourceRecord {
            topic,
            partition,
            offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: self.headers.clone(),
        }
    }
}

impl Pipeline {
    /// Erases a customer as of the request's time (their state goes, their
    /// segment and flags are left at the cycle's output, and a marker drops
    /// their events stamped before it that are read later) and queues an
    /// audit entry.
    fn erase(&mut self, request: ErasureRequest) {
        let now = ingest::now_ms();
        let ErasureRequest {
            partition,
            id,
            offset,
            through_ms,
        } = request;
        let had_state = self
            .partitions
            .stores
            .get_mut(&partition)
            .is_some_and(|s| s.erase(&id, through_ms));
        let key = crate::privacy::audit_key(self.thread.pseudonymizer.as_deref(), &id);
        info!(
            customer = %key,
            partition,
            offset,
            had_state,
            erased_through_ms = through_ms,
            "Erased a customer (privacy.erasure_topic)."
        );
        self.telemetry.metrics.erasures.inc();
        if !self.cfg.privacy.audit_topic.is_empty() {
            let value = serde_json::json!({
                "customer": key,
                "partition": partition,
                "request_offset": offset,
                "erased_through_ms": through_ms,
                "had_state": had_state,
                "erased_at_ms": now,
            });
            self.cycle
                .audits
                .push((key, value.to_string().into_bytes()));
        }
    }

    pub(super) async fn on_message(
        &mut self,
        msg: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), PipelineError> {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                kafka_log::client_error("consumer", &e, "");
                // Retrying cannot fix a missing ACL: end the instance with
                // what is not allowed.
                let what = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::GroupAuthorizationFailed) => format!(
                        "the consumer group {} (kafka.group_id)",
                        self.cfg.kafka.group_id
                    ),
                    Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                        "one of the input topics".to_owned()
                    }
                    _ => return Ok(()),
                };
                return Err(PipelineError::NotAuthorized(format!(
                    "{what}: the broker's ACLs do not let this client ({}) use it",
                    self.cfg.kafka.identity()
                )));
            }
        };
        // A rebalance noticed during this poll applies before the record: its
        // partition's state must be restored first, and a record of a
        // partition just revoked must not be processed.
        self.take_rebalances().await?;
        let topic = self.intake.topic(msg.topic());
        let (partition, offset) = (msg.partition(), msg.offset());
        if !self
            .partitions
            .assigned
            .contains(&(topic.clone(), partition))
        {
            return Ok(());
        }
        if !self.partitions.stores.contains_key(&partition) {
            self.restore(vec![partition]).await?;
        }
        let record = ingest::source_record(&msg);
        let accepted = self.intake.accept(&record, &topic, ingest::now_ms());
        let time_ms = accepted.event_time_ms();
        let source = matches!(accepted, Accepted::Event(_)).then(|| OwnedSource::of(&record));
        let item = HeldItem { accepted, source };
        self.telemetry.tally.consumed(&topic);
        self.partitions
            .fetched
            .insert((topic.clone(), partition), offset + 1);
        self.partitions.aligner.push(
            &topic,
            partition,
            time_ms,
            Held {
                item,
                offset,
                timestamp_ms: record.timestamp_ms.unwrap_or(-1),
            },
        );
        if self.partitions.aligner.buffered(&topic, partition) > self.cfg.input.max_buffered
            && self.partitions.paused.insert((topic.clone(), partition))
        {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(e) = self.consumer.pause(&tpl) {
                warn!(topic = %topic, partition, error = %e, "Pausing an input partition failed.");
            }
        }
        self.release(partition)
    }

    /// Applies the records of `partition` that the event-time merge lets go.
    pub(super) fn release(&mut self, partition: i32) -> Result<(), PipelineError> {
        let mut out = std::mem::take(&mut self.partitions.released);
        {
            let ends = self.consumer.context().ends.lock().ok();
            let (fetched, committed) = (&self.partitions.fetched, &self.partitions.committed);
            let consumer = &self.consumer;
            // librdkafka's position, read only when needed: it moves past
            // transaction markers, which a read_committed consumer never
            // receives but which count in the partition's end offset.
            let positions = std::cell::OnceCell::new();
            let backlog = |topic: &Arc<str>| {
                let key = (topic.clone(), partition);
                let Some(end) = ends
                    .as_ref()
                    .and_then(|e| e.get(&**topic))
                    .and_then(|e| e.get(&partition))
                    .copied()
                else {
                    return Backlog::Pending;
                };
                let seen = fetched.get(&key).or_else(|| committed.get(&key));
                match seen {
                    Some(pos) if *pos >= end => return Backlog::CaughtUp,
                    // Far from the end: records wait, whatever the markers.
                    Some(pos) if end - *pos > 64 => return Backlog::Pending,
                    _ => {}
                }
                let position = positions
                    .get_or_init(|| consumer.position().ok())
                    .as_ref()
                    .and_then(|tpl: &TopicPartitionList| tpl.find_partition(topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if position.is_some_and(|pos| pos >= end) {
                    Backlog::CaughtUp
                } else {
                    Backlog::Pending
                }
            };
            self.partitions
                .aligner
                .release(partition, Instant::now(), backlog, &mut out);
        }
        let mut result = Ok(());
        for (topic, held) in out.drain(..) {
            if result.is_ok() {
                result = self.apply(topic, partition, held);
            }
        }
        self.partitions.released = out;
        if !self.partitions.paused.is_empty() {
            let half = self.cfg.input.max_buffered / 2;
            let resume: Vec<(Arc<str>, i32)> = self
                .partitions
                .paused
                .iter()
                .filter(|(t, p)| *p == partition && self.partitions.aligner.buffered(t, *p) <= half)
                .cloned()
                .collect();
            for key in &resume {
                self.partitions.paused.remove(key);
            }
            self.resume(&resume);
        }
        result
    }

    /// Resumes fetching `partitions` (a failure is logged: the partition
    /// stays paused until its next resume).
    pub(super) fn resume(&self, partitions: &[(Arc<str>, i32)]) {
        if partitions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        if let Err(e) = self.consumer.resume(&tpl) {
            warn!(partitions = ?partitions, error = %e, "Resuming input partitions failed.");
        }
    }

    /// Releases what the merge lets go in every partition (the idle wait
    /// of an empty topic ends with time, not only with a new record).
    pub(super) fn release_all(&mut self) -> Result<(), PipelineError> {
        for p in self.partitions.aligner.partitions() {
            self.release(p)?;
        }
        Ok(())
    }

    /// Applies one released record to state (or the dead letters) and puts
    /// its offset into the open cycle.
    pub(super) fn apply(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        held: Held,
    ) -> Result<(), PipelineError> {
        let Held {
            item,
            offset,
            timestamp_ms,
        } = held;
        let HeldItem { accepted, source } = item;
        let late_letter = match accepted {
            Accepted::Event(e) => {
                let Some(store) = self.partitions.stores.get_mut(&partition) else {
                    return Err(PipelineError::Task(format!(
                        "no state for partition {partition} after restore"
                    )));
                };
                let stamped = (timestamp_ms >= 0).then_some(timestamp_ms);
                match self
                    .intake
                    .apply(store, &e.event, stamped, tokio::time::Instant::now())
                {
                    Applied::Changed { raised } => {
                        if !raised.is_empty() {
                            let now = ingest::now_ms();
                            for t in raised {
                                self.cycle.risk_changes.push(RiskChange {
                                    partition,
                                    customer_id: e.event.customer_id.clone(),
                                    transition: t,
                                    as_of_ms: e.event.event_time_ms,
                                    decided_at_ms: now,
                                });
                            }
                        }
                        self.cycle
                            .to_score
                            .entry(partition)
                            .or_default()
                            .insert(e.event.customer_id.clone(), Why::Event);
                        self.telemetry.tally.accepted(&topic, e.event.kind());
                        None
                    }
                    Applied::Duplicate => {
                        self.telemetry.tally.duplicate();
                        None
                    }
                    Applied::Erased => {
                        self.telemetry.tally.erased();
                        None
                    }
                    Applied::Late { watermark_ms } => source.as_ref().map(|source| {
                        self.intake.late(
                            &source.record(&topic, partition, offset),
                            &e.event,
                            watermark_ms,
                        )
                    }),
                }
            }
            Accepted::Refused(d) => Some(d),
            Accepted::Erasure(request) => {
                self.erase(request);
                None
            }
        };
        if let Some(d) = late_letter {
            self.telemetry.tally.refused(d.reason, d.truncated);
            self.cycle.dead_letters.push(d);
        }
        self.cycle.timestamps.push(timestamp_ms);
        self.cycle.offsets.insert((topic, partition), offset + 1);
        self.cycle.records += 1;
        self.cycle.unflushed += 1;
        self.cycle.unflushed_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Consumes into the next cycle while `commit` (the previous cycle's
    /// transaction) runs, so consumption does not stall on the broker's
    /// round trips. Up to `pipeline.max_cycle_records`, and only once the
    /// offsets are in the transaction: a poll can complete a rebalance,
    /// and the group generation the offsets carry must still be current
    /// when they are sent. A record that
    /// arrives with a rebalance pending is held until the commit is done
    /// (a revocation aborts the open transaction, which must not happen
    /// mid-commit) and returned; so is an error of the record handling.
    pub(super) async fn consume_while<'c>(
        &mut self,
        consumer: &'c StreamConsumer<PipelineContext>,
        commit: impl std::future::Future<Output = Result<(), TxnError>>,
        mut offsets_sent: tokio::sync::oneshot::Receiver<()>,
    ) -> (
        Result<(), TxnError>,
        Option<Result<rdkafka::message::BorrowedMessage<'c>, rdkafka::error::KafkaError>>,
        Option<PipelineError>,
    ) {
        let cap = self.cfg.pipeline.max_cycle_records as u64;
        tokio::pin!(commit);
        let (mut held, mut failed, mut sent) = (None, None, false);
        let done = loop {
            tokio::select! {
                biased;
                r = &mut commit => break r,
                // Sent, or the commit failed before (it ends next).
                _ = &mut offsets_sent, if !sent => sent = true,
                msg = consumer.recv(), if sent && held.is_none() && failed.is_none() && self.cycle.records < cap => {
                    if self.consumer.context().pending.load(Ordering::Acquire) {
                        held = Some(msg);
                    } else if let Err(e) = self.on_message(msg).await {
                        failed = Some(e);
                    }
                }
            }
        };
        (done, held, failed)
    }
}
