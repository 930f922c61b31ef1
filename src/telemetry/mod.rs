//! Metrics and logging.
//!
//! Every metric lives in [`Metrics`], registered once in its own registry and
//! handed to stages by reference; stages update it per batch, never per
//! event. Names follow `segstream_<what>_<unit>[_total]` and labels are bounded
//! (topic, kind, stage, reason), never a customer id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::config::{LogFormat, TelemetryConfig};
use crate::event::{EventKind, Reason};

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records read from input topics, by topic.
    pub records_consumed: IntCounterVec,
    /// Events decoded and validated, by topic and kind.
    pub events_accepted: IntCounterVec,
    /// Records sent to the dead-letter topic, by stage and reason.
    pub dead_letters: IntCounterVec,
    /// Dead-letter records whose value was cut to `dead_letter.max_value_bytes`.
    pub dead_letters_truncated: IntCounter,
    /// Records per decoded batch.
    pub batch_records: Histogram,
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
    /// Customers evicted after the TTL.
    pub evicted_customers: IntCounter,
    /// Customers held in state by this instance.
    pub state_customers: IntGauge,
    /// Segment changes published, by from, to and trigger.
    pub segment_changes: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let records_consumed = IntCounterVec::new(
            Opts::new(
                "segstream_records_consumed_total",
                "Records read from the input topics.",
            ),
            &["topic"],
        )?;
        let events_accepted = IntCounterVec::new(
            Opts::new(
                "segstream_events_accepted_total",
                "Events that decoded and passed validation.",
            ),
            &["topic", "kind"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "segstream_dead_letters_total",
                "Records routed to the dead-letter topic.",
            ),
            &["stage", "reason"],
        )?;
        let dead_letters_truncated = IntCounter::new(
            "segstream_dead_letters_truncated_total",
            "Dead-letter records whose value was cut to dead_letter.max_value_bytes.",
        )?;
        let batch_records = Histogram::with_opts(
            HistogramOpts::new(
                "segstream_ingest_batch_records",
                "Records per ingest batch.",
            )
            .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0]),
        )?;
        let restore_records = IntCounterVec::new(
            Opts::new(
                "segstream_restore_records_total",
                "Changelog records read while restoring state.",
            ),
            &["topic"],
        )?;
        let restore_in_progress = IntGauge::new(
            "segstream_restore_partitions_in_progress",
            "Partitions whose state is being restored from the changelog.",
        )?;
        let restore_duration = Histogram::with_opts(
            HistogramOpts::new(
                "segstream_restore_duration_seconds",
                "Time to restore one partition's state from the changelog.",
            )
            .buckets(vec![0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0]),
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new(
                "segstream_model_info",
                "The live model: 1 for its version and execution provider.",
            ),
            &["version", "provider"],
        )?;
        let model_swaps = IntCounter::new(
            "segstream_model_swaps_total",
            "Models swapped in without a restart.",
        )?;
        let model_load_failures = IntCounterVec::new(
            Opts::new(
                "segstream_model_load_failures_total",
                "Models rejected or not loadable, by reason.",
            ),
            &["reason"],
        )?;
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new("segstream_inference_seconds", "Time per inference run.").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
        )?;
        let inference_batch_rows = Histogram::with_opts(
            HistogramOpts::new(
                "segstream_inference_batch_rows",
                "Customers per inference run.",
            )
            .buckets(vec![1.0, 8.0, 32.0, 128.0, 512.0, 2048.0, 8192.0]),
        )?;
        let scored_customers =
            IntCounter::new("segstream_scored_customers_total", "Customers scored.")?;
        let inference_failures = IntCounter::new(
            "segstream_inference_failures_total",
            "Inference runs that failed.",
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                "segstream_transactions_total",
                "Kafka transactions by outcome.",
            ),
            &["outcome"],
        )?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "segstream_commit_seconds",
                "Time to produce and commit one cycle's transaction.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )?;
        let duplicate_events = IntCounter::new(
            "segstream_duplicate_events_total",
            "Events ignored because their event_id was seen among the customer's recent events.",
        )?;
        let evicted_customers = IntCounter::new(
            "segstream_evicted_customers_total",
            "Customers evicted after state.ttl without events.",
        )?;
        let state_customers = IntGauge::new(
            "segstream_state_customers",
            "Customers held in state by this instance.",
        )?;
        let segment_changes = IntCounterVec::new(
            Opts::new(
                "segstream_segment_changes_total",
                "Segment changes published, by previous segment, new segment and trigger.",
            ),
            &["from", "to", "trigger"],
        )?;
        registry.register(Box::new(transactions.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        registry.register(Box::new(duplicate_events.clone()))?;
        registry.register(Box::new(evicted_customers.clone()))?;
        registry.register(Box::new(state_customers.clone()))?;
        registry.register(Box::new(segment_changes.clone()))?;
        registry.register(Box::new(model_info.clone()))?;
        registry.register(Box::new(model_swaps.clone()))?;
        registry.register(Box::new(model_load_failures.clone()))?;
        registry.register(Box::new(inference_seconds.clone()))?;
        registry.register(Box::new(inference_batch_rows.clone()))?;
        registry.register(Box::new(scored_customers.clone()))?;
        registry.register(Box::new(inference_failures.clone()))?;
        registry.register(Box::new(restore_records.clone()))?;
        registry.register(Box::new(restore_in_progress.clone()))?;
        registry.register(Box::new(restore_duration.clone()))?;
        registry.register(Box::new(records_consumed.clone()))?;
        registry.register(Box::new(events_accepted.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(dead_letters_truncated.clone()))?;
        registry.register(Box::new(batch_records.clone()))?;
        // Pre-create every reason series so rates start from zero, not absent.
        for reason in Reason::ALL {
            dead_letters.with_label_values(&[reason.stage().as_str(), reason.as_str()]);
        }
        Ok(Metrics {
            registry,
            records_consumed,
            events_accepted,
            dead_letters,
            dead_letters_truncated,
            batch_records,
            restore_records,
            restore_in_progress,
            restore_duration,
            model_info,
            model_swaps,
            model_load_failures,
            inference_seconds,
            inference_batch_rows,
            scored_customers,
            inference_failures,
            transactions,
            commit_seconds,
            duplicate_events,
            evicted_customers,
            state_customers,
            segment_changes,
        })
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
}

/// Installs the global `tracing` subscriber. `RUST_LOG` wins over the config.
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore the "already set" error.
    let _ = match cfg.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
