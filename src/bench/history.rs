//! The end-to-end throughput on realistic traffic: a month of the
//! generator's behaviour (many events per customer, segment changes only
//! where behaviour changes) through the pipeline with transactions, against
//! a raw read of the same topics. The main end-to-end run makes every event
//! a new customer, so that every event is scored and publishes a change:
//! the worst case for output and state growth. This run is the common case.

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde::Serialize;

use super::floor::{same_bytes_floor, Written};
use super::raw::raw_read_all;
use super::running::{Running, E2E_PARTITIONS};
use super::Outcome;
use crate::bench::{delete_bench_topics, BenchResult};
use crate::config::Config;

/// Results of the end-to-end run over a month of generated history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryE2e {
    /// Events in the input topics.
    pub events: u64,
    /// Customers with at least one event in it.
    pub customers: u64,
    /// Raw librdkafka: events/s reading the same input topics.
    pub raw_events_per_second: f64,
    /// The pipeline (decode, alignment, state, scoring, transactions): events/s.
    pub pipeline_events_per_second: f64,
    /// pipeline / raw.
    pub ratio: f64,
    /// SegmentChange records published over the run.
    pub segment_changes: u64,
    /// Records sent to the dead-letter topic (late events included).
    pub dead_letters: u64,
    /// Events refused as late.
    pub late_events: u64,
    /// The same-bytes Kafka-work floor and CPU per event.
    pub floor: super::Floor,
    /// The same input again with live outcomes on.
    pub outcomes: Option<OutcomesCost>,
}

/// What live outcomes (`output.outcomes_topic`: snapshots, their scoring
/// with the champion and the baselines, resolutions) cost on the same
/// input: a second pipeline run with them on.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomesCost {
    /// Cut spacing and horizon of the run, days.
    pub every_days: u64,
    /// See `every_days`.
    pub horizon_days: u64,
    /// The shadow model scored at each snapshot (a copy of the champion).
    pub shadow: String,
    /// events/s with live outcomes.
    pub events_per_second: f64,
    /// With / without.
    pub throughput_ratio: f64,
    /// CPU µs per event with live outcomes.
    pub cpu_us_per_event: Option<f64>,
    /// With / without.
    pub cpu_ratio: Option<f64>,
    /// Outcomes published (champion, baselines and shadow).
    pub outcomes: u64,
    /// Mean bytes of a changelog record (a changed customer's state),
    /// without and with (snapshots held until resolved).
    pub changelog_record_bytes: (f64, f64),
    /// Changelog records per input event, without and with (a capture at
    /// a cut and a resolution each write the customer's state).
    pub changelog_records_per_event: (f64, f64),
}

/// Produces about `events` events of a month of generated behaviour into
/// fresh topics named after `id`, reads them raw, then runs the pipeline of
/// `config` (scoring the model promoted in `registry`) over them. Deletes
/// its topics on every exit.
pub(super) async fn history_e2e(
    config: &Config,
    client: &ClientConfig,
    admin: &AdminClient<DefaultClientContext>,
    id: &str,
    registry: &std::path::Path,
    events: usize,
) -> BenchResult<HistoryE2e> {
    let cfg = Running::config(config, &format!("{id}-history"), registry);
    for r in admin
        .create_topics(&Running::new_topics(&cfg), &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let result = async {
        let produced = super::ingest::produce_history(&cfg, events).await?;

        let (c, topics) = (client.clone(), cfg.input.topics.clone());
        let raw = tokio::task::spawn_blocking(move || raw_read_all(&c, &topics, E2E_PARTITIONS))
            .await??;
        let raw_rate = raw.0 as f64 / raw.1.as_secs_f64().max(1e-9);

        let total = usize::try_from(produced.events)?;
        let (pipeline, measured) = Running::measure(&cfg, client, total).await?;
        let rate = measured.rate;
        let floor_id = format!("{id}-history");
        let written = Written::read(&cfg, client, &floor_id, produced.events).await?;
        let metrics = pipeline.stop().await;
        let changelog_bytes = (
            written.changelog_mean_bytes(),
            written.changelog_per_event(),
        );
        let floor = same_bytes_floor(&cfg, admin, &floor_id, written, &measured).await?;
        let outcomes =
            match with_outcomes(&cfg, client, admin, id, total, &measured, changelog_bytes).await {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(error = %e, "The run with live outcomes failed.");
                    None
                }
            };
        Ok(HistoryE2e {
            events: produced.events,
            customers: produced.summary.active_customers as u64,
            raw_events_per_second: raw_rate,
            pipeline_events_per_second: rate,
            ratio: rate / raw_rate.max(1e-9),
            segment_changes: counter_sum(&metrics.segment_changes),
            dead_letters: counter_sum(&metrics.dead_letters),
            late_events: metrics.late_events.get(),
            floor,
            outcomes,
        })
    }
    .await;
    delete_bench_topics(admin, &Running::topic_names(&cfg)).await;
    result
}

