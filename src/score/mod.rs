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
use ort::ep;
use ort::session::Session;
use ort::value::TensorRef;
use tracing::warn;

pub use batcher::RescoreSweep;
pub use watcher::{ModelWatcher, PollOutcome};
mod session;
use session::{check_sigs, extract};
pub use session::{environment, new_session, run_session, signature, ActiveProvider};
mod parity;
use parity::compare;
pub use parity::{difference, max_difference};

use crate::config::ScoreConfig;
use crate::features::{tensors, trim_events, FeatureSpec, Featurizer, TensorData};
use crate::model::reference::Outputs;
use crate::model::{
    contract_inputs, contract_outputs, optional_outputs, GoldenInputs, Manifest, ModelFiles,
};
use crate::state::StateLimits;
use crate::telemetry::Metrics;

/// Why a model could not be loaded or a batch not scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// ONNX Runtime could not be loaded or initialized.
    #[error("ONNX Runtime: {0}")]
    Runtime(#[from] RuntimeUnavailable),
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

impl crate::error::Classify for ScoreError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            // The runtime library, the GPU, or a run that failed on them.
            ScoreError::Runtime(_) | ScoreError::CudaUnavailable(_) | ScoreError::Inference(_) => {
                crate::error::ErrorClass::External
            }
            // The model handed in is not one the scorer can serve.
            ScoreError::Load { .. } | ScoreError::Contract { .. } | ScoreError::Golden { .. } => {
                crate::error::ErrorClass::BadInput
            }
            ScoreError::Closed => crate::error::ErrorClass::Internal,
        }
    }
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

/// Why ONNX Runtime could not be loaded (kept for every later caller: the
/// library is loaded once per process).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("loading {library}: {message}")]
pub struct RuntimeUnavailable {
    /// The shared library tried.
    pub library: String,
    /// ONNX Runtime's own message.
    pub message: String,
}

