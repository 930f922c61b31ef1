//! Event-time alignment of co-partitioned input topics.
//!
//! Partition `p` of every input topic holds the same customers, and the
//! state of partition `p` has one event-time watermark. The consumer fetches
//! the topics independently, so after a lag (a first backfill, an outage, a
//! stalled instance's partitions taken over) it can hand over days of one
//! topic before the same days of another; those would fall behind the
//! watermark and be refused as `late`. The [`Aligner`] merges a partition's
//! topics by head event time instead: the buffered record with the smallest
//! time goes first. A topic with nothing buffered is waited for while it has
//! unread records (or its end is not known yet), at most `input.max_idle`
//! (cf. Kafka Streams `max.task.idle.ms`, KIP-353/695); a topic that is read
//! to its end is not waited for, so live traffic is not delayed.
//!
//! Records leave each topic's queue in offset order, so the offset to commit
//! for a topic partition is always the one after its last released record;
//! records that carry no event time (dead letters) are released as soon as
//! they reach the head of their queue, in the same order.
//!
//! Pure: the caller says what it knows of the topics' ends; the clock is an
//! argument.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the caller knows of a topic partition with nothing buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Read to its end: nothing to wait for.
    CaughtUp,
    /// Records wait to be fetched, or the end is not known yet.
    Pending,
}

/// A buffered item and its merge key.
#[derive(Debug)]
struct Entry<T> {
    /// Event time; `i64::MIN` for records that must not wait (dead letters).
    time_ms: i64,
    item: T,
}

/// One partition's per-topic queues.
#[derive(Debug)]
struct Partition<T> {
    queues: BTreeMap<Arc<str>, VecDeque<Entry<T>>>,
    /// Since when the merge has been held back by an empty, pending topic.
    waiting_since: Option<Instant>,
}

impl<T> Default for Partition<T> {
    fn default() -> Self {
        Partition {
            queues: BTreeMap::new(),
            waiting_since: None,
        }
    }
}

/// Merges each partition's input topics by event time (see the module docs).
#[derive(Debug)]
pub struct Aligner<T> {
    topics: Vec<Arc<str>>,
    max_idle: Duration,
    partitions: BTreeMap<i32, Partition<T>>,
}

impl<T> Aligner<T> {
    /// An aligner over `topics`, waiting at most `max_idle` for an empty one.
    /// Zero disables waiting (records are released as they arrive).
    pub fn new(topics: Vec<Arc<str>>, max_idle: Duration) -> Self {
        Aligner {
            topics,
            max_idle,
            partitions: BTreeMap::new(),
        }
    }

    /// Buffers `item` read from `topic`/`partition`; `time_ms` is its event
    /// time, or `None` for a record to release without waiting.
    pub fn push(&mut self, topic: &Arc<str>, partition: i32, time_ms: Option<i64>, item: T) {
        self.partitions
            .entry(partition)
            .or_default()
            .queues
            .entry(topic.clone())
            .or_default()
            .push_back(Entry {
                time_ms: time_ms.unwrap_or(i64::MIN),
                item,
            });
    }

    /// Records buffered for `topic`/`partition`.
    pub fn buffered(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .and_then(|p| p.queues.get(topic))
            .map_or(0, VecDeque::len)
    }

