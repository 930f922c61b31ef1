//! The cycle's Kafka transaction: begin, send, commit with the consumed
//! offsets, abort; and what each failure means, as a typed [`TxnError`]
//! taken from librdkafka's own classification of the error (fatal,
//! retriable, or needing an abort), never from its message text.
//!
//! Retries follow [`Retry`] policies. A fatal error (this producer was
//! fenced, or its transaction timed out at the coordinator) re-creates the
//! producer and rebuilds state from the changelog, at most three times in
//! five minutes; beyond that another live instance holds the same
//! transactional id, and this one stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::warn;

use super::clients::TxnProducer;

use super::cycle::Cycle;
use super::output::OutRecord;
use super::retry::Retry;
use super::{kafka, Pipeline, PipelineError, TxnError};
use crate::ingest::DeadLetter;

/// Re-creating the producer more often than this within
/// [`FENCING_WINDOW`] ends the instance.
const MAX_REFENCES: usize = 3;
const FENCING_WINDOW: Duration = Duration::from_secs(300);

/// Where a stream thread's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxnState {
    /// None begun: the cycle's first send begins one.
    Idle,
    /// Begun: the cycle's records go into it; it is committed or aborted.
    Open,
    /// Its offsets and commit are on their way. The next cycle consumes
    /// meanwhile, but nothing may begin, send into, or abort a transaction
    /// until the commit has ended: committed (back to `Idle`) or failed
    /// (back to `Open`, to be aborted).
    Committing,
}

/// A step the protocol does not allow in the state it was taken in: a bug
/// in the run loop, never a broker failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("transaction protocol: cannot {step} while {state:?}")]
pub struct ProtocolError {
    step: &'static str,
    state: TxnState,
}

/// The rules of a thread's transactions, apart from the producer (so they
/// are tested without Kafka): the state, and how often the producer was
/// re-created after being fenced.
#[derive(Debug)]
pub(super) struct Protocol {
    state: TxnState,
    /// When the producer was re-created (bounds fencing loops).
    fenced_at: Vec<Instant>,
}

impl Protocol {
    pub(super) fn new() -> Self {
        Protocol {
            state: TxnState::Idle,
            fenced_at: Vec::new(),
        }
    }

    pub(super) fn state(&self) -> TxnState {
        self.state
    }

    fn step(
        &mut self,
        step: &'static str,
        from: TxnState,
        to: TxnState,
    ) -> Result<(), ProtocolError> {
        if self.state != from {
            return Err(ProtocolError {
                step,
                state: self.state,
            });
        }
        self.state = to;
        Ok(())
    }

    /// A transaction was begun.
    pub(super) fn begun(&mut self) -> Result<(), ProtocolError> {
        self.step("begin", TxnState::Idle, TxnState::Open)
    }

    /// The offsets and commit of the open transaction are on their way.
    pub(super) fn commit_started(&mut self) -> Result<(), ProtocolError> {
        self.step("commit", TxnState::Open, TxnState::Committing)
    }

    /// The commit ended: committed, or failed (the transaction is still
    /// open, to be aborted).
    pub(super) fn commit_ended(&mut self, committed: bool) -> Result<(), ProtocolError> {
        let to = if committed {
            TxnState::Idle
        } else {
            TxnState::Open
        };
        self.step("end a commit", TxnState::Committing, to)
    }

    /// Whether an abort must reach the broker: only an open transaction.
    /// One being committed is not this cycle's to abort (its commit ends
    /// it); without one there is nothing to abort.
    pub(super) fn must_abort(&self) -> bool {
        self.state == TxnState::Open
    }

    /// The open transaction was aborted.
    pub(super) fn aborted(&mut self) -> Result<(), ProtocolError> {
        self.step("abort", TxnState::Open, TxnState::Idle)
    }

