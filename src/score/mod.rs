//! Scoring with ONNX Runtime: sessions on the configured execution provider,
//! validation of a model against the contract and its golden outputs,
//! dedicated inference threads fed by a bounded queue, the rescoring sweep,
//! and the registry watcher that hot-swaps validated models.
//!
//! Inference never runs on the async runtime's workers: each inference thread
//! owns one session per loaded model (`Session::run` takes `&mut self`).
//! Callers featurize with the live model's own featurizer and submit the
//! batch together with that model, so a swap between the two steps can never
//! pair features of one spec with a model of another.

mod batcher;
mod watcher;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use arrow_array::RecordBatch;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use tracing::{info, warn};

pub use batcher::RescoreSweep;
pub use watcher::{ModelWatcher, PollOutcome};

use crate::config::{GraphOptimization, Provider, ScoreConfig};
use crate::features::{tensors, FeatureSpec, Featurizer, TensorData};
use crate::model::onnx::Elem;
use crate::model::reference::Outputs;
use crate::model::{
    contract_inputs, contract_outputs, optional_outputs, GoldenInputs, Manifest, ModelFiles,
    TensorSig,
};
use crate::state::StateLimits;
use crate::telemetry::Metrics;

/// Why a model could not be loaded or a batch not scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// ONNX Runtime could not be loaded or initialized.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// CUDA was required and is not usable.
    #[error("CUDA execution provider required but unavailable: {0}")]
    CudaUnavailable(String),
    /// The model file is not a loadable ONNX model.
    #[error("model {version}: not a loadable ONNX model: {message}")]
    Load {
        /// Model version.
        version: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The model breaks the input/output contract or its manifest.
    #[error("model {version} rejected: {problems}")]
    Contract {
        /// Model version.
        version: String,
        /// Every problem found, separated by "; ".
        problems: String,
    },
    /// The model's outputs for its golden inputs are wrong or not finite.
    #[error("model {version} rejected: {message}")]
    Golden {
        /// Model version.
        version: String,
        /// What differed.
        message: String,
    },
    /// A run failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The scorer has stopped.
    #[error("the scorer has shut down")]
    Closed,
}

impl ScoreError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ScoreError::Runtime(_) => "runtime",
            ScoreError::CudaUnavailable(_) => "cuda_unavailable",
            ScoreError::Load { .. } => "load",
            ScoreError::Contract { .. } => "contract",
            ScoreError::Golden { .. } => "golden",
            ScoreError::Inference(_) => "inference",
            ScoreError::Closed => "closed",
        }
    }
}

static ENVIRONMENT: OnceLock<Result<Arc<ort::environment::Environment>, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (from `score.onnxruntime_library`,
/// else `$ORT_DYLIB_PATH`, else `libonnxruntime.so`).
pub fn environment(cfg: &ScoreConfig) -> Result<Arc<ort::environment::Environment>, ScoreError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = if cfg.onnxruntime_library.is_empty() {
                std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| "libonnxruntime.so".into())
            } else {
                cfg.onnxruntime_library.clone()
            };
            let env = ort::init_from(&path)
                .map_err(|e| format!("loading {path}: {e}"))?
                .with_name("segstream")
                .build()
                .map_err(|e| e.to_string())?;
            info!(library = %path, "Loaded ONNX Runtime.");
            Ok(Arc::new(env))
        })
        .clone()
        .map_err(ScoreError::Runtime)
}

/// The execution provider a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveProvider {
    /// CPU.
    Cpu,
    /// CUDA.
    Cuda,
}

impl ActiveProvider {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveProvider::Cpu => "cpu",
            ActiveProvider::Cuda => "cuda",
        }
    }
}

fn builder(
    env: &ort::environment::Environment,
    cfg: &ScoreConfig,
) -> Result<SessionBuilder, ort::Error> {
    let level = match cfg.graph_optimization {
        GraphOptimization::Disabled => GraphOptimizationLevel::Disable,
        GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        GraphOptimization::Extended => GraphOptimizationLevel::Level2,
        GraphOptimization::All => GraphOptimizationLevel::Level3,
    };
    Ok(Session::builder(env)?
        .with_intra_threads(cfg.intra_op_threads)?
        .with_inter_threads(1)?
        .with_optimization_level(level)?
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?)
}

