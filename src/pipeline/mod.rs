//! The run loop (`segstream run`): consume → update state → score dirty and
//! due customers → decide → produce segment changes, changelog records and
//! dead letters → send the consumed offsets → commit, all in ONE Kafka
//! transaction per commit cycle.
//!
//! # Guarantee: exactly once
//!
//! Offsets follow outputs: the offsets of the records a cycle consumed are
//! committed inside the transaction that carries everything those records
//! caused (segment changes, the customers' new state in the changelog, dead
//! letters). Either all of it becomes visible to `read_committed` readers, or
//! none of it and the records are consumed again. The producer is fenced by
//! the consumer group's metadata (KIP-447), so a zombie that lost its
//! partitions cannot commit; a restarted instance with the same
//! transactional id aborts its predecessor's open transaction at start.
//!
//! State is partition-local and co-partitioned: partition `p` of every input
//! topic and of the changelog hold the same customers. The consumer uses the
//! `range` assignor, which gives an instance the same partition numbers of
//! every input topic (cooperative-sticky does not, and a customer's events
//! would be split across instances). On assignment, a partition's state is
//! restored from the changelog before any of its input is processed; on
//! revocation or on any transaction failure the open transaction is aborted,
//! local state is dropped and rebuilt from the changelog (which holds exactly
//! the committed state), and consumption resumes from the committed offsets.

pub mod directory;
mod http;
pub mod output;
pub mod snapshot;
mod watchdog;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use directory::{Directory, LookupRequest};
pub use http::Health;

/// Lookups waiting per stream thread before the endpoint answers 503.
const LOOKUP_QUEUE: usize = 64;
pub use watchdog::{Watchdog, EXIT_STALLED};

use crate::config::{Config, OffsetReset};
use crate::decide::{self, risk, Hysteresis};
use crate::event::proto::Trigger;
use crate::event::{Decoder, Reason, Rejection};
use crate::ingest::align::{Aligner, Backlog};
use crate::ingest::{self, DeadLetter, Routed};
use crate::privacy::Pseudonymizer;
use crate::score::{ModelWatcher, PollOutcome, RescoreSweep, Scorer};
use crate::state::changelog::{self, drain_dirty};
use crate::state::{CustomerState, PartitionStore, RecordOutcome};
use crate::telemetry::kafka_log::{self, QuietContext};
use crate::telemetry::{Metrics, Tally};

/// Errors that end the run loop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Configuration could not be turned into clients.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A Kafka call failed fatally (e.g. this producer was fenced by a newer
    /// instance with the same transactional id).
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The topics do not fit together (missing, or partition counts differ).
    #[error("topics: {0}")]
    Topics(String),
    /// Restoring state failed.
    #[error(transparent)]
    Restore(#[from] changelog::ChangelogError),
    /// Scoring failed in a way retrying cannot fix.
    #[error(transparent)]
    Score(#[from] crate::score::ScoreError),
    /// The privacy settings cannot be used (e.g. no pseudonymization key).
    #[error("privacy: {0}")]
    Privacy(String),
    /// An output record could not be encoded.
    #[error("{0}")]
    Encode(String),
    /// Other I/O (the HTTP listener).
    #[error("{0}")]
    Io(String),
    /// A helper thread or blocking task could not start or panicked.
    #[error("{0}")]
    Task(String),
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { what, source }
}

/// Rebalance notices, taken by the loop after each poll, and the input
/// partitions' end offsets from librdkafka's statistics (for the lag gauge).
#[derive(Default)]
pub struct PipelineContext {
    events: Mutex<Vec<RebalanceNotice>>,
    pending: AtomicBool,
    /// Topic → partition → end offset.
    ends: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
}

#[derive(Debug, Clone)]
enum RebalanceNotice {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl ClientContext for PipelineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_log::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_log::client_error("consumer", &error, reason);
    }

    /// Every `statistics.interval.ms`: keeps the end of each fetched
    /// partition (the last stable offset, as `read_committed` sees it), and
    /// ends a broker outage in the log once every broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if kafka_log::all_brokers_up(&statistics) {
            kafka_log::brokers_up();
        }
        let Ok(mut ends) = self.ends.lock() else {
            return;
        };
        for (name, topic) in &statistics.topics {
            for p in topic.partitions.values() {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if p.partition >= 0 && end >= 0 {
                    ends.entry(name.clone())
                        .or_default()
                        .insert(p.partition, end);
                }
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>()
        };
        let notice = match rebalance {
            Rebalance::Assign(tpl) => RebalanceNotice::Assigned(list(tpl)),
            Rebalance::Revoke(tpl) => RebalanceNotice::Revoked(list(tpl)),
            Rebalance::Error(e) => {
                warn!(error = %e, "Rebalance error.");
                return;
            }
        };
        if let Ok(mut events) = self.events.lock() {
            events.push(notice);
            self.pending.store(true, Ordering::Release);
        }
    }
}

/// Why a customer is scored this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Event,
    Inactivity,
    ModelUpdate,
}

impl Why {
    fn trigger(self) -> Trigger {
        match self {
            Why::Event => Trigger::Event,
            Why::Inactivity => Trigger::Inactivity,
            Why::ModelUpdate => Trigger::ModelUpdate,
        }
    }
}

/// The work of the open transaction.
#[derive(Default)]
struct Cycle {
    open: bool,
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    dead_letters: Vec<DeadLetter>,
    to_score: BTreeMap<i32, BTreeMap<String, Why>>,
    records: u64,
    /// Kafka timestamps (ms) of the cycle's records, for end-to-end latency.
    timestamps: Vec<i64>,
    /// Erasure requests consumed: (partition, stored id, offset).
    erasures: Vec<(i32, String, i64)>,
    /// Erasure audit entries to write: (audit key, JSON value).
    audits: Vec<(String, Vec<u8>)>,
    /// Risk flags raised as events were applied: (partition, customer,
    /// change, as-of event time, wall clock).
    risk_changes: Vec<(i32, String, risk::Transition, i64, i64)>,
}

/// The running pipeline of one instance.
pub struct Pipeline {
    cfg: Config,
    consumer: Arc<StreamConsumer<PipelineContext>>,
    producer: FutureProducer<QuietContext>,
    decoder: Decoder,
    rules: Hysteresis,
    stores: BTreeMap<i32, PartitionStore>,
    assigned: BTreeSet<(Arc<str>, i32)>,
    /// Interned topic names (no allocation per record).
    topic_names: BTreeMap<String, Arc<str>>,
    scorer: Arc<Scorer>,
    metrics: Metrics,
    /// Per-record counts, flushed to `metrics` once per cycle.
    tally: Tally,
    /// Committed offset (next record to process) of each assigned input
    /// partition, for the lag gauge.
    committed: BTreeMap<(Arc<str>, i32), i64>,
    /// Gauge updates so far (state size is measured every tenth).
    gauge_ticks: u64,
    health: Arc<Health>,
    cycle: Cycle,
    sweep: Option<RescoreSweep<(i32, String)>>,
    max_dead_letter_bytes: usize,
    /// To re-create the producer after it was fenced.
    producer_config: rdkafka::ClientConfig,
    /// When the producer was last re-created (bounds fencing loops).
    fenced_at: Vec<Instant>,
    /// Every blocking client call goes through it (see `watchdog`).
    watchdog: Watchdog,
    /// Consumed records waiting for the event-time merge of their partition.
    aligner: Aligner<Held>,
    /// Next offset to consume of each input topic partition (what the
    /// aligner has seen), to tell a topic read to its end.
    fetched: BTreeMap<(Arc<str>, i32), i64>,
    /// Input partitions paused because the aligner holds too many of them.
    paused: BTreeSet<(Arc<str>, i32)>,
    /// Scratch for released records (reused, no allocation per record).
    released: Vec<(Arc<str>, Held)>,
    /// Which stream thread this is.
    thread: StreamThread,
    /// Whether this thread counts in [`Health::assigned`].
    has_assignment: bool,
    /// Partition ownership, for lookups.
    directory: Arc<Directory>,
    /// Replaces customer ids at ingest (`privacy.pseudonymize`).
    pseudonymizer: Option<Arc<Pseudonymizer>>,
}

