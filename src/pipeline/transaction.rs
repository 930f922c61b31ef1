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

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::cycle::Cycle;
use super::output::OutRecord;
use super::retry::Retry;
use super::{kafka, Pipeline, PipelineError, TxnError};
use crate::ingest::DeadLetter;

/// Re-creating the producer more often than this within
/// [`FENCING_WINDOW`] ends the instance.
const MAX_REFENCES: usize = 3;
const FENCING_WINDOW: Duration = Duration::from_secs(300);

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
        if !self.cycle.open {
            let producer = self.producer.clone();
            self.watchdog
                .call("begin_transaction", move |_| producer.begin_transaction())
                .await?
                .map_err(kafka("beginning a transaction"))?;
            self.cycle.open = true;
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
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::ZERO);
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
        &self,
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
        let (producer, watchdog) = (self.producer.clone(), self.watchdog.clone());
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
        if self.cycle.open {
            let mut attempts = Retry::ABORT.start();
            loop {
                let producer = self.producer.clone();
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
            self.metrics
                .transactions
                .with_label_values(&["aborted"])
                .inc();
            warn!(
                reason = why,
                records = self.cycle.records,
                "Aborted the open transaction."
            );
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
        self.fenced_at.retain(|t| t.elapsed() < FENCING_WINDOW);
        if !is_transactional(&e) || self.fenced_at.len() >= MAX_REFENCES {
            return Err(e);
        }
        self.fenced_at.push(Instant::now());
        warn!(
            error = %e,
            "The transactional producer is unusable (fenced or its transaction timed out); \
             re-creating it and rebuilding state from the changelog."
        );
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        self.cycle = Cycle::default();
        let producer = super::clients::producer(&self.producer_config)?;
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
        self.producer = producer;
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
}
