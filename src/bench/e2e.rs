//! End to end with transactions against a raw read of the same input, and
//! the event → visible `SegmentChange` latency at half that rate.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde::Serialize;

use super::floor::{same_bytes_floor, Written};
use super::raw::raw_read_all;
use super::running::{Running, E2E_PARTITIONS};
use super::score::{bench_trained, bench_transformer, E2eModel};
use super::Outcome;
use crate::bench::{delete_bench_topics, BenchResult};
use crate::config::Config;

/// End-to-end results: sustained throughput and event → SegmentChange latency.
#[derive(Debug, Clone, Serialize)]
pub struct E2eBench {
    /// The model scored: `rules` (the built-in rule model) or `transformer`
    /// (a default-size Transformer trained inside the benchmark).
    pub model: String,
    /// Events in the throughput run.
    pub events: usize,
    /// Raw librdkafka: events/s reading the same input topics, no processing.
    pub raw_events_per_second: f64,
    /// The pipeline (decode, state, scoring, decisions, transactions): events/s.
    pub pipeline_events_per_second: f64,
    /// pipeline / raw.
    pub ratio: f64,
    /// Raw librdkafka doing the run's Kafka work without segstream's own,
    /// moving the same records and bytes, and CPU per event of both.
    pub floor: super::Floor,
    /// Latency at half the sustained rate.
    pub latency: Latency,
    /// Latency at a quarter of the sustained rate.
    pub latency_quarter: Latency,
    /// Throughput over realistic traffic (a month of generated behaviour).
    pub history: Outcome<super::HistoryE2e>,
}

/// One latency run: events fed at a fixed rate, each a new customer's
/// purchase, and the time until its SegmentChange is visible to a
/// read_committed consumer.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The rate asked for, events/s.
    pub target_rate: f64,
    /// The rate the feeder achieved, events/s.
    pub rate: f64,
    /// Segment changes measured.
    pub samples: usize,
    /// Median latency from produce to read_committed visibility, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// How busy the machine's cores were while events were fed (all
    /// processes: the pipeline, the broker, the feeder and the reader), %;
    /// `None` where `/proc/stat` cannot be read. Near 100 the latency is
    /// queueing for a core, not the pipeline's.
    pub machine_busy_pct: Option<f64>,
}

/// The feeder and reader of a latency run.
struct Probe<'a> {
    client: &'a ClientConfig,
    /// The reader's group (one per run: it starts at the output's end).
    group: String,
    input: &'a str,
    output: &'a str,
    /// Customer id prefix (one per run: every event a new customer).
    prefix: String,
}

impl Probe<'_> {
    /// Feeds `n` events at `rate` and measures each one's latency. The
    /// feeder and the read_committed reader run on their own OS threads,
    /// as a producer and a downstream consumer run in their own
    /// processes: as tasks of this runtime they would wait behind the
    /// stream threads' cycles for a worker (the feeder falling behind its
    /// rate, the reader counting its wait as the pipeline's latency).
    async fn run(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        rate: f64,
        n: usize,
        seconds: f64,
    ) -> BenchResult<Latency> {
        use crate::event::corpus::purchase;
        use crate::event::encode::{encode, WireFormat};
        use rdkafka::message::Message;
        use rdkafka::producer::FutureRecord;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{mpsc, Arc};

        // When event i was sent, in nanoseconds after `origin` plus one (0:
        // not sent). The event's key ends in i, so the reader finds its
        // send time without a lock or an allocation: the probe stands in
        // for processes elsewhere, and its own work shares the cores with
        // the pipeline and the broker.
        let origin = Instant::now();
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let reader: BaseConsumer = self
            .client
            .clone()
            .set("group.id", &self.group)
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "latest")
            .create()?;
        reader.subscribe(&[self.output])?;
        let (joined_tx, joined_rx) = mpsc::channel::<()>();
        let sent_r = sent.clone();
        let reader = std::thread::Builder::new()
            .name("bench-e2e-reader".into())
            .spawn(move || {
                // Join the group and learn the end offsets before the feeder
                // starts ("latest" would skip what is produced before that).
                let joined_by = Instant::now() + Duration::from_secs(3);
                while Instant::now() < joined_by {
                    let _ = reader.poll(Duration::from_millis(50));
                }
                let _ = joined_tx.send(());
                let mut latencies = Vec::with_capacity(n);
                let end = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
                while latencies.len() < n && Instant::now() < end {
                    let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let arrived = origin.elapsed().as_nanos() as u64;
                    let at = msg
                        .key()
                        .and_then(probe_index)
                        .and_then(|i| sent_r.get(i))
                        .map(|at| at.load(Ordering::Acquire))
                        .filter(|at| *at > 0);
                    if let Some(at) = at {
                        latencies.push(arrived.saturating_sub(at - 1) as f64 / 1e6);
                    }
                }
                latencies
            })?;
        let joined = tokio::task::spawn_blocking(move || joined_rx.recv().is_ok()).await?;
        if !joined {
            return Err("the latency run's reader thread ended before it joined".into());
        }
        let (producer, topic, prefix) =
            (producer.clone(), self.input.to_owned(), self.prefix.clone());
        let feeder = std::thread::Builder::new()
            .name("bench-e2e-feeder".into())
            .spawn(move || {
                let busy = cpu_times();
                let start = Instant::now();
                for i in 0..n {
                    // Sleeps only when a millisecond or more ahead: a sleep
                    // per event (tens of microseconds at these rates) costs
                    // a wake-up each, on the cores the pipeline runs on.
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        if wait >= Duration::from_millis(1) {
                            std::thread::sleep(wait);
                        }
                    }
                    let customer = format!("{prefix}-{i}");
                    let value = encode(
                        &purchase(&customer, &customer, crate::ingest::now_ms()),
                        WireFormat::Protobuf,
                    );
                    sent[i].store(origin.elapsed().as_nanos() as u64 + 1, Ordering::Release);
                    // A refused send (a full queue) is a latency sample that
                    // never arrives: the percentiles are over what was received.
                    let _ = producer
                        .send_result(FutureRecord::to(&topic).key(&customer).payload(&value));
                }
                let took = start.elapsed().as_secs_f64().max(1e-9);
                let busy = busy
                    .zip(cpu_times())
                    .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64);
                (n as f64 / took, busy)
            })?;
        let mut latencies = tokio::task::spawn_blocking(move || reader.join())
            .await?
            .map_err(|_| "the latency run's reader thread panicked")?;
        let (achieved, busy) = tokio::task::spawn_blocking(move || feeder.join())
            .await?
            .map_err(|_| "the latency run's feeder thread panicked")?;
        latencies.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            if latencies.is_empty() {
                f64::NAN
            } else {
                latencies[((latencies.len() - 1) as f64 * q).round() as usize]
            }
        };
        Ok(Latency {
            target_rate: rate,
            rate: achieved,
            samples: latencies.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            machine_busy_pct: busy,
        })
    }
}

