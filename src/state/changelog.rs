//! Changelog durability: the versioned binary encoding of a customer's state
//! (`proto/segstream/v1/state.proto`), the records written for changed and
//! evicted customers, and restore of a partition's customers from the
//! compacted changelog topic.
//!
//! The changelog is co-partitioned with the input: a customer's record goes
//! to the same partition number as their input events, so a partition's
//! state moves with the partition. Writing transactionally with the outputs
//! and offsets belongs to the pipeline; this module produces the records and
//! restores them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{error, info};

use super::{CustomerState, DayBucket, Decision, PartitionStore, RecentEvent};
use crate::event::proto;
use crate::telemetry::Metrics;

/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// Why a changelog value could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not a protobuf `CustomerStateRecord`.
    #[error("undecodable state record: {0}")]
    Protobuf(String),
    /// Written by a layout this build does not know.
    #[error("state record has format_version {0}, this build reads {FORMAT_VERSION}")]
    Version(u32),
    /// Columns of different lengths or other inconsistencies.
    #[error("inconsistent state record: {0}")]
    Inconsistent(&'static str),
}

/// Encodes a state as a changelog value.
pub fn encode(state: &CustomerState) -> Vec<u8> {
    let mut recent = proto::RecentEvents::default();
    let mut prev = 0u32;
    for e in &state.recent {
        // The list is sorted, so deltas are never negative; the first one is
        // the absolute time.
        recent.time_s_delta.push(u64::from(e.time_s - prev));
        prev = e.time_s;
        recent.id_hash.push(e.id_hash);
        recent.kind.push(e.kind);
        recent.rating.push(e.rating);
        recent.category_hash.push(e.category);
        recent.product_hash.push(e.product);
        recent.amount_minor.push(u64::from(e.amount_minor));
        recent.dwell_s.push(u32::from(e.dwell_s));
    }
    recent.token_count = state.token_counts.iter().map(|c| u32::from(*c)).collect();
    recent.tokens = state.tokens.iter().map(|t| u32::from(*t)).collect();
    let mut days = proto::DayBuckets::default();
    let mut prev_day = 0i64;
    for d in &state.days {
        // Sorted and after 1970 (validated on input): deltas are never negative.
        let delta = i64::from(d.day) - prev_day;
        days.day_delta
            .push(u32::try_from(delta.max(0)).unwrap_or(u32::MAX));
        prev_day = i64::from(d.day);
        days.browse.push(u32::from(d.browse));
        days.cart_adds.push(u32::from(d.cart_adds));
        days.purchases.push(u32::from(d.purchases));
        days.reviews.push(u32::from(d.reviews));
        days.spend_minor.push(u64::from(d.spend_minor));
        days.rating_sum.push(d.rating_sum);
        days.category_bits.push(d.category_bits);
    }
    let dec = &state.decision;
    proto::CustomerStateRecord {
        format_version: FORMAT_VERSION,
        first_seen_ms: state.first_seen_ms,
        last_event_ms: state.last_event_ms,
        last_purchase_ms: state.last_purchase_ms,
        recent: Some(recent),
        days: Some(days),
        decision: Some(proto::Decision {
            segment: dec.segment.clone(),
            scores: dec.scores.clone(),
            model_version: dec.model_version.clone(),
            decided_at_ms: dec.decided_at_ms,
            next_review_ms: dec.next_review_ms,
            since_ms: dec.since_ms,
            purchase_probability: dec.purchase_probability,
            churn_probability: dec.churn_probability,
            predicted_spend: dec.predicted_spend,
            as_of_ms: dec.as_of_ms,
            risk_flags: u32::from(dec.risk_flags),
        }),
        duplicates: state.duplicates,
        lifetime_purchases: state.lifetime.purchases,
        lifetime_spend_minor: state.lifetime.spend_minor,
        first_purchase_ms: state.lifetime.first_purchase_ms,
    }
    .encode_to_vec()
}