/// Creates one session for `onnx` on the configured provider.
pub fn new_session(
    cfg: &ScoreConfig,
    version: &str,
    onnx: &[u8],
) -> Result<(Session, ActiveProvider), ScoreError> {
    let env = environment(cfg)?;
    let load = |e: ort::Error| ScoreError::Load {
        version: version.to_string(),
        message: e.to_string(),
    };
    let want_cuda = match cfg.provider {
        Provider::Cpu => false,
        Provider::Cuda => true,
        Provider::Auto => cfg.cuda_required || ep::CUDA::is_available().unwrap_or(false),
    };
    if want_cuda {
        let cuda = builder(&env, cfg)
            .map_err(load)?
            .with_execution_providers([ep::CUDA::default()
                .with_device_id(cfg.cuda_device)
                .build()
                .error_on_failure()]);
        match cuda {
            Ok(mut b) => match b.commit_from_memory(onnx) {
                Ok(s) => return Ok((s, ActiveProvider::Cuda)),
                Err(e) if cfg.cuda_required => {
                    return Err(ScoreError::CudaUnavailable(e.to_string()))
                }
                Err(e) => warn!(error = %e, "CUDA session failed; falling back to CPU."),
            },
            Err(e) if cfg.cuda_required => return Err(ScoreError::CudaUnavailable(e.to_string())),
            Err(e) => warn!(error = %e, "CUDA execution provider unavailable; using CPU."),
        }
    }
    let mut b = builder(&env, cfg)
        .map_err(load)?
        .with_execution_providers([ep::CPU::default().build().error_on_failure()])
        .map_err(|e| load(e.into()))?;
    let session = b.commit_from_memory(onnx).map_err(load)?;
    Ok((session, ActiveProvider::Cpu))
}

fn elem_of(ty: TensorElementType) -> Option<Elem> {
    match ty {
        TensorElementType::Float32 => Some(Elem::F32),
        TensorElementType::Int64 => Some(Elem::I64),
        TensorElementType::Int32 => Some(Elem::I32),
        _ => None,
    }
}

fn check_sigs(
    kind: &str,
    expected: &[TensorSig],
    optional: &[TensorSig],
    actual: &[ort::value::Outlet],
    problems: &mut Vec<String>,
) {
    for (sig, required) in expected
        .iter()
        .map(|s| (s, true))
        .chain(optional.iter().map(|s| (s, false)))
    {
        let Some(o) = actual.iter().find(|o| o.name() == sig.name) else {
            if required {
                problems.push(format!("missing {kind} {}", sig.name));
            }
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = o.dtype() else {
            problems.push(format!("{kind} {} is not a tensor", sig.name));
            continue;
        };
        if elem_of(*ty) != Some(sig.elem) {
            problems.push(format!(
                "{kind} {} has type {ty:?}, the contract says {:?}",
                sig.name, sig.elem
            ));
        }
        let dims: &[i64] = shape;
        if dims.len() != sig.dims.len() {
            problems.push(format!(
                "{kind} {} has rank {}, the contract says {}",
                sig.name,
                dims.len(),
                sig.dims.len()
            ));
            continue;
        }
        for (i, (got, want)) in dims.iter().zip(&sig.dims).enumerate() {
            match want {
                Some(w) if got != w => problems.push(format!(
                    "{kind} {} dimension {i} is {got}, the contract says {w}",
                    sig.name
                )),
                None if *got >= 0 && i == 0 => problems.push(format!(
                    "{kind} {} has a fixed batch dimension {got}; it must be dynamic",
                    sig.name
                )),
                _ => {}
            }
        }
    }
    for o in actual {
        if !expected.iter().chain(optional).any(|s| s.name == o.name()) {
            problems.push(format!(
                "unexpected {kind} {} (not in the contract)",
                o.name()
            ));
        }
    }
}

/// Human-readable input and output signatures of a model file, as ONNX
/// Runtime sees them (e.g. `event_kind: Int64 [batch, 64]`).
pub fn signature(
    cfg: &ScoreConfig,
    version: &str,
    onnx: &[u8],
) -> Result<(Vec<String>, Vec<String>), ScoreError> {
    let (session, _) = new_session(cfg, version, onnx)?;
    let describe = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor {
                    ty,
                    shape,
                    dimension_symbols,
                } => {
                    let dims: Vec<String> = shape
                        .iter()
                        .zip(dimension_symbols.iter())
                        .map(|(d, s)| {
                            if *d < 0 {
                                if s.is_empty() {
                                    "?".into()
                                } else {
                                    s.clone()
                                }
                            } else {
                                d.to_string()
                            }
                        })
                        .collect();
                    format!("{}: {ty:?} [{}]", o.name(), dims.join(", "))
                }
                other => format!("{}: {other:?}", o.name()),
            })
            .collect::<Vec<_>>()
    };
    Ok((describe(session.inputs()), describe(session.outputs())))
}

