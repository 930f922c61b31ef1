//! Bulk restore of a partition's customers from the changelog: records
//! installed as they are read (states kept encoded, erasure markers,
//! tombstones), the time indexes built once, sorted, at the end.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use super::{peek, CodecError, CustomerState, Encoded, Id, PartitionStore, Slot};

impl PartitionStore {
    /// Starts installing many restored states (a whole partition read from
    /// the changelog): each record touches the customer map and appends to
    /// the time indexes' build lists while it is in cache, and the indexes
    /// are built once, sorted, when the returned guard is dropped.
    /// `expected`: about how many records will come (room is made for them
    /// up front).
    pub fn bulk_restore(&mut self, expected: usize) -> BulkRestore<'_> {
        self.customers.reserve(expected);
        let mut expiry: Vec<_> = std::mem::take(&mut self.expiry).into_iter().collect();
        let mut timers: Vec<_> = std::mem::take(&mut self.timers).into_iter().collect();
        expiry.reserve(expected);
        timers.reserve(expected);
        BulkRestore {
            clock_ms: self.clock_ms,
            store: self,
            // The existing entries came from sets: already one sorted run.
            expiry: SortedRuns::new(expiry),
            timers: SortedRuns::new(timers),
            replaced: false,
        }
    }
}

/// Restored states going into a [`PartitionStore`] in bulk (see
/// [`PartitionStore::bulk_restore`]); the indexes are rebuilt on drop.
pub struct BulkRestore<'a> {
    store: &'a mut PartitionStore,
    clock_ms: i64,
    /// The indexes' entries as they come (built into sets on drop).
    expiry: SortedRuns,
    timers: SortedRuns,
    /// Whether a record replaced or removed a customer: the entries of
    /// customers no longer there, or after their times, are then filtered
    /// out.
    replaced: bool,
}

impl BulkRestore<'_> {
    /// Installs a restored state, replacing an earlier record of the same
    /// customer (not marked dirty: it is already in the changelog).
    pub fn put(&mut self, id: impl Into<Arc<str>>, state: CustomerState) {
        self.install(id.into(), Slot::Live(Box::new(state)));
    }

    /// Installs a restored changelog value as it is, checked by [`peek`]
    /// and decoded when the customer is first used (see [`Slot`]).
    pub fn put_encoded(
        &mut self,
        id: impl Into<Arc<str>>,
        value: impl Into<Box<[u8]>>,
    ) -> Result<(), CodecError> {
        // Copied first, then checked: the copy reads the value front to
        // back (which the hardware prefetches), the check then jumps
        // around in what is already in cache.
        let bytes: Box<[u8]> = value.into();
        let encoded = Encoded {
            peek: peek(&bytes)?,
            bytes,
            decoded: OnceLock::new(),
        };
        self.install(id.into(), Slot::Restored(Box::new(encoded)));
        Ok(())
    }

    fn install(&mut self, id: Id, slot: Slot) {
        let (last_event, next_review) = slot.times();
        self.clock_ms = self.clock_ms.max(last_event);
        self.expiry.push(last_event, Id::clone(&id));
        if next_review > 0 {
            self.timers.push(next_review, Id::clone(&id));
        }
        if self.store.customers.insert(id, slot).is_some() {
            self.replaced = true;
        }
    }

    /// Applies a changelog tombstone.
    pub fn forget(&mut self, id: &str) {
        if self.store.customers.remove(id).is_some() {
            self.replaced = true;
        }
    }

    /// Installs one changelog record as it was read: a customer's state
    /// (kept encoded, see [`BulkRestore::put_encoded`]), an erasure marker
    /// (see [`super::erasure`]), or the tombstone of either (`value`
    /// `None`). A record that does not decode changes nothing.
    pub fn put_record<V>(&mut self, key: Arc<str>, value: Option<V>) -> Result<Restored, CodecError>
    where
        V: AsRef<[u8]> + Into<Box<[u8]>>,
    {
        if let Some(id) = crate::state::erasure::marker_of(&key) {
            let through = match value {
                Some(v) => Some(crate::state::erasure::decode_marker(v.as_ref())?),
                None => None,
            };
            self.store.markers.restore(id, through);
            return Ok(if through.is_some() {
                Restored::Marker
            } else {
                Restored::Tombstone
            });
        }
        match value {
            None => {
                self.forget(&key);
                Ok(Restored::Tombstone)
            }
            Some(v) => self.put_encoded(key, v).map(|()| Restored::State),
        }
    }
}

/// What a changelog record installed (see [`BulkRestore::put_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// A customer's state.
    State,
    /// An erasure marker.
    Marker,
    /// A tombstone (of a state or of a marker).
    Tombstone,
}

/// Index entries collected during a restore, sorted in runs as they come
/// (while the read is still going) so that little sorting is left for its
/// end.
#[derive(Default)]
struct SortedRuns {
    entries: Vec<(i64, Id)>,
    /// `entries[..sorted]` is a sequence of sorted runs.
    sorted: usize,
}

impl SortedRuns {
    /// Entries sorted per run: small enough to stay in cache.
    const RUN: usize = 4096;

    fn new(sorted: Vec<(i64, Id)>) -> Self {
        SortedRuns {
            sorted: sorted.len(),
            entries: sorted,
        }
    }

    fn push(&mut self, time: i64, id: Id) {
        self.entries.push((time, id));
        if self.entries.len() - self.sorted >= Self::RUN {
            self.entries[self.sorted..].sort_unstable();
            self.sorted = self.entries.len();
        }
    }
}

impl Drop for BulkRestore<'_> {
    fn drop(&mut self) {
        let store = &mut *self.store;
        store.clock_ms = self.clock_ms;
        let mut expiry = std::mem::take(&mut self.expiry.entries);
        let mut timers = std::mem::take(&mut self.timers.entries);
        if self.replaced {
            // Keep only the entries of customers still there with these times.
            let current = |id: &Id| store.customers.get(id).map(Slot::times);
            // (Entries before the customer's times are kept: the indexes
            // are lazy, see `PartitionStore::timers`.)
            expiry.retain(|(t, id)| current(id).is_some_and(|(last, _)| *t <= last));
            timers.retain(|(t, id)| current(id).is_some_and(|(_, next)| next > 0 && *t <= next));
        }
        // A set collected from a vector sorts it (a stable sort, which
        // merges sorted runs) and then builds in one pass. The entries are
        // sorted runs already (filtering keeps them so): the work left after
        // the read's last record is a merge. The two are built side by side
        // (the read is over, its cores are free).
        let build = |v: Vec<(i64, Id)>| v.into_iter().collect::<BTreeSet<_>>();
        let (expiry, timers) = std::thread::scope(|scope| {
            let timers = scope.spawn(|| build(timers));
            (build(expiry), timers.join())
        });
        store.expiry = expiry;
        match timers {
            Ok(timers) => store.timers = timers,
            // Sorting and collecting do not panic; if one did, it goes on.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
