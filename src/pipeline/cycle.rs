//! One commit cycle's work: what it consumed ([`Cycle`]), scoring the
//! customers it touched in micro-batches, deciding each scored customer
//! ([`decide_chunk`], pure), and turning decisions, exits, risk flags,
//! changelog records and dead letters into the records of its transaction;
//! reading live, sending that work early, before the tick ([`flush_due`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::producer::BaseRecord;

use super::output::{self, OutRecord};
use super::{Pipeline, PipelineError, TxnError};
use crate::decide::{self, risk, Hysteresis};
use crate::event::proto::{SegmentChange, Trigger};
use crate::ingest::{self, DeadLetter};
use crate::score::Scores;
use crate::state::changelog::drain_dirty;
use crate::state::{CustomerState, PartitionStore};

/// Why a customer is scored this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Why {
    Event,
    Inactivity,
    ModelUpdate,
}

impl Why {
    fn trigger(self) -> Trigger {
        match self {
            Why::Event => Trigger::Event,
            Why::Inactivity => Trigger::Inactivity,
            Why::ModelUpdate => Trigger::ModelUpdate,
        }
    }
}

/// A risk flag raised or cleared for a customer.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RiskChange {
    pub partition: i32,
    pub customer_id: String,
    pub transition: risk::Transition,
    /// Event time the flag holds as of.
    pub as_of_ms: i64,
    /// Wall clock of the decision.
    pub decided_at_ms: i64,
}

/// The work of the open transaction.
#[derive(Default)]
pub(super) struct Cycle {
    /// Next offset to commit of each input partition consumed this cycle.
    pub offsets: BTreeMap<(Arc<str>, i32), i64>,
    pub dead_letters: Vec<DeadLetter>,
    pub to_score: BTreeMap<i32, BTreeMap<String, Why>>,
    pub records: u64,
    /// Kafka timestamps (ms) of the cycle's records, for end-to-end latency.
    pub timestamps: Vec<i64>,
    /// Erasure audit entries to write: (audit key, JSON value).
    pub audits: Vec<(String, Vec<u8>)>,
    /// Risk flags raised as events were applied.
    pub risk_changes: Vec<RiskChange>,
    /// Records applied since the cycle's work was last sent (see
    /// [`flush_due`]), and when the first of them was.
    pub unflushed: usize,
    pub unflushed_since: Option<std::time::Instant>,
}

/// Whether the records applied since the open cycle's work was last sent
/// are worth scoring and sending now, before the commit, while the
/// consumer's queue is empty: a full scoring batch of them, or the oldest
/// has waited a fifth of the commit interval. Sooner would score in batches
/// of a few customers (CPU the busy machine lacks); later would leave the
/// commit more to do after the tick (latency).
pub(super) fn flush_due(
    records: usize,
    waited: std::time::Duration,
    max_batch: usize,
    commit_interval: std::time::Duration,
) -> bool {
    records > 0 && (records >= max_batch.max(1) || waited >= commit_interval / 5)
}

impl Cycle {
    /// Whether the cycle has nothing to produce or commit (dirty state in
    /// the stores is checked separately).
    pub fn is_idle(&self) -> bool {
        self.offsets.is_empty()
            && self.audits.is_empty()
            && self.dead_letters.is_empty()
            && self.to_score.is_empty()
    }
}

/// What a scored customer is decided by.
pub(super) struct Rules<'a> {
    pub hysteresis: &'a Hysteresis,
    /// `None`: risk flags are off (no `output.risk_topic`).
    pub risk: Option<&'a risk::RiskConfig>,
    /// When a customer is scored again without new events (ms of event time).
    pub review_after_ms: i64,
    /// The scoring model's featurizer: a change's reasons get the
    /// customer's own feature values from it.
    pub featurizer: Option<&'a crate::features::Featurizer>,
}

/// What deciding a cycle's scored customers produced.
#[derive(Default)]
pub(super) struct Decided {
    /// Segment changes, with the partition of their customer.
    pub changes: Vec<(i32, SegmentChange)>,
    pub risk: Vec<RiskChange>,
}

