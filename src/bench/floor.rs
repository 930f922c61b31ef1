//! The Kafka-work floor of an end-to-end run, moving the same bytes as the
//! pipeline (issue 40): a raw librdkafka reader and transactional writer
//! that reads the same input and writes, per input record, the records the
//! pipeline itself wrote to its changelog, segment and current topics (their
//! keys and values, cycled; as many per input record as the pipeline wrote),
//! in transactions with the consumed offsets, on as many threads. What is
//! left between the two is segstream's own work.
//!
//! Both are also measured in CPU seconds per event of their process (this
//! one: both run in it, one after the other), the figure that survives a
//! shared machine: the throughput ratio moves with whatever else runs, the
//! CPU spent per event much less.

use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde::Serialize;

use super::raw::{raw_read_write, read_span, FloorOutput, Record};
use super::running::{process_cpu_seconds, Measured, E2E_PARTITIONS};
use crate::bench::{delete_bench_topics, BenchResult};
use crate::config::Config;

/// Records of the pipeline's outputs kept to cycle through, per topic: its
/// sizes and contents, without holding a long run's whole output.
const SAMPLE: usize = 50_000;

/// What the pipeline wrote to one topic.
#[derive(Debug, Clone)]
struct Sampled {
    /// Up to [`SAMPLE`] of its records.
    records: Vec<Record>,
    /// Records per input event.
    per_input: f64,
    /// Mean key + value bytes of a record.
    mean_bytes: f64,
}

/// The pipeline against the Kafka-work floor that moves the same records.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Records the pipeline wrote per input event: changelog, segment
    /// changes, current segments.
    pub records_per_event: [f64; 3],
    /// Key and value bytes the pipeline wrote per input event, all three.
    pub bytes_per_event: f64,
    /// The floor's rate, events/s.
    pub events_per_second: f64,
    /// Pipeline events/s over the floor's.
    pub ratio: f64,
    /// CPU time of the pipeline per event, µs (user + system, the whole
    /// process, over the measured window); None where it cannot be read.
    pub pipeline_cpu_us: Option<f64>,
    /// CPU time of the floor per event, µs.
    pub floor_cpu_us: Option<f64>,
    /// Pipeline CPU per event over the floor's.
    pub cpu_ratio: Option<f64>,
}

/// What a pipeline wrote to its changelog, segment and current topics:
/// per topic, records to cycle through, records per input event, mean
/// record bytes.
#[derive(Debug, Clone)]
pub(super) struct Written(Vec<Sampled>);

impl Written {
    /// Reads what the pipeline of `cfg` wrote after reading `input_events`
    /// (before anything else writes there: the latency runs come after).
    pub(super) async fn read(
        cfg: &Config,
        client: &ClientConfig,
        id: &str,
        input_events: u64,
    ) -> BenchResult<Written> {
        let outputs = [
            cfg.state.changelog_topic.clone(),
            cfg.output.topic.clone(),
            cfg.output.current_topic.clone(),
        ];
        let (c, group) = (client.clone(), format!("{id}-floor-sample"));
        let n = input_events.max(1);
        Ok(Written(
            tokio::task::spawn_blocking(move || sample_outputs(&c, &group, &outputs, n)).await??,
        ))
    }

    /// Mean key + value bytes of a changelog record written.
    pub(super) fn changelog_mean_bytes(&self) -> f64 {
        self.0.first().map_or(0.0, |s| s.mean_bytes)
    }

    /// Changelog records written per input event.
    pub(super) fn changelog_per_event(&self) -> f64 {
        self.0.first().map_or(0.0, |s| s.per_input)
    }
}

