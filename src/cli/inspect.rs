//! Looking at what runs: `model`, `samples`, `segments show | risk`, `dlq show`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use rdkafka::consumer::Consumer;
use segstream::config::Config;
use segstream::error::{Doing, Failure, InvalidInput};

#[derive(Subcommand)]
pub(crate) enum ModelCommand {
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
    /// List a registry's versions: the live one (CURRENT) and the shadow
    /// models (SHADOW) marked.
    List {
        /// Registry directory (default: score.registry).
        #[arg(long)]
        registry: Option<PathBuf>,
    },
    /// Put a published version in the shadow (or take it out with
    /// `--remove`): the pipeline scores shadow models at every live-outcome
    /// snapshot, never for decisions, and publishes their outcomes with
    /// `role = "shadow"`.
    Shadow {
        /// The version.
        version: String,
        /// Take it out of the shadow instead.
        #[arg(long)]
        remove: bool,
        /// Registry directory (default: score.registry).
        #[arg(long)]
        registry: Option<PathBuf>,
    },
    /// Make a version the live one. With `--live`, only on live evidence:
    /// the shadow model's outcomes must be ahead of the champion's on
    /// `train.promote_metric` (95 % paired bootstrap interval above zero)
    /// over at least `train.live_min_outcomes` customers and cuts both
    /// predicted; without a version, the best such shadow model.
    Promote {
        /// The version (with `--live`, default: the best shadow model).
        version: Option<String>,
        /// Decide on the live outcomes.
        #[arg(long)]
        live: bool,
        /// With `--live`: read outcomes from this NDJSON file instead of
        /// `output.outcomes_topic`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// With `--live`, reading the topic: stop once no record came for
        /// this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// Registry directory (default: score.registry).
        #[arg(long)]
        registry: Option<PathBuf>,
    },
}

/// How long and how much a `show` command reads.
#[derive(clap::Args)]
pub(crate) struct ShowArgs {
    /// Stop after this long without a new record.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) idle: Duration,
    /// Stop after this many records.
    #[arg(long, default_value_t = 100)]
    pub(crate) max: usize,
    /// Segments: show only reclassifications (skip each customer's first
    /// segment).
    #[arg(long)]
    pub(crate) changes_only: bool,
}

#[derive(Subcommand)]
pub(crate) enum SegmentsCommand {
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
pub(crate) enum DlqCommand {
    /// Print dead-letter records (reason, source, message) from the beginning
    /// of the topic until it has been idle for `--idle`.
    Show(ShowArgs),
}

pub(crate) async fn model_command(config: Config, command: ModelCommand) -> Result<(), Failure> {
    use segstream::model::{reference, ModelFiles, Registry, Segment};
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
            let segments: Vec<String> = Segment::names();
            let (onnx, manifest) = match kind.as_str() {
                "rules" => segstream::model::rules::build(&featurizer, &version)?,
                "reference" => reference::build(&featurizer, &segments, &version, seed)?,
                other => {
                    return Err(segstream::error::InvalidInput(format!(
                        "unknown built-in model {other:?}: use rules or reference"
                    ))
                    .into())
                }
            };
            let dir = registry.publish(&onnx, &manifest)?;
            println!("published {}", dir.display());
            if promote {
                registry.promote(&version)?;
                println!("promoted {version} (CURRENT)");
            }
            Ok(())
        }
        ModelCommand::List { registry } => {
            let registry = Registry::new(registry.unwrap_or(config.score.registry.clone()));
            let current = registry.current()?;
            let shadows = registry.shadows()?;
            for v in registry.versions()? {
                let mark = if current.as_deref() == Some(v.as_str()) {
                    "live"
                } else if shadows.contains(&v) {
                    "shadow"
                } else {
                    ""
                };
                println!("{v:<40} {mark}");
            }
            Ok(())
        }
        ModelCommand::Shadow {
            version,
            remove,
            registry,
        } => {
            let registry = Registry::new(registry.unwrap_or(config.score.registry.clone()));
            if remove {
                registry.remove_shadow(&version)?;
                println!("{version} left the shadow");
            } else {
                registry.add_shadow(&version)?;
                println!(
                    "{version} is a shadow model: scored at the live-outcome snapshots from the pipeline's next registry poll"
                );
            }
            Ok(())
        }
        ModelCommand::Promote {
            version,
            live,
            file,
            idle,
            registry,
        } => {
            let registry = Registry::new(registry.unwrap_or(config.score.registry.clone()));
            if !live {
                let version = version.ok_or_else(|| {
                    InvalidInput("name the version to promote (or pass --live)".into())
                })?;
                registry.promote(&version)?;
                println!("promoted {version} (CURRENT)");
                return Ok(());
            }
            let champion = registry
                .current()?
                .ok_or_else(|| InvalidInput("no live version (CURRENT) to compare with".into()))?;
            let candidates = match version {
                Some(v) => vec![v],
                None => registry.shadows()?,
            };
            if candidates.is_empty() {
                return Err(InvalidInput("no shadow models (SHADOW) to judge".into()).into());
            }
            let (outcomes, source) = read_outcomes(&config, file.as_deref(), idle).await?;
            let metric = &config.train.promote_metric;
            let min = config.train.live_min_outcomes;
            let mut best: Option<(String, f64)> = None;
            for c in &candidates {
                match segstream::report::live_decision(&outcomes, c, &champion, metric, min) {
                    Some(d) => {
                        println!("{c}: {}", d.reason);
                        let better = best.as_ref().is_none_or(|(_, m)| d.margin.difference > *m);
                        if d.promote && better {
                            best = Some((c.clone(), d.margin.difference));
                        }
                    }
                    None => println!(
                        "{c}: no resolved outcome shared with champion {champion} in {source}"
                    ),
                }
            }
            match best {
                Some((v, _)) => {
                    registry.promote(&v)?;
                    println!("promoted {v} (CURRENT) on live evidence");
                    Ok(())
                }
                None => Err(InvalidInput(format!(
                    "no shadow model is ahead of champion {champion} on live {metric}: champion kept"
                ))
                .into()),
            }
        }
    }
}