/// Decides the customers of one scored chunk of partition `partition`:
/// updates each one's decision memory and risk flags, schedules its next
/// review, and collects the changes to publish. Row `i` of `scores` belongs
/// to `chunk[i]`; customers no longer in the store are skipped.
#[allow(clippy::too_many_arguments)]
pub(super) fn decide_chunk(
    rules: &Rules<'_>,
    store: &mut PartitionStore,
    partition: i32,
    chunk: &[(String, Why)],
    scores: &Scores,
    as_of_ms: i64,
    decided_at_ms: i64,
    out: &mut Decided,
) {
    for (row, (id, why)) in chunk.iter().enumerate().take(scores.rows) {
        let scored = decide::Scored {
            segments: &scores.segments,
            probs: scores.segment_probs(row),
            purchase: scores.outputs.purchase_probability[row],
            churn: scores.outputs.churn_probability[row],
            spend: scores.outputs.predicted_spend[row],
            model_version: &scores.model_version,
            contributions: scores.contributions(row),
        };
        let Some(decision) = store.decision_mut(id) else {
            continue;
        };
        if let Some(change) = decide::apply(
            rules.hysteresis,
            id,
            decision,
            scored,
            as_of_ms,
            decided_at_ms,
            why.trigger(),
        ) {
            let mut change = change;
            if let (Some(f), Some(state)) = (rules.featurizer, store.get(id)) {
                decide::with_values(
                    &mut change.reasons,
                    &f.customer_features(state, as_of_ms),
                    &f.spec().normalization,
                );
            }
            out.changes.push((partition, change));
        }
        if let Some(cfg) = rules.risk {
            let findings = store
                .get(id)
                .map(|s| risk::evaluate(cfg, s.recent(), &s.lifetime.products, as_of_ms));
            if let (Some(findings), Some(decision)) = (findings, store.decision_mut(id)) {
                // Scoring clears flags; raising happens as events arrive.
                let (flags, moved) =
                    risk::apply_only(cfg, decision.risk_flags, findings, false, true);
                decision.risk_flags = flags;
                out.risk
                    .extend(moved.into_iter().map(|transition| RiskChange {
                        partition,
                        customer_id: id.clone(),
                        transition,
                        as_of_ms,
                        decided_at_ms,
                    }));
            }
        }
        store.schedule_review(id, as_of_ms.saturating_add(rules.review_after_ms));
    }
}

impl Pipeline {
    /// Whether the open cycle's work is due to be sent early
    /// ([`flush_due`]), with no rebalance waiting (a revocation is
    /// handled first: it aborts the open transaction).
    pub(super) fn has_work_to_flush(&self) -> bool {
        let Some(since) = self.cycle.unflushed_since else {
            return false;
        };
        flush_due(
            self.cycle.unflushed,
            since.elapsed(),
            self.cfg.score.max_batch,
            self.cfg.pipeline.commit_interval,
        ) && !self.consumer.context().pending.load(Ordering::Acquire)
            && self.is_live()
    }

    /// Whether this thread reads near the end of its input: less than a
    /// cycle's worth of records (`pipeline.max_cycle_records`) waits in its
    /// partitions by librdkafka's latest statistics. Catching up, scoring
    /// early only splits the cycle's batches (and scores a customer with
    /// several events in the backlog more than once); `false` too until the
    /// first statistics arrive.
    fn is_live(&self) -> bool {
        let Ok(ends) = self.consumer.context().ends.lock() else {
            return false;
        };
        let mut lag = 0i64;
        for ((topic, partition), next) in &self.partitions.fetched {
            match ends.get(&**topic).and_then(|e| e.get(partition)) {
                Some(end) => lag += (end - next).max(0),
                None => return false,
            }
        }
        lag <= self.cfg.pipeline.max_cycle_records as i64
    }

    /// Scores, decides and sends what the open cycle holds so far into its
    /// transaction, without committing: called when the consumer's queue
    /// runs empty and the work is due ([`flush_due`]). Live input is
    /// then scored as it arrives, and the end of the cycle only sends what
    /// came since and commits, instead of scoring a whole interval's
    /// customers while input waits. Catching up ([`Pipeline::is_live`]
    /// false), nothing is sent early: a customer is scored once per cycle.
    /// Sending early changes nothing of exactly once: the records are in
    /// the same transaction as the offsets that caused them, and a
    /// customer changed again later in the cycle is written to the
    /// changelog again, the last record being the committed state.
    pub(super) async fn flush_cycle(&mut self) -> Result<(), PipelineError> {
        self.begin().await?;
        match self.produce_cycle().await {
            Ok(()) => Ok(()),
            Err(e) => self.after_failed_cycle(e).await,
        }
    }

