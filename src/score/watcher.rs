//! The registry watcher: notices a new `CURRENT`, loads and validates that
//! model off the hot path, and hands it over for an atomic swap. A model
//! that fails validation is rejected once (counted and logged) and not
//! retried until `CURRENT` changes again; the old model keeps serving.

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
            metrics,
        }
    }

    /// Loads `version` (blocking).
    fn load(&self, version: &str) -> Result<LoadedModel, ScoreError> {
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
        LoadedModel::load(&self.cfg, &files, self.state, self.cfg.inference_threads)
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
