//! Models: the ONNX contract, the manifest, the directory registry, the ONNX
//! writer, and the reference model.
//!
//! A model directory holds `model.onnx` and `manifest.json`. A registry is a
//! directory of model directories named by version plus a `CURRENT` file
//! naming the live one, replaced by atomic rename. This module owns files and
//! contracts; loading into ONNX Runtime and validation against a session is
//! the `score` module's job.

pub mod drift;
pub mod onnx;
pub mod reference;
pub mod rules;
mod segment;

pub use segment::Segment;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::{FeatureSpec, CUSTOMER_DIM, EVENT_NUMERIC_DIM};
use onnx::Elem;

/// Manifest layout version.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the model in a model directory.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest in a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File naming the live version in a registry.
pub const CURRENT_FILE: &str = "CURRENT";
/// File in the registry root listing the shadow versions, one per line:
/// published models the pipeline scores at the live-outcome snapshots only
/// (never for decisions), so that live evidence can compare them with the
/// champion on the same customers and outcomes.
pub const SHADOW_FILE: &str = "SHADOW";
/// Shadow versions at most (each costs one featurization and one scoring
/// per snapshot).
pub const MAX_SHADOWS: usize = 3;

/// Errors reading or writing models and registries.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid JSON for this layout.
    #[error("{path}: invalid manifest: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A version name that cannot be a directory name.
    #[error("invalid model version {0:?}: use letters, digits, '.', '_' and '-'")]
    BadVersion(String),
    /// The version already exists in the registry.
    #[error("model version {0} already exists in the registry")]
    Exists(String),
    /// A shadow list that cannot be kept.
    #[error("shadow models: {0}")]
    Shadow(String),
}

impl crate::error::Classify for ModelError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            ModelError::Io { source, .. } => crate::error::Classify::class(source),
            ModelError::Manifest { .. }
            | ModelError::BadVersion(_)
            | ModelError::Exists(_)
            | ModelError::Shadow(_) => crate::error::ErrorClass::BadInput,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The training window a model saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingWindow {
    /// First event time (ms).
    pub from_ms: i64,
    /// Last event time (ms).
    pub to_ms: i64,
}

/// Row-major tensors of one batch: the model inputs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenInputs {
    /// Rows in the batch.
    pub batch: usize,
    /// [B, N]
    pub event_kind: Vec<i64>,
    /// [B, N]
    pub event_category: Vec<i64>,
    /// [B, N, E]
    pub event_numeric: Vec<f32>,
    /// [B, N, T]
    pub event_text: Vec<i64>,
    /// [B, N]
    pub event_mask: Vec<f32>,
    /// [B, F]
    pub customer_features: Vec<f32>,
}

impl GoldenInputs {
    /// Copies the tensors of a feature batch (an error for a batch that is
    /// not the featurizer's layout: golden inputs are never left empty).
    pub fn from_batch(
        batch: &arrow_array::RecordBatch,
    ) -> Result<Self, crate::features::FeatureError> {
        Ok(Self::from_views(
            batch.num_rows(),
            &crate::features::tensors(batch)?,
        ))
    }

    /// Copies of input views (from [`crate::features::tensors`], possibly
    /// cut by [`crate::features::trim_events`]).
    pub fn from_views(rows: usize, views: &[crate::features::TensorView<'_>]) -> Self {
        use crate::features::TensorData;
        let mut g = GoldenInputs {
            batch: rows,
            ..Default::default()
        };
        for t in views {
            match (t.name, t.data) {
                ("event_kind", TensorData::I64(d)) => g.event_kind = d.to_vec(),
                ("event_category", TensorData::I64(d)) => g.event_category = d.to_vec(),
                ("event_numeric", TensorData::F32(d)) => g.event_numeric = d.to_vec(),
                ("event_text", TensorData::I64(d)) => g.event_text = d.to_vec(),
                ("event_mask", TensorData::F32(d)) => g.event_mask = d.to_vec(),
                ("customer_features", TensorData::F32(d)) => g.customer_features = d.to_vec(),
                _ => {}
            }
        }
        g
    }

    /// As borrowed reference-model inputs.
    pub fn as_inputs(&self) -> reference::Inputs<'_> {
        reference::Inputs {
            event_kind: &self.event_kind,
            event_category: &self.event_category,
            event_numeric: &self.event_numeric,
            event_text: &self.event_text,
            event_mask: &self.event_mask,
            customer_features: &self.customer_features,
        }
    }
}

