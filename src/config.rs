//! Typed configuration: loading, validation (every problem at once) and the
//! Kafka client settings derived from it.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file, then
//! environment variables named after the key path, e.g.
//! `SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS` for `kafka.bootstrap_servers`
//! (`SEGSTREAM__INPUT__TOPICS` takes a comma-separated list).
//!
//! Loading never stops at the first mistake: unknown keys, values of the wrong
//! type and values out of range are all collected into one [`ConfigError`].
//! Secrets ([`Secret`]) never appear in `Debug` output, logs or errors.
//!
//! This module owns no runtime objects; each stage builds its own from the
//! section it needs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::event::{Decoders, Encoding, Limits};
use crate::state::{StateLimits, StoreLimits};

/// Prefix of environment overrides (`SEGSTREAM__SECTION__KEY`).
pub const ENV_PREFIX: &str = "SEGSTREAM";

/// The whole configuration of a segstream instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection settings shared by every client of the instance.
    pub kafka: KafkaConfig,
    /// Where events come from and how they are read.
    pub input: InputConfig,
    /// Contract bounds applied to every event.
    pub validation: ValidationConfig,
    /// Where refused records go.
    pub dead_letter: DeadLetterConfig,
    /// Per-customer state, event-time rules and the changelog.
    pub state: StateConfig,
    /// Scoring with ONNX Runtime and the model registry.
    pub score: ScoreConfig,
    /// Segment decisions.
    pub decide: DecideConfig,
    /// Where segment changes go.
    pub output: OutputConfig,
    /// The run loop: transactions, commit cycle, health endpoints.
    pub pipeline: PipelineConfig,
    /// Logging.
    pub telemetry: TelemetryConfig,
    /// The trainer: examples, labels, the Transformer, evaluation, promotion.
    pub train: TrainConfig,
    /// Pseudonymous customer ids and erasure.
    pub privacy: PrivacyConfig,
    /// Risk rules (flags on `output.risk_topic`).
    pub risk: crate::decide::risk::RiskConfig,
}

/// Pseudonymous ids and erasure (see `segstream::privacy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Replace every customer id at ingest by `ps_` + HMAC-SHA-256(key, id)
    /// (first 128 bits, hex): state, changelog, outputs, metrics and logs
    /// then never hold the clear id.
    pub pseudonymize: bool,
    /// File holding the key (e.g. a mounted Kubernetes secret), at least 16
    /// bytes; one trailing newline is ignored. Wins over `key_env`.
    pub key_file: PathBuf,
    /// Environment variable holding the key when `key_file` is empty.
    pub key_env: String,
    /// Erasure requests (`segstream forget`), keyed by the stored id and
    /// partitioned like the input (same partition count, checked at start).
    /// Keep them at least as long as the input topics: training and
    /// `predict` drop erased customers' events by reading it. Empty: erasure
    /// is off.
    pub erasure_topic: String,
    /// Where each completed erasure is recorded (keyed by the pseudonym, or
    /// a SHA-256 digest of the id without pseudonyms); empty: only logged.
    pub audit_topic: String,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            pseudonymize: false,
            key_file: PathBuf::new(),
            key_env: "SEGSTREAM_PRIVACY_KEY".into(),
            erasure_topic: String::new(),
            audit_topic: String::new(),
        }
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Consumer group; instances with the same group share the partitions.
    pub group_id: String,
    /// Client id reported to the brokers (shows up in broker logs and quotas).
    pub client_id: String,
    /// Transport security.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, used with `sasl_plaintext` and `sasl_ssl`.
    pub sasl: SaslConfig,
    /// TLS files, used with `ssl` and `sasl_ssl`.
    pub tls: TlsConfig,
    /// Extra librdkafka properties passed through verbatim (e.g.
    /// `"session.timeout.ms" = "30000"`). Properties segstream manages itself
    /// are refused here.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (e.g.
    /// `"session.timeout.ms"`, `"group.instance.id"`).
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers only (e.g. `"linger.ms"`,
    /// `"compression.type"`).
    pub producer_properties: BTreeMap<String, String>,
}

fn default_bootstrap_servers() -> String {
    "127.0.0.1:19092".to_string()
}

fn default_group_id() -> String {
    "segstream".to_string()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap_servers(),
            group_id: default_group_id(),
            client_id: default_group_id(),
            security_protocol: SecurityProtocol::default(),
            sasl: SaslConfig::default(),
            tls: TlsConfig::default(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// How this client identifies itself to the brokers, for error
    /// messages: the protocol and, with SASL, the user and mechanism (never
    /// the password).
    pub fn identity(&self) -> String {
        let protocol = self.security_protocol.as_librdkafka();
        if self.security_protocol.uses_sasl() {
            format!(
                "kafka.security_protocol = {protocol}, user {:?} ({})",
                self.sasl.username,
                self.sasl.mechanism.as_librdkafka()
            )
        } else {
            format!("kafka.security_protocol = {protocol}")
        }
    }
}

/// Kafka `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512 (the default).
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// PLAIN (only over TLS in production).
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// SASL credentials. Give the password inline (better: through
/// `SEGSTREAM__KAFKA__SASL__PASSWORD`) or as a file, not both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// Mechanism: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (secret).
    pub password: Secret,
    /// File holding the password (e.g. a mounted Kubernetes secret).
    pub password_file: Option<PathBuf>,
}

