//! Erasure markers: what is left of an erased customer, so that an erasure
//! holds as of its time and not only as of the moment it was applied.
//!
//! A request (`segstream forget`) erases everything of a customer up to its
//! time T. The input may lag behind the request (a catch-up after an
//! outage, a restart, a rebalance, a backfill): events of that customer
//! produced before the request can be read after it. The partition store
//! therefore keeps a marker (customer → T) after dropping the state, and
//! drops every later-read event stamped at or before T (by event time or by
//! the Kafka record's timestamp), while events after T start a new state.
//! The marker goes to the changelog like a state (so a restore or a
//! rebalance keeps it) under its own key, and is removed once no input
//! record from before T can still arrive (`privacy.erasure_retention`, the
//! input topics' retention).
//!
//! This module owns the marker's changelog key and value; the store keeps
//! the markers and applies them.

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;
use std::sync::Arc;

use prost::Message as _;

use super::codec::CodecError;
use crate::event::proto::ErasureMarker;

/// The erasure markers of one partition (customer → erased up to, ms), and
/// those set or ended since the changelog last took them.
#[derive(Debug, Default)]
pub(super) struct Markers {
    through: HashMap<Arc<str>, i64, foldhash::quality::RandomState>,
    dirty: BTreeSet<Arc<str>>,
}

impl Markers {
    /// Erases `id` up to `through_ms` (a later erasure of the same customer
    /// only ever extends it).
    pub(super) fn erase(&mut self, id: Arc<str>, through_ms: i64) {
        let t = self.through.entry(Arc::clone(&id)).or_insert(through_ms);
        *t = (*t).max(through_ms);
        self.dirty.insert(id);
    }

    /// Whether an erasure of `id` covers an event (see [`covers`]).
    pub(super) fn cover(&self, id: &str, event_time_ms: i64, record_time_ms: Option<i64>) -> bool {
        self.through
            .get(id)
            .is_some_and(|t| covers(*t, event_time_ms, record_time_ms))
    }

    /// The time up to which `id` is erased.
    pub(super) fn through(&self, id: &str) -> Option<i64> {
        self.through.get(id).copied()
    }

    /// Markers kept.
    pub(super) fn len(&self) -> usize {
        self.through.len()
    }

    /// Ends the markers of erasures up to before `oldest_ms`; returns how many.
    pub(super) fn expire(&mut self, oldest_ms: i64) -> usize {
        let before = self.through.len();
        let dirty = &mut self.dirty;
        self.through.retain(|id, t| {
            let keep = *t >= oldest_ms;
            if !keep {
                dirty.insert(Arc::clone(id));
            }
            keep
        });
        before - self.through.len()
    }

    /// Whether markers were set or ended since [`Markers::take_dirty`].
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Markers set or ended since the last call (`None`: ended).
    pub(super) fn take_dirty(&mut self) -> Vec<(String, Option<i64>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|id| {
                let t = self.through.get(&id).copied();
                (id.to_string(), t)
            })
            .collect()
    }

    /// Installs a restored marker (`None`: its tombstone).
    pub(super) fn restore(&mut self, id: &str, through_ms: Option<i64>) {
        match through_ms {
            Some(t) => {
                self.through.insert(Arc::from(id), t);
            }
            None => {
                self.through.remove(id);
            }
        }
    }

    /// Bytes held (ids, their shared allocations' counts, the times).
    pub(super) fn memory_bytes(&self) -> usize {
        self.through
            .keys()
            .map(|k| k.len() + 2 * size_of::<usize>() + size_of::<i64>())
            .sum()
    }
}

/// The changelog key prefix of erasure markers. Customer ids never hold a
/// control character (validated at ingest), so no customer's state key
/// starts with it.
pub const MARKER_KEY_PREFIX: &str = "\u{0}erased:";

/// The changelog key of `id`'s erasure marker.
pub fn marker_key(id: &str) -> String {
    let mut key = String::with_capacity(MARKER_KEY_PREFIX.len() + id.len());
    key.push_str(MARKER_KEY_PREFIX);
    key.push_str(id);
    key
}

/// The customer whose marker a changelog key names (`None`: a state key).
pub fn marker_of(key: &str) -> Option<&str> {
    key.strip_prefix(MARKER_KEY_PREFIX)
}

/// The changelog value of a marker erasing up to `through_ms`.
pub fn encode_marker(through_ms: i64) -> Vec<u8> {
    ErasureMarker {
        erased_through_ms: through_ms,
    }
    .encode_to_vec()
}

/// The time a marker's changelog value erases up to.
pub fn decode_marker(value: &[u8]) -> Result<i64, CodecError> {
    ErasureMarker::decode(value)
        .map(|m| m.erased_through_ms)
        .map_err(|e| CodecError::Protobuf(format!("erasure marker: {e}")))
}