    /// Whether a fenced producer may be re-created now (at most
    /// [`MAX_REFENCES`] times within [`FENCING_WINDOW`]); if so, counts it
    /// and starts over with no transaction.
    pub(super) fn refence(&mut self, now: Instant) -> bool {
        self.fenced_at
            .retain(|t| now.saturating_duration_since(*t) < FENCING_WINDOW);
        if self.fenced_at.len() >= MAX_REFENCES {
            return false;
        }
        self.fenced_at.push(now);
        self.state = TxnState::Idle;
        true
    }
}

/// A stream thread's transactional producer, the configuration to
/// re-create it after it was fenced, and its [`Protocol`].
pub(super) struct Transaction {
    producer: Arc<TxnProducer>,
    config: ClientConfig,
    pub(super) protocol: Protocol,
}

impl Transaction {
    /// A new producer from `config`, with no transaction.
    pub(super) fn new(config: ClientConfig) -> Result<Self, PipelineError> {
        Ok(Transaction {
            producer: super::clients::producer(&config)?,
            config,
            protocol: Protocol::new(),
        })
    }

    /// The producer.
    pub(super) fn producer(&self) -> &Arc<TxnProducer> {
        &self.producer
    }

    /// Replaces a fenced producer by a new one from the same configuration
    /// (not yet initialized for transactions).
    fn recreate(&mut self) -> Result<Arc<TxnProducer>, PipelineError> {
        self.producer = super::clients::producer(&self.config)?;
        Ok(self.producer.clone())
    }
}

/// librdkafka's classification of a failed call.
pub(super) fn classify(what: &'static str, e: KafkaError) -> TxnError {
    if let KafkaError::Transaction(t) = &e {
        if t.is_fatal() {
            return TxnError::Fatal(PipelineError::Kafka { what, source: e });
        }
        if t.is_retriable() {
            return TxnError::Retriable(format!("{what}: {e}"));
        }
    }
    TxnError::Abortable(format!("{what}: {e}"))
}

/// Whether an error ended the transactional producer (being fenced, a
/// fatal transactional error, an abort that kept failing), as opposed to
/// any other failure.
fn is_transactional(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::Kafka {
            source: KafkaError::Transaction(_),
            ..
        } | PipelineError::Transaction(_)
    )
}

impl Pipeline {
    /// Begins a transaction unless one is open.
    pub(super) async fn begin(&mut self) -> Result<(), PipelineError> {
        if self.txn.protocol.state() == TxnState::Idle {
            let producer = self.txn.producer().clone();
            self.watchdog
                .call("begin_transaction", move |_| producer.begin_transaction())
                .await?
                .map_err(kafka("beginning a transaction"))?;
            self.txn.protocol.begun()?;
        }
        Ok(())
    }

