//! The ingest benchmark: the pipeline's ingest stage (route = decode +
//! validate, then `PartitionStore::record`) with scoring off, against a bare
//! librdkafka read of the same topics in the same run.
//!
//! Both passes use the same consumer settings (assigned partitions from the
//! beginning, `read_committed`), so the difference between them is the
//! per-record work of the pipeline, not the client set-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde::Serialize;

use super::running::thread_cpu_seconds;
use super::{raw_read_all, read_span, BenchResult, Span};
use crate::config::Config;
use crate::event::encode::WireFormat;
use crate::generate::kafka::{produce, ProduceOptions};
use crate::generate::GeneratorConfig;
use crate::ingest;
use crate::intake::{Accepted, Applied, Intake};
use crate::state::{PartitionStore, StoreLimits};

use crate::units::DAY_MS;

/// Days of generated history the ingest benchmark reads.
pub const INGEST_DAYS: u32 = 30;

/// Results of the ingest benchmark (best of the rounds for each path).
#[derive(Debug, Clone, Serialize)]
pub struct IngestBench {
    /// Records in the input topics.
    pub events: u64,
    /// Partitions per input topic.
    pub partitions: i32,
    /// Mean record size (key + value) in bytes.
    pub bytes_per_event: f64,
    /// Rounds per path (raw, then pipeline, alternating); the best counts.
    pub rounds: usize,
    /// Raw librdkafka: records/s reading every partition to its end.
    pub raw_events_per_second: f64,
    /// Ingest + decode + validate + state update: events/s.
    pub pipeline_events_per_second: f64,
    /// pipeline / raw.
    pub ratio: f64,
    /// Stream threads of the threaded pass (`pipeline.threads`).
    pub threads: usize,
    /// The same ingest stage on `threads` threads, each reading its share of
    /// the partitions with its own consumer and stores, as stream threads do.
    pub threaded_events_per_second: f64,
    /// threaded / raw.
    pub threaded_ratio: f64,
    /// threaded / one thread.
    pub scaling: f64,
    /// Raw read throughput in MB/s (10^6 bytes).
    pub raw_megabytes_per_second: f64,
    /// Events applied to a customer's state (last pipeline round).
    pub applied: u64,
    /// Events the state ignored as duplicates (last pipeline round).
    pub duplicates: u64,
    /// Events behind the watermark (last pipeline round).
    pub late: u64,
    /// Records refused by decode/validation (last pipeline round).
    pub refused: u64,
    /// Customers in the stores after the run.
    pub customers: usize,
}

/// What one pass of the ingest stage did.
#[derive(Debug, Default, Clone, Copy)]
struct PassCounts {
    records: u64,
    bytes: u64,
    applied: u64,
    duplicates: u64,
    late: u64,
    refused: u64,
    customers: usize,
}

/// A topic prefix no other run uses.
pub(super) fn unique_id(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("segstream-bench-{what}-{}-{nanos:09}", std::process::id())
}

/// The stores' limits and the intake of an ingest pass over `cfg`'s input
/// topics of `partitions` partitions. The topics hold a month of history
/// read in partition, not time, order: the stores accept all of it, as
/// when replaying history. The intake is the run loop's (decoding,
/// partition check, risk rules); the event-time merge is left out: it waits
/// on the topics' ends, which a read of a finished history does not.
fn ingest_stage(cfg: &Config, partitions: i32) -> (StoreLimits, Intake) {
    let mut limits = cfg.state.limits();
    limits.allowed_lateness_ms = limits
        .allowed_lateness_ms
        .max(i64::from(INGEST_DAYS + 2) * DAY_MS);
    let mut intake = Intake::reader(cfg);
    intake.set_partitions(partitions);
    (limits, intake)
}

/// The ingest benchmark's world for about `events` events: a month of the
/// generator's behaviour ending a day ago.
fn ingest_world(events: usize) -> GeneratorConfig {
    // About 0.76 events per customer and day (the generator's mix); a third
    // more customers than needed so the cap, not the world, ends the run.
    let per_customer = 0.76 * f64::from(INGEST_DAYS);
    let customers = ((events as f64 / per_customer) * 1.33).ceil().max(10.0) as usize;
    let now = ingest::now_ms();
    GeneratorConfig {
        customers,
        days: INGEST_DAYS,
        start_ms: now - i64::from(INGEST_DAYS) * DAY_MS - DAY_MS,
        seed: 7,
        ..GeneratorConfig::default()
    }
}

