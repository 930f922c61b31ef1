//! `segstream train` and `segstream predict`: history in, a model or predictions out.

use std::path::PathBuf;
use std::time::Duration;

use segstream::config::Config;
use segstream::error::{Doing, Failure, InvalidInput};
use tracing::{error, info};

/// Where training history comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HistorySource {
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
pub(crate) struct HistoryArgs {
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
    /// Synthetic history: share of sessions lost per year (a drifting base
    /// rate).
    #[arg(long, default_value_t = 0.0)]
    decline: f64,
    /// Use only the history up to this time (RFC 3339, or a date such as
    /// 2011-09-01): back-testing a model as it would have been trained then.
    #[arg(long, value_parser = parse_until)]
    until: Option<i64>,
}

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
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
    /// Also fit the Transformer without the classical inputs (a second
    /// fit), so the report measures what they add.
    #[arg(long)]
    ablate: bool,
    /// Train again this often (e.g. 24h) until interrupted; a failed run
    /// leaves the champion in place.
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct PredictArgs {
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

pub(crate) fn parse_file_format(
    s: &str,
) -> Result<segstream::event::files::FileFormat, InvalidInput> {
    use segstream::event::files::FileFormat;
    match s {
        "ndjson" | "jsonl" => Ok(FileFormat::Ndjson),
        "csv" => Ok(FileFormat::Csv),
        "parquet" => Ok(FileFormat::Parquet),
        _ => Err(InvalidInput(format!("{s:?}: use ndjson, csv or parquet"))),
    }
}

pub(crate) fn parse_time_ms(s: &str) -> Result<i64, Failure> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        InvalidInput(format!(
            "{s:?} is neither ms since the epoch nor an RFC 3339 time ({e})"
        ))
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| InvalidInput(format!("{s:?} is before 1970")))?;
    Ok(segstream::units::millis(d))
}

/// Loads history from the chosen source, with a progress bar.
pub(crate) fn load_history(
    config: &Config,
    source: HistorySource,
    args: &HistoryArgs,
) -> Result<Vec<segstream::event::Event>, Failure> {
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
                decline: args.decline,
                ..GeneratorConfig::default()
            };
            g.validate()
                .map_err(|p| InvalidInput(format!("synthetic history: {p}")))?;
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
                reports.push(segstream::intake::history::read_topics(
                    config,
                    50_000,
                    &mut on_record,
                    on_progress,
                )?);
            } else {
                if args.files.is_empty() {
                    return Err(InvalidInput(
                        "--from files needs at least one --history FILE".into(),
                    )
                    .into());
                }
                let mapping = match &args.csv_mapping {
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .doing_with(|| format!("reading {}", p.display()))?;
                        Some(
                            toml::from_str::<files::CsvMapping>(&text)
                                .doing_with(|| format!("{}: not a CSV mapping", p.display()))?,
                        )
                    }
                    None => None,
                };
                let limits = config.validation.limits();
                for path in &args.files {
                    let reader =
                        EventReader::open(path, args.history_format, &limits, mapping.as_ref())
                            .doing_with(|| format!("opening {}", path.display()))?;
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
                    return Err(InvalidInput(format!(
                        "all {rejected} history rows were refused ({}); the warnings above show \
                         examples. Check the CSV mapping (delimiter, column names, time_format, \
                         default_kind) or the file format",
                        top.join(", ")
                    ))
                    .into());
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
        let dropped = segstream::privacy::drop_erased(config, &mut events)?;
        info!(
            dropped,
            "Dropped the events of erased customers (privacy.erasure_topic)."
        );
    }
    info!(events = events.len(), "Read the history.");
    Ok(events)
}

/// `--until`: RFC 3339, or a date (midnight UTC at its end: the whole day).
pub(crate) fn parse_until(s: &str) -> Result<i64, InvalidInput> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| {
            InvalidInput(format!(
                "{s:?} is not an RFC 3339 time or a YYYY-MM-DD date"
            ))
        })
}

pub(crate) fn train_once(
    config: &Config,
    args: &TrainArgs,
) -> Result<segstream::train::TrainReport, Failure> {
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
        .doing_with(|| format!("creating the registry {}", registry.root().display()))?;
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
        ablate: args.ablate,
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
        std::fs::write(path, &text).doing_with(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

pub(crate) fn train_report_markdown(r: &segstream::train::TrainReport) -> String {
    let days = (r.replay.span_ms.1 - r.replay.span_ms.0) as f64 / segstream::units::DAY_MS as f64;
    format!(
        "## Model {version}\n\n\
         History: {events} events, {customers} customers, {days:.0} days; {cuts} cut times; \
         {train} training and {val} validation examples (validation: the latest cut times){sampled}.\n\n\
         Served model: {family}, {params} parameters. Transformer: best epoch {best} of {ran}; \
         replay {rs:.1} s, training {fs:.1} s, evaluation and export {es:.1} s.\n\n\
         Validation metrics:\n\n{table}\n\
         ONNX export parity (max abs difference vs the trained model): {parity:.2e}\n\n\
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
        family = r.served.as_str(),
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

pub(crate) async fn train_command(config: Config, args: TrainArgs) -> Result<(), Failure> {
    let Some(every) = args.every else {
        return tokio::task::spawn_blocking(move || train_once(&config, &args).map(|_| ()))
            .await
            .doing("the training task failed")?;
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

pub(crate) fn predict_command(config: Config, args: PredictArgs) -> Result<(), Failure> {
    use segstream::train::predict::{self, OutputFormat};
    let files = segstream::model::ModelFiles::read(&args.model)
        .doing_with(|| format!("reading the model directory {}", args.model.display()))?;
    let events = load_history(&config, args.from, &args.history)?;
    let as_of = match &args.as_of {
        Some(s) => parse_time_ms(s)?,
        None => events.iter().map(|e| e.event_time_ms).max().unwrap_or(0),
    };
    let p = predict::predict(&config, &files, events, as_of)?;
    let create = |path: &PathBuf| {
        std::fs::File::create(path).doing_with(|| format!("creating {}", path.display()))
    };
    let text_out = |path: Option<&PathBuf>| -> Result<Box<dyn std::io::Write>, Failure> {
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
                .ok_or_else(|| InvalidInput("--format parquet needs --out FILE".into()))?;
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
