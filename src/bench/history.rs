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
        let floor = same_bytes_floor(&cfg, admin, &floor_id, written, &measured).await?;
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
        })
    }
    .await;
    delete_bench_topics(admin, &Running::topic_names(&cfg)).await;
    result
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
    )
}