/// A consumed record in the aligner.
struct Held {
    item: HeldItem,
    offset: i64,
    timestamp_ms: i64,
}

enum HeldItem {
    /// A valid event, with its original record for a `late` dead letter.
    Event(Box<ingest::SourcedEvent>, OwnedSource),
    /// A record refused at decoding.
    Refused(DeadLetter),
}

/// An owned copy of a consumed record.
struct OwnedSource {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

impl OwnedSource {
    fn of(record: &ingest::SourceRecord<'_>) -> Self {
        OwnedSource {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record.headers.clone(),
            timestamp_ms: record.timestamp_ms,
        }
    }

    fn record<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        offset: i64,
    ) -> ingest::SourceRecord<'a> {
        ingest::SourceRecord {
            topic,
            partition,
            offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: self.headers.clone(),
        }
    }
}

/// Runs an instance until `shutdown` resolves: waits for a model, joins the
/// group, and processes until stopped; the open cycle is committed on the
/// way out.
pub async fn run(
    cfg: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), PipelineError> {
    let health = Arc::new(Health::default());
    let pseudonymizer = crate::privacy::Pseudonymizer::from_config(&cfg.privacy)
        .map_err(PipelineError::Privacy)?
        .map(Arc::new);
    let directory = Directory::new(&cfg, pseudonymizer.clone());
    if !cfg.pipeline.http_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.pipeline.http_listen)
            .await
            .map_err(|e| PipelineError::Io(format!("binding {}: {e}", cfg.pipeline.http_listen)))?;
        tokio::spawn(http::serve(
            listener,
            http::Api {
                health: health.clone(),
                metrics: metrics.clone(),
                directory: directory.clone(),
            },
        ));
    }
    let mut shutdown = std::pin::pin!(shutdown);

    // A model first: without one nothing can be decided.
    crate::score::environment(&cfg.score)?;
    let mut watcher = ModelWatcher::new(&cfg.score, cfg.state.limits().state, metrics.clone());
    let model = loop {
        let outcome = tokio::task::block_in_place(|| watcher.poll());
        if let PollOutcome::Loaded(m) = outcome {
            break *m;
        }
        // WARN: the instance is not ready until a model arrives.
        warn!(
            registry = %cfg.score.registry.display(),
            "Waiting for a valid model in the registry; not ready until one is published and promoted."
        );
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(cfg.score.poll_interval) => {}
        }
    };
    info!(version = %model.version, provider = model.provider.as_str(), "Serving model.");
    let scorer = Arc::new(Scorer::start(&cfg.score, model, metrics.clone()));
    health.model_loaded.store(true, Ordering::Relaxed);
    // The watcher swaps a new model into the shared scorer once, then tells
    // every stream thread its version so each rescores its own customers.
    let (model_tx, model_rx) = watch::channel::<Arc<str>>(Arc::from(""));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watch_thread = {
        let stop = stop_watch.clone();
        let interval = cfg.score.poll_interval;
        let scorer = scorer.clone();
        std::thread::Builder::new()
            .name("segstream-model-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let deadline = Instant::now() + interval;
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if let PollOutcome::Loaded(m) = watcher.poll() {
                        let version: Arc<str> = m.version.clone();
                        scorer.swap(*m);
                        if model_tx.send(version).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| PipelineError::Task(format!("starting the model watcher: {e}")))?
    };

    let watchdog = Watchdog::start(&cfg.pipeline, health.clone(), metrics.clone())?;
    let threads = cfg.pipeline.stream_threads();
    health.threads.store(threads, Ordering::Relaxed);
    let gauges = Arc::new(ThreadGauges::new(threads));
    let mut pipelines = Vec::with_capacity(threads);
    let mut lookup_queues = Vec::with_capacity(threads);
    for thread in 0..threads {
        let (tx, rx) = mpsc::channel(LOOKUP_QUEUE);
        directory.add_thread(thread, tx);
        lookup_queues.push(rx);
        pipelines.push(Pipeline::build(
            cfg.clone(),
            StreamThread {
                index: thread,
                of: threads,
                gauges: gauges.clone(),
                directory: directory.clone(),
                pseudonymizer: pseudonymizer.clone(),
            },
            scorer.clone(),
            metrics.clone(),
            health.clone(),
            watchdog.lane(thread),
        )?);
    }
    if let Some(first) = pipelines.first() {
        directory.set_partitions(first.check_topics().await?);
    }
    if let Err(e) = directory.start_peers(&cfg) {
        warn!(error = %e, "Lookups cannot name other instances.");
    }
    info!(
        topics = ?cfg.input.topics,
        group = %cfg.kafka.group_id,
        output = %cfg.output.topic,
        threads,
        "Running."
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (p, lookups) in pipelines.into_iter().zip(lookup_queues) {
        tasks.spawn(stream_thread(p, stop_rx.clone(), model_rx.clone(), lookups));
    }
    // Until shutdown or the first stream thread that ends (on an error: the
    // instance stops, as a single-threaded one would, and is restarted).
    let mut result = Ok(());
    tokio::select! {
        _ = &mut shutdown => {
            info!("Shutdown requested; committing the open cycles.");
        }
        Some(ended) = tasks.join_next() => {
            result = joined(ended);
        }
    }
    health.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    while let Some(ended) = tasks.join_next().await {
        let r = joined(ended);
        if result.is_ok() {
            result = r;
        }
    }
    stop_watch.store(true, Ordering::Relaxed);
    let _ = watch_thread.join();
    directory.stop();
    watchdog.stop();
    if let Ok(scorer) = Arc::try_unwrap(scorer) {
        scorer.shutdown();
    }
    result
}

fn joined(
    ended: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    ended.map_err(|e| PipelineError::Task(format!("a stream thread: {e}")))?
}

/// Which stream thread a [`Pipeline`] is, and what the threads share
/// besides the scorer and metrics.
struct StreamThread {
    index: usize,
    of: usize,
    gauges: Arc<ThreadGauges>,
    directory: Arc<Directory>,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
}

/// Per-thread values of the instance-wide gauges (assigned partitions,
/// customers and bytes in state); each gauge shows the sum.
struct ThreadGauges {
    slots: Vec<[std::sync::atomic::AtomicI64; 3]>,
}

impl ThreadGauges {
    const ASSIGNED: usize = 0;
    const CUSTOMERS: usize = 1;
    const BYTES: usize = 2;

    fn new(threads: usize) -> ThreadGauges {
        ThreadGauges {
            slots: (0..threads).map(|_| Default::default()).collect(),
        }
    }

    /// Sets this thread's value of gauge `which`; returns the sum over threads.
    fn set(&self, thread: usize, which: usize, value: i64) -> i64 {
        if let Some(slot) = self.slots.get(thread) {
            slot[which].store(value, Ordering::Relaxed);
        }
        self.slots
            .iter()
            .map(|s| s[which].load(Ordering::Relaxed))
            .sum()
    }
}

/// One stream thread: its own consumer-group member and transactional
/// producer, running cycles until `stop` or an error.
async fn stream_thread(
    mut p: Pipeline,
    mut stop: watch::Receiver<bool>,
    mut models: watch::Receiver<Arc<str>>,
    mut lookups: mpsc::Receiver<LookupRequest>,
) -> Result<(), PipelineError> {
    let watchdog = p.watchdog.clone();
    let producer = p.producer.clone();
    watchdog
        .call("init_transactions", move |t| producer.init_transactions(t))
        .await?
        .map_err(kafka("initializing transactions"))?;
    let mut topics: Vec<&str> = p.cfg.input.topics.iter().map(String::as_str).collect();
    if !p.cfg.privacy.erasure_topic.is_empty() {
        // Co-partitioned: the range assignor gives each thread the erasure
        // partitions of its own customers.
        topics.push(&p.cfg.privacy.erasure_topic);
    }
    p.consumer
        .subscribe(&topics)
        .map_err(kafka("subscribing to the input topics"))?;
    let consumer = p.consumer.clone();
    let mut tick = tokio::time::interval(p.cfg.pipeline.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = gauges.tick() => {
                p.update_gauges();
            }
            _ = stop.changed() => {
                break p.end_cycle().await;
            }
            Some(q) = lookups.recv() => {
                p.answer_lookup(q);
            }
            Ok(()) = models.changed() => {
                let version = models.borrow_and_update().clone();
                p.on_new_model(&version);
            }
            _ = tick.tick() => {
                if let Err(e) = p.end_cycle().await {
                    break Err(e);
                }
            }
            msg = consumer.recv() => {
                if let Err(e) = p.on_message(msg).await {
                    break Err(e);
                }
            }
        }
    };
    if let Err(e) = &result {
        error!(thread = p.thread.index, error = %e, "A stream thread stopped on an error.");
        if p.cycle.open {
            let producer = p.producer.clone();
            match watchdog
                .call("abort_transaction", move |t| producer.abort_transaction(t))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "Aborting the open transaction on the way out failed; the broker times it out.")
                }
                Err(e) => warn!(error = %e, "Aborting the open transaction on the way out failed."),
            }
        }
    }
    p.set_assigned(false);
    // Closing the clients talks to the broker (leaving the group, flushing):
    // under the deadline too.
    drop(consumer);
    if let Err(e) = watchdog
        .call("closing the Kafka clients", move |_| drop(p))
        .await
    {
        warn!(error = %e, "Closing the Kafka clients failed.");
    }
    result
}

