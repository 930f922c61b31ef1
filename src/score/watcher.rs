//! The registry watcher: notices a new `CURRENT`, loads and validates that
//! model off the hot path, and hands it over for an atomic swap. A model
//! that fails validation is rejected once (counted and logged) and not
//! retried until `CURRENT` changes again; the old model keeps serving.
//! It also keeps the shadow models (`SHADOW`: scored at the live-outcome
//! snapshots only) loaded, with the same checks.

use std::sync::Arc;

use tracing::{error, info};

use super::{LoadedModel, ScoreError};
use crate::config::ScoreConfig;
use crate::model::{ModelFiles, Registry};
use crate::state::StateLimits;
use crate::telemetry::Metrics;

/// What one poll found.
#[derive(Debug)]
pub enum PollOutcome {
    /// `CURRENT` names the live model (or a model already rejected), or no model.
    Unchanged,
    /// A new model passed validation: swap it in.
    Loaded(Box<LoadedModel>),
    /// A new model failed validation.
    Rejected {
        /// Its version.
        version: String,
        /// Why.
        error: ScoreError,
    },
}

/// Polls a registry for model changes.
pub struct ModelWatcher {
    registry: Registry,
    cfg: ScoreConfig,
    state: StateLimits,
    live: Option<String>,
    rejected: Option<String>,
    /// The shadow list last acted on, and the shadow models it loaded.
    shadow_list: Option<Vec<String>>,
    shadows: Vec<Arc<LoadedModel>>,
    metrics: Metrics,
}

impl ModelWatcher {
    /// A watcher over `cfg.registry`.
    pub fn new(cfg: &ScoreConfig, state: StateLimits, metrics: Metrics) -> Self {
        ModelWatcher {
            registry: Registry::new(&cfg.registry),
            cfg: cfg.clone(),
            state,
            live: None,
            rejected: None,
            shadow_list: None,
            shadows: Vec::new(),
            metrics,
        }
    }

    /// Loads `version` (blocking) with one session per inference thread.
    fn load(&self, version: &str) -> Result<LoadedModel, ScoreError> {
        self.load_with(version, self.cfg.inference_threads)
    }

    /// Loads `version` (blocking) with `sessions` sessions.
    fn load_with(&self, version: &str, sessions: usize) -> Result<LoadedModel, ScoreError> {
        let dir = self.registry.dir(version).map_err(|e| ScoreError::Load {
            version: version.to_string(),
            message: e.to_string(),
        })?;
        let files = ModelFiles::read(&dir).map_err(|e| ScoreError::Load {
            version: version.to_string(),
            message: e.to_string(),
        })?;
        if files.manifest.version != version {
            return Err(ScoreError::Contract {
                version: version.to_string(),
                problems: format!(
                    "manifest says version {:?} but the directory is {version:?}",
                    files.manifest.version
                ),
            });
        }
        LoadedModel::load(&self.cfg, &files, self.state, sessions)
    }

    /// Checks `SHADOW` once; blocking. Returns the shadow models to score
    /// when the list changed (the live version and versions beyond
    /// [`crate::model::MAX_SHADOWS`] left out; a shadow that fails its
    /// checks is logged, counted and left out until the list changes).
    pub fn poll_shadows(&mut self) -> Option<Vec<Arc<LoadedModel>>> {
        let listed = match self.registry.shadows() {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "Cannot read the model registry's SHADOW list.");
                self.metrics
                    .model_load_failures
                    .with_label_values(&["registry"])
                    .inc();
                return None;
            }
        };
        let wanted: Vec<String> = listed
            .into_iter()
            .filter(|v| self.live.as_deref() != Some(v.as_str()))
            .take(crate::model::MAX_SHADOWS)
            .collect();
        if self.shadow_list.as_ref() == Some(&wanted) {
            return None;
        }
        let mut next = Vec::with_capacity(wanted.len());
        for v in &wanted {
            if let Some(m) = self.shadows.iter().find(|m| &*m.version == v.as_str()) {
                next.push(m.clone());
                continue;
            }
            // One session: a shadow scores snapshots only.
            match self.load_with(v, 1) {
                Ok(m) => {
                    info!(version = %v, "Loaded a shadow model: it is scored at the live-outcome snapshots.");
                    next.push(Arc::new(m));
                }
                Err(error) => {
                    error!(version = %v, error = %error, "Rejected a shadow model; it is not scored.");
                    self.metrics
                        .model_load_failures
                        .with_label_values(&[error.reason()])
                        .inc();
                }
            }
        }
        self.shadow_list = Some(wanted);
        self.shadows.clone_from(&next);
        Some(next)
    }

    /// Checks `CURRENT` once; blocking (loads and validates a new model).
    pub fn poll(&mut self) -> PollOutcome {
        let current = match self.registry.current() {
            Ok(Some(v)) => v,
            Ok(None) => return PollOutcome::Unchanged,
            Err(e) => {
                error!(error = %e, "Cannot read the model registry's CURRENT.");
                self.metrics
                    .model_load_failures
                    .with_label_values(&["registry"])
                    .inc();
                return PollOutcome::Unchanged;
            }
        };
        if self.live.as_deref() == Some(current.as_str())
            || self.rejected.as_deref() == Some(current.as_str())
        {
            return PollOutcome::Unchanged;
        }
        match self.load(&current) {
            Ok(model) => {
                info!(
                    version = %current,
                    previous = ?self.live,
                    provider = model.provider.as_str(),
                    "Loaded and validated a new model."
                );
                self.live = Some(current);
                self.rejected = None;
                PollOutcome::Loaded(Box::new(model))
            }
            Err(error) => {
                error!(
                    version = %current,
                    live = ?self.live,
                    error = %error,
                    "Rejected a model; the live model keeps serving."
                );
                self.metrics
                    .model_load_failures
                    .with_label_values(&[error.reason()])
                    .inc();
                self.rejected = Some(current.clone());
                PollOutcome::Rejected {
                    version: current,
                    error,
                }
            }
        }
    }
}
