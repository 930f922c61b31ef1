//! Who owns a customer: the partitioner that maps a customer id to its input
//! partition, which partitions this instance's stream threads own (and
//! whether their state is restored), and which instance owns the others.
//!
//! Instances learn each other's assignment from the consumer group itself:
//! each stream thread's `client.id` carries the instance's
//! `pipeline.advertised_url`, and a describe of the group (the group
//! coordinator's own record of members and their assignments) maps every
//! partition to a member. No extra topic or gossip to keep consistent, and
//! the answer is exactly as fresh as the group's generation (refreshed every
//! few seconds).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

pub use crate::ingest::partition_for;

use super::services::StopSignal;
use super::PipelineError;
use crate::config::{Config, Partitioner};

/// How often the other instances' assignments are re-read.
pub const PEERS_EVERY: Duration = Duration::from_secs(5);

/// The `client.id` prefix that marks a segstream stream thread.
const CLIENT_ID_PREFIX: &str = "segstream|";

/// The consumer `client.id` of stream thread `thread` of an instance that
/// advertises `url`.
pub fn client_id(url: &str, thread: usize) -> String {
    format!("{CLIENT_ID_PREFIX}{url}|{thread}")
}

/// The advertised URL in a member's `client.id`, if it is a stream thread's.
fn url_of_client_id(client_id: &str) -> Option<&str> {
    let rest = client_id.strip_prefix(CLIENT_ID_PREFIX)?;
    let (url, _thread) = rest.rsplit_once('|')?;
    (!url.is_empty()).then_some(url)
}

/// A lookup for a stream thread to answer from its own state.
pub struct LookupRequest {
    /// The customer id.
    pub customer_id: String,
    /// Its partition.
    pub partition: i32,
    /// Where the JSON answer goes (`None`: no state for the customer).
    pub reply: oneshot::Sender<Option<serde_json::Value>>,
}

/// A locally owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// The stream thread that owns it.
    pub thread: usize,
    /// Its state is being restored (lookups answer 503).
    pub restoring: bool,
}

/// Where a customer's state lives, for the lookup endpoint.
pub enum Whereabouts {
    /// A stream thread of this instance owns the partition.
    Local(Owned),
    /// Another instance (its advertised URL, when known).
    Remote(Option<String>),
}

/// The instance's view of partition ownership. Shared by the stream threads
/// (who record their assignments), the peer refresher and the HTTP server.
pub struct Directory {
    partitioner: Partitioner,
    partitions: AtomicI32,
    /// Claims by (partition, stream thread): restoring or not. Kept per
    /// thread, because the threads take their rebalance notices each in its
    /// own loop: a slow thread can claim a partition from an old generation
    /// after another thread took it in the new one, and its revocation must
    /// then drop only its own claim.
    owned: RwLock<BTreeMap<(i32, usize), bool>>,
    peers: RwLock<BTreeMap<i32, String>>,
    threads: RwLock<Vec<mpsc::Sender<LookupRequest>>>,
    advertised_url: String,
    pseudonymizer: Option<Arc<crate::privacy::Pseudonymizer>>,
}

impl Directory {
    /// An empty directory for `cfg`'s partitioner and advertised URL.
    pub fn new(
        cfg: &Config,
        pseudonymizer: Option<Arc<crate::privacy::Pseudonymizer>>,
    ) -> Arc<Directory> {
        Arc::new(Directory {
            partitioner: cfg.input.partitioner,
            partitions: AtomicI32::new(0),
            owned: RwLock::new(BTreeMap::new()),
            peers: RwLock::new(BTreeMap::new()),
            threads: RwLock::new(Vec::new()),
            advertised_url: cfg.pipeline.advertised_url.clone(),
            pseudonymizer,
        })
    }

    /// The input topics' partition count (from the start-up check).
    pub fn set_partitions(&self, n: i32) {
        self.partitions.store(n, Ordering::Relaxed);
    }

    /// The partition of `customer_id`, once the partition count is known.
    pub fn partition_of(&self, customer_id: &str) -> Option<i32> {
        let n = self.partitions.load(Ordering::Relaxed);
        (n > 0).then(|| partition_for(self.partitioner, customer_id.as_bytes(), n))
    }

