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

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{error, info};

pub use super::codec::{decode, encode, CodecError, FORMAT_VERSION};
use super::{erasure, BulkRestore, PartitionStore, Restored};
use crate::telemetry::Metrics;

/// One changelog record: a customer's encoded state, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// The customer id (record key).
    pub key: String,
    /// Encoded state; `None` is a tombstone (evicted).
    pub value: Option<Vec<u8>>,
}

/// The records for every customer changed or evicted since the last call,
/// and for every erasure marker set or ended (see [`super::erasure`]).
pub fn drain_dirty(store: &mut PartitionStore) -> Vec<ChangelogRecord> {
    let markers = store.take_dirty_markers();
    let mut out: Vec<ChangelogRecord> = store
        .take_dirty()
        .into_iter()
        .map(|(key, state)| ChangelogRecord {
            key,
            value: state.map(encode),
        })
        .collect();
    out.extend(markers.into_iter().map(|(id, through)| ChangelogRecord {
        key: erasure::marker_key(&id),
        value: through.map(erasure::encode_marker),
    }));
    out
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
    /// A transaction on the changelog partition stayed open past the
    /// restore's deadline, so its outcome (and the state it carries) is
    /// unknown.
    #[error(
        "restore of {topic}[{partition}]: a transaction on it stayed open for {timeout:?} \
         (last stable offset {stable}, high watermark {end}); a producer that died \
         mid-transaction is normally aborted within pipeline.transaction_timeout"
    )]
    OpenTransaction {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The last stable offset when it gave up.
        stable: i64,
        /// The high watermark it waited for.
        end: i64,
        /// The limit.
        timeout: Duration,
    },
    /// The restore's decoder thread ended early (it panicked).
    #[error("the changelog decoder thread ended early")]
    Decoder,
    /// The restore's decoder thread could not start.
    #[error("starting the changelog decoder thread: {0}")]
    Thread(String),
}

impl crate::error::Classify for ChangelogError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            ChangelogError::Kafka { source, .. } => crate::error::Classify::class(source),
            // A slow broker, or a transaction a crashed producer left open.
            ChangelogError::Timeout { .. } | ChangelogError::OpenTransaction { .. } => {
                crate::error::ErrorClass::External
            }
            ChangelogError::Decoder | ChangelogError::Thread(_) => {
                crate::error::ErrorClass::Internal
            }
        }
    }
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
    /// Erasure markers installed.
    pub markers: u64,
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
    // Every partition asked for has its stats entry.
    Ok(stats.remove(&partition).unwrap_or_default())
}

