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
    /// End to end with transactions: sustained events/s (vs raw librdkafka)
    /// and event → SegmentChange latency at half that rate.
    E2e {
        /// Events in the throughput run.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 10.0)]
        latency_seconds: f64,
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

/// How long and how much a `show` command reads.
#[derive(clap::Args)]
struct ShowArgs {
    /// Stop after this long without a new record.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Stop after this many records.
    #[arg(long, default_value_t = 100)]
    max: usize,
}

#[derive(Subcommand)]
enum SegmentsCommand {
    /// Print segment changes (customer, from → to, trigger, probabilities)
    /// from the beginning of the output topic until it has been idle for `--idle`.
    Show(ShowArgs),
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
                    Command::Segments {
                        command: SegmentsCommand::Show(a),
                    } => segments_show(config, a.idle, a.max).await,
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
            json,
        } => {
            let r = bench::score(&config, &batches, seconds)
                .await
                .map_err(lift)?;
            (bench::score_markdown(&r), serde_json::to_value(&r)?, json)
        }
        BenchCommand::E2e {
            events,
            latency_seconds,
            json,
        } => {
            let r = bench::e2e(&config, events, latency_seconds)
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

async fn segments_show(config: Config, idle: Duration, max: usize) -> anyhow::Result<()> {
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
                    let mut scores: Vec<(String, f32)> = c.scores.clone().into_iter().collect();
                    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top: Vec<String> = scores
                        .iter()
                        .take(3)
                        .map(|(s, p)| format!("{s} {p:.2}"))
                        .collect();
                    format!(
                        "{:<22} {:>13} -> {:<13} {:<12} [{}] buy {:.2} churn {:.2} model {}",
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
