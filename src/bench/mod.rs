//! The benchmark suite (`segstream bench`). Every timing is reported next to
//! a baseline measured in the same run on the same data (raw librdkafka,
//! raw ONNX Runtime), as a ratio; absolute numbers are printed too. Nothing
//! here is a pass/fail test: these machines are noisy.
//!
//! The benchmarks: ingest ([`ingest`], vs raw librdkafka), state (memory per
//! customer, restore vs raw librdkafka), scoring (vs raw `Session::run`), end
//! to end with transactions (vs raw librdkafka), and training ([`train`], vs
//! a plain state replay). `report` writes them all as `BENCHMARKS.md` and
//! JSON (`segstream bench all`).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::event::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Review};
use crate::state::changelog::{encode, restore_partition, ChangelogRecord, ChangelogWriter};
use crate::state::{CustomerState, Decision, PartitionStore};
use crate::telemetry::Metrics;

mod ingest;
mod report;
mod risk;
mod train;

pub use ingest::{ingest, ingest_markdown, IngestBench};
pub use report::{suite_markdown, Machine, Outcome, Suite};
pub use risk::{risk, risk_markdown, RiskBench, RuleScore};
pub use train::{
    history_for, summarize as train_summary, train, train_markdown, train_sparse, TrainBench,
};

/// What a benchmark returns; its error is reported, not classified.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
    /// restore rate / raw rate (both from the first record read to the end).
    pub ratio: f64,
    /// Set-up before the first record (client, offsets lookup, first fetch),
    /// seconds: the fixed cost, not in the rates.
    pub setup_seconds: f64,
}

/// A deterministic pseudo-random stream (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const CATEGORIES: [&str; 12] = [
    "shoes", "socks", "hats", "bags", "shirts", "coats", "watches", "toys", "books", "garden",
    "kitchen", "sports",
];

/// One synthetic event: mostly browsing, some purchases, a few reviews.
fn synthetic_event(rng: &mut Rng, customer: &str, i: usize, time_ms: i64) -> Event {
    let category = CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize].to_string();
    let roll = rng.below(100);
    let payload = if roll < 75 {
        Payload::Browse(Browse {
            product_id: format!("sku-{}", rng.below(5000)),
            category,
            session_id: String::new(),
            action: if roll < 60 {
                BrowseAction::View
            } else {
                BrowseAction::CartAdd
            },
            dwell_ms: rng.below(120_000) as i64,
            price_minor: 500 + rng.below(20_000) as i64,
        })
    } else if roll < 92 {
        let price = 500 + rng.below(20_000) as i64;
        Payload::Purchase(Purchase {
            order_id: format!("o-{i}"),
            items: vec![LineItem {
                product_id: format!("sku-{}", rng.below(5000)),
                category,
                quantity: 1,
                unit_price_minor: price,
            }],
            total_minor: price,
            currency: "EUR".into(),
        })
    } else {
        Payload::Review(Review {
            product_id: format!("sku-{}", rng.below(5000)),
            category,
            rating: 1 + rng.below(5) as u8,
            text: "fits well, good quality for the price, would order again from this shop".into(),
        })
    };
    Event {
        event_id: format!("{customer}-{i}"),
        customer_id: customer.to_string(),
        event_time_ms: time_ms,
        payload,
    }
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
    let mut rng = Rng(0x5eed);
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
            let session_start = start_ms + rng.below(span_ms as u64) as i64;
            let len = 1 + rng.below(8) as usize;
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
        state.decision = decision.clone();
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