/// Runs `session` on row-major inputs; outputs are copied out.
pub fn run_session(
    session: &mut Session,
    x: &GoldenInputs,
    spec: &FeatureSpec,
    segments: usize,
) -> Result<Outputs, ScoreError> {
    let b = x.batch;
    let (n, e, t, f) = (
        spec.max_events,
        crate::features::EVENT_NUMERIC_DIM,
        spec.text_tokens,
        crate::features::CUSTOMER_DIM,
    );
    let err = |e: ort::Error| ScoreError::Inference(e.to_string());
    let inputs = ort::inputs![
        "event_kind" => TensorRef::from_array_view(([b, n], &x.event_kind[..])).map_err(err)?,
        "event_category" => TensorRef::from_array_view(([b, n], &x.event_category[..])).map_err(err)?,
        "event_numeric" => TensorRef::from_array_view(([b, n, e], &x.event_numeric[..])).map_err(err)?,
        "event_text" => TensorRef::from_array_view(([b, n, t], &x.event_text[..])).map_err(err)?,
        "event_mask" => TensorRef::from_array_view(([b, n], &x.event_mask[..])).map_err(err)?,
        "customer_features" => TensorRef::from_array_view(([b, f], &x.customer_features[..])).map_err(err)?,
    ];
    let out = session.run(inputs).map_err(err)?;
    extract(&out, b, segments)
}

fn extract(
    out: &ort::session::SessionOutputs<'_>,
    rows: usize,
    segments: usize,
) -> Result<Outputs, ScoreError> {
    let get = |name: &str, len: usize| -> Result<Vec<f32>, ScoreError> {
        let v = out
            .get(name)
            .ok_or_else(|| ScoreError::Inference(format!("no output {name}")))?;
        let (_, data) = v
            .try_extract_tensor::<f32>()
            .map_err(|e| ScoreError::Inference(format!("{name}: {e}")))?;
        if data.len() != len {
            return Err(ScoreError::Inference(format!(
                "{name} has {} values, expected {len}",
                data.len()
            )));
        }
        Ok(data.to_vec())
    };
    Ok(Outputs {
        segment_probs: get("segment_probs", rows * segments)?,
        purchase_probability: get("purchase_probability", rows)?,
        churn_probability: get("churn_probability", rows)?,
        predicted_spend: get("predicted_spend", rows)?,
        segment_contributions: match out.get(crate::model::SEGMENT_CONTRIBUTIONS) {
            Some(_) => get(
                crate::model::SEGMENT_CONTRIBUTIONS,
                rows * segments * crate::model::CONTRIBUTION_WIDTH,
            )?,
            None => Vec::new(),
        },
    })
}

/// How far `got` is from `expected` for one value of `output`: absolute for
/// probabilities; spend is in minor units (up to millions), where float32
/// rounding alone exceeds any useful absolute tolerance, so it is compared
/// relative to max(1, |expected|), and so are explanation contributions.
pub fn difference(output: &str, expected: f32, got: f32) -> f32 {
    let d = (expected - got).abs();
    // Contributions are logit parts, unbounded like spend.
    if output == "predicted_spend" || output == crate::model::SEGMENT_CONTRIBUTIONS {
        d / expected.abs().max(1.0)
    } else {
        d
    }
}