    /// Scores, decides and queues everything of the open cycle in its
    /// transaction: outputs, changelog, dead letters.
    pub(super) async fn produce_cycle(&mut self) -> Result<(), TxnError> {
        self.cycle.unflushed = 0;
        self.cycle.unflushed_since = None;
        let decided = self.score_and_decide().await?;
        let mut records = self.output_records(decided)?;
        records.extend(self.monitor_cycle().await?);
        for r in &records {
            self.send_out(r).await?;
        }
        let changelog_topic = self.cfg.state.changelog_topic.clone();
        let partitions: Vec<i32> = self.partitions.stores.keys().copied().collect();
        for p in partitions {
            let records = match self.partitions.stores.get_mut(&p) {
                Some(store) => drain_dirty(store),
                None => continue,
            };
            for r in &records {
                let mut record = BaseRecord::<str, [u8]>::to(&changelog_topic)
                    .partition(p)
                    .key(&r.key);
                if let Some(v) = &r.value {
                    record = record.payload(v);
                }
                self.send(record).await?;
            }
        }
        let letters = std::mem::take(&mut self.cycle.dead_letters);
        for d in &letters {
            self.send_dead_letter(d).await?;
        }
        Ok(())
    }

    /// Scores the cycle's customers, partition by partition, in
    /// micro-batches of `score.max_batch`, and decides them.
    async fn score_and_decide(&mut self) -> Result<Decided, TxnError> {
        let to_score = std::mem::take(&mut self.cycle.to_score);
        let mut decided = Decided {
            changes: Vec::new(),
            risk: std::mem::take(&mut self.cycle.risk_changes),
        };
        let risk_on = !self.cfg.output.risk_topic.is_empty();
        let review_after_ms = self.cfg.state.limits().review_after_ms;
        for (p, customers) in to_score {
            let Some(store) = self.partitions.stores.get(&p) else {
                continue;
            };
            let as_of = store.clock_ms();
            let mut ids: Vec<(String, Why)> = customers
                .into_iter()
                .filter(|(id, _)| store.get(id).is_some())
                .collect();
            if self.scorer.current().dynamic_events() {
                // Similar history lengths in one batch: the model is given
                // only as many events as the batch's longest history.
                ids.sort_by_key(|(id, _)| store.get(id).map_or(0, |s| s.recent().len()));
            }
            for chunk in ids.chunks(self.cfg.score.max_batch.max(1)) {
                let model = self.scorer.current();
                let batch = {
                    let Some(store) = self.partitions.stores.get(&p) else {
                        break;
                    };
                    let states: Vec<&CustomerState> =
                        chunk.iter().filter_map(|(id, _)| store.get(id)).collect();
                    model
                        .featurizer
                        .featurize(&states, as_of)
                        .map_err(|e| TxnError::Fatal(PipelineError::Features(e)))?
                };
                let scores = self
                    .scorer
                    .score(model.clone(), batch)
                    .await
                    .map_err(|e| TxnError::Abortable(format!("scoring failed: {e}")))?;
                let Some(store) = self.partitions.stores.get_mut(&p) else {
                    break;
                };
                let rules = Rules {
                    hysteresis: &self.rules,
                    risk: risk_on.then_some(&self.cfg.risk),
                    review_after_ms,
                    featurizer: Some(&model.featurizer),
                };
                let decided_at = ingest::now_ms();
                decide_chunk(
                    &rules,
                    store,
                    p,
                    chunk,
                    &scores,
                    as_of,
                    decided_at,
                    &mut decided,
                );
            }
        }
        Ok(decided)
    }