    /// The id a customer's state is stored under (their pseudonym when
    /// `privacy.pseudonymize` is on).
    pub fn stored_id(&self, customer_id: &str) -> String {
        crate::privacy::stored_id(self.pseudonymizer.as_deref(), customer_id)
    }

    /// This instance's advertised URL ("" when none).
    pub fn advertised_url(&self) -> &str {
        &self.advertised_url
    }

    /// Registers stream thread `thread`'s lookup queue.
    pub fn add_thread(&self, thread: usize, tx: mpsc::Sender<LookupRequest>) {
        if let Ok(mut t) = self.threads.write() {
            while t.len() <= thread {
                t.push(tx.clone());
            }
            t[thread] = tx;
        }
    }

    /// The lookup queue of stream thread `thread`.
    pub fn thread(&self, thread: usize) -> Option<mpsc::Sender<LookupRequest>> {
        self.threads.read().ok()?.get(thread).cloned()
    }

    /// `thread` starts restoring `partitions` (it owns them from now on).
    pub fn restoring(&self, thread: usize, partitions: &[i32]) {
        self.mark(thread, partitions, true);
    }

    /// `thread`'s `partitions` are restored and answer lookups.
    pub fn restored(&self, thread: usize, partitions: &[i32]) {
        self.mark(thread, partitions, false);
    }

    fn mark(&self, thread: usize, partitions: &[i32], restoring: bool) {
        if let Ok(mut o) = self.owned.write() {
            for p in partitions {
                o.insert((*p, thread), restoring);
            }
        }
    }

    /// `thread` no longer owns `partitions` (another thread's claim stays).
    pub fn revoked(&self, thread: usize, partitions: &[i32]) {
        if let Ok(mut o) = self.owned.write() {
            for p in partitions {
                o.remove(&(*p, thread));
            }
        }
    }

    /// Who owns `partition`.
    pub fn whereabouts(&self, partition: i32) -> Whereabouts {
        // During a rebalance two threads may claim a partition for a moment:
        // a restored claim answers before one still restoring.
        let claim = self.owned.read().ok().and_then(|o| {
            o.range((partition, 0)..=(partition, usize::MAX))
                .map(|(&(_, thread), &restoring)| Owned { thread, restoring })
                .min_by_key(|c| c.restoring)
        });
        if let Some(o) = claim {
            return Whereabouts::Local(o);
        }
        // The group view can name this very instance for a partition none of
        // its threads claims: the claim is on its way (a rebalance), or the
        // view predates the last one. Never redirect a client to ourselves
        // (it would loop): the owner is unknown for now.
        Whereabouts::Remote(
            self.peers
                .read()
                .ok()
                .and_then(|p| p.get(&partition).cloned())
                .filter(|url| *url != self.advertised_url),
        )
    }

    /// The client that reads the group's members for
    /// [`Directory::refresh_peers`].
    pub fn peer_reader(cfg: &Config) -> Result<PeerReader, PipelineError> {
        let client = cfg.kafka.client_config()?;
        let consumer = client
            .create_with_context(crate::telemetry::kafka_log::QuietContext)
            .map_err(super::error::kafka("creating the group reader"))?;
        Ok(PeerReader {
            consumer,
            group: cfg.kafka.group_id.clone(),
            // `input.topics` is never empty in a checked configuration.
            topic: cfg.input.topics.first().cloned().unwrap_or_default(),
        })
    }

    /// Re-reads the group's members and assignments every [`PEERS_EVERY`]
    /// until `stop` (a service thread: see `services`).
    pub(super) fn refresh_peers(&self, reader: &PeerReader, stop: &StopSignal) {
        loop {
            match reader
                .consumer
                .fetch_group_list(Some(&reader.group), Duration::from_secs(5))
            {
                Ok(list) => {
                    let mut map = BTreeMap::new();
                    for g in list.groups() {
                        for m in g.members() {
                            let Some(url) = url_of_client_id(m.client_id()) else {
                                continue;
                            };
                            // A member without a readable assignment
                            // (joining) owns nothing yet.
                            for p in m
                                .assignment()
                                .map(|a| assigned_partitions(a, &reader.topic))
                                .unwrap_or_default()
                            {
                                map.insert(p, url.to_string());
                            }
                        }
                    }
                    if let Ok(mut peers) = self.peers.write() {
                        *peers = map;
                    }
                }
                Err(e) => debug!(error = %e, "Describing the consumer group failed."),
            }
            if !stop.wait(PEERS_EVERY) {
                return;
            }
        }
    }
}

