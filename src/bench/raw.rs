//! The raw librdkafka baselines: reading topics to their end with the
//! pipeline's own consumer settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::bench::BenchResult;
use crate::config::Config;

/// The client context of the benchmark readers: partition EOF is how they
/// know they are done, not an error worth a log line.
pub(super) struct ReadToEnd;

impl rdkafka::ClientContext for ReadToEnd {
    /// The readers use the pipeline's consumer settings, statistics
    /// included; nothing here wants them (the default logs each one).
    fn stats_raw(&self, _statistics: &[u8]) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(error = %error, reason, "Benchmark reader client error.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEnd {}

/// A consumer that reads the given partitions from the beginning to their
/// ends, without a group's commits, reporting partition EOF.
pub(super) fn read_to_end_consumer(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
) -> Result<BaseConsumer<ReadToEnd>, KafkaError> {
    let mut c = client.clone();
    // The pipeline's own consumer settings, for the baseline too.
    crate::config::reader_defaults(&mut c, group, true);
    let consumer: BaseConsumer<ReadToEnd> = c.create_with_context(ReadToEnd)?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions {
            tpl.add_partition_offset(t, *p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// handing each record to `on_record`; returns the time from the first
/// record (connection set-up is not throughput). The one read loop of the
/// raw baselines and the ingest pass, so both are timed alike.
pub(super) fn read_to_end(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: i32,
    on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Duration, KafkaError> {
    let all: Vec<i32> = (0..partitions).collect();
    let span = read_span(client, group, topics, &all, on_record)?;
    Ok(span.took())
}

/// When a read saw its first record and when it reached the end.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    first: Option<Instant>,
    end: Instant,
}

impl Span {
    fn took(&self) -> Duration {
        self.first.map(|f| self.end - f).unwrap_or_default()
    }

    /// From the earliest first record to the latest end of several reads
    /// that ran at the same time.
    pub(super) fn union(spans: &[Span]) -> Duration {
        let first = spans.iter().filter_map(|s| s.first).min();
        let end = spans.iter().map(|s| s.end).max();
        match (first, end) {
            (Some(f), Some(e)) => e - f,
            _ => Duration::ZERO,
        }
    }
}

/// [`read_to_end`] of the listed partitions of `topics`.
pub(super) fn read_span(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Span, KafkaError> {
    let consumer = read_to_end_consumer(client, group, topics, partitions)?;
    let mut started: Option<Instant> = None;
    let mut eof = 0usize;
    let want = topics.len() * partitions.len();
    while eof < want {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => return Err(e),
            Some(Ok(msg)) => {
                started.get_or_insert_with(Instant::now);
                on_record(&msg);
            }
        }
    }
    Ok(Span {
        first: started,
        end: Instant::now(),
    })
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// doing nothing with the records (the baseline).
pub(super) fn raw_read_all(
    client: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(u64, Duration), KafkaError> {
    let mut n = 0u64;
    let took = read_to_end(client, "segstream-bench-raw", topics, partitions, |_| {
        n += 1
    })?;
    Ok((n, took))
}

/// The Kafka work of an end-to-end run without segstream's own: reads the
/// listed partitions of `topics` to their end and writes, per record read,
/// `per_input` records of each of `outputs` (the pipeline's own records,
/// cycled from this thread's `lane` of `lanes`; same partition number as
/// the record read), in transactions that carry the consumed offsets,
/// committed every commit interval or `pipeline.max_cycle_records` records,
/// with the pipeline's transactional producer settings.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_write_span(
    cfg: &Config,
    group: &str,
    transactional_id: &str,
    topics: &[String],
    partitions: &[i32],
    outputs: &[FloorOutput],
    (lane, lanes): (usize, usize),
) -> BenchResult<(u64, Span)> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let wait = Duration::from_secs(30);
    let client = cfg.kafka.client_config()?;
    let consumer = read_to_end_consumer(&client, group, topics, partitions)?;
    let producer: BaseProducer =
        crate::pipeline::clients::producer_config(cfg, transactional_id)?.create()?;
    producer.init_transactions(wait)?;
    producer.begin_transaction()?;
    let mut offsets: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let (mut n, mut in_cycle, mut eof) = (0u64, 0usize, 0usize);
    let mut started: Option<Instant> = None;
    let mut cycle_start = Instant::now();
    let want = topics.len() * partitions.len();
    // Per output: records owed (fractional) and the next one to write.
    let mut owed = vec![0f64; outputs.len()];
    let mut next: Vec<usize> = vec![lane; outputs.len()];
    let commit = |offsets: &mut std::collections::BTreeMap<(String, i32), i64>| -> BenchResult<()> {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in std::mem::take(offsets) {
            tpl.add_partition_offset(&t, p, Offset::Offset(o))?;
        }
        let meta = consumer
            .group_metadata()
            .ok_or("the read-write baseline's consumer has no group metadata")?;
        producer.send_offsets_to_transaction(&tpl, &meta, wait)?;
        crate::pipeline::clients::drain(&producer, wait)?;
        producer.commit_transaction(wait)?;
        producer.begin_transaction()?;
        Ok(())
    };
    while eof < want {
        match consumer.poll(Duration::from_millis(10)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(msg)) => {
                use rdkafka::message::Message;
                started.get_or_insert_with(Instant::now);
                for (o, out) in outputs.iter().enumerate() {
                    owed[o] += out.per_input;
                    while owed[o] >= 1.0 {
                        owed[o] -= 1.0;
                        let (k, v) = &out.records[next[o] % out.records.len()];
                        next[o] += lanes;
                        let mut record = BaseRecord::<[u8], [u8]>::to(&out.topic)
                            .partition(msg.partition())
                            .key(k.as_slice());
                        if let Some(v) = v {
                            record = record.payload(v.as_slice());
                        }
                        while let Err((e, r)) = producer.send(record) {
                            if !matches!(
                                e,
                                KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ) {
                                return Err(e.into());
                            }
                            record = r;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
                offsets.insert((msg.topic().to_string(), msg.partition()), msg.offset() + 1);
                n += 1;
                in_cycle += 1;
            }
        }
        producer.poll(Duration::ZERO);
        if in_cycle > 0
            && (in_cycle >= cfg.pipeline.max_cycle_records
                || cycle_start.elapsed() >= cfg.pipeline.commit_interval)
        {
            commit(&mut offsets)?;
            in_cycle = 0;
            cycle_start = Instant::now();
        }
    }
    if in_cycle > 0 {
        commit(&mut offsets)?;
    }
    Ok((
        n,
        Span {
            first: started,
            end: Instant::now(),
        },
    ))
}

/// [`read_write_span`] on `threads` threads, each with its share of the
/// partitions, its own consumer and transactional producer (as the stream
/// threads run): records and the time from the first record to the last
/// commit.
pub(super) fn raw_read_write(
    cfg: &Config,
    group: &str,
    topics: &[String],
    partitions: i32,
    outputs: &[FloorOutput],
) -> BenchResult<(u64, Duration)> {
    let threads = cfg
        .pipeline
        .stream_threads()
        .clamp(1, partitions.max(1) as usize);
    let results: Vec<BenchResult<(u64, Span)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % threads == t)
                    .collect();
                let id = format!("{group}-tx-{t}");
                s.spawn(move || {
                    read_write_span(cfg, group, &id, topics, &share, outputs, (t, threads))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a read-write baseline thread panicked".into()))
            })
            .collect()
    });
    let mut total = 0;
    let mut spans = Vec::with_capacity(threads);
    for r in results {
        let (n, span) = r?;
        total += n;
        spans.push(span);
    }
    Ok((total, Span::union(&spans)))
}

/// A record to write again: key and value (None: a tombstone).
pub(super) type Record = (Vec<u8>, Option<Vec<u8>>);

/// One output of the floor: the records to write, and how many per input
/// record.
#[derive(Debug, Clone)]
pub(super) struct FloorOutput {
    /// Where to write.
    pub topic: String,
    /// (key, value) records to cycle through; a None value is a tombstone.
    pub records: Arc<Vec<Record>>,
    /// Records per input record.
    pub per_input: f64,
}