/// TLS settings (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA bundle to verify brokers with; the system store when unset.
    pub ca_location: Option<PathBuf>,
    /// Client certificate, for mutual TLS.
    pub certificate_location: Option<PathBuf>,
    /// Client private key, for mutual TLS.
    pub key_location: Option<PathBuf>,
    /// Password of the private key (secret).
    pub key_password: Secret,
    /// File holding the private key's password.
    pub key_password_file: Option<PathBuf>,
    /// Verify that the broker certificate matches its host name.
    pub verify_hostname: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_location: None,
            certificate_location: None,
            key_location: None,
            key_password: Secret::default(),
            key_password_file: None,
            verify_hostname: true,
        }
    }
}

/// Input topics and how they are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Topics to consume; every one must be keyed by customer id.
    pub topics: Vec<String>,
    /// `auto` (detect protobuf or JSON per record), `protobuf`, `json`, or
    /// `confluent` (only Confluent-framed records, either body).
    pub encoding: Encoding,
    /// Per-topic overrides of `encoding`, for topics whose producers all use
    /// one encoding, e.g. `{ "events.browse" = "protobuf" }`: a record in
    /// another encoding is dead-lettered (`invalid_protobuf` or
    /// `invalid_json`) instead of being detected. Keys must be input topics.
    pub topic_encodings: BTreeMap<String, Encoding>,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: OffsetReset,
    /// Most records decoded per batch.
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first record arrived.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Event-time alignment: a partition's input topics are merged by event
    /// time (smallest first), so a catch-up after lag does not turn valid
    /// events late. A topic with nothing buffered but records still to read
    /// is waited for at most this long (cf. Kafka Streams
    /// `max.task.idle.ms`); a topic read to its end is never waited for.
    /// `0s` turns alignment off.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// Records buffered per input topic partition for the alignment before
    /// that partition's fetching pauses (resumed at half).
    pub max_buffered: usize,
    /// How the producers of the input map a customer id to a partition:
    /// `crc32` (librdkafka's default `consistent_random`: the Python, Go,
    /// .NET and Node clients, and segstream's own tools) or `murmur2` (the
    /// Java client's and Kafka Streams' default). The lookup endpoint uses it
    /// to find a customer's partition.
    pub partitioner: Partitioner,
    /// Refuse (dead-letter as `wrong_partition`) an event whose record is
    /// not in the partition its `customer_id` hashes to under
    /// `partitioner`: a producer with another partitioner, or without a
    /// key, would otherwise split the customer's state silently.
    pub check_partition: bool,
}

/// A producer partitioner for keyed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// CRC-32 of the key (librdkafka `consistent`/`consistent_random`).
    #[default]
    Crc32,
    /// murmur2 of the key (Java client, librdkafka `murmur2_random`).
    Murmur2,
}

impl Partitioner {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Crc32 => "crc32",
            Partitioner::Murmur2 => "murmur2",
        }
    }
}

/// Input topics used when none are configured.
pub fn default_input_topics() -> Vec<String> {
    ["events.browse", "events.purchase", "events.review"]
        .map(String::from)
        .to_vec()
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            topics: default_input_topics(),
            encoding: Encoding::Auto,
            topic_encodings: BTreeMap::new(),
            auto_offset_reset: OffsetReset::Earliest,
            batch_size: 1000,
            batch_max_wait: Duration::from_millis(50),
            max_idle: Duration::from_secs(5),
            partitioner: Partitioner::Crc32,
            check_partition: true,
            max_buffered: 20_000,
        }
    }
}

/// Kafka `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// Start from the beginning of each partition.
    #[default]
    Earliest,
    /// Start from the end.
    Latest,
}

/// Contract bounds (see `event::Limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest accepted record value, in bytes.
    pub max_event_bytes: usize,
    /// Longest id (event, customer, order, product, session), in bytes.
    pub max_id_bytes: usize,
    /// Longest category or currency, in bytes.
    pub max_name_bytes: usize,
    /// Longest review text, in bytes.
    pub max_text_bytes: usize,
    /// Most line items per purchase.
    pub max_line_items: usize,
    /// Oldest accepted event time, as an age relative to now (e.g. `1095d`).
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// Furthest accepted event time into the future (clock skew), e.g. `10m`.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Refuse records whose Kafka key is not their `customer_id`.
    pub require_key_match: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let l = Limits::default();
        ValidationConfig {
            max_event_bytes: l.max_event_bytes,
            max_id_bytes: l.max_id_bytes,
            max_name_bytes: l.max_name_bytes,
            max_text_bytes: l.max_text_bytes,
            max_line_items: l.max_line_items,
            max_past: Duration::from_millis(l.max_past_ms.unsigned_abs()),
            max_future: Duration::from_millis(l.max_future_ms.unsigned_abs()),
            require_key_match: l.require_key_match,
        }
    }
}

impl ValidationConfig {
    /// The limits the decoder enforces.
    pub fn limits(&self) -> Limits {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_id_bytes: self.max_id_bytes,
            max_name_bytes: self.max_name_bytes,
            max_text_bytes: self.max_text_bytes,
            max_line_items: self.max_line_items,
            max_past_ms: ms(self.max_past),
            max_future_ms: ms(self.max_future),
            require_key_match: self.require_key_match,
        }
    }
}

/// The dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Topic receiving refused records with their original bytes and reasons.
    pub topic: String,
    /// Values longer than this are cut to this length (headers then say
    /// `segstream.dlq.truncated=true` and give the original size), so one
    /// oversized record cannot exceed the dead-letter topic's own limit.
    pub max_value_bytes: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            topic: "segstream-dlq".to_string(),
            max_value_bytes: 512 * 1024,
        }
    }
}