async fn restore_bench(
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

async fn restore_on(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
    store: &PartitionStore,
) -> Result<RestoreBench, Box<dyn std::error::Error + Send + Sync>> {
    let writer = ChangelogWriter::new(client.clone(), topic)?;
    let records: Vec<ChangelogRecord> = store
        .iter()
        .map(|(k, s)| ChangelogRecord {
            key: k.clone(),
            value: Some(encode(s)),
        })
        .collect();
    for chunk in records.chunks(50_000) {
        writer.write(0, chunk).await?;
    }
    let expected = records.len() as u64;
    drop(records);

    let (c1, t1) = (client.clone(), topic.to_owned());
    let raw = tokio::task::spawn_blocking(move || raw_read_all(&c1, &[t1], 1)).await??;
    let (c2, t2) = (client.clone(), topic.to_owned());
    let limits = config.state.limits();
    let restored = tokio::task::spawn_blocking(move || {
        let metrics = Metrics::new().map_err(|e| e.to_string())?;
        let mut fresh = PartitionStore::new(limits);
        restore_partition(&c2, &t2, 0, &mut fresh, &metrics, Duration::from_secs(1800))
            .map_err(|e| e.to_string())
    })
    .await??;
    let raw_rate = raw.0 as f64 / raw.1.as_secs_f64().max(1e-9);
    let restore_rate = restored.customers as f64 / restored.reading.as_secs_f64().max(1e-9);
    let setup_seconds = (restored.duration - restored.reading).as_secs_f64();
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

/// Trains the default Transformer (the `[train]` architecture) on 30k
/// generated events for one epoch and promotes it in `registry` as
/// `transformer-bench`: the model users run, at its real size.
async fn bench_transformer(config: &Config, registry: &crate::model::Registry) -> BenchResult<()> {
    let (_, history) = train::history_for(30_000);
    let mut tc = config.clone();
    tc.train.max_epochs = 1;
    let registry = registry.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::train::Progress::silent(|p| {
            crate::train::train(
                &tc,
                history,
                &registry,
                &crate::train::TrainOptions {
                    version: Some("transformer-bench".into()),
                    force: true,
                    no_promote: false,
                },
                p,
            )
        })
    })
    .await??;
    if !report.promoted {
        return Err(format!(
            "the bench Transformer was not promoted: {}",
            report.decision
        )
        .into());
    }
    Ok(())
}

/// One batch size of the scoring benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreBenchRow {
    /// Customers per batch.
    pub batch: usize,
    /// Raw `Session::run` (inputs borrowed, outputs read in place): customers/s.
    pub raw_customers_per_second: f64,
    /// Through the scorer (queue, inference thread, output copy): customers/s.
    pub scorer_customers_per_second: f64,
    /// Scorer overhead: 1 - scorer / raw (goal: under 10%).
    pub overhead: f64,
    /// Transformer only: the scorer on the same model file without its
    /// explanation output, customers/s.
    pub without_reasons_customers_per_second: Option<f64>,
    /// Transformer only: what explanations cost, the output and building
    /// each row's reasons: 1 - scorer / scorer without reasons (goal: under 10%).
    pub reasons_overhead: Option<f64>,
}