/// Runs the floor over the input topics of `cfg`, writing what its
/// pipeline, `measured`, wrote (`written`) to fresh topics named after
/// `id`, deleted on every exit. Run it with the pipeline stopped: both
/// are timed by this process's CPU.
pub(super) async fn same_bytes_floor(
    cfg: &Config,
    admin: &AdminClient<DefaultClientContext>,
    id: &str,
    written: Written,
    measured: &Measured,
) -> BenchResult<Floor> {
    let names = [
        format!("{id}.floor-changelog"),
        format!("{id}.floor-segments"),
        format!("{id}.floor-current"),
    ];
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let t = NewTopic::new(n, E2E_PARTITIONS, TopicReplication::Fixed(1));
            // Changelog and current membership are compacted, as the pipeline's.
            if i == 1 {
                t
            } else {
                t.set("cleanup.policy", "compact")
            }
        })
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let result = async {
        let sampled = written.0;
        let (records_per_event, bytes_per_event) = {
            let mut per = [0.0; 3];
            let mut bytes = 0.0;
            for (i, t) in sampled.iter().enumerate() {
                per[i] = t.per_input;
                bytes += t.per_input * t.mean_bytes;
            }
            (per, bytes)
        };
        let outputs: Vec<FloorOutput> = sampled
            .into_iter()
            .zip(&names)
            .map(|(t, topic)| FloorOutput {
                topic: topic.clone(),
                records: Arc::new(t.records),
                per_input: t.per_input,
            })
            .collect();
        let (c, inputs, group) = (cfg.clone(), cfg.input.topics.clone(), format!("{id}-floor"));
        let cpu0 = process_cpu_seconds();
        let (records, took) = tokio::task::spawn_blocking(move || {
            raw_read_write(&c, &group, &inputs, E2E_PARTITIONS, &outputs)
        })
        .await??;
        let floor_cpu_us = cpu0
            .zip(process_cpu_seconds())
            .map(|(a, b)| (b - a) * 1e6 / records.max(1) as f64);
        let rate = records as f64 / took.as_secs_f64().max(1e-9);
        Ok(Floor {
            records_per_event,
            bytes_per_event,
            events_per_second: rate,
            ratio: measured.rate / rate.max(1e-9),
            pipeline_cpu_us: measured.cpu_us_per_event,
            floor_cpu_us,
            cpu_ratio: measured
                .cpu_us_per_event
                .zip(floor_cpu_us)
                .map(|(p, f)| p / f.max(1e-9)),
        })
    }
    .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_bench_topics(admin, &refs).await;
    result
}

/// What the pipeline wrote to each of `topics` (read_committed, to their
/// ends): up to [`SAMPLE`] records, the records per input event, and the
/// mean key + value bytes of a record.
fn sample_outputs(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    input_events: u64,
) -> BenchResult<Vec<Sampled>> {
    let all: Vec<i32> = (0..E2E_PARTITIONS).collect();
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let (mut kept, mut count, mut bytes) = (Vec::new(), 0u64, 0u64);
        read_span(
            client,
            group,
            std::slice::from_ref(topic),
            &all,
            |m: &rdkafka::message::BorrowedMessage<'_>| {
                let (k, v) = (m.key().unwrap_or_default(), m.payload());
                count += 1;
                bytes += (k.len() + v.map_or(0, <[u8]>::len)) as u64;
                if kept.len() < SAMPLE {
                    kept.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                }
            },
        )?;
        if kept.is_empty() {
            kept.push((Vec::new(), Some(Vec::new())));
        }
        out.push(Sampled {
            records: kept,
            per_input: count as f64 / input_events as f64,
            mean_bytes: bytes as f64 / count.max(1) as f64,
        });
    }
    Ok(out)
}

/// The rows of a same-bytes floor: what the pipeline wrote, the floor's
/// rate, and CPU per event of both.
pub(super) fn floor_rows(f: &Floor) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), |v| format!("{v:.1} µs"));
    format!(
        "| records the pipeline wrote per event (changelog, segment changes, current); bytes | {:.2}, {:.2}, {:.2}; {:.0} B |\n\
         | raw read + transactional write of those records (the run's Kafka work, same bytes, no processing) | {:.0} events/s |\n\
         | pipeline / same-bytes floor | {:.3} |\n\
         | CPU per event: pipeline; floor | {}; {} |\n\
         | pipeline CPU / floor CPU per event | {} |\n",
        f.records_per_event[0],
        f.records_per_event[1],
        f.records_per_event[2],
        f.bytes_per_event,
        f.events_per_second,
        f.ratio,
        us(f.pipeline_cpu_us),
        us(f.floor_cpu_us),
        f.cpu_ratio.map_or_else(|| "unknown".to_string(), |r| format!("{r:.2}")),
    )
}