/// Per-customer state, event-time rules and the changelog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Recent events kept per customer (the model's sequence length N).
    pub max_events: usize,
    /// Hashed review-text tokens kept per review (T).
    pub text_tokens: usize,
    /// How far behind its partition's latest event time an event may arrive
    /// and still be placed in order; later ones go to the dead-letter topic
    /// with reason `late`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// After this long without input on a partition, its watermark follows
    /// the wall clock so that inactivity timers still fire.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Customers with no event for this long are evicted (tombstoned in the changelog).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// A customer without events is rescored (trigger INACTIVITY) this long
    /// after their latest event.
    #[serde(with = "humantime_serde")]
    pub review_after: Duration,
    /// Compacted topic holding every customer's state, co-partitioned with the input.
    pub changelog_topic: String,
    /// Longest time a partition's restore may take before it is an error.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        let l = StoreLimits::default();
        let d = |ms: i64| Duration::from_millis(ms.unsigned_abs());
        StateConfig {
            max_events: l.state.max_events,
            text_tokens: l.state.text_tokens,
            allowed_lateness: d(l.allowed_lateness_ms),
            idle_timeout: l.idle_timeout,
            ttl: d(l.ttl_ms),
            review_after: d(l.review_after_ms),
            changelog_topic: "segstream-state-changelog".to_string(),
            restore_timeout: Duration::from_secs(600),
        }
    }
}

impl StateConfig {
    /// The rules the partition stores apply.
    pub fn limits(&self) -> StoreLimits {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        StoreLimits {
            state: StateLimits {
                max_events: self.max_events,
                text_tokens: self.text_tokens,
            },
            allowed_lateness_ms: ms(self.allowed_lateness),
            idle_timeout: self.idle_timeout,
            ttl_ms: ms(self.ttl),
            review_after_ms: ms(self.review_after),
        }
    }
}

/// Scoring with ONNX Runtime and the model registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// The ONNX Runtime shared library; empty means `$ORT_DYLIB_PATH`, then
    /// `libonnxruntime.so` on the library path.
    pub onnxruntime_library: String,
    /// Execution provider: `auto` (CUDA when this ONNX Runtime has it, else
    /// CPU), `cpu` or `cuda`.
    pub provider: Provider,
    /// With `provider = "cuda"` or `"auto"`: refuse to start (or to load a
    /// model) without a working CUDA provider instead of falling back to CPU.
    pub cuda_required: bool,
    /// CUDA device id.
    pub cuda_device: i32,
    /// Dedicated inference threads, each with its own session.
    pub inference_threads: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// Graph optimization: `disabled`, `basic`, `extended` or `all`.
    pub graph_optimization: GraphOptimization,
    /// Largest micro-batch of customers scored at once. Dirty customers are
    /// coalesced per commit cycle (`pipeline.commit_interval` is the longest
    /// wait: outputs only become visible at commit anyway). 128 from
    /// `segstream bench score` on a 2-core machine: raw ONNX Runtime runs
    /// 71–74k customers/s at batches of 64–256 but 28k at 512 (the
    /// activations leave the cache).
    pub max_batch: usize,
    /// Scoring requests queued per inference thread before callers wait.
    pub queue_depth: usize,
    /// Model registry directory (`<version>/model.onnx`, `manifest.json`, `CURRENT`).
    pub registry: PathBuf,
    /// How often the registry's `CURRENT` is checked for a new model.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After a model swap, known customers are rescored (trigger
    /// MODEL_UPDATE) at most this many per second.
    pub rescore_per_second: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            onnxruntime_library: String::new(),
            provider: Provider::Auto,
            cuda_required: false,
            cuda_device: 0,
            inference_threads: 1,
            intra_op_threads: 1,
            graph_optimization: GraphOptimization::All,
            max_batch: 128,
            queue_depth: 4,
            registry: PathBuf::from("models"),
            poll_interval: Duration::from_secs(10),
            rescore_per_second: 1000.0,
        }
    }
}

/// ONNX Runtime execution provider choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA (falls back to CPU unless `cuda_required`).
    Cuda,
}

/// ONNX Runtime graph optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphOptimization {
    /// No optimization.
    Disabled,
    /// Constant folding and redundant-node elimination.
    Basic,
    /// Plus complex node fusions.
    Extended,
    /// Everything, including layout optimizations.
    #[default]
    All,
}

