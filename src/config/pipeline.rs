//! `[pipeline]` and `[telemetry]`: the run loop and logging.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{range, Problems};

/// The run loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Length of a commit cycle: outputs, changelog, dead letters and offsets
    /// are committed in one Kafka transaction this often.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// A cycle also ends as soon as it has applied this many input records,
    /// before its interval is up. Bounds a transaction's size, a cycle's
    /// memory and the time from a record to its commit while catching up
    /// on a backlog; one cycle of hundreds of thousands of records holds
    /// everything it produces until the commit.
    pub max_cycle_records: usize,
    /// The producer's transactional id; keep it stable per instance (e.g. a
    /// StatefulSet pod name) so a restarted instance fences its predecessor
    /// at once. Empty: `<group_id>-<hostname>`.
    pub transactional_id: String,
    /// Transaction timeout: how long a crashed instance's open transaction
    /// can hold back read_committed consumers.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// Address of `/healthz`, `/readyz` and `/metrics`; empty disables them.
    pub http_listen: String,
    /// Longest any blocking Kafka client call (transactions, offsets,
    /// metadata) may take. librdkafka is given two thirds of it as its own
    /// timeout; a call still blocked at the deadline (librdkafka#5456) makes
    /// the instance unhealthy and exit with status 3, so it is restarted.
    #[serde(with = "humantime_serde")]
    pub call_deadline: Duration,
    /// With partitions assigned and records waiting, no committed cycle for
    /// this long makes `/healthz` answer 503 (`segstream_stalled` 1) until a
    /// cycle commits again. A few transaction timeouts.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Stream threads in this instance; 0: one per available core. Each
    /// thread is its own consumer-group member with its own transactional
    /// producer (`<transactional_id>-<n>` when there is more than one), so
    /// partitions, state and transactions stay thread-local; the scorer's
    /// inference threads are shared.
    pub threads: usize,
    /// The URL other instances and clients reach this instance's HTTP
    /// endpoints at (e.g. `http://segstream-0.segstream:9464`): a lookup of a
    /// customer owned by this instance, asked of another one, is redirected
    /// here. Carried in the stream threads' consumer `client.id`. Empty: not
    /// advertised (such lookups answer 503 with the owning partition).
    pub advertised_url: String,
}

impl PipelineConfig {
    /// The number of stream threads to run: `threads`, or the available
    /// cores when it is 0.
    pub fn stream_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            commit_interval: Duration::from_millis(100),
            max_cycle_records: 10_000,
            transactional_id: String::new(),
            transaction_timeout: Duration::from_secs(10),
            http_listen: "127.0.0.1:9464".into(),
            call_deadline: Duration::from_secs(45),
            stall_timeout: Duration::from_secs(60),
            threads: 0,
            advertised_url: String::new(),
        }
    }
}

impl PipelineConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let pc = self;
        if pc.commit_interval < Duration::from_millis(10)
            || pc.commit_interval > Duration::from_secs(60)
        {
            p.add("pipeline.commit_interval", "must be between 10ms and 60s");
        }
        range(
            p,
            "pipeline.max_cycle_records",
            pc.max_cycle_records,
            1,
            10_000_000,
        );
        if pc.transaction_timeout < Duration::from_secs(1)
            || pc.transaction_timeout > Duration::from_secs(900)
        {
            p.add("pipeline.transaction_timeout", "must be between 1s and 15m");
        }
        if pc.call_deadline < Duration::from_secs(3) || pc.call_deadline > Duration::from_secs(600)
        {
            p.add("pipeline.call_deadline", "must be between 3s and 10m");
        }
        range(p, "pipeline.threads", pc.threads, 0, 256);
        let url = &pc.advertised_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            p.add(
                "pipeline.advertised_url",
                "must start with http:// or https://",
            );
        }
        if pc.advertised_url.contains('|') || pc.advertised_url.chars().any(char::is_whitespace) {
            p.add(
                "pipeline.advertised_url",
                "must not contain '|' or whitespace",
            );
        }
        if pc.stall_timeout < pc.transaction_timeout || pc.stall_timeout > Duration::from_secs(3600)
        {
            p.add(
                "pipeline.stall_timeout",
                "must be at least pipeline.transaction_timeout and at most 1h",
            );
        }
        if !pc.http_listen.is_empty() && pc.http_listen.parse::<std::net::SocketAddr>().is_err() {
            p.add(
                "pipeline.http_listen",
                format!("{:?} is not ip:port", pc.http_listen),
            );
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` for people, `json` for log pipelines (production).
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `segstream=debug,rdkafka=warn`;
    /// the `RUST_LOG` environment variable wins when set.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl TelemetryConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            p.add(
                "telemetry.log_level",
                format!("not a valid log filter: {e}"),
            );
        }
    }
}
