//! The scoring benchmark: the scorer against raw `Session::run` on the same
//! model and inputs.

use std::time::Instant;

use serde::Serialize;

use super::{ingest, train};
use crate::bench::{synthetic_event, BenchResult};
use crate::config::Config;
use crate::rng::Rng;
use crate::state::CustomerState;
use crate::telemetry::Metrics;

/// The model an end-to-end or scoring run scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eModel {
    /// The built-in rule model (cheap to score).
    Rules,
    /// The default Transformer, trained inside the benchmark on generated
    /// history (one epoch): what users run.
    Transformer,
    /// The logistic regression `segstream train` serves where the
    /// Transformer is not ahead, trained the same way.
    Logistic,
}

impl E2eModel {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            E2eModel::Rules => "rules",
            E2eModel::Transformer => "transformer",
            E2eModel::Logistic => "logistic",
        }
    }
}

/// Trains the default Transformer (the `[train]` architecture) on 30k
/// generated events for one epoch and promotes it in `registry` as
/// `transformer-bench`: the model users run, at its real size.
pub(super) async fn bench_transformer(
    config: &Config,
    registry: &crate::model::Registry,
) -> BenchResult<()> {
    bench_trained(
        config,
        registry,
        crate::config::ModelFamily::Transformer,
        "transformer-bench",
    )
    .await
}

/// Trains on 30k generated events for one epoch, serves `family` and
/// promotes it in `registry` as `version`.
pub(super) async fn bench_trained(
    config: &Config,
    registry: &crate::model::Registry,
    family: crate::config::ModelFamily,
    version: &str,
) -> BenchResult<()> {
    let (_, history) = train::history_for(30_000);
    let mut tc = config.clone();
    tc.train.max_epochs = 1;
    tc.train.model = family;
    let version = version.to_string();
    let registry = registry.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::train::Progress::silent(|p| {
            crate::train::train(
                &tc,
                history,
                &registry,
                &crate::train::TrainOptions {
                    version: Some(version),
                    force: true,
                    ..Default::default()
                },
                p,
            )
        })
    })
    .await??;
    if !report.promoted {
        return Err(format!("the bench model was not promoted: {}", report.decision).into());
    }
    Ok(())
}

/// One batch size of the scoring benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreBenchRow {
    /// Customers per batch.
    pub batch: usize,
    /// Raw `Session::run` (inputs borrowed, outputs read in place): customers/s.
    pub raw_customers_per_second: f64,
    /// Through the scorer (queue, inference thread, output copy): customers/s.
    pub scorer_customers_per_second: f64,
    /// Scorer overhead: 1 - scorer / raw (goal: under 10%).
    pub overhead: f64,
    /// Transformer only: the scorer on the same model file without its
    /// explanation output, customers/s.
    pub without_reasons_customers_per_second: Option<f64>,
    /// Transformer only: what explanations cost, the output and building
    /// each row's reasons: 1 - scorer / scorer without reasons (goal: under 10%).
    pub reasons_overhead: Option<f64>,
}

