//! Everything of a stream thread that lives and dies with its assignment:
//! the assigned topic partitions, each partition's customer state, the
//! committed and fetched offsets, the paused topic partitions and the
//! records waiting for the event-time merge.
//!
//! Its lifecycle methods ([`Partitions::assign`], [`Partitions::revoke`],
//! [`Partitions::reset`]) are the only places that add or drop a
//! partition, and each names every field (a struct pattern without `..`),
//! so a field added here does not compile until each of them says what
//! becomes of it. Kafka calls (pausing, seeking, restoring) stay with the
//! caller, which gets what to do from their results.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::intake::Held;
use crate::ingest::align::Aligner;
use crate::state::PartitionStore;

/// A topic partition.
pub(super) type TopicPartition = (Arc<str>, i32);

/// The thread's partitions and what it holds of each.
pub(super) struct Partitions {
    /// Assigned topic partitions (input topics and the erasure topic; the
    /// range assignor gives the same numbers of each).
    pub assigned: BTreeSet<TopicPartition>,
    /// Customer state per partition number, restored from the changelog
    /// before any of that partition's input is processed.
    pub stores: BTreeMap<i32, PartitionStore>,
    /// Committed offset (next record to process) per topic partition, for
    /// the lag gauge.
    pub committed: BTreeMap<TopicPartition, i64>,
    /// Next offset to consume per topic partition (what the merge has
    /// seen), to tell a topic read to its end.
    pub fetched: BTreeMap<TopicPartition, i64>,
    /// Topic partitions paused because the merge holds too many of their
    /// records.
    pub paused: BTreeSet<TopicPartition>,
    /// Consumed records waiting for the event-time merge of their partition.
    pub aligner: Aligner<Held>,
    /// Scratch for the records the merge releases (empty between calls;
    /// reused so that no record allocates).
    pub released: Vec<(Arc<str>, Held)>,
}

/// What [`Partitions::revoke`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Revoked {
    /// Partition numbers whose state went (no topic of theirs is left).
    pub partitions: Vec<i32>,
}

/// What [`Partitions::reset`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reset {
    /// Partition numbers whose state went: restore them.
    pub restore: Vec<i32>,
    /// Topic partitions that were paused: resume them.
    pub resume: Vec<TopicPartition>,
}

impl Partitions {
    /// No partitions; the merge over `aligner`'s topics.
    pub fn new(aligner: Aligner<Held>) -> Self {
        Partitions {
            assigned: BTreeSet::new(),
            stores: BTreeMap::new(),
            committed: BTreeMap::new(),
            fetched: BTreeMap::new(),
            paused: BTreeSet::new(),
            aligner,
            released: Vec::new(),
        }
    }

    /// Adds topic partitions to the assignment; returns the partition
    /// numbers that have no state yet (to restore before their input).
    pub fn assign(&mut self, list: impl IntoIterator<Item = TopicPartition>) -> Vec<i32> {
        let Partitions {
            assigned,
            stores,
            committed: _,
            fetched: _,
            paused,
            aligner: _,
            released: _,
        } = self;
        let mut new = BTreeSet::new();
        for (topic, p) in list {
            if !stores.contains_key(&p) {
                new.insert(p);
            }
            // The caller resumes every assigned partition (librdkafka keeps
            // a pause through a rebalance): none is paused now.
            paused.remove(&(topic.clone(), p));
            assigned.insert((topic, p));
        }
        new.into_iter().collect()
    }

    /// Customers held, over every partition.
    pub fn customers(&self) -> usize {
        self.stores.values().map(PartitionStore::len).sum()
    }

    /// Bytes of customer state held, over every partition.
    pub fn memory_bytes(&self) -> usize {
        self.stores.values().map(PartitionStore::memory_bytes).sum()
    }

    /// Installs restored state.
    pub fn install(&mut self, restored: BTreeMap<i32, PartitionStore>) {
        self.stores.extend(restored);
    }

    /// Drops revoked topic partitions and everything held of them: their
    /// offsets, their pause, their held records, and the state of each
    /// partition number no topic of which is still assigned.
    pub fn revoke(&mut self, list: &[TopicPartition]) -> Revoked {
        let Partitions {
            assigned,
            stores,
            committed,
            fetched,
            paused,
            aligner,
            released: _,
        } = self;
        for key in list {
            committed.remove(key);
            fetched.remove(key);
            paused.remove(key);
            assigned.remove(key);
        }
        let keep: BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        let gone: Vec<i32> = stores
            .keys()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect();
        stores.retain(|p, _| keep.contains(p));
        for (_, p) in list {
            aligner.forget(*p);
        }
        // A partition number that went entirely leaves nothing behind.
        fetched.retain(|(_, p), _| keep.contains(p));
        paused.retain(|(_, p)| keep.contains(p));
        committed.retain(|(_, p), _| keep.contains(p));
        Revoked { partitions: gone }
    }