/// The index at the end of a latency probe's key (`{prefix}-{i}`).
fn probe_index(key: &[u8]) -> Option<usize> {
    let digits = &key[key.iter().rposition(|b| *b == b'-')? + 1..];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// (busy, total) jiffies of all cores from `/proc/stat`; `None` where it
/// cannot be read (not Linux).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Some((total - idle, total))
}

/// Fewest events of the realistic-traffic run.
const HISTORY_MIN_EVENTS: usize = 1_200_000;

/// Runs the pipeline in-process against fresh topics with `model`: first
/// the sustained rate over `events` pre-produced events (against a raw
/// librdkafka read of the same topics), then the latency from an event's
/// produce time to its SegmentChange becoming visible to a read_committed
/// consumer, at half that rate for `latency_seconds`.
pub async fn e2e(
    config: &Config,
    events: usize,
    latency_seconds: f64,
    model: E2eModel,
) -> Result<E2eBench, Box<dyn std::error::Error + Send + Sync>> {
    use crate::event::corpus::{browse, purchase, review};
    use crate::event::encode::{encode, WireFormat};
    use crate::features::{FeatureSpec, Featurizer};
    use crate::model::{rules, Registry};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let id = format!("bench-e2e-{}", std::process::id());
    let client = config.kafka.client_config()?;
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let dir = std::env::temp_dir().join(&id);
    let registry = Registry::new(dir.join("models"));
    let cfg = Running::config(config, &id, registry.root());
    let new_topics = Running::new_topics(&cfg);
    for r in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    // Every exit, a failure included, deletes the topics: a benchmark run
    // writes gigabytes, and a leftover run's topics fill the broker's disk.
    let result: BenchResult<E2eBench> = async {
        let limits = config.state.limits().state;
        let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits)?;
        match model {
            E2eModel::Rules => {
                let (onnx, manifest) = rules::build(&featurizer, "rules-bench")?;
                registry.publish(&onnx, &manifest)?;
                registry.promote("rules-bench")?;
            }
            E2eModel::Transformer => bench_transformer(config, &registry).await?,
            E2eModel::Logistic => {
                bench_trained(
                    config,
                    &registry,
                    crate::config::ModelFamily::Logistic,
                    "logistic-bench",
                )
                .await?
            }
        }
        let inputs = &cfg.input.topics;

        // Pre-produce the throughput run: every event a new customer, so every
        // event is scored and publishes a SegmentChange (the latency run's shape).
        let producer: FutureProducer = client
            .clone()
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .create()?;
        let now = crate::ingest::now_ms();
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..events {
            let customer = format!("tp-{i}");
            let eid = format!("tp-{i}");
            let at = now - 1_800_000 + (i as i64 % 1_700_000);
            let (event, topic) = match i % 3 {
                0 => (browse(&customer, &eid, at), &inputs[0]),
                1 => (purchase(&customer, &eid, at), &inputs[1]),
                _ => (review(&customer, &eid, at), &inputs[2]),
            };
            let value = encode(&event, WireFormat::Protobuf);
            let (producer, topic) = (producer.clone(), topic.clone());
            pending.spawn(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&customer).payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            });
            if pending.len() >= 10_000 {
                while let Some(r) = pending.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = pending.join_next().await {
            r??;
        }

        // Baseline: raw librdkafka over the same topics.
        let (c1, topics1) = (client.clone(), inputs.to_vec());
        let raw = tokio::task::spawn_blocking(move || raw_read_all(&c1, &topics1, E2E_PARTITIONS))
            .await??;
        let raw_rate = raw.0 as f64 / raw.1.as_secs_f64().max(1e-9);

        // The pipeline, in-process, and what it wrote (the floor's records).
        let (pipeline, measured) = Running::measure(&cfg, &client, events).await?;
        let pipeline_rate = measured.rate;
        let written = Written::read(&cfg, &client, &id, events as u64).await?;

        // Latency at half the sustained rate (the figure the goals name), then
        // at a quarter of it (the pipeline's own latency with the machine's
        // cores to spare). Every event is a new customer, so every event
        // yields a first classification.
        // The feeder stands for an upstream service: its producer has the
        // client's defaults (librdkafka's 5 ms linger), not the bulk
        // loader's 20 ms above, whose wait would count as the pipeline's.
        let upstream: FutureProducer = client.clone().set("enable.idempotence", "true").create()?;
        let mut runs = Vec::with_capacity(2);
        for (i, share) in [0.5, 0.25].into_iter().enumerate() {
            let probe = Probe {
                client: &client,
                group: format!("{id}-reader-{i}"),
                input: &inputs[1],
                output: &cfg.output.topic,
                prefix: format!("lat{i}"),
            };
            let rate = (pipeline_rate * share).max(1.0);
            // Never more than the throughput run: the latency run's size is
            // bounded by what the caller asked for.
            let n = ((rate * latency_seconds) as usize).clamp(1, events);
            runs.push(probe.run(&upstream, rate, n, latency_seconds).await?);
        }
        pipeline.stop().await;
        // The same Kafka work without segstream's, with the pipeline stopped.
        let floor = same_bytes_floor(&cfg, &admin, &id, written, &measured).await?;
        // Twice the events and at least HISTORY_MIN_EVENTS: its pipeline runs
        // faster than the main run's, and the rate counts only after the
        // group has settled (with the local broker's rebalance delay of 0 the
        // first stream thread takes every partition, and learns of the next
        // thread's join at its next heartbeat, 3 s later). A failure here is
        // reported in its rows and leaves the main run's figures standing.
        let history = Outcome::from_result(
            super::history::history_e2e(
                config,
                &client,
                &admin,
                &id,
                registry.root(),
                events.saturating_mul(2).max(HISTORY_MIN_EVENTS),
            )
            .await,
        );
        let [half, quarter]: [Latency; 2] = runs
            .try_into()
            .map_err(|_| "the latency runs did not all run")?;
        Ok(E2eBench {
            model: model.as_str().into(),
            events,
            raw_events_per_second: raw_rate,
            pipeline_events_per_second: pipeline_rate,
            ratio: pipeline_rate / raw_rate.max(1e-9),
            floor,
            latency: half,
            latency_quarter: quarter,
            history,
        })
    }
    .await;
    delete_bench_topics(&admin, &Running::topic_names(&cfg)).await;
    let _ = std::fs::remove_dir_all(&dir); // Best effort: a temporary directory.
    result
}

