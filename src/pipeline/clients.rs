//! Building the Kafka clients of a stream thread: its consumer (a group
//! member reading `read_committed` with the `range` assignor, offsets
//! committed only through the transaction) and its transactional producer;
//! and the consumer's context, which hands rebalances to the run loop and
//! keeps the input partitions' end offsets for the lag gauge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tracing::warn;

use super::{directory, kafka, PipelineError};
use crate::config::{Config, Partitioner};
use crate::telemetry::kafka_log;

/// The consumer of stream thread `thread`.
pub(super) fn consumer(
    cfg: &Config,
    thread: usize,
) -> Result<StreamConsumer<PipelineContext>, PipelineError> {
    let mut c = crate::config::member_config(cfg)?;
    if !cfg.pipeline.advertised_url.is_empty() {
        // How the other instances find this one (see `directory`).
        c.set(
            "client.id",
            directory::client_id(&cfg.pipeline.advertised_url, thread),
        );
    }
    c.create_with_context(PipelineContext::default())
        .map_err(kafka("creating the consumer"))
}

/// The transactional id of stream thread `thread` of `threads`:
/// `pipeline.transactional_id`, else `<group>-<host>`; with more than one
/// thread, `-<thread>` appended. Each id stays stable across restarts with
/// the same thread count, so a restart fences its predecessor's thread at
/// once.
pub(super) fn transactional_id(cfg: &Config, host: &str, thread: usize, threads: usize) -> String {
    let base = if cfg.pipeline.transactional_id.is_empty() {
        format!("{}-{host}", cfg.kafka.group_id)
    } else {
        cfg.pipeline.transactional_id.clone()
    };
    if threads > 1 {
        format!("{base}-{thread}")
    } else {
        base
    }
}

/// This host's name (`HOSTNAME`, else `/etc/hostname`, else `localhost`).
pub(super) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The transactional producer's configuration (kept to re-create it after
/// it was fenced).
pub fn producer_config(
    cfg: &Config,
    transactional_id: &str,
) -> Result<ClientConfig, PipelineError> {
    let mut pc = cfg.kafka.producer_config()?;
    // Room for the largest dead letter (its value plus headers).
    let max = (cfg.dead_letter.max_value_bytes + 256 * 1024).max(1_000_000);
    crate::config::producer_defaults(&mut pc);
    if pc.get("partitioner").is_none() {
        // Keyed outputs (segment changes, risk flags, dead letters) hashed
        // as the input is: with as many partitions as the input, a
        // customer's changes land in the partition number of their events,
        // so each stream thread's transactions touch only its own
        // partitions (fewer commit markers), and downstream partitioning
        // follows the producers' upstream.
        pc.set(
            "partitioner",
            match cfg.input.partitioner {
                Partitioner::Crc32 => "consistent_random",
                Partitioner::Murmur2 => "murmur2_random",
            },
        );
    }
    pc.set("transactional.id", transactional_id)
        .set("delivery.report.only.error", "true")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", max.to_string())
        .set(
            "transaction.timeout.ms",
            cfg.pipeline.transaction_timeout.as_millis().to_string(),
        );
    Ok(pc)
}

/// The transactional producer of a stream thread.
///
/// A plain `BaseProducer` served by the run loop, not a producer with a
/// polling thread of its own: `commit_transaction` first flushes, and its
/// flush waits on the event queue in steps of up to 100 ms; with a second
/// thread taking the events, each commit slept that long whenever a record
/// was still in flight. Delivery is confirmed by the commit (it fails if
/// any record of the transaction failed), so only failed deliveries are
/// reported (`delivery.report.only.error`).
pub(super) type TxnProducer = BaseProducer<TxnContext>;

/// A producer from [`producer_config`].
pub(super) fn producer(pc: &ClientConfig) -> Result<Arc<TxnProducer>, PipelineError> {
    pc.create_with_context(TxnContext)
        .map(Arc::new)
        .map_err(kafka("creating the producer"))
}

/// The transactional producer's context: librdkafka's logs and errors go
/// to the log; a failed delivery is logged (the commit then fails and the
/// cycle is redone).
pub(super) struct TxnContext;

impl ClientContext for TxnContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_log::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_log::client_error("producer", &error, reason);
    }

    fn stats(&self, _statistics: rdkafka::Statistics) {}
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, m)) = result {
            warn!(
                topic = m.topic(),
                partition = m.partition(),
                error = %e,
                "A record of the open transaction was not delivered; the commit fails and the cycle is redone."
            );
        }
    }
}

/// Rebalance notices, taken by the loop after each poll, and the input
/// partitions' end offsets from librdkafka's statistics (for the lag gauge).
#[derive(Default)]
pub struct PipelineContext {
    pub(super) events: Mutex<Vec<RebalanceNotice>>,
    pub(super) pending: AtomicBool,
    /// Topic → partition → end offset.
    pub(super) ends: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
}

