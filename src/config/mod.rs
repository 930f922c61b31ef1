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
//!
//! One file per section (`kafka`, `input` with `validation` and
//! `dead_letter`, `state`, `score` with `decide`, `output`, `pipeline` with
//! `telemetry`, `privacy`, `train`): its struct, defaults and own checks
//! together, so adding a key touches one file. This file loads and merges,
//! and checks the rules across sections (topics that must differ);
//! `problems` collects every problem at once.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::Decoders;

/// Prefix of environment overrides (`SEGSTREAM__SECTION__KEY`).
pub const ENV_PREFIX: &str = "SEGSTREAM";

mod clients;
mod input;
mod kafka;
mod monitor;
mod output;
mod pipeline;
mod privacy;
mod problems;
mod risk;
mod score;
mod secret;
mod state;
mod train;

pub use clients::{
    consumer_defaults, member_config, producer_defaults, reader_config, reader_defaults,
};
pub use input::{
    default_input_topics, DeadLetterConfig, InputConfig, OffsetReset, Partitioner, ValidationConfig,
};
pub use kafka::{KafkaConfig, SaslConfig, SaslMechanism, SecurityProtocol, TlsConfig};
pub use monitor::MonitorRules;
pub use output::{ExitRecords, OutputConfig, OutputFormat};
pub use pipeline::{LogFormat, PipelineConfig, TelemetryConfig};
pub use privacy::{check_key, KeyError, PrivacyConfig, MIN_KEY_BYTES};
pub use problems::{check_topic_name, env_name, ConfigError, Problem, TopicNameError};
use problems::{is_secret_path, prune_unknown, replace_with_default, Problems};
pub use risk::{RiskConfig, Rule};
pub use score::{DecideConfig, GraphOptimization, Provider, ScoreConfig};
pub use secret::Secret;
pub use state::StateConfig;
pub use train::{ModelFamily, PromoteOn, TrainConfig, PROMOTE_METRICS};

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
    pub risk: RiskConfig,
}

/// A key that no longer does anything but still loads: its section, its
/// name, and whether a configuration sets it.
type RemovedKey = (&'static str, &'static str, fn(&Config) -> bool);

/// Keys that no longer do anything but still load, so that older files
/// keep working ([`Config::deprecated`] names them).
const REMOVED_KEYS: [RemovedKey; 2] = [
    ("input", "batch_size", |c| c.input.batch_size.is_some()),
    ("input", "batch_max_wait", |c| {
        c.input.batch_max_wait.is_some()
    }),
];

impl Config {
    /// Keys that still load but no longer do anything, each with what to do
    /// (logged at start-up and printed by `config check`).
    pub fn deprecated(&self) -> Vec<String> {
        REMOVED_KEYS
            .iter()
            .filter(|(_, _, set)| set(self))
            .map(|(section, key, _)| {
                format!(
                    "{section}.{key} has no effect (the pipeline reads record by record and \
                     commits every pipeline.commit_interval); remove it"
                )
            })
            .collect()
    }

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
        let mut defaults = serde_json::to_value(Config::default())
            .map_err(|e| ConfigError::single("", format!("internal: defaults: {e}")))?;
        // Removed keys are not printed with the defaults but still load.
        for (section, key, _) in REMOVED_KEYS {
            if let Some(s) = defaults.get_mut(section).and_then(|s| s.as_object_mut()) {
                s.insert(key.to_string(), serde_json::Value::Null);
            }
        }
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

    /// Semantic checks of a well-typed configuration: each section's own
    /// rules (next to its struct), then the rules across sections.
    fn check(&self, p: &mut Problems) {
        self.kafka.check(p);
        for (key, why) in self.risk.problems() {
            p.add(key, why);
        }
        self.privacy.check(p);
        self.input.check(p);
        self.validation.check(p);
        self.dead_letter.check(p);
        self.state.check(p);
        self.score.check(p);
        self.decide.check(p);
        self.output.check(p);
        self.pipeline.check(p);
        self.train.check(p);
        self.telemetry.check(p);
        self.check_topics_apart(p);
        self.check_monitor(p);
    }

    /// Live outcomes (`output.outcomes_topic`): cuts and horizons in whole
    /// days, and no customer evicted before their last snapshot resolves.
    fn check_monitor(&self, p: &mut Problems) {
        if self.output.outcomes_topic.is_empty() {
            if self.train.promote_on == PromoteOn::Live {
                p.add(
                    "train.promote_on",
                    "\"live\" needs output.outcomes_topic (the live evidence is its outcomes)",
                );
            }
            return;
        }
        let rules = MonitorRules::configured(self);
        if let Some(why) = rules.problem() {
            p.add("output.outcomes_topic", why);
        }
        if self.state.ttl <= self.train.lookback + self.train.horizon {
            p.add(
                "state.ttl",
                "must be longer than train.lookback + train.horizon with output.outcomes_topic \
                 (a customer would be evicted before their snapshot resolves)",
            );
        }
        let t = &self.output.outcomes_topic;
        if self.input.topics.contains(t)
            || *t == self.state.changelog_topic
            || *t == self.output.current_topic
            || *t == self.output.topic
            || *t == self.dead_letter.topic
        {
            p.add("output.outcomes_topic", "must be a topic of its own");
        }
    }

    /// Rules across sections: the topics that must be distinct.
    fn check_topics_apart(&self, p: &mut Problems) {
        let (i, d, s, out, pr) = (
            &self.input,
            &self.dead_letter,
            &self.state,
            &self.output,
            &self.privacy,
        );
        for (path, t) in [
            ("privacy.erasure_topic", &pr.erasure_topic),
            ("privacy.audit_topic", &pr.audit_topic),
        ] {
            if t.is_empty() || check_topic_name(t).is_err() {
                continue;
            }
            if i.topics.contains(t)
                || *t == s.changelog_topic
                || *t == out.topic
                || *t == out.current_topic
            {
                p.add(path, "must be a topic of its own");
            }
        }
        if i.topics.contains(&d.topic) {
            p.add(
                "dead_letter.topic",
                "must not be one of the input topics (refused records would loop)",
            );
        }
        if i.topics.contains(&s.changelog_topic) || d.topic == s.changelog_topic {
            p.add(
                "state.changelog_topic",
                "must differ from the input and dead-letter topics",
            );
        }
        if !out.current_topic.is_empty()
            && check_topic_name(&out.current_topic).is_ok()
            && (out.current_topic == out.topic
                || out.current_topic == s.changelog_topic
                || i.topics.contains(&out.current_topic))
        {
            p.add(
                "output.current_topic",
                "must be a topic of its own (not the segment, changelog or an input topic)",
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

#[cfg(test)]
mod tests;
