//! A pipeline run in-process by the end-to-end benchmarks, and its
//! sustained rate measured from its group's committed offsets.

use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, TopicPartitionList};

use crate::bench::BenchResult;
use crate::config::Config;
use crate::telemetry::Metrics;

/// What a measured pipeline run gave.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    /// Sustained events/s.
    pub rate: f64,
    /// CPU time of this process per event over the same window, µs (None
    /// where it cannot be read).
    pub cpu_us_per_event: Option<f64>,
}

/// A pipeline running in-process (`segstream run` on a task of this
/// runtime) until [`Running::stop`].
pub(super) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    metrics: Metrics,
    task: tokio::task::JoinHandle<Result<(), crate::pipeline::PipelineError>>,
}

impl Running {
    /// `config` for a benchmark pipeline over the topics named after `id`
    /// (`{id}.browse`, `.purchase`, `.review` in; `.changelog`, `.segments`,
    /// `.current`, `.dlq`; group `id`), scoring the model promoted in
    /// `registry`, with no HTTP listener.
    pub(super) fn config(config: &Config, id: &str, registry: &std::path::Path) -> Config {
        let t = |s: &str| format!("{id}.{s}");
        let mut cfg = config.clone();
        cfg.input.topics = vec![t("browse"), t("purchase"), t("review")];
        cfg.state.changelog_topic = t("changelog");
        cfg.dead_letter.topic = t("dlq");
        cfg.output.topic = t("segments");
        cfg.output.current_topic = t("current");
        cfg.kafka.group_id = id.to_string();
        cfg.pipeline.transactional_id = format!("{id}-tx");
        cfg.pipeline.http_listen = String::new();
        cfg.score.registry = registry.to_path_buf();
        cfg
    }