type Environment = Arc<ort::environment::Environment>;

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeUnavailable>> = OnceLock::new();

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
    /// The model's event dimension is dynamic: each batch is given only
    /// as many events as its longest history holds.
    dynamic_events: bool,
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
        let mut dynamic = false;
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
                dynamic = session::dynamic_events(session.inputs());
                let g = &m.golden;
                if g.inputs.batch == 0 {
                    return Err(contract(vec!["manifest has no golden inputs".into()]));
                }
                let mut problems = Vec::new();
                check_golden_shapes(&g.inputs, &m.feature_spec, &mut problems);
                if !problems.is_empty() {
                    return Err(contract(problems));
                }
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
            compare(&m.golden.outputs, &got, m.golden.tolerance).map_err(|e| {
                ScoreError::Golden {
                    version: version.clone(),
                    message: e.to_string(),
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
            dynamic_events: dynamic,
        })
    }

    /// Whether the model's event dimension is dynamic: a batch is then
    /// given only as many events as its longest history holds, so callers
    /// gain by batching customers of similar history lengths together.
    pub fn dynamic_events(&self) -> bool {
        self.dynamic_events
    }

    /// The inputs the model is run on for `batch`: its tensors, with the
    /// event inputs cut to the longest history when the event dimension is
    /// dynamic (the trimmed copies are kept in `trimmed`).
    pub fn inputs<'a>(
        &self,
        batch: &'a RecordBatch,
        trimmed: &'a mut Option<Vec<Option<crate::features::OwnedTensor>>>,
    ) -> Result<Vec<crate::features::TensorView<'a>>, ScoreError> {
        let mut views = tensors(batch).map_err(|e| ScoreError::Inference(e.to_string()))?;
        *trimmed = if self.dynamic_events {
            trim_events(&views)
        } else {
            None
        };
        if let Some(cut) = trimmed.as_ref() {
            for (v, c) in views.iter_mut().zip(cut) {
                if let Some(c) = c {
                    *v = c.view(v.name);
                }
            }
        }
        Ok(views)
    }

    /// Scores a feature batch on session `slot` (one per inference thread).
    pub fn score_on(&self, slot: usize, batch: &RecordBatch) -> Result<Scores, ScoreError> {
        let session = &self.sessions[slot % self.sessions.len()];
        // The lock is uncontended (one slot per thread, or a caller that
        // found it free) and never held across an await.
        let mut session = session
            .lock()
            .map_err(|_| ScoreError::Inference("a previous run panicked".into()))?;
        self.run(&mut session, batch)
    }

    /// Scores on the first session that no one is using, if there is one.
    fn score_if_idle(&self, batch: &RecordBatch) -> Option<Result<Scores, ScoreError>> {
        let mut session = self.sessions.iter().find_map(|s| s.try_lock().ok())?;
        Some(self.run(&mut session, batch))
    }

    fn run(&self, session: &mut Session, batch: &RecordBatch) -> Result<Scores, ScoreError> {
        let rows = batch.num_rows();
        let mut trimmed = None;
        let views = self.inputs(batch, &mut trimmed)?;
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

/// Adds a problem for each golden input whose length the spec does not give.
fn check_golden_shapes(x: &GoldenInputs, spec: &FeatureSpec, problems: &mut Vec<String>) {
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
            problems.push(format!(
                "golden input {name} has {len} values, the spec needs {want}"
            ));
        }
    }
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
    /// Shadow models: scored at the live-outcome snapshots only.
    shadows: RwLock<Arc<[Arc<LoadedModel>]>>,
    /// `None` once shut down.
    queue: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
            shadows: RwLock::new(Arc::from(Vec::new())),
            queue: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
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

    /// The shadow models (see [`crate::model::SHADOW_FILE`]).
    pub fn shadows(&self) -> Arc<[Arc<LoadedModel>]> {
        match self.shadows.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the shadow models.
    pub fn set_shadows(&self, models: Vec<Arc<LoadedModel>>) {
        self.metrics.shadow_models.set(models.len() as i64);
        let models: Arc<[Arc<LoadedModel>]> = Arc::from(models);
        match self.shadows.write() {
            Ok(mut g) => *g = models,
            Err(poisoned) => *poisoned.into_inner() = models,
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
    /// thread; waits for a queue slot when all threads are busy. A batch of
    /// at most [`INLINE_ROWS`] rows runs on the calling worker instead when
    /// a session is idle (see there).
    pub async fn score(
        &self,
        model: Arc<LoadedModel>,
        batch: RecordBatch,
    ) -> Result<Scores, ScoreError> {
        let queue = self
            .queue
            .lock()
            .ok()
            .and_then(|q| q.clone())
            .ok_or(ScoreError::Closed)?;
        if batch.num_rows() <= INLINE_ROWS && may_block_in_place() {
            let inline = tokio::task::block_in_place(|| {
                let started = Instant::now();
                let result = model.score_if_idle(&batch)?;
                observe(&self.metrics, batch.num_rows(), started, &result);
                Some(result)
            });
            if let Some(result) = inline {
                return result;
            }
        }
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

    /// Stops the threads after the queued requests (and the requests of
    /// callers that still hold the queue); a later [`Scorer::score`] fails
    /// with [`ScoreError::Closed`].
    pub fn shutdown(&self) {
        if let Ok(mut q) = self.queue.lock() {
            *q = None;
        }
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for t in threads {
            if t.join().is_err() {
                warn!("An inference thread had panicked.");
            }
        }
    }
}

/// Batches of at most this many rows run on the caller's worker thread
/// when a session is idle: at batch 1 the two thread hand-offs (to an
/// inference thread and back to the async runtime) cost about two thirds
/// of the model run itself (`segstream bench score`), and a small batch is
/// what a quiet stream sends, where latency matters most. Larger batches
/// go to the inference threads, where they do not hold up async work.
pub const INLINE_ROWS: usize = 8;

/// Whether the current async runtime lets a task block in place (the
/// multi-threaded one; a single-threaded runtime, as in some tests, has no
/// other worker to take over).
fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Records one scoring run in the metrics.
fn observe(metrics: &Metrics, rows: usize, started: Instant, result: &Result<Scores, ScoreError>) {
    metrics
        .inference_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.inference_batch_rows.observe(rows as f64);
    match result {
        Ok(_) => metrics.scored_customers.inc_by(rows as u64),
        Err(e) => {
            metrics.inference_failures.inc();
            warn!(error = %e, rows, "Inference failed.");
        }
    }
}

fn inference_loop(slot: usize, rx: &Mutex<Receiver<Job>>, metrics: &Metrics) {
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let started = Instant::now();
        let result = job.model.score_on(slot, &job.batch);
        observe(metrics, job.batch.num_rows(), started, &result);
        // Err only when the caller stopped waiting (its cycle ended).
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
        let err = compare(&a, &b, 1e-5).unwrap_err().to_string();
        assert!(err.starts_with("churn_probability[0]"), "{err}");
        b.segment_probs[1] = f32::NAN;
        assert!(compare(&a, &b, 1.0)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
    }
}