/// Decodes a changelog value.
pub fn decode(bytes: &[u8]) -> Result<CustomerState, CodecError> {
    let r = proto::CustomerStateRecord::decode(bytes)
        .map_err(|e| CodecError::Protobuf(e.to_string()))?;
    if r.format_version != FORMAT_VERSION && r.format_version != 1 {
        return Err(CodecError::Version(r.format_version));
    }
    let recent = r.recent.unwrap_or_default();
    let n = recent.time_s_delta.len();
    if [
        recent.id_hash.len(),
        recent.kind.len(),
        recent.rating.len(),
        recent.category_hash.len(),
        recent.amount_minor.len(),
        recent.dwell_s.len(),
        recent.token_count.len(),
    ]
    .iter()
    .any(|len| *len != n)
    {
        return Err(CodecError::Inconsistent(
            "recent-event columns differ in length",
        ));
    }
    if !recent.product_hash.is_empty() && recent.product_hash.len() != n {
        return Err(CodecError::Inconsistent(
            "recent-event columns differ in length",
        ));
    }
    let token_total: u64 = recent.token_count.iter().map(|c| u64::from(*c)).sum();
    if token_total != recent.tokens.len() as u64 || recent.token_count.iter().any(|c| *c > 255) {
        return Err(CodecError::Inconsistent(
            "token counts do not match the tokens",
        ));
    }
    let mut events = Vec::with_capacity(n);
    let mut t = 0u32;
    let out_of_range = CodecError::Inconsistent("value out of range");
    for i in 0..n {
        let delta = u32::try_from(recent.time_s_delta[i]).map_err(|_| out_of_range.clone())?;
        t = t.checked_add(delta).ok_or(out_of_range.clone())?;
        events.push(RecentEvent {
            id_hash: recent.id_hash[i],
            amount_minor: u32::try_from(recent.amount_minor[i])
                .map_err(|_| out_of_range.clone())?,
            time_s: t,
            category: recent.category_hash[i],
            // Absent in records written before products were kept.
            product: recent.product_hash.get(i).copied().unwrap_or(0),
            dwell_s: u16::try_from(recent.dwell_s[i]).unwrap_or(u16::MAX),
            kind: recent.kind[i],
            rating: recent.rating[i],
        });
    }
    let days_in = r.days.unwrap_or_default();
    let m = days_in.day_delta.len();
    if [
        days_in.browse.len(),
        days_in.cart_adds.len(),
        days_in.purchases.len(),
        days_in.reviews.len(),
        days_in.spend_minor.len(),
        days_in.rating_sum.len(),
        days_in.category_bits.len(),
    ]
    .iter()
    .any(|len| *len != m)
    {
        return Err(CodecError::Inconsistent(
            "day-bucket columns differ in length",
        ));
    }
    let mut days = Vec::with_capacity(m);
    let mut day = 0i32;
    let u16_of = |v: u32| u16::try_from(v).map_err(|_| out_of_range.clone());
    for i in 0..m {
        let delta = i32::try_from(days_in.day_delta[i]).map_err(|_| out_of_range.clone())?;
        day = day.checked_add(delta).ok_or(out_of_range.clone())?;
        days.push(DayBucket {
            day,
            spend_minor: u32::try_from(days_in.spend_minor[i]).map_err(|_| out_of_range.clone())?,
            category_bits: days_in.category_bits[i],
            browse: u16_of(days_in.browse[i])?,
            cart_adds: u16_of(days_in.cart_adds[i])?,
            purchases: u16_of(days_in.purchases[i])?,
            reviews: u16_of(days_in.reviews[i])?,
            rating_sum: days_in.rating_sum[i],
        });
    }
    let d = r.decision.unwrap_or_default();
    let lifetime = if r.format_version == 1 {
        lifetime_of_v1(&days, &events, r.last_purchase_ms)
    } else {
        super::Lifetime {
            purchases: r.lifetime_purchases,
            spend_minor: r.lifetime_spend_minor,
            first_purchase_ms: r.first_purchase_ms,
        }
    };
    Ok(CustomerState {
        first_seen_ms: r.first_seen_ms,
        last_event_ms: r.last_event_ms,
        last_purchase_ms: r.last_purchase_ms,
        recent: events,
        token_counts: recent.token_count.iter().map(|c| *c as u8).collect(),
        tokens: recent
            .tokens
            .iter()
            .map(|t| u16::try_from(*t).map_err(|_| out_of_range.clone()))
            .collect::<Result<_, _>>()?,
        days,
        decision: Decision {
            segment: d.segment,
            scores: d.scores,
            model_version: d.model_version,
            decided_at_ms: d.decided_at_ms,
            next_review_ms: d.next_review_ms,
            since_ms: d.since_ms,
            purchase_probability: d.purchase_probability,
            churn_probability: d.churn_probability,
            predicted_spend: d.predicted_spend,
            as_of_ms: d.as_of_ms,
            risk_flags: u8::try_from(d.risk_flags).map_err(|_| out_of_range.clone())?,
        },
        duplicates: r.duplicates,
        lifetime,
    })
}

