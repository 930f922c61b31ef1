//! `segstream generate`: its arguments and what it prints. The binary only
//! parses and dispatches; everything else is here.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::behaviour::{history, GeneratorConfig, GeneratorSummary};
use super::kafka::{produce, GenerateError, ProduceOptions};
use super::world::DAY_MS;
use crate::config::Config;
use crate::event::encode::WireFormat;
use crate::event::files::{EventWriter, FileError, FileFormat};
use crate::ingest::now_ms;

/// Where generated events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The configured input topics (per-kind routing, keyed by customer).
    Kafka,
    /// A history file (`--out`).
    File,
}

/// Wire format of Kafka values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    /// Plain protobuf `segstream.v1.Event`.
    Protobuf,
    /// Plain JSON (`schemas/event.schema.json`).
    Json,
    /// Confluent Schema Registry framing + protobuf.
    ConfluentProtobuf,
    /// Confluent Schema Registry framing + JSON.
    ConfluentJson,
}

impl Wire {
    fn format(self) -> WireFormat {
        match self {
            Wire::Protobuf => WireFormat::Protobuf,
            Wire::Json => WireFormat::Json,
            Wire::ConfluentProtobuf => WireFormat::ConfluentProtobuf,
            Wire::ConfluentJson => WireFormat::ConfluentJson,
        }
    }
}

/// History file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// One JSON event per line.
    Ndjson,
    /// Parquet (flat schema, see `event::files`).
    Parquet,
}

/// Arguments of `segstream generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Where to write.
    #[arg(long, value_enum, default_value = "kafka")]
    pub to: Target,
    /// Output file (with `--to file`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File format (default: from the extension of `--out`, else ndjson).
    #[arg(long, value_enum)]
    pub file_format: Option<OutFormat>,
    /// Wire format of Kafka values.
    #[arg(long, value_enum, default_value = "protobuf")]
    pub format: Wire,
    /// Customers in the world.
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Seed: the same seed and settings give the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Emit only purchases (the same world seen as an orders table).
    #[arg(long)]
    pub purchases_only: bool,
    /// Share of sessions lost per year since the start (0: a steady base
    /// rate): a world whose purchase rate drifts.
    #[arg(long, default_value_t = 0.0)]
    pub decline: f64,
    /// Days of history with their original event times (files: default 90;
    /// Kafka: none, i.e. live only).
    #[arg(long)]
    pub days: Option<u32>,
    /// Start of the history: RFC 3339 or epoch milliseconds (default: now
    /// minus `--days`, so history ends now and live continues from it).
    #[arg(long)]
    pub start: Option<String>,
    /// Kafka: events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Kafka: how long to stream live events after the history (e.g. `30s`).
    /// Without `--days` and without this, streams until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Kafka: skip producing the `--days` of history and continue the same
    /// world live after it (for a history already produced by an earlier
    /// run with the same `--seed`, `--customers` and `--days`).
    #[arg(long)]
    pub live_only: bool,
    /// Kafka, live: `wall` stamps each event with the wall clock as it is
    /// sent at `--rate` (a load generator: customers act faster than
    /// people, and risk rules such as bot_browsing fire on them); `people`
    /// moves the world at `--rate` but sends each customer's events at the
    /// pace of their visit (fewer events per second reach the topics).
    #[arg(long, value_enum, default_value = "wall")]
    pub pace: super::kafka::Pace,
    /// Kafka, live: merge this many generated bots (browsing every 1-2 s,
    /// ids `bot0000`, ...) into the live stream, to see `bot_browsing`
    /// raised where it should be.
    #[arg(long, default_value_t = 0)]
    pub bots: usize,
}

/// Errors of the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Producing failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Writing the file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The arguments do not fit together.
    #[error("{0}")]
    Usage(String),
}

impl crate::error::Classify for CliError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            CliError::Generate(e) => crate::error::Classify::class(e),
            CliError::File(e) => crate::error::Classify::class(e),
            CliError::Usage(_) => crate::error::ErrorClass::BadInput,
        }
    }
}

