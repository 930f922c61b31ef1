//! Privacy: pseudonymous customer ids and erasure.
//!
//! With `privacy.pseudonymize = true` every customer id is replaced at ingest
//! by `ps_` and the first 128 bits (hex) of HMAC-SHA-256(key, id), so state,
//! the changelog, every output topic, metrics and logs hold only that
//! pseudonym. The key comes from `privacy.key_file` or the environment
//! variable named by `privacy.key_env`; it is never logged or printed.
//!
//! Erasure: `segstream forget --customer ID...` writes a request per customer
//! to `privacy.erasure_topic` (keyed by the id as it is stored: the pseudonym
//! when pseudonymizing; partitioned like the input). The stream thread that
//! owns the partition removes the customer's state (a changelog tombstone, an
//! EXITED record for their segment and a tombstone in the current topic) in
//! the transaction that commits the request's offset, and writes an audit
//! entry to `privacy.audit_topic` keyed by the pseudonym (or, without
//! pseudonyms, an unkeyed SHA-256 digest of the id).
//!
//! An erasure holds as of the request's time T (`forget --as-of`, or the
//! request record's timestamp): events of the customer that happened or were
//! produced at or before T are dropped wherever they are read later (a
//! lagging input, a restore, a rebalance), by a marker the owning thread
//! keeps in its state and changelog for `privacy.erasure_retention` (see
//! [`crate::state::erasure`]); events after T start a new state. Training
//! and `predict` apply the same rule to the history they read.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::config::{Config, PrivacyConfig};
use crate::event::Event;
use crate::telemetry::kafka_log::QuietContext;

pub use crate::config::MIN_KEY_BYTES;

/// Why a privacy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The pseudonymization key is missing or too short.
    #[error(transparent)]
    Key(#[from] crate::config::KeyError),
    /// Erasure is not configured.
    #[error(
        "privacy.erasure_topic is empty: erasure is not set up (see docs/privacy-and-risk.md)"
    )]
    NotSetUp,
    /// `--as-of` names a time after now.
    #[error("--as-of is {as_of_ms} ms, after now ({now_ms} ms): an erasure covers what happened up to its time")]
    AsOfInTheFuture {
        /// The time asked for.
        as_of_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// A topic it needs does not exist.
    #[error("{0} does not exist")]
    MissingTopic(String),
    /// The configuration could not be turned into a client.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A Kafka call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The erasure topic was not read to its end in time.
    #[error("{0} was not read to its end within 2 minutes")]
    Timeout(String),
}

impl crate::error::Classify for PrivacyError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            PrivacyError::Key(_)
            | PrivacyError::NotSetUp
            | PrivacyError::AsOfInTheFuture { .. }
            | PrivacyError::MissingTopic(_) => ErrorClass::BadInput,
            PrivacyError::Config(e) => e.class(),
            PrivacyError::Kafka { source, .. } => source.class(),
            PrivacyError::Timeout(_) => ErrorClass::External,
        }
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> PrivacyError {
    let what = what.into();
    move |source| PrivacyError::Kafka { what, source }
}

/// The prefix of every pseudonym.
pub const PSEUDONYM_PREFIX: &str = "ps_";