impl Pipeline {
    fn build(
        cfg: Config,
        thread: StreamThread,
        scorer: Arc<Scorer>,
        metrics: Metrics,
        health: Arc<Health>,
        watchdog: Watchdog,
    ) -> Result<Self, PipelineError> {
        let mut c = cfg.kafka.consumer_config()?;
        ingest::consumer_defaults(&mut c);
        if !cfg.pipeline.advertised_url.is_empty() {
            // How the other instances find this one (see `directory`).
            c.set(
                "client.id",
                directory::client_id(&cfg.pipeline.advertised_url, thread.index),
            );
        }
        c.set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .set(
                "auto.offset.reset",
                match cfg.input.auto_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            );
        let consumer: StreamConsumer<PipelineContext> = c
            .create_with_context(PipelineContext::default())
            .map_err(kafka("creating the consumer"))?;
        let transactional_id = if cfg.pipeline.transactional_id.is_empty() {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{}-{host}", cfg.kafka.group_id)
        } else {
            cfg.pipeline.transactional_id.clone()
        };
        // One producer per stream thread; each id stays stable across
        // restarts with the same thread count, so a restart fences its
        // predecessor's thread at once.
        let transactional_id = if thread.of > 1 {
            format!("{transactional_id}-{}", thread.index)
        } else {
            transactional_id
        };
        let mut pc = cfg.kafka.producer_config()?;
        let max = (cfg.dead_letter.max_value_bytes + 256 * 1024).max(1_000_000);
        ingest::producer_defaults(&mut pc);
        pc.set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", max.to_string())
            .set(
                "transaction.timeout.ms",
                cfg.pipeline.transaction_timeout.as_millis().to_string(),
            );
        let producer: FutureProducer<QuietContext> = pc
            .create_with_context(QuietContext)
            .map_err(kafka("creating the producer"))?;
        let producer_config = pc;
        info!(thread = thread.index, transactional_id = %transactional_id, "Transactional producer ready.");
        let mut topic_names = BTreeMap::new();
        let cfg_topics: Vec<Arc<str>> = cfg
            .input
            .topics
            .iter()
            .map(|t| ingest::intern(&mut topic_names, t))
            .collect();
        let cfg_max_idle = cfg.input.max_idle;
        Ok(Pipeline {
            consumer: Arc::new(consumer),
            decoder: cfg.decoder(),
            rules: cfg.decide.rules(),
            max_dead_letter_bytes: cfg.dead_letter.max_value_bytes,
            cfg,
            producer,
            stores: BTreeMap::new(),
            assigned: BTreeSet::new(),
            topic_names,
            scorer,
            tally: metrics.tally(),
            metrics,
            committed: BTreeMap::new(),
            gauge_ticks: 0,
            health,
            cycle: Cycle::default(),
            sweep: None,
            producer_config,
            fenced_at: Vec::new(),
            watchdog,
            aligner: Aligner::new(cfg_topics, cfg_max_idle),
            fetched: BTreeMap::new(),
            paused: BTreeSet::new(),
            released: Vec::new(),
            directory: thread.directory.clone(),
            pseudonymizer: thread.pseudonymizer.clone(),
            thread,
            has_assignment: false,
        })
    }

    /// Erases the customers of the cycle's erasure requests (their buffered
    /// events were applied first) and queues one audit entry per request.
    fn apply_erasures(&mut self) {
        let erasures = std::mem::take(&mut self.cycle.erasures);
        let now = ingest::now_ms();
        for (partition, id, offset) in erasures {
            let had_state = self
                .stores
                .get_mut(&partition)
                .is_some_and(|s| s.erase(&id));
            let key = crate::privacy::audit_key(self.pseudonymizer.as_deref(), &id);
            info!(
                customer = %key,
                partition,
                offset,
                had_state,
                "Erased a customer (privacy.erasure_topic)."
            );
            self.metrics.erasures.inc();
            if !self.cfg.privacy.audit_topic.is_empty() {
                let value = serde_json::json!({
                    "customer": key,
                    "partition": partition,
                    "request_offset": offset,
                    "had_state": had_state,
                    "erased_at_ms": now,
                });
                self.cycle
                    .audits
                    .push((key, value.to_string().into_bytes()));
            }
        }
    }

    /// Answers a lookup from this thread's state (`None`: no such customer).
    fn answer_lookup(&self, q: LookupRequest) {
        let Some(store) = self.stores.get(&q.partition) else {
            // Not (or no longer) ours: dropping the reply makes it a 503.
            return;
        };
        let answer = store.get(&q.customer_id).map(|state| {
            let d = &state.decision;
            let model = self.scorer.current();
            let scores = if model.version.as_ref() == d.model_version
                && model.segments.len() == d.scores.len()
            {
                serde_json::Value::Object(
                    model
                        .segments
                        .iter()
                        .zip(&d.scores)
                        .map(|(s, v)| (s.clone(), serde_json::json!(v)))
                        .collect(),
                )
            } else {
                serde_json::json!(d.scores)
            };
            let mut offsets = serde_json::Map::new();
            for ((topic, p), committed) in &self.committed {
                if *p != q.partition {
                    continue;
                }
                let consumed = self
                    .cycle
                    .offsets
                    .get(&(topic.clone(), *p))
                    .copied()
                    .unwrap_or(*committed);
                offsets.insert(
                    topic.to_string(),
                    serde_json::json!({"committed": committed, "consumed": consumed}),
                );
            }
            serde_json::json!({
                "customer_id": q.customer_id,
                "partition": q.partition,
                "segment": (!d.segment.is_empty()).then_some(&d.segment),
                "scores": scores,
                "purchase_probability": d.purchase_probability,
                "churn_probability": d.churn_probability,
                "predicted_spend": d.predicted_spend,
                "model_version": d.model_version,
                "as_of_ms": d.as_of_ms,
                "decided_at_ms": d.decided_at_ms,
                "segment_since_ms": d.since_ms,
                "last_event_ms": state.last_event_ms,
                "risk_flags": risk::Rule::of_flags(d.risk_flags).map(risk::Rule::as_str).collect::<Vec<_>>(),
                "offsets": offsets,
            })
        });
        let _ = q.reply.send(answer);
    }