/// The trainer (`segstream train`): point-in-time examples, labels, the
/// Transformer and its training, and promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Labels are outcomes in (t, t + horizon] after each cut time t.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Cut times are taken this far apart.
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    /// A customer is an example at t only if active within this long before t.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// Spend in the horizon (minor units) at or above which the label is `high_value`.
    pub high_value_spend_minor: i64,
    /// Share of the cut times, the latest ones, held out for validation.
    pub validation_fraction: f64,
    /// Training examples kept at most (in expectation; sampled beyond, each
    /// weighted by 1 / its keep rate); 0: all. Training cost follows
    /// examples (customers × cut times), not events.
    pub max_examples: usize,
    /// Validation examples kept at most (a uniform sample); 0: all.
    pub max_validation_examples: usize,
    /// Customers silent for longer than this before a cut time are sampled
    /// at `silent_rate` times the others' rate when examples are sampled.
    #[serde(with = "humantime_serde")]
    pub silent_after: Duration,
    /// See `silent_after`; in (0, 1].
    pub silent_rate: f64,
    /// Model width (d).
    pub d_model: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads (must divide `d_model`).
    pub heads: usize,
    /// Hidden width of each layer's feed-forward block.
    pub ffn_dim: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Upper bound on passes over the training examples.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Start the heads' direct path from the fitted logistic regression
    /// (off: from small random weights, e.g. to measure what the warm start adds).
    pub warm_start: bool,
    /// Dropout probability in training (event embeddings, residual branches,
    /// the joint representation); none in the exported model.
    pub dropout: f32,
    /// Seed of weight initialization and example shuffling.
    pub seed: u64,
    /// CPU threads for training; 0: one per core. On a machine shared with
    /// the pipeline (or with fewer than 4 cores), 1 is often faster: the
    /// tensor library's threads spin while they wait for each other.
    pub threads: usize,
    /// Metric a new model must not be worse on to replace the champion:
    /// `segment_macro_f1`, `segment_accuracy`, `purchase_auc` or `churn_auc`.
    pub promote_metric: String,
    /// Largest accepted difference between the trained model and its ONNX
    /// export under ONNX Runtime, on validation examples.
    pub parity_tolerance: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            horizon: Duration::from_secs(30 * 86_400),
            sample_every: Duration::from_secs(7 * 86_400),
            lookback: Duration::from_secs(90 * 86_400),
            high_value_spend_minor: 20_000,
            validation_fraction: 0.2,
            max_examples: 50_000,
            max_validation_examples: 40_000,
            silent_after: Duration::from_secs(30 * 86_400),
            silent_rate: 0.3,
            d_model: 64,
            layers: 2,
            heads: 4,
            ffn_dim: 128,
            batch_size: 128,
            max_epochs: 12,
            patience: 2,
            learning_rate: 2e-3,
            weight_decay: 0.01,
            warm_start: true,
            dropout: 0.1,
            seed: 7,
            threads: 0,
            promote_metric: "segment_macro_f1".into(),
            parity_tolerance: 1e-4,
        }
    }
}

/// Metrics `train.promote_metric` may name (all: higher is better).
pub const PROMOTE_METRICS: [&str; 4] = [
    "segment_macro_f1",
    "segment_accuracy",
    "purchase_auc",
    "churn_auc",
];

/// Segment decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecideConfig {
    /// A challenger segment must beat the current one by this much probability.
    pub margin: f32,
    /// A segment holds at least this long (event time) before it may change.
    #[serde(with = "humantime_serde")]
    pub min_dwell: Duration,
    /// Customer features named in each change's reasons, largest first
    /// (the rest are summed as `other_features`); 0 names none.
    pub reasons: usize,
}

impl Default for DecideConfig {
    fn default() -> Self {
        DecideConfig {
            margin: 0.1,
            min_dwell: Duration::from_secs(86_400),
            reasons: 5,
        }
    }
}

impl DecideConfig {
    /// The rules in force.
    pub fn rules(&self) -> crate::decide::Hysteresis {
        crate::decide::Hysteresis {
            margin: self.margin,
            min_dwell_ms: i64::try_from(self.min_dwell.as_millis()).unwrap_or(i64::MAX),
            reasons: self.reasons,
        }
    }
}

/// Where segment changes go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The segment topic, keyed by customer id. With `{segment}` in the name,
    /// one topic per segment (e.g. `segments.{segment}`).
    pub topic: String,
    /// `protobuf` (`segstream.v1.SegmentChange`) or `json`.
    pub format: OutputFormat,
    /// Current membership: a compacted topic, partitioned like the input,
    /// holding each customer's latest classification under their id (a
    /// tombstone once evicted), written in the same transaction as the
    /// change. Read from the beginning, it gives every customer's segment.
    /// Empty: not written.
    pub current_topic: String,
    /// With one topic per segment, what a move A -> B writes to A's topic:
    /// `record` (an EXITED SegmentChange) or `tombstone` (a null value).
    pub exits: ExitRecords,
    /// A change is live (not replay) only if its partition's event time is
    /// within this of the decision's wall clock.
    #[serde(with = "humantime_serde")]
    pub live_age: Duration,
    /// ... and its partition's input lag is at most this many records.
    pub live_lag: i64,
    /// Risk flags (`segstream.v1.RiskFlag`, raised and cleared, keyed by
    /// customer; rules in `[risk]`). Empty: the rules do not run.
    pub risk_topic: String,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            topic: "customer-segments".into(),
            format: OutputFormat::Protobuf,
            current_topic: "customer-segments.current".into(),
            exits: ExitRecords::Record,
            live_age: Duration::from_secs(300),
            live_lag: 10_000,
            risk_topic: String::new(),
        }
    }
}

/// What leaving a segment writes to that segment's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitRecords {
    /// A SegmentChange with membership EXITED.
    #[default]
    Record,
    /// A tombstone (null value) under the customer's key: with a compacted
    /// segment topic, the topic is the member set.
    Tombstone,
}

impl OutputConfig {
    /// The topic a change to `segment` goes to.
    pub fn topic_for(&self, segment: &str) -> String {
        self.topic.replace("{segment}", segment)
    }
}

/// Encoding of output records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// `segstream.v1.SegmentChange` protobuf.
    #[default]
    Protobuf,
    /// The JSON form (snake_case field names).
    Json,
}

/// The run loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Length of a commit cycle: outputs, changelog, dead letters and offsets
    /// are committed in one Kafka transaction this often.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
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