/// Whether an event at `event_time_ms`, read from a record stamped
/// `record_time_ms` (absent when the record had no timestamp, or offline),
/// is covered by an erasure up to `through_ms`: it happened, or was
/// produced, at or before the request.
pub fn covers(through_ms: i64, event_time_ms: i64, record_time_ms: Option<i64>) -> bool {
    event_time_ms <= through_ms || record_time_ms.is_some_and(|t| t >= 0 && t <= through_ms)
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::state::changelog;
    use crate::state::tests::{buy, ev, store_limits, view, T0};
    use crate::state::{PartitionStore, RecordOutcome, Restored};

    #[test]
    fn marker_keys_never_meet_customer_keys() {
        let key = marker_key("cust-1");
        assert_eq!(marker_of(&key), Some("cust-1"));
        assert_eq!(marker_of("cust-1"), None);
        // The prefix holds a control character, which ingest refuses in ids.
        assert!(MARKER_KEY_PREFIX.chars().any(char::is_control));
    }

    #[test]
    fn marker_values_round_trip_and_refuse_garbage() {
        for t in [0, 1, 1_765_000_000_000, i64::MAX] {
            assert_eq!(decode_marker(&encode_marker(t)).unwrap(), t);
        }
        assert!(decode_marker(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn an_erasure_covers_what_happened_or_was_produced_before_it() {
        let t = 1_000;
        assert!(covers(t, 1_000, None), "at T");
        assert!(
            covers(t, 900, Some(2_000)),
            "happened before, produced after"
        );
        assert!(covers(t, 5_000, Some(1_000)), "produced before");
        assert!(!covers(t, 1_001, None), "after T, offline");
        assert!(!covers(t, 1_001, Some(1_001)), "after T");
        assert!(!covers(t, 2_000, Some(-1)), "no record timestamp");
    }

    /// Issue 36: an erasure holds as of its time. Events of the customer read
    /// after the erasure (a lagging input) and stamped at or before it, by
    /// event time or by record time, are dropped; later ones start over.
    #[test]
    fn an_erasure_drops_what_was_stamped_before_it_and_read_after_it() {
        let now = Instant::now();
        let mut store = PartitionStore::new(store_limits());
        store.record(&ev("a", "1", T0, buy("x", 500)), now);
        store.decision_mut("a").unwrap().segment = "active_buyer".into();
        store.decision_mut("a").unwrap().risk_flags = 0b101;
        store.take_dirty();
        let t = T0 + 60_000;
        assert!(store.erase("a", t));
        assert!(store.get("a").is_none());
        assert_eq!(store.erased_through("a"), Some(t));
        let exits = store.take_exits();
        assert_eq!(exits.len(), 1);
        assert_eq!(
            (
                exits[0].segment.as_str(),
                exits[0].risk_flags,
                exits[0].erased
            ),
            ("active_buyer", 0b101, true)
        );
        // The lagging input: older events, by event time or by record time.
        let old = ev("a", "2", T0 + 30_000, view("x", 1, 0));
        assert_eq!(
            store.record_at(&old, Some(t + 5), now),
            RecordOutcome::Erased
        );
        let produced_before = ev("a", "3", t + 1_000, view("x", 1, 0));
        assert_eq!(
            store.record_at(&produced_before, Some(t - 5), now),
            RecordOutcome::Erased
        );
        assert!(store.get("a").is_none(), "nothing of them came back");
        // Another customer is untouched; an event after T starts a new state.
        assert_eq!(
            store.record_at(&ev("b", "4", T0, view("x", 1, 0)), Some(T0), now),
            RecordOutcome::Applied
        );
        let after = ev("a", "5", t + 2_000, view("x", 1, 0));
        assert_eq!(
            store.record_at(&after, Some(t + 2_000), now),
            RecordOutcome::Applied
        );
        assert_eq!(store.get("a").unwrap().recent().len(), 1);
        // Erasing a customer without state still keeps a marker.
        assert!(!store.erase("never-seen", t));
        assert_eq!(store.erasure_markers(), 2);
    }

    /// Issue 36: a marker goes to the changelog and comes back with a restore
    /// (so a SIGKILL or a rebalance keeps it), and ends with retention as a
    /// tombstone of its own key.
    #[test]
    fn erasure_markers_survive_a_restore_and_end_with_retention() {
        let now = Instant::now();
        let mut original = PartitionStore::new(store_limits());
        original.record(&ev("a", "1", T0, view("x", 1, 0)), now);
        original.record(&ev("b", "2", T0, view("x", 1, 0)), now);
        let mut records = changelog::drain_dirty(&mut original);
        let t = T0 + 60_000;
        original.erase("a", t);
        records.extend(changelog::drain_dirty(&mut original));
        let marker = marker_key("a");
        assert!(records.iter().any(|r| r.key == marker && r.value.is_some()));
        assert!(records.iter().any(|r| r.key == "a" && r.value.is_none()));

        let mut restored = PartitionStore::new(store_limits());
        {
            let mut bulk = restored.bulk_restore(records.len());
            for r in &records {
                bulk.put_record(r.key.as_str().into(), r.value.clone())
                    .unwrap();
            }
        }
        assert_eq!(
            restored.len(),
            1,
            "only b's state: {:?}",
            restored.ids().collect::<Vec<_>>()
        );
        assert_eq!(restored.erased_through("a"), Some(t));
        let late = ev("a", "3", T0 + 1, view("x", 1, 0));
        assert_eq!(restored.record_at(&late, None, now), RecordOutcome::Erased);

        // Retention: markers of erasures older than the oldest input record
        // that can still arrive end, as a tombstone of the marker key.
        restored.take_dirty();
        assert_eq!(restored.expire_markers(t), 0, "kept at the boundary");
        assert_eq!(restored.expire_markers(t + 1), 1);
        let ended = changelog::drain_dirty(&mut restored);
        assert_eq!(
            ended,
            [changelog::ChangelogRecord {
                key: marker.clone(),
                value: None
            }]
        );
        {
            let mut bulk = restored.bulk_restore(1);
            assert_eq!(
                bulk.put_record::<Vec<u8>>(marker.as_str().into(), None)
                    .unwrap(),
                Restored::Tombstone
            );
        }
        assert_eq!(restored.erasure_markers(), 0);
        assert_eq!(restored.record_at(&late, None, now), RecordOutcome::Applied);
        // A marker value that does not decode is refused, not installed.
        let mut bulk = restored.bulk_restore(1);
        assert!(bulk
            .put_record(marker.as_str().into(), Some(vec![0xff, 0xff]))
            .is_err());
    }
}