/// The restore reader's client settings: the pipeline's reader settings
/// (its fetch-queue settings too: with librdkafka's default the fetcher
/// stops for a second whenever the decoder falls behind), from the
/// beginning, and a short fetch wait: the read ends with a fetch at the end
/// of the log, which would otherwise wait the whole `fetch.wait.max.ms` for
/// records that are not coming. The pipeline passes
/// `<kafka.group_id>-restore` as the group id, which a prefix ACL on its
/// group covers. The restore benchmark's raw baseline reads with these too.
pub fn restore_reader_config(client: &ClientConfig) -> ClientConfig {
    let mut client = client.clone();
    let group = client
        .get("group.id")
        .unwrap_or("segstream-restore")
        .to_string();
    crate::config::reader_defaults(&mut client, &group, true);
    client.set("auto.offset.reset", "earliest");
    client.set("fetch.wait.max.ms", "10");
    client
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
    let client = restore_reader_config(client);
    let consumer: BaseConsumer<RestoreContext> = client
        .create_with_context(RestoreContext)
        .map_err(kafka("creating the restore consumer"))?;
    let in_progress = metrics.restore_in_progress.clone();
    in_progress.add(stores.len() as i64);
    let count = stores.len() as i64;
    let _guard = scopeguard(move || in_progress.sub(count));
    let records_counter = metrics.restore_records.with_label_values(&[topic]);
    let mut stats: BTreeMap<i32, RestoreStats> = BTreeMap::new();
    let partitions: Vec<i32> = stores.keys().copied().collect();
    let ends = stable_ends(&client, &consumer, topic, &partitions, started, timeout)?;
    // Empty partitions (low == high watermark) need no read at all.
    let mut tpl = TopicPartitionList::new();
    let mut reading = BTreeSet::new();
    let mut expected = BTreeMap::new();
    for (&partition, &(low, high)) in &ends {
        stats.insert(partition, RestoreStats::default());
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(kafka("building the restore assignment"))?;
            reading.insert(partition);
            // Room for every record (an upper bound on the customers),
            // within reason.
            let records = usize::try_from(high - low).unwrap_or(0);
            expected.insert(partition, records.min(MAX_RESERVED_CUSTOMERS));
        }
    }
    if !reading.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(kafka("assigning the changelog partitions"))?;
    }
    // Values stay encoded (decoded at a customer's first use), so what is
    // left per record is a check, a copy and an insert. On a machine with
    // cores to spare, this thread polls and hands batches to an installer
    // thread; on a small one that third busy thread (next to this one and
    // librdkafka's fetcher, which decompresses) only takes CPU from the
    // other two, so this thread installs each record as it reads it: the
    // value is checked while it is still in cache and copied once.
    let mut first_record: Option<Instant> = None;
    let spare_cores = std::thread::available_parallelism().map_or(1, usize::from) >= 4;
    let outcome = if !spare_cores {
        let mut installer = Installer::new(topic, stores, &expected, &mut stats, &records_counter);
        read_records(
            &consumer,
            topic,
            &mut reading,
            started,
            timeout,
            &mut |partition, offset, key, value| {
                installer.take(partition, offset, key_of(key), value);
                true
            },
            &mut first_record,
        )
    } else {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<RawBatch>(16);
            let decoder = std::thread::Builder::new()
                .name("segstream-restore".into())
                .spawn_scoped(scope, || {
                    install(rx, topic, stores, &expected, &mut stats, &records_counter)
                })
                .map_err(|e| ChangelogError::Thread(e.to_string()))?;
            let mut batch = RawBatch::with_capacity(BATCH);
            let mut read = read_records(
                &consumer,
                topic,
                &mut reading,
                started,
                timeout,
                &mut |partition, offset, key, value| {
                    batch.push(RawRecord {
                        partition,
                        offset,
                        key: key_of(key),
                        value: value.map(Box::from),
                    });
                    batch.len() < BATCH
                        || tx
                            .send(std::mem::replace(
                                &mut batch,
                                RawBatch::with_capacity(BATCH),
                            ))
                            .is_ok()
                },
                &mut first_record,
            );
            if read.is_ok() && !batch.is_empty() && tx.send(batch).is_err() {
                read = Err(ChangelogError::Decoder);
            }
            drop(tx);
            let installed = decoder.join();
            read.and(installed.map_err(|_| ChangelogError::Decoder))
        })
    };
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

