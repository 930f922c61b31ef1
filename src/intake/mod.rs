//! The one per-record step from a consumed record to a customer's state.
//!
//! [`Intake::accept`] decides what a record is (pure: no clock, no I/O, no
//! state): it decodes and validates it, checks that its customer hashes to
//! the partition it was read from, pseudonymizes the customer, and reads an
//! erasure request. [`Intake::apply`] puts an accepted event into its
//! partition's store and evaluates the risk rules on the customer it
//! changed. Every per-record loop uses the two: the run loop (between them
//! it holds records for the event-time merge of their partition, which needs
//! the consumer's view of the topics' ends), the history reader of the
//! trainer and batch tools ([`history`]), the [`Ingestor`] and the ingest
//! benchmark, so what is measured and replayed is what runs.

pub mod history;
mod ingestor;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

pub use ingestor::{IngestBatch, Ingestor, BATCH_MAX_WAIT, BATCH_SIZE};

use crate::config::{Config, Partitioner, RiskConfig};
use crate::decide::risk;
use crate::event::{Decoders, Event, Reason, Rejection};
use crate::ingest::{self, DeadLetter, Routed, SourceRecord, SourcedEvent};
use crate::privacy::Pseudonymizer;
use crate::state::{PartitionStore, RecordOutcome};

/// An erasure request read from `privacy.erasure_topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRequest {
    /// The partition it was read from (the customer's).
    pub partition: i32,
    /// The stored id (the pseudonym when pseudonymizing).
    pub id: String,
    /// Its offset in the erasure topic.
    pub offset: i64,
    /// Erased up to (ms since the epoch; see `state::erasure`).
    pub through_ms: i64,
}

/// What a consumed record is.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A valid event of a customer of this partition (pseudonymized when
    /// configured).
    Event(Box<SourcedEvent>),
    /// A refused record, for the dead-letter topic.
    Refused(DeadLetter),
    /// A request to erase a customer.
    Erasure(ErasureRequest),
}

impl Accepted {
    /// The event time the event-time merge orders it by (`None`: no event
    /// time; the merge lets it go at once).
    pub fn event_time_ms(&self) -> Option<i64> {
        match self {
            Accepted::Event(e) => Some(e.event.event_time_ms),
            Accepted::Refused(_) | Accepted::Erasure(_) => None,
        }
    }
}

/// What applying an accepted event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The customer's state changed; `raised` are the risk flags it raised
    /// (empty without `output.risk_topic`).
    Changed {
        /// Risk flags raised by this event.
        raised: Vec<risk::Transition>,
    },
    /// Same `event_id` as a recent event of the customer: ignored.
    Duplicate,
    /// Covered by the customer's erasure: dropped, never dead-lettered.
    Erased,
    /// Older than the partition's watermark: a `late` dead letter.
    Late {
        /// The watermark it missed (ms).
        watermark_ms: i64,
    },
}

/// The partition check: which partition a customer's records belong in.
#[derive(Debug, Clone, Copy)]
struct PartitionCheck {
    partitioner: Partitioner,
    /// Partitions of the input topics (0 until known: no check).
    partitions: i32,
}

/// The per-record step, built once from the configuration.
#[derive(Clone)]
pub struct Intake {
    decoders: Decoders,
    max_dead_letter_bytes: usize,
    /// `privacy.erasure_topic` (`None` when erasure is not set up).
    erasure_topic: Option<Arc<str>>,
    check: Option<PartitionCheck>,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
    /// The risk rules, when their flags are published.
    risk: Option<RiskConfig>,
    /// Interned topic names (no allocation per record).
    names: BTreeMap<String, Arc<str>>,
}

impl Intake {
    /// The run loop's intake: the configured decoders, partition check
    /// (`input.check_partition`, once [`Intake::set_partitions`] says the
    /// count), erasure topic, risk rules, and `pseudonymizer`.
    pub fn new(cfg: &Config, pseudonymizer: Option<Arc<Pseudonymizer>>) -> Intake {
        Intake {
            decoders: cfg.decoders(),
            max_dead_letter_bytes: cfg.dead_letter.max_value_bytes,
            erasure_topic: (!cfg.privacy.erasure_topic.is_empty())
                .then(|| Arc::from(cfg.privacy.erasure_topic.as_str())),
            check: cfg.input.check_partition.then_some(PartitionCheck {
                partitioner: cfg.input.partitioner,
                partitions: 0,
            }),
            pseudonymizer,
            risk: (!cfg.output.risk_topic.is_empty()).then(|| cfg.risk.clone()),
            names: BTreeMap::new(),
        }
    }

    /// An intake for readers of the input topics outside the run loop
    /// (history, benchmarks): the same decoding, partition check and risk
    /// rules, customer ids as produced (no pseudonym) and no erasure topic.
    pub fn reader(cfg: &Config) -> Intake {
        Intake {
            erasure_topic: None,
            ..Intake::new(cfg, None)
        }
    }

