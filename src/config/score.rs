//! `[score]` and `[decide]`: scoring with ONNX Runtime and segment decisions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{range, Problems};

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

impl ScoreConfig {
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let sc = self;
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
    }
}

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
    /// (the rest are summed as `other_features`); 0 names none, and a number
    /// beyond the customer features names them all.
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
    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let dc = self;
        if !(dc.margin.is_finite() && (0.0..=1.0).contains(&dc.margin)) {
            p.add("decide.margin", "must be between 0 and 1");
        }
    }
}