/// Produces about `events` events of realistic behaviour (the generator's
/// mix over a month of history, protobuf) into `cfg.input.topics`.
pub(super) async fn produce_history(
    cfg: &Config,
    events: usize,
) -> BenchResult<crate::generate::kafka::ProduceReport> {
    let gen = ingest_world(events);
    let options = ProduceOptions {
        format: WireFormat::Protobuf,
        history: true,
        live_for: None,
        rate: None,
        max_events: Some(events as u64),
        pace: Default::default(),
        bots: 0,
    };
    let produced = produce(cfg, &gen, &options, std::future::pending::<()>()).await?;
    if produced.events == 0 {
        return Err("the generator produced no events".into());
    }
    Ok(produced)
}

/// Runs the ingest benchmark: generates about `events` events of realistic
/// behaviour (a month of history) into three fresh input topics with
/// `partitions` partitions each, then alternates a raw read and an ingest
/// pass over them `rounds` times. The topics are deleted afterwards.
pub async fn ingest(
    config: &Config,
    events: usize,
    partitions: i32,
    rounds: usize,
) -> BenchResult<IngestBench> {
    let id = unique_id("ingest");
    let client = config.kafka.client_config()?;
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let inputs: Vec<String> = ["browse", "purchase", "review"]
        .iter()
        .map(|k| format!("{id}.{k}"))
        .collect();
    let new: Vec<NewTopic<'_>> = inputs
        .iter()
        // History records carry old event times as timestamps; time-based
        // retention must not delete them mid-benchmark.
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1"))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let result = ingest_on(config, &client, &inputs, events, partitions, rounds).await;
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    super::delete_bench_topics(&admin, &names).await;
    result
}

async fn ingest_on(
    config: &Config,
    client: &ClientConfig,
    inputs: &[String],
    events: usize,
    partitions: i32,
    rounds: usize,
) -> BenchResult<IngestBench> {
    let mut cfg = config.clone();
    cfg.input.topics = inputs.to_vec();
    produce_history(&cfg, events).await?;

    let (limits, intake) = ingest_stage(&cfg, partitions);
    let intake = Arc::new(intake);

    let threads = cfg.pipeline.stream_threads();
    let (mut raw_best, mut pipe_best, mut threaded_best) = (0f64, 0f64, 0f64);
    let mut last = PassCounts::default();
    for _ in 0..rounds.max(1) {
        let (c, t) = (client.clone(), inputs.to_vec());
        let (n, took) =
            tokio::task::spawn_blocking(move || raw_read_all(&c, &t, partitions)).await??;
        raw_best = raw_best.max(n as f64 / took.as_secs_f64().max(1e-9));

        for n in [1, threads] {
            if n == 1 && threads == 1 && pipe_best > 0.0 {
                continue;
            }
            let (c, t, i) = (client.clone(), inputs.to_vec(), intake.clone());
            let (counts, took) =
                tokio::task::spawn_blocking(move || ingest_pass(&c, &t, partitions, n, &i, limits))
                    .await??;
            let rate = counts.records as f64 / took.as_secs_f64().max(1e-9);
            if n == 1 {
                pipe_best = pipe_best.max(rate);
            }
            if n == threads {
                threaded_best = threaded_best.max(rate);
            }
            last = counts;
        }
    }
    let bytes_per_event = last.bytes as f64 / last.records.max(1) as f64;
    Ok(IngestBench {
        events: last.records,
        partitions,
        bytes_per_event,
        rounds: rounds.max(1),
        raw_events_per_second: raw_best,
        pipeline_events_per_second: pipe_best,
        ratio: pipe_best / raw_best.max(1e-9),
        threads,
        threaded_events_per_second: threaded_best,
        threaded_ratio: threaded_best / raw_best.max(1e-9),
        scaling: threaded_best / pipe_best.max(1e-9),
        raw_megabytes_per_second: raw_best * bytes_per_event / 1e6,
        applied: last.applied,
        duplicates: last.duplicates,
        late: last.late,
        refused: last.refused,
        customers: last.customers,
    })
}