/// Scoring throughput: raw ONNX Runtime against the scorer, same model, same
/// inputs, same run. `Rules` scores the reference model; `Transformer` a
/// default-size Transformer trained inside the benchmark, also measured
/// without its explanation output (the cost of reasons).
pub async fn score(
    config: &Config,
    batches: &[usize],
    seconds_each: f64,
    model: E2eModel,
) -> Result<Vec<ScoreBenchRow>, Box<dyn std::error::Error + Send + Sync>> {
    use crate::features::{FeatureSpec, Featurizer};
    use crate::model::{reference, GoldenInputs, ModelFiles, DEFAULT_SEGMENTS};
    use crate::score::{new_session, run_session, LoadedModel, Scorer};
    let limits = config.state.limits().state;
    let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits)?;
    let segments: Vec<String> = DEFAULT_SEGMENTS.iter().map(|s| s.to_string()).collect();
    let dir = std::env::temp_dir().join(ingest::unique_id("score"));
    let files = match model {
        E2eModel::Rules => {
            let (onnx, manifest) = reference::build(&featurizer, &segments, "bench", 1);
            ModelFiles {
                dir: Default::default(),
                onnx,
                manifest,
            }
        }
        E2eModel::Transformer => {
            let registry = crate::model::Registry::new(dir.join("models"));
            let trained = bench_transformer(config, &registry).await;
            let files =
                trained.and_then(|()| Ok(ModelFiles::read(&registry.dir("transformer-bench")?)?));
            let _ = std::fs::remove_dir_all(&dir);
            files?
        }
    };
    // The same model without its explanation output (Transformer only).
    let plain = if !files
        .manifest
        .golden
        .outputs
        .segment_contributions
        .is_empty()
    {
        let mut plain = files.clone();
        plain.onnx =
            crate::model::onnx::without_output(&files.onnx, crate::model::SEGMENT_CONTRIBUTIONS)?;
        plain.manifest.golden.outputs.segment_contributions.clear();
        Some(plain)
    } else {
        None
    };
    let mut cfg = config.score.clone();
    cfg.inference_threads = 1;
    let metrics = Metrics::new()?;
    let scorer = Scorer::start(
        &cfg,
        LoadedModel::load(&cfg, &files, limits, 1)?,
        metrics.clone(),
    );
    let plain_scorer = match &plain {
        Some(p) => Some(Scorer::start(
            &cfg,
            LoadedModel::load(&cfg, p, limits, 1)?,
            metrics,
        )),
        None => None,
    };
    let (mut raw_session, _) = new_session(&cfg, "bench", &files.onnx)?;
    let reasons = config.decide.reasons;

    let max = batches.iter().copied().max().unwrap_or(1);
    let mut rng = Rng(42);
    let states: Vec<CustomerState> = (0..max)
        .map(|c| {
            let customer = format!("bench-{c}");
            let n = 1 + rng.below(80) as usize;
            let mut s = CustomerState::default();
            for i in 0..n {
                let t = 1_790_000_000_000 + rng.below(90 * 86_400_000) as i64;
                s.record(&synthetic_event(&mut rng, &customer, i, t), limits);
            }
            s
        })
        .collect();
    let as_of = 1_790_000_000_000 + 91 * 86_400_000;
    let mut rows = Vec::new();
    for &b in batches {
        let refs: Vec<&CustomerState> = states.iter().take(b).collect();
        let batch = featurizer.featurize(&refs, as_of)?;
        let inputs = GoldenInputs::from_batch(&batch);
        let spec = featurizer.spec().clone();
        // Warm up both paths once.
        run_session(&mut raw_session, &inputs, &spec, segments.len())?;
        scorer.score(scorer.current(), batch.clone()).await?;

        let timed = |mut f: Box<dyn FnMut() -> Result<(), crate::score::ScoreError> + '_>| {
            let started = Instant::now();
            let mut runs = 0u64;
            while runs < 3 || started.elapsed().as_secs_f64() < seconds_each {
                f()?;
                runs += 1;
            }
            Ok::<f64, crate::score::ScoreError>(
                (runs as f64 * b as f64) / started.elapsed().as_secs_f64(),
            )
        };
        let raw = timed(Box::new(|| {
            run_session(&mut raw_session, &inputs, &spec, 5).map(|_| ())
        }))?;
        // The scorer, and (Transformer) the scorer without explanations,
        // alternated in rounds so that drift in the machine's speed hits
        // both alike. With explanations, every row's reasons are built too.
        let (mut with, mut without) = ((0u64, 0f64), (0u64, 0f64));
        let started = Instant::now();
        while with.0 < 3 || started.elapsed().as_secs_f64() < seconds_each * 2.0 {
            let t = Instant::now();
            let scores = scorer.score(scorer.current(), batch.clone()).await?;
            if plain_scorer.is_some() {
                for i in 0..scores.rows {
                    let best = crate::decide::argmax(scores.segment_probs(i)).unwrap_or(0);
                    std::hint::black_box(crate::decide::explain(
                        scores.contributions(i),
                        best,
                        reasons,
                    ));
                }
            }
            with = (with.0 + 1, with.1 + t.elapsed().as_secs_f64());
            if let Some(p) = &plain_scorer {
                let t = Instant::now();
                p.score(p.current(), batch.clone()).await?;
                without = (without.0 + 1, without.1 + t.elapsed().as_secs_f64());
            }
        }
        let rate = |(runs, secs): (u64, f64)| runs as f64 * b as f64 / secs.max(1e-9);
        let through = rate(with);
        let plain_rate = (without.0 > 0).then(|| rate(without));
        rows.push(ScoreBenchRow {
            batch: b,
            raw_customers_per_second: raw,
            scorer_customers_per_second: through,
            overhead: 1.0 - through / raw,
            without_reasons_customers_per_second: plain_rate,
            reasons_overhead: plain_rate.map(|p| 1.0 - through / p),
        });
    }
    scorer.shutdown();
    if let Some(p) = plain_scorer {
        p.shutdown();
    }
    Ok(rows)
}