    /// The input topics have `partitions` partitions: the partition check
    /// starts.
    pub fn set_partitions(&mut self, partitions: i32) {
        if let Some(c) = &mut self.check {
            c.partitions = partitions;
        }
    }

    /// The shared name of `topic` (one allocation per topic, not per record).
    pub fn topic(&mut self, topic: &str) -> Arc<str> {
        ingest::intern(&mut self.names, topic)
    }

    /// The most bytes of a refused value a dead letter keeps.
    pub fn max_dead_letter_bytes(&self) -> usize {
        self.max_dead_letter_bytes
    }

    /// What `record`, read from `topic` at wall time `now_ms`, is. Pure.
    pub fn accept(&self, record: &SourceRecord<'_>, topic: &Arc<str>, now_ms: i64) -> Accepted {
        if self.erasure_topic.as_ref() == Some(topic) {
            return self.erasure_request(record, now_ms);
        }
        match ingest::route(
            &self.decoders,
            record,
            topic,
            now_ms,
            self.max_dead_letter_bytes,
        ) {
            Routed::Event(mut e) => {
                if let Some(p) = self.wrong_partition(&e.event.customer_id, record.partition) {
                    return Accepted::Refused(self.refused(
                        record,
                        Reason::WrongPartition,
                        format!(
                            "customer_id hashes to partition {p} of the input topics under \
                             input.partitioner = {}, but the record is in partition {}: \
                             producers must key records by customer_id with that partitioner",
                            self.check.map_or("", |c| c.partitioner.as_str()),
                            record.partition
                        ),
                    ));
                }
                if let Some(p) = &self.pseudonymizer {
                    e.event.customer_id = p.apply(&e.event.customer_id);
                }
                Accepted::Event(Box::new(e))
            }
            Routed::DeadLetter(d) => Accepted::Refused(d),
        }
    }

    /// The partition `customer_id` belongs in, when it is not `partition`.
    fn wrong_partition(&self, customer_id: &str, partition: i32) -> Option<i32> {
        let c = self.check.filter(|c| c.partitions > 0)?;
        let p = ingest::partition_for(c.partitioner, customer_id.as_bytes(), c.partitions);
        (p != partition).then_some(p)
    }

    /// An erasure request (a dead letter when it names no customer).
    fn erasure_request(&self, record: &SourceRecord<'_>, now_ms: i64) -> Accepted {
        match record.key {
            Some(key) if !key.is_empty() => Accepted::Erasure(ErasureRequest {
                partition: record.partition,
                id: String::from_utf8_lossy(key).into_owned(),
                offset: record.offset,
                through_ms: crate::privacy::request_time(record.value, record.timestamp_ms, now_ms),
            }),
            _ => Accepted::Refused(
                self.refused(
                    record,
                    Reason::MissingCustomer,
                    "an erasure request must be keyed by the customer id as it is stored \
                 (segstream forget writes them so)"
                        .into(),
                ),
            ),
        }
    }

    fn refused(&self, record: &SourceRecord<'_>, reason: Reason, message: String) -> DeadLetter {
        DeadLetter::new(
            record,
            Rejection::new(reason, message),
            self.max_dead_letter_bytes,
        )
    }

    /// Applies `event`, read from a record stamped `stamped_ms`, to its
    /// partition's `store` at `now`, and evaluates the risk rules on the
    /// customer it changed (flags raised are set in the customer's decision
    /// and returned).
    pub fn apply(
        &self,
        store: &mut PartitionStore,
        event: &Event,
        stamped_ms: Option<i64>,
        now: Instant,
    ) -> Applied {
        match store.record_at(event, stamped_ms, now) {
            RecordOutcome::Applied => Applied::Changed {
                raised: self.risk_raised(store, event),
            },
            RecordOutcome::Duplicate => Applied::Duplicate,
            RecordOutcome::Erased => Applied::Erased,
            RecordOutcome::Late { watermark_ms } => Applied::Late { watermark_ms },
        }
    }

    fn risk_raised(&self, store: &mut PartitionStore, event: &Event) -> Vec<risk::Transition> {
        let Some(cfg) = &self.risk else {
            return Vec::new();
        };
        let id = &event.customer_id;
        let findings = store
            .get(id)
            .map(|s| risk::evaluate(cfg, s.recent(), &s.lifetime.products, event.event_time_ms));
        match (findings, store.decision_mut(id)) {
            (Some(findings), Some(d)) => {
                let (flags, raised) = risk::apply_only(cfg, d.risk_flags, findings, true, false);
                d.risk_flags = flags;
                raised
            }
            _ => Vec::new(),
        }
    }

    /// The `late` dead letter of an event that missed the watermark.
    pub fn late(&self, record: &SourceRecord<'_>, event: &Event, watermark_ms: i64) -> DeadLetter {
        self.refused(
            record,
            Reason::Late,
            format!(
                "event_time_ms {} is before the partition watermark {watermark_ms} \
                 (state.allowed_lateness)",
                event.event_time_ms
            ),
        )
    }
}

#[cfg(test)]
mod tests;
