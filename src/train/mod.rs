//! The trainer: history → point-in-time examples → Transformer → evaluation
//! against baselines → ONNX export with a parity check → registry, promoted
//! only if not worse than the champion on the same validation examples.
//!
//! | step | module |
//! | --- | --- |
//! | replay history through `state` + `features`, labels from (t, t + H] | [`examples`] |
//! | cut times, the validation split point, example sampling and weights | [`sampling`] |
//! | the network (candle) | [`net`] |
//! | AdamW training loop, early stopping | [`fit`] |
//! | RFM rules and logistic regression | [`baselines`] |
//! | accuracy, macro-F1, AUC, calibration, spend error | [`metrics`] |
//! | ONNX graph of the trained network | [`export`] |
//! | batch scoring of a history file | [`predict`] |
//!
//! It reads history but never writes to Kafka; its only output is a model
//! directory in the registry (and `CURRENT`, when it promotes).

pub mod baselines;
pub mod btyd;
pub mod calibrate;
pub mod examples;
pub mod export;
pub mod fit;
pub mod metrics;
pub mod net;
pub mod predict;
pub mod sampling;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use crate::config::{Config, ModelFamily};
use crate::event::Event;
use crate::features::{FeatureError, FeatureSpec, Featurizer};
use crate::model::reference::Outputs;
use crate::model::{
    Golden, Manifest, ModelError, ModelFiles, Registry, Segment, TrainingWindow, MANIFEST_VERSION,
};
use crate::score::ScoreError;
use examples::{ExampleSet, LabelRules, Sampling};

/// Why a training run failed. A failed run never touches `CURRENT`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Too little history for a time-based split.
    #[error("not enough history to train: {0}")]
    NotEnoughHistory(String),
    /// Features could not be computed.
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// The tensor library failed (an internal error).
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// ONNX Runtime could not run the exported model.
    #[error("ONNX Runtime (it checks the exported model): {0}")]
    Score(#[from] ScoreError),
    /// The export disagrees with the trained network.
    #[error("the ONNX export differs from the trained network by {diff:e} (tolerance {tolerance:e}) on {output}")]
    Parity {
        /// Largest difference.
        diff: f32,
        /// Allowed.
        tolerance: f32,
        /// Which output.
        output: String,
    },
    /// The registry could not be written.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl crate::error::Classify for TrainError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            TrainError::NotEnoughHistory(_) => crate::error::ErrorClass::BadInput,
            TrainError::Features(e) => crate::error::Classify::class(e),
            TrainError::Model(e) => crate::error::Classify::class(e),
            // The runtime refusing the trainer's own export is the trainer's
            // fault; a runtime that cannot run at all is the environment's.
            TrainError::Score(e) => match crate::error::Classify::class(e) {
                crate::error::ErrorClass::BadInput => crate::error::ErrorClass::Internal,
                other => other,
            },
            TrainError::Candle(_) | TrainError::Parity { .. } => crate::error::ErrorClass::Internal,
        }
    }
}

pub use crate::rng::Rng;

/// The trainer's stream for `seed` (initialisation and shuffles).
pub fn rng(seed: u64) -> Rng {
    Rng::from_state(seed ^ 0x9e37_79b9_7f4a_7c15)
}

/// How to run one training.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Version name; default `t<UTC timestamp>`.
    pub version: Option<String>,
    /// Promote even if worse than the champion.
    pub force: bool,
    /// Publish but do not promote.
    pub no_promote: bool,
    /// Also fit the Transformer without the classical inputs (a second
    /// fit), so the report measures what they add to it.
    pub ablate: bool,
}

/// Progress callbacks (the CLI draws bars; tests pass no-ops).
pub struct Progress<'a> {
    /// Events replayed so far, of the total.
    pub replay: &'a mut (dyn FnMut(u64, u64) + Send),
    /// Batches done in the current epoch, of the total.
    pub step: &'a mut (dyn FnMut(usize, usize) + Send),
    /// An epoch ended.
    pub epoch: &'a mut (dyn FnMut(&fit::EpochReport) + Send),
}