/// Each output of `expected` with the same output of `got` (empty when
/// `got` lacks it): an explanation output the expected side has must be
/// given; one only `got` has is not compared.
fn paired<'a>(
    expected: &'a Outputs,
    got: &'a Outputs,
) -> Vec<(&'static str, &'a [f32], &'a [f32])> {
    let theirs = got.named();
    expected
        .named()
        .into_iter()
        .map(|(name, a)| {
            let b = theirs
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |(_, b)| *b);
            (name, a, b)
        })
        .collect()
}

/// The largest [`difference`] between two models' outputs and the output it
/// is on; infinite when a value is not finite or the shapes differ.
pub fn max_difference(expected: &Outputs, got: &Outputs) -> (f32, &'static str) {
    let mut worst = (0f32, "none");
    for (name, a, b) in paired(expected, got) {
        if a.len() != b.len() {
            return (f32::INFINITY, name);
        }
        for (x, y) in a.iter().zip(b) {
            let d = difference(name, *x, *y);
            if d.is_nan() || d > worst.0 {
                worst = (if d.is_nan() { f32::INFINITY } else { d }, name);
            }
        }
    }
    worst
}

fn compare(expected: &Outputs, got: &Outputs, tolerance: f32) -> Result<f32, String> {
    let mut worst = 0f32;
    for (name, a, b) in paired(expected, got) {
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            return Err(format!("{name}[{i}] is {} for the golden inputs", b[i]));
        }
        if a.len() != b.len() {
            return Err(format!(
                "{name} has {} values, the manifest's golden output {}",
                b.len(),
                a.len()
            ));
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = difference(name, *x, *y);
            worst = worst.max(d);
            if d > tolerance {
                return Err(format!(
                    "{name}[{i}] is {y}, the golden output is {x} (difference {d:e} > tolerance {tolerance:e})"
                ));
            }
        }
    }
    Ok(worst)
}

/// A validated model, ready to score: one session per inference thread.
pub struct LoadedModel {
    /// Its version.
    pub version: Arc<str>,
    /// Its manifest.
    pub manifest: Manifest,
    /// The featurizer for its feature spec.
    pub featurizer: Featurizer,
    /// Segment names, in output order.
    pub segments: Arc<[String]>,
    /// Where it runs.
    pub provider: ActiveProvider,
    sessions: Vec<Mutex<Session>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("version", &self.version)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Loads and validates a model directory's contents: manifest and feature
    /// spec, the input/output contract, golden outputs and finiteness (which
    /// also warms each session up). `sessions` sessions are created.
    pub fn load(
        cfg: &ScoreConfig,
        files: &ModelFiles,
        state: StateLimits,
        sessions: usize,
    ) -> Result<Self, ScoreError> {
        let m = &files.manifest;
        let version = m.version.clone();
        let contract = |problems: Vec<String>| ScoreError::Contract {
            version: version.clone(),
            problems: problems.join("; "),
        };
        let featurizer = Featurizer::new(m.feature_spec.clone(), state)
            .map_err(|e| contract(vec![format!("manifest feature spec: {e}")]))?;
        if m.segments.len() < 2 {
            return Err(contract(vec![
                "manifest lists fewer than two segments".into()
            ]));
        }
        let mut list = Vec::with_capacity(sessions.max(1));
        let mut provider = ActiveProvider::Cpu;
        for i in 0..sessions.max(1) {
            let (mut session, p) = new_session(cfg, &version, &files.onnx)?;
            provider = p;
            if i == 0 {
                let mut problems = Vec::new();
                check_sigs(
                    "input",
                    &contract_inputs(&m.feature_spec),
                    &[],
                    session.inputs(),
                    &mut problems,
                );
                check_sigs(
                    "output",
                    &contract_outputs(m.segments.len()),
                    &optional_outputs(m.segments.len()),
                    session.outputs(),
                    &mut problems,
                );
                if !problems.is_empty() {
                    return Err(contract(problems));
                }
                let g = &m.golden;
                if g.inputs.batch == 0 {
                    return Err(contract(vec!["manifest has no golden inputs".into()]));
                }
                check_golden_shapes(&g.inputs, &m.feature_spec).map_err(|p| contract(vec![p]))?;
                if !(g.tolerance.is_finite() && g.tolerance >= 0.0 && g.tolerance <= 0.1) {
                    return Err(contract(
                        vec!["golden tolerance must be in [0, 0.1]".into()],
                    ));
                }
            }
            // Golden run on every session: validation and warm-up at once.
            let got = run_session(
                &mut session,
                &m.golden.inputs,
                &m.feature_spec,
                m.segments.len(),
            )
            .map_err(|e| ScoreError::Golden {
                version: version.clone(),
                message: format!("golden inputs do not run: {e}"),
            })?;
            compare(&m.golden.outputs, &got, m.golden.tolerance).map_err(|message| {
                ScoreError::Golden {
                    version: version.clone(),
                    message,
                }
            })?;
            list.push(Mutex::new(session));
        }
        Ok(LoadedModel {
            version: Arc::from(version.as_str()),
            manifest: m.clone(),
            featurizer,
            segments: m.segments.clone().into(),
            provider,
            sessions: list,
        })
    }