/// Lifetime statistics of a record written before they existed (format 1):
/// what the kept days and recent events still show (a best effort; exact
/// for purchases from then on).
fn lifetime_of_v1(
    days: &[DayBucket],
    recent: &[RecentEvent],
    last_purchase_ms: i64,
) -> super::Lifetime {
    let purchases: u32 = days.iter().map(|d| u32::from(d.purchases)).sum();
    let spend_minor: u64 = days.iter().map(|d| u64::from(d.spend_minor)).sum();
    let first_recent = recent
        .iter()
        .filter(|e| e.kind == crate::state::kind::PURCHASE)
        .map(|e| i64::from(e.time_s) * 1000)
        .min();
    let first_day = days
        .iter()
        .filter(|d| d.purchases > 0)
        .map(|d| i64::from(d.day) * crate::state::DAY_MS)
        .min();
    // The exact time when the earliest purchase day still has its event
    // in the recent window; else the start of that day.
    let first_purchase_ms = match (first_day, first_recent) {
        (Some(d), Some(r)) if r < d + crate::state::DAY_MS => r,
        (Some(d), _) => d,
        (None, r) => r.unwrap_or(0),
    };
    super::Lifetime {
        purchases: purchases.max(u32::from(last_purchase_ms > 0)),
        spend_minor,
        first_purchase_ms,
    }
}

/// One changelog record: a customer's encoded state, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// The customer id (record key).
    pub key: String,
    /// Encoded state; `None` is a tombstone (evicted).
    pub value: Option<Vec<u8>>,
}

/// The records for every customer changed or evicted since the last call.
pub fn drain_dirty(store: &mut PartitionStore) -> Vec<ChangelogRecord> {
    store
        .take_dirty()
        .into_iter()
        .map(|(key, state)| ChangelogRecord {
            key,
            value: state.map(encode),
        })
        .collect()
}

/// Errors of the Kafka side of the changelog.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// A Kafka call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// Restore did not reach the end of the partition in time.
    #[error("restore of {topic}[{partition}] did not finish within {timeout:?}")]
    Timeout {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The limit.
        timeout: Duration,
    },
    /// The restore's decoder thread ended early (it panicked).
    #[error("the changelog decoder thread ended early")]
    Decoder,
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> ChangelogError {
    move |source| ChangelogError::Kafka { what, source }
}

/// Writes changelog records to their partition and waits for the acks.
/// (The pipeline writes the same records inside its transaction instead.)
pub struct ChangelogWriter {
    producer: FutureProducer,
    topic: String,
}

