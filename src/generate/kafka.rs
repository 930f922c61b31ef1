//! Produces a generated world to the configured input topics, keyed by
//! customer, with the same per-kind topic routing as [`super::samples`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::abuse::{abuse, AbuseConfig};
use super::behaviour::{Generator, GeneratorConfig, GeneratorSummary};
use super::live::{Live, Pacer};
use super::samples::topic_for;
use crate::config::{Config, ConfigError};
use crate::event::encode::{encode, to_proto, WireFormat};
use crate::event::{Event, EventKind};
use crate::ingest::now_ms;

/// Errors while producing generated events.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The configuration could not be turned into a producer.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The generator settings are invalid.
    #[error("invalid generator settings: {0}")]
    Settings(#[from] crate::generate::behaviour::SettingsError),
    /// Kafka refused a record or the producer could not be created.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
}

impl crate::error::Classify for GenerateError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            GenerateError::Config(e) => crate::error::Classify::class(e),
            GenerateError::Settings(_) => crate::error::ErrorClass::BadInput,
            GenerateError::Kafka { source, .. } => crate::error::Classify::class(source),
        }
    }
}

/// What to produce and how fast.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Wire format of the values.
    pub format: WireFormat,
    /// Produce the history (`days` from `start_ms`, original event times) first.
    pub history: bool,
    /// Then continue live (wall-clock event times) for this long; `None`
    /// with `history` means no live part, `None` without it means until
    /// the shutdown future completes.
    pub live_for: Option<Duration>,
    /// Events per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Stop after this many events in all.
    pub max_events: Option<u64>,
    /// How the live part is stamped and paced.
    pub pace: Pace,
    /// Generated bots ([`super::abuse`]) merged into the live part.
    pub bots: usize,
}

/// How a live stream is stamped and paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Pace {
    /// Each event stamped with the wall clock as it is sent, at `rate`: a
    /// load generator. Its customers act faster than people (a visit of
    /// minutes arrives within a second), so risk rules such as
    /// `bot_browsing` fire on them.
    #[default]
    Wall,
    /// The world is pulled at `rate` (its speed), and each customer's
    /// events are sent at their own pace (see [`super::live::PeoplePacing`]): the days
    /// between visits shrink, the gaps within a visit do not. Fewer events
    /// per second than `rate` reach the topics.
    People,
}

/// Live events scheduled ahead at most (the world is pulled no further).
const MAX_SCHEDULED: usize = 500_000;

/// What was produced.
#[derive(Debug, Clone, Default)]
pub struct ProduceReport {
    /// Events per topic.
    pub by_topic: BTreeMap<String, u64>,
    /// Events produced.
    pub events: u64,
    /// Seconds spent producing (including the final flush).
    pub seconds: f64,
    /// The generator's counts (history replayed before a live part included).
    pub summary: GeneratorSummary,
    /// The ids of the bots merged into the live part.
    pub bots: Vec<String>,
}

/// Deliveries awaited at most this far behind the sends.
const IN_FLIGHT: usize = 50_000;