/// The same input through a second pipeline with live outcomes on (its own
/// group, changelog and outputs): cuts every 7 days and a 7-day horizon,
/// so that the run's three weeks of history have snapshots resolved too.
async fn with_outcomes(
    cfg: &Config,
    client: &ClientConfig,
    admin: &AdminClient<DefaultClientContext>,
    id: &str,
    events: usize,
    without: &super::running::Measured,
    without_changelog: (f64, f64),
) -> BenchResult<OutcomesCost> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let name = format!("{id}-history-outcomes");
    // Its own group, changelog and outputs; the same input.
    let mut c = Running::config(cfg, &name, &cfg.score.registry);
    c.input.topics.clone_from(&cfg.input.topics);
    c.output.outcomes_topic = format!("{name}.outcomes");
    // The run's history spans about three weeks (the event cap ends it):
    // a 7-day horizon has cuts resolved in it.
    let (every_days, horizon_days) = (7u64, 7u64);
    c.train.sample_every = std::time::Duration::from_secs(every_days * 86_400);
    c.train.horizon = std::time::Duration::from_secs(horizon_days * 86_400);
    let mut topics: Vec<NewTopic<'_>> = Running::new_topics(&c)
        .into_iter()
        .filter(|n| !c.input.topics.iter().any(|i| i == n.name))
        .collect();
    topics.push(NewTopic::new(
        &c.output.outcomes_topic,
        1,
        TopicReplication::Fixed(1),
    ));
    let names: Vec<String> = topics.iter().map(|n| n.name.to_string()).collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let result = async {
        wait_for_topics(client, &names).await?;
        // One shadow model: a copy of the champion under another version
        // (a shadow costs what its network costs; this is the champion's).
        let shadow = shadow_of_champion(&c.score.registry)?;
        let (pipeline, measured) = Running::measure(&c, client, events).await?;
        let written = Written::read(&c, client, &name, events as u64).await?;
        let metrics = pipeline.stop().await;
        let outcomes = {
            use prometheus::core::Collector;
            metrics
                .outcomes
                .outcomes
                .collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        };
        Ok(OutcomesCost {
            every_days,
            horizon_days,
            shadow,
            events_per_second: measured.rate,
            throughput_ratio: measured.rate / without.rate.max(1e-9),
            cpu_us_per_event: measured.cpu_us_per_event,
            cpu_ratio: measured
                .cpu_us_per_event
                .zip(without.cpu_us_per_event)
                .map(|(a, b)| a / b.max(1e-9)),
            outcomes,
            changelog_record_bytes: (without_changelog.0, written.changelog_mean_bytes()),
            changelog_records_per_event: (without_changelog.1, written.changelog_per_event()),
        })
    }
    .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_bench_topics(admin, &refs).await;
    result
}

/// Publishes a copy of the registry's live model as `<version>-shadow` and
/// puts it in the shadow list; returns its version.
fn shadow_of_champion(root: &std::path::Path) -> BenchResult<String> {
    use crate::model::{ModelFiles, Registry};
    let registry = Registry::new(root);
    let champion = registry
        .current()?
        .ok_or("no live model in the benchmark's registry")?;
    let mut files = ModelFiles::read(&registry.dir(&champion)?)?;
    let version = format!("{champion}-shadow");
    if !registry.versions()?.contains(&version) {
        files.manifest.version.clone_from(&version);
        registry.publish(&files.onnx, &files.manifest)?;
    }
    registry.add_shadow(&version)?;
    Ok(version)
}

/// Waits until the broker's metadata lists every topic of `names` (a
/// topic just created is not at once visible to every client).
async fn wait_for_topics(client: &ClientConfig, names: &[String]) -> BenchResult<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (c, names) = (client.clone(), names.to_vec());
    tokio::task::spawn_blocking(move || -> BenchResult<()> {
        let consumer: BaseConsumer = c.create()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let md = consumer.fetch_metadata(None, std::time::Duration::from_secs(5))?;
            let seen = |n: &String| {
                md.topics()
                    .iter()
                    .any(|t| t.name() == n && t.error().is_none() && !t.partitions().is_empty())
            };
            if names.iter().all(seen) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err("the outcome run's topics did not appear in 30 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .await?
}

/// The total of a counter vector over all its label values.
fn counter_sum(v: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The history run's rows of the end-to-end table.
pub(super) fn history_rows(h: &Outcome<HistoryE2e>) -> String {
    let h = match h {
        Outcome::Done(h) => h,
        Outcome::Skipped => return String::new(),
        Outcome::Failed(e) => {
            return format!(
                "| realistic traffic: a month of generated behaviour | failed: {} |\n",
                e.replace(['\n', '|'], " ")
            )
        }
    };
    format!(
        "| realistic traffic: a month of generated behaviour, {} events of {} customers | |\n\
         | raw librdkafka read of that input | {:.0} events/s |\n\
         | pipeline, transactions on | {:.0} events/s |\n\
         | pipeline / raw | {:.3} |\n\
         | segment changes published; dead letters (late) | {}; {} ({}) |\n{}",
        h.events,
        h.customers,
        h.raw_events_per_second,
        h.pipeline_events_per_second,
        h.ratio,
        h.segment_changes,
        h.dead_letters,
        h.late_events,
        super::floor::floor_rows(&h.floor),
    ) + &outcomes_rows(h.outcomes.as_ref())
}

fn outcomes_rows(o: Option<&OutcomesCost>) -> String {
    let Some(o) = o else {
        return String::new();
    };
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
    };
    format!(
        "| same input with live outcomes (cuts every {} days, {}-day horizon; champion, two baselines and one shadow model, {}, scored at each snapshot) | {:.0} events/s ({:.3} of without) |\n\
         | CPU per event with live outcomes | {} µs ({} of without) |\n\
         | outcomes published; changelog record bytes without / with; changelog records per event without / with | {}; {:.0} / {:.0}; {:.3} / {:.3} |\n",
        o.every_days,
        o.horizon_days,
        o.shadow,
        o.events_per_second,
        o.throughput_ratio,
        opt(o.cpu_us_per_event, 2),
        opt(o.cpu_ratio, 3),
        o.outcomes,
        o.changelog_record_bytes.0,
        o.changelog_record_bytes.1,
        o.changelog_records_per_event.0,
        o.changelog_records_per_event.1,
    )
}