#[derive(Debug, Clone)]
pub(super) enum RebalanceNotice {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl ClientContext for PipelineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_log::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_log::client_error("consumer", &error, reason);
    }

    /// Every `statistics.interval.ms`: keeps the end of each fetched
    /// partition (the last stable offset, as `read_committed` sees it), and
    /// ends a broker outage in the log once every broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if kafka_log::all_brokers_up(&statistics) {
            kafka_log::brokers_up();
        }
        let Ok(mut ends) = self.ends.lock() else {
            return;
        };
        for (name, topic) in &statistics.topics {
            for p in topic.partitions.values() {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if p.partition >= 0 && end >= 0 {
                    ends.entry(name.clone())
                        .or_default()
                        .insert(p.partition, end);
                }
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>()
        };
        let notice = match rebalance {
            Rebalance::Assign(tpl) => RebalanceNotice::Assigned(list(tpl)),
            Rebalance::Revoke(tpl) => RebalanceNotice::Revoked(list(tpl)),
            Rebalance::Error(e) => {
                warn!(error = %e, "Rebalance error.");
                return;
            }
        };
        if let Ok(mut events) = self.events.lock() {
            events.push(notice);
            self.pending.store(true, Ordering::Release);
        }
    }
}

/// Waits until every queued record is delivered or failed.
/// `commit_transaction`'s own flush then finds nothing in flight; left to
/// itself, rdkafka's flush waits for an event in steps of 100 ms, and
/// successful deliveries raise none.
///
/// The wait is librdkafka's `rd_kafka_flush`, which in the event mode that
/// rdkafka uses sleeps on the producer's message count and wakes when it
/// reaches zero; it also sends what is lingering at once. Between waits,
/// failed deliveries, logs and errors are served: a failed record's report
/// holds the record (and so the count) until it is served. `poll` with a
/// short timeout is no wait: rdkafka rounds the time left down to whole
/// milliseconds, so `poll(1 ms)` polls without blocking until the
/// millisecond is over, and a drain made of it kept a core busy for as
/// long as records were in flight.
pub fn drain<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    /// Longest single wait: a failed delivery's report is served this late
    /// at most (that commit fails anyway).
    const STEP: Duration = Duration::from_millis(10);
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::Flush(RDKafkaErrorCode::RequestTimedOut));
        }
        flush_wait(producer, left.min(STEP));
    }
}

/// Blocks in `rd_kafka_flush` for at most `wait` (at least 1 ms).
#[allow(unsafe_code)] // an FFI call rdkafka does not expose with a blocking wait
fn flush_wait<C: ProducerContext>(producer: &BaseProducer<C>, wait: Duration) {
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: the pointer is the producer's live librdkafka handle (borrowed
    // for the call); rd_kafka_flush may be called from any thread, and its
    // result (timed out or not) is read again through in_flight_count.
    unsafe {
        rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms);
    }
}

/// Aborts the open transaction. librdkafka's abort purges what is still
/// queued or in flight and then waits for the application to serve those
/// records' delivery reports; this producer has no polling thread, so
/// purge and serve them first, then abort (otherwise the abort fails while
/// any record is in flight).
pub fn abort<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    drain(producer, timeout)?;
    producer.abort_transaction(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_are_per_thread_and_stable() {
        let mut cfg = Config::default();
        cfg.kafka.group_id = "seg".into();
        assert_eq!(transactional_id(&cfg, "h1", 0, 1), "seg-h1");
        assert_eq!(transactional_id(&cfg, "h1", 1, 2), "seg-h1-1");
        cfg.pipeline.transactional_id = "fixed".into();
        assert_eq!(transactional_id(&cfg, "h1", 0, 1), "fixed");
        assert_eq!(transactional_id(&cfg, "h1", 0, 2), "fixed-0");
    }

    #[test]
    fn the_producer_is_transactional_and_idempotent() {
        let mut cfg = Config::default();
        cfg.dead_letter.max_value_bytes = 4 << 20;
        let pc = producer_config(&cfg, "seg-h1-0").map_err(|e| e.to_string());
        let pc = pc.as_ref().map_err(String::as_str);
        let get = |k: &str| pc.ok().and_then(|c| c.get(k)).map(str::to_string);
        assert_eq!(get("transactional.id").as_deref(), Some("seg-h1-0"));
        assert_eq!(get("enable.idempotence").as_deref(), Some("true"));
        assert_eq!(get("delivery.report.only.error").as_deref(), Some("true"));
        assert_eq!(get("acks").as_deref(), Some("all"));
        let max = (4usize << 20) + 256 * 1024;
        assert_eq!(get("message.max.bytes"), Some(max.to_string()));
        assert_eq!(get("partitioner").as_deref(), Some("consistent_random"));
    }

    #[test]
    fn keyed_outputs_are_partitioned_as_the_input_unless_configured() {
        let mut cfg = Config::default();
        cfg.input.partitioner = Partitioner::Murmur2;
        let get = |cfg: &Config| {
            producer_config(cfg, "t")
                .ok()
                .and_then(|c| c.get("partitioner").map(str::to_string))
        };
        assert_eq!(get(&cfg).as_deref(), Some("murmur2_random"));
        cfg.kafka
            .producer_properties
            .insert("partitioner".into(), "random".into());
        assert_eq!(get(&cfg).as_deref(), Some("random"));
    }
}
