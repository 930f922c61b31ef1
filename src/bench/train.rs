//! The training benchmark: `segstream::train::train` on generated history,
//! into a temporary registry (never promoted), against a plain replay of the
//! same events through `CustomerState::record` in the same run.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::BenchResult;
use crate::config::Config;
use crate::event::Event;
use crate::generate::{history, GeneratorConfig};
use crate::model::Registry;
use crate::state::CustomerState;
use crate::train::{Progress, TrainOptions, TrainReport};

/// Days of generated history the training benchmark uses.
pub const TRAIN_DAYS: u32 = 180;
/// The generator's yield: about this many events per customer over 180 days.
const EVENTS_PER_CUSTOMER: f64 = 275_000.0 / 2_000.0;

/// The sparse case: customers, days, purchases only.
pub const SPARSE: (usize, u32) = (25_000, 456);

/// Results of the training benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    /// What history: `generated` (every kind of event) or `generated,
    /// purchases only`.
    pub history: String,
    /// Events trained on.
    pub events: u64,
    /// Customers in the generated world.
    pub customers: usize,
    /// Days of history.
    pub days: u32,
    /// Examples (training, validation).
    pub examples: (usize, usize),
    /// Trainable parameters.
    pub parameters: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Baseline: seconds to replay the events through `CustomerState::record`
    /// only (no features, no labels).
    pub plain_replay_seconds: f64,
    /// Replay with features and labels (example building), seconds.
    pub replay_seconds: f64,
    /// replay with features / plain replay.
    pub replay_ratio: f64,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Whole fit (all epochs), seconds.
    pub fit_seconds: f64,
    /// Evaluation and ONNX export (with its ONNX Runtime parity check), seconds.
    pub eval_export_seconds: f64,
    /// Seconds per 1M events for replay + one epoch.
    pub seconds_per_million_replay_epoch: f64,
    /// Seconds per 1M events for the whole run (replay, fit, eval + export).
    pub seconds_per_million_total: f64,
    /// The whole run (replay, fit, evaluation + export), seconds.
    pub total_seconds: f64,
    /// Candidate examples before sampling (`train.max_examples`).
    pub candidate_examples: u64,
    /// Validation purchase AUC by model (Transformer, ablation, baselines).
    pub purchase_auc: Vec<(String, f64)>,
    /// Seed of the generated world.
    pub seed: u64,
    /// The family served (`train.model`, judged on the margins).
    pub served: String,
    /// The served model's spend and forward-calibration figures
    /// (`spend_sum_ratio`, `spend_max_ratio`, `forward_purchase_ratio`,
    /// `forward_spend_ratio`), where measured.
    pub served_quality: Vec<(String, f64)>,
    /// Every margin of the report (paired bootstrap, 95 %).
    pub margins: Vec<crate::train::metrics::MarginLine>,
}

/// The sparse benchmark: one training per seed of the generated
/// purchases-only world.
#[derive(Debug, Clone, Serialize)]
pub struct SparseBench {
    /// One run per seed.
    pub runs: Vec<TrainBench>,
}

/// Seeds of the sparse benchmark's generated worlds.
pub const SPARSE_SEEDS: [u64; 3] = [11, 12, 13];

/// The generated history for about `events` events (180 days, customers
/// scaled to the generator's yield).
pub fn history_for(events: usize) -> (GeneratorConfig, Vec<Event>) {
    let customers = ((events as f64 / EVENTS_PER_CUSTOMER).ceil() as usize).max(20);
    let gen = GeneratorConfig {
        customers,
        days: TRAIN_DAYS,
        seed: 11,
        ..GeneratorConfig::default()
    };
    let mut world = history(&gen);
    let mut out = Vec::with_capacity(events + events / 8);
    while let Some(e) = world.next_event() {
        out.push(e);
    }
    (gen, out)
}

/// Plain replay: sort by event time (as the trainer does), then
/// `CustomerState::record` per event. Returns seconds and customers.
fn plain_replay(config: &Config, events: &mut [Event]) -> (f64, usize) {
    let limits = config.state.limits().state;
    let started = Instant::now();
    events.sort_by_key(|e| e.event_time_ms);
    let mut states: HashMap<&str, CustomerState> = HashMap::new();
    for e in events.iter() {
        states
            .entry(e.customer_id.as_str())
            .or_default()
            .record(e, limits);
    }
    (started.elapsed().as_secs_f64(), states.len())
}

