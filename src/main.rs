//! The `segstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rdkafka::consumer::{CommitMode, Consumer};
use tracing::{error, info, warn};

use segstream::config::Config;
use segstream::ingest::{DeadLetterSink, Ingestor};
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
        Command::Run => {
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
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(
                        error = format!("{e:#}"),
                        "segstream run stopped on an error."
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
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

/// Consumes, decodes and validates the input topics, writing refused records
/// to the dead-letter topic. Offsets are committed only after the dead letters
/// of their batch are acknowledged (at least once). The transactional,
/// exactly-once cycle with state and scoring replaces this loop in the
/// pipeline module.
async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let mut ingestor = Ingestor::build(&config, metrics.clone())?;
    let sink = DeadLetterSink::build(&config)?;
    ingestor.subscribe(Duration::from_secs(10))?;
    info!(
        topics = ?config.input.topics,
        group = %config.kafka.group_id,
        dead_letter_topic = %config.dead_letter.topic,
        "Consuming."
    );
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut events, mut dead) = (0u64, 0u64);
    let mut backoff = Duration::from_millis(100);
    let started = Instant::now();
    let mut last_offsets = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("Shutdown requested; stopping after the current batch.");
                break;
            }
            _ = report.tick() => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                info!(
                    events,
                    dead_letters = dead,
                    events_per_second = format!("{:.1}", events as f64 / secs),
                    assignment = ?ingestor.assignment().unwrap_or_default(),
                    "Progress."
                );
            }
            batch = ingestor.next_batch(Duration::from_millis(500)) => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "Consumer error; retrying.");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                if batch.is_empty() {
                    continue;
                }
                sink.send_all(&batch.dead_letters).await?;
                let offsets = batch.offsets_to_commit()?;
                ingestor
                    .consumer()
                    .commit(&offsets, CommitMode::Async)
                    .context("committing offsets")?;
                last_offsets = Some(offsets);
                events += batch.events.len() as u64;
                dead += batch.dead_letters.len() as u64;
            }
        }
    }
    sink.flush(Duration::from_secs(10))?;
    if let Some(offsets) = last_offsets {
        ingestor
            .consumer()
            .commit(&offsets, CommitMode::Sync)
            .context("final offset commit")?;
    }
    info!(events, dead_letters = dead, "Stopped.");
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