impl ChangelogWriter {
    /// An idempotent producer on `client` (connection settings from the config).
    pub fn new(mut client: ClientConfig, topic: &str) -> Result<Self, ChangelogError> {
        client
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "zstd");
        Ok(ChangelogWriter {
            producer: client
                .create()
                .map_err(kafka("creating the changelog producer"))?,
            topic: topic.to_string(),
        })
    }

    /// Writes `records` to `partition` (the customers' input partition).
    pub async fn write(
        &self,
        partition: i32,
        records: &[ChangelogRecord],
    ) -> Result<(), ChangelogError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let mut rec = FutureRecord::<str, [u8]>::to(&self.topic)
                .partition(partition)
                .key(&r.key);
            if let Some(v) = &r.value {
                rec = rec.payload(v);
            }
            pending.push(self.producer.send_result(rec).map_err(|(e, _)| {
                ChangelogError::Kafka {
                    what: "queueing a changelog record",
                    source: e,
                }
            })?);
        }
        for p in pending {
            match p.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka("writing a changelog record")(e)),
                Err(_) => return Err(kafka("writing a changelog record")(KafkaError::Canceled)),
            }
        }
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreStats {
    /// Records read (states and tombstones).
    pub records: u64,
    /// Bytes of record values read.
    pub bytes: u64,
    /// Tombstones applied.
    pub tombstones: u64,
    /// Records that could not be decoded (logged and skipped).
    pub corrupt: u64,
    /// Customers in the store afterwards.
    pub customers: usize,
    /// Wall time taken, set-up (client, offsets lookup) included.
    pub duration: Duration,
    /// Time from the first record read to the end (0 for an empty
    /// partition): the rate of the read itself, comparable with a raw read.
    pub reading: Duration,
}

/// Restores one partition's customers into `store`, reading the changelog
/// partition from the beginning to its end (read_committed). Blocking: run it
/// on a blocking thread. Customers of the partition must not be processed
/// before it returns.
pub fn restore_partition(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    store: &mut PartitionStore,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<RestoreStats, ChangelogError> {
    let mut stores = BTreeMap::new();
    stores.insert(
        partition,
        std::mem::replace(store, PartitionStore::new(store.limits())),
    );
    let mut stats = restore_partitions(client, topic, &mut stores, metrics, timeout)?;
    if let Some(restored) = stores.remove(&partition) {
        *store = restored;
    }
    Ok(stats.remove(&partition).unwrap_or_default())
}

/// Restores several partitions at once into their `stores` (keyed by
/// partition), with one consumer reading every changelog partition in
/// parallel; an empty changelog partition costs one offsets lookup and no
/// read. Blocking: run it on a blocking thread.
pub fn restore_partitions(
    client: &ClientConfig,
    topic: &str,
    stores: &mut BTreeMap<i32, PartitionStore>,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<BTreeMap<i32, RestoreStats>, ChangelogError> {
    let started = Instant::now();
    let mut client = client.clone();
    client
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    if client.get("group.id").is_none() {
        client.set("group.id", "segstream-restore");
    }
    client.set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<RestoreContext> = client
        .create_with_context(RestoreContext)
        .map_err(kafka("creating the restore consumer"))?;
    let in_progress = metrics.restore_in_progress.clone();
    in_progress.add(stores.len() as i64);
    let count = stores.len() as i64;
    let _guard = scopeguard(move || in_progress.sub(count));
    let records_counter = metrics.restore_records.with_label_values(&[topic]);
    let mut stats: BTreeMap<i32, RestoreStats> = BTreeMap::new();
    // Empty partitions (low == high watermark) need no read at all.
    let mut tpl = TopicPartitionList::new();
    let mut reading = BTreeSet::new();
    for &partition in stores.keys() {
        stats.insert(partition, RestoreStats::default());
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(kafka("reading the changelog's offsets"))?;
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(kafka("building the restore assignment"))?;
            reading.insert(partition);
        }
    }
    if !reading.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(kafka("assigning the changelog partitions"))?;
    }
    // Reading and decoding overlap: this thread polls and hands batches of
    // raw records to a decoder thread that installs them, so decoding is
    // off the read's critical path.
    let mut first_record: Option<Instant> = None;
    let outcome = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<RawRecord>>(16);
        let decoder = scope.spawn(|| install(rx, topic, stores, &mut stats, &records_counter));
        let read = read_batches(
            &consumer,
            topic,
            &mut reading,
            started,
            timeout,
            &tx,
            &mut first_record,
        );
        drop(tx);
        let installed = decoder.join();
        read.and(installed.map_err(|_| ChangelogError::Decoder))
    });
    outcome?;
    let duration = started.elapsed();
    let read_time = first_record.map(|t| t.elapsed()).unwrap_or_default();
    for (partition, st) in stats.iter_mut() {
        st.customers = stores.get(partition).map_or(0, PartitionStore::len);
        st.duration = duration;
        st.reading = read_time;
        metrics.restore_duration.observe(duration.as_secs_f64());
    }
    let total = |f: fn(&RestoreStats) -> u64| stats.values().map(f).sum::<u64>();
    info!(
        topic,
        partitions = ?stores.keys().collect::<Vec<_>>(),
        records = total(|s| s.records),
        customers = total(|s| s.customers as u64),
        tombstones = total(|s| s.tombstones),
        corrupt = total(|s| s.corrupt),
        seconds = duration.as_secs_f64(),
        "Restored partition state from the changelog."
    );
    Ok(stats)
}