pub(crate) async fn samples(config: Config, customers: usize) -> Result<(), Failure> {
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
pub(crate) async fn risk_show(config: Config, idle: Duration, max: usize) -> Result<(), Failure> {
    use prost::Message as _;
    use rdkafka::message::Message;
    use segstream::event::proto::RiskFlag;
    let topic = &config.output.risk_topic;
    if topic.is_empty() {
        return Err(
            InvalidInput("output.risk_topic is empty: the risk rules do not run".into()).into(),
        );
    }
    let consumer = reader(&config, topic)?;
    let mut shown = 0;
    while shown < max {
        let msg = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.doing("reading the risk topic")?,
        };
        // A record without a value fails to decode below and is shown so.
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

pub(crate) fn reader(
    config: &Config,
    topic: &str,
) -> Result<rdkafka::consumer::StreamConsumer, Failure> {
    let group = format!("{}-show-{}", config.kafka.group_id, std::process::id());
    let mut client = segstream::config::reader_config(&config.kafka, &group, false)?;
    client.set("auto.offset.reset", "earliest");
    let consumer: rdkafka::consumer::StreamConsumer =
        client.create().doing("creating the consumer")?;
    consumer
        .subscribe(&[topic])
        .doing_with(|| format!("subscribing to {topic}"))?;
    Ok(consumer)
}

pub(crate) async fn segments_show(
    config: Config,
    idle: Duration,
    max: usize,
    changes_only: bool,
) -> Result<(), Failure> {
    use prost::Message as _;
    use rdkafka::message::Message;
    use segstream::event::proto::SegmentChange;
    let topic = config.output.topic.replace("{segment}", "*");
    if config.output.topic.contains("{segment}") {
        return Err(InvalidInput(format!(
            "output.topic is a per-segment template ({topic}); read those topics individually"
        ))
        .into());
    }
    let consumer = reader(&config, &config.output.topic)?;
    let mut shown = 0;
    while shown < max {
        let msg = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.doing("reading the segment topic")?,
        };
        // A record without a value fails to decode below and is shown so.
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
                        .map(|r| match r.value {
                            Some(v) if r.unit == "minor_units" => {
                                format!("{} {:.2} ({:+.2})", r.feature, v / 100.0, r.contribution)
                            }
                            Some(v) if v.fract() == 0.0 => {
                                format!("{} {v:.0} ({:+.2})", r.feature, r.contribution)
                            }
                            Some(v) => format!("{} {v:.1} ({:+.2})", r.feature, r.contribution),
                            None => format!("{} ({:+.2})", r.feature, r.contribution),
                        })
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

pub(crate) async fn dlq_show(config: Config, idle: Duration, max: usize) -> Result<(), Failure> {
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
            Ok(m) => m.doing("reading the dead-letter topic")?,
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

/// `segstream report`'s options.
#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// Read outcomes from this NDJSON file (their JSON form, one per line)
    /// instead of `output.outcomes_topic`.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The folder to write `report.html`, `figures/*.svg` and `live.json` to.
    #[arg(long, default_value = "segstream-report")]
    out: PathBuf,
    /// Reading the topic: stop once no record came for this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// The model registry whose manifests hold the drift references
    /// (default: score.registry); drift is left out for versions not there.
    #[arg(long)]
    registry: Option<PathBuf>,
}

/// Reads the live outcomes (the topic from its beginning, or a file),
/// prints the live quality table and writes the report.
pub(crate) async fn report_command(config: Config, a: ReportArgs) -> Result<(), Failure> {
    let (outcomes, source) = read_outcomes(&config, a.file.as_deref(), a.idle).await?;
    let mut live = segstream::report::summarize(&outcomes);
    // The champions' drift references, from their manifests.
    let registry =
        segstream::model::Registry::new(a.registry.unwrap_or(config.score.registry.clone()));
    let mut references = std::collections::BTreeMap::new();
    let versions: std::collections::BTreeSet<&String> = outcomes
        .iter()
        .filter(|o| o.role == "champion" && !o.feature_bins.is_empty())
        .map(|o| &o.model_version)
        .collect();
    for v in versions {
        let manifest = registry.dir(v).and_then(|d| {
            segstream::model::Manifest::read(&d.join(segstream::model::MANIFEST_FILE))
        });
        match manifest {
            Ok(m) => {
                if let Some(r) = m.reference {
                    references.insert(v.clone(), r);
                }
            }
            Err(e) => eprintln!("no drift for {v}: {e}"),
        }
    }
    live.drift = segstream::report::drift(&outcomes, &references);
    let figures = segstream::report::figures(&outcomes, &live)
        .map_err(|e| InvalidInput(format!("drawing the figures: {e}")))?;
    let flows = segstream::report::flows(&outcomes);
    let dir = &a.out;
    std::fs::create_dir_all(dir.join("figures"))
        .doing_with(|| format!("creating {}", dir.display()))?;
    for f in &figures {
        let path = dir.join("figures").join(format!("{}.svg", f.name));
        std::fs::write(&path, &f.svg).doing_with(|| format!("writing {}", path.display()))?;
    }
    let page = dir.join("report.html");
    std::fs::write(&page, segstream::report::html(&live, &figures, &flows))
        .doing_with(|| format!("writing {}", page.display()))?;
    let summary = serde_json::to_string_pretty(&live)
        .map_err(|e| InvalidInput(format!("encoding the summary: {e}")))?;
    std::fs::write(dir.join("live.json"), summary).doing("writing live.json")?;
    println!("Live quality: {} outcomes from {source}\n", outcomes.len());
    print!("{}", segstream::report::markdown(&live));
    println!("\nReport: {} ({} figures)", page.display(), figures.len());
    Ok(())
}

/// The live outcomes: `file` (NDJSON, their JSON form) or the outcomes
/// topic from its beginning until idle for `idle`; and where they came from.
async fn read_outcomes(
    config: &Config,
    file: Option<&std::path::Path>,
    idle: Duration,
) -> Result<(Vec<segstream::event::proto::Outcome>, String), Failure> {
    use prost::Message as _;
    use rdkafka::message::Message;
    use segstream::event::proto::Outcome;
    use segstream::pipeline::output::OutcomeJson;
    let json = |line: &[u8]| -> Result<Outcome, Failure> {
        let o: OutcomeJson = serde_json::from_slice(line)
            .map_err(|e| InvalidInput(format!("an outcome does not read as JSON: {e}")))?;
        Ok(o.into_outcome())
    };
    let mut outcomes = Vec::new();
    let source = match file {
        Some(path) => {
            let text = std::fs::read(path).doing_with(|| format!("reading {}", path.display()))?;
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                outcomes.push(json(line)?);
            }
            path.display().to_string()
        }
        None => {
            let topic = config.output.outcomes_topic.clone();
            if topic.is_empty() {
                return Err(InvalidInput(
                    "output.outcomes_topic is empty: no outcomes are published (or pass --file)"
                        .into(),
                )
                .into());
            }
            let consumer = reader(config, &topic)?;
            while let Ok(m) = tokio::time::timeout(idle, consumer.recv()).await {
                let msg = m.doing("reading the outcomes topic")?;
                let bytes = msg.payload().unwrap_or_default();
                outcomes.push(match config.output.format {
                    segstream::config::OutputFormat::Protobuf => Outcome::decode(bytes)
                        .map_err(|e| InvalidInput(format!("an outcome does not decode: {e}")))?,
                    segstream::config::OutputFormat::Json => json(bytes)?,
                });
            }
            topic
        }
    };
    if outcomes.is_empty() {
        return Err(InvalidInput(format!(
            "no outcomes in {source} yet: they are published once train.horizon of event time has passed a cut"
        ))
        .into());
    }
    Ok((outcomes, source))
}
