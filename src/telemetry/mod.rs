//! Metrics and logging.
//!
//! Every metric lives in [`Metrics`], registered once in its own registry and
//! handed to stages by reference; stages update it per batch, never per
//! event: the run loop counts into a [`Tally`] of plain integers and flushes
//! it once per commit cycle. Names follow `segstream_<what>_<unit>[_total]`
//! and labels are bounded (topic, partition, kind, stage, reason, segment,
//! model version), never a customer id. The catalog is documented in the
//! operations guide (`docs/operating.md`); `tests/observability.rs` checks the output
//! with `promtool check metrics` and scrapes it with a real Prometheus.
//!
//! This module owns no I/O: the HTTP endpoints are served by
//! `pipeline::http`, which renders [`Metrics::render`].

pub mod drift;
pub mod kafka_log;
pub mod outcomes;
mod tally;
pub use tally::{Tally, END_TO_END_MAX_MS, REFUSAL_LOG_INTERVAL};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::config::{LogFormat, TelemetryConfig};
use crate::event::{EventKind, Reason};

/// Reasons a model can be refused (`ScoreError::reason` plus `registry`),
/// pre-created so alert expressions see a zero before the first failure.
pub const MODEL_FAILURE_REASONS: [&str; 6] = [
    "registry",
    "load",
    "contract",
    "golden",
    "runtime",
    "cuda_unavailable",
];

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `segstream_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// Records read from input topics, by topic.
    pub records_consumed: IntCounterVec,
    /// Events decoded and validated, by topic and kind.
    pub events_accepted: IntCounterVec,
    /// Records sent to the dead-letter topic, by stage and reason.
    pub dead_letters: IntCounterVec,
    /// Dead-letter records whose value was cut to `dead_letter.max_value_bytes`.
    pub dead_letters_truncated: IntCounter,
    /// Events older than the partition watermark allows (also dead letters
    /// with reason `late`).
    pub late_events: IntCounter,
    /// Records per decoded batch (the run loop: per commit cycle).
    pub batch_records: Histogram,
    /// Records between the committed offset and the end of each assigned
    /// input partition.
    pub consumer_lag: IntGaugeVec,
    /// Input partitions assigned to this instance.
    pub assigned_partitions: IntGauge,
    /// Seconds from a record's Kafka timestamp to the commit of the
    /// transaction carrying its effects.
    pub end_to_end_seconds: Histogram,
    /// Changelog records read while restoring, by changelog topic.
    pub restore_records: IntCounterVec,
    /// Partitions being restored right now.
    pub restore_in_progress: IntGauge,
    /// Seconds each partition restore took.
    pub restore_duration: Histogram,
    /// 1 for the live model version and provider.
    pub model_info: IntGaugeVec,
    /// Models swapped in.
    pub model_swaps: IntCounter,
    /// Shadow models loaded (scored at the live-outcome snapshots only).
    pub shadow_models: IntGauge,
    /// Models rejected or not loadable, by reason.
    pub model_load_failures: IntCounterVec,
    /// Seconds per inference run.
    pub inference_seconds: Histogram,
    /// Rows per inference run.
    pub inference_batch_rows: Histogram,
    /// Customers scored.
    pub scored_customers: IntCounter,
    /// Inference runs that failed.
    pub inference_failures: IntCounter,
    /// Kafka transactions by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Seconds to produce and commit one cycle's transaction.
    pub commit_seconds: Histogram,
    /// Events ignored as duplicates.
    pub duplicate_events: IntCounter,
    /// Events dropped because they were stamped before their customer's
    /// erasure (never applied, never dead-lettered).
    pub erased_events: IntCounter,
    /// Customers evicted after the TTL.
    pub evicted_customers: IntCounter,
    /// Erasure requests applied (customers whose state was removed, or who
    /// had none).
    pub erasures: IntCounter,
    /// Customers held in state by this instance.
    pub state_customers: IntGauge,
    /// Bytes of customer state held by this instance (estimate).
    pub state_bytes: IntGauge,
    /// Segment changes published, by from, to and trigger.
    pub segment_changes: IntCounterVec,
    /// 1 while `/readyz` answers 200.
    pub ready: IntGauge,
    /// 1 while the watchdog finds the instance stalled (`/healthz` 503).
    pub stalled: IntGauge,
    /// Customer lookups answered, by outcome (never by customer).
    pub lookups: IntCounterVec,
    /// Risk flags raised and cleared, by rule.
    pub risk_flags: IntCounterVec,
    /// Live outcomes: quality per model version.
    pub outcomes: outcomes::OutcomeMetrics,
    /// Drift of the served model's inputs and outputs at the live-outcome cuts.
    pub drift: drift::DriftMetrics,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    IntCounter::new(name, help)
}

fn counter_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    IntGauge::new(name, help)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

/// Latency buckets from 1 ms to 2 minutes.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

impl Metrics {
    /// Creates and registers every metric (and, on Linux, the process
    /// collector: CPU, memory, file descriptors, threads, start time).
    pub fn new() -> Result<Self, prometheus::Error> {
        let m = Metrics {
            registry: Registry::new(),
            build_info: gauge_vec(
                "segstream_build_info",
                "Always 1; the version label names the running build.",
                &["version"],
            )?,
            records_consumed: counter_vec(
                "segstream_records_consumed_total",
                "Records read from the input topics.",
                &["topic"],
            )?,
            events_accepted: counter_vec(
                "segstream_events_accepted_total",
                "Events that decoded and passed validation, by topic and event kind.",
                &["topic", "kind"],
            )?,
            dead_letters: counter_vec(
                "segstream_dead_letters_total",
                "Records routed to the dead-letter topic, by stage and reason.",
                &["stage", "reason"],
            )?,
            dead_letters_truncated: counter(
                "segstream_dead_letters_truncated_total",
                "Dead-letter records whose value was cut to dead_letter.max_value_bytes.",
            )?,
            late_events: counter(
                "segstream_late_events_total",
                "Events behind the partition watermark by more than state.allowed_lateness.",
            )?,
            batch_records: histogram(
                "segstream_ingest_batch_records",
                "Records per ingest batch (the run loop: per commit cycle).",
                &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0],
            )?,
            consumer_lag: gauge_vec(
                "segstream_consumer_lag_records",
                "Records between the committed offset and the end of an assigned input partition.",
                &["topic", "partition"],
            )?,
            assigned_partitions: gauge(
                "segstream_assigned_partitions",
                "Input partitions assigned to this instance.",
            )?,
            end_to_end_seconds: histogram(
                "segstream_end_to_end_seconds",
                "Time from a record's Kafka timestamp to the commit of the transaction carrying its effects.",
                &LATENCY_BUCKETS,
            )?,
            restore_records: counter_vec(
                "segstream_restore_records_total",
                "Changelog records read while restoring state.",
                &["topic"],
            )?,
            restore_in_progress: gauge(
                "segstream_restore_partitions_in_progress",
                "Partitions whose state is being restored from the changelog.",
            )?,
            restore_duration: histogram(
                "segstream_restore_duration_seconds",
                "Time to restore one partition's state from the changelog.",
                &[0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0],
            )?,
            model_info: gauge_vec(
                "segstream_model_info",
                "The live model: 1 for its version and execution provider.",
                &["version", "provider"],
            )?,
            model_swaps: counter(
                "segstream_model_swaps_total",
                "Models swapped in without a restart.",
            )?,
            shadow_models: gauge(
                "segstream_shadow_models",
                "Shadow models loaded: scored at the live-outcome snapshots only.",
            )?,
            model_load_failures: counter_vec(
                "segstream_model_load_failures_total",
                "Models rejected or not loadable, by reason.",
                &["reason"],
            )?,
            inference_seconds: histogram(
                "segstream_inference_seconds",
                "Time per inference run.",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            )?,
            inference_batch_rows: histogram(
                "segstream_inference_batch_rows",
                "Customers per inference run.",
                &[1.0, 8.0, 32.0, 128.0, 512.0, 2048.0, 8192.0],
            )?,
            scored_customers: counter("segstream_scored_customers_total", "Customers scored.")?,
            inference_failures: counter(
                "segstream_inference_failures_total",
                "Inference runs that failed.",
            )?,
            transactions: counter_vec(
                "segstream_transactions_total",
                "Kafka transactions by outcome.",
                &["outcome"],
            )?,
            commit_seconds: histogram(
                "segstream_commit_seconds",
                "Time to produce and commit one cycle's transaction.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            )?,
            duplicate_events: counter(
                "segstream_duplicate_events_total",
                "Events ignored because their event_id was seen among the customer's recent events.",
            )?,
            erased_events: counter(
                "segstream_erased_events_total",
                "Events dropped because they were stamped at or before their customer's erasure (read after it: a lagging input).",
            )?,
            erasures: counter(
                "segstream_erasures_total",
                "Erasure requests applied (privacy.erasure_topic), whether or not the customer had state.",
            )?,
            evicted_customers: counter(
                "segstream_evicted_customers_total",
                "Customers evicted after state.ttl without events.",
            )?,
            state_customers: gauge(
                "segstream_state_customers",
                "Customers held in state by this instance.",
            )?,
            state_bytes: gauge(
                "segstream_state_bytes",
                "Estimated bytes of customer state held by this instance.",
            )?,
            segment_changes: counter_vec(
                "segstream_segment_changes_total",
                "Segment changes published, by previous segment, new segment and trigger.",
                &["from", "to", "trigger"],
            )?,
            ready: gauge(
                "segstream_ready",
                "1 while the instance is ready (a model is loaded, its partition assignment received and every assigned partition restored).",
            )?,
            lookups: counter_vec(
                "segstream_lookups_total",
                "Customer lookups (GET /v1/customers/{id}) answered, by outcome: found, not_found, redirected, restoring, owner_unknown, busy, starting, bad_request.",
                &["outcome"],
            )?,
            risk_flags: counter_vec(
                "segstream_risk_flags_total",
                "Risk flags published, by rule and state (raised, cleared).",
                &["rule", "state"],
            )?,
            outcomes: outcomes::OutcomeMetrics::new()?,
            drift: drift::DriftMetrics::new()?,
            stalled: gauge(
                "segstream_stalled",
                "1 while the instance is stalled: no committed cycle for pipeline.stall_timeout while records wait, or a Kafka client call past pipeline.call_deadline.",
            )?,
        };
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.build_info.clone()),
            Box::new(m.records_consumed.clone()),
            Box::new(m.events_accepted.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.dead_letters_truncated.clone()),
            Box::new(m.late_events.clone()),
            Box::new(m.batch_records.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.assigned_partitions.clone()),
            Box::new(m.end_to_end_seconds.clone()),
            Box::new(m.restore_records.clone()),
            Box::new(m.restore_in_progress.clone()),
            Box::new(m.restore_duration.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.model_swaps.clone()),
            Box::new(m.shadow_models.clone()),
            Box::new(m.model_load_failures.clone()),
            Box::new(m.inference_seconds.clone()),
            Box::new(m.inference_batch_rows.clone()),
            Box::new(m.scored_customers.clone()),
            Box::new(m.inference_failures.clone()),
            Box::new(m.transactions.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.duplicate_events.clone()),
            Box::new(m.erased_events.clone()),
            Box::new(m.evicted_customers.clone()),
            Box::new(m.erasures.clone()),
            Box::new(m.state_customers.clone()),
            Box::new(m.state_bytes.clone()),
            Box::new(m.segment_changes.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.stalled.clone()),
            Box::new(m.lookups.clone()),
            Box::new(m.risk_flags.clone()),
        ];
        collectors.extend(m.outcomes.collectors());
        collectors.extend(m.drift.collectors());
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_threads, process_start_time_seconds, ...
        #[cfg(target_os = "linux")]
        collectors.push(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        for c in collectors {
            m.registry.register(c)?;
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Pre-create the series alerts and rates look at, so they start from
        // zero instead of appearing with their first increment.
        for reason in Reason::ALL {
            m.dead_letters
                .with_label_values(&[reason.stage().as_str(), reason.as_str()]);
        }
        for reason in MODEL_FAILURE_REASONS {
            m.model_load_failures.with_label_values(&[reason]);
        }
        for outcome in ["committed", "aborted"] {
            m.transactions.with_label_values(&[outcome]);
        }
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Events accepted so far for `kind` on `topic` (tests and summaries).
    pub fn accepted(&self, topic: &str, kind: EventKind) -> u64 {
        self.events_accepted
            .with_label_values(&[topic, kind.as_str()])
            .get()
    }

    /// Marks `version` on `provider` as the live model (and only it).
    pub fn set_model(&self, version: &str, provider: &str) {
        self.model_info.reset();
        self.model_info
            .with_label_values(&[version, provider])
            .set(1);
    }

    /// Dead letters so far for `reason`.
    pub fn dead_lettered(&self, reason: Reason) -> u64 {
        self.dead_letters
            .with_label_values(&[reason.stage().as_str(), reason.as_str()])
            .get()
    }

    /// A fresh [`Tally`] for the run loop.
    pub fn tally(&self) -> Tally {
        let refused = Reason::ALL
            .iter()
            .map(|r| {
                self.dead_letters
                    .with_label_values(&[r.stage().as_str(), r.as_str()])
            })
            .collect();
        Tally {
            metrics: self.clone(),
            topics: Vec::new(),
            refused,
            refused_counts: [0; Reason::ALL.len()],
            unlogged: [0; Reason::ALL.len()],
            logged_at: None,
            truncated: 0,
            duplicates: 0,
            erased: 0,
            late: 0,
            records: 0,
            touched: false,
        }
    }

    /// Sets the lag of one input partition.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag.max(0));
    }

    /// A transaction of a stream thread was aborted (or lost with a fenced
    /// producer): the one place that counts it in
    /// `segstream_transactions_total{outcome="aborted"}` and logs it.
    pub fn transaction_aborted(&self, reason: &str, records: u64) {
        self.transactions.with_label_values(&["aborted"]).inc();
        tracing::warn!(
            reason,
            records,
            "Aborted the open transaction; its records are consumed again from the committed offsets."
        );
    }

    /// Drops the lag series of a partition this instance no longer owns (its
    /// new owner reports it), so sums over instances do not count it twice.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        // Err only when the series never existed (no lag was reported yet).
        let _ = self
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    /// Observes the end-to-end latency of the records of one committed
    /// cycle, given their Kafka timestamps (ms; negative: unknown), through a
    /// thread-local histogram flushed once.
    pub fn observe_end_to_end(&self, timestamps_ms: &[i64], committed_at_ms: i64) {
        let local = self.end_to_end_seconds.local();
        for &ts in timestamps_ms {
            // A record stamped more than END_TO_END_MAX ago was not produced
            // just now (a backfill producer stamping event time, a replay):
            // it says nothing about the pipeline's latency and would swamp
            // the histogram's sum (one record stamped near the epoch made
            // the mean 57 days).
            let age = committed_at_ms - ts;
            if ts >= 0 && age <= END_TO_END_MAX_MS {
                local.observe(age.max(0) as f64 / 1000.0);
            }
        }
        local.flush();
    }
}

/// Installs the global `tracing` subscriber. `RUST_LOG` wins over the config.
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, never in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) is harmless; ignore the "already set" error.
    let _ = match cfg.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests;