/// Keyed pseudonyms of customer ids. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(key redacted)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer with `key` (at least [`MIN_KEY_BYTES`]).
    pub fn new(key: &[u8]) -> Result<Pseudonymizer, PrivacyError> {
        crate::config::check_key(key).map_err(PrivacyError::Key)?;
        let mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|e| PrivacyError::Key(crate::config::KeyError::Mac(e)))?;
        Ok(Pseudonymizer { mac })
    }

    /// The configured pseudonymizer: `None` when `privacy.pseudonymize` is
    /// off, an error when it is on and the key cannot be read.
    pub fn from_config(cfg: &PrivacyConfig) -> Result<Option<Pseudonymizer>, PrivacyError> {
        if !cfg.pseudonymize {
            return Ok(None);
        }
        let key = cfg.key().map_err(PrivacyError::Key)?;
        Pseudonymizer::new(&key).map(Some)
    }

    /// The pseudonym of `id`.
    pub fn apply(&self, id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        let bytes = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 32);
        out.push_str(PSEUDONYM_PREFIX);
        for b in &bytes[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// The id under which a customer is stored: their pseudonym, or the id.
pub fn stored_id(p: Option<&Pseudonymizer>, id: &str) -> String {
    match p {
        Some(p) => p.apply(id),
        None => id.to_string(),
    }
}

/// The audit key of a stored id: the pseudonym itself, or (without
/// pseudonyms) `sha256_` and the first 128 bits of its SHA-256 digest.
pub fn audit_key(p: Option<&Pseudonymizer>, stored: &str) -> String {
    if p.is_some() {
        return stored.to_string();
    }
    let digest = Sha256::digest(stored.as_bytes());
    let mut out = String::from("sha256_");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The time an erasure request erases up to: the `as_of_ms` its value
/// names (`forget --as-of`), else the record's timestamp, else the
/// `requested_at_ms` of its value; a request without any time erases
/// everything read so far and up to now.
pub fn request_time(value: Option<&[u8]>, record_ms: Option<i64>, now_ms: i64) -> i64 {
    let json = value.and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok());
    let field = |name: &str| json.as_ref()?.get(name)?.as_i64();
    field("as_of_ms")
        .or(record_ms.filter(|t| *t >= 0))
        .or_else(|| field("requested_at_ms"))
        .unwrap_or(now_ms)
}

/// Every stored id with an erasure request in `privacy.erasure_topic`, with
/// the latest time one erases up to (empty when there is no such topic).
pub fn erasures(cfg: &Config) -> Result<HashMap<String, i64>, PrivacyError> {
    let topic = &cfg.privacy.erasure_topic;
    let mut out = HashMap::new();
    if topic.is_empty() {
        return Ok(out);
    }
    let group = format!("{}-erasures", cfg.kafka.group_id);
    let c = crate::config::reader_config(&cfg.kafka, &group, true)?;
    let consumer: BaseConsumer<QuietContext> = c
        .create_with_context(QuietContext)
        .map_err(kafka("creating the erasure reader"))?;
    let partitions = partitions_of(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka("assigning the erasure topic"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning the erasure topic"))?;
    let mut done = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.len() < partitions as usize {
        if std::time::Instant::now() > deadline {
            return Err(PrivacyError::Timeout(topic.clone()));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => return Err(kafka(format!("reading {topic}"))(e)),
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    let through = request_time(
                        m.payload(),
                        m.timestamp().to_millis(),
                        crate::ingest::now_ms(),
                    );
                    let t = out
                        .entry(String::from_utf8_lossy(k).into_owned())
                        .or_insert(through);
                    *t = (*t).max(through);
                }
            }
        }
    }
    Ok(out)
}

/// The partition count of `topic` (an error when it does not exist).
pub(crate) fn partitions_of(
    consumer: &BaseConsumer<QuietContext>,
    topic: &str,
) -> Result<i32, PrivacyError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka(format!("reading {topic}'s metadata")))?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| PrivacyError::MissingTopic(topic.to_string()))
}

/// Drops from a history the events that an erasure covers (those of an
/// erased customer at or before the erasure's time: a history read from
/// files or topics has no producing time per event, so the event time
/// stands for it); returns how many were dropped.
pub fn drop_erased(cfg: &Config, events: &mut Vec<Event>) -> Result<usize, PrivacyError> {
    let erased = erasures(cfg)?;
    let p = Pseudonymizer::from_config(&cfg.privacy)?;
    Ok(drop_covered(&erased, p.as_ref(), events))
}

/// [`drop_erased`] with the erasures given (stored id → erased up to).
pub fn drop_covered(
    erased: &HashMap<String, i64>,
    p: Option<&Pseudonymizer>,
    events: &mut Vec<Event>,
) -> usize {
    if erased.is_empty() {
        return 0;
    }
    let before = events.len();
    events.retain(|e| {
        erased
            .get(&stored_id(p, &e.customer_id))
            .is_none_or(|t| !crate::state::erasure::covers(*t, e.event_time_ms, None))
    });
    before - events.len()
}