impl Progress<'_> {
    /// Calls nothing.
    pub fn silent<R>(f: impl FnOnce(&mut Progress<'_>) -> R) -> R {
        let (mut a, mut b, mut c) = (|_, _| {}, |_, _| {}, |_: &fit::EpochReport| {});
        f(&mut Progress {
            replay: &mut a,
            step: &mut b,
            epoch: &mut c,
        })
    }
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The new version.
    pub version: String,
    /// Its directory in the registry.
    pub dir: PathBuf,
    /// Whether `CURRENT` now names it.
    pub promoted: bool,
    /// Why (or why not).
    pub decision: String,
    /// Examples for training and validation.
    pub examples: (usize, usize),
    /// Replay statistics.
    pub replay: examples::ReplayReport,
    /// Training statistics.
    pub fit: fit::FitReport,
    /// Validation metrics: transformer, baselines and (if any) champion.
    pub table: String,
    /// The manifest written.
    pub manifest: Manifest,
    /// Seconds: replay, fit, evaluation + export.
    pub seconds: (f64, f64, f64),
    /// Trainable parameters of the served model.
    pub parameters: usize,
    /// The family served (`Transformer` or `Logistic`).
    pub served: ModelFamily,
    /// Every margin the report prints (candidates, ablations).
    pub margins: Vec<metrics::MarginLine>,
}

/// The family `train.model` asks for, given `lead`: the logistic
/// regression's margin over the Transformer on `key` (higher is better).
/// `auto` serves the logistic regression unless the Transformer is ahead
/// by an interval that excludes 0: a tie goes to the cheaper model.
pub fn choose(asked: ModelFamily, key: &str, lead: &metrics::Margin) -> (ModelFamily, String) {
    let margin = format!(
        "logistic regression − transformer on {key}: {:+.4} [{:+.4}, {:+.4}]",
        lead.difference, lead.low, lead.high
    );
    match asked {
        ModelFamily::Transformer | ModelFamily::Logistic => {
            (asked, format!("train.model = {}; {margin}", asked.as_str()))
        }
        ModelFamily::Auto if lead.tie() => (
            ModelFamily::Logistic,
            format!("a tie goes to the cheaper model: {margin}"),
        ),
        ModelFamily::Auto if lead.difference > 0.0 => (
            ModelFamily::Logistic,
            format!("the logistic regression is ahead: {margin}"),
        ),
        ModelFamily::Auto => (
            ModelFamily::Transformer,
            format!("the Transformer is ahead: {margin}"),
        ),
    }
}

fn served_label(f: ModelFamily) -> &'static str {
    match f {
        ModelFamily::Logistic => "logistic regression",
        _ => "transformer",
    }
}

/// The state limits and feature spec the trainer uses: those the pipeline
/// serves with the same config.
pub fn featurizer(config: &Config) -> Result<Featurizer, FeatureError> {
    let limits = config.state.limits().state;
    Featurizer::new(FeatureSpec::for_state(limits), limits)
}

/// Most validation examples the ONNX export parity check runs on.
const PARITY_SAMPLE: usize = 4096;

/// ln(p / (1 − p)), with p kept inside (0, 1).
/// The default version name: `t` and the UTC time, e.g. `t20261128T130512Z`.
pub fn default_version() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("t{}", now.replace(['-', ':'], ""))
}

/// The compute device: CUDA when built with the `cuda` feature and a GPU is
/// there, else CPU.
pub fn device() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

/// Metric names stored in the manifest for a model called `prefix`.
fn prefixed(prefix: &str, m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .map(|(k, v)| {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            (key, *v)
        })
        .collect()
}

