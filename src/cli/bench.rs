//! `segstream bench`: one benchmark or the whole suite.

use std::path::PathBuf;

use clap::Subcommand;
use segstream::config::Config;
use segstream::error::{Doing, ErrorClass, Failure};
use tracing::info;

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Every benchmark in turn; writes BENCHMARKS.md (with the machine
    /// description) and one JSON document.
    All(BenchAllArgs),
    /// Ingest + decode + validate + state update (scoring off) versus raw
    /// librdkafka consumption of the same generated input.
    Ingest {
        /// Events to generate into fresh input topics.
        #[arg(long, default_value_t = 300_000)]
        events: usize,
        /// Partitions per input topic (a multiple of `pipeline.threads`
        /// shares them evenly in the threaded pass).
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Rounds of (raw read, ingest pass); the best of each counts.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Instead: the per-record step alone, on records encoded in memory
        /// (no broker, no client, one thread), CPU and wall time per record
        /// for each of `rounds` passes: a steady yardstick for segstream's
        /// own intake cost.
        #[arg(long)]
        in_memory: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Precision and recall of each risk rule on generated data with ground
    /// truth (the realistic world plus bots, brushing rings, order rushes and
    /// review bursts). Offline.
    Risk {
        /// Ordinary customers in the world.
        #[arg(long, default_value_t = 2000)]
        customers: usize,
        /// Days of history.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Training time per 1M events (generated history, temporary registry)
    /// versus a plain state replay of the same events. Needs ONNX Runtime.
    Train {
        /// About this many events of generated history (180 days).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Epochs (early stopping off).
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Instead: the sparse case, generated purchases-only histories of
        /// 25k customers over 15 months (one per seed), trained with the
        /// `[train]` settings as configured (early stopping and example
        /// sampling included).
        #[arg(long)]
        sparse: bool,
        /// Seeds of the sparse worlds.
        #[arg(long, value_delimiter = ',', default_values_t = segstream::bench::SPARSE_SEEDS)]
        seeds: Vec<u64>,
        /// Sparse: also fit each Transformer without the classical inputs
        /// (a second fit per seed), to measure what they add.
        #[arg(long)]
        ablate: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// End to end with transactions: sustained events/s (vs raw librdkafka)
    /// and event → SegmentChange latency at half that rate.
    E2e {
        /// Events in the throughput run.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 10.0)]
        latency_seconds: f64,
        /// The model scored: `rules` (built in) or `transformer` (the
        /// default Transformer, trained inside the benchmark first).
        #[arg(long, value_enum, default_value = "rules")]
        model: segstream::bench::E2eModel,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Scoring throughput: raw ONNX Runtime `Session::run` versus the scorer.
    Score {
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,64,512,4096")]
        batches: Vec<usize>,
        /// Seconds of measurement per batch size and path.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// The model scored: `rules` (the built-in reference model) or
        /// `transformer` (the default Transformer, trained inside the
        /// benchmark; also measured without its explanation output).
        #[arg(long, value_enum, default_value = "rules")]
        model: segstream::bench::E2eModel,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Memory per customer and changelog restore rate (vs raw librdkafka).
    State {
        /// Customers to simulate.
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// Skip the restore measurement (no broker needed).
        #[arg(long)]
        no_kafka: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Sizes of `segstream bench all`; `--quick` shrinks every default.
#[derive(clap::Args)]
pub(crate) struct BenchAllArgs {
    /// Small sizes everywhere (a smoke run of a few minutes).
    #[arg(long)]
    quick: bool,
    /// Benchmarks to leave out (ingest, state, score, e2e, train).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Ingest: events (default 300000; quick 30000).
    #[arg(long)]
    ingest_events: Option<usize>,
    /// State: customer counts, restore measured at the first (default
    /// 100000,1000000; quick 10000).
    #[arg(long, value_delimiter = ',')]
    state_customers: Vec<usize>,
    /// Scoring: batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512,4096")]
    score_batches: Vec<usize>,
    /// Scoring: seconds per batch size and path (default 2; quick 0.3).
    #[arg(long)]
    score_seconds: Option<f64>,
    /// End to end: events in the throughput run (default 600000 with the
    /// rules model, 300000 with the Transformer, whose run is bound by the
    /// model; quick 10000). The rules model's run needs the larger input:
    /// the rate counts only after every stream thread holds its
    /// partitions, which takes a consumer heartbeat or two (3 s each) while
    /// the first thread already consumes everything.
    #[arg(long)]
    e2e_events: Option<usize>,
    /// End to end: seconds of the latency run (default 10; quick 3).
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// Training: about this many events (default 1000000; quick 50000).
    #[arg(long)]
    train_events: Option<usize>,
    /// Training: epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// A sentence on the conditions, written under the machine description.
    #[arg(long, default_value = "")]
    conditions: String,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/all.json")]
    json: PathBuf,
}

/// Runs one benchmark, prints its Markdown table and optionally writes JSON.
pub(crate) async fn bench(config: Config, command: BenchCommand) -> Result<(), Failure> {
    use segstream::bench;
    // A benchmark's failures are the broker's or the runtime's.
    let lift = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(ErrorClass::External, e);
    let (markdown, value, json) = match command {
        BenchCommand::All(a) => return bench_all(&config, a).await,
        BenchCommand::Ingest {
            events,
            partitions,
            rounds,
            in_memory: true,
            json,
        } => {
            let c = config.clone();
            let r = tokio::task::spawn_blocking(move || {
                bench::ingest_in_memory(&c, events, partitions, rounds)
            })
            .await?
            .map_err(lift)?;
            (
                bench::memory_ingest_markdown(&r),
                serde_json::to_value(&r)?,
                json,
            )
        }
        BenchCommand::Ingest {
            events,
            partitions,
            rounds,
            in_memory: false,
            json,
        } => {
            let r = bench::ingest(&config, events, partitions, rounds)
                .await
                .map_err(lift)?;
            (bench::ingest_markdown(&r), serde_json::to_value(&r)?, json)
        }
        BenchCommand::Risk {
            customers,
            days,
            json,
        } => {
            let c = config.clone();
            let r = tokio::task::spawn_blocking(move || bench::risk(&c, customers, days))
                .await?
                .map_err(lift)?;
            (bench::risk_markdown(&r), serde_json::to_value(&r)?, json)
        }
        BenchCommand::Train {
            events,
            epochs,
            sparse,
            seeds,
            ablate,
            json,
        } => {
            let c = config.clone();
            if sparse {
                let r =
                    tokio::task::spawn_blocking(move || bench::train_sparse(&c, &seeds, ablate))
                        .await?
                        .map_err(lift)?;
                (bench::sparse_markdown(&r), serde_json::to_value(&r)?, json)
            } else {
                let r = tokio::task::spawn_blocking(move || bench::train(&c, events, epochs))
                    .await?
                    .map_err(lift)?;
                (bench::train_markdown(&r), serde_json::to_value(&r)?, json)
            }
        }
        BenchCommand::State {
            customers,
            no_kafka,
            json,
        } => {
            let r = bench::state(&config, customers, !no_kafka)
                .await
                .map_err(lift)?;
            (bench::state_markdown(&r), serde_json::to_value(&r)?, json)
        }
        BenchCommand::Score {
            batches,
            seconds,
            model,
            json,
        } => {
            let r = bench::score(&config, &batches, seconds, model)
                .await
                .map_err(lift)?;
            (bench::score_markdown(&r), serde_json::to_value(&r)?, json)
        }
        BenchCommand::E2e {
            events,
            latency_seconds,
            model,
            json,
        } => {
            let r = bench::e2e(&config, events, latency_seconds, model)
                .await
                .map_err(lift)?;
            (bench::e2e_markdown(&r), serde_json::to_value(&r)?, json)
        }
    };
    println!("{markdown}");
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .doing_with(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs every benchmark not skipped, then writes the Markdown and JSON
/// reports; a failed benchmark is reported in both and fails the command.
pub(crate) async fn bench_all(config: &Config, a: BenchAllArgs) -> Result<(), Failure> {
    use segstream::bench::{self, Outcome, Suite};
    let pick = |full: f64, quick: f64| if a.quick { quick } else { full };
    let run = |name: &str| !a.skip.iter().any(|s| s == name);
    let ingest_events = a
        .ingest_events
        .unwrap_or(pick(300_000.0, 30_000.0) as usize);
    let state_customers = if a.state_customers.is_empty() {
        if a.quick {
            vec![10_000]
        } else {
            vec![100_000, 1_000_000]
        }
    } else {
        a.state_customers.clone()
    };
    let score_seconds = a.score_seconds.unwrap_or(pick(2.0, 0.3));
    let e2e_events = a.e2e_events.unwrap_or(pick(600_000.0, 10_000.0) as usize);
    let e2e_transformer_events = a.e2e_events.unwrap_or(pick(300_000.0, 10_000.0) as usize);
    let latency_seconds = a.latency_seconds.unwrap_or(pick(10.0, 3.0));
    let train_events = a
        .train_events
        .unwrap_or(pick(1_000_000.0, 50_000.0) as usize);
    // The command line as run, less the conditions sentence (printed apart).
    let mut command = vec!["segstream".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--conditions" {
            args.next();
        } else if !arg.starts_with("--conditions=") {
            command.push(arg);
        }
    }
    let command = command.join(" ");
    let mut suite = Suite {
        machine: bench::Machine::describe(),
        conditions: a.conditions.clone(),
        command,
        ingest: Outcome::Skipped,
        state: Vec::new(),
        score: Outcome::Skipped,
        e2e: Outcome::Skipped,
        e2e_transformer: Outcome::Skipped,
        train: Outcome::Skipped,
        train_sparse: Outcome::Skipped,
    };
    if run("ingest") {
        info!(events = ingest_events, "Running the ingest benchmark.");
        suite.ingest = Outcome::from_result(bench::ingest(config, ingest_events, 6, 2).await);
    }
    if run("state") {
        for (i, &customers) in state_customers.iter().enumerate() {
            info!(customers, "Running the state benchmark.");
            let r = bench::state(config, customers, i == 0).await;
            suite.state.push(Outcome::from_result(r));
        }
    }
    if run("score") {
        info!("Running the scoring benchmark.");
        let r = bench::score(
            config,
            &a.score_batches,
            score_seconds,
            bench::E2eModel::Transformer,
        )
        .await;
        suite.score = Outcome::from_result(r);
    }
    if run("e2e") {
        info!(events = e2e_events, "Running the end-to-end benchmark.");
        let r = bench::e2e(config, e2e_events, latency_seconds, bench::E2eModel::Rules).await;
        suite.e2e = Outcome::from_result(r);
        info!("Running the end-to-end benchmark with a trained Transformer.");
        let r = bench::e2e(
            config,
            e2e_transformer_events,
            latency_seconds,
            bench::E2eModel::Transformer,
        )
        .await;
        suite.e2e_transformer = Outcome::from_result(r);
    }
    if run("train") {
        info!(events = train_events, "Running the training benchmark.");
        let (c, epochs) = (config.clone(), a.epochs);
        let r = tokio::task::spawn_blocking(move || bench::train(&c, train_events, epochs)).await?;
        suite.train = Outcome::from_result(r);
        info!("Running the sparse training benchmark.");
        let c = config.clone();
        let r = tokio::task::spawn_blocking(move || {
            bench::train_sparse(&c, &bench::SPARSE_SEEDS, false)
        })
        .await?;
        suite.train_sparse = Outcome::from_result(r);
    }
    let markdown = bench::suite_markdown(&suite);
    println!("{markdown}");
    for (path, bytes) in [
        (&a.markdown, markdown.into_bytes()),
        (&a.json, serde_json::to_vec_pretty(&suite)?),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).doing_with(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, bytes).doing_with(|| format!("writing {}", path.display()))?;
    }
    let failed = suite.failures();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorClass::Internal,
            format!("benchmarks failed: {}", failed.join(", ")).into(),
        ))
    }
}