/// Produces the world of `gen` to the input topics of `config`. Stops at the
/// end of what `options` asks for or when `shutdown` completes, then waits
/// for every delivery.
pub async fn produce(
    config: &Config,
    gen: &GeneratorConfig,
    options: &ProduceOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<ProduceReport, GenerateError> {
    gen.validate().map_err(GenerateError::Settings)?;
    let mut client = config.kafka.producer_config()?;
    client
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000");
    let producer: FutureProducer = client.create().map_err(|source| GenerateError::Kafka {
        what: "creating the producer".into(),
        source,
    })?;
    let topics: BTreeMap<EventKind, String> = EventKind::ALL
        .iter()
        .map(|k| (*k, topic_for(config, *k).to_string()))
        .collect();
    let mut sender = Sender {
        producer: &producer,
        topics: &topics,
        format: options.format,
        in_flight: VecDeque::new(),
        report: ProduceReport {
            by_topic: topics.values().map(|t| (t.clone(), 0)).collect(),
            ..ProduceReport::default()
        },
    };
    let started = Instant::now();
    let mut pacer = Pacer::new(options.rate);
    let max = options.max_events.unwrap_or(u64::MAX);
    tokio::pin!(shutdown);
    let mut stopped = false;
    let mut summary = None;
    if options.history {
        let mut world = Generator::new(gen);
        while sender.report.events < max {
            let Some(event) = world.next_event() else {
                break;
            };
            sender.send(&event).await?;
            if pace(&mut pacer, &mut shutdown).await {
                stopped = true;
                break;
            }
        }
        summary = Some(world.summary());
    }
    let live = !stopped && (options.live_for.is_some() || !options.history);
    if live {
        let overlay = abuse(&AbuseConfig {
            seed: gen.seed,
            start_ms: gen.end_ms(),
            days: 2,
            bots: options.bots,
            rings: 0,
            ring_size: 0,
            rushes: 0,
            bursts: 0,
            ordinary_visits: false,
        });
        sender.report.bots = overlay.truth.keys().cloned().collect();
        let mut world = Live::with_overlay(gen, overlay.events);
        let until = options.live_for.map(|d| Instant::now() + d);
        let going = |sender: &Sender<'_>| {
            sender.report.events < max && until.is_none_or(|u| Instant::now() < u)
        };
        match options.pace {
            Pace::Wall => {
                while going(&sender) {
                    let Some(event) = world.next_event(now_ms()) else {
                        break;
                    };
                    sender.send(&event).await?;
                    if pace(&mut pacer, &mut shutdown).await {
                        break;
                    }
                }
            }
            Pace::People => {
                let started = Instant::now();
                let (mut pulled, mut ended) = (0u64, false);
                while going(&sender) {
                    let now = now_ms();
                    // The world moves at the rate; people at their pace.
                    let allowed = options
                        .rate
                        .filter(|r| *r > 0.0)
                        .map_or(u64::MAX, |r| (started.elapsed().as_secs_f64() * r) as u64);
                    while !ended && pulled < allowed && world.scheduled() < MAX_SCHEDULED {
                        ended = !world.pull(now);
                        pulled += 1;
                    }
                    while let Some(event) = world.pop_due(now) {
                        sender.send(&event).await?;
                        if !going(&sender) {
                            break;
                        }
                    }
                    if ended && world.scheduled() == 0 {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        _ = shutdown.as_mut() => break,
                    }
                }
            }
        }
        summary = Some(world.summary());
    }
    sender.drain(0).await?;
    producer
        .flush(Duration::from_secs(60))
        .map_err(|source| GenerateError::Kafka {
            what: "flushing the producer".into(),
            source,
        })?;
    let mut report = sender.report;
    report.seconds = started.elapsed().as_secs_f64();
    report.summary = summary.unwrap_or_default();
    Ok(report)
}

/// Waits as the pacer says (checking for shutdown at most every 10 000
/// events when unpaced); true when shutdown completed.
async fn pace(
    pacer: &mut Pacer,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let wait = pacer.sent_one();
    if wait.is_zero() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.as_mut() => true,
    }
}

struct Sender<'a> {
    producer: &'a FutureProducer,
    topics: &'a BTreeMap<EventKind, String>,
    format: WireFormat,
    in_flight: VecDeque<DeliveryFuture>,
    report: ProduceReport,
}

impl Sender<'_> {
    async fn send(&mut self, event: &Event) -> Result<(), GenerateError> {
        let topic = self
            .topics
            .get(&event.kind())
            .map(String::as_str)
            .unwrap_or_default();
        let value = encode(&to_proto(event), self.format);
        loop {
            let record = FutureRecord::to(topic)
                .key(event.customer_id.as_bytes())
                .payload(&value)
                .timestamp(event.event_time_ms);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue is full: wait for the oldest deliveries.
                    self.drain(self.in_flight.len() / 2).await?;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((source, _)) => {
                    return Err(GenerateError::Kafka {
                        what: format!("producing to {topic}"),
                        source,
                    })
                }
            }
        }
        self.report.events += 1;
        *self.report.by_topic.entry(topic.to_string()).or_default() += 1;
        if self.in_flight.len() >= IN_FLIGHT {
            self.drain(IN_FLIGHT / 2).await?;
        }
        Ok(())
    }

    /// Awaits deliveries until at most `keep` are outstanding.
    async fn drain(&mut self, keep: usize) -> Result<(), GenerateError> {
        while self.in_flight.len() > keep {
            let Some(delivery) = self.in_flight.pop_front() else {
                break;
            };
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(GenerateError::Kafka {
                        what: "delivering a record".into(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(GenerateError::Kafka {
                        what: "delivering a record (the producer went away)".into(),
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(())
    }
}