/// The end-to-end results as a Markdown table.
pub fn e2e_markdown(b: &E2eBench) -> String {
    format!(
        "| end to end, {} model ({} events) | value |\n| --- | --- |\n\
         | raw librdkafka read of the input (baseline) | {:.0} events/s |\n\
         | pipeline, transactions on | {:.0} events/s |\n\
         | pipeline / raw | {:.3} |\n\
         {}{}{}{}",
        b.model,
        b.events,
        b.raw_events_per_second,
        b.pipeline_events_per_second,
        b.ratio,
        super::floor::floor_rows(&b.floor),
        latency_rows("half the sustained rate", &b.latency),
        latency_rows("a quarter of it", &b.latency_quarter),
        super::history::history_rows(&b.history),
    )
}

fn latency_rows(at: &str, l: &Latency) -> String {
    let busy = l
        .machine_busy_pct
        .map_or_else(|| "unknown".to_string(), |b| format!("{b:.0} %"));
    format!(
        "| latency run at {at} | {:.0} events/s fed (asked {:.0}), {} segment changes; machine busy {busy} |\n\
         | event → SegmentChange visible (read_committed), p50 | {:.0} ms |\n\
         | same, p99 | {:.0} ms |\n",
        l.rate, l.target_rate, l.samples, l.p50_ms, l.p99_ms
    )
}

#[cfg(test)]
mod tests {
    use super::probe_index;

    #[test]
    fn probe_keys_end_in_their_index() {
        assert_eq!(probe_index(b"lat0-0"), Some(0));
        assert_eq!(probe_index(b"lat1-40961"), Some(40961));
        assert_eq!(probe_index(b"a-b-7"), Some(7));
        assert_eq!(probe_index(b"lat0"), None);
        assert_eq!(probe_index(b"lat0-"), None);
        assert_eq!(probe_index(b"lat0-x1"), None);
    }
}