/// Each partition's (log start, high watermark), once every transaction
/// with records below that high watermark has ended.
///
/// A `read_committed` reader stops at the last stable offset: the first
/// record of a transaction still open. The previous owner's last commit can
/// be exactly that: `commit_transaction` returns once the commit is decided,
/// and the brokers write its markers afterwards, the offsets' marker and the
/// changelog's independently. The new owner may then see that commit's
/// input offsets (its consumer starts after them) while its changelog's
/// stable end is still before that commit's state: a restore stopping there
/// loses those events from state for good. So the restore first waits until
/// the stable end reaches the high watermark seen at its start (read
/// uncommitted, it counts every record written so far): every transaction
/// then ended, committed or aborted. Usually at once; a transaction left
/// open by a crashed producer is aborted within `pipeline.transaction_timeout`,
/// or sooner when its transactional id starts again.
fn stable_ends(
    client: &ClientConfig,
    consumer: &BaseConsumer<RestoreContext>,
    topic: &str,
    partitions: &[i32],
    started: Instant,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, ChangelogError> {
    let mut ends = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(ends);
    }
    let mut probe = client.clone();
    probe.set("isolation.level", "read_uncommitted");
    let probe: BaseConsumer<RestoreContext> = probe
        .create_with_context(RestoreContext)
        .map_err(kafka("creating the changelog offsets client"))?;
    for &partition in partitions {
        let (_, end) = probe
            .fetch_watermarks(topic, partition, timeout)
            .map_err(kafka("reading the changelog's high watermark"))?;
        let mut told = false;
        loop {
            let (low, stable) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(kafka("reading the changelog's offsets"))?;
            if stable >= end {
                ends.insert(partition, (low, stable));
                break;
            }
            if started.elapsed() > timeout {
                return Err(ChangelogError::OpenTransaction {
                    topic: topic.to_string(),
                    partition,
                    stable,
                    end,
                    timeout,
                });
            }
            if !told && started.elapsed() > Duration::from_secs(1) {
                info!(
                    topic,
                    partition,
                    last_stable_offset = stable,
                    high_watermark = end,
                    "Restore waits for a transaction on the changelog to end."
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(ends)
}

/// Customers a restore makes room for up front, per partition. The record
/// count of a changelog not yet compacted can be many times its customers;
/// a map slot is an id and a boxed value (32 bytes), so this reserves at
/// most about 17 MB (the map's buckets at its load factor); beyond it the
/// map grows as usual.
const MAX_RESERVED_CUSTOMERS: usize = 1 << 18;

/// Records per batch handed to the installer thread (when there is one),
/// and between two deadline checks.
const BATCH: usize = 1024;

/// Changelog records as read, copied once into what the store keeps (the
/// key and the value stay encoded until the customer is used).
type RawBatch = Vec<RawRecord>;

/// One record of a [`RawBatch`].
struct RawRecord {
    partition: i32,
    offset: i64,
    key: std::sync::Arc<str>,
    /// `None`: a tombstone.
    value: Option<Box<[u8]>>,
}

/// A record's key as the store keeps it. segstream always keys its
/// records; a keyless one is refused when installed (its key reads as
/// empty).
fn key_of(key: Option<&[u8]>) -> std::sync::Arc<str> {
    match std::str::from_utf8(key.unwrap_or_default()) {
        Ok(k) => k.into(),
        Err(_) => String::from_utf8_lossy(key.unwrap_or_default()).into(),
    }
}

/// What [`read_records`] hands on per record: partition, offset, key and
/// value (`None`: a tombstone), the last two borrowed from the client;
/// `false` stops the read (the installer is gone).
type OnRecord<'a> = dyn FnMut(i32, i64, Option<&[u8]>, Option<&[u8]>) -> bool + 'a;

/// Polls until every partition in `reading` reached its end, handing each
/// record to `on_record`.
fn read_records(
    consumer: &BaseConsumer<RestoreContext>,
    topic: &str,
    reading: &mut BTreeSet<i32>,
    started: Instant,
    timeout: Duration,
    on_record: &mut OnRecord<'_>,
    first_record: &mut Option<Instant>,
) -> Result<(), ChangelogError> {
    // The deadline is checked when the poll comes back empty and once per
    // BATCH records, not per record: reading the clock per record costs
    // the reader several per cent of its time.
    let mut check_deadline = true;
    let mut since_check = 0usize;
    while !reading.is_empty() {
        if std::mem::take(&mut check_deadline) && started.elapsed() > timeout {
            return Err(ChangelogError::Timeout {
                topic: topic.to_string(),
                partition: reading.first().copied().unwrap_or(-1),
                timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => check_deadline = true,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                reading.remove(&p);
            }
            Some(Err(e)) => return Err(kafka("reading the changelog")(e)),
            Some(Ok(msg)) => {
                first_record.get_or_insert_with(Instant::now);
                if !on_record(msg.partition(), msg.offset(), msg.key(), msg.payload()) {
                    return Err(ChangelogError::Decoder);
                }
                since_check += 1;
                if since_check >= BATCH {
                    since_check = 0;
                    check_deadline = true;
                }
            }
        }
    }
    Ok(())
}

/// Installs batches into the partitions' stores (the installer thread);
/// the stores' indexes are built once at the end.
fn install(
    rx: std::sync::mpsc::Receiver<RawBatch>,
    topic: &str,
    stores: &mut BTreeMap<i32, PartitionStore>,
    expected: &BTreeMap<i32, usize>,
    stats: &mut BTreeMap<i32, RestoreStats>,
    records_counter: &prometheus::IntCounter,
) {
    let mut installer = Installer::new(topic, stores, expected, stats, records_counter);
    for batch in rx {
        for r in batch {
            installer.take(r.partition, r.offset, r.key, r.value);
        }
    }
}

/// Installs raw changelog records into the partitions' stores.
struct Installer<'a> {
    topic: &'a str,
    targets: BTreeMap<i32, (BulkRestore<'a>, &'a mut RestoreStats)>,
    records_counter: &'a prometheus::IntCounter,
    /// Records taken and not yet added to `records_counter` (it is added
    /// to in batches, not per record).
    uncounted: u64,
}

impl<'a> Installer<'a> {
    fn new(
        topic: &'a str,
        stores: &'a mut BTreeMap<i32, PartitionStore>,
        expected: &BTreeMap<i32, usize>,
        stats: &'a mut BTreeMap<i32, RestoreStats>,
        records_counter: &'a prometheus::IntCounter,
    ) -> Self {
        let targets = stores
            .iter_mut()
            .zip(stats.iter_mut())
            .filter(|((p, _), (q, _))| p == q)
            .map(|((p, store), (_, st))| {
                let room = expected.get(p).copied().unwrap_or(0);
                (*p, (store.bulk_restore(room), st))
            })
            .collect();
        Installer {
            topic,
            targets,
            records_counter,
            uncounted: 0,
        }
    }

    /// Installs one record: a state kept encoded (checked here, decoded
    /// when the customer is first used), or a tombstone (`value` `None`).
    fn take<V>(&mut self, partition: i32, offset: i64, key: std::sync::Arc<str>, value: Option<V>)
    where
        V: AsRef<[u8]> + Into<Box<[u8]>>,
    {
        let topic = self.topic;
        self.uncounted += 1;
        if self.uncounted >= BATCH as u64 {
            self.records_counter
                .inc_by(std::mem::take(&mut self.uncounted));
        }
        let Some((store, st)) = self.targets.get_mut(&partition) else {
            return;
        };
        st.records += 1;
        if key.is_empty() {
            // Not a customer's record (segstream keys every one): it must
            // not become the state of a customer with an empty id.
            st.corrupt += 1;
            error!(
                topic,
                partition, offset, "Skipped a changelog record without a key."
            );
            return;
        }
        st.bytes += value.as_ref().map_or(0, |v| v.as_ref().len()) as u64;
        match store.put_record(key, value) {
            Ok(Restored::State) => {}
            Ok(Restored::Marker) => st.markers += 1,
            Ok(Restored::Tombstone) => st.tombstones += 1,
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

impl Drop for Installer<'_> {
    fn drop(&mut self) {
        self.records_counter.inc_by(self.uncounted);
    }
}

/// Keeps the expected end-of-partition signal out of the error log, and
/// the group coordinator's connection: the reader never uses it (librdkafka
/// opens it because assigning needs a group.id), and a short restore often
/// closes the client while that connection is still authenticating, which
/// librdkafka reports as a failed connection.
struct RestoreContext;

/// Whether a librdkafka line or error is about the group coordinator
/// connection.
fn coordinator_line(text: &str) -> bool {
    text.contains("GroupCoordinator")
}

impl rdkafka::ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(
                error,
                KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
            );
        if !eof && !coordinator_line(reason) {
            crate::telemetry::kafka_log::client_error("changelog restore", &error, reason);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if !coordinator_line(log_message) {
            crate::telemetry::kafka_log::log(level, fac, log_message);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CustomerState, StoreLimits};

    #[test]
    fn a_keyless_record_is_counted_corrupt_and_not_installed() {
        let value = || Some(encode(&CustomerState::default()).into_boxed_slice());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let batch = vec![
            RawRecord {
                partition: 0,
                offset: 0,
                key: "".into(),
                value: value(),
            },
            RawRecord {
                partition: 0,
                offset: 1,
                key: "c".into(),
                value: value(),
            },
        ];
        tx.send(batch).unwrap();
        drop(tx);
        let mut stores = BTreeMap::from([(0, PartitionStore::new(StoreLimits::default()))]);
        let mut stats = BTreeMap::from([(0, RestoreStats::default())]);
        let counter = prometheus::IntCounter::new("records", "records").unwrap();
        install(rx, "t", &mut stores, &BTreeMap::new(), &mut stats, &counter);
        assert_eq!((stats[&0].records, stats[&0].corrupt), (2, 1));
        assert_eq!(stores[&0].len(), 1);
        assert!(stores[&0].contains("c"));
    }
}