/// A changelog record as read: partition, key, value (None: tombstone).
type RawRecord = (i32, Vec<u8>, Option<Vec<u8>>, i64);

/// Polls until every partition in `reading` reached its end, sending
/// records in batches.
fn read_batches(
    consumer: &BaseConsumer<RestoreContext>,
    topic: &str,
    reading: &mut BTreeSet<i32>,
    started: Instant,
    timeout: Duration,
    tx: &std::sync::mpsc::SyncSender<Vec<RawRecord>>,
    first_record: &mut Option<Instant>,
) -> Result<(), ChangelogError> {
    const BATCH: usize = 1024;
    let mut batch = Vec::with_capacity(BATCH);
    while !reading.is_empty() {
        if started.elapsed() > timeout {
            return Err(ChangelogError::Timeout {
                topic: topic.to_string(),
                partition: reading.first().copied().unwrap_or(-1),
                timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                reading.remove(&p);
            }
            Some(Err(e)) => return Err(kafka("reading the changelog")(e)),
            Some(Ok(msg)) => {
                first_record.get_or_insert_with(Instant::now);
                batch.push((
                    msg.partition(),
                    msg.key().unwrap_or_default().to_vec(),
                    msg.payload().map(<[u8]>::to_vec),
                    msg.offset(),
                ));
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(full).is_err() {
                        return Err(ChangelogError::Decoder);
                    }
                }
            }
        }
    }
    if !batch.is_empty() && tx.send(batch).is_err() {
        return Err(ChangelogError::Decoder);
    }
    Ok(())
}

/// Decodes batches into the partitions' stores (the decoder thread).
fn install(
    rx: std::sync::mpsc::Receiver<Vec<RawRecord>>,
    topic: &str,
    stores: &mut BTreeMap<i32, PartitionStore>,
    stats: &mut BTreeMap<i32, RestoreStats>,
    records_counter: &prometheus::IntCounter,
) {
    for batch in rx {
        records_counter.inc_by(batch.len() as u64);
        for (partition, key, value, offset) in batch {
            let (Some(store), Some(st)) = (stores.get_mut(&partition), stats.get_mut(&partition))
            else {
                continue;
            };
            st.records += 1;
            let key = String::from_utf8_lossy(&key);
            match value {
                None => {
                    st.tombstones += 1;
                    store.forget(&key);
                }
                Some(bytes) => {
                    st.bytes += bytes.len() as u64;
                    match decode(&bytes) {
                        Ok(mut state) => {
                            state.shrink();
                            store.restore(key.into_owned(), state);
                        }
                        Err(e) => {
                            st.corrupt += 1;
                            error!(
                                topic, partition, offset, error = %e,
                                "Skipped a changelog record that could not be decoded; \
                                 that customer's state restarts empty."
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Keeps the expected end-of-partition signal out of the error log.
struct RestoreContext;

impl rdkafka::ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(
                error,
                KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
            );
        if !eof {
            crate::telemetry::kafka_log::client_error("changelog restore", &error, reason);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::kafka_log::log(level, fac, log_message);
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreContext {}

/// Runs `f` when dropped (keeps the in-progress gauge right on every exit path).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