/// The scoring results as a Markdown table.
pub fn score_markdown(rows: &[ScoreBenchRow]) -> String {
    let mut s = String::from(
        "| batch | raw Session::run (customers/s) | scorer (customers/s) | scorer / raw | overhead |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.1}% |\n",
            r.batch,
            r.raw_customers_per_second,
            r.scorer_customers_per_second,
            r.scorer_customers_per_second / r.raw_customers_per_second,
            r.overhead * 100.0
        ));
    }
    if rows.iter().any(|r| r.reasons_overhead.is_some()) {
        s.push_str(
            "\n| batch | scorer without explanations (customers/s) | scorer with reasons (customers/s) | reasons overhead |\n| --- | --- | --- | --- |\n",
        );
        for r in rows {
            if let (Some(p), Some(o)) = (r.without_reasons_customers_per_second, r.reasons_overhead)
            {
                s.push_str(&format!(
                    "| {} | {:.0} | {:.0} | {:.1}% |\n",
                    r.batch,
                    p,
                    r.scorer_customers_per_second,
                    o * 100.0
                ));
            }
        }
    }
    s
}

/// End-to-end results: sustained throughput and event → SegmentChange latency.
#[derive(Debug, Clone, Serialize)]
pub struct E2eBench {
    /// The model scored: `rules` (the built-in rule model) or `transformer`
    /// (a default-size Transformer trained inside the benchmark).
    pub model: String,
    /// Events in the throughput run.
    pub events: usize,
    /// Raw librdkafka: events/s reading the same input topics, no processing.
    pub raw_events_per_second: f64,
    /// The pipeline (decode, state, scoring, decisions, transactions): events/s.
    pub pipeline_events_per_second: f64,
    /// pipeline / raw.
    pub ratio: f64,
    /// Rate of the latency run (half the sustained rate), events/s.
    pub latency_rate: f64,
    /// Segment changes measured in the latency run.
    pub latency_samples: usize,
    /// Median latency from produce to read_committed visibility, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
}

/// Partitions per topic of the end-to-end benchmark: a multiple of 2 and 3,
/// so stream threads share them evenly.
const E2E_PARTITIONS: i32 = 6;

/// Runs the pipeline in-process against fresh topics with `model`: first the sustained rate over `events` pre-produced events (against
/// a raw librdkafka read of the same topics), then the latency from an
/// event's produce time to its SegmentChange becoming visible to a
/// read_committed consumer, at half that rate for `latency_seconds`.
/// The model an end-to-end run scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eModel {
    /// The built-in rule model (cheap to score).
    Rules,
    /// The default Transformer, trained inside the benchmark on generated
    /// history (one epoch): what users run.
    Transformer,
}