/// Runs the training benchmark on about `events` generated events for
/// `epochs` epochs (early stopping off). Needs ONNX Runtime (the export is
/// checked with it).
pub fn train(config: &Config, events: usize, epochs: usize) -> BenchResult<TrainBench> {
    let (gen, history) = history_for(events);
    let mut cfg = config.clone();
    cfg.train.max_epochs = epochs.max(1);
    cfg.train.patience = cfg.train.patience.max(cfg.train.max_epochs);
    timed_training(&cfg, &gen, history, false)
}

/// Replays `history` plainly (the baseline), then trains on it into a
/// temporary registry (not promoted), and summarizes both.
fn timed_training(
    config: &Config,
    gen: &GeneratorConfig,
    mut history: Vec<Event>,
    ablate: bool,
) -> BenchResult<TrainBench> {
    let (plain, _) = plain_replay(config, &mut history);
    let n = history.len() as u64;
    let dir = std::env::temp_dir().join(super::ingest::unique_id("train"));
    let registry = Registry::new(dir.join("models"));
    let options = TrainOptions {
        version: Some("bench-1".into()),
        no_promote: true,
        ablate,
        ..Default::default()
    };
    let report = Progress::silent(|p| crate::train::train(config, history, &registry, &options, p));
    let _ = std::fs::remove_dir_all(&dir); // Best effort: a temporary directory.
    Ok(summarize(&report?, n, gen, plain))
}

/// The sparse case: a generated purchases-only history of
/// [`SPARSE`] customers and days (an orders table), trained as users run
/// `segstream train`: the `[train]` settings as configured, early stopping
/// and example sampling included. Goal: the whole run within 3 minutes.
pub fn train_sparse(config: &Config, seeds: &[u64], ablate: bool) -> BenchResult<SparseBench> {
    let mut runs = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let gen = GeneratorConfig {
            customers: SPARSE.0,
            days: SPARSE.1,
            seed,
            purchases_only: true,
            ..GeneratorConfig::default()
        };
        runs.push(timed_training(
            config,
            &gen,
            crate::generate::history(&gen).collect(),
            ablate,
        )?);
    }
    Ok(SparseBench { runs })
}

/// The benchmark figures from a training report and the baseline replay.
pub fn summarize(
    report: &TrainReport,
    events: u64,
    gen: &GeneratorConfig,
    plain_replay_seconds: f64,
) -> TrainBench {
    let (replay, fit, eval) = report.seconds;
    let epochs = report.fit.epochs.len();
    let epoch_seconds: f64 = report.fit.epochs.iter().map(|e| e.seconds).sum();
    let per_epoch = if epochs == 0 {
        0.0
    } else {
        epoch_seconds / epochs as f64
    };
    let millions = (events as f64 / 1e6).max(1e-9);
    let auc = |key: &str| report.manifest.metrics.get(key).copied();
    let purchase_auc = [
        ("Transformer", "candidate_transformer.purchase_auc"),
        (
            "same, sequence masked",
            "ablation_sequence_masked.purchase_auc",
        ),
        (
            "same, no classical inputs",
            "ablation_transformer_no_classical.purchase_auc",
        ),
        ("logistic regression", "baseline_logistic.purchase_auc"),
        (
            "logistic, no classical inputs",
            "ablation_logistic_no_classical.purchase_auc",
        ),
        ("BG/NBD + Gamma-Gamma", "baseline_bgnbd.purchase_auc"),
        ("RFM rules", "baseline_rules.purchase_auc"),
    ]
    .into_iter()
    .filter_map(|(name, key)| auc(key).map(|v| (name.to_string(), v)))
    .collect();
    TrainBench {
        history: if gen.purchases_only {
            "generated, purchases only".into()
        } else {
            "generated".into()
        },
        events,
        customers: gen.customers,
        days: gen.days,
        examples: report.examples,
        parameters: report.parameters,
        epochs,
        plain_replay_seconds,
        replay_seconds: replay,
        replay_ratio: replay / plain_replay_seconds.max(1e-9),
        seconds_per_epoch: per_epoch,
        fit_seconds: fit,
        eval_export_seconds: eval,
        seconds_per_million_replay_epoch: (replay + per_epoch) / millions,
        seconds_per_million_total: (replay + fit + eval) / millions,
        total_seconds: replay + fit + eval,
        candidate_examples: report.replay.candidates,
        purchase_auc,
        seed: gen.seed,
        served: report.served.as_str().to_string(),
        served_quality: [
            "spend_sum_ratio",
            "spend_max_ratio",
            "forward_purchase_ratio",
            "forward_spend_ratio",
        ]
        .into_iter()
        .filter_map(|k| auc(k).map(|v| (k.to_string(), v)))
        .collect(),
        margins: report.margins.clone(),
    }
}