    /// Scores a feature batch on session `slot` (one per inference thread).
    pub fn score_on(&self, slot: usize, batch: &RecordBatch) -> Result<Scores, ScoreError> {
        let rows = batch.num_rows();
        let views = tensors(batch).map_err(|e| ScoreError::Inference(e.to_string()))?;
        let session = &self.sessions[slot % self.sessions.len()];
        // The lock is uncontended (one slot per thread) and never held across an await.
        let mut session = session
            .lock()
            .map_err(|_| ScoreError::Inference("a previous run panicked".into()))?;
        let err = |e: ort::Error| ScoreError::Inference(e.to_string());
        let mut inputs = Vec::with_capacity(views.len());
        for v in &views {
            let value: ort::session::SessionInputValue<'_> = match v.data {
                TensorData::I64(d) => TensorRef::from_array_view((v.shape.clone(), d))
                    .map_err(err)?
                    .into(),
                TensorData::F32(d) => TensorRef::from_array_view((v.shape.clone(), d))
                    .map_err(err)?
                    .into(),
            };
            inputs.push((std::borrow::Cow::Borrowed(v.name), value));
        }
        let out = session.run(inputs).map_err(err)?;
        let outputs = extract(&out, rows, self.segments.len())?;
        Ok(Scores {
            model_version: self.version.clone(),
            segments: self.segments.clone(),
            rows,
            outputs,
        })
    }
}

fn check_golden_shapes(x: &GoldenInputs, spec: &FeatureSpec) -> Result<(), String> {
    let (b, n, e, t, f) = (
        x.batch,
        spec.max_events,
        crate::features::EVENT_NUMERIC_DIM,
        spec.text_tokens,
        crate::features::CUSTOMER_DIM,
    );
    for (name, len, want) in [
        ("event_kind", x.event_kind.len(), b * n),
        ("event_category", x.event_category.len(), b * n),
        ("event_numeric", x.event_numeric.len(), b * n * e),
        ("event_text", x.event_text.len(), b * n * t),
        ("event_mask", x.event_mask.len(), b * n),
        ("customer_features", x.customer_features.len(), b * f),
    ] {
        if len != want {
            return Err(format!(
                "golden input {name} has {len} values, the spec needs {want}"
            ));
        }
    }
    Ok(())
}

/// Scores of one batch, with the model that produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The model version that decided.
    pub model_version: Arc<str>,
    /// Segment names, in `segment_probs` order.
    pub segments: Arc<[String]>,
    /// Rows scored.
    pub rows: usize,
    /// The model outputs.
    pub outputs: Outputs,
}

impl Scores {
    /// The segment probabilities of row `i`.
    pub fn segment_probs(&self, i: usize) -> &[f32] {
        let k = self.segments.len();
        &self.outputs.segment_probs[i * k..(i + 1) * k]
    }

    /// Row `i`'s explanation ([K, F + 2]); empty when the model gives none.
    pub fn contributions(&self, i: usize) -> &[f32] {
        let w = self.segments.len() * crate::model::CONTRIBUTION_WIDTH;
        self.outputs
            .segment_contributions
            .get(i * w..(i + 1) * w)
            .unwrap_or(&[])
    }
}

struct Job {
    model: Arc<LoadedModel>,
    batch: RecordBatch,
    reply: tokio::sync::oneshot::Sender<Result<Scores, ScoreError>>,
}

