//! The `segstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rdkafka::consumer::Consumer;
use tracing::{error, info};

use segstream::config::Config;
use segstream::telemetry::{self, Metrics};

/// mimalloc keeps freed memory for reuse; with the system allocator, the
/// trainer's short-lived large tensors cost a page fault per page on every
/// step (a quarter of training time in a profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (linked through the `mimalloc` crate).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2.x's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// For the training commands: mimalloc never hands freed memory back to the
/// kernel. By default it does so 10 ms after a free, and the trainer, which
/// frees and allocates megabytes of tensors at every step, then pays for
/// fresh zeroed pages each time: a fifth of a sparse-history training run's
/// samples were the kernel clearing pages, and one epoch took 27 s instead
/// of 22 s (`segstream bench train --sparse`). The trainer's peak is a few
/// batches' tensors; the pipeline keeps the default. `MIMALLOC_PURGE_DELAY`
/// in the environment still decides when set.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer option; mimalloc
        // reads it when it next considers purging.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

/// Streaming customer segmentation over Kafka.
#[derive(Parser)]
#[command(name = "segstream", version, about)]
struct Cli {
    /// Configuration file (TOML). Environment variables `SEGSTREAM__SECTION__KEY`
    /// override it.
    #[arg(long, short, global = true, env = "SEGSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the streaming pipeline (a consumer-group member; scale by running more).
    Run,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Produce the reference corpus to the input topics: every event kind in
    /// every accepted wire format, then every bad-record case (smoke-tests the
    /// wiring and the dead-letter topic).
    Samples {
        /// Customers to produce valid events for (18 events each).
        #[arg(long, default_value_t = 3)]
        customers: usize,
    },
    /// Generate realistic synthetic behaviour (seeded): to the input topics
    /// (history and/or live at a rate) or to an NDJSON/Parquet history file.
    Generate(segstream::generate::cli::GenerateArgs),
    /// Benchmarks, reported as ratios against baselines measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Dead-letter topic tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Segment output tools.
    Segments {
        #[command(subcommand)]
        command: SegmentsCommand,
    },
    /// Train a model on history, evaluate it against baselines and the
    /// champion, export it to ONNX and publish it to the registry (promoted
    /// when not worse than the champion). Once, or every `--every`.
    Train(TrainArgs),
    /// Score every customer of a history file as of a time with a model
    /// directory (backfills, audits, offline evaluation).
    Predict(PredictArgs),
    /// Erase customers: write an erasure request per id to
    /// `privacy.erasure_topic`; the running pipeline removes their state,
    /// tombstones the changelog and the current topic, and audits it.
    Forget {
        /// A customer id as the producers key it (repeat for several).
        #[arg(long = "customer", required = true)]
        customers: Vec<String>,
    },
    /// Model tools: look at, check, or create model directories.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print a model directory's manifest and its ONNX input/output signature.
    Inspect {
        /// The model directory (holding model.onnx and manifest.json).
        dir: PathBuf,
    },
    /// Load a model directory into ONNX Runtime and run every check the
    /// pipeline runs before a hot swap (contract, feature spec, golden outputs).
    Validate {
        /// The model directory.
        dir: PathBuf,
    },
    /// Publish a built-in model into a registry: the recency/frequency/
    /// monetary rules (`--kind rules`, a sensible first model) or the seeded,
    /// untrained reference network (`--kind reference`, for smoke tests).
    Builtin {
        /// `rules` or `reference`.
        #[arg(long, default_value = "rules")]
        kind: String,
        /// Registry directory (default: score.registry).
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Version name (default: the kind plus "-1").
        #[arg(long)]
        version: Option<String>,
        /// Weight seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also make it the live version (CURRENT).
        #[arg(long)]
        promote: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
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
        /// Instead: the sparse case, a generated purchases-only history of
        /// 25k customers over 15 months, trained with the `[train]` settings
        /// as configured (early stopping and example sampling included).
        #[arg(long)]
        sparse: bool,
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
        #[arg(long, default_value = "rules", value_parser = ["rules", "transformer"])]
        model: String,
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
        #[arg(long, default_value = "rules", value_parser = ["rules", "transformer"])]
        model: String,
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
struct BenchAllArgs {
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
    /// End to end: events in the throughput run (default 100000; quick 10000).
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

/// How long and how much a `show` command reads.
#[derive(clap::Args)]
struct ShowArgs {
    /// Stop after this long without a new record.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Stop after this many records.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Segments: show only reclassifications (skip each customer's first
    /// segment).
    #[arg(long)]
    changes_only: bool,
}

#[derive(Subcommand)]
enum SegmentsCommand {
    /// Print segment changes (customer, from → to, trigger, probabilities)
    /// from the beginning of the output topic until it has been idle for `--idle`.
    Show(ShowArgs),
    /// Print risk flags raised and cleared (customer, rule, severity,
    /// evidence) from the beginning of `output.risk_topic` until it has been
    /// idle for `--idle`.
    Risk(ShowArgs),
    /// Write every customer's current classification, read from the
    /// current-membership topic (`output.current_topic`) to its end, to a
    /// Parquet (`.parquet`) or NDJSON (`.ndjson`, `.jsonl`, `.json`) file.
    Snapshot {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Give up if the topic is not read to its end within this.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print dead-letter records (reason, source, message) from the beginning
    /// of the topic until it has been idle for `--idle`.
    Show(ShowArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate a configuration, reporting every problem at once.
    Check {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
        /// Print the effective configuration (secrets redacted) when valid.
        #[arg(long)]
        print: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file, print },
        } => config_check(file.or(cli.config), print),
        command => {
            let config = match Config::load(cli.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init_logging(&config.telemetry);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                match command {
                    Command::Run => run(config).await,
                    Command::Forget { customers } => {
                        let n = segstream::privacy::request_erasure(&config, &customers)
                            .await
                            .map_err(anyhow::Error::msg)?;
                        println!(
                            "{n} erasure request(s) written to {}; the pipeline applies them in its next cycle.",
                            config.privacy.erasure_topic
                        );
                        Ok(())
                    }
                    Command::Samples { customers } => samples(config, customers).await,
                    Command::Dlq {
                        command: DlqCommand::Show(a),
                    } => dlq_show(config, a.idle, a.max).await,
                    Command::Generate(a) => {
                        segstream::generate::cli::run(&config, a, shutdown_signal())
                            .await
                            .map_err(anyhow::Error::from)
                    }
                    Command::Bench { command } => bench(config, command).await,
                    Command::Model { command } => model_command(config, command),
                    Command::Train(a) => {
                        keep_freed_memory();
                        train_command(config, a).await
                    }
                    Command::Predict(a) => predict_command(config, a),
                    Command::Segments {
                        command: SegmentsCommand::Show(a),
                    } => segments_show(config, a.idle, a.max, a.changes_only).await,
                    Command::Segments {
                        command: SegmentsCommand::Risk(a),
                    } => risk_show(config, a.idle, a.max).await,
                    Command::Segments {
                        command: SegmentsCommand::Snapshot { out, timeout },
                    } => {
                        let counts = tokio::task::spawn_blocking(move || {
                            segstream::pipeline::snapshot::snapshot(&config, &out, timeout)
                                .map(|c| (c, out))
                        })
                        .await?
                        .map_err(anyhow::Error::msg)?;
                        let (c, out) = counts;
                        println!(
                            "{} customers written to {} ({} records read, {} undecodable)",
                            c.customers,
                            out.display(),
                            c.records,
                            c.undecodable
                        );
                        Ok(())
                    }
                    Command::Config { .. } => Ok(()),
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = format!("{e:#}"), "segstream stopped on an error.");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs one benchmark, prints its Markdown table and optionally writes JSON.
async fn bench(config: Config, command: BenchCommand) -> anyhow::Result<()> {
    use segstream::bench;
    let lift = |e: Box<dyn std::error::Error + Send + Sync>| anyhow::anyhow!("{e}");
    let (markdown, value, json) = match command {
        BenchCommand::All(a) => return bench_all(&config, a).await,
        BenchCommand::Ingest {
            events,
            partitions,
            rounds,
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
            json,
        } => {
            keep_freed_memory();
            let c = config.clone();
            let r = tokio::task::spawn_blocking(move || {
                if sparse {
                    bench::train_sparse(&c)
                } else {
                    bench::train(&c, events, epochs)
                }
            })
            .await?
            .map_err(lift)?;
            (bench::train_markdown(&r), serde_json::to_value(&r)?, json)
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
            let model = if model == "transformer" {
                bench::E2eModel::Transformer
            } else {
                bench::E2eModel::Rules
            };
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
            let model = if model == "transformer" {
                bench::E2eModel::Transformer
            } else {
                bench::E2eModel::Rules
            };
            let r = bench::e2e(&config, events, latency_seconds, model)
                .await
                .map_err(lift)?;
            (bench::e2e_markdown(&r), serde_json::to_value(&r)?, json)
        }
    };
    println!("{markdown}");
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs every benchmark not skipped, then writes the Markdown and JSON
/// reports; a failed benchmark is reported in both and fails the command.
async fn bench_all(config: &Config, a: BenchAllArgs) -> anyhow::Result<()> {
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
    let e2e_events = a.e2e_events.unwrap_or(pick(300_000.0, 10_000.0) as usize);
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
            e2e_events,
            latency_seconds,
            bench::E2eModel::Transformer,
        )
        .await;
        suite.e2e_transformer = Outcome::from_result(r);
    }
    if run("train") {
        // Last in the suite: the pipeline benchmarks above ran with the
        // allocator's default, as `segstream run` does.
        keep_freed_memory();
        info!(events = train_events, "Running the training benchmark.");
        let (c, epochs) = (config.clone(), a.epochs);
        let r = tokio::task::spawn_blocking(move || bench::train(&c, train_events, epochs)).await?;
        suite.train = Outcome::from_result(r);
        info!("Running the sparse training benchmark.");
        let c = config.clone();
        let r = tokio::task::spawn_blocking(move || bench::train_sparse(&c)).await?;
        suite.train_sparse = Outcome::from_result(r);
    }
    let markdown = bench::suite_markdown(&suite);
    println!("{markdown}");
    for (path, bytes) in [
        (&a.markdown, markdown.into_bytes()),
        (&a.json, serde_json::to_vec_pretty(&suite)?),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = suite.failures();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("benchmarks failed: {}", failed.join(", "))
    }
}

fn model_command(config: Config, command: ModelCommand) -> anyhow::Result<()> {
    use segstream::model::{reference, ModelFiles, Registry, DEFAULT_SEGMENTS};
    use segstream::score::{signature, LoadedModel};
    let limits = config.state.limits().state;
    match command {
        ModelCommand::Inspect { dir } => {
            let files = ModelFiles::read(&dir)?;
            let m = &files.manifest;
            println!("version:        {}", m.version);
            println!("created_at_ms:  {}", m.created_at_ms);
            println!("description:    {}", m.description);
            println!("segments:       {}", m.segments.join(", "));
            let s = &m.feature_spec;
            println!(
                "feature spec:   v{} N={} E={} T={} F={} kinds={} category_buckets={} text_buckets={} tokenizer={}",
                s.version, s.max_events, s.event_numeric_dim, s.text_tokens, s.customer_dim,
                s.kind_vocab, s.category_buckets, s.text_buckets, s.tokenizer
            );
            if let Some(w) = &m.training_window {
                println!("training:       {} .. {} (ms)", w.from_ms, w.to_ms);
            }
            for (k, v) in &m.metrics {
                println!("metric:         {k} = {v}");
            }
            println!(
                "golden:         {} rows, tolerance {:e}",
                m.golden.inputs.batch, m.golden.tolerance
            );
            println!("model.onnx:     {} bytes", files.onnx.len());
            match signature(&config.score, &m.version, &files.onnx) {
                Ok((inputs, outputs)) => {
                    for i in inputs {
                        println!("input:          {i}");
                    }
                    for o in outputs {
                        println!("output:         {o}");
                    }
                }
                Err(e) => println!("onnx:           cannot load: {e}"),
            }
            Ok(())
        }
        ModelCommand::Validate { dir } => {
            let files = ModelFiles::read(&dir)?;
            let model = LoadedModel::load(&config.score, &files, limits, 1)?;
            println!(
                "model {} is valid: contract, feature spec and {} golden rows pass on {}",
                model.version,
                files.manifest.golden.inputs.batch,
                model.provider.as_str()
            );
            Ok(())
        }
        ModelCommand::Builtin {
            kind,
            registry,
            version,
            seed,
            promote,
        } => {
            let version = version.unwrap_or_else(|| format!("{kind}-1"));
            let registry = Registry::new(registry.unwrap_or(config.score.registry.clone()));
            let featurizer = segstream::features::Featurizer::new(
                segstream::features::FeatureSpec::for_state(limits),
                limits,
            )?;
            let segments: Vec<String> = DEFAULT_SEGMENTS.iter().map(|s| s.to_string()).collect();
            let (onnx, manifest) = match kind.as_str() {
                "rules" => segstream::model::rules::build(&featurizer, &version),
                "reference" => reference::build(&featurizer, &segments, &version, seed),
                other => anyhow::bail!("unknown built-in model {other:?}: use rules or reference"),
            };
            let dir = registry.publish(&onnx, &manifest)?;
            println!("published {}", dir.display());
            if promote {
                registry.promote(&version)?;
                println!("promoted {version} (CURRENT)");
            }
            Ok(())
        }
    }
}

async fn samples(config: Config, customers: usize) -> anyhow::Result<()> {
    let report = segstream::generate::samples::produce(&config, customers).await?;
    for (topic, n) in &report.valid {
        println!("produced {n:>4} valid events to {topic}");
    }
    let bad: usize = report.bad.values().sum();
    println!("produced {bad:>4} bad records; the dead-letter topic must receive them with these reasons:");
    for (reason, n) in &report.bad {
        println!("    {n} x {}", reason.as_str());
    }
    Ok(())
}

/// A throwaway read_committed consumer of `topic` from its beginning.
async fn risk_show(config: Config, idle: Duration, max: usize) -> anyhow::Result<()> {
    use prost::Message as _;
    use rdkafka::message::Message;
    use segstream::event::proto::RiskFlag;
    let topic = &config.output.risk_topic;
    anyhow::ensure!(
        !topic.is_empty(),
        "output.risk_topic is empty: the risk rules do not run"
    );
    let consumer = reader(&config, topic)?;
    let mut shown = 0;
    while shown < max {
        let msg = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.context("reading the risk topic")?,
        };
        let bytes = msg.payload().unwrap_or_default();
        let line = match config.output.format {
            segstream::config::OutputFormat::Protobuf => RiskFlag::decode(bytes)
                .map(|f| {
                    let mut evidence: Vec<String> = f
                        .evidence
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.2}"))
                        .collect();
                    evidence.sort();
                    format!(
                        "{:<22} {:<8} {:<19} {:<6} score {:.2} [{}]",
                        f.customer_id,
                        if f.raised { "RAISED" } else { "cleared" },
                        f.rule,
                        f.severity,
                        f.score,
                        evidence.join(", ")
                    )
                })
                .unwrap_or_else(|e| format!("(undecodable record: {e})")),
            segstream::config::OutputFormat::Json => String::from_utf8_lossy(bytes).into_owned(),
        };
        println!("{line}");
        shown += 1;
    }
    println!("({shown} risk flags shown from {topic})");
    Ok(())
}

fn reader(config: &Config, topic: &str) -> anyhow::Result<rdkafka::consumer::StreamConsumer> {
    let mut client = config.kafka.consumer_config()?;
    client
        .set(
            "group.id",
            format!("{}-show-{}", config.kafka.group_id, std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    let consumer: rdkafka::consumer::StreamConsumer =
        client.create().context("creating the consumer")?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    Ok(consumer)
}

async fn segments_show(
    config: Config,
    idle: Duration,
    max: usize,
    changes_only: bool,
) -> anyhow::Result<()> {
    use prost::Message as _;
    use rdkafka::message::Message;
    use segstream::event::proto::SegmentChange;
    let topic = config.output.topic.replace("{segment}", "*");
    anyhow::ensure!(
        !config.output.topic.contains("{segment}"),
        "output.topic is a per-segment template ({topic}); read those topics individually"
    );
    let consumer = reader(&config, &config.output.topic)?;
    let mut shown = 0;
    while shown < max {
        let msg = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.context("reading the segment topic")?,
        };
        let bytes = msg.payload().unwrap_or_default();
        let change = match config.output.format {
            segstream::config::OutputFormat::Protobuf => SegmentChange::decode(bytes)
                .map(|c| {
                    if changes_only && c.previous_segment.is_empty() {
                        return String::new();
                    }
                    let mut scores: Vec<(String, f32)> = c.scores.clone().into_iter().collect();
                    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top: Vec<String> = scores
                        .iter()
                        .take(3)
                        .map(|(s, p)| format!("{s} {p:.2}"))
                        .collect();
                    let why: Vec<String> = c
                        .reasons
                        .iter()
                        .take(2)
                        .map(|r| format!("{} {:+.2}", r.feature, r.contribution))
                        .collect();
                    let why = if why.is_empty() {
                        String::new()
                    } else {
                        format!(" why {}", why.join(", "))
                    };
                    format!(
                        "{:<22} {:>13} -> {:<13} {:<12} [{}] buy {:.2} churn {:.2} model {}{why}",
                        c.customer_id,
                        if c.previous_segment.is_empty() {
                            "(new)"
                        } else {
                            &c.previous_segment
                        },
                        c.segment,
                        segstream::decide::trigger_name(c.trigger),
                        top.join(", "),
                        c.purchase_probability,
                        c.churn_probability,
                        c.model_version
                    )
                })
                .unwrap_or_else(|e| format!("(undecodable record: {e})")),
            segstream::config::OutputFormat::Json => String::from_utf8_lossy(bytes).into_owned(),
        };
        if change.is_empty() {
            continue;
        }
        println!("{change}");
        shown += 1;
    }
    println!(
        "({shown} segment changes shown from {})",
        config.output.topic
    );
    Ok(())
}

async fn dlq_show(config: Config, idle: Duration, max: usize) -> anyhow::Result<()> {
    use rdkafka::message::{Headers, Message};
    use segstream::ingest::header;
    let consumer = reader(&config, &config.dead_letter.topic)?;
    println!(
        "{:<10} {:<24} {:<32} message",
        "stage", "reason", "source (topic[partition]@offset)"
    );
    let mut shown = 0;
    while shown < max {
        let msg = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.context("reading the dead-letter topic")?,
        };
        let get = |key: &str| {
            msg.headers()
                .and_then(|h| h.iter().find(|x| x.key == key).and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "?".into())
        };
        let source = format!(
            "{}[{}]@{}",
            get(header::TOPIC),
            get(header::PARTITION),
            get(header::OFFSET)
        );
        println!(
            "{:<10} {:<24} {:<32} {}",
            get(header::STAGE),
            get(header::REASON),
            source,
            get(header::MESSAGE)
        );
        shown += 1;
    }
    println!(
        "({shown} dead-letter records shown from {})",
        config.dead_letter.topic
    );
    Ok(())
}

fn config_check(file: Option<PathBuf>, print: bool) -> ExitCode {
    match Config::load(file.as_deref()) {
        Ok(config) => {
            let source = file
                .as_deref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "defaults and environment".into());
            println!("configuration OK ({source})");
            if print {
                match toml::to_string_pretty(&config) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("cannot print the configuration: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The streaming pipeline (see `segstream::pipeline` for its guarantees).
async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    segstream::pipeline::run(config, metrics, shutdown_signal()).await?;
    info!("Stopped.");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Where training history comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HistorySource {
    /// The configured input topics, from the beginning to their current end
    /// (read_committed).
    Topics,
    /// The files given with `--history`.
    Files,
    /// The built-in generator (`segstream generate`'s world), for demos and
    /// benchmarks.
    Synthetic,
}

#[derive(clap::Args)]
struct HistoryArgs {
    /// History files (NDJSON, CSV or Parquet, by extension or --history-format).
    #[arg(long = "history", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Format of the history files (default: from each file's extension).
    #[arg(long, value_parser = parse_file_format)]
    history_format: Option<segstream::event::files::FileFormat>,
    /// Column mapping for CSV history (a TOML file of `event::files::CsvMapping` keys).
    #[arg(long)]
    csv_mapping: Option<PathBuf>,
    /// Synthetic history: customers.
    #[arg(long, default_value_t = 2000)]
    customers: usize,
    /// Synthetic history: days.
    #[arg(long, default_value_t = 180)]
    days: u32,
    /// Synthetic history: seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Synthetic history: purchases only (the same world seen as an orders
    /// table).
    #[arg(long)]
    purchases_only: bool,
    /// Use only the history up to this time (RFC 3339, or a date such as
    /// 2011-09-01): back-testing a model as it would have been trained then.
    #[arg(long, value_parser = parse_until)]
    until: Option<i64>,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Where the history comes from (default: files when --history is given, else topics).
    #[arg(long)]
    from: Option<HistorySource>,
    #[command(flatten)]
    history: HistoryArgs,
    /// Model registry (default: score.registry of the config).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Version name (default: t<UTC time>).
    #[arg(long)]
    version: Option<String>,
    /// Promote even if worse than the champion.
    #[arg(long)]
    force: bool,
    /// Publish the new version without promoting it.
    #[arg(long)]
    no_promote: bool,
    /// Train again this often (e.g. 24h) until interrupted; a failed run
    /// leaves the champion in place.
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// Model directory (holding model.onnx and manifest.json).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    history: HistoryArgs,
    /// Where the history comes from (default: files).
    #[arg(long, default_value = "files")]
    from: HistorySource,
    /// Score as of this time (RFC 3339 or ms since the epoch); default: the
    /// last event's time.
    #[arg(long)]
    as_of: Option<String>,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Output format.
    #[arg(long, default_value = "csv")]
    format: segstream::train::predict::OutputFormat,
}

fn parse_file_format(s: &str) -> Result<segstream::event::files::FileFormat, String> {
    use segstream::event::files::FileFormat;
    match s {
        "ndjson" | "jsonl" => Ok(FileFormat::Ndjson),
        "csv" => Ok(FileFormat::Csv),
        "parquet" => Ok(FileFormat::Parquet),
        _ => Err(format!("{s:?}: use ndjson, csv or parquet")),
    }
}

fn parse_time_ms(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("{s:?} is neither ms since the epoch nor an RFC 3339 time"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .context("time before 1970")?;
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Loads history from the chosen source, with a progress bar.
fn load_history(
    config: &Config,
    source: HistorySource,
    args: &HistoryArgs,
) -> anyhow::Result<Vec<segstream::event::Event>> {
    use segstream::generate::behaviour::{history, GeneratorConfig};
    let bar = indicatif::ProgressBar::new_spinner().with_message("reading history");
    bar.enable_steady_tick(Duration::from_millis(200));
    let events: Vec<_> = match source {
        HistorySource::Synthetic => {
            let g = GeneratorConfig {
                customers: args.customers,
                days: args.days,
                seed: args.seed,
                purchases_only: args.purchases_only,
                ..GeneratorConfig::default()
            };
            g.validate()
                .map_err(|p| anyhow::anyhow!("synthetic history: {}", p.join("; ")))?;
            history(&g).inspect(|_| bar.inc(1)).collect()
        }
        HistorySource::Files | HistorySource::Topics => {
            use segstream::event::files::{self, EventReader, Record};
            let mut events = Vec::new();
            let mut bad_shown = 0;
            let mut on_record = |r: Record| match r {
                Record::Event(e) => events.push(e),
                Record::Bad(b) => {
                    if bad_shown < 5 {
                        bad_shown += 1;
                        tracing::warn!(
                            location = %b.location,
                            reason = b.rejection.reason.as_str(),
                            message = %b.rejection.message,
                            "Skipped a history row that is not a valid event."
                        );
                    }
                }
            };
            let on_progress = |p: &files::Progress| {
                if let Some(total) = p.total_bytes {
                    bar.set_message(format!(
                        "reading history: {} records, {:.0}%",
                        p.records,
                        100.0 * p.bytes as f64 / total.max(1) as f64
                    ));
                } else {
                    bar.set_message(format!("reading history: {} records", p.records));
                }
            };
            let mut reports = Vec::new();
            if source == HistorySource::Topics {
                reports.push(segstream::ingest::history::read_topics(
                    config,
                    50_000,
                    &mut on_record,
                    on_progress,
                )?);
            } else {
                if args.files.is_empty() {
                    anyhow::bail!("--from files needs at least one --history FILE");
                }
                let mapping = match &args.csv_mapping {
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?;
                        Some(
                            toml::from_str::<files::CsvMapping>(&text)
                                .with_context(|| format!("{}: not a CSV mapping", p.display()))?,
                        )
                    }
                    None => None,
                };
                let limits = config.validation.limits();
                for path in &args.files {
                    let reader =
                        EventReader::open(path, args.history_format, &limits, mapping.as_ref())
                            .with_context(|| format!("opening {}", path.display()))?;
                    reports.push(reader.for_each(50_000, &mut on_record, on_progress)?);
                }
            }
            let rejected: u64 = reports.iter().map(|r| r.rejected_total()).sum();
            if rejected > 0 {
                let mut by_reason = std::collections::BTreeMap::new();
                for r in &reports {
                    for (k, v) in &r.rejected {
                        *by_reason.entry(*k).or_insert(0u64) += v;
                    }
                }
                if events.is_empty() {
                    let mut reasons: Vec<(u64, &str)> =
                        by_reason.iter().map(|(r, n)| (*n, *r)).collect();
                    reasons.sort_by_key(|r| std::cmp::Reverse(r.0));
                    let top: Vec<String> = reasons
                        .iter()
                        .take(3)
                        .map(|(n, r)| format!("{r} ×{n}"))
                        .collect();
                    anyhow::bail!(
                        "all {rejected} history rows were refused ({}); the warnings above show \
                         examples. Check the CSV mapping (delimiter, column names, time_format, \
                         default_kind) or the file format",
                        top.join(", ")
                    );
                }
                tracing::warn!(rejected, by_reason = ?by_reason, "Some history rows were not valid events and were skipped.");
            }
            events
        }
    };
    bar.finish_and_clear();
    let events = match args.until {
        Some(until) => {
            let before = events.len();
            let kept: Vec<_> = events
                .into_iter()
                .filter(|e| e.event_time_ms <= until)
                .collect();
            info!(
                until_ms = until,
                kept = kept.len(),
                dropped = before - kept.len(),
                "Kept the history up to --until."
            );
            kept
        }
        None => events,
    };
    let mut events = events;
    if !config.privacy.erasure_topic.is_empty() {
        let dropped =
            segstream::privacy::drop_erased(config, &mut events).map_err(anyhow::Error::msg)?;
        info!(
            dropped,
            "Dropped the events of erased customers (privacy.erasure_topic)."
        );
    }
    info!(events = events.len(), "Read the history.");
    Ok(events)
}

/// `--until`: RFC 3339, or a date (midnight UTC at its end: the whole day).
fn parse_until(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| format!("{s:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

fn train_once(config: &Config, args: &TrainArgs) -> anyhow::Result<segstream::train::TrainReport> {
    use segstream::train::{self, Progress, TrainOptions};
    let source = args.from.unwrap_or(if args.history.files.is_empty() {
        HistorySource::Topics
    } else {
        HistorySource::Files
    });
    let events = load_history(config, source, &args.history)?;
    let registry = segstream::model::Registry::new(
        args.registry
            .clone()
            .unwrap_or_else(|| config.score.registry.clone()),
    );
    std::fs::create_dir_all(registry.root())
        .with_context(|| format!("creating the registry {}", registry.root().display()))?;
    let style = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let replay_bar = indicatif::ProgressBar::new(events.len() as u64)
        .with_style(style.clone())
        .with_message("replay");
    let step_bar = indicatif::ProgressBar::hidden().with_style(style);
    let mut on_replay = |n: u64, total: u64| {
        replay_bar.set_length(total);
        replay_bar.set_position(n);
        if n == total {
            replay_bar.finish_and_clear();
        }
    };
    let epoch_no = std::sync::atomic::AtomicUsize::new(1);
    let mut on_step = |n: usize, total: usize| {
        if step_bar.is_hidden() && n == 1 {
            step_bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        step_bar.set_message(format!(
            "epoch {}",
            epoch_no.load(std::sync::atomic::Ordering::Relaxed)
        ));
        step_bar.set_length(total as u64);
        step_bar.set_position(n as u64);
    };
    let mut on_epoch = |e: &train::fit::EpochReport| {
        step_bar.set_position(0);
        epoch_no.store(e.epoch + 1, std::sync::atomic::Ordering::Relaxed);
        println!(
            "epoch {:>2}: train loss {:.4}, validation loss {:.4} ({:.1} s)",
            e.epoch, e.train_loss, e.val_loss, e.seconds
        );
    };
    let options = TrainOptions {
        version: args.version.clone(),
        force: args.force,
        no_promote: args.no_promote,
    };
    let report = train::train(
        config,
        events,
        &registry,
        &options,
        &mut Progress {
            replay: &mut on_replay,
            step: &mut on_step,
            epoch: &mut on_epoch,
        },
    );
    step_bar.finish_and_clear();
    let report = report?;
    let text = train_report_markdown(&report);
    println!("{text}");
    if let Some(path) = &args.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn train_report_markdown(r: &segstream::train::TrainReport) -> String {
    let days = (r.replay.span_ms.1 - r.replay.span_ms.0) as f64 / 86_400_000.0;
    format!(
        "## Model {version}\n\n\
         History: {events} events, {customers} customers, {days:.0} days; {cuts} cut times; \
         {train} training and {val} validation examples (validation: the latest cut times){sampled}.\n\n\
         Transformer: {params} parameters; best epoch {best} of {ran}; \
         replay {rs:.1} s, training {fs:.1} s, evaluation and export {es:.1} s.\n\n\
         Validation metrics:\n\n{table}\n\
         ONNX export parity (max abs difference vs the trained network): {parity:.2e}\n\n\
         Decision: {decision}. Written to {dir}.\n",
        version = r.version,
        events = r.replay.events,
        customers = r.replay.customers,
        cuts = r.replay.cuts,
        train = r.examples.0,
        val = r.examples.1,
        sampled = if r.replay.sampled < r.replay.candidates {
            format!(
                ", sampled from {} candidates (train.max_examples, train.max_validation_examples)",
                r.replay.candidates
            )
        } else {
            String::new()
        },
        params = r.parameters,
        best = r.fit.best_epoch,
        ran = r.fit.epochs.len(),
        rs = r.seconds.0,
        fs = r.seconds.1,
        es = r.seconds.2,
        table = r.table,
        parity = r
            .manifest
            .metrics
            .get("parity_max_abs_diff")
            .copied()
            .unwrap_or(f64::NAN),
        decision = r.decision,
        dir = r.dir.display(),
    )
}

async fn train_command(config: Config, args: TrainArgs) -> anyhow::Result<()> {
    let Some(every) = args.every else {
        return tokio::task::spawn_blocking(move || train_once(&config, &args).map(|_| ()))
            .await
            .context("the training task failed")?;
    };
    let config = std::sync::Arc::new(config);
    let args = std::sync::Arc::new(args);
    loop {
        let (c, a) = (config.clone(), args.clone());
        match tokio::task::spawn_blocking(move || train_once(&c, &a)).await {
            Ok(Ok(r)) => {
                info!(version = %r.version, promoted = r.promoted, decision = %r.decision, "Training run finished.")
            }
            Ok(Err(e)) => error!(
                error = format!("{e:#}"),
                "Training run failed; the champion stays in place."
            ),
            Err(e) => error!(error = %e, "Training run panicked; the champion stays in place."),
        }
        info!(next_in = %humantime::format_duration(every), "Waiting for the next training run.");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => {
                info!("Interrupted; no further training runs.");
                return Ok(());
            }
        }
    }
}

fn predict_command(config: Config, args: PredictArgs) -> anyhow::Result<()> {
    use segstream::train::predict::{self, OutputFormat};
    let files = segstream::model::ModelFiles::read(&args.model)
        .with_context(|| format!("reading the model directory {}", args.model.display()))?;
    let events = load_history(&config, args.from, &args.history)?;
    let as_of = match &args.as_of {
        Some(s) => parse_time_ms(s)?,
        None => events.iter().map(|e| e.event_time_ms).max().unwrap_or(0),
    };
    let p = predict::predict(&config, &files, events, as_of)?;
    let create = |path: &PathBuf| {
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
    };
    let text_out = |path: Option<&PathBuf>| -> anyhow::Result<Box<dyn std::io::Write>> {
        Ok(match path {
            Some(path) => Box::new(std::io::BufWriter::new(create(path)?)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        })
    };
    match args.format {
        OutputFormat::Parquet => {
            let path = args
                .out
                .as_ref()
                .context("--format parquet needs --out FILE")?;
            predict::write_parquet(&p, create(path)?)?;
        }
        OutputFormat::Csv => {
            let mut out = text_out(args.out.as_ref())?;
            predict::write_csv(&p, &mut out)?;
            out.flush()?;
        }
        OutputFormat::Ndjson => {
            let mut out = text_out(args.out.as_ref())?;
            predict::write_ndjson(&p, &mut out)?;
            out.flush()?;
        }
    }
    info!(
        customers = p.rows.len(),
        events = p.events_used,
        ignored_after_cut = p.events_after,
        model = %p.model_version,
        "Wrote predictions."
    );
    Ok(())
}