/// Scoring throughput: raw ONNX Runtime against the scorer, same model, same
/// inputs, same run. `Rules` scores the reference model; `Transformer` a
/// default-size Transformer trained inside the benchmark, also measured
/// without its explanation output (the cost of reasons).
pub async fn score(
    config: &Config,
    batches: &[usize],
    seconds_each: f64,
    model: E2eModel,
) -> Result<Vec<ScoreBenchRow>, Box<dyn std::error::Error + Send + Sync>> {
    use crate::features::{FeatureSpec, Featurizer};
    use crate::model::{reference, GoldenInputs, ModelFiles, Segment};
    use crate::score::{new_session, run_session, LoadedModel, Scorer};
    let limits = config.state.limits().state;
    let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits)?;
    let segments: Vec<String> = Segment::names();
    let dir = std::env::temp_dir().join(ingest::unique_id("score"));
    let files = match model {
        E2eModel::Rules => {
            let (onnx, manifest) = reference::build(&featurizer, &segments, "bench", 1)?;
            ModelFiles {
                dir: Default::default(),
                onnx,
                manifest,
            }
        }
        E2eModel::Transformer | E2eModel::Logistic => {
            let registry = crate::model::Registry::new(dir.join("models"));
            let (family, version) = match model {
                E2eModel::Logistic => (crate::config::ModelFamily::Logistic, "logistic-bench"),
                _ => (crate::config::ModelFamily::Transformer, "transformer-bench"),
            };
            let trained = bench_trained(config, &registry, family, version).await;
            let files = trained.and_then(|()| Ok(ModelFiles::read(&registry.dir(version)?)?));
            let _ = std::fs::remove_dir_all(&dir); // Best effort: a temporary directory.
            files?
        }
    };
    // The same model without its explanation output (Transformer only).
    let plain = if !files
        .manifest
        .golden
        .outputs
        .segment_contributions
        .is_empty()
    {
        let mut plain = files.clone();
        plain.onnx =
            crate::model::onnx::without_output(&files.onnx, crate::model::SEGMENT_CONTRIBUTIONS)?;
        plain.manifest.golden.outputs.segment_contributions.clear();
        Some(plain)
    } else {
        None
    };
    let mut cfg = config.score.clone();
    cfg.inference_threads = 1;
    let metrics = Metrics::new()?;
    let scorer = Scorer::start(
        &cfg,
        LoadedModel::load(&cfg, &files, limits, 1)?,
        metrics.clone(),
    );
    let plain_scorer = match &plain {
        Some(p) => Some(Scorer::start(
            &cfg,
            LoadedModel::load(&cfg, p, limits, 1)?,
            metrics,
        )),
        None => None,
    };
    let (mut raw_session, _) = new_session(&cfg, "bench", &files.onnx)?;
    let reasons = config.decide.reasons;

    let max = batches.iter().copied().max().unwrap_or(1);
    let mut rng = Rng::from_state(42);
    let states: Vec<CustomerState> = (0..max)
        .map(|c| {
            let customer = format!("bench-{c}");
            let n = 1 + rng.below(80);
            let mut s = CustomerState::default();
            for i in 0..n {
                let t = 1_790_000_000_000 + rng.below(90 * 86_400_000) as i64;
                s.record(&synthetic_event(&mut rng, &customer, i, t), limits);
            }
            s
        })
        .collect();
    let as_of = 1_790_000_000_000 + 91 * 86_400_000;
    let mut rows = Vec::new();
    for &b in batches {
        let refs: Vec<&CustomerState> = states.iter().take(b).collect();
        let batch = featurizer.featurize(&refs, as_of)?;
        // What the scorer runs the model on: for a model with a dynamic
        // event dimension, the events of the batch's longest history.
        let mut trimmed = None;
        let model = scorer.current();
        let inputs = GoldenInputs::from_views(b, &model.inputs(&batch, &mut trimmed)?);
        let spec = featurizer.spec().clone();
        // Warm up both paths once.
        run_session(&mut raw_session, &inputs, &spec, segments.len())?;
        scorer.score(scorer.current(), batch.clone()).await?;

        let timed = |mut f: Box<dyn FnMut() -> Result<(), crate::score::ScoreError> + '_>| {
            let started = Instant::now();
            let mut runs = 0u64;
            while runs < 3 || started.elapsed().as_secs_f64() < seconds_each {
                f()?;
                runs += 1;
            }
            Ok::<f64, crate::score::ScoreError>(
                (runs as f64 * b as f64) / started.elapsed().as_secs_f64(),
            )
        };
        let raw = timed(Box::new(|| {
            run_session(&mut raw_session, &inputs, &spec, 5).map(|_| ())
        }))?;
        // The scorer, and (Transformer) the scorer without explanations,
        // alternated in rounds so that drift in the machine's speed hits
        // both alike. With explanations, every row's reasons are built too.
        let (mut with, mut without) = ((0u64, 0f64), (0u64, 0f64));
        let started = Instant::now();
        while with.0 < 3 || started.elapsed().as_secs_f64() < seconds_each * 2.0 {
            let t = Instant::now();
            let scores = scorer.score(scorer.current(), batch.clone()).await?;
            if plain_scorer.is_some() {
                for i in 0..scores.rows {
                    let best = crate::decide::argmax(scores.segment_probs(i)).unwrap_or(0);
                    std::hint::black_box(crate::decide::explain(
                        scores.contributions(i),
                        best,
                        None,
                        reasons,
                    ));
                }
            }
            with = (with.0 + 1, with.1 + t.elapsed().as_secs_f64());
            if let Some(p) = &plain_scorer {
                let t = Instant::now();
                p.score(p.current(), batch.clone()).await?;
                without = (without.0 + 1, without.1 + t.elapsed().as_secs_f64());
            }
        }
        let rate = |(runs, secs): (u64, f64)| runs as f64 * b as f64 / secs.max(1e-9);
        let through = rate(with);
        let plain_rate = (without.0 > 0).then(|| rate(without));
        rows.push(ScoreBenchRow {
            batch: b,
            raw_customers_per_second: raw,
            scorer_customers_per_second: through,
            overhead: 1.0 - through / raw,
            without_reasons_customers_per_second: plain_rate,
            reasons_overhead: plain_rate.map(|p| 1.0 - through / p),
        });
    }
    scorer.shutdown();
    if let Some(p) = plain_scorer {
        p.shutdown();
    }
    Ok(rows)
}

/// The scoring results as a Markdown table.
pub fn score_markdown(rows: &[ScoreBenchRow]) -> String {
    let mut s = String::from(
        "| batch | raw Session::run (customers/s) | scorer (customers/s) | scorer / raw | overhead |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.1}% |\n",
            r.batch,
            r.raw_customers_per_second,
            r.scorer_customers_per_second,
            r.scorer_customers_per_second / r.raw_customers_per_second,
            r.overhead * 100.0
        ));
    }
    if rows.iter().any(|r| r.reasons_overhead.is_some()) {
        s.push_str(
            "\n| batch | scorer without explanations (customers/s) | scorer with reasons (customers/s) | reasons overhead |\n| --- | --- | --- | --- |\n",
        );
        for r in rows {
            if let (Some(p), Some(o)) = (r.without_reasons_customers_per_second, r.reasons_overhead)
            {
                s.push_str(&format!(
                    "| {} | {:.0} | {:.0} | {:.1}% |\n",
                    r.batch,
                    p,
                    r.scorer_customers_per_second,
                    o * 100.0
                ));
            }
        }
    }
    s
}