/// A secret string: never printed by `Debug`, serialized as `"<redacted>"`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; only for handing it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// One thing wrong with a configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `kafka.sasl.username` (empty for the whole file).
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in key order as found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// Collects problems while checking.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let prefix = format!("{ENV_PREFIX}__");
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::single(
                    "",
                    format!("configuration file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("input.topics")
                .source(Some(env)),
        );
        let merged = builder
            .build()
            .and_then(|c| c.try_deserialize::<serde_json::Value>())
            .map_err(|e| ConfigError::single("", format!("cannot read configuration: {e}")))?;
        Self::from_value(merged)
    }

    /// Checks and converts an already-merged configuration tree, reporting
    /// unknown keys, wrong types and invalid values together.
    pub fn from_value(mut tree: serde_json::Value) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let defaults = serde_json::to_value(Config::default())
            .map_err(|e| ConfigError::single("", format!("internal: defaults: {e}")))?;
        if tree.is_null() {
            tree = serde_json::Value::Object(Default::default());
        }
        prune_unknown(&mut tree, &defaults, "", &mut problems);

        // serde stops at the first bad value; record it, put the default in its
        // place and try again, so that every bad value is reported.
        let mut config = None;
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, Config>(&tree) {
                Ok(c) => {
                    config = Some(c);
                    break;
                }
                Err(e) => {
                    let path = e.path().to_string();
                    let path = if path == "." { String::new() } else { path };
                    let message = if is_secret_path(&path) {
                        "invalid value (not shown: this key holds a secret)".to_string()
                    } else {
                        e.inner().to_string()
                    };
                    problems.add(path.clone(), message);
                    if !replace_with_default(&mut tree, &defaults, &path) {
                        break;
                    }
                }
            }
        }
        let Some(config) = config else {
            return Err(ConfigError {
                problems: problems.0,
            });
        };
        config.check(&mut problems);
        if problems.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: problems.0,
            })
        }
    }

    /// Semantic checks of a well-typed configuration.
    fn check(&self, p: &mut Problems) {
        self.kafka.check(p);
        for (key, why) in self.risk.problems() {
            p.add(key, why);
        }
        let pr = &self.privacy;
        if pr.pseudonymize {
            if let Err(e) = crate::privacy::Pseudonymizer::from_config(pr) {
                p.add("privacy.pseudonymize", e);
            }
        }
        for (path, t) in [
            ("privacy.erasure_topic", &pr.erasure_topic),
            ("privacy.audit_topic", &pr.audit_topic),
        ] {
            if t.is_empty() {
                continue;
            }
            if let Err(why) = check_topic_name(t) {
                p.add(path, why);
            } else if self.input.topics.contains(t)
                || *t == self.state.changelog_topic
                || *t == self.output.topic
                || *t == self.output.current_topic
            {
                p.add(path, "must be a topic of its own");
            }
        }
        if !pr.audit_topic.is_empty() && pr.erasure_topic.is_empty() {
            p.add(
                "privacy.audit_topic",
                "is only used with privacy.erasure_topic",
            );
        }
        let i = &self.input;
        if i.topics.is_empty() {
            p.add("input.topics", "at least one input topic is required");
        }
        for (n, t) in i.topics.iter().enumerate() {
            if let Err(why) = check_topic_name(t) {
                p.add(format!("input.topics[{n}]"), why);
            }
            if i.topics[..n].contains(t) {
                p.add(
                    format!("input.topics[{n}]"),
                    format!("topic {t:?} is listed twice"),
                );
            }
        }
        for t in i.topic_encodings.keys() {
            if !i.topics.contains(t) {
                p.add(
                    format!("input.topic_encodings.{t}"),
                    "is not one of input.topics",
                );
            }
        }
        range(p, "input.batch_size", i.batch_size, 1, 100_000);
        range(p, "input.max_buffered", i.max_buffered, 100, 10_000_000);
        if i.max_idle > Duration::from_secs(600) {
            p.add("input.max_idle", "must be at most 10m");
        }
        if i.batch_max_wait > Duration::from_secs(10) {
            p.add("input.batch_max_wait", "must be at most 10s");
        }

        let v = &self.validation;
        range(
            p,
            "validation.max_event_bytes",
            v.max_event_bytes,
            16,
            16 << 20,
        );
        range(p, "validation.max_id_bytes", v.max_id_bytes, 8, 4096);
        range(p, "validation.max_name_bytes", v.max_name_bytes, 8, 4096);
        range(p, "validation.max_text_bytes", v.max_text_bytes, 0, 1 << 20);
        range(p, "validation.max_line_items", v.max_line_items, 1, 100_000);
        if v.max_past.is_zero() {
            p.add("validation.max_past", "must be greater than zero");
        }

        let d = &self.dead_letter;
        if let Err(why) = check_topic_name(&d.topic) {
            p.add("dead_letter.topic", why);
        }
        if i.topics.contains(&d.topic) {
            p.add(
                "dead_letter.topic",
                "must not be one of the input topics (refused records would loop)",
            );
        }
        range(
            p,
            "dead_letter.max_value_bytes",
            d.max_value_bytes,
            1024,
            16 << 20,
        );

        let s = &self.state;
        range(p, "state.max_events", s.max_events, 1, 1024);
        range(p, "state.text_tokens", s.text_tokens, 0, 255);
        if s.allowed_lateness > Duration::from_secs(7 * 86_400) {
            p.add("state.allowed_lateness", "must be at most 7 days");
        }
        if s.idle_timeout.is_zero() {
            p.add("state.idle_timeout", "must be greater than zero");
        }
        if s.review_after.is_zero() {
            p.add("state.review_after", "must be greater than zero");
        }
        if s.ttl < Duration::from_secs(90 * 86_400) {
            p.add(
                "state.ttl",
                "must be at least 90 days (the longest aggregate window)",
            );
        }
        if let Err(why) = check_topic_name(&s.changelog_topic) {
            p.add("state.changelog_topic", why);
        }
        if i.topics.contains(&s.changelog_topic) || d.topic == s.changelog_topic {
            p.add(
                "state.changelog_topic",
                "must differ from the input and dead-letter topics",
            );
        }

        let sc = &self.score;
        range(p, "score.inference_threads", sc.inference_threads, 1, 64);
        range(p, "score.intra_op_threads", sc.intra_op_threads, 1, 256);
        range(p, "score.max_batch", sc.max_batch, 1, 65_536);
        range(p, "score.queue_depth", sc.queue_depth, 1, 1024);
        if sc.poll_interval < Duration::from_millis(100) {
            p.add("score.poll_interval", "must be at least 100ms");
        }
        if !(sc.rescore_per_second.is_finite() && sc.rescore_per_second > 0.0) {
            p.add("score.rescore_per_second", "must be a positive number");
        }
        if sc.cuda_required && sc.provider == Provider::Cpu {
            p.add(
                "score.cuda_required",
                "cannot be true with provider = \"cpu\"",
            );
        }
        if !sc.onnxruntime_library.is_empty() && !Path::new(&sc.onnxruntime_library).is_file() {
            p.add(
                "score.onnxruntime_library",
                format!("file {} does not exist", sc.onnxruntime_library),
            );
        }

        let dc = &self.decide;
        if !(dc.margin.is_finite() && (0.0..=1.0).contains(&dc.margin)) {
            p.add("decide.margin", "must be between 0 and 1");
        }
        if dc.reasons > crate::features::CUSTOMER_DIM {
            p.add(
                "decide.reasons",
                format!(
                    "must be at most {} (the customer features)",
                    crate::features::CUSTOMER_DIM
                ),
            );
        }
        let out = &self.output;
        if let Err(why) = check_topic_name(&out.topic_for("segment")) {
            p.add("output.topic", why);
        }
        if !out.current_topic.is_empty() {
            if let Err(why) = check_topic_name(&out.current_topic) {
                p.add("output.current_topic", why);
            } else if out.current_topic == out.topic
                || out.current_topic == self.state.changelog_topic
                || self.input.topics.contains(&out.current_topic)
            {
                p.add(
                    "output.current_topic",
                    "must be a topic of its own (not the segment, changelog or an input topic)",
                );
            }
        }
        if out.live_age < Duration::from_secs(1) || out.live_age > Duration::from_secs(30 * 86_400)
        {
            p.add("output.live_age", "must be between 1s and 30days");
        }
        if out.live_lag < 0 {
            p.add("output.live_lag", "must be 0 or more");
        }
        let pc = &self.pipeline;
        if pc.commit_interval < Duration::from_millis(10)
            || pc.commit_interval > Duration::from_secs(60)
        {
            p.add("pipeline.commit_interval", "must be between 10ms and 60s");
        }
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

        let tc = &self.train;
        if tc.horizon < Duration::from_secs(86_400) {
            p.add("train.horizon", "must be at least 1 day");
        }
        if tc.sample_every < Duration::from_secs(3_600) {
            p.add("train.sample_every", "must be at least 1 hour");
        }
        if tc.lookback < Duration::from_secs(86_400) {
            p.add("train.lookback", "must be at least 1 day");
        }
        if tc.high_value_spend_minor <= 0 {
            p.add("train.high_value_spend_minor", "must be positive");
        }
        if !(tc.validation_fraction > 0.0 && tc.validation_fraction < 1.0) {
            p.add(
                "train.validation_fraction",
                "must be between 0 and 1 (exclusive)",
            );
        }
        if !(tc.silent_rate > 0.0 && tc.silent_rate <= 1.0) {
            p.add("train.silent_rate", "must be in (0, 1]");
        }
        if tc.max_examples != 0 && tc.max_examples < 1_000 {
            p.add("train.max_examples", "must be 0 (all) or at least 1000");
        }
        if tc.max_validation_examples != 0 && tc.max_validation_examples < 500 {
            p.add(
                "train.max_validation_examples",
                "must be 0 (all) or at least 500",
            );
        }
        range(p, "train.d_model", tc.d_model, 4, 1024);
        range(p, "train.layers", tc.layers, 1, 16);
        range(p, "train.heads", tc.heads, 1, 64);
        if tc.heads > 0 && tc.d_model % tc.heads != 0 {
            p.add(
                "train.heads",
                format!("must divide d_model ({})", tc.d_model),
            );
        }
        range(p, "train.ffn_dim", tc.ffn_dim, 4, 8192);
        range(p, "train.batch_size", tc.batch_size, 1, 65_536);
        range(p, "train.max_epochs", tc.max_epochs, 1, 10_000);
        range(p, "train.threads", tc.threads, 0, 1024);
        if !(tc.learning_rate.is_finite() && tc.learning_rate > 0.0 && tc.learning_rate < 1.0) {
            p.add("train.learning_rate", "must be between 0 and 1 (exclusive)");
        }
        if !(tc.dropout.is_finite() && (0.0..0.9).contains(&tc.dropout)) {
            p.add("train.dropout", "must be in [0, 0.9)");
        }
        if !(tc.weight_decay.is_finite() && tc.weight_decay >= 0.0) {
            p.add("train.weight_decay", "must be a non-negative number");
        }
        if !PROMOTE_METRICS.contains(&tc.promote_metric.as_str()) {
            p.add(
                "train.promote_metric",
                format!(
                    "{:?} is not one of {}",
                    tc.promote_metric,
                    PROMOTE_METRICS.join(", ")
                ),
            );
        }
        if !(tc.parity_tolerance.is_finite()
            && tc.parity_tolerance > 0.0
            && tc.parity_tolerance <= 0.01)
        {
            p.add("train.parity_tolerance", "must be in (0, 0.01]");
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            p.add(
                "telemetry.log_level",
                format!("not a valid log filter: {e}"),
            );
        }
    }

    /// The decoders the ingest stage uses, one per input topic.
    pub fn decoders(&self) -> Decoders {
        Decoders::new(
            self.input.encoding,
            &self.input.topic_encodings,
            self.validation.limits(),
        )
    }
}

