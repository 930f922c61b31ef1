//! The `segstream` command line.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use segstream::config::Config;
use segstream::error::{Doing as _, Failure};
use segstream::telemetry::{self, Metrics};

mod cli;

use cli::bench::{bench, BenchCommand};
use cli::inspect::{
    dlq_show, model_command, risk_show, samples, segments_show, DlqCommand, ModelCommand,
    SegmentsCommand,
};
use cli::train::{predict_command, train_command, PredictArgs, TrainArgs};

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

/// mimalloc never hands freed memory back to the kernel (it reuses it). By
/// default it does so 10 ms after a free, and a process that frees and
/// allocates megabytes in a loop then pays for fresh zeroed pages each time:
/// - the trainer frees a step's tensors: a fifth of a sparse-history
///   training run's samples were the kernel clearing pages, and one epoch
///   took 27 s instead of 22 s (`segstream bench train --sparse`);
/// - the run loop frees each commit cycle's records: with the default,
///   `segstream bench e2e` ran 88k and 101k events/s against 107k and
///   111k without purging (alternating runs).
///
/// The process's footprint is its peak, which a memory limit must allow
/// for anyway. `MIMALLOC_PURGE_DELAY` in the environment still decides
/// when set.
#[allow(unsafe_code)] // an FFI option setter
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
    /// tombstones the changelog and the current topic, clears their risk
    /// flags, audits it, and drops their events stamped up to the request's
    /// time that it reads later (a lagging input).
    Forget {
        /// A customer id as the producers key it (repeat for several).
        #[arg(long = "customer", required = true)]
        customers: Vec<String>,
        /// Erase up to this time (RFC 3339, or a date: its end) instead of
        /// now; never later than now.
        #[arg(long, value_parser = cli::train::parse_until)]
        as_of: Option<i64>,
    },
    /// The live quality report: read the outcomes the pipeline published
    /// (`output.outcomes_topic`, or `--file`), print the table of every
    /// model (champion and baselines, with bootstrap intervals) and write an
    /// HTML page of figures.
    Report(cli::inspect::ReportArgs),
    /// Model tools: look at, check, or create model directories.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
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
    keep_freed_memory();
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
            for w in config.deprecated() {
                tracing::warn!("{w}");
            }
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
                    Command::Forget { customers, as_of } => {
                        let n =
                            segstream::privacy::request_erasure(&config, &customers, as_of).await?;
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
                            .map_err(Failure::from)
                    }
                    Command::Bench { command } => bench(config, command).await,
                    Command::Model { command } => model_command(config, command).await,
                    Command::Train(a) => train_command(config, a).await,
                    Command::Predict(a) => predict_command(config, a),
                    Command::Report(a) => cli::inspect::report_command(config, a).await,
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
                        .await??;
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
                    let class = e.class();
                    error!(
                        error = e.to_string(),
                        class = class.name(),
                        exit_code = class.exit_code(),
                        "segstream stopped on an error."
                    );
                    ExitCode::from(class.exit_code())
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
            for w in config.deprecated() {
                eprintln!("warning: {w}");
            }
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
async fn run(config: Config) -> Result<(), Failure> {
    let metrics = Metrics::new().doing("registering metrics")?;
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
                    // Without a SIGTERM handler, Ctrl-C alone stops it (an
                    // error installing that one too means: run until killed).
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
    let _ = ctrl_c.await; // An error installing the handler: run until killed.
}
