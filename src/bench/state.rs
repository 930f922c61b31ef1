//! The state benchmark: memory per customer, and restore from the changelog
//! against a raw librdkafka read of it.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde::Serialize;

use super::raw::raw_read_all;
use crate::bench::{delete_bench_topics, synthetic_event};
use crate::config::Config;
use crate::event::{Event, Payload, Review};
use crate::rng::Rng;
use crate::state::changelog::{encode, restore_partition, ChangelogRecord, ChangelogWriter};
use crate::state::{CustomerState, Decision, PartitionStore};
use crate::telemetry::Metrics;

/// Results of the state benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct StateBench {
    /// Customers in the run.
    pub customers: usize,
    /// Mean events offered per customer.
    pub mean_events: f64,
    /// In-memory bytes per customer (state plus key), mean.
    pub memory_bytes_per_customer: f64,
    /// Changelog value bytes per customer, mean.
    pub changelog_bytes_per_customer: f64,
    /// In-memory bytes of one customer with a full history (N events, a
    /// quarter of them reviews).
    pub full_customer_memory_bytes: usize,
    /// Changelog bytes of that customer.
    pub full_customer_changelog_bytes: usize,
    /// Restore measurements (absent with `--no-kafka`).
    pub restore: Option<RestoreBench>,
}

/// Restore rate against raw consumption of the same partition.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreBench {
    /// Records in the changelog partition.
    pub records: u64,
    /// Raw librdkafka: records/s reading the partition to its end, no processing.
    pub raw_records_per_second: f64,
    /// segstream restore: customers/s (decode + install).
    pub restore_customers_per_second: f64,
    /// restore rate / raw rate (both from the first record read to the end;
    /// each the best of five turns).
    pub ratio: f64,
    /// Set-up before the first record (client, offsets lookup, first fetch),
    /// seconds: the fixed cost, not in the rates.
    pub setup_seconds: f64,
}

/// Runs the state benchmark: `customers` customers whose event counts follow
/// a long-tailed distribution (mean about 20; some far beyond N), in sessions
/// of 1-8 events spread over 120 days. With `kafka`, also writes their changelog to a fresh topic and
/// measures restore against raw consumption of that topic.
pub async fn state(
    config: &Config,
    customers: usize,
    kafka: bool,
) -> Result<StateBench, Box<dyn std::error::Error + Send + Sync>> {
    let limits = config.state.limits();
    let mut store = PartitionStore::new(limits);
    let mut rng = Rng::from_state(0x5eed);
    let start_ms = 1_790_000_000_000i64;
    let span_ms = 120 * 86_400_000i64;
    let mut offered = 0usize;
    let decision = Decision {
        segment: "active_buyer".into(),
        scores: vec![0.1, 0.5, 0.2, 0.1, 0.1],
        model_version: "20261128-1".into(),
        decided_at_ms: start_ms,
        next_review_ms: start_ms + span_ms,
        since_ms: start_ms,
        purchase_probability: 0.3,
        churn_probability: 0.2,
        predicted_spend: 4200.0,
        as_of_ms: start_ms,
        risk_flags: 0,
    };
    for c in 0..customers {
        let customer = format!("customer-{c:08}");
        // Long tail: exponential with mean ~20 events; some far beyond N.
        let n = 1 + (-(1.0 - (rng.below(1_000_000) as f64 / 1e6)).ln() * 19.0) as usize;
        // Events come in sessions of 1-8 events within an hour.
        let mut events: Vec<Event> = Vec::with_capacity(n);
        while events.len() < n {
            let session_start = start_ms + rng.below(span_ms as usize) as i64;
            let len = 1 + rng.below(8);
            for _ in 0..len.min(n - events.len()) {
                let t = session_start + rng.below(3_600_000) as i64;
                let i = events.len();
                events.push(synthetic_event(&mut rng, &customer, i, t));
            }
        }
        events.sort_by_key(|e| e.event_time_ms);
        let mut state = CustomerState::default();
        for e in &events {
            state.record(e, limits.state);
        }
        // Decided at the customer's latest event and reviewed
        // `state.review_after` later, as the pipeline schedules it: the
        // times the restore indexes differ from customer to customer.
        let last = state.last_event_ms;
        state.decision = Decision {
            decided_at_ms: last,
            since_ms: last,
            as_of_ms: last,
            next_review_ms: last.saturating_add(limits.review_after_ms),
            ..decision.clone()
        };
        state.shrink();
        offered += n;
        store.restore(customer, state);
    }
    let n = store.len().max(1);
    let memory = store.memory_bytes() as f64 / n as f64;
    let changelog: usize = store.iter().map(|(_, s)| encode(s).len()).sum();

    let mut full = CustomerState::default();
    for i in 0..limits.state.max_events * 2 {
        let mut e = synthetic_event(&mut rng, "full", i, start_ms + i as i64 * 60_000);
        if i % 4 == 0 {
            e.payload = Payload::Review(Review {
                product_id: "sku-1".into(),
                category: "shoes".into(),
                rating: 4,
                text: "comfortable and light, but the sizing runs a little small overall".into(),
            });
        }
        full.record(&e, limits.state);
    }
    full.decision = decision;
    full.shrink();

    let restore = if kafka {
        Some(restore_bench(config, &store).await?)
    } else {
        None
    };
    Ok(StateBench {
        customers: store.len(),
        mean_events: offered as f64 / customers.max(1) as f64,
        memory_bytes_per_customer: memory,
        changelog_bytes_per_customer: changelog as f64 / n as f64,
        full_customer_memory_bytes: full.memory_bytes() + "full".len(),
        full_customer_changelog_bytes: encode(&full).len(),
        restore,
    })
}