/// Golden inputs and the outputs the model must give for them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Largest accepted absolute difference per output value.
    pub tolerance: f32,
    /// The inputs.
    pub inputs: GoldenInputs,
    /// The expected outputs.
    pub outputs: reference::Outputs,
}

/// What travels with every model (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// The model version (also the registry directory name).
    pub version: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: i64,
    /// What it is.
    pub description: String,
    /// The features it was trained on.
    pub feature_spec: FeatureSpec,
    /// Segment names, in the order of `segment_probs`.
    pub segments: Vec<String>,
    /// The history it was trained on.
    pub training_window: Option<TrainingWindow>,
    /// Evaluation metrics (name → value).
    pub metrics: BTreeMap<String, f64>,
    /// Golden inputs and outputs.
    pub golden: Golden,
    /// The distributions of its customer features and outputs on its
    /// validation examples, against which live drift is measured (models
    /// `segstream train` makes; none for built-in models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<drift::Reference>,
}

impl Manifest {
    /// Reads `manifest.json`.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if m.format_version != MANIFEST_VERSION {
            return Err(ModelError::Manifest {
                path: path.to_path_buf(),
                message: format!(
                    "format_version {} (this build reads {MANIFEST_VERSION})",
                    m.format_version
                ),
            });
        }
        Ok(m)
    }
}

/// A model directory's contents.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Where it was read from.
    pub dir: PathBuf,
    /// `model.onnx`.
    pub onnx: Vec<u8>,
    /// `manifest.json`.
    pub manifest: Manifest,
}

impl ModelFiles {
    /// Reads a model directory.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let onnx_path = dir.join(MODEL_FILE);
        let onnx = fs::read(&onnx_path).map_err(io(&onnx_path))?;
        let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            onnx,
            manifest,
        })
    }

    /// Writes a model directory (creating it).
    pub fn write(dir: &Path, onnx: &[u8], manifest: &Manifest) -> Result<(), ModelError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let m = dir.join(MODEL_FILE);
        fs::write(&m, onnx).map_err(io(&m))?;
        let p = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| ModelError::Manifest {
            path: p.clone(),
            message: e.to_string(),
        })?;
        fs::write(&p, json).map_err(io(&p))
    }
}

/// The type and shape a model input or output must have. `None` dimensions
/// are dynamic (the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSig {
    /// Name.
    pub name: &'static str,
    /// Element type.
    pub elem: Elem,
    /// Dimensions.
    pub dims: Vec<Option<i64>>,
}

/// The inputs every model must take, for a feature spec.
pub fn contract_inputs(spec: &FeatureSpec) -> Vec<TensorSig> {
    let (n, e, t, f) = (
        spec.max_events as i64,
        EVENT_NUMERIC_DIM as i64,
        spec.text_tokens as i64,
        CUSTOMER_DIM as i64,
    );
    vec![
        TensorSig {
            name: "event_kind",
            elem: Elem::I64,
            dims: vec![None, Some(n)],
        },
        TensorSig {
            name: "event_category",
            elem: Elem::I64,
            dims: vec![None, Some(n)],
        },
        TensorSig {
            name: "event_numeric",
            elem: Elem::F32,
            dims: vec![None, Some(n), Some(e)],
        },
        TensorSig {
            name: "event_text",
            elem: Elem::I64,
            dims: vec![None, Some(n), Some(t)],
        },
        TensorSig {
            name: "event_mask",
            elem: Elem::F32,
            dims: vec![None, Some(n)],
        },
        TensorSig {
            name: "customer_features",
            elem: Elem::F32,
            dims: vec![None, Some(f)],
        },
    ]
}

/// The outputs every model must give, for `segments` segments.
pub fn contract_outputs(segments: usize) -> Vec<TensorSig> {
    vec![
        TensorSig {
            name: "segment_probs",
            elem: Elem::F32,
            dims: vec![None, Some(segments as i64)],
        },
        TensorSig {
            name: "purchase_probability",
            elem: Elem::F32,
            dims: vec![None],
        },
        TensorSig {
            name: "churn_probability",
            elem: Elem::F32,
            dims: vec![None],
        },
        TensorSig {
            name: "predicted_spend",
            elem: Elem::F32,
            dims: vec![None],
        },
    ]
}