    /// Queues one record in the open transaction, waiting while the
    /// producer's queue is full. Delivery is confirmed by the commit, which
    /// fails if any record of the transaction failed.
    pub(super) async fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), TxnError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        loop {
            match self.txn.producer().send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.txn.producer().poll(Duration::ZERO);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(classify("producing", e)),
            }
        }
    }

    /// Sends an output record (segment change, exit, risk flag, audit).
    pub(super) async fn send_out(&self, r: &OutRecord) -> Result<(), TxnError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in &r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record = BaseRecord::<str, [u8]>::to(&r.topic)
            .key(&r.key)
            .headers(headers);
        if let Some(v) = &r.value {
            record = record.payload(v);
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        self.send(record).await
    }

    /// Sends a dead letter.
    pub(super) async fn send_dead_letter(&self, d: &DeadLetter) -> Result<(), TxnError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.cfg.dead_letter.topic)
            .payload(&d.value)
            .headers(d.kafka_headers());
        if let Some(k) = &d.key {
            record = record.key(k);
        }
        self.send(record).await
    }

    /// Sends the cycle's consumed offsets and commits the transaction,
    /// retrying the commit while librdkafka calls it retriable. The future
    /// owns what it needs (offsets, group metadata, producer, watchdog), so
    /// the run loop can go on consuming into the next cycle while it runs.
    /// `offsets_sent` hears when the offsets are in the transaction: only
    /// then may the consumer be polled again (a poll can complete a
    /// rebalance, and offsets sent with an old group generation fail).
    pub(super) fn commit_future(
        &mut self,
        offsets_sent: tokio::sync::oneshot::Sender<()>,
    ) -> Result<impl std::future::Future<Output = Result<(), TxnError>> + use<>, TxnError> {
        let mut offsets = None;
        if !self.cycle.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), o) in &self.cycle.offsets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| classify("building offsets", e))?;
            }
            let cgm = self
                .consumer
                .group_metadata()
                .ok_or_else(|| TxnError::Abortable("no consumer group metadata yet".into()))?;
            offsets = Some((tpl, cgm));
        }
        let (producer, watchdog) = (self.txn.producer().clone(), self.watchdog.clone());
        self.txn
            .protocol
            .commit_started()
            .map_err(|e| TxnError::Fatal(e.into()))?;
        Ok(async move {
            if let Some((tpl, cgm)) = offsets {
                let p = producer.clone();
                watchdog
                    .call("send_offsets_to_transaction", move |t| {
                        p.send_offsets_to_transaction(&tpl, &cgm, t)
                    })
                    .await
                    .map_err(TxnError::Fatal)?
                    .map_err(|e| classify("sending offsets to the transaction", e))?;
            }
            let _ = offsets_sent.send(());
            let mut attempts = Retry::COMMIT.start();
            loop {
                let p = producer.clone();
                let committed = watchdog
                    .call("commit_transaction", move |t| {
                        super::clients::drain(&p, t)?;
                        p.commit_transaction(t)
                    })
                    .await
                    .map_err(TxnError::Fatal)?;
                match committed.map_err(|e| classify("committing the transaction", e)) {
                    Ok(()) => return Ok(()),
                    Err(TxnError::Retriable(why)) => {
                        warn!(reason = %why, "Commit failed; retrying.");
                        if !attempts.wait().await {
                            return Err(TxnError::Abortable(format!("commit kept failing: {why}")));
                        }
                    }
                    Err(other) => return Err(other),
                }
            }
        })
    }

    /// Aborts the open transaction, retrying while the broker is away; a
    /// fatal error (e.g. fenced) or two minutes of failures is returned.
    pub(super) async fn abort_cycle(&mut self, why: &str) -> Result<(), PipelineError> {
        if self.txn.protocol.must_abort() {
            let mut attempts = Retry::ABORT.start();
            loop {
                let producer = self.txn.producer().clone();
                let aborted = self
                    .watchdog
                    .call("abort_transaction", move |t| {
                        super::clients::abort(&producer, t)
                    })
                    .await?;
                match aborted.map_err(|e| classify("aborting a transaction", e)) {
                    Ok(()) => break,
                    Err(TxnError::Fatal(e)) => return Err(e),
                    Err(TxnError::Retriable(e) | TxnError::Abortable(e)) => {
                        warn!(error = %e, "Aborting the transaction failed; retrying.");
                        if !attempts.wait().await {
                            return Err(PipelineError::Transaction(format!(
                                "aborting kept failing: {e}"
                            )));
                        }
                    }
                }
            }
            self.txn.protocol.aborted()?;
            self.telemetry
                .metrics
                .transaction_aborted(why, self.cycle.records);
        }
        self.cycle = Cycle::default();
        Ok(())
    }

    /// Handles a failed cycle: abort and redo from the committed state, or
    /// re-create the producer after a fatal error.
    pub(super) async fn after_failed_cycle(&mut self, e: TxnError) -> Result<(), PipelineError> {
        match e {
            TxnError::Abortable(why) | TxnError::Retriable(why) => {
                if let Err(e) = self.abort_cycle(&why).await {
                    return self.after_fatal(e).await;
                }
                self.recover().await
            }
            TxnError::Fatal(e) => self.after_fatal(e).await,
        }
    }

    /// A fatal producer error. Being fenced is expected after the broker's
    /// transaction coordinator timed our transaction out (e.g. during a
    /// broker outage longer than `pipeline.transaction_timeout`): nothing of
    /// the open transaction was committed, so the producer is re-created
    /// (which bumps its epoch) and state is rebuilt from the committed
    /// changelog. Repeated fencing (another live instance with the same
    /// transactional id) ends the instance, as does any other error.
    pub(super) async fn after_fatal(&mut self, e: PipelineError) -> Result<(), PipelineError> {
        if !is_transactional(&e) || !self.txn.protocol.refence(Instant::now()) {
            return Err(e);
        }
        warn!(
            error = %e,
            "The transactional producer is unusable (fenced or its transaction timed out); \
             re-creating it and rebuilding state from the changelog."
        );
        self.telemetry.metrics.transaction_aborted(
            "the producer was fenced or its transaction timed out",
            self.cycle.records,
        );
        self.cycle = Cycle::default();
        let producer = self.txn.recreate()?;
        let mut attempts = Retry::INIT_TRANSACTIONS.start();
        loop {
            let p = producer.clone();
            match self
                .watchdog
                .call("init_transactions", move |t| p.init_transactions(t))
                .await?
            {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "Initializing transactions failed; retrying.");
                    if !attempts.wait().await {
                        return Err(kafka("initializing transactions")(e));
                    }
                }
            }
        }
        self.recover().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_outside_a_transaction_abort_the_cycle() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        match classify("producing", e) {
            TxnError::Abortable(why) => assert!(why.starts_with("producing: "), "{why}"),
            other => panic!("expected Abortable, got {other:?}"),
        }
    }

    #[test]
    fn only_transactional_errors_re_create_the_producer() {
        let other = PipelineError::Kafka {
            what: "fetching cluster metadata",
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
        };
        assert!(!is_transactional(&other));
        assert!(!is_transactional(&PipelineError::Topics("x".into())));
        assert!(is_transactional(&PipelineError::Transaction(
            "aborting kept failing".into()
        )));
    }

    /// Issue 37: the commit/overlap protocol in the order the run loop
    /// takes its steps, and the steps it must refuse.
    #[test]
    fn a_cycle_begins_commits_and_is_idle_again() {
        let mut p = Protocol::new();
        assert!(!p.must_abort(), "nothing to abort before a begin");
        p.begun().unwrap();
        assert!(p.must_abort());
        p.commit_started().unwrap();
        // The next cycle consumes while the commit runs: a revocation
        // noticed now must not abort the transaction being committed, and
        // nothing may begin another.
        assert!(!p.must_abort());
        assert_eq!(
            p.begun(),
            Err(ProtocolError {
                step: "begin",
                state: TxnState::Committing
            })
        );
        p.commit_ended(true).unwrap();
        assert_eq!(p.state(), TxnState::Idle);
        p.begun().unwrap();
    }

    #[test]
    fn a_failed_commit_leaves_the_transaction_open_to_be_aborted() {
        let mut p = Protocol::new();
        p.begun().unwrap();
        p.commit_started().unwrap();
        p.commit_ended(false).unwrap();
        // Still open: the abort must reach the broker, or the failed
        // transaction would stay open until the broker times it out.
        assert!(p.must_abort());
        p.aborted().unwrap();
        assert_eq!(p.state(), TxnState::Idle);
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let mut p = Protocol::new();
        assert!(p.commit_started().is_err(), "no transaction to commit");
        assert!(p.commit_ended(true).is_err(), "no commit running");
        assert!(p.aborted().is_err(), "nothing to abort");
        p.begun().unwrap();
        assert!(p.begun().is_err(), "one transaction at a time");
    }

    #[test]
    fn a_fenced_producer_is_re_created_three_times_in_five_minutes_at_most() {
        let mut p = Protocol::new();
        let t0 = Instant::now();
        p.begun().unwrap();
        for i in 0..3 {
            assert!(p.refence(t0 + Duration::from_secs(i)), "re-creation {i}");
            assert_eq!(
                p.state(),
                TxnState::Idle,
                "a new producer has no transaction"
            );
        }
        assert!(
            !p.refence(t0 + Duration::from_secs(10)),
            "a fourth within the window"
        );
        assert!(
            p.refence(t0 + FENCING_WINDOW + Duration::from_secs(1)),
            "after the window"
        );
    }
}