    /// Records whether this thread holds its current assignment, restored
    /// (the instance is ready when every thread does).
    fn set_assigned(&mut self, assigned: bool) {
        if assigned != self.has_assignment {
            self.has_assignment = assigned;
            if assigned {
                self.health.assigned.fetch_add(1, Ordering::Relaxed);
            } else {
                self.health.assigned.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Input topics, changelog and dead-letter topics exist, and the input
    /// topics and the changelog have the same number of partitions.
    /// Returns the input topics' partition count.
    async fn check_topics(&self) -> Result<i32, PipelineError> {
        let consumer = self.consumer.clone();
        let md = self
            .watchdog
            .call("fetch_metadata", move |t| consumer.fetch_metadata(None, t))
            .await?
            .map_err(kafka("fetching cluster metadata"))?;
        let count = |name: &str| {
            md.topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len())
        };
        let mut problems = Vec::new();
        let mut counts = BTreeMap::new();
        for t in self
            .cfg
            .input
            .topics
            .iter()
            .chain(std::iter::once(&self.cfg.state.changelog_topic))
        {
            match count(t) {
                Some(n) => {
                    counts.insert(t.clone(), n);
                }
                None => problems.push(format!("{t} does not exist")),
            }
        }
        if count(&self.cfg.dead_letter.topic).is_none() {
            problems.push(format!("{} does not exist", self.cfg.dead_letter.topic));
        }
        let risk_topic = &self.cfg.output.risk_topic;
        if !risk_topic.is_empty() && count(risk_topic).is_none() {
            problems.push(format!("{risk_topic} (output.risk_topic) does not exist"));
        }
        let privacy = &self.cfg.privacy;
        if !privacy.erasure_topic.is_empty() {
            match count(&privacy.erasure_topic) {
                Some(n) => {
                    counts.insert(privacy.erasure_topic.clone(), n);
                }
                None => problems.push(format!(
                    "{} (privacy.erasure_topic) does not exist",
                    privacy.erasure_topic
                )),
            }
        }
        if !privacy.audit_topic.is_empty() && count(&privacy.audit_topic).is_none() {
            problems.push(format!(
                "{} (privacy.audit_topic) does not exist",
                privacy.audit_topic
            ));
        }
        if !self.cfg.output.topic.contains("{segment}") && count(&self.cfg.output.topic).is_none() {
            problems.push(format!("{} does not exist", self.cfg.output.topic));
        }
        // A changelog that deletes instead of compacting loses state older
        // than its retention at the next restore; a current-membership topic
        // that does, customers who have not moved for that long.
        let current = &self.cfg.output.current_topic;
        let mut compacted = vec![(
            &self.cfg.state.changelog_topic,
            "state older than its retention would be lost at the next restore",
        )];
        if !current.is_empty() {
            match count(current) {
                Some(n) => {
                    counts.insert(current.clone(), n);
                    compacted.push((
                        current,
                        "customers whose segment has not changed for its retention would vanish from it",
                    ));
                }
                None => problems.push(format!(
                    "{current} (output.current_topic) does not exist; create it compacted \
                     with the input's partition count, or set output.current_topic = \"\""
                )),
            }
        }
        for (topic, why) in compacted {
            if !counts.contains_key(topic) {
                continue;
            }
            match self.cleanup_policy(topic).await {
                Ok(policy) if policy.split(',').any(|p| p.trim() == "compact") => {}
                Ok(policy) => problems.push(format!(
                    "{topic} must be compacted (cleanup.policy=compact), it has cleanup.policy={policy}: {why}"
                )),
                Err(e) => warn!(
                    topic = %topic,
                    error = %e,
                    "Could not read the topic's cleanup.policy (DescribeConfigs); make sure it is compact."
                ),
            }
        }
        let distinct: BTreeSet<usize> = counts.values().copied().collect();
        if distinct.len() > 1 {
            problems.push(format!(
                "input topics, the changelog, the current-membership and the erasure topic must \
                 have the same partition count (co-partitioning): {counts:?}"
            ));
        }
        if problems.is_empty() {
            let n = self
                .cfg
                .input
                .topics
                .first()
                .and_then(|t| counts.get(t))
                .copied()
                .unwrap_or(0);
            Ok(i32::try_from(n).unwrap_or(i32::MAX))
        } else {
            Err(PipelineError::Topics(format!(
                "{} (for the local broker: `make topics`)",
                problems.join("; ")
            )))
        }
    }

    /// A topic's `cleanup.policy` (DescribeConfigs).
    async fn cleanup_policy(&self, topic: &str) -> Result<String, String> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        let admin: AdminClient<QuietContext> = self
            .cfg
            .kafka
            .client_config()
            .map_err(|e| e.to_string())?
            .create_with_context(QuietContext)
            .map_err(|e| e.to_string())?;
        let topic = ResourceSpecifier::Topic(topic);
        let opts = AdminOptions::new().request_timeout(Some(self.watchdog.timeout()));
        let described = tokio::time::timeout(
            self.watchdog.timeout(),
            admin.describe_configs([&topic], &opts),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let resource = described
            .into_iter()
            .next()
            .ok_or("no answer")?
            .map_err(|e| e.to_string())?;
        Ok(resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "delete".into()))
    }

    async fn begin(&mut self) -> Result<(), PipelineError> {
        if !self.cycle.open {
            let producer = self.producer.clone();
            self.watchdog
                .call("begin_transaction", move |_| producer.begin_transaction())
                .await?
                .map_err(kafka("beginning a transaction"))?;
            self.cycle.open = true;
        }
        Ok(())
    }

    async fn take_rebalances(&mut self) -> Result<(), PipelineError> {
        if !self
            .consumer
            .context()
            .pending
            .swap(false, Ordering::AcqRel)
        {
            return Ok(());
        }
        let notices: Vec<RebalanceNotice> = match self.consumer.context().events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => Vec::new(),
        };
        for n in notices {
            match n {
                RebalanceNotice::Revoked(list) => {
                    // Rebalancing: not ready until the next assignment is restored.
                    self.set_assigned(false);
                    // The generation changed: the open transaction can no
                    // longer commit its offsets. Abort; the new owner redoes it.
                    if let Err(e) = self.abort_cycle("partitions were revoked").await {
                        self.after_fatal(e).await?;
                    }
                    for (t, p) in &list {
                        let t = ingest::intern(&mut self.topic_names, t);
                        self.metrics.forget_lag(&t, *p);
                        self.committed.remove(&(t.clone(), *p));
                        self.assigned.remove(&(t, *p));
                    }
                    let keep: BTreeSet<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
                    let gone: Vec<i32> = self
                        .stores
                        .keys()
                        .filter(|p| !keep.contains(p))
                        .copied()
                        .collect();
                    self.directory.revoked(self.thread.index, &gone);
                    self.stores.retain(|p, _| keep.contains(p));
                    for (_, p) in &list {
                        self.aligner.forget(*p);
                    }
                    self.fetched.retain(|(_, p), _| keep.contains(p));
                    self.paused.retain(|(_, p)| keep.contains(p));
                    // Uncommitted changes of kept partitions are gone too: rebuild.
                    self.recover().await?;
                    info!(partitions = ?list, "Partitions revoked.");
                }
                RebalanceNotice::Assigned(list) => {
                    for (t, p) in &list {
                        let t = ingest::intern(&mut self.topic_names, t);
                        self.assigned.insert((t, *p));
                    }
                    self.load_committed(&list).await?;
                    let new: BTreeSet<i32> = list
                        .iter()
                        .map(|(_, p)| *p)
                        .filter(|p| !self.stores.contains_key(p))
                        .collect();
                    let restore_started = Instant::now();
                    self.restore(new.into_iter().collect()).await?;
                    self.set_assigned(true);
                    info!(
                        partitions = ?list,
                        restore_seconds = restore_started.elapsed().as_secs_f64(),
                        "Partitions assigned and restored."
                    );
                }
            }
        }
        Ok(())
    }