    /// The topics of a pipeline configured by [`Running::config`], to
    /// create: inputs and segment output with [`E2E_PARTITIONS`], changelog
    /// and current membership compacted, dead letters on one partition.
    pub(super) fn new_topics(cfg: &Config) -> Vec<NewTopic<'_>> {
        fn plain(n: &str) -> NewTopic<'_> {
            NewTopic::new(n, E2E_PARTITIONS, TopicReplication::Fixed(1))
        }
        let mut topics: Vec<NewTopic<'_>> = cfg.input.topics.iter().map(|n| plain(n)).collect();
        topics.push(plain(&cfg.output.topic));
        for compacted in [&cfg.state.changelog_topic, &cfg.output.current_topic] {
            topics.push(plain(compacted).set("cleanup.policy", "compact"));
        }
        topics.push(NewTopic::new(
            &cfg.dead_letter.topic,
            1,
            TopicReplication::Fixed(1),
        ));
        topics
    }

    /// The names of [`Running::new_topics`], to delete.
    pub(super) fn topic_names(cfg: &Config) -> Vec<&str> {
        Running::new_topics(cfg).iter().map(|t| t.name).collect()
    }

    /// Starts the pipeline of `cfg` over its input topics, which hold
    /// `events` records, and measures its sustained rate: records consumed
    /// (committed offsets of its group) per second, from the moment every
    /// stream thread holds its partitions (the rebalance as the threads join
    /// one by one is start-up, not throughput) until all are committed.
    pub(super) async fn measure(
        cfg: &Config,
        client: &ClientConfig,
        events: usize,
    ) -> BenchResult<(Running, Measured)> {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new()?;
        let task = tokio::spawn(crate::pipeline::run(
            cfg.clone(),
            metrics.clone(),
            async move {
                let _ = stop_rx.await; // Err: the sender is gone, which also means stop.
            },
        ));
        let running = Running {
            stop,
            metrics,
            task,
        };
        match running.rate(cfg, client, events).await {
            Ok(rate) => Ok((running, rate)),
            Err(e) if running.task.is_finished() => {
                let why = match running.task.await {
                    Ok(Ok(())) => "it stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                Err(format!("{e}: {why}").into())
            }
            Err(e) => {
                running.stop().await;
                Err(e)
            }
        }
    }

    async fn rate(
        &self,
        cfg: &Config,
        client: &ClientConfig,
        events: usize,
    ) -> BenchResult<Measured> {
        let id = &cfg.kafka.group_id;
        let consumer: BaseConsumer = client.clone().set("group.id", id).create()?;
        let offsets = || -> Result<i64, KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for t in &cfg.input.topics {
                for p in 0..E2E_PARTITIONS {
                    tpl.add_partition(t, p);
                }
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
                .sum())
        };
        let total = events as i64;
        let threads = cfg.pipeline.stream_threads();
        let group_reader: BaseConsumer = client.clone().create()?;
        let group_stable = || -> bool {
            group_reader
                .fetch_group_list(Some(id), Duration::from_secs(5))
                .ok()
                .and_then(|l| {
                    l.groups().first().map(|g| {
                        g.state() == "Stable"
                            && g.members().len() >= threads
                            && g.members()
                                .iter()
                                .all(|m| m.assignment().is_some_and(|a| a.len() > 8))
                    })
                })
                .unwrap_or(false)
        };
        let mut first: Option<(Instant, i64, Option<f64>)> = None;
        let deadline = Instant::now() + Duration::from_secs(900);
        let last = loop {
            let done = offsets()?;
            if first.is_none() && group_stable() {
                // The group check takes a round trip: count from after it.
                let done = offsets()?;
                if done >= total {
                    return Err(format!(
                        "the pipeline consumed all {events} events before its group settled; \
                     run with more events"
                    )
                    .into());
                }
                first = Some((Instant::now(), done, process_cpu_seconds()));
            }
            if done >= total {
                break (Instant::now(), process_cpu_seconds());
            }
            if self.task.is_finished() {
                return Err("the pipeline stopped before it consumed the benchmark input".into());
            }
            if Instant::now() > deadline {
                return Err("the pipeline did not consume the benchmark input in time".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The group never settled while there was input left: no rate can be
        // measured (it would be the whole input over no time).
        let Some((t0, done0, cpu0)) = first else {
            return Err(format!(
                "the pipeline consumed all {events} events before its group settled; \
                 run with more events"
            )
            .into());
        };
        // A rate measured over a sliver of the input is noise, and the latency
        // runs feed at a share of it: refuse rather than flood the broker.
        if total - done0 < total / 2 {
            return Err(format!(
                "the pipeline consumed {done0} of {events} events before its group settled, \
             leaving too few to measure a rate; run with more events"
            )
            .into());
        }
        let (end, cpu1) = last;
        let counted = (total - done0) as f64;
        Ok(Measured {
            rate: counted / end.duration_since(t0).as_secs_f64().max(1e-3),
            cpu_us_per_event: cpu0.zip(cpu1).map(|(a, b)| (b - a) * 1e6 / counted),
        })
    }

    /// Stops the pipeline and waits for it; its error, if any, is logged
    /// (a measurement already taken stands). Returns its metrics.
    pub(super) async fn stop(self) -> Metrics {
        let _ = self.stop.send(()); // Err: the pipeline already ended.
        match self.task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "The pipeline stopped on an error."),
            Err(e) => tracing::warn!(error = %e, "The pipeline task failed."),
            Ok(Ok(())) => {}
        }
        self.metrics
    }
}

/// Partitions per topic of the end-to-end benchmark: a multiple of 2 and 3,
/// so stream threads share them evenly.
pub(super) const E2E_PARTITIONS: i32 = 6;

/// CPU seconds (user + system) this process has used so far; None where
/// it cannot be read.
pub(super) fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds("/proc/self/stat")
}

/// CPU seconds (user + system) the calling thread has used so far; None
/// where it cannot be read.
pub(super) fn thread_cpu_seconds() -> Option<f64> {
    cpu_seconds("/proc/thread-self/stat")
}

/// utime + stime of a stat(5) file, in seconds (clock ticks of USER_HZ =
/// 100, Linux's fixed user-space unit).
fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields start after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), utime and stime: 11 and 12 after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