/// Runs ONNX Runtime on every example of `set` (padded to N), in chunks.
fn onnx_outputs(
    config: &Config,
    version: &str,
    onnx: &[u8],
    spec: &FeatureSpec,
    segments: usize,
    set: &ExampleSet,
) -> Result<Outputs, ScoreError> {
    let (mut session, _) = crate::score::new_session(&config.score, version, onnx)?;
    let mut out = Outputs::default();
    // Padded to `max_events`, as the golden inputs are; the scorer's
    // shorter batches are checked against these in the serving tests.
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(256) {
        let g = set.batch(chunk, Some(spec.max_events)).to_golden();
        out.append(crate::score::run_session(&mut session, &g, spec, segments)?);
    }
    Ok(out)
}

/// A Transformer for `spec` and `tc`, ready to fit on `train`: its direct
/// path warm-started from `logistic` (fitted on `train`), or its inputs
/// standardized by `train`'s moments.
fn start_net(
    spec: &FeatureSpec,
    tc: &crate::config::TrainConfig,
    device: &Device,
    train: &ExampleSet,
    logistic: &baselines::Logistic,
) -> Result<net::Transformer, TrainError> {
    let mut net = net::Transformer::new(net::Arch::new(spec, tc, Segment::COUNT), tc.seed, device)?;
    if tc.warm_start {
        net.warm_start(&logistic.linear_start())?;
    } else {
        let (mean, std) = train.feature_moments();
        net.set_standardization(mean, std.iter().map(|s| 1.0 / s).collect());
    }
    Ok(net)
}

/// Trains once on `events` and publishes to the registry of
/// `config.score.registry` (or `registry`), promoting when not worse than
/// the champion.
pub fn train(
    config: &Config,
    events: Vec<Event>,
    registry: &Registry,
    options: &TrainOptions,
    progress: &mut Progress<'_>,
) -> Result<TrainReport, TrainError> {
    // The tensor library runs its parallel loops on the current rayon pool:
    // a pool of `train.threads` bounds them.
    let mut pool = rayon::ThreadPoolBuilder::new();
    if config.train.threads > 0 {
        pool = pool.num_threads(config.train.threads);
    }
    match pool.build() {
        Ok(pool) => pool.install(|| train_in_pool(config, events, registry, options, progress)),
        Err(e) => Err(TrainError::Candle(candle_core::Error::Msg(format!(
            "cannot start training threads: {e}"
        )))),
    }
}

