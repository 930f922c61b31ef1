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
//!
//! # Where things are
//!
//! This file holds [`run`] (model, stream threads, shutdown), each stream
//! thread's select loop, and the end of a cycle. The rest, by job:
//! - `clients`: building the consumer and the transactional producer;
//! - `intake`: the run loop's side of [`crate::intake`]: a consumed record
//!   accepted, held for the event-time merge, applied, into the cycle;
//! - `cycle`: what a cycle consumed, scoring and deciding (pure
//!   `decide_chunk`), the records of its transaction, sent early while
//!   reading live (`flush_due`);
//! - `transaction`: the `Transaction` value (the producer, its config
//!   for re-creating it after fencing, and its `Protocol`: `Idle`, `Open`,
//!   `Committing`, each step refused out of order and unit-tested); begin,
//!   send, commit, abort; the typed `TxnError`;
//! - `retry`: the one backoff policy for calls that fail while a broker is away;
//! - `partitions`: everything that lives and dies with the assignment
//!   (state, offsets, pauses, held records), assigned, revoked and reset
//!   in one place each;
//! - `rebalance`: assignment, restore from the changelog, rebuilding state;
//! - `topics`: the start-up check of the topics;
//! - `output`: encoding decisions, exits and risk flags as records (pure);
//! - `services`: the background services (HTTP API, model watcher, group
//!   reader, watchdog, inference threads), started and stopped in one place;
//! - `directory`, `http`, `snapshot`, `watchdog`: lookups, the HTTP API,
//!   state snapshots, and the deadline on every blocking client call.

pub mod clients;
mod cycle;
pub mod directory;
mod error;
mod http;
mod intake;
pub mod outcomes;
pub mod output;
mod partitions;
mod rebalance;
mod retry;
mod services;
pub mod snapshot;
mod topics;
mod transaction;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::Producer;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

pub use clients::PipelineContext;
use cycle::{Cycle, Why};
use directory::{Directory, LookupRequest};
use error::kafka;
pub use error::PipelineError;
use error::TxnError;
pub use http::Health;
use partitions::Partitions;
use services::Services;
use transaction::{Transaction, TxnState};
pub use watchdog::{Watchdog, EXIT_STALLED};

use crate::config::Config;
use crate::decide::Hysteresis;
use crate::ingest::{self, align::Aligner};
use crate::intake::Intake;
use crate::privacy::Pseudonymizer;
use crate::score::{ModelWatcher, PollOutcome, RescoreSweep, Scorer};
use crate::telemetry::kafka_log;
use crate::telemetry::{Metrics, Tally};

/// Lookups waiting per stream thread before the endpoint answers 503.
const LOOKUP_QUEUE: usize = 64;

/// The running pipeline of one instance.
pub struct Pipeline {
    cfg: Config,
    consumer: Arc<StreamConsumer<PipelineContext>>,
    /// The transactional producer and where its transaction stands.
    txn: Transaction,
    /// The per-record step (decode, check, pseudonymize, apply, risk).
    intake: Intake,
    /// Everything that lives and dies with the assignment.
    partitions: Partitions,
    /// The work of the open transaction.
    cycle: Cycle,
    scorer: Arc<Scorer>,
    rules: Hysteresis,
    /// Rescoring every customer after a model swap, paced.
    sweep: Option<RescoreSweep<(i32, String)>>,
    /// Every blocking client call goes through it (see `watchdog`).
    watchdog: Watchdog,
    /// What this thread reports.
    telemetry: Telemetry,
    /// Which stream thread this is, and what the threads share.
    thread: StreamThread,
}