    /// Drops everything not committed, keeping the assignment and the
    /// committed offsets: the state (to restore from the changelog, which
    /// holds exactly the committed state), the held records and fetch
    /// positions (consumed again from the committed offsets) and the pauses.
    pub fn reset(&mut self) -> Reset {
        let Partitions {
            assigned: _,
            stores,
            committed: _,
            fetched,
            paused,
            aligner,
            released: _,
        } = self;
        let restore = std::mem::take(stores).into_keys().collect();
        aligner.clear();
        fetched.clear();
        Reset {
            restore,
            resume: std::mem::take(paused).into_iter().collect(),
        }
    }

    /// Whether anything is held of partition number `p`.
    #[cfg(test)]
    fn holds(&self, p: i32) -> bool {
        let Partitions {
            assigned,
            stores,
            committed,
            fetched,
            paused,
            aligner,
            released: _,
        } = self;
        assigned.iter().any(|(_, q)| *q == p)
            || stores.contains_key(&p)
            || committed.keys().any(|(_, q)| *q == p)
            || fetched.keys().any(|(_, q)| *q == p)
            || paused.iter().any(|(_, q)| *q == p)
            || aligner.partitions().contains(&p)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::intake::Held;
    use crate::state::StoreLimits;

    fn topic(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    /// Two topics, partitions 0 and 1 assigned and restored, with
    /// offsets, a pause and a held record on each.
    fn busy() -> Partitions {
        let (a, b) = (topic("browse"), topic("erasure"));
        let mut parts = Partitions::new(Aligner::new(vec![a.clone(), b.clone()], Duration::ZERO));
        let new = parts.assign([
            (a.clone(), 0),
            (b.clone(), 0),
            (a.clone(), 1),
            (b.clone(), 1),
        ]);
        assert_eq!(new, [0, 1], "both need a restore");
        parts.install(
            [0, 1]
                .into_iter()
                .map(|p| (p, PartitionStore::new(StoreLimits::default())))
                .collect(),
        );
        assert!(
            parts.assign([(a.clone(), 1)]).is_empty(),
            "restored already"
        );
        for p in [0, 1] {
            parts.committed.insert((a.clone(), p), 10);
            parts.fetched.insert((a.clone(), p), 12);
            parts.paused.insert((a.clone(), p));
            parts
                .aligner
                .push(&a, p, Some(5), Held::erasure_for_test(p, "c"));
        }
        parts
    }

    #[test]
    fn a_revoked_partition_leaves_nothing_behind() {
        let mut parts = busy();
        let one = [(topic("browse"), 1), (topic("erasure"), 1)];
        let revoked = parts.revoke(&one);
        assert_eq!(revoked.partitions, [1]);
        assert!(!parts.holds(1), "partition 1 is gone from every field");
        assert!(parts.holds(0));
        assert_eq!(parts.stores.len(), 1);
        assert_eq!(parts.aligner.buffered("browse", 0), 1);
    }

    #[test]
    fn a_partly_revoked_partition_keeps_its_state() {
        let mut parts = busy();
        // Only one of its topics goes (an assignor other than range would
        // do that): the state stays for the topic still assigned.
        let revoked = parts.revoke(&[(topic("erasure"), 1)]);
        assert!(revoked.partitions.is_empty());
        assert!(parts.stores.contains_key(&1));
        assert!(parts.assigned.contains(&(topic("browse"), 1)));
    }

    /// The bench e2e realistic-traffic run once stalled for 10 minutes: a
    /// partition paused by the merge's back-pressure was revoked and
    /// assigned again; librdkafka kept it paused, the record of the pause
    /// was gone, and nothing resumed it. An assignment now starts unpaused
    /// (the caller resumes every assigned partition in librdkafka).
    #[test]
    fn an_assigned_partition_starts_unpaused() {
        let mut parts = busy();
        let a = topic("browse");
        assert!(parts.paused.contains(&(a.clone(), 0)));
        parts.assign([(a.clone(), 0)]);
        assert!(!parts.paused.contains(&(a.clone(), 0)));
        assert!(parts.paused.contains(&(a, 1)), "others keep their pause");
    }

    #[test]
    fn a_reset_drops_what_is_not_committed_and_keeps_the_assignment() {
        let mut parts = busy();
        let reset = parts.reset();
        assert_eq!(reset.restore, [0, 1]);
        assert_eq!(reset.resume.len(), 2);
        assert!(parts.stores.is_empty() && parts.fetched.is_empty() && parts.paused.is_empty());
        assert!(parts.aligner.partitions().is_empty());
        assert_eq!(parts.assigned.len(), 4);
        assert_eq!(parts.committed.len(), 2, "committed offsets are the truth");
        // The restore brings them back.
        assert_eq!(parts.assign(parts.assigned.clone()), [0, 1]);
    }
}