/// librdkafka properties segstream sets itself; `kafka.properties` may not.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    (
        "metadata.broker.list",
        "set kafka.bootstrap_servers instead",
    ),
    ("group.id", "set kafka.group_id instead"),
    ("client.id", "set kafka.client_id instead"),
    ("security.protocol", "set kafka.security_protocol instead"),
    ("sasl.mechanism", "set kafka.sasl.mechanism instead"),
    ("sasl.mechanisms", "set kafka.sasl.mechanism instead"),
    ("sasl.username", "set kafka.sasl.username instead"),
    ("sasl.password", "set kafka.sasl.password instead"),
    ("ssl.ca.location", "set kafka.tls.ca_location instead"),
    (
        "ssl.certificate.location",
        "set kafka.tls.certificate_location instead",
    ),
    ("ssl.key.location", "set kafka.tls.key_location instead"),
    ("ssl.key.password", "set kafka.tls.key_password instead"),
    (
        "enable.auto.commit",
        "segstream commits offsets with its outputs",
    ),
    (
        "enable.auto.offset.store",
        "segstream commits offsets with its outputs",
    ),
    ("isolation.level", "always read_committed"),
    (
        "partition.assignment.strategy",
        "always range (co-partitioned state)",
    ),
    ("transactional.id", "managed by the pipeline"),
    ("auto.offset.reset", "set input.auto_offset_reset instead"),
];

