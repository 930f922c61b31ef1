//! Per-record counts kept per stream thread and flushed into the shared
//! Prometheus counters in batches (no atomic per record).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::warn;

use crate::event::{EventKind, Reason};
use crate::telemetry::Metrics;

/// Records older than this (by their Kafka timestamp) when committed are
/// left out of the end-to-end latency histogram (its top bucket is 2 min).
pub const END_TO_END_MAX_MS: i64 = 3_600_000;

/// Refused records are summarized in the log at most this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Per-topic counters with their labelled handles resolved once.
pub(super) struct TopicCounts {
    pub(super) topic: Arc<str>,
    pub(super) records_handle: IntCounter,
    pub(super) kind_handles: [IntCounter; EventKind::ALL.len()],
    pub(super) records: u64,
    pub(super) kinds: [u64; EventKind::ALL.len()],
}

/// What the run loop counted since the last [`Tally::flush`]: plain integers
/// bumped per record (no atomics, no label hashing), handed to the shared
/// metrics once per commit cycle.
pub struct Tally {
    pub(super) metrics: Metrics,
    pub(super) topics: Vec<TopicCounts>,
    pub(super) refused: Vec<IntCounter>,
    pub(super) refused_counts: [u64; Reason::ALL.len()],
    /// Refusals not yet summarized in the log, and when it last was.
    pub(super) unlogged: [u64; Reason::ALL.len()],
    pub(super) logged_at: Option<Instant>,
    pub(super) truncated: u64,
    pub(super) duplicates: u64,
    pub(super) erased: u64,
    pub(super) late: u64,
    pub(super) records: u64,
    /// Anything counted since the last flush (records are applied after
    /// the event-time merge, so accepted counts can come without new records).
    pub(super) touched: bool,
}

impl Tally {
    pub(super) fn topic(&mut self, topic: &Arc<str>) -> &mut TopicCounts {
        // Topic names are interned: a pointer comparison finds them.
        let i = match self
            .topics
            .iter()
            .position(|t| Arc::ptr_eq(&t.topic, topic))
        {
            Some(i) => i,
            None => {
                let m = &self.metrics;
                self.topics.push(TopicCounts {
                    topic: topic.clone(),
                    records_handle: m.records_consumed.with_label_values(&[&**topic]),
                    kind_handles: EventKind::ALL
                        .map(|k| m.events_accepted.with_label_values(&[&**topic, k.as_str()])),
                    records: 0,
                    kinds: [0; EventKind::ALL.len()],
                });
                self.topics.len() - 1
            }
        };
        &mut self.topics[i]
    }

    /// A record was read from `topic`.
    pub fn consumed(&mut self, topic: &Arc<str>) {
        self.records += 1;
        self.touched = true;
        self.topic(topic).records += 1;
    }

    /// An event of `kind` from `topic` was applied to state.
    pub fn accepted(&mut self, topic: &Arc<str>, kind: EventKind) {
        let i = EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.touched = true;
        self.topic(topic).kinds[i] += 1;
    }

    /// A record was routed to the dead-letter topic.
    pub fn refused(&mut self, reason: Reason, truncated: bool) {
        self.touched = true;
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.refused_counts[i] += 1;
        }
        if reason == Reason::Late {
            self.late += 1;
        }
        if truncated {
            self.truncated += 1;
        }
    }

    /// An event was a duplicate.
    pub fn duplicate(&mut self) {
        self.touched = true;
        self.duplicates += 1;
    }

    /// An event was dropped: it was stamped before its customer's erasure.
    pub fn erased(&mut self) {
        self.touched = true;
        self.erased += 1;
    }

    /// One log line per [`REFUSAL_LOG_INTERVAL`] at most, with counts per
    /// reason (never the records or their keys).
    pub(super) fn log_refusals(&mut self) {
        let total: u64 = self.unlogged.iter().sum();
        if total == 0
            || self
                .logged_at
                .is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let reasons = Reason::ALL
            .iter()
            .zip(self.unlogged.iter_mut())
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{}={}", r.as_str(), std::mem::take(n)))
            .collect::<Vec<_>>()
            .join(",");
        self.logged_at = Some(Instant::now());
        warn!(
            records = total,
            reasons = %reasons,
            "Routed refused records to the dead-letter topic."
        );
    }

    /// Hands the counts to the shared metrics and starts over.
    pub fn flush(&mut self) {
        if !self.touched {
            // Refusals counted earlier may still wait for their log line.
            self.log_refusals();
            return;
        }
        self.touched = false;
        for t in &mut self.topics {
            t.records_handle.inc_by(std::mem::take(&mut t.records));
            for (h, n) in t.kind_handles.iter().zip(t.kinds.iter_mut()) {
                if *n > 0 {
                    h.inc_by(std::mem::take(n));
                }
            }
        }
        for ((h, n), u) in self
            .refused
            .iter()
            .zip(self.refused_counts.iter_mut())
            .zip(self.unlogged.iter_mut())
        {
            if *n > 0 {
                *u += *n;
                h.inc_by(std::mem::take(n));
            }
        }
        self.log_refusals();
        let m = &self.metrics;
        m.dead_letters_truncated
            .inc_by(std::mem::take(&mut self.truncated));
        m.late_events.inc_by(std::mem::take(&mut self.late));
        m.duplicate_events
            .inc_by(std::mem::take(&mut self.duplicates));
        m.erased_events.inc_by(std::mem::take(&mut self.erased));
        if self.records > 0 {
            m.batch_records.observe(self.records as f64);
        }
        self.records = 0;
    }
}