/// The group reader of [`Directory::refresh_peers`].
pub struct PeerReader {
    consumer: BaseConsumer<crate::telemetry::kafka_log::QuietContext>,
    group: String,
    topic: String,
}

/// The partitions of `topic` in a member's assignment (the classic consumer
/// protocol's `ConsumerProtocolAssignment`: version, then topics with their
/// partitions, then user data). Malformed bytes give what was read so far.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    let _version = r.i16();
    let Some(topics) = r.i32() else { return out };
    for _ in 0..topics.max(0) {
        let Some(name) = r.string() else { return out };
        let Some(n) = r.i32() else { return out };
        for _ in 0..n.max(0) {
            let Some(p) = r.i32() else { return out };
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.i16()?).ok()?;
        self.take(n)
    }
}

impl super::Pipeline {
    /// Answers a lookup from this thread's state (`None`: no such customer).
    pub(super) fn answer_lookup(&self, q: LookupRequest) {
        let Some(store) = self.partitions.stores.get(&q.partition) else {
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
            for ((topic, p), committed) in &self.partitions.committed {
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
                "risk_flags": crate::decide::risk::Rule::of_flags(d.risk_flags).map(crate::decide::risk::Rule::as_str).collect::<Vec<_>>(),
                "offsets": offsets,
            })
        });
        // Err only when the HTTP request that asked is gone.
        let _ = q.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_never_redirects_to_this_instance() {
        let mut cfg = Config::default();
        cfg.pipeline.advertised_url = "http://a:8080".into();
        let d = Directory::new(&cfg, None);
        if let Ok(mut peers) = d.peers.write() {
            peers.insert(0, "http://a:8080".into());
            peers.insert(1, "http://b:8080".into());
        }
        let remote = |p| match d.whereabouts(p) {
            Whereabouts::Remote(url) => url,
            Whereabouts::Local(_) => Some("local".into()),
        };
        assert_eq!(remote(0), None, "unclaimed here, named here: unknown");
        assert_eq!(remote(1).as_deref(), Some("http://b:8080"));
        d.restoring(0, &[0]);
        assert_eq!(remote(0).as_deref(), Some("local"));
    }

    #[test]
    fn a_late_revocation_of_a_stale_claim_leaves_the_new_owner() {
        let d = Directory::new(&Config::default(), None);
        let local = |p| match d.whereabouts(p) {
            Whereabouts::Local(o) => Some((o.thread, o.restoring)),
            Whereabouts::Remote(_) => None,
        };
        // Thread 1 takes partition 0 in the new generation...
        d.restoring(1, &[0]);
        d.restored(1, &[0]);
        // ...while thread 0, slow, applies its old assignment, then its
        // revocation.
        d.restoring(0, &[0, 1]);
        assert_eq!(local(0), Some((1, false)), "a restored claim answers");
        d.revoked(0, &[0, 1]);
        assert_eq!(local(0), Some((1, false)));
        assert_eq!(local(1), None);
        d.revoked(1, &[0]);
        assert_eq!(local(0), None);
    }

    #[test]
    fn a_member_assignment_is_read() {
        let mut b = Vec::new();
        b.extend(0i16.to_be_bytes());
        b.extend(2i32.to_be_bytes());
        for (t, ps) in [("other", vec![9i32]), ("events", vec![1, 4])] {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        assert_eq!(assigned_partitions(&b, "events"), vec![1, 4]);
        // Cut inside the last partition: what was read so far.
        assert_eq!(assigned_partitions(&b[..b.len() - 6], "events"), vec![1]);
        assert!(assigned_partitions(&[], "events").is_empty());
    }

    #[test]
    fn client_ids_carry_the_advertised_url() {
        let id = client_id("http://pod-1.segstream:9464", 3);
        assert_eq!(url_of_client_id(&id), Some("http://pod-1.segstream:9464"));
        assert_eq!(url_of_client_id("rdkafka"), None);
        assert_eq!(url_of_client_id(&client_id("", 0)), None);
    }
}