/// The scoring service: the live model and the inference threads.
pub struct Scorer {
    live: Arc<RwLock<Arc<LoadedModel>>>,
    queue: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Metrics,
}

impl Scorer {
    /// Starts `score.inference_threads` threads serving `model`.
    pub fn start(cfg: &ScoreConfig, model: LoadedModel, metrics: Metrics) -> Self {
        let threads_n = cfg.inference_threads.max(1);
        let (tx, rx) = sync_channel::<Job>(cfg.queue_depth.max(1) * threads_n);
        let rx = Arc::new(Mutex::new(rx));
        metrics.set_model(&model.version, model.provider.as_str());
        let threads = (0..threads_n)
            .map(|slot| {
                let rx = rx.clone();
                let metrics = metrics.clone();
                std::thread::Builder::new()
                    .name(format!("segstream-infer-{slot}"))
                    .spawn(move || inference_loop(slot, &rx, &metrics))
                    .map_err(|e| warn!(error = %e, "Could not start an inference thread."))
            })
            .filter_map(Result::ok)
            .collect();
        Scorer {
            live: Arc::new(RwLock::new(Arc::new(model))),
            queue: Some(tx),
            threads,
            metrics,
        }
    }

    /// The live model (featurize with its featurizer, then [`Scorer::score`]).
    pub fn current(&self) -> Arc<LoadedModel> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the live model. Requests already submitted finish on the
    /// model they were submitted with.
    pub fn swap(&self, model: LoadedModel) {
        self.metrics
            .set_model(&model.version, model.provider.as_str());
        let model = Arc::new(model);
        match self.live.write() {
            Ok(mut g) => *g = model,
            Err(poisoned) => *poisoned.into_inner() = model,
        }
        self.metrics.model_swaps.inc();
    }

    /// Scores `batch` (featurized with `model.featurizer`) on an inference
    /// thread; waits for a queue slot when all threads are busy.
    pub async fn score(
        &self,
        model: Arc<LoadedModel>,
        batch: RecordBatch,
    ) -> Result<Scores, ScoreError> {
        let queue = self.queue.as_ref().ok_or(ScoreError::Closed)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let mut job = Job {
            model,
            batch,
            reply,
        };
        loop {
            match queue.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(ScoreError::Closed),
            }
        }
        rx.await.map_err(|_| ScoreError::Closed)?
    }

    /// Scores on the calling thread (blocking; for tools and benchmarks).
    pub fn score_blocking(&self, batch: &RecordBatch) -> Result<Scores, ScoreError> {
        self.current().score_on(0, batch)
    }

    /// Stops the threads after the queued requests.
    pub fn shutdown(mut self) {
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn inference_loop(slot: usize, rx: &Mutex<Receiver<Job>>, metrics: &Metrics) {
    let batch_size = metrics.inference_batch_rows.clone();
    let latency = metrics.inference_seconds.clone();
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let started = Instant::now();
        let rows = job.batch.num_rows();
        let result = job.model.score_on(slot, &job.batch);
        latency.observe(started.elapsed().as_secs_f64());
        batch_size.observe(rows as f64);
        match &result {
            Ok(_) => metrics.scored_customers.inc_by(rows as u64),
            Err(e) => {
                metrics.inference_failures.inc();
                warn!(error = %e, rows, "Inference failed.");
            }
        }
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_reports_the_first_difference_and_non_finite_values() {
        let a = Outputs {
            segment_probs: vec![0.5, 0.5],
            purchase_probability: vec![0.1],
            churn_probability: vec![0.2],
            predicted_spend: vec![3.0],
            segment_contributions: Vec::new(),
        };
        assert!(compare(&a, &a, 0.0).is_ok());
        let mut b = a.clone();
        b.churn_probability[0] = 0.2 + 1e-3;
        assert!(compare(&a, &b, 1e-2).is_ok());
        let err = compare(&a, &b, 1e-5).unwrap_err();
        assert!(err.starts_with("churn_probability[0]"), "{err}");
        b.segment_probs[1] = f32::NAN;
        assert!(compare(&a, &b, 1.0).unwrap_err().contains("NaN"));
    }
}