    /// The output records of the cycle: segment changes, risk flags, exits
    /// of evicted or erased customers, erasure audits; counted in metrics.
    fn output_records(&mut self, decided: Decided) -> Result<Vec<OutRecord>, TxnError> {
        let encoding = |e: output::EncodeError| TxnError::Fatal(PipelineError::Encode(e));
        let out = &self.cfg.output;
        let mut records = Vec::with_capacity(decided.changes.len() * 2);
        // Each partition's lag once per cycle, not once per record.
        let lags: BTreeMap<i32, i64> = (self.partitions.stores.keys())
            .map(|&p| (p, self.partition_lag(p)))
            .collect();
        let lag_of = |p: i32| {
            lags.get(&p)
                .copied()
                .unwrap_or_else(|| self.partition_lag(p))
        };
        for (p, c) in decided.changes {
            let lag = lag_of(p);
            let live = output::is_live(out, c.trigger, c.as_of_ms, c.decided_at_ms, lag);
            let from = if c.previous_segment.is_empty() {
                "none"
            } else {
                &c.previous_segment
            };
            self.telemetry
                .metrics
                .segment_changes
                .with_label_values(&[from, &c.segment, decide::trigger_name(c.trigger)])
                .inc();
            records.extend(output::for_change(out, p, c, live).map_err(encoding)?);
        }
        for r in &decided.risk {
            let lag = lag_of(r.partition);
            let event = Trigger::Event as i32;
            let live = output::is_live(out, event, r.as_of_ms, r.decided_at_ms, lag);
            records.push(
                output::for_risk(
                    out,
                    &r.customer_id,
                    &r.transition,
                    risk::Cause::Rule,
                    r.as_of_ms,
                    r.decided_at_ms,
                    live,
                )
                .map_err(encoding)?,
            );
            let t = &r.transition;
            self.telemetry
                .metrics
                .risk_flags
                .with_label_values(&[
                    t.finding.rule.as_str(),
                    if t.raised { "raised" } else { "cleared" },
                ])
                .inc();
        }
        let decided_at = ingest::now_ms();
        let partitions: Vec<i32> = self.partitions.stores.keys().copied().collect();
        for p in partitions {
            let lag = lags.get(&p).copied().unwrap_or(0);
            let Some(store) = self.partitions.stores.get_mut(&p) else {
                continue;
            };
            let as_of = store.clock_ms();
            let evicted = Trigger::Evicted as i32;
            let live = output::is_live(out, evicted, as_of, decided_at, lag);
            for exit in store.take_exits() {
                if !exit.segment.is_empty() {
                    records.extend(
                        output::for_exit(out, p, &exit, as_of, decided_at, live)
                            .map_err(encoding)?,
                    );
                }
                if out.risk_topic.is_empty() {
                    continue;
                }
                // The customer leaves with their flags: each one clears, so
                // the risk topic alone gives the flags raised now.
                let cause = if exit.erased {
                    risk::Cause::Erased
                } else {
                    risk::Cause::Evicted
                };
                for t in risk::clear_all(exit.risk_flags) {
                    records.push(
                        output::for_risk(
                            out,
                            &exit.customer_id,
                            &t,
                            cause,
                            as_of,
                            decided_at,
                            live,
                        )
                        .map_err(encoding)?,
                    );
                    self.telemetry
                        .metrics
                        .risk_flags
                        .with_label_values(&[t.finding.rule.as_str(), "cleared"])
                        .inc();
                }
            }
        }
        for (key, value) in std::mem::take(&mut self.cycle.audits) {
            records.push(OutRecord {
                topic: self.cfg.privacy.audit_topic.clone(),
                partition: None,
                key,
                value: Some(value),
                headers: Vec::new(),
            });
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::reference::Outputs;
    use crate::state::tests::{buy, ev, view, T0};
    use crate::state::RecordOutcome;

    const SEGMENTS: [&str; 2] = ["active_buyer", "at_risk"];

    fn store_with(customers: &[&str]) -> PartitionStore {
        let mut store = PartitionStore::new(crate::state::tests::store_limits());
        let now = tokio::time::Instant::now();
        for (i, c) in customers.iter().enumerate() {
            let e = ev(c, &format!("e{i}"), T0 + i as i64, buy("shoes", 1_000));
            assert_eq!(store.record(&e, now), RecordOutcome::Applied);
        }
        store
    }

    /// Scores with one row per `probs` entry (probability of each segment).
    fn scores(probs: &[[f32; 2]]) -> Scores {
        let n = probs.len();
        Scores {
            model_version: Arc::from("m1"),
            segments: SEGMENTS.iter().map(|s| s.to_string()).collect(),
            rows: n,
            outputs: Outputs {
                segment_probs: probs.iter().flatten().copied().collect(),
                purchase_probability: vec![0.5; n],
                churn_probability: vec![0.25; n],
                predicted_spend: vec![12.0; n],
                segment_contributions: Vec::new(),
            },
        }
    }

    fn chunk(ids: &[&str], why: Why) -> Vec<(String, Why)> {
        ids.iter().map(|id| (id.to_string(), why)).collect()
    }

    fn rules(h: &Hysteresis) -> Rules<'_> {
        Rules {
            hysteresis: h,
            risk: None,
            review_after_ms: 3_600_000,
            featurizer: None,
        }
    }

    #[test]
    fn first_scores_classify_every_customer_of_the_chunk() {
        let h = crate::config::DecideConfig::default().rules();
        let mut store = store_with(&["a", "b"]);
        let mut out = Decided::default();
        let s = scores(&[[0.9, 0.1], [0.2, 0.8]]);
        let as_of = store.clock_ms();
        let c = chunk(&["a", "b"], Why::Event);
        decide_chunk(&rules(&h), &mut store, 3, &c, &s, as_of, 42, &mut out);
        let got: Vec<(i32, &str, &str, i32)> = out
            .changes
            .iter()
            .map(|(p, c)| (*p, c.customer_id.as_str(), c.segment.as_str(), c.trigger))
            .collect();
        let event = Trigger::Event as i32;
        assert_eq!(
            got,
            [(3, "a", "active_buyer", event), (3, "b", "at_risk", event)]
        );
        let a = store
            .get("a")
            .map(|s| s.decision.clone())
            .unwrap_or_default();
        assert_eq!(a.scores, [0.9, 0.1]);
        assert_eq!(a.model_version, "m1");
        assert_eq!(a.decided_at_ms, 42);
        assert!((a.predicted_spend - 12.0).abs() < 1e-6);
    }

    #[test]
    fn the_same_scores_again_change_nothing_and_a_vanished_customer_is_skipped() {
        let h = crate::config::DecideConfig::default().rules();
        let mut store = store_with(&["a"]);
        let as_of = store.clock_ms();
        let s = scores(&[[0.9, 0.1], [0.1, 0.9]]);
        let mut first = Decided::default();
        let c = chunk(&["a", "gone"], Why::Event);
        decide_chunk(&rules(&h), &mut store, 0, &c, &s, as_of, 1, &mut first);
        assert_eq!(first.changes.len(), 1, "only the customer in state");
        let mut again = Decided::default();
        let c = chunk(&["a"], Why::Inactivity);
        decide_chunk(&rules(&h), &mut store, 0, &c, &s, as_of, 2, &mut again);
        assert!(again.changes.is_empty());
        assert_eq!(
            store.get("a").map(|s| s.decision.decided_at_ms),
            Some(2),
            "the decision memory records the rescoring"
        );
    }

    #[test]
    fn work_is_sent_early_in_full_batches_or_once_it_waited_a_fifth_of_the_interval() {
        use std::time::Duration;
        let interval = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert!(!flush_due(0, ms(500), 128, interval), "nothing to send");
        assert!(
            !flush_due(5, ms(19), 128, interval),
            "a few records, just arrived"
        );
        assert!(
            flush_due(5, ms(20), 128, interval),
            "waited a fifth of the interval"
        );
        assert!(flush_due(128, ms(0), 128, interval), "a full scoring batch");
        assert!(!flush_due(127, ms(0), 128, interval));
        assert!(flush_due(1, ms(0), 0, interval), "max_batch 0 reads as 1");
    }

    #[test]
    fn a_scored_customer_is_reviewed_after_review_after() {
        let h = crate::config::DecideConfig::default().rules();
        let mut store = store_with(&["a"]);
        let as_of = store.clock_ms();
        let s = scores(&[[0.9, 0.1]]);
        let mut out = Decided::default();
        let c = chunk(&["a"], Why::Event);
        decide_chunk(&rules(&h), &mut store, 0, &c, &s, as_of, 1, &mut out);
        // The watermark (event time less the allowed lateness) passes the
        // review time once a later event arrives.
        let now = tokio::time::Instant::now();
        let later = ev(
            "z",
            "later",
            as_of + 3_600_000 + 60_000,
            view("shoes", 1, 1),
        );
        assert_eq!(store.record(&later, now), RecordOutcome::Applied);
        store.tick(now);
        assert!(store.take_due().contains(&"a".to_string()));
    }
}