/// Name of the optional explanation output: `[batch, K, F + 2]` float32.
/// For each segment k, its logit centered over the segments (ln p_k minus
/// the mean of ln p over the segments) split exactly into parts: F
/// customer-feature contributions of the direct (linear) path, then the
/// sequence pathway's share (the encoder and its joint layer), then the
/// baseline (the centered bias). The parts of a row sum to the centered logit.
pub const SEGMENT_CONTRIBUTIONS: &str = "segment_contributions";

/// Names of the parts of a [`SEGMENT_CONTRIBUTIONS`] row after the customer
/// features.
pub const CONTRIBUTION_SEQUENCE: &str = "sequence";
/// See [`CONTRIBUTION_SEQUENCE`].
pub const CONTRIBUTION_BASELINE: &str = "baseline";

/// Values per segment in a [`SEGMENT_CONTRIBUTIONS`] row: the customer
/// features, then the sequence share and the baseline.
pub const CONTRIBUTION_WIDTH: usize = crate::features::CUSTOMER_DIM + 2;

/// Outputs a model may give; checked when present.
pub fn optional_outputs(segments: usize) -> Vec<TensorSig> {
    vec![TensorSig {
        name: SEGMENT_CONTRIBUTIONS,
        elem: Elem::F32,
        dims: vec![None, Some(segments as i64), Some(CONTRIBUTION_WIDTH as i64)],
    }]
}

/// A directory registry of model versions.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn check_version(version: &str) -> Result<(), ModelError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && version != "."
        && version != ".."
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadVersion(version.to_string()))
    }
}