/// The training results as a Markdown table.
pub fn train_markdown(b: &TrainBench) -> String {
    let mut s = format!(
        "| training ({} history: {} events, {} customers, {} days) | value |\n| --- | --- |\n",
        b.history, b.events, b.customers, b.days
    );
    s.push_str(&format!(
        "| plain replay through `CustomerState::record` (baseline) | {:.2} s |\n",
        b.plain_replay_seconds
    ));
    s.push_str(&format!(
        "| replay with features and labels (example building) | {:.2} s |\n",
        b.replay_seconds
    ));
    s.push_str(&format!(
        "| replay with features / plain replay | {:.1} |\n",
        b.replay_ratio
    ));
    s.push_str(&format!(
        "| examples (training / validation), of {} candidates | {} / {} |\n",
        b.candidate_examples, b.examples.0, b.examples.1
    ));
    s.push_str(&format!("| trainable parameters | {} |\n", b.parameters));
    s.push_str(&format!(
        "| seconds per epoch ({} epochs) | {:.2} s |\n",
        b.epochs, b.seconds_per_epoch
    ));
    s.push_str(&format!(
        "| evaluation + ONNX export | {:.2} s |\n",
        b.eval_export_seconds
    ));
    s.push_str(&format!(
        "| replay + one epoch, per 1M events | {:.1} s |\n",
        b.seconds_per_million_replay_epoch
    ));
    s.push_str(&format!(
        "| whole run, per 1M events | {:.1} s |\n",
        b.seconds_per_million_total
    ));
    s.push_str(&format!("| whole run | {:.1} s |\n", b.total_seconds));
    for (model, auc) in &b.purchase_auc {
        s.push_str(&format!(
            "| validation purchase AUC, {model} | {auc:.4} |\n"
        ));
    }
    s.push_str(&format!("| served (seed {}) | {} |\n", b.seed, b.served));
    for (k, v) in &b.served_quality {
        s.push_str(&format!("| served model's {k} | {v:.3} |\n"));
    }
    for m in &b.margins {
        s.push_str(&format!(
            "| {} − {}, {} | {:+.4} [{:+.4}, {:+.4}] ({}) |\n",
            m.challenger, m.reference, m.metric, m.difference, m.low, m.high, m.verdict
        ));
    }
    s
}

/// The sparse benchmark as Markdown: one line per seed (served model, its
/// spend and forward figures, the margins), then each run's table.
pub fn sparse_markdown(b: &SparseBench) -> String {
    let mut s = String::from(
        "| seed | served | spend sum ratio | largest prediction / largest actual | forward purchase ratio | margins (95 %) |\n\
         | --- | --- | ---: | ---: | ---: | --- |\n",
    );
    for r in &b.runs {
        let q = |k: &str| {
            r.served_quality
                .iter()
                .find(|(n, _)| n == k)
                .map_or("–".to_string(), |(_, v)| format!("{v:.3}"))
        };
        let margins: Vec<String> = r
            .margins
            .iter()
            .filter(|m| !m.challenger.starts_with("RFM") && !m.challenger.starts_with("same, seq"))
            .map(|m| {
                format!(
                    "{} − {} {} {:+.4} [{:+.4}, {:+.4}] {}",
                    m.challenger, m.reference, m.metric, m.difference, m.low, m.high, m.verdict
                )
            })
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.seed,
            r.served,
            q("spend_sum_ratio"),
            q("spend_max_ratio"),
            q("forward_purchase_ratio"),
            margins.join("; ")
        ));
    }
    for r in &b.runs {
        s.push('\n');
        s.push_str(&train_markdown(r));
    }
    s
}