/// What a stream thread reports: metrics (per-record counts batched in a
/// tally, flushed once per cycle) and its part of the instance's health.
struct Telemetry {
    metrics: Metrics,
    /// Per-record counts, flushed to `metrics` once per cycle.
    tally: Tally,
    health: Arc<Health>,
    /// Gauge updates so far (state size is measured every tenth).
    gauge_ticks: u64,
    /// Whether this thread counts in [`Health::assigned`].
    has_assignment: bool,
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
    let pseudonymizer = crate::privacy::Pseudonymizer::from_config(&cfg.privacy)?.map(Arc::new);
    let directory = Directory::new(&cfg, pseudonymizer.clone());
    let mut services = Services::default();
    let result = run_with(
        cfg,
        metrics,
        shutdown,
        &health,
        &directory,
        pseudonymizer,
        &mut services,
    )
    .await;
    health.stopping.store(true, Ordering::Relaxed);
    services.stop().await;
    result
}

/// [`run`] with the services it starts registered in `services` (which
/// [`run`] stops, whatever this returns).
async fn run_with(
    cfg: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
    health: &Arc<Health>,
    directory: &Arc<Directory>,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
    services: &mut Services,
) -> Result<(), PipelineError> {
    if !cfg.pipeline.http_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.pipeline.http_listen)
            .await
            .map_err(|source| PipelineError::Listen {
                address: cfg.pipeline.http_listen.clone(),
                source,
            })?;
        let api = http::Api {
            health: health.clone(),
            metrics: metrics.clone(),
            directory: directory.clone(),
        };
        services.task("http", move |stop| http::serve(listener, api, stop));
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
    if !cfg.output.outcomes_topic.is_empty() {
        if let Some(shadows) = tokio::task::block_in_place(|| watcher.poll_shadows()) {
            scorer.set_shadows(shadows);
        }
    }
    {
        let scorer = scorer.clone();
        services.on_stop("inference", move || scorer.shutdown());
    }
    health.model_loaded.store(true, Ordering::Relaxed);
    // The watcher swaps a new model into the shared scorer once, then tells
    // every stream thread its version so each rescores its own customers.
    let (model_tx, model_rx) = watch::channel::<Arc<str>>(Arc::from(""));
    {
        let interval = cfg.score.poll_interval;
        let scorer = scorer.clone();
        // Shadows are scored at the live-outcome snapshots only.
        let shadowing = !cfg.output.outcomes_topic.is_empty();
        services
            .thread("model-watch", move |stop| {
                while stop.wait(interval) {
                    if let PollOutcome::Loaded(m) = watcher.poll() {
                        let version: Arc<str> = m.version.clone();
                        scorer.swap(*m);
                        if model_tx.send(version).is_err() {
                            return;
                        }
                    }
                    if shadowing {
                        if let Some(shadows) = watcher.poll_shadows() {
                            scorer.set_shadows(shadows);
                        }
                    }
                }
            })
            .map_err(|e| PipelineError::Task(format!("starting the model watcher: {e}")))?;
    }

    let watchdog = Watchdog::start(&cfg.pipeline, health.clone(), metrics.clone())?;
    {
        let watchdog = watchdog.clone();
        services.on_stop("watchdog", move || watchdog.stop());
    }
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
        let partitions = first.check_topics().await?;
        directory.set_partitions(partitions);
        for p in &mut pipelines {
            p.intake.set_partitions(partitions);
        }
    }
    match Directory::peer_reader(&cfg) {
        Ok(reader) => {
            let d = directory.clone();
            if let Err(e) = services.thread("peers", move |stop| d.refresh_peers(&reader, &stop)) {
                warn!(error = %e, "Lookups cannot name other instances: starting the group reader failed.");
            }
        }
        Err(e) => warn!(error = %e, "Lookups cannot name other instances."),
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
    // Err only when no stream thread is left to tell.
    let _ = stop_tx.send(true);
    while let Some(ended) = tasks.join_next().await {
        let r = joined(ended);
        if result.is_ok() {
            result = r;
        }
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
    let producer = p.txn.producer().clone();
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
            // In order: a due commit goes before more input, and the
            // cycle's work is flushed only when no input is waiting.
            biased;
            _ = gauges.tick() => {
                p.update_gauges();
            }
            _ = stop.changed() => {
                break p.end_cycle(false).await;
            }
            Some(q) = lookups.recv() => {
                p.answer_lookup(q);
            }
            Ok(()) = models.changed() => {
                let version = models.borrow_and_update().clone();
                p.on_new_model(&version);
            }
            _ = tick.tick() => {
                if let Err(e) = p.end_cycle(true).await {
                    break Err(e);
                }
            }
            msg = consumer.recv() => {
                if let Err(e) = p.on_message(msg).await {
                    break Err(e);
                }
                if p.cycle.records >= p.cfg.pipeline.max_cycle_records as u64 {
                    if let Err(e) = p.end_cycle(true).await {
                        break Err(e);
                    }
                    tick.reset();
                }
            }
            // The consumer's queue is empty (every branch above is pending):
            // score and send what the records so far caused, so that the
            // commit at the tick has little left to do (see `flush_cycle`).
            () = std::future::ready(()), if p.has_work_to_flush() => {
                if let Err(e) = p.flush_cycle().await {
                    break Err(e);
                }
            }
        }
    };
    if let Err(e) = &result {
        error!(thread = p.thread.index, error = %e, "A stream thread stopped on an error.");
        if p.txn.protocol.must_abort() {
            let producer = p.txn.producer().clone();
            match watchdog
                .call("abort_transaction", move |t| clients::abort(&producer, t))
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
        let consumer = clients::consumer(&cfg, thread.index)?;
        let transactional_id =
            clients::transactional_id(&cfg, &clients::hostname(), thread.index, thread.of);
        let txn = Transaction::new(clients::producer_config(&cfg, &transactional_id)?)?;
        info!(thread = thread.index, transactional_id = %transactional_id, "Transactional producer ready.");
        let mut intake = Intake::new(&cfg, thread.pseudonymizer.clone());
        // The erasure topic is merged with the input (see HeldItem).
        let merged: Vec<Arc<str>> = (cfg.input.topics.iter())
            .chain((!cfg.privacy.erasure_topic.is_empty()).then_some(&cfg.privacy.erasure_topic))
            .map(|t| intake.topic(t))
            .collect();
        Ok(Pipeline {
            consumer: Arc::new(consumer),
            rules: cfg.decide.rules(),
            partitions: Partitions::new(Aligner::new(merged, cfg.input.max_idle)),
            cfg,
            txn,
            intake,
            scorer,
            telemetry: Telemetry {
                tally: metrics.tally(),
                metrics,
                health,
                gauge_ticks: 0,
                has_assignment: false,
            },
            cycle: Cycle::default(),
            sweep: None,
            watchdog,
            thread,
        })
    }

    /// The shared scorer now serves model `version`: rescore this thread's
    /// customers, paced.
    fn on_new_model(&mut self, version: &str) {
        let keys: Vec<(i32, String)> = self
            .partitions
            .stores
            .iter()
            .flat_map(|(p, s)| s.ids().map(move |id| (*p, id.to_string())))
            .collect();
        info!(version = %version, customers = keys.len(), "Swapped in a new model; rescoring known customers.");
        self.sweep = Some(RescoreSweep::new(
            keys,
            self.cfg.score.rescore_per_second,
            tokio::time::Instant::now(),
        ));
    }

    /// Scores, decides, produces and commits everything of the open cycle.
    /// With `overlap`, consumption goes on into the next cycle while the
    /// commit runs (not at shutdown: nothing would commit it).
    async fn end_cycle(&mut self, overlap: bool) -> Result<(), PipelineError> {
        // The producer has no polling thread: serve its failed deliveries,
        // logs and errors here, without waiting.
        self.txn.producer().poll(Duration::ZERO);
        self.telemetry.tally.flush();
        self.take_rebalances().await?;
        self.release_all()?;
        let now = tokio::time::Instant::now();
        // Erasure markers end when no input record from before them can
        // still arrive (see state::erasure).
        let oldest_marker = ingest::now_ms()
            .saturating_sub(crate::units::millis(self.cfg.privacy.erasure_retention));
        // Timers and retention.
        for (p, store) in self.partitions.stores.iter_mut() {
            store.expire_markers(oldest_marker);
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
                self.telemetry
                    .metrics
                    .evicted_customers
                    .inc_by(evicted as u64);
            }
        }
        if let Some(sweep) = &mut self.sweep {
            for (p, id) in sweep.take(now, self.cfg.score.max_batch) {
                if self
                    .partitions
                    .stores
                    .get(&p)
                    .is_some_and(|s| s.contains(&id))
                {
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
        let has_changelog = self.partitions.stores.values().any(|s| s.has_dirty());
        if self.cycle.is_idle() && !has_changelog && self.txn.protocol.state() == TxnState::Idle {
            // Nothing waits in this instance: the loop is alive.
            self.watchdog.progressed();
            return Ok(());
        }
        self.begin().await?;
        let started = Instant::now();
        let (offsets_sent, sent) = tokio::sync::oneshot::channel();
        let produced = self.produce_cycle().await;
        let commit = match produced.and_then(|()| self.commit_future(offsets_sent)) {
            Ok(c) => c,
            Err(e) => return self.after_failed_cycle(e).await,
        };
        let produced = Instant::now();
        // The next cycle starts now: what is consumed while the commit runs
        // is its work.
        let cycle = std::mem::take(&mut self.cycle);
        let consumer = self.consumer.clone();
        let (done, held, failed) = if overlap {
            self.consume_while(&consumer, commit, sent).await
        } else {
            (commit.await, None, None)
        };
        if let Err(e) = done {
            // The transaction still open is the one that failed: abort it.
            // What was consumed meanwhile is uncommitted state like the
            // rest, dropped and read again from the committed offsets.
            self.cycle = cycle;
            self.txn.protocol.commit_ended(false)?;
            let recovered = self.after_failed_cycle(e).await;
            return match failed {
                Some(f) => Err(f),
                None => recovered,
            };
        }
        self.txn.protocol.commit_ended(true)?;
        self.telemetry
            .metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.telemetry
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.telemetry
            .metrics
            .observe_end_to_end(&cycle.timestamps, ingest::now_ms());
        tracing::debug!(
            thread = self.thread.index,
            records = cycle.records,
            produce_ms = produced.duration_since(started).as_secs_f64() * 1e3,
            commit_ms = produced.elapsed().as_secs_f64() * 1e3,
            next_cycle_records = self.cycle.records,
            "Committed a cycle."
        );
        self.partitions.committed.extend(cycle.offsets);
        self.watchdog.progressed();
        // A commit proves the brokers reachable: ends an outage in the log.
        kafka_log::brokers_up();
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(msg) = held {
            self.on_message(msg).await?;
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
        for ((topic, partition), offset) in
            self.partitions.committed.iter().chain(&self.cycle.offsets)
        {
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
        self.telemetry.tally.flush();
        let (thread, shared) = (self.thread.index, &self.thread.gauges);
        if self.telemetry.gauge_ticks % 10 == 0 {
            let customers = self.partitions.customers();
            let all = shared.set(thread, ThreadGauges::CUSTOMERS, customers as i64);
            self.telemetry.metrics.state_customers.set(all);
            let bytes = self.partitions.memory_bytes();
            let all = shared.set(thread, ThreadGauges::BYTES, bytes as i64);
            self.telemetry.metrics.state_bytes.set(all);
        }
        self.telemetry.gauge_ticks += 1;
        let all = shared.set(
            thread,
            ThreadGauges::ASSIGNED,
            self.partitions.assigned.len() as i64,
        );
        self.telemetry.metrics.assigned_partitions.set(all);
        let mut backlog = (self.cycle.records + self.partitions.aligner.len() as u64) as i64;
        if let Ok(ends) = self.consumer.context().ends.lock() {
            for ((topic, partition), next) in &self.partitions.committed {
                if let Some(end) = ends.get(&**topic).and_then(|e| e.get(partition)) {
                    self.telemetry
                        .metrics
                        .set_lag(topic, *partition, end - next);
                    backlog += (end - next).max(0);
                }
            }
        }
        self.watchdog
            .observe(self.partitions.assigned.len(), backlog);
    }
}
