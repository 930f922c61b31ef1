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

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde::Serialize;

use crate::event::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Review};

mod e2e;
mod floor;
mod history;
mod ingest;
mod raw;
mod report;
mod risk;
mod running;
mod score;
mod state;
mod train;

pub use e2e::{e2e, e2e_markdown, E2eBench, Latency};
pub use floor::Floor;
pub use history::{HistoryE2e, OutcomesCost};
pub use ingest::{
    ingest, ingest_in_memory, ingest_markdown, memory_ingest_markdown, IngestBench,
    MemoryIngestBench,
};
use raw::{raw_read_all, read_span, Span};
pub use report::{suite_markdown, Machine, Suite};
pub use risk::{risk, risk_markdown, RiskBench, RuleScore};
pub use score::{score, score_markdown, E2eModel, ScoreBenchRow};
pub use state::{state, state_markdown, RestoreBench, StateBench};
pub use train::{
    history_for, sparse_markdown, summarize as train_summary, train, train_markdown, train_sparse,
    SparseBench, TrainBench, SPARSE_SEEDS,
};

/// What a benchmark returns; its error is reported, not classified.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One benchmark's outcome: its results, or why it has none.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    /// It ran.
    Done(T),
    /// It was not asked for.
    Skipped,
    /// It failed with this error.
    Failed(String),
}

impl<T> Outcome<T> {
    /// Wraps a benchmark's result.
    pub fn from_result<E: std::fmt::Display>(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Outcome::Done(v),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    pub(super) fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

use crate::rng::Rng;

const CATEGORIES: [&str; 12] = [
    "shoes", "socks", "hats", "bags", "shirts", "coats", "watches", "toys", "books", "garden",
    "kitchen", "sports",
];

/// One synthetic event: mostly browsing, some purchases, a few reviews.
fn synthetic_event(rng: &mut Rng, customer: &str, i: usize, time_ms: i64) -> Event {
    let category = CATEGORIES[rng.below(CATEGORIES.len())].to_string();
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
