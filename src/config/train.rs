//! `[train]`: the trainer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{range, Problems};

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
    /// What decides a promotion once a champion serves: `validation` (the
    /// trained model replaces the champion when it is not worse on
    /// `promote_metric` on the validation examples) or `live` (the trained
    /// model is published as a shadow, scored at the live-outcome
    /// snapshots; `segstream model promote --live` promotes it once its
    /// live outcomes put it ahead of the champion).
    pub promote_on: PromoteOn,
    /// With `promote_on = "live"`: resolved outcomes both the shadow and the
    /// champion predicted, at least, before live evidence may promote.
    pub live_min_outcomes: usize,
    /// Largest accepted difference between the trained model and its ONNX
    /// export under ONNX Runtime, on validation examples.
    pub parity_tolerance: f32,
    /// Which candidate is exported and served: `auto` (the best on
    /// `promote_metric`, a tie within the paired bootstrap interval going
    /// to the cheaper logistic regression), `transformer` or `logistic`.
    pub model: ModelFamily,
}

/// What decides a promotion (`train.promote_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteOn {
    /// The validation examples at training.
    #[default]
    Validation,
    /// The live outcomes of the model in the shadow.
    Live,
}

/// The model families `segstream train` can export and serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// The best candidate on the validation examples.
    #[default]
    Auto,
    /// The Transformer, whatever the validation says.
    Transformer,
    /// The logistic regression on the customer features.
    Logistic,
}

impl ModelFamily {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Auto => "auto",
            ModelFamily::Transformer => "transformer",
            ModelFamily::Logistic => "logistic",
        }
    }
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
            promote_on: PromoteOn::Validation,
            live_min_outcomes: 1_000,
            parity_tolerance: 1e-4,
            model: ModelFamily::Auto,
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

impl TrainConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let tc = self;
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
        if tc.live_min_outcomes < 50 {
            p.add(
                "train.live_min_outcomes",
                "must be at least 50 (fewer outcomes give no interval worth a promotion)",
            );
        }
        if !(tc.parity_tolerance.is_finite()
            && tc.parity_tolerance > 0.0
            && tc.parity_tolerance <= 0.01)
        {
            p.add("train.parity_tolerance", "must be in (0, 0.01]");
        }
    }
}