/// Writes an erasure request for each id (clear ids, as the producers key
/// them) to `privacy.erasure_topic`, in the customer's input partition. The
/// request erases up to `as_of_ms` (default: now; never later than now).
pub async fn request_erasure(
    cfg: &Config,
    ids: &[String],
    as_of_ms: Option<i64>,
) -> Result<usize, PrivacyError> {
    let topic = &cfg.privacy.erasure_topic;
    if topic.is_empty() {
        return Err(PrivacyError::NotSetUp);
    }
    let now = crate::ingest::now_ms();
    let as_of = as_of_ms.unwrap_or(now);
    if as_of > now {
        return Err(PrivacyError::AsOfInTheFuture {
            as_of_ms: as_of,
            now_ms: now,
        });
    }
    let p = Pseudonymizer::from_config(&cfg.privacy)?;
    let client = cfg.kafka.client_config()?;
    let reader: BaseConsumer<QuietContext> = client
        .create_with_context(QuietContext)
        .map_err(kafka("creating the metadata reader"))?;
    let partitions = partitions_of(&reader, topic)?;
    let mut pc = cfg.kafka.producer_config()?;
    pc.set("enable.idempotence", "true").set("acks", "all");
    let producer: FutureProducer<QuietContext> = pc
        .create_with_context(QuietContext)
        .map_err(kafka("creating the producer"))?;
    let value = serde_json::json!({ "requested_at_ms": now, "as_of_ms": as_of }).to_string();
    for id in ids {
        let stored = stored_id(p.as_ref(), id);
        let partition =
            crate::ingest::partition_for(cfg.input.partitioner, id.as_bytes(), partitions);
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&stored)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| kafka("writing the erasure request")(e))?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_hide_the_id() {
        let a = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let b = Pseudonymizer::new(b"0123456789abcdeX").unwrap();
        let p = a.apply("cust-1");
        assert_eq!(p, a.apply("cust-1"));
        assert_ne!(p, b.apply("cust-1"), "another key, another pseudonym");
        assert_ne!(p, a.apply("cust-2"));
        assert!(p.starts_with(PSEUDONYM_PREFIX) && p.len() == 35, "{p}");
        assert!(!p.contains("cust"));
        assert!(format!("{a:?}").contains("redacted"));
        assert!(Pseudonymizer::new(b"short").is_err());
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2 ("Jefe"), padded to the minimum key length is
        // not possible, so check the primitive directly.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_request_erases_up_to_its_named_time_else_its_record_time() {
        let v = br#"{"requested_at_ms": 5000, "as_of_ms": 3000}"#;
        assert_eq!(request_time(Some(v), Some(4000), 9), 3000);
        let v = br#"{"requested_at_ms": 5000}"#;
        assert_eq!(request_time(Some(v), Some(4000), 9), 4000);
        assert_eq!(request_time(Some(v), None, 9), 5000);
        assert!(
            request_time(Some(b"not json"), Some(-1), 1_800_000_000_000) == 1_800_000_000_000,
            "now"
        );
        assert_eq!(request_time(None, Some(7), 9), 7);
    }

    #[test]
    fn offline_histories_drop_what_an_erasure_covers() {
        use crate::state::tests::{buy, ev as event};
        let ev = |c: &str, t: i64| event(c, &format!("{c}-{t}"), t, buy("shoes", 100));
        let mut events = vec![ev("a", 10), ev("a", 20), ev("a", 30), ev("b", 10)];
        let erased = HashMap::from([("a".to_string(), 20)]);
        assert_eq!(drop_covered(&erased, None, &mut events), 2);
        let left: Vec<(&str, i64)> = events
            .iter()
            .map(|e| (e.customer_id.as_str(), e.event_time_ms))
            .collect();
        assert_eq!(left, [("a", 30), ("b", 10)]);
        // Keyed by the stored id: with pseudonyms, the pseudonym.
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let erased = HashMap::from([(p.apply("b"), 10)]);
        assert_eq!(drop_covered(&erased, Some(&p), &mut events), 1);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn audit_keys_never_hold_the_clear_id() {
        assert!(audit_key(None, "cust-1").starts_with("sha256_"));
        assert!(!audit_key(None, "cust-1").contains("cust"));
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let stored = stored_id(Some(&p), "cust-1");
        assert_eq!(audit_key(Some(&p), &stored), stored);
    }
}