/// Parses `--start`: RFC 3339 or epoch milliseconds.
pub fn parse_start(text: &str) -> Option<i64> {
    text.trim().parse::<i64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

/// Runs the command and prints its summary.
pub async fn run(
    config: &Config,
    args: GenerateArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let days = match (args.to, args.days) {
        (Target::File, None) => 90,
        (_, d) => d.unwrap_or(0),
    };
    let start_ms = match &args.start {
        Some(s) => parse_start(s).ok_or_else(|| {
            CliError::Usage(format!(
                "--start {s:?} is neither RFC 3339 nor epoch milliseconds"
            ))
        })?,
        None => now_ms() - i64::from(days) * DAY_MS,
    };
    let gen = GeneratorConfig {
        seed: args.seed,
        customers: args.customers,
        start_ms,
        days,
        purchases_only: args.purchases_only,
        decline: args.decline,
        ..GeneratorConfig::default()
    };
    gen.validate()
        .map_err(|p| CliError::Usage(format!("invalid settings: {p}")))?;
    match args.to {
        Target::File => {
            let out = args
                .out
                .clone()
                .ok_or_else(|| CliError::Usage("--to file needs --out PATH".into()))?;
            let format = match args.file_format {
                Some(OutFormat::Ndjson) => FileFormat::Ndjson,
                Some(OutFormat::Parquet) => FileFormat::Parquet,
                None => match FileFormat::from_path(&out) {
                    Some(FileFormat::Parquet) => FileFormat::Parquet,
                    _ => FileFormat::Ndjson,
                },
            };
            let max = args.max_events.unwrap_or(u64::MAX);
            let started = Instant::now();
            let (report, summary) = tokio::task::spawn_blocking(move || {
                let mut writer = EventWriter::create(&out, format)?;
                let mut world = history(&gen);
                let mut n = 0u64;
                while n < max {
                    let Some(e) = world.next_event() else { break };
                    writer.write(&e)?;
                    n += 1;
                }
                let report = writer.finish()?;
                Ok::<_, FileError>((report, world.summary()))
            })
            .await
            .map_err(|e| CliError::Usage(format!("the writer task failed: {e}")))??;
            let seconds = started.elapsed().as_secs_f64();
            print_summary(&summary, report.events, seconds);
            println!(
                "wrote {} events to {} ({}, {} bytes, {:.1} bytes/event)",
                report.events,
                args.out
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                format.as_str(),
                report.bytes,
                report.bytes as f64 / report.events.max(1) as f64
            );
        }
        Target::Kafka => {
            if args.out.is_some() || args.file_format.is_some() {
                return Err(CliError::Usage(
                    "--out and --file-format go with --to file".into(),
                ));
            }
            let options = ProduceOptions {
                format: args.format.format(),
                history: days > 0 && !args.live_only,
                live_for: args.duration,
                rate: args.rate,
                max_events: args.max_events,
                pace: args.pace,
                bots: args.bots,
            };
            let report = produce(config, &gen, &options, shutdown).await?;
            print_summary(&report.summary, report.events, report.seconds);
            if !report.bots.is_empty() {
                println!("bots merged:     {}", report.bots.join(" "));
            }
            for (topic, n) in &report.by_topic {
                println!("produced {n:>10} events to {topic}");
            }
        }
    }
    Ok(())
}

fn print_summary(s: &GeneratorSummary, events: u64, seconds: f64) {
    println!(
        "generated {events} events in {seconds:.2} s ({:.0} events/s)",
        events as f64 / seconds.max(1e-9)
    );
    let line = |m: &BTreeMap<&'static str, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("events by kind:  {}", line(&s.events_by_kind));
    println!("browse actions:  {}", line(&s.browse_by_action));
    println!(
        "customers:       {} in the world, {} active, {} archetype changes",
        s.customers, s.active_customers, s.transitions
    );
    let mix: BTreeMap<&'static str, u64> = s
        .archetype_mix
        .iter()
        .map(|(k, v)| (*k, *v as u64))
        .collect();
    println!("archetype mix:   {}", line(&mix));
}