pub(super) async fn restore_bench(
    config: &Config,
    store: &PartitionStore,
) -> Result<RestoreBench, Box<dyn std::error::Error + Send + Sync>> {
    let client = config.kafka.client_config()?;
    let topic = format!("segstream-bench-changelog-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    for r in admin.create_topics(&[new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let result = restore_on(config, &client, &topic, store).await;
    delete_bench_topics(&admin, &[&topic]).await;
    result
}

pub(super) async fn restore_on(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
    store: &PartitionStore,
) -> Result<RestoreBench, Box<dyn std::error::Error + Send + Sync>> {
    let writer = ChangelogWriter::new(client.clone(), topic)?;
    let records: Vec<ChangelogRecord> = store
        .iter()
        .map(|(k, s)| ChangelogRecord {
            key: k.to_string(),
            value: Some(encode(s)),
        })
        .collect();
    for chunk in records.chunks(50_000) {
        writer.write(0, chunk).await?;
    }
    let expected = records.len() as u64;
    drop(records);

    // Best of ROUNDS for each, the two taking turns, so that a noisy moment
    // on the machine does not decide the ratio.
    const ROUNDS: usize = 5;
    let limits = config.state.limits();
    let (mut raw_rate, mut restore_rate, mut setup_seconds) = (0f64, 0f64, f64::MAX);
    for _ in 0..ROUNDS {
        // The baseline reads with the restore's own client settings.
        let (c1, t1) = (
            crate::state::changelog::restore_reader_config(client),
            topic.to_owned(),
        );
        let raw = tokio::task::spawn_blocking(move || raw_read_all(&c1, &[t1], 1)).await??;
        let (c2, t2) = (client.clone(), topic.to_owned());
        let restored = tokio::task::spawn_blocking(move || {
            let metrics = Metrics::new().map_err(|e| e.to_string())?;
            let mut fresh = PartitionStore::new(limits);
            restore_partition(&c2, &t2, 0, &mut fresh, &metrics, Duration::from_secs(1800))
                .map_err(|e| e.to_string())
        })
        .await??;
        raw_rate = raw_rate.max(raw.0 as f64 / raw.1.as_secs_f64().max(1e-9));
        restore_rate =
            restore_rate.max(restored.customers as f64 / restored.reading.as_secs_f64().max(1e-9));
        setup_seconds = setup_seconds.min((restored.duration - restored.reading).as_secs_f64());
    }
    Ok(RestoreBench {
        records: expected,
        raw_records_per_second: raw_rate,
        restore_customers_per_second: restore_rate,
        ratio: restore_rate / raw_rate.max(1e-9),
        setup_seconds,
    })
}

/// The state results as a Markdown table.
pub fn state_markdown(b: &StateBench) -> String {
    let mut s = String::new();
    s.push_str("| state benchmark | value |\n| --- | --- |\n");
    s.push_str(&format!("| customers | {} |\n", b.customers));
    s.push_str(&format!(
        "| mean events offered per customer | {:.1} |\n",
        b.mean_events
    ));
    s.push_str(&format!(
        "| memory per customer (mean) | {:.0} B |\n",
        b.memory_bytes_per_customer
    ));
    s.push_str(&format!(
        "| changelog value per customer (mean) | {:.0} B |\n",
        b.changelog_bytes_per_customer
    ));
    s.push_str(&format!(
        "| memory of a full-history customer | {} B |\n",
        b.full_customer_memory_bytes
    ));
    s.push_str(&format!(
        "| changelog value of a full-history customer | {} B |\n",
        b.full_customer_changelog_bytes
    ));
    if let Some(r) = &b.restore {
        s.push_str(&format!(
            "| raw librdkafka read of the changelog (baseline) | {:.0} records/s |\n",
            r.raw_records_per_second
        ));
        s.push_str(&format!(
            "| restore | {:.0} customers/s |\n",
            r.restore_customers_per_second
        ));
        s.push_str(&format!("| restore / raw | {:.2} |\n", r.ratio));
        s.push_str(&format!(
            "| restore set-up before the first record (not in the rates) | {:.3} s |\n",
            r.setup_seconds
        ));
    }
    s
}