impl KafkaConfig {
    fn check(&self, p: &mut Problems) {
        if self.bootstrap_servers.trim().is_empty() {
            p.add(
                "kafka.bootstrap_servers",
                "at least one host:port is required",
            );
        }
        for server in self.bootstrap_servers.split(',').map(str::trim) {
            if server.is_empty() {
                continue;
            }
            let port = server
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then_some(port))
                .and_then(|port| port.parse::<u16>().ok())
                .filter(|port| *port != 0);
            if port.is_none() {
                p.add(
                    "kafka.bootstrap_servers",
                    format!("{server:?} is not host:port"),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            p.add("kafka.group_id", "must not be empty");
        }
        if self.client_id.trim().is_empty() {
            p.add("kafka.client_id", "must not be empty");
        }
        let sasl = &self.sasl;
        let sasl_given =
            !sasl.username.is_empty() || !sasl.password.is_empty() || sasl.password_file.is_some();
        if self.security_protocol.uses_sasl() {
            if sasl.username.is_empty() {
                p.add(
                    "kafka.sasl.username",
                    "required with security_protocol sasl_plaintext or sasl_ssl",
                );
            }
            check_secret(
                p,
                "kafka.sasl.password",
                &sasl.password,
                sasl.password_file.as_deref(),
                true,
            );
        } else if sasl_given {
            p.add(
                "kafka.sasl",
                "SASL credentials are set but security_protocol does not use SASL \
                 (use sasl_ssl or sasl_plaintext)",
            );
        }
        let tls = &self.tls;
        let tls_given = tls.ca_location.is_some()
            || tls.certificate_location.is_some()
            || tls.key_location.is_some();
        if self.security_protocol.uses_tls() {
            for (key, path) in [
                ("kafka.tls.ca_location", &tls.ca_location),
                ("kafka.tls.certificate_location", &tls.certificate_location),
                ("kafka.tls.key_location", &tls.key_location),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        p.add(key, format!("file {} does not exist", path.display()));
                    }
                }
            }
            if tls.certificate_location.is_some() != tls.key_location.is_some() {
                p.add(
                    "kafka.tls",
                    "certificate_location and key_location go together (mutual TLS)",
                );
            }
            check_secret(
                p,
                "kafka.tls.key_password",
                &tls.key_password,
                tls.key_password_file.as_deref(),
                false,
            );
        } else if tls_given {
            p.add(
                "kafka.tls",
                "TLS files are set but security_protocol does not use TLS (use ssl or sasl_ssl)",
            );
        }
        let all = [
            ("properties", &self.properties),
            ("consumer_properties", &self.consumer_properties),
            ("producer_properties", &self.producer_properties),
        ];
        for (section, key, value) in all
            .iter()
            .flat_map(|(section, map)| map.iter().map(move |(k, v)| (*section, k, v)))
        {
            let path = format!("kafka.{section}.\"{key}\"");
            if let Some((_, instead)) = MANAGED_PROPERTIES.iter().find(|(k, _)| k == key) {
                p.add(path, format!("is managed by segstream: {instead}"));
                continue;
            }
            let mut probe = ClientConfig::new();
            probe.set(key, value);
            if let Err(e) = probe.create_native_config() {
                // librdkafka's message may quote the value, which may be secret.
                let why = if e.to_string().contains("No such configuration property") {
                    "is not a librdkafka property".to_string()
                } else {
                    "librdkafka refuses this value (not shown)".to_string()
                };
                p.add(path, why);
            }
        }
    }

    /// librdkafka settings shared by every client (connection and security),
    /// with secrets resolved from their files.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_librdkafka());
        if self.security_protocol.uses_sasl() {
            let password = read_secret(
                "kafka.sasl.password",
                &self.sasl.password,
                self.sasl.password_file.as_deref(),
            )?;
            c.set("sasl.mechanism", self.sasl.mechanism.as_librdkafka())
                .set("sasl.username", &self.sasl.username)
                .set("sasl.password", password.expose());
        }
        if self.security_protocol.uses_tls() {
            let tls = &self.tls;
            for (key, path) in [
                ("ssl.ca.location", &tls.ca_location),
                ("ssl.certificate.location", &tls.certificate_location),
                ("ssl.key.location", &tls.key_location),
            ] {
                if let Some(path) = path {
                    c.set(key, path.to_string_lossy());
                }
            }
            let key_password = read_secret(
                "kafka.tls.key_password",
                &tls.key_password,
                tls.key_password_file.as_deref(),
            )?;
            if !key_password.is_empty() {
                c.set("ssl.key.password", key_password.expose());
            }
            c.set(
                "ssl.endpoint.identification.algorithm",
                if tls.verify_hostname { "https" } else { "none" },
            );
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Settings for a consumer: [`KafkaConfig::client_config`] plus
    /// `kafka.consumer_properties`.
    pub fn consumer_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = self.client_config()?;
        for (k, v) in &self.consumer_properties {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Settings for a producer: [`KafkaConfig::client_config`] plus
    /// `kafka.producer_properties`.
    pub fn producer_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = self.client_config()?;
        for (k, v) in &self.producer_properties {
            c.set(k, v);
        }
        Ok(c)
    }
}