fn train_in_pool(
    config: &Config,
    events: Vec<Event>,
    registry: &Registry,
    options: &TrainOptions,
    progress: &mut Progress<'_>,
) -> Result<TrainReport, TrainError> {
    // The export is checked with ONNX Runtime at the end: fail before
    // training, not after, when it cannot be loaded.
    crate::score::environment(&config.score)?;
    let tc = &config.train;
    let featurizer = featurizer(config)?;
    let spec = featurizer.spec().clone();
    let limits = config.state.limits().state;
    let rules = LabelRules::from_config(tc);
    let sampling = Sampling::from_config(tc);
    let segments = Segment::COUNT;

    let t0 = Instant::now();
    let total = events.len() as u64;
    let (all, replay) = examples::build(events, &featurizer, limits, rules, sampling, &mut |n| {
        (progress.replay)(n, total)
    })?;
    let (mut train_set, mut val_set) =
        examples::split_by_time(&all, replay.validation_from_ms, rules.horizon_ms);
    drop(all);
    if train_set.len() < 50 || val_set.len() < 20 {
        return Err(TrainError::NotEnoughHistory(format!(
            "{} training and {} validation examples from {} cut times over {:.0} days of history; \
             history must span several `sample_every` periods beyond `horizon` (and the validation gap of one horizon)",
            train_set.len(),
            val_set.len(),
            replay.cuts,
            (replay.span_ms.1 - replay.span_ms.0) as f64 / crate::units::DAY_MS as f64
        )));
    }
    // The classical models, fitted on the training examples: a baseline,
    // and (their parameters in the spec) inputs of the learned models.
    let horizon_days = rules.horizon_ms as f64 / crate::state::DAY_MS as f64;
    let bgnbd = btyd::Baseline::fit(&spec, &train_set, horizon_days);
    if let Some(c) = &bgnbd.classical {
        tracing::info!(bgnbd = ?c.bgnbd, gamma_gamma = ?c.gamma_gamma, "Fitted the classical models.");
    }
    let spec = FeatureSpec {
        classical: bgnbd.classical,
        ..spec
    };
    train_set.fill_classical(&spec);
    val_set.fill_classical(&spec);
    let replay_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let device = device();
    let spend_scale = spec.normalization.spend_log_scale;
    // The logistic regression is both a baseline and the warm start of the
    // Transformer's direct path from the customer features.
    let logistic = baselines::Logistic::fit(&train_set, spec.normalization.spend_log_scale, 300);
    let mut net = start_net(&spec, tc, &device, &train_set, &logistic)?;
    let fitted = fit::fit(
        &net,
        &train_set,
        &val_set,
        tc,
        spend_scale,
        &device,
        progress,
    )?;
    let fit_s = t1.elapsed().as_secs_f64();
    // Ablations: the logistic regression refitted without the classical
    // inputs and (on request: a second fit) the Transformer too, so what
    // they add is a measured number.
    let plain_val = val_set.without_classical(&spec);
    let (plain, plain_net) = {
        let plain_train = train_set.without_classical(&spec);
        let plain = baselines::Logistic::fit(&plain_train, spend_scale, 300);
        let plain_net = if options.ablate {
            let net = start_net(&spec, tc, &device, &plain_train, &plain)?;
            let silent = &mut |_: &fit::EpochReport| {};
            let mut quiet = Progress {
                replay: progress.replay,
                step: progress.step,
                epoch: silent,
            };
            fit::fit(
                &net,
                &plain_train,
                &plain_val,
                tc,
                spend_scale,
                &device,
                &mut quiet,
            )?;
            let raw = fit::predict(&net, &plain_val, spend_scale, None)?;
            Some(calibrate::cross_fitted(&raw, &plain_val).0)
        } else {
            None
        };
        (plain, plain_net)
    };

    let t2 = Instant::now();
    let version = options.version.clone().unwrap_or_else(default_version);
    // Calibration on the held-out examples (see `calibrate`).
    let raw = fit::predict(&net, &val_set, spend_scale, None)?;
    let (crossed, calibration) = calibrate::cross_fitted(&raw, &val_set);
    net.calibration = calibration;
    tracing::info!(calibration = ?net.calibration, "Calibrated the outputs on the validation examples.");
    let m_transformer = metrics::evaluate(&crossed, &val_set.labels, segments);
    // Ablation: the same network with the event sequence masked, so the
    // sequence's own contribution is a measured number.
    let masked = fit::predict(&net, &val_set.without_events(), spend_scale, None)?;
    let m_masked = metrics::evaluate(&masked, &val_set.labels, segments);
    let rules_out = baselines::rules(&spec, &val_set);
    let m_rules = metrics::evaluate(&rules_out, &val_set.labels, segments);
    // The logistic regression is calibrated as the Transformer is: it is a
    // candidate for serving, judged on the same footing.
    let logistic_raw = logistic.predict(&val_set);
    let (logistic_out, logistic_calibration) = calibrate::cross_fitted(&logistic_raw, &val_set);
    let m_logistic = metrics::evaluate(&logistic_out, &val_set.labels, segments);
    let (plain_out, _) = calibrate::cross_fitted(&plain.predict(&plain_val), &plain_val);
    drop(plain_val);
    let m_plain = metrics::evaluate(&plain_out, &val_set.labels, segments);
    // BG/NBD with Gamma-Gamma: purchase propensity and spend (no segments).
    let bgnbd_out = bgnbd.predict(&spec, &val_set, segments);
    let mut m_bgnbd = metrics::evaluate(&bgnbd_out, &val_set.labels, segments);
    m_bgnbd.remove("segment_accuracy");
    m_bgnbd.remove("segment_macro_f1");
    // Every lead with its interval: the same validation examples resampled
    // for both models (BG/NBD knows no segments: purchase only).
    let mut margin_metrics = vec![tc.promote_metric.as_str()];
    if tc.promote_metric != "purchase_auc" {
        margin_metrics.push("purchase_auc");
    }
    let judged = metrics::Judged {
        labels: &val_set.labels,
        customer: &val_set.customer,
        segments,
    };
    let margins = metrics::Margins::of(
        ("transformer", &crossed),
        &[
            ("same, sequence masked", &masked, &margin_metrics),
            ("logistic regression", &logistic_out, &margin_metrics),
            ("RFM rules", &rules_out, &margin_metrics),
            ("BG/NBD + Gamma-Gamma", &bgnbd_out, &["purchase_auc"]),
        ],
        &judged,
        tc.seed,
    );
    let ablation = metrics::Margins::of(
        ("logistic regression", &logistic_out),
        &[("logistic, no classical inputs", &plain_out, &margin_metrics)],
        &judged,
        tc.seed,
    );
    let m_plain_net = plain_net
        .as_ref()
        .map(|o| metrics::evaluate(o, &val_set.labels, segments));
    let net_ablation = plain_net.as_ref().map(|o| {
        metrics::Margins::of(
            ("transformer", &crossed),
            &[("transformer, no classical inputs", o, &margin_metrics)],
            &judged,
            tc.seed,
        )
    });

    // Which candidate is served (`train.model`), on the logistic
    // regression's margin on the promote metric (measured just above).
    let key = tc.promote_metric.as_str();
    let lead = margins
        .get("logistic regression", key)
        .copied()
        .unwrap_or_else(|| {
            metrics::margin(
                &logistic_out,
                &crossed,
                &judged,
                key,
                metrics::RESAMPLES,
                tc.seed,
            )
        });
    let (served, why_served) = choose(tc.model, key, &lead);
    tracing::info!(served = served.as_str(), why = %why_served, "Chose the model to serve.");
    let (m_served, served_raw) = match served {
        ModelFamily::Logistic => (&m_logistic, &logistic_raw),
        _ => (&m_transformer, &raw),
    };
    // Calibration one cut time ahead, on the served model.
    let forward = calibrate::forward(served_raw, &val_set);
    let forward_line = match &forward {
        Some(f) => format!(
            "Forward calibration (fitted on the validation cut times before the last, checked on the last, {} examples): \
             mean predicted purchase probability {:.4} against a realized rate of {:.4} (ratio {:.3}); \
             predicted over actual spend {:.3}.\n",
            f.examples,
            f.predicted_purchase,
            f.realized_purchase,
            f.purchase_ratio(),
            f.spend_ratio
        ),
        None => "Forward calibration: not measured (one validation cut time, or no purchase at the last).\n".into(),
    };

    // Export, then prove the file computes what was trained.
    // On an evenly spread sample of at most PARITY_SAMPLE validation
    // examples: the check's cost stays flat as customers grow.
    let step = val_set.len().div_ceil(PARITY_SAMPLE).max(1);
    let sample = val_set.subset(|i| i % step == 0);
    let golden_idx: Vec<usize> = (0..val_set.len().min(8)).collect();
    let golden_set = val_set.subset(|i| i < golden_idx.len());
    let (onnx, ours_sample, golden_outputs) = match served {
        ModelFamily::Logistic => (
            export::logistic_to_onnx(&logistic, &logistic_calibration, &spec, &version),
            logistic.predict_with(&sample, &logistic_calibration, true),
            logistic.predict_with(&golden_set, &logistic_calibration, true),
        ),
        _ => (
            export::to_onnx(&net, &spec, &version)?,
            fit::predict_with(&net, &sample, spend_scale, None, true)?,
            fit::predict_with(&net, &golden_set, spend_scale, Some(spec.max_events), true)?,
        ),
    };
    let theirs = onnx_outputs(config, &version, &onnx, &spec, segments, &sample)?;
    let (diff, output) = crate::score::max_difference(&ours_sample, &theirs);
    if diff.is_nan() || diff > tc.parity_tolerance {
        return Err(TrainError::Parity {
            diff,
            tolerance: tc.parity_tolerance,
            output: output.to_string(),
        });
    }
    // Drift's reference: the validation examples' customer features, and
    // the exported model's outputs on the parity sample.
    let reference = {
        let f = crate::features::CUSTOMER_DIM;
        let rows: Vec<f32> = (0..val_set.len())
            .flat_map(|i| val_set.customer_features_of(i).iter().copied())
            .collect();
        let mut r = crate::model::drift::Reference::fit(
            &rows,
            &crate::features::customer_feature_names()[..f],
            &theirs,
        );
        r.examples = val_set.len();
        r
    };
    // Golden I/O: validation examples, with the served model's outputs.
    let golden = Golden {
        tolerance: tc.parity_tolerance,
        inputs: golden_set
            .batch(&golden_idx, Some(spec.max_events))
            .to_golden(),
        outputs: golden_outputs,
    };

    // The champion, judged on the same validation examples.
    let champion = registry.current().ok().flatten();
    let mut m_champion = None;
    let mut champion_note = String::new();
    if let Some(c) = &champion {
        match registry.dir(c).and_then(|d| ModelFiles::read(&d)) {
            Ok(files)
                if files.manifest.feature_spec.same_layout(&spec)
                    && files.manifest.segments.len() == segments =>
            {
                // Its classical inputs with its own parameters.
                let mut theirs = val_set.clone();
                theirs.fill_classical(&files.manifest.feature_spec);
                match onnx_outputs(config, c, &files.onnx, &spec, segments, &theirs) {
                    Ok(o) => m_champion = Some(metrics::evaluate(&o, &val_set.labels, segments)),
                    Err(e) => champion_note = format!("champion {c} could not be scored ({e})"),
                }
            }
            Ok(_) => champion_note = format!("champion {c} uses another feature spec or taxonomy"),
            Err(e) => champion_note = format!("champion {c} could not be read ({e})"),
        }
    }
    let new_score = m_served.get(key).copied().unwrap_or(0.0);
    let (promote, decision) = match (&champion, &m_champion) {
        _ if options.no_promote => (false, "not promoted (--no-promote)".to_string()),
        (None, _) => (true, "no champion yet".to_string()),
        (Some(c), Some(m)) => {
            let old = m.get(key).copied().unwrap_or(0.0);
            if new_score + 1e-9 >= old {
                (
                    true,
                    format!("{key} {new_score:.4} ≥ champion {c}'s {old:.4}"),
                )
            } else if options.force {
                (
                    true,
                    format!(
                        "{key} {new_score:.4} < champion {c}'s {old:.4}, promoted with --force"
                    ),
                )
            } else {
                (
                    false,
                    format!("{key} {new_score:.4} < champion {c}'s {old:.4}; champion kept"),
                )
            }
        }
        (Some(_), None) => (true, format!("{champion_note}; replaced")),
    };

    let mut table_models: Vec<(&str, &BTreeMap<String, f64>)> = vec![
        ("transformer", &m_transformer),
        ("same, sequence masked", &m_masked),
        ("logistic regression", &m_logistic),
        ("logistic, no classical inputs", &m_plain),
        ("BG/NBD + Gamma-Gamma", &m_bgnbd),
        ("RFM rules", &m_rules),
    ];
    if let Some(m) = &m_plain_net {
        table_models.insert(2, ("transformer, no classical inputs", m));
    }
    let champion_label = champion.as_deref().map(|c| format!("champion {c}"));
    if let (Some(l), Some(m)) = (&champion_label, &m_champion) {
        table_models.push((l.as_str(), m));
    }
    let mut lines = margins.lines();
    lines.extend(ablation.lines());
    lines.extend(net_ablation.iter().flat_map(|m| m.lines()));
    let table = format!(
        "{}\n{}{}\nServed: {} ({why_served}).\n\n{forward_line}",
        metrics::table(&table_models),
        margins.report(),
        ablation.report()
            + &net_ablation
                .as_ref()
                .map(|m| m.report())
                .unwrap_or_default(),
        served_label(served)
    );

    // Unprefixed: the served model's (the next training's champion figures).
    let mut stored = prefixed("", m_served);
    stored.extend(prefixed("candidate_transformer", &m_transformer));
    stored.extend(prefixed("baseline_logistic", &m_logistic));
    stored.extend(prefixed("baseline_rules", &m_rules));
    stored.extend(prefixed("baseline_bgnbd", &m_bgnbd));
    stored.extend(prefixed("ablation_sequence_masked", &m_masked));
    stored.extend(prefixed("ablation_logistic_no_classical", &m_plain));
    stored.extend(margins.stored());
    stored.extend(ablation.stored());
    if let (Some(m), Some(margins)) = (&m_plain_net, &net_ablation) {
        stored.extend(prefixed("ablation_transformer_no_classical", m));
        stored.extend(margins.stored());
    }
    if let Some(f) = &forward {
        stored.insert("forward_purchase_ratio".into(), f.purchase_ratio());
        stored.insert("forward_spend_ratio".into(), f.spend_ratio);
    }
    stored.insert("parity_max_abs_diff".into(), f64::from(diff));
    stored.insert("train_examples".into(), train_set.len() as f64);
    stored.insert("best_epoch".into(), fitted.best_epoch as f64);
    stored.insert("train_seconds".into(), fit_s);
    let parameters = match served {
        ModelFamily::Logistic => logistic.parameter_count(),
        _ => net.parameter_count(),
    };
    stored.insert("parameters".into(), parameters as f64);
    stored.insert(
        "candidate_transformer.parameters".into(),
        net.parameter_count() as f64,
    );
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        version: version.clone(),
        created_at_ms: crate::ingest::now_ms(),
        description: match served {
            ModelFamily::Logistic => format!(
                "Logistic regression on the customer features ({why_served}), trained on {} examples; {decision}",
                train_set.len(),
            ),
            _ => format!(
                "Transformer ({} layers, d={}, {} heads; {why_served}), trained on {} examples; {decision}",
                tc.layers,
                tc.d_model,
                tc.heads,
                train_set.len(),
            ),
        },
        feature_spec: spec,
        segments: Segment::names(),
        training_window: Some(TrainingWindow {
            from_ms: replay.span_ms.0,
            to_ms: replay.span_ms.1,
        }),
        metrics: stored,
        golden,
        reference: Some(reference),
    };
    let dir = registry.publish(&onnx, &manifest)?;
    // With live promotion a serving champion is replaced on live evidence
    // only: the new version goes into the shadow.
    let shadowed = promote
        && champion.is_some()
        && !options.force
        && config.train.promote_on == crate::config::PromoteOn::Live;
    let (promote, decision) = if shadowed {
        if let Some(oldest) = registry.add_shadow_replacing_oldest(&version)? {
            tracing::info!(version = %oldest, "The shadow list was full: its oldest version left it.");
        }
        (
            false,
            format!(
                "{decision}; train.promote_on = \"live\": published as a shadow model, \
                 promoted by `segstream model promote {version} --live` once its live outcomes \
                 are ahead of the champion's"
            ),
        )
    } else {
        (promote, decision)
    };
    if promote {
        registry.promote(&version)?;
    }
    Ok(TrainReport {
        version,
        dir,
        promoted: promote,
        decision,
        examples: (train_set.len(), val_set.len()),
        replay,
        fit: fitted,
        table,
        manifest,
        seconds: (replay_s, fit_s, t2.elapsed().as_secs_f64()),
        parameters,
        served,
        margins: lines,
    })
}

#[cfg(test)]
mod tests;
