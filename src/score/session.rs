//! ONNX Runtime sessions: the environment and execution provider, session
//! building, the model contract's signature check, and one run.

use std::sync::Arc;

use ort::ep::ExecutionProvider;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use tracing::{info, warn};

use super::ep;
use crate::config::{GraphOptimization, Provider, ScoreConfig};
use crate::features::FeatureSpec;
use crate::model::onnx::Elem;
use crate::model::reference::Outputs;
use crate::model::{GoldenInputs, TensorSig};
use crate::score::{RuntimeUnavailable, ScoreError, ENVIRONMENT};

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
            let unavailable = |e: &dyn std::fmt::Display| RuntimeUnavailable {
                library: path.clone(),
                message: e.to_string(),
            };
            let env = ort::init_from(&path)
                .map_err(|e| unavailable(&e))?
                .with_name("segstream")
                .build()
                .map_err(|e| unavailable(&e))?;
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

pub(super) fn builder(
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

pub(super) fn elem_of(ty: TensorElementType) -> Option<Elem> {
    match ty {
        TensorElementType::Float32 => Some(Elem::F32),
        TensorElementType::Int64 => Some(Elem::I64),
        TensorElementType::Int32 => Some(Elem::I32),
        _ => None,
    }
}

/// Whether dimension `i` of input `name` is the event dimension, which a
/// model may declare dynamic (it then takes any number of events up to
/// the spec's `max_events`; see [`dynamic_events`]).
fn event_axis(name: &str, i: usize) -> bool {
    i == 1 && name.starts_with("event_")
}

/// Whether every event input of the model declares its event dimension
/// dynamic: the scorer then passes only as many events as the batch's
/// longest history holds.
pub(super) fn dynamic_events(inputs: &[ort::value::Outlet]) -> bool {
    let events: Vec<_> = inputs
        .iter()
        .filter(|o| o.name().starts_with("event_"))
        .collect();
    !events.is_empty()
        && events.iter().all(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => shape.get(1).is_some_and(|d| *d < 0),
            _ => false,
        })
}

pub(super) fn check_sigs(
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
                Some(w) if got != w && !(*got < 0 && event_axis(sig.name, i)) => {
                    problems.push(format!(
                        "{kind} {} dimension {i} is {got}, the contract says {w}",
                        sig.name
                    ))
                }
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
    // Events per row as given: `spec.max_events` for golden inputs, fewer
    // for a batch padded to its longest row (a model with a dynamic event
    // dimension).
    let n = x.event_kind.len() / b.max(1);
    let (e, t, f) = (
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

pub(super) fn extract(
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