fn check_secret(
    p: &mut Problems,
    path: &str,
    inline: &Secret,
    file: Option<&Path>,
    required: bool,
) {
    match (inline.is_empty(), file) {
        (false, Some(_)) => p.add(path, "give the secret inline or as a file, not both"),
        (true, None) if required => p.add(
            path,
            format!(
                "required; set {path}_file or the environment variable {}",
                env_name(path)
            ),
        ),
        (true, Some(f)) => {
            if let Err(e) = std::fs::read(f) {
                p.add(
                    format!("{path}_file"),
                    format!("cannot read {}: {e}", f.display()),
                );
            }
        }
        _ => {}
    }
}

fn read_secret(path: &str, inline: &Secret, file: Option<&Path>) -> Result<Secret, ConfigError> {
    match file {
        None => Ok(inline.clone()),
        Some(f) => std::fs::read_to_string(f)
            .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
            .map_err(|e| {
                ConfigError::single(
                    &format!("{path}_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            }),
    }
}

/// The environment variable overriding a dotted key path.
pub fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

fn is_secret_path(path: &str) -> bool {
    path.contains("password") || path.contains("secret")
}

fn range(p: &mut Problems, path: &str, value: usize, min: usize, max: usize) {
    if value < min || value > max {
        p.add(path, format!("is {value}, must be between {min} and {max}"));
    }
}

/// Kafka's topic name rules.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal topic name"));
    }
    if name.len() > 249 {
        return Err("topic name is longer than 249 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are legal"
        ));
    }
    Ok(())
}

/// Removes keys that the defaults do not know, reporting each with a
/// suggestion; maps whose default is empty (free-form, e.g.
/// `kafka.properties`) are left alone. Scalars given where a string is
/// expected (environment values are parsed eagerly) are turned back into strings.
fn prune_unknown(
    tree: &mut serde_json::Value,
    defaults: &serde_json::Value,
    path: &str,
    p: &mut Problems,
) {
    use serde_json::Value;
    let (Value::Object(map), Value::Object(known)) = (&mut *tree, defaults) else {
        if let (Value::Number(_) | Value::Bool(_), Value::String(_)) = (&*tree, defaults) {
            *tree = Value::String(tree.to_string());
        }
        return;
    };
    if known.is_empty() {
        return;
    }
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains_key(k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        map.remove(&key);
        let full = join(path, &key);
        let hint = known
            .keys()
            .map(|k| (edit_distance(k, &key), k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| format!("; did you mean `{}`?", join(path, k)))
            .unwrap_or_default();
        p.add(full, format!("unknown key{hint}"));
    }
    for (key, value) in map.iter_mut() {
        if let Some(d) = known.get(key) {
            prune_unknown(value, d, &join(path, key), p);
        }
    }
}

/// Puts the default value at `path` (dotted, as serde_path_to_error prints
/// it); returns false when the path cannot be resolved.
fn replace_with_default(
    tree: &mut serde_json::Value,
    defaults: &serde_json::Value,
    path: &str,
) -> bool {
    if path.is_empty() {
        return false;
    }
    let mut segments: Vec<String> = Vec::new();
    for part in path.split('.') {
        // Sequence indexes print as `topics[2]`.
        match part.split_once('[') {
            Some((name, rest)) => {
                segments.push(name.to_string());
                segments.push(format!("[{rest}"));
            }
            None => segments.push(part.to_string()),
        }
    }
    let mut node = tree;
    let mut default = Some(defaults);
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if let Some(idx) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let Ok(idx) = idx.parse::<usize>() else {
                return false;
            };
            let Some(arr) = node.as_array_mut() else {
                return false;
            };
            if idx >= arr.len() {
                return false;
            }
            if i == last {
                arr.remove(idx);
                return true;
            }
            default = None;
            node = &mut arr[idx];
        } else {
            let Some(obj) = node.as_object_mut() else {
                return false;
            };
            default = default.and_then(|d| d.get(seg.as_str()));
            if i == last {
                match default {
                    Some(d) => obj.insert(seg.clone(), d.clone()),
                    None => obj.remove(seg.as_str()),
                };
                return true;
            }
            let Some(next) = obj.get_mut(seg.as_str()) else {
                return false;
            };
            node = next;
        }
    }
    false
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