    /// Restores partitions' state, all in parallel, retrying while the
    /// broker is unreachable.
    async fn restore(&mut self, partitions: Vec<i32>) -> Result<(), PipelineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        self.directory.restoring(self.thread.index, &partitions);
        let restored = self.restore_retrying(&partitions).await;
        if restored.is_ok() {
            self.directory.restored(self.thread.index, &partitions);
        }
        restored
    }

    async fn restore_retrying(&mut self, partitions: &[i32]) -> Result<(), PipelineError> {
        let mut backoff = Duration::from_millis(200);
        let started = Instant::now();
        loop {
            match self.restore_once(partitions.to_vec()).await {
                Err(PipelineError::Restore(e)) if started.elapsed() < Duration::from_secs(600) => {
                    warn!(partitions = ?partitions, error = %e, "Restore failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn restore_once(&mut self, partitions: Vec<i32>) -> Result<(), PipelineError> {
        self.health.restoring.fetch_add(1, Ordering::Relaxed);
        let client = self.cfg.kafka.consumer_config()?;
        let topic = self.cfg.state.changelog_topic.clone();
        let limits = self.cfg.state.limits();
        let metrics = self.metrics.clone();
        let timeout = self.cfg.state.restore_timeout;
        // The restore has its own budget (state.restore_timeout); the
        // watchdog ends the instance only if it overruns that as well.
        let result = self
            .watchdog
            .call_within("restore", timeout + Duration::from_secs(30), move || {
                let mut stores: BTreeMap<i32, PartitionStore> = partitions
                    .iter()
                    .map(|p| (*p, PartitionStore::new(limits)))
                    .collect();
                changelog::restore_partitions(&client, &topic, &mut stores, &metrics, timeout)
                    .map(|_| stores)
            })
            .await;
        self.health.restoring.fetch_sub(1, Ordering::Relaxed);
        let stores = result??;
        self.stores.extend(stores);
        Ok(())
    }

    /// Drops local state of the partitions still owned, restores it from the
    /// changelog and rewinds their input to the committed offsets.
    async fn reset_kept(&mut self) -> Result<(), PipelineError> {
        let partitions: Vec<i32> = self.stores.keys().copied().collect();
        self.stores.clear();
        // Buffered records are consumed again from the committed offsets.
        self.aligner.clear();
        self.fetched.clear();
        if !self.paused.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in std::mem::take(&mut self.paused) {
                tpl.add_partition(&t, p);
            }
            if let Err(e) = self.consumer.resume(&tpl) {
                warn!(error = %e, "Resuming paused input partitions failed.");
            }
        }
        self.restore(partitions).await?;
        if self.assigned.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &self.assigned {
            let _ = tpl.add_partition(t, *p);
        }
        let consumer = self.consumer.clone();
        let committed = self
            .watchdog
            .call("committed_offsets", move |t| {
                consumer.committed_offsets(tpl, t)
            })
            .await?
            .map_err(kafka("reading committed offsets"))?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.cfg.input.auto_offset_reset {
                    OffsetReset::Earliest => Offset::Beginning,
                    OffsetReset::Latest => Offset::End,
                },
            };
            let _ = seek.add_partition_offset(e.topic(), e.partition(), offset);
        }
        let consumer = self.consumer.clone();
        self.watchdog
            .call("seek_partitions", move |t| {
                consumer.seek_partitions(seek, t)
            })
            .await?
            .map_err(kafka("rewinding to the committed offsets"))?;
        Ok(())
    }

    /// Aborts the open transaction, retrying while the broker is away; a
    /// fatal error (e.g. fenced) or a minute of failures ends the instance.
    async fn abort_cycle(&mut self, why: &str) -> Result<(), PipelineError> {
        if self.cycle.open {
            let mut backoff = Duration::from_millis(200);
            let started = Instant::now();
            loop {
                let producer = self.producer.clone();
                match self
                    .watchdog
                    .call("abort_transaction", move |t| producer.abort_transaction(t))
                    .await?
                {
                    Ok(()) => break,
                    Err(e) => {
                        let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                        if fatal || started.elapsed() > Duration::from_secs(120) {
                            return Err(PipelineError::Kafka {
                                what: "aborting a transaction",
                                source: e,
                            });
                        }
                        warn!(error = %e, "Aborting the transaction failed; retrying.");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.metrics
                .transactions
                .with_label_values(&["aborted"])
                .inc();
            warn!(
                reason = why,
                records = self.cycle.records,
                "Aborted the open transaction."
            );
        }
        self.cycle = Cycle::default();
        Ok(())
    }

    /// A fatal producer error. Being fenced is expected after the broker's
    /// transaction coordinator timed our transaction out (e.g. during a
    /// broker outage longer than `pipeline.transaction_timeout`): nothing of
    /// the open transaction was committed, so the producer is re-created
    /// (which bumps its epoch) and state is rebuilt from the committed
    /// changelog. Repeated fencing (another live instance with the same
    /// transactional id) ends the instance.
    async fn after_fatal(&mut self, e: PipelineError) -> Result<(), PipelineError> {
        let transactional = matches!(
            &e,
            PipelineError::Kafka {
                source: KafkaError::Transaction(_),
                ..
            }
        );
        self.fenced_at
            .retain(|t| t.elapsed() < Duration::from_secs(300));
        if !transactional || self.fenced_at.len() >= 3 {
            return Err(e);
        }
        self.fenced_at.push(Instant::now());
        warn!(
            error = %e,
            "The transactional producer is unusable (fenced or its transaction timed out); \
             re-creating it and rebuilding state from the changelog."
        );
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        self.cycle = Cycle::default();
        let producer: FutureProducer<QuietContext> = self
            .producer_config
            .create_with_context(QuietContext)
            .map_err(kafka("re-creating the producer"))?;
        let mut backoff = Duration::from_millis(500);
        let started = Instant::now();
        loop {
            let p = producer.clone();
            match self
                .watchdog
                .call("init_transactions", move |t| p.init_transactions(t))
                .await?
            {
                Ok(()) => break,
                Err(e) if started.elapsed() < Duration::from_secs(300) => {
                    warn!(error = %e, "Initializing transactions failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(kafka("initializing transactions")(e)),
            }
        }
        self.producer = producer;
        self.recover().await
    }

    /// [`Pipeline::reset_kept`], retried with backoff while the broker is
    /// unreachable (the instance is not ready meanwhile).
    async fn recover(&mut self) -> Result<(), PipelineError> {
        let mut backoff = Duration::from_millis(200);
        let started = Instant::now();
        loop {
            match self.reset_kept().await {
                Ok(()) => return Ok(()),
                Err(e @ PipelineError::Kafka { .. }) | Err(e @ PipelineError::Restore(_))
                    if started.elapsed() < Duration::from_secs(600) =>
                {
                    warn!(error = %e, "Rebuilding state failed; retrying.");
                    self.health.restoring.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    self.health.restoring.fetch_sub(1, Ordering::Relaxed);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn on_message(
        &mut self,
        msg: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), PipelineError> {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                kafka_log::client_error("consumer", &e, "");
                return Ok(());
            }
        };
        // A rebalance noticed during this poll applies before the record: its
        // partition's state must be restored first, and a record of a
        // partition just revoked must not be processed.
        self.take_rebalances().await?;
        let topic = ingest::intern(&mut self.topic_names, msg.topic());
        let (partition, offset) = (msg.partition(), msg.offset());
        if !self.assigned.contains(&(topic.clone(), partition)) {
            return Ok(());
        }
        if !self.stores.contains_key(&partition) {
            self.restore(vec![partition]).await?;
        }
        if *topic == *self.cfg.privacy.erasure_topic {
            // Applied at the end of the cycle, after every buffered event.
            if let Some(key) = msg.key() {
                let id = String::from_utf8_lossy(key).into_owned();
                self.cycle.erasures.push((partition, id, offset));
            }
            self.tally.consumed(&topic);
            self.cycle.offsets.insert((topic, partition), offset + 1);
            return Ok(());
        }
        let record = ingest::source_record(&msg);
        let routed = ingest::route(
            &self.decoder,
            &record,
            &topic,
            ingest::now_ms(),
            self.max_dead_letter_bytes,
        );
        let routed = match routed {
            Routed::Event(e) if self.cfg.input.check_partition => {
                match self.directory.partition_of(&e.event.customer_id) {
                    Some(p) if p != partition => Routed::DeadLetter(DeadLetter::new(
                        &record,
                        Rejection::new(
                            Reason::WrongPartition,
                            format!(
                                "customer_id hashes to partition {p} of the input topics under \
                                 input.partitioner = {}, but the record is in partition \
                                 {partition}: producers must key records by customer_id with \
                                 that partitioner",
                                self.cfg.input.partitioner.as_str()
                            ),
                        ),
                        self.max_dead_letter_bytes,
                    )),
                    _ => Routed::Event(e),
                }
            }
            other => other,
        };
        let (time_ms, item) = match routed {
            Routed::Event(mut e) => {
                if let Some(p) = &self.pseudonymizer {
                    e.event.customer_id = p.apply(&e.event.customer_id);
                }
                (
                    Some(e.event.event_time_ms),
                    HeldItem::Event(Box::new(e), OwnedSource::of(&record)),
                )
            }
            Routed::DeadLetter(d) => (None, HeldItem::Refused(d)),
        };
        self.tally.consumed(&topic);
        self.fetched.insert((topic.clone(), partition), offset + 1);
        self.aligner.push(
            &topic,
            partition,
            time_ms,
            Held {
                item,
                offset,
                timestamp_ms: msg.timestamp().to_millis().unwrap_or(-1),
            },
        );
        if self.aligner.buffered(&topic, partition) > self.cfg.input.max_buffered
            && self.paused.insert((topic.clone(), partition))
        {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(e) = self.consumer.pause(&tpl) {
                warn!(topic = %topic, partition, error = %e, "Pausing an input partition failed.");
            }
        }
        self.release(partition)
    }

    /// Applies the records of `partition` that the event-time merge lets go.
    fn release(&mut self, partition: i32) -> Result<(), PipelineError> {
        let mut out = std::mem::take(&mut self.released);
        {
            let ends = self.consumer.context().ends.lock().ok();
            let (fetched, committed) = (&self.fetched, &self.committed);
            let consumer = &self.consumer;
            // librdkafka's position, read only when needed: it moves past
            // transaction markers, which a read_committed consumer never
            // receives but which count in the partition's end offset.
            let positions = std::cell::OnceCell::new();
            let backlog = |topic: &Arc<str>| {
                let key = (topic.clone(), partition);
                let Some(end) = ends
                    .as_ref()
                    .and_then(|e| e.get(&**topic))
                    .and_then(|e| e.get(&partition))
                    .copied()
                else {
                    return Backlog::Pending;
                };
                let seen = fetched.get(&key).or_else(|| committed.get(&key));
                match seen {
                    Some(pos) if *pos >= end => return Backlog::CaughtUp,
                    // Far from the end: records wait, whatever the markers.
                    Some(pos) if end - *pos > 64 => return Backlog::Pending,
                    _ => {}
                }
                let position = positions
                    .get_or_init(|| consumer.position().ok())
                    .as_ref()
                    .and_then(|tpl: &TopicPartitionList| tpl.find_partition(topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if position.is_some_and(|pos| pos >= end) {
                    Backlog::CaughtUp
                } else {
                    Backlog::Pending
                }
            };
            self.aligner
                .release(partition, Instant::now(), backlog, &mut out);
        }
        let mut result = Ok(());
        for (topic, held) in out.drain(..) {
            if result.is_ok() {
                result = self.apply(topic, partition, held);
            }
        }
        self.released = out;
        if !self.paused.is_empty() {
            let half = self.cfg.input.max_buffered / 2;
            let resume: Vec<(Arc<str>, i32)> = self
                .paused
                .iter()
                .filter(|(t, p)| *p == partition && self.aligner.buffered(t, *p) <= half)
                .cloned()
                .collect();
            for key in resume {
                self.paused.remove(&key);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                if let Err(e) = self.consumer.resume(&tpl) {
                    warn!(topic = %key.0, partition, error = %e, "Resuming an input partition failed.");
                }
            }
        }
        result
    }

    /// Releases what the merge lets go in every partition (the idle wait
    /// of an empty topic ends with time, not only with a new record).
    fn release_all(&mut self) -> Result<(), PipelineError> {
        for p in self.aligner.partitions() {
            self.release(p)?;
        }
        Ok(())
    }

    /// Applies one released record to state (or the dead letters) and puts
    /// its offset into the open cycle.
    fn apply(&mut self, topic: Arc<str>, partition: i32, held: Held) -> Result<(), PipelineError> {
        let Held {
            item,
            offset,
            timestamp_ms,
        } = held;
        let late_letter = match item {
            HeldItem::Event(e, source) => {
                let Some(store) = self.stores.get_mut(&partition) else {
                    return Err(PipelineError::Task(format!(
                        "no state for partition {partition} after restore"
                    )));
                };
                match store.record(&e.event, tokio::time::Instant::now()) {
                    RecordOutcome::Applied => {
                        if !self.cfg.output.risk_topic.is_empty() {
                            let id = &e.event.customer_id;
                            let at = e.event.event_time_ms;
                            let findings = store
                                .get(id)
                                .map(|s| risk::evaluate(&self.cfg.risk, s.recent(), at));
                            if let (Some(findings), Some(d)) = (findings, store.decision_mut(id)) {
                                let (flags, raised) = risk::apply_only(
                                    &self.cfg.risk,
                                    d.risk_flags,
                                    findings,
                                    true,
                                    false,
                                );
                                d.risk_flags = flags;
                                let now = ingest::now_ms();
                                for t in raised {
                                    self.cycle.risk_changes.push((
                                        partition,
                                        id.clone(),
                                        t,
                                        at,
                                        now,
                                    ));
                                }
                            }
                        }
                        self.cycle
                            .to_score
                            .entry(partition)
                            .or_default()
                            .insert(e.event.customer_id.clone(), Why::Event);
                        self.tally.accepted(&topic, e.event.kind());
                        None
                    }
                    RecordOutcome::Duplicate => {
                        self.tally.duplicate();
                        None
                    }
                    RecordOutcome::Late { watermark_ms } => {
                        Some(DeadLetter::new(
                            &source.record(&topic, partition, offset),
                            Rejection::new(
                                Reason::Late,
                                format!(
                                    "event_time_ms {} is before the partition watermark {watermark_ms} \
                                     (state.allowed_lateness)",
                                    e.event.event_time_ms
                                ),
                            ),
                            self.max_dead_letter_bytes,
                        ))
                    }
                }
            }
            HeldItem::Refused(d) => Some(d),
        };
        if let Some(d) = late_letter {
            self.tally.refused(d.reason, d.truncated);
            self.cycle.dead_letters.push(d);
        }
        self.cycle.timestamps.push(timestamp_ms);
        self.cycle.offsets.insert((topic, partition), offset + 1);
        self.cycle.records += 1;
        Ok(())
    }

    /// The shared scorer now serves model `version`: rescore this thread's
    /// customers, paced.
    fn on_new_model(&mut self, version: &str) {
        let keys: Vec<(i32, String)> = self
            .stores
            .iter()
            .flat_map(|(p, s)| s.iter().map(move |(id, _)| (*p, id.clone())))
            .collect();
        info!(version = %version, customers = keys.len(), "Swapped in a new model; rescoring known customers.");
        self.sweep = Some(RescoreSweep::new(
            keys,
            self.cfg.score.rescore_per_second,
            tokio::time::Instant::now(),
        ));
    }

    /// Scores, decides, produces and commits everything of the open cycle.
    async fn end_cycle(&mut self) -> Result<(), PipelineError> {
        self.tally.flush();
        self.take_rebalances().await?;
        self.release_all()?;
        self.apply_erasures();
        let now = tokio::time::Instant::now();
        // Timers and retention.
        for (p, store) in self.stores.iter_mut() {
            store.tick(now);
            for id in store.take_due() {
                self.cycle
                    .to_score
                    .entry(*p)
                    .or_default()
                    .entry(id)
                    .or_insert(Why::Inactivity);
            }
            let evicted = store.evict_expired();
            if evicted > 0 {
                self.metrics.evicted_customers.inc_by(evicted as u64);
            }
        }
        if let Some(sweep) = &mut self.sweep {
            for (p, id) in sweep.take(now, self.cfg.score.max_batch) {
                if self.stores.get(&p).and_then(|s| s.get(&id)).is_some() {
                    self.cycle
                        .to_score
                        .entry(p)
                        .or_default()
                        .entry(id)
                        .or_insert(Why::ModelUpdate);
                }
            }
            if sweep.is_done() {
                self.sweep = None;
            }
        }
        let has_changelog = self.stores.values().any(|s| s.has_dirty());
        if self.cycle.offsets.is_empty()
            && self.cycle.audits.is_empty()
            && self.cycle.dead_letters.is_empty()
            && self.cycle.to_score.is_empty()
            && !has_changelog
        {
            // Nothing waits in this instance: the loop is alive.
            self.watchdog.progressed();
            return Ok(());
        }
        self.begin().await?;
        let started = Instant::now();
        match self.produce_cycle().await {
            Ok(()) => {}
            Err(CycleError::Abortable(why) | CycleError::Retriable(why)) => {
                if let Err(e) = self.abort_cycle(&why).await {
                    return self.after_fatal(e).await;
                }
                self.recover().await?;
                return Ok(());
            }
            Err(CycleError::Fatal(e)) => return self.after_fatal(e).await,
        }
        match self.commit().await {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .observe_end_to_end(&self.cycle.timestamps, ingest::now_ms());
                let offsets = std::mem::take(&mut self.cycle.offsets);
                self.committed.extend(offsets);
                self.cycle = Cycle::default();
                self.watchdog.progressed();
                // A commit proves the brokers reachable: ends an outage in the log.
                kafka_log::brokers_up();
            }
            Err(CycleError::Abortable(why) | CycleError::Retriable(why)) => {
                if let Err(e) = self.abort_cycle(&why).await {
                    return self.after_fatal(e).await;
                }
                self.recover().await?;
            }
            Err(CycleError::Fatal(e)) => return self.after_fatal(e).await,
        }
        Ok(())
    }

    /// Input lag of partition `p` (the largest over the input topics), from
    /// librdkafka's latest statistics: 0 until they arrive.
    fn partition_lag(&self, p: i32) -> i64 {
        let Ok(ends) = self.consumer.context().ends.lock() else {
            return 0;
        };
        // The cycle's position where it consumed, else the committed one.
        let mut next: BTreeMap<&str, i64> = BTreeMap::new();
        for ((topic, partition), offset) in self.committed.iter().chain(&self.cycle.offsets) {
            if *partition == p {
                next.insert(topic, *offset);
            }
        }
        next.iter()
            .filter_map(|(topic, n)| ends.get(*topic).and_then(|e| e.get(&p)).map(|end| end - n))
            .max()
            .unwrap_or(0)
            .max(0)
    }

    /// Lag and partitions every call (once a second, from the run loop's
    /// gauge ticker, independent of the commit cadence); state size, which
    /// walks every customer, every tenth call. The lag reads librdkafka's
    /// statistics, no broker round trip.
    fn update_gauges(&mut self) {
        // Counters too, should commits be further apart than a second.
        self.tally.flush();
        let (thread, shared) = (self.thread.index, &self.thread.gauges);
        if self.gauge_ticks % 10 == 0 {
            let customers: usize = self.stores.values().map(PartitionStore::len).sum();
            let all = shared.set(thread, ThreadGauges::CUSTOMERS, customers as i64);
            self.metrics.state_customers.set(all);
            let bytes: usize = self.stores.values().map(PartitionStore::memory_bytes).sum();
            let all = shared.set(thread, ThreadGauges::BYTES, bytes as i64);
            self.metrics.state_bytes.set(all);
        }
        self.gauge_ticks += 1;
        let all = shared.set(thread, ThreadGauges::ASSIGNED, self.assigned.len() as i64);
        self.metrics.assigned_partitions.set(all);
        let mut backlog = (self.cycle.records + self.aligner.len() as u64) as i64;
        if let Ok(ends) = self.consumer.context().ends.lock() {
            for ((topic, partition), next) in &self.committed {
                if let Some(end) = ends.get(&**topic).and_then(|e| e.get(partition)) {
                    self.metrics.set_lag(topic, *partition, end - next);
                    backlog += (end - next).max(0);
                }
            }
        }
        self.watchdog.observe(self.assigned.len(), backlog);
    }

    /// Reads the group's committed offsets of newly assigned partitions (the
    /// lag gauge's starting point; afterwards each commit moves it).
    async fn load_committed(&mut self, list: &[(String, i32)]) -> Result<(), PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in list {
            tpl.add_partition(t, *p);
        }
        let consumer = self.consumer.clone();
        let reset = self.cfg.input.auto_offset_reset;
        let found = self.watchdog.call("committed_offsets", move |timeout| {
            let committed = consumer.committed_offsets(tpl, timeout)?;
            let mut found = Vec::new();
            for e in committed.elements() {
                let next = match e.offset() {
                    Offset::Offset(o) => o,
                    // Nothing committed yet: the group starts at an end.
                    _ => {
                        let (low, high) =
                            consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                        match reset {
                            OffsetReset::Earliest => low,
                            OffsetReset::Latest => high,
                        }
                    }
                };
                found.push((e.topic().to_string(), e.partition(), next));
            }
            Ok::<_, KafkaError>(found)
        });
        match found.await? {
            Ok(found) => {
                for (t, p, next) in found {
                    let t = ingest::intern(&mut self.topic_names, &t);
                    self.committed.insert((t, p), next);
                }
            }
            Err(e) => warn!(
                error = %e,
                "Could not read the committed offsets of the assigned partitions; \
                 their lag shows after the first commit."
            ),
        }
        Ok(())
    }

    async fn produce_cycle(&mut self) -> Result<(), CycleError> {
        // Score and decide, partition by partition, in micro-batches.
        let to_score = std::mem::take(&mut self.cycle.to_score);
        let review_after = self.cfg.state.limits().review_after_ms;
        let mut changes = Vec::new();
        let mut risk_changes = std::mem::take(&mut self.cycle.risk_changes);
        let risk_on = !self.cfg.output.risk_topic.is_empty();
        for (p, customers) in &to_score {
            let Some(store) = self.stores.get(p) else {
                continue;
            };
            let as_of = store.clock_ms();
            let ids: Vec<(&String, &Why)> = customers
                .iter()
                .filter(|(id, _)| store.get(id).is_some())
                .collect();
            for chunk in ids.chunks(self.cfg.score.max_batch.max(1)) {
                let model = self.scorer.current();
                let (scores, chunk_ids) = {
                    let Some(store) = self.stores.get(p) else {
                        break;
                    };
                    let states: Vec<&CustomerState> =
                        chunk.iter().filter_map(|(id, _)| store.get(id)).collect();
                    let batch = model.featurizer.featurize(&states, as_of).map_err(|e| {
                        CycleError::Fatal(PipelineError::Io(format!("featurizing: {e}")))
                    })?;
                    let ids: Vec<(String, Why)> =
                        chunk.iter().map(|(id, w)| ((*id).clone(), **w)).collect();
                    (self.scorer.score(model.clone(), batch).await, ids)
                };
                let scores =
                    scores.map_err(|e| CycleError::Abortable(format!("scoring failed: {e}")))?;
                let decided_at = ingest::now_ms();
                let Some(store) = self.stores.get_mut(p) else {
                    break;
                };
                for (row, (id, why)) in chunk_ids.iter().enumerate() {
                    let scored = decide::Scored {
                        segments: &scores.segments,
                        probs: scores.segment_probs(row),
                        purchase: scores.outputs.purchase_probability[row],
                        churn: scores.outputs.churn_probability[row],
                        spend: scores.outputs.predicted_spend[row],
                        model_version: &scores.model_version,
                        contributions: scores.contributions(row),
                    };
                    if let Some(decision) = store.decision_mut(id) {
                        if let Some(change) = decide::apply(
                            &self.rules,
                            id,
                            decision,
                            scored,
                            as_of,
                            decided_at,
                            why.trigger(),
                        ) {
                            changes.push((*p, change));
                        }
                    }
                    if risk_on {
                        let findings = store
                            .get(id)
                            .map(|s| risk::evaluate(&self.cfg.risk, s.recent(), as_of));
                        if let (Some(findings), Some(decision)) = (findings, store.decision_mut(id))
                        {
                            let (flags, moved) = risk::apply_only(
                                &self.cfg.risk,
                                decision.risk_flags,
                                findings,
                                false,
                                true,
                            );
                            decision.risk_flags = flags;
                            for t in moved {
                                risk_changes.push((*p, id.clone(), t, as_of, decided_at));
                            }
                        }
                    }
                    store.schedule_review(id, as_of.saturating_add(review_after));
                }
            }
        }
        // Outputs, changelog, dead letters: all inside the transaction.
        let encoding = |e: String| CycleError::Fatal(PipelineError::Encode(e));
        let mut records = Vec::with_capacity(changes.len() * 2);
        for (p, c) in &changes {
            let live = output::is_live(
                &self.cfg.output,
                c.trigger,
                c.as_of_ms,
                c.decided_at_ms,
                self.partition_lag(*p),
            );
            records.extend(output::for_change(&self.cfg.output, *p, c, live).map_err(encoding)?);
            self.metrics
                .segment_changes
                .with_label_values(&[
                    if c.previous_segment.is_empty() {
                        "none"
                    } else {
                        &c.previous_segment
                    },
                    &c.segment,
                    decide::trigger_name(c.trigger),
                ])
                .inc();
        }
        for (p, id, t, as_of, decided) in &risk_changes {
            let live = output::is_live(
                &self.cfg.output,
                Trigger::Event as i32,
                *as_of,
                *decided,
                self.partition_lag(*p),
            );
            records.push(
                output::for_risk(&self.cfg.output, id, t, *as_of, *decided, live)
                    .map_err(encoding)?,
            );
            self.metrics
                .risk_flags
                .with_label_values(&[
                    t.finding.rule.as_str(),
                    if t.raised { "raised" } else { "cleared" },
                ])
                .inc();
        }
        let decided_at = ingest::now_ms();
        let partitions: Vec<i32> = self.stores.keys().copied().collect();
        for p in partitions {
            let lag = self.partition_lag(p);
            let Some(store) = self.stores.get_mut(&p) else {
                continue;
            };
            let as_of = store.clock_ms();
            let live = output::is_live(
                &self.cfg.output,
                Trigger::Evicted as i32,
                as_of,
                decided_at,
                lag,
            );
            for exit in store.take_exits() {
                records.extend(
                    output::for_exit(&self.cfg.output, p, &exit, as_of, decided_at, live)
                        .map_err(encoding)?,
                );
            }
        }
        for (key, value) in std::mem::take(&mut self.cycle.audits) {
            records.push(output::OutRecord {
                topic: self.cfg.privacy.audit_topic.clone(),
                partition: None,
                key,
                value: Some(value),
                headers: Vec::new(),
            });
        }
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let mut record = FutureRecord::<str, [u8]>::to(&r.topic)
                .key(&r.key)
                .headers(headers);
            if let Some(v) = &r.value {
                record = record.payload(v);
            }
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            self.send(record).await?;
        }
        let changelog_topic = self.cfg.state.changelog_topic.clone();
        let partitions: Vec<i32> = self.stores.keys().copied().collect();
        for p in partitions {
            let records = match self.stores.get_mut(&p) {
                Some(store) => drain_dirty(store),
                None => continue,
            };
            for r in &records {
                let mut record = FutureRecord::<str, [u8]>::to(&changelog_topic)
                    .partition(p)
                    .key(&r.key);
                if let Some(v) = &r.value {
                    record = record.payload(v);
                }
                self.send(record).await?;
            }
        }
        let letters = std::mem::take(&mut self.cycle.dead_letters);
        for d in &letters {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.cfg.dead_letter.topic)
                .payload(&d.value)
                .headers(d.kafka_headers());
            if let Some(k) = &d.key {
                record = record.key(k);
            }
            self.send(record).await?;
        }
        Ok(())
    }

    async fn send<K, P>(&self, mut record: FutureRecord<'_, K, P>) -> Result<(), CycleError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send_result(record) {
                // Delivery is confirmed by commit_transaction, which fails if
                // any record of the transaction failed.
                Ok(_delivery) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(classify("producing", e)),
            }
        }
    }

    async fn commit(&mut self) -> Result<(), CycleError> {
        if !self.cycle.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), o) in &self.cycle.offsets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| classify("building offsets", e))?;
            }
            let cgm = self
                .consumer
                .group_metadata()
                .ok_or_else(|| CycleError::Abortable("no consumer group metadata yet".into()))?;
            let producer = self.producer.clone();
            self.watchdog
                .call("send_offsets_to_transaction", move |t| {
                    producer.send_offsets_to_transaction(&tpl, &cgm, t)
                })
                .await
                .map_err(CycleError::Fatal)?
                .map_err(|e| classify("sending offsets to the transaction", e))?;
        }
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..6 {
            let producer = self.producer.clone();
            match self
                .watchdog
                .call("commit_transaction", move |t| {
                    producer.commit_transaction(t)
                })
                .await
                .map_err(CycleError::Fatal)?
            {
                Ok(()) => {
                    self.cycle.open = false;
                    return Ok(());
                }
                Err(e) => match classify("committing the transaction", e) {
                    CycleError::Retriable(why) if attempt < 5 => {
                        warn!(reason = %why, "Commit failed; retrying.");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    other => return Err(other),
                },
            }
        }
        Err(CycleError::Abortable("commit kept failing".into()))
    }
}

enum CycleError {
    /// The same call may succeed if repeated (librdkafka says so); where
    /// it is not repeated, it is handled as `Abortable`.
    Retriable(String),
    /// Abort the transaction and redo the work from the committed state.
    Abortable(String),
    /// End the instance.
    Fatal(PipelineError),
}

fn classify(what: &'static str, e: KafkaError) -> CycleError {
    if let KafkaError::Transaction(t) = &e {
        if t.is_fatal() {
            return CycleError::Fatal(PipelineError::Kafka { what, source: e });
        }
        if t.is_retriable() {
            return CycleError::Retriable(format!("{what}: {e}"));
        }
    }
    CycleError::Abortable(format!("{what}: {e}"))
}