pub async fn e2e(
    config: &Config,
    events: usize,
    latency_seconds: f64,
    model: E2eModel,
) -> Result<E2eBench, Box<dyn std::error::Error + Send + Sync>> {
    use crate::event::corpus::{browse, purchase, review};
    use crate::event::encode::{encode, WireFormat};
    use crate::features::{FeatureSpec, Featurizer};
    use crate::model::{rules, Registry};
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let id = format!("bench-e2e-{}", std::process::id());
    let client = config.kafka.client_config()?;
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let t = |s: &str| format!("{id}.{s}");
    let inputs = [t("browse"), t("purchase"), t("review")];
    let mut new_topics: Vec<NewTopic<'_>> = inputs
        .iter()
        .map(|n| NewTopic::new(n, E2E_PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let (changelog, dlq, output) = (t("changelog"), t("dlq"), t("segments"));
    let current = t("current");
    for compacted in [&changelog, &current] {
        new_topics.push(
            NewTopic::new(compacted, E2E_PARTITIONS, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        );
    }
    new_topics.push(NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)));
    new_topics.push(NewTopic::new(
        &output,
        E2E_PARTITIONS,
        TopicReplication::Fixed(1),
    ));
    for r in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let dir = std::env::temp_dir().join(&id);
    // Every exit, a failure included, deletes the topics: a benchmark run
    // writes gigabytes, and a leftover run's topics fill the broker's disk.
    let result: BenchResult<E2eBench> = async {
        let registry = Registry::new(dir.join("models"));
        let limits = config.state.limits().state;
        let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits)?;
        match model {
            E2eModel::Rules => {
                let (onnx, manifest) = rules::build(&featurizer, "rules-bench");
                registry.publish(&onnx, &manifest)?;
                registry.promote("rules-bench")?;
            }
            E2eModel::Transformer => bench_transformer(config, &registry).await?,
        }
        let mut cfg = config.clone();
        cfg.input.topics = inputs.to_vec();
        cfg.state.changelog_topic = changelog.clone();
        cfg.dead_letter.topic = dlq.clone();
        cfg.output.topic = output.clone();
        cfg.output.current_topic = current.clone();
        cfg.kafka.group_id = id.clone();
        cfg.pipeline.transactional_id = format!("{id}-tx");
        cfg.pipeline.http_listen = String::new();
        cfg.score.registry = registry.root().to_path_buf();

        // Pre-produce the throughput run: every event a new customer, so every
        // event is scored and publishes a SegmentChange (the latency run's shape).
        let producer: FutureProducer = client
            .clone()
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .create()?;
        let now = crate::ingest::now_ms();
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..events {
            let customer = format!("tp-{i}");
            let eid = format!("tp-{i}");
            let at = now - 1_800_000 + (i as i64 % 1_700_000);
            let (event, topic) = match i % 3 {
                0 => (browse(&customer, &eid, at), &inputs[0]),
                1 => (purchase(&customer, &eid, at), &inputs[1]),
                _ => (review(&customer, &eid, at), &inputs[2]),
            };
            let value = encode(&event, WireFormat::Protobuf);
            let (producer, topic) = (producer.clone(), topic.clone());
            pending.spawn(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&customer).payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            });
            if pending.len() >= 10_000 {
                while let Some(r) = pending.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = pending.join_next().await {
            r??;
        }

        // Baseline: raw librdkafka over the same topics.
        let (c1, topics1) = (client.clone(), inputs.to_vec());
        let raw = tokio::task::spawn_blocking(move || raw_read_all(&c1, &topics1, E2E_PARTITIONS))
            .await??;
        let raw_rate = raw.0 as f64 / raw.1.as_secs_f64().max(1e-9);

        // The pipeline, in-process.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new()?;
        let pipeline = tokio::spawn(crate::pipeline::run(cfg.clone(), metrics, async move {
            let _ = stop_rx.await;
        }));
        let offsets = |c: &ClientConfig| -> Result<i64, KafkaError> {
            let consumer: BaseConsumer = c.clone().set("group.id", &id).create()?;
            let mut tpl = TopicPartitionList::new();
            for t in &inputs {
                for p in 0..E2E_PARTITIONS {
                    tpl.add_partition(t, p);
                }
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
                .sum())
        };
        let total = events as i64;
        // The rate counts from the moment every stream thread holds its
        // partitions (the group is stable with one member per thread): the
        // rebalance as the threads join one by one is start-up, not throughput.
        let threads = cfg.pipeline.stream_threads();
        let group_reader: BaseConsumer = client.clone().create()?;
        let group_stable = |_: &ClientConfig| -> bool {
            group_reader
                .fetch_group_list(Some(&id), Duration::from_secs(5))
                .ok()
                .and_then(|l| {
                    l.groups().first().map(|g| {
                        g.state() == "Stable"
                            && g.members().len() >= threads
                            && g.members()
                                .iter()
                                .all(|m| m.assignment().is_some_and(|a| a.len() > 8))
                    })
                })
                .unwrap_or(false)
        };
        let mut first: Option<(Instant, i64)> = None;
        let deadline = Instant::now() + Duration::from_secs(900);
        let last = loop {
            let done = offsets(&client)?;
            if first.is_none() && group_stable(&client) {
                // The group check takes a round trip: count from after it.
                let done = offsets(&client)?;
                if done >= total {
                    return Err(format!(
                        "the pipeline consumed all {events} events before its group settled; \
                     run with more events"
                    )
                    .into());
                }
                first = Some((Instant::now(), done));
            }
            if done >= total {
                break Instant::now();
            }
            if pipeline.is_finished() {
                let why = match pipeline.await {
                    Ok(Ok(())) => "it stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(
                    format!("the pipeline did not consume the benchmark input: {why}").into(),
                );
            }
            if Instant::now() > deadline {
                return Err("the pipeline did not consume the benchmark input in time".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (t0, done0) = first.unwrap_or((last, 0));
        // A rate measured over a sliver of the input is noise, and the latency
        // run below feeds at half of it: refuse rather than flood the broker.
        if total - done0 < total / 2 {
            return Err(format!(
                "the pipeline consumed {done0} of {events} events before its group settled, \
             leaving too few to measure a rate; run with more events"
            )
            .into());
        }
        let pipeline_rate =
            (total - done0) as f64 / last.duration_since(t0).as_secs_f64().max(1e-3);

        // Latency at half the sustained rate: every event is a new customer, so
        // every event yields a first classification.
        let reader: StreamConsumer = client
            .clone()
            .set("group.id", format!("{id}-reader"))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "latest")
            .create()?;
        reader.subscribe(&[&output])?;
        tokio::time::sleep(Duration::from_secs(3)).await; // join before producing
        let rate = (pipeline_rate / 2.0).max(1.0);
        // Never more than the throughput run: the latency run's size is bounded
        // by what the caller asked for.
        let n = ((rate * latency_seconds) as usize).clamp(1, events);
        let sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
            Default::default();
        let producer2 = producer.clone();
        let sent2 = sent.clone();
        let topic = inputs[1].clone();
        let feeder = tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..n {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let customer = format!("lat-{i}");
                let value = encode(
                    &purchase(&customer, &format!("lat-{i}"), crate::ingest::now_ms()),
                    WireFormat::Protobuf,
                );
                if let Ok(mut m) = sent2.lock() {
                    m.insert(customer.clone(), Instant::now());
                }
                let _ =
                    producer2.send_result(FutureRecord::to(&topic).key(&customer).payload(&value));
            }
        });
        let mut latencies = Vec::with_capacity(n);
        let end = Instant::now() + Duration::from_secs_f64(latency_seconds + 30.0);
        while latencies.len() < n && Instant::now() < end {
            let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), reader.recv()).await
            else {
                continue;
            };
            let Some(key) = msg.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
                continue;
            };
            let at = sent.lock().ok().and_then(|m| m.get(&key).copied());
            if let Some(at) = at {
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let _ = feeder.await;
        let _ = stop_tx.send(());
        let _ = pipeline.await;
        latencies.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            if latencies.is_empty() {
                f64::NAN
            } else {
                latencies[((latencies.len() - 1) as f64 * q).round() as usize]
            }
        };
        Ok(E2eBench {
            model: match model {
                E2eModel::Rules => "rules".into(),
                E2eModel::Transformer => "transformer".into(),
            },
            events,
            raw_events_per_second: raw_rate,
            pipeline_events_per_second: pipeline_rate,
            ratio: pipeline_rate / raw_rate.max(1e-9),
            latency_rate: rate,
            latency_samples: latencies.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        })
    }
    .await;
    delete_bench_topics(
        &admin,
        &[
            &inputs[0], &inputs[1], &inputs[2], &changelog, &dlq, &output, &current,
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Deletes a benchmark's topics; a failure is logged with the names, so that
/// whoever runs the benchmark can delete them by hand.
pub(super) async fn delete_bench_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&str],
) {
    let failed: Vec<String> = match admin.delete_topics(topics, &AdminOptions::new()).await {
        Ok(results) => results
            .into_iter()
            .filter_map(|r| r.err().map(|(t, e)| format!("{t}: {e}")))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    if !failed.is_empty() {
        tracing::warn!(
            topics = ?topics,
            failures = ?failed,
            "Could not delete the benchmark's topics; delete them by hand."
        );
    }
}

/// The client context of the benchmark readers: partition EOF is how they
/// know they are done, not an error worth a log line.
struct ReadToEnd;

impl rdkafka::ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(error = %error, reason, "Benchmark reader client error.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEnd {}

/// A consumer that reads the given partitions from the beginning to their
/// ends, without a group's commits, reporting partition EOF.
fn read_to_end_consumer(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
) -> Result<BaseConsumer<ReadToEnd>, KafkaError> {
    let mut c = client.clone();
    // The pipeline's own consumer settings, for the baseline too.
    crate::ingest::reader_defaults(&mut c, group, true);
    let consumer: BaseConsumer<ReadToEnd> = c.create_with_context(ReadToEnd)?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions {
            tpl.add_partition_offset(t, *p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// handing each record to `on_record`; returns the time from the first
/// record (connection set-up is not throughput). The one read loop of the
/// raw baselines and the ingest pass, so both are timed alike.
fn read_to_end(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: i32,
    on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Duration, KafkaError> {
    let all: Vec<i32> = (0..partitions).collect();
    let span = read_span(client, group, topics, &all, on_record)?;
    Ok(span.took())
}

/// When a read saw its first record and when it reached the end.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: Option<Instant>,
    end: Instant,
}

impl Span {
    fn took(&self) -> Duration {
        self.first.map(|f| self.end - f).unwrap_or_default()
    }

    /// From the earliest first record to the latest end of several reads
    /// that ran at the same time.
    fn union(spans: &[Span]) -> Duration {
        let first = spans.iter().filter_map(|s| s.first).min();
        let end = spans.iter().map(|s| s.end).max();
        match (first, end) {
            (Some(f), Some(e)) => e - f,
            _ => Duration::ZERO,
        }
    }
}

/// [`read_to_end`] of the listed partitions of `topics`.
fn read_span(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Span, KafkaError> {
    let consumer = read_to_end_consumer(client, group, topics, partitions)?;
    let mut started: Option<Instant> = None;
    let mut eof = 0usize;
    let want = topics.len() * partitions.len();
    while eof < want {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => return Err(e),
            Some(Ok(msg)) => {
                started.get_or_insert_with(Instant::now);
                on_record(&msg);
            }
        }
    }
    Ok(Span {
        first: started,
        end: Instant::now(),
    })
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// doing nothing with the records (the baseline).
fn raw_read_all(
    client: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(u64, Duration), KafkaError> {
    let mut n = 0u64;
    let took = read_to_end(client, "segstream-bench-raw", topics, partitions, |_| {
        n += 1
    })?;
    Ok((n, took))
}

/// The end-to-end results as a Markdown table.
pub fn e2e_markdown(b: &E2eBench) -> String {
    format!(
        "| end to end, {} model ({} events) | value |\n| --- | --- |\n\
         | raw librdkafka read of the input (baseline) | {:.0} events/s |\n\
         | pipeline, transactions on | {:.0} events/s |\n\
         | pipeline / raw | {:.3} |\n\
         | latency run | {:.0} events/s, {} segment changes |\n\
         | event → SegmentChange visible (read_committed), p50 | {:.0} ms |\n\
         | same, p99 | {:.0} ms |\n",
        b.model,
        b.events,
        b.raw_events_per_second,
        b.pipeline_events_per_second,
        b.ratio,
        b.latency_rate,
        b.latency_samples,
        b.p50_ms,
        b.p99_ms
    )
}