    /// Records buffered in all.
    pub fn len(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.queues.values())
            .map(VecDeque::len)
            .sum()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Partitions with buffered records.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.queues.values().any(|q| !q.is_empty()))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Drops what is buffered for `partition` (revoked, or rewound to the
    /// committed offsets).
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Drops everything buffered.
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Releases `partition`'s records that may go now, in merge order, into
    /// `out` as `(topic, item)`. `backlog(topic)` says whether an empty
    /// topic still has records to come.
    pub fn release(
        &mut self,
        partition: i32,
        now: Instant,
        backlog: impl Fn(&Arc<str>) -> Backlog,
        out: &mut Vec<(Arc<str>, T)>,
    ) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
        loop {
            // The topic whose head goes next, if every other topic is
            // either non-empty or not worth waiting for.
            let mut best: Option<(&Arc<str>, i64)> = None;
            let mut blocked = false;
            for topic in &self.topics {
                match p.queues.get(topic).and_then(VecDeque::front) {
                    Some(head) => {
                        if best.is_none_or(|(_, t)| head.time_ms < t) {
                            best = Some((topic, head.time_ms));
                        }
                    }
                    None => {
                        if backlog(topic) == Backlog::Pending {
                            blocked = true;
                        }
                    }
                }
            }
            let Some((topic, time_ms)) = best else {
                p.waiting_since = None;
                return;
            };
            // A record without event time never waits.
            if blocked && time_ms != i64::MIN && !self.max_idle.is_zero() {
                let since = *p.waiting_since.get_or_insert(now);
                if now.duration_since(since) < self.max_idle {
                    return;
                }
            } else {
                p.waiting_since = None;
            }
            let topic = topic.clone();
            let Some(entry) = p.queues.get_mut(&topic).and_then(VecDeque::pop_front) else {
                return;
            };
            out.push((topic, entry.item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> (Arc<str>, Arc<str>, Arc<str>) {
        (
            Arc::from("browse"),
            Arc::from("purchase"),
            Arc::from("review"),
        )
    }

    fn aligner(max_idle_ms: u64) -> Aligner<u32> {
        let (b, p, r) = topics();
        Aligner::new(vec![b, p, r], Duration::from_millis(max_idle_ms))
    }

    fn drain(a: &mut Aligner<u32>, now: Instant, pending: &[&str]) -> Vec<u32> {
        let mut out = Vec::new();
        a.release(
            0,
            now,
            |t| {
                if pending.contains(&&**t) {
                    Backlog::Pending
                } else {
                    Backlog::CaughtUp
                }
            },
            &mut out,
        );
        out.into_iter().map(|(_, i)| i).collect()
    }

    #[test]
    fn topics_merge_by_head_event_time() {
        let (b, p, r) = topics();
        let mut a = aligner(1000);
        let now = Instant::now();
        for (i, t) in [10, 20, 30].into_iter().enumerate() {
            a.push(&b, 0, Some(t), i as u32);
        }
        // Purchases and reviews still to come: nothing goes yet.
        assert!(drain(&mut a, now, &["purchase", "review"]).is_empty());
        a.push(&p, 0, Some(15), 100);
        a.push(&p, 0, Some(25), 101);
        a.push(&r, 0, Some(5), 200);
        // Reviews read to the end after their one record: merge until a
        // pending topic runs empty.
        assert_eq!(drain(&mut a, now, &["purchase"]), [200, 0, 100, 1, 101]);
        // The purchase topic is read to its end: the rest goes.
        assert_eq!(drain(&mut a, now, &[]), [2]);
        assert!(a.is_empty());
    }

    #[test]
    fn an_empty_pending_topic_is_waited_for_at_most_max_idle() {
        let (b, _, _) = topics();
        let mut a = aligner(1000);
        let t0 = Instant::now();
        a.push(&b, 0, Some(10), 1);
        assert!(drain(&mut a, t0, &["purchase"]).is_empty());
        assert!(drain(&mut a, t0 + Duration::from_millis(999), &["purchase"]).is_empty());
        assert_eq!(
            drain(&mut a, t0 + Duration::from_millis(1000), &["purchase"]),
            [1]
        );
        // The wait starts again for the next record held back.
        a.push(&b, 0, Some(11), 2);
        let t1 = t0 + Duration::from_secs(5);
        assert!(drain(&mut a, t1, &["purchase"]).is_empty());
        assert_eq!(
            drain(&mut a, t1 + Duration::from_secs(1), &["purchase"]),
            [2]
        );
    }

    #[test]
    fn records_without_event_time_never_wait_and_keep_their_queue_order() {
        let (b, _, _) = topics();
        let mut a = aligner(1000);
        let now = Instant::now();
        a.push(&b, 0, None, 1);
        a.push(&b, 0, Some(10), 2);
        a.push(&b, 0, None, 3);
        // The dead letter at the head goes; the event behind it waits, and
        // so does the dead letter behind the event (offset order).
        assert_eq!(drain(&mut a, now, &["purchase"]), [1]);
        assert_eq!(drain(&mut a, now, &[]), [2, 3]);
    }

    #[test]
    fn zero_max_idle_releases_as_records_arrive() {
        let (b, _, _) = topics();
        let mut a = aligner(0);
        a.push(&b, 0, Some(10), 1);
        assert_eq!(drain(&mut a, Instant::now(), &["purchase", "review"]), [1]);
    }

    #[test]
    fn partitions_are_independent_and_forgettable() {
        let (b, p, _) = topics();
        let mut a = aligner(1000);
        a.push(&b, 0, Some(10), 1);
        a.push(&p, 1, Some(10), 2);
        assert_eq!(a.partitions(), [0, 1]);
        assert_eq!(a.buffered("purchase", 1), 1);
        a.forget(1);
        assert_eq!(a.partitions(), [0]);
        let mut out = Vec::new();
        a.release(1, Instant::now(), |_| Backlog::CaughtUp, &mut out);
        assert!(out.is_empty());
        a.clear();
        assert!(a.is_empty());
    }

    proptest::proptest! {
        /// Each topic sorted by time, all topics read to their end: the
        /// merged order is sorted by time, whatever the arrival order
        /// across topics.
        #[test]
        fn merged_output_is_time_ordered(
            mut times in proptest::collection::vec((0usize..3, 0i64..1000), 0..60),
        ) {
            let names = [Arc::<str>::from("a"), Arc::from("b"), Arc::from("c")];
            let mut a: Aligner<i64> = Aligner::new(names.to_vec(), Duration::from_secs(1));
            // Each topic's records in time order, as produced.
            times.sort_by_key(|(_, t)| *t);
            for (topic, t) in &times {
                a.push(&names[*topic], 0, Some(*t), *t);
            }
            let mut out = Vec::new();
            a.release(0, Instant::now(), |_| Backlog::CaughtUp, &mut out);
            let got: Vec<i64> = out.into_iter().map(|(_, t)| t).collect();
            let mut sorted = got.clone();
            sorted.sort();
            proptest::prop_assert_eq!(got.len(), times.len());
            proptest::prop_assert_eq!(got, sorted);
        }
    }
}