/// Reads every partition to its end as [`raw_read_all`] does, and puts each
/// record through the pipeline's per-record step: [`Intake::accept`], then
/// [`Intake::apply`] to the partition's [`PartitionStore`]. With
/// `threads` > 1 the partitions are dealt out to that many threads, each
/// with its own consumer and stores (as the stream threads of `segstream
/// run` own theirs); the time runs from the first record any thread saw to
/// the last thread's end.
fn ingest_pass(
    client: &ClientConfig,
    topics: &[String],
    partitions: i32,
    threads: usize,
    intake: &Intake,
    limits: StoreLimits,
) -> Result<(PassCounts, Duration), KafkaError> {
    let threads = threads.clamp(1, partitions.max(1) as usize);
    let shares: Vec<Vec<i32>> = (0..threads)
        .map(|t| {
            (0..partitions)
                .filter(|p| *p as usize % threads == t)
                .collect()
        })
        .collect();
    let results: Vec<Result<(PassCounts, Span), KafkaError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                scope.spawn(move || ingest_share(client, topics, share, intake.clone(), limits))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(KafkaError::Subscription("an ingest thread panicked".into()))
                })
            })
            .collect()
    });
    let mut total = PassCounts::default();
    let mut spans = Vec::with_capacity(threads);
    for r in results {
        let (c, span) = r?;
        total.records += c.records;
        total.bytes += c.bytes;
        total.applied += c.applied;
        total.duplicates += c.duplicates;
        total.late += c.late;
        total.refused += c.refused;
        total.customers += c.customers;
        spans.push(span);
    }
    Ok((total, Span::union(&spans)))
}

/// One thread's share of an [`ingest_pass`].
fn ingest_share(
    client: &ClientConfig,
    topics: &[String],
    partitions: &[i32],
    mut intake: Intake,
    limits: StoreLimits,
) -> Result<(PassCounts, Span), KafkaError> {
    let mut stores: HashMap<i32, PartitionStore> = HashMap::new();
    let mut counts = PassCounts::default();
    let span = read_span(
        client,
        "segstream-bench-ingest",
        topics,
        partitions,
        |msg| {
            counts.records += 1;
            counts.bytes +=
                (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64;
            let topic = intake.topic(msg.topic());
            let record = ingest::source_record(msg);
            match intake.accept(&record, &topic, ingest::now_ms()) {
                Accepted::Event(e) => {
                    let store = stores
                        .entry(e.partition)
                        .or_insert_with(|| PartitionStore::new(limits));
                    let stamped = record.timestamp_ms.filter(|t| *t >= 0);
                    match intake.apply(store, &e.event, stamped, tokio::time::Instant::now()) {
                        Applied::Changed { .. } => counts.applied += 1,
                        Applied::Duplicate => counts.duplicates += 1,
                        Applied::Late { .. } => counts.late += 1,
                        // The benchmark erases no one.
                        Applied::Erased => counts.refused += 1,
                    }
                }
                // The reader's intake has no erasure topic.
                Accepted::Refused(_) | Accepted::Erasure(_) => counts.refused += 1,
            }
        },
    )?;
    counts.customers = stores.values().map(PartitionStore::len).sum();
    Ok((counts, span))
}

/// Results of the in-memory ingest pass: the pipeline's per-record step
/// alone, without a broker or a client (issue 40: a steady yardstick for
/// segstream's own intake cost, where the Kafka runs move with the broker
/// sharing the cores).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryIngestBench {
    /// Records put through the step per pass.
    pub events: u64,
    /// Passes; each starts from empty stores.
    pub rounds: usize,
    /// Nanoseconds of this thread's CPU time per record (user + system),
    /// per pass, in order.
    pub cpu_ns_per_event: Vec<f64>,
    /// Wall nanoseconds per record, per pass.
    pub wall_ns_per_event: Vec<f64>,
    /// Events applied / duplicates / late / refused, last pass.
    pub counts: (u64, u64, u64, u64),
}

/// A record of the in-memory pass, as a producer would have written it.
struct MemoryRecord {
    /// Index of its input topic.
    topic: usize,
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Its timestamp (the event time), ms.
    at: i64,
}