impl Registry {
    /// A registry rooted at `root` (created on first publish).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The live version, if one was promoted.
    pub fn current(&self) -> Result<Option<String>, ModelError> {
        let path = self.root.join(CURRENT_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => {
                let v = s.trim().to_string();
                check_version(&v)?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The directory of `version`.
    pub fn dir(&self, version: &str) -> Result<PathBuf, ModelError> {
        check_version(version)?;
        Ok(self.root.join(version))
    }

    /// Writes a new version (to a temporary directory, then renamed into
    /// place, so a half-written version is never visible).
    pub fn publish(&self, onnx: &[u8], manifest: &Manifest) -> Result<PathBuf, ModelError> {
        let dir = self.dir(&manifest.version)?;
        if dir.exists() {
            return Err(ModelError::Exists(manifest.version.clone()));
        }
        let tmp = self
            .root
            .join(format!(".tmp-{}-{}", manifest.version, std::process::id()));
        ModelFiles::write(&tmp, onnx, manifest)?;
        fs::rename(&tmp, &dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Makes `version` the live one: `CURRENT` is replaced by atomic rename,
    /// and `version` leaves the shadow list.
    pub fn promote(&self, version: &str) -> Result<(), ModelError> {
        self.require(version)?;
        self.replace_file(CURRENT_FILE, &format!("{version}\n"))?;
        let shadows = self.shadows()?;
        if shadows.iter().any(|v| v == version) {
            let rest: Vec<String> = shadows.into_iter().filter(|v| v != version).collect();
            self.write_shadows(&rest)?;
        }
        Ok(())
    }

    /// Fails unless `version` is a published model.
    fn require(&self, version: &str) -> Result<PathBuf, ModelError> {
        let dir = self.dir(version)?;
        if !dir.join(MODEL_FILE).is_file() {
            return Err(io(&dir)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.onnx in this version",
            )));
        }
        Ok(dir)
    }

    /// Replaces the root's `name` with `text` (written to a temporary file,
    /// synced, then renamed over it: readers see the old or the new file).
    fn replace_file(&self, name: &str, text: &str) -> Result<(), ModelError> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let tmp = self
            .root
            .join(format!(".{name}.tmp-{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let path = self.root.join(name);
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The shadow versions ([`SHADOW_FILE`]), in the order they were added.
    pub fn shadows(&self) -> Result<Vec<String>, ModelError> {
        let path = self.root.join(SHADOW_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut out: Vec<String> = Vec::new();
        for v in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            check_version(v)?;
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
        Ok(out)
    }

    fn write_shadows(&self, versions: &[String]) -> Result<(), ModelError> {
        let text: String = versions.iter().map(|v| format!("{v}\n")).collect();
        self.replace_file(SHADOW_FILE, &text)
    }

    /// Adds a published `version` to the shadow list: the pipeline scores it
    /// at every live-outcome snapshot from its next registry poll on. Fails
    /// for the live version, or beyond [`MAX_SHADOWS`].
    pub fn add_shadow(&self, version: &str) -> Result<(), ModelError> {
        self.require(version)?;
        if self.current()?.as_deref() == Some(version) {
            return Err(ModelError::Shadow(format!(
                "{version} is the live version (CURRENT): it is scored as the champion"
            )));
        }
        let mut shadows = self.shadows()?;
        if shadows.iter().any(|v| v == version) {
            return Ok(());
        }
        if shadows.len() >= MAX_SHADOWS {
            return Err(ModelError::Shadow(format!(
                "at most {MAX_SHADOWS} shadow versions ({} now): remove one first",
                shadows.join(", ")
            )));
        }
        shadows.push(version.to_string());
        self.write_shadows(&shadows)
    }

    /// Adds `version` to the shadow list, taking the oldest version out
    /// first when the list is full (periodic training keeps the newest
    /// candidates in the shadow); returns the version taken out.
    pub fn add_shadow_replacing_oldest(&self, version: &str) -> Result<Option<String>, ModelError> {
        let shadows = self.shadows()?;
        let oldest = shadows
            .first()
            .filter(|o| shadows.len() >= MAX_SHADOWS && *o != version)
            .cloned();
        if let Some(o) = &oldest {
            self.remove_shadow(o)?;
        }
        self.add_shadow(version)?;
        Ok(oldest)
    }

    /// Removes `version` from the shadow list (no error when absent).
    pub fn remove_shadow(&self, version: &str) -> Result<(), ModelError> {
        check_version(version)?;
        let shadows = self.shadows()?;
        if !shadows.iter().any(|v| v == version) {
            return Ok(());
        }
        let rest: Vec<String> = shadows.into_iter().filter(|v| v != version).collect();
        self.write_shadows(&rest)
    }

    /// Versions present, sorted.
    pub fn versions(&self) -> Result<Vec<String>, ModelError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join(MODEL_FILE).is_file() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Featurizer;
    use crate::state::StateLimits;

    fn registry_with(versions: &[&str]) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::new(dir.path());
        let limits = StateLimits::default();
        let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits)
            .unwrap_or_else(|e| panic!("{e}"));
        for v in versions {
            let (onnx, manifest) = rules::build(&featurizer, v).unwrap_or_else(|e| panic!("{e}"));
            registry
                .publish(&onnx, &manifest)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        (dir, registry)
    }

    /// The shadow list keeps published versions other than the live one,
    /// at most `MAX_SHADOWS`, each once and in order; promoting a shadow
    /// takes it out of the list.
    #[test]
    fn shadows_are_published_versions_apart_from_the_live_one() {
        let (_dir, r) = registry_with(&["a", "b", "c", "d", "e"]);
        let ok = |res: Result<(), ModelError>| res.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.shadows().ok(), Some(vec![]));
        ok(r.promote("a"));
        let live = r
            .add_shadow("a")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(live.contains("live version"), "{live}");
        assert!(r.add_shadow("nope").is_err(), "not published");
        assert!(matches!(
            r.add_shadow("../x"),
            Err(ModelError::BadVersion(_))
        ));
        ok(r.add_shadow("b"));
        ok(r.add_shadow("c"));
        ok(r.add_shadow("b"));
        ok(r.add_shadow("d"));
        assert_eq!(
            r.shadows().ok(),
            Some(vec!["b".into(), "c".into(), "d".into()])
        );
        let full = r
            .add_shadow("e")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(full.contains("at most 3"), "{full}");
        ok(r.remove_shadow("c"));
        ok(r.remove_shadow("c"));
        ok(r.add_shadow("e"));
        assert_eq!(
            r.shadows().ok(),
            Some(vec!["b".into(), "d".into(), "e".into()])
        );
        ok(r.promote("d"));
        assert_eq!(r.current().ok().flatten().as_deref(), Some("d"));
        assert_eq!(r.shadows().ok(), Some(vec!["b".into(), "e".into()]));
        // A hand-edited list: blank lines and repeats are ignored, a bad
        // name is an error.
        std::fs::write(r.root().join(SHADOW_FILE), "b\n\n b \ne\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.shadows().ok(), Some(vec!["b".into(), "e".into()]));
        std::fs::write(r.root().join(SHADOW_FILE), "b\n../etc\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(r.shadows().is_err());
    }
}