/// Generates about `events` events of the ingest benchmark's world, encodes
/// them as the producers do (protobuf, keyed by customer, in the key's
/// partition of `partitions`, on the kind's input topic), then puts every
/// record through [`Intake::accept`] and [`Intake::apply`] on this thread,
/// `rounds` times from empty stores.
pub fn ingest_in_memory(
    config: &Config,
    events: usize,
    partitions: i32,
    rounds: usize,
) -> BenchResult<MemoryIngestBench> {
    use crate::event::encode::{encode, to_proto};
    let mut cfg = config.clone();
    cfg.input.topics = ["browse", "purchase", "review"]
        .iter()
        .map(|k| format!("memory.{k}"))
        .collect();
    let gen = ingest_world(events);
    let partitioner = cfg.input.partitioner;
    let records: Vec<MemoryRecord> = crate::generate::history(&gen)
        .take(events)
        .map(|e| {
            let topic = crate::generate::samples::topic_for(&cfg, e.kind());
            let t = cfg
                .input
                .topics
                .iter()
                .position(|n| n == topic)
                .unwrap_or(0);
            let key = e.customer_id.clone().into_bytes();
            let partition = ingest::partition_for(partitioner, &key, partitions);
            MemoryRecord {
                topic: t,
                partition,
                value: encode(&to_proto(&e), WireFormat::Protobuf),
                key,
                at: e.event_time_ms,
            }
        })
        .collect();
    let (limits, mut intake) = ingest_stage(&cfg, partitions);
    let topics: Vec<Arc<str>> = cfg.input.topics.iter().map(|t| intake.topic(t)).collect();
    let mut out = MemoryIngestBench {
        events: records.len() as u64,
        rounds: rounds.max(1),
        cpu_ns_per_event: Vec::new(),
        wall_ns_per_event: Vec::new(),
        counts: (0, 0, 0, 0),
    };
    let n = records.len().max(1) as f64;
    for _ in 0..rounds.max(1) {
        let mut stores: HashMap<i32, PartitionStore> = HashMap::new();
        let mut counts = (0u64, 0u64, 0u64, 0u64);
        let (cpu0, wall0) = (thread_cpu_seconds(), std::time::Instant::now());
        for (offset, r) in records.iter().enumerate() {
            let record = ingest::SourceRecord {
                topic: &topics[r.topic],
                partition: r.partition,
                offset: offset as i64,
                timestamp_ms: Some(r.at),
                key: Some(&r.key),
                value: Some(&r.value),
                headers: Vec::new(),
            };
            match intake.accept(&record, &topics[r.topic], ingest::now_ms()) {
                Accepted::Event(e) => {
                    let store = stores
                        .entry(e.partition)
                        .or_insert_with(|| PartitionStore::new(limits));
                    match intake.apply(store, &e.event, Some(r.at), tokio::time::Instant::now()) {
                        Applied::Changed { .. } => counts.0 += 1,
                        Applied::Duplicate => counts.1 += 1,
                        Applied::Late { .. } => counts.2 += 1,
                        Applied::Erased => counts.3 += 1,
                    }
                }
                Accepted::Refused(_) | Accepted::Erasure(_) => counts.3 += 1,
            }
        }
        let wall = wall0.elapsed().as_secs_f64();
        if let Some(cpu) = cpu0.zip(thread_cpu_seconds()).map(|(a, b)| b - a) {
            out.cpu_ns_per_event.push(cpu * 1e9 / n);
        }
        out.wall_ns_per_event.push(wall * 1e9 / n);
        out.counts = counts;
    }
    Ok(out)
}

/// The in-memory ingest results as a Markdown table.
pub fn memory_ingest_markdown(b: &MemoryIngestBench) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    format!(
        "| ingest in memory ({} records, no broker, one thread, {} passes) | value |\n| --- | --- |\n\
         | CPU per record, median (each pass) | {:.0} ns ({}) |\n\
         | wall per record, median (each pass) | {:.0} ns ({}) |\n\
         | applied / duplicates / late / refused | {} / {} / {} / {} |\n",
        b.events,
        b.rounds,
        median(&b.cpu_ns_per_event),
        list(&b.cpu_ns_per_event),
        median(&b.wall_ns_per_event),
        list(&b.wall_ns_per_event),
        b.counts.0,
        b.counts.1,
        b.counts.2,
        b.counts.3,
    )
}

/// The ingest results as a Markdown table.
pub fn ingest_markdown(b: &IngestBench) -> String {
    let mut s = format!(
        "| ingest ({} events, {} partitions × 3 topics, best of {}) | value |\n| --- | --- |\n",
        b.events, b.partitions, b.rounds
    );
    s.push_str(&format!(
        "| raw librdkafka read of the input (baseline) | {:.0} events/s ({:.1} MB/s) |\n",
        b.raw_events_per_second, b.raw_megabytes_per_second
    ));
    s.push_str(&format!(
        "| ingest + decode + validate + state update (scoring off) | {:.0} events/s |\n",
        b.pipeline_events_per_second
    ));
    s.push_str(&format!("| ingest / raw | {:.3} |\n", b.ratio));
    s.push_str(&format!(
        "| same on {} threads (pipeline.threads), each with its share of the partitions | {:.0} events/s |\n",
        b.threads, b.threaded_events_per_second
    ));
    s.push_str(&format!(
        "| {} threads / raw | {:.3} |\n| {} threads / one thread (scaling) | {:.2}x |\n",
        b.threads, b.threaded_ratio, b.threads, b.scaling
    ));
    s.push_str(&format!(
        "| bytes per event (key + protobuf value) | {:.0} B |\n",
        b.bytes_per_event
    ));
    s.push_str(&format!(
        "| applied / duplicates / late / refused | {} / {} / {} / {} |\n",
        b.applied, b.duplicates, b.late, b.refused
    ));
    s.push_str(&format!("| customers in state | {} |\n", b.customers));
    s
}
