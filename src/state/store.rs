//! The customers of one input partition: their states, the partition's
//! event-time watermark, inactivity timers, retention, and the set of
//! customers changed since the last changelog flush.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{Applied, CustomerState, StateLimits};
use crate::event::Event;

/// Event-time and retention rules of a store (from `[state]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Sizes of each customer's state.
    pub state: StateLimits,
    /// How far behind the partition's latest event time an event may be and
    /// still be placed in order; older ones are `late`.
    pub allowed_lateness_ms: i64,
    /// After this long without input, the watermark follows the wall clock.
    pub idle_timeout: Duration,
    /// Customers without events for this long (event time) are evicted.
    pub ttl_ms: i64,
    /// A customer is rescored (trigger INACTIVITY) this long after their
    /// latest event unless the decision stage schedules otherwise.
    pub review_after_ms: i64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            state: StateLimits::default(),
            allowed_lateness_ms: 3_600_000,
            idle_timeout: Duration::from_secs(30),
            ttl_ms: 400 * 86_400_000,
            review_after_ms: 7 * 86_400_000,
        }
    }
}

/// What became of an event offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Applied to the customer's state.
    Applied,
    /// Same `event_id` as a recent event of the customer: ignored, counted.
    Duplicate,
    /// Older than the watermark: the caller routes it to the dead-letter
    /// topic with reason `late`.
    Late {
        /// The watermark it missed (ms).
        watermark_ms: i64,
    },
}

/// A customer who left their segment without a decision: evicted (TTL) or
/// erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The customer.
    pub customer_id: String,
    /// The segment they were in.
    pub segment: String,
    /// Erased (`true`) or evicted.
    pub erased: bool,
}

/// The customers of one partition.
#[derive(Debug)]
pub struct PartitionStore {
    limits: StoreLimits,
    customers: HashMap<String, CustomerState>,
    /// Event-time clock: the latest event time seen, pushed forward by the
    /// wall clock while the partition is idle. Never goes back.
    clock_ms: i64,
    /// Wall time up to which idleness has been credited to `clock_ms`.
    idle_credited_at: Option<Instant>,
    last_input_at: Option<Instant>,
    /// (next review time, customer).
    timers: BTreeSet<(i64, String)>,
    /// (latest event time, customer), for retention.
    expiry: BTreeSet<(i64, String)>,
    dirty: BTreeSet<String>,
    /// Evicted or erased customers that had a segment, until
    /// [`PartitionStore::take_exits`].
    exits: Vec<Exit>,
    duplicates: u64,
}

impl PartitionStore {
    /// The limits it was made with.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        PartitionStore {
            limits,
            customers: HashMap::new(),
            clock_ms: i64::MIN,
            idle_credited_at: None,
            last_input_at: None,
            timers: BTreeSet::new(),
            expiry: BTreeSet::new(),
            dirty: BTreeSet::new(),
            exits: Vec::new(),
            duplicates: 0,
        }
    }

    /// The partition's event-time clock: the latest event time seen, moved on
    /// by the wall clock while idle (`i64::MIN` before any event).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// A customer's decision memory, for the decision stage (marks the
    /// customer changed for the changelog).
    pub fn decision_mut(&mut self, id: &str) -> Option<&mut super::Decision> {
        let s = self.customers.get_mut(id)?;
        self.dirty.insert(id.to_string());
        Some(&mut s.decision)
    }

    /// The watermark: events before it are late; timers at or before it fire.
    pub fn watermark_ms(&self) -> i64 {
        self.clock_ms
            .saturating_sub(self.limits.allowed_lateness_ms)
    }

    /// Applies an event received at wall time `now`.
    pub fn record(&mut self, event: &Event, now: Instant) -> RecordOutcome {
        let watermark_ms = self.watermark_ms();
        if event.event_time_ms < watermark_ms {
            return RecordOutcome::Late { watermark_ms };
        }
        self.last_input_at = Some(now);
        self.idle_credited_at = None;
        let id = event.customer_id.as_str();
        let state = self.customers.entry(id.to_string()).or_default();
        let before = (state.last_event_ms, state.decision.next_review_ms);
        if state.record(event, self.limits.state) == Applied::Duplicate {
            self.duplicates += 1;
            // The customer's `duplicates` counter changed: it must reach the
            // changelog in the cycle that commits this record's offset, or
            // the increment is lost at the next restore.
            self.dirty.insert(id.to_string());
            return RecordOutcome::Duplicate;
        }
        let after_last = state.last_event_ms;
        let next_review = after_last.saturating_add(self.limits.review_after_ms);
        state.decision.next_review_ms = before.1.max(next_review);
        let after = (after_last, state.decision.next_review_ms);
        self.reindex(id, before, after);
        self.dirty.insert(id.to_string());
        self.clock_ms = self.clock_ms.max(event.event_time_ms);
        RecordOutcome::Applied
    }

    fn reindex(&mut self, id: &str, before: (i64, i64), after: (i64, i64)) {
        if before.0 != after.0 {
            self.expiry.remove(&(before.0, id.to_string()));
            self.expiry.insert((after.0, id.to_string()));
        }
        if before.1 != after.1 {
            if before.1 > 0 {
                self.timers.remove(&(before.1, id.to_string()));
            }
            if after.1 > 0 {
                self.timers.insert((after.1, id.to_string()));
            }
        }
    }

    /// Lets the watermark follow the wall clock once the partition has had no
    /// input for `idle_timeout`, so that inactivity timers still fire.
    pub fn tick(&mut self, now: Instant) {
        let Some(last) = self.last_input_at else {
            return;
        };
        let idle_from = last + self.limits.idle_timeout;
        if now <= idle_from || self.clock_ms == i64::MIN {
            return;
        }
        let from = self.idle_credited_at.unwrap_or(idle_from).max(idle_from);
        let credit = now.saturating_duration_since(from);
        self.clock_ms = self.clock_ms.saturating_add(crate::units::millis(credit));
        self.idle_credited_at = Some(now);
    }

    /// Customers whose review time the watermark has passed (trigger
    /// INACTIVITY), in time order. Their timer is cleared; the decision stage
    /// sets the next one with [`PartitionStore::schedule_review`].
    pub fn take_due(&mut self) -> Vec<String> {
        let watermark = self.watermark_ms();
        let mut due = Vec::new();
        while let Some((at, _)) = self.timers.first() {
            if *at > watermark {
                break;
            }
            let Some((_, id)) = self.timers.pop_first() else {
                break;
            };
            if let Some(s) = self.customers.get_mut(&id) {
                s.decision.next_review_ms = 0;
                self.dirty.insert(id.clone());
            }
            due.push(id);
        }
        due
    }

    /// Sets a customer's next review time (event time, ms; 0 clears it).
    pub fn schedule_review(&mut self, id: &str, at_ms: i64) {
        let Some(s) = self.customers.get_mut(id) else {
            return;
        };
        let before = (s.last_event_ms, s.decision.next_review_ms);
        s.decision.next_review_ms = at_ms;
        self.reindex(id, before, (before.0, at_ms));
        self.dirty.insert(id.to_string());
    }

    /// Evicts customers whose latest event is older than the TTL before the
    /// watermark; they are reported by [`PartitionStore::take_dirty`] as
    /// tombstones.
    pub fn evict_expired(&mut self) -> usize {
        let horizon = self.watermark_ms().saturating_sub(self.limits.ttl_ms);
        let mut evicted = 0;
        while let Some((last, _)) = self.expiry.first() {
            if *last >= horizon {
                break;
            }
            let Some((_, id)) = self.expiry.pop_first() else {
                break;
            };
            if let Some(s) = self.customers.remove(&id) {
                if s.decision.next_review_ms > 0 {
                    self.timers.remove(&(s.decision.next_review_ms, id.clone()));
                }
                if !s.decision.segment.is_empty() {
                    self.exits.push(Exit {
                        customer_id: id.clone(),
                        segment: s.decision.segment,
                        erased: false,
                    });
                }
            }
            self.dirty.insert(id);
            evicted += 1;
        }
        evicted
    }

    /// Customers evicted or erased since the last call who had a segment:
    /// they leave it (an EXITED record, a tombstone in the current topic).
    pub fn take_exits(&mut self) -> Vec<Exit> {
        std::mem::take(&mut self.exits)
    }

    /// Erases a customer: their state goes (a changelog tombstone at the
    /// next drain) and, when they had a segment, they leave it. Returns
    /// whether there was state.
    pub fn erase(&mut self, id: &str) -> bool {
        let Some(state) = self.customers.get(id) else {
            return false;
        };
        let segment = state.decision.segment.clone();
        self.remove_indexed(id);
        self.dirty.insert(id.to_string());
        if !segment.is_empty() {
            self.exits.push(Exit {
                customer_id: id.to_string(),
                segment,
                erased: true,
            });
        }
        true
    }

    /// Whether customers changed since the last [`PartitionStore::take_dirty`].
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Customers changed (or evicted: `None`) since the last call, for the
    /// changelog.
    pub fn take_dirty(&mut self) -> Vec<(String, Option<&CustomerState>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let s = self.customers.get(&id);
                (id, s)
            })
            .collect()
    }

    /// Installs a restored state (not marked dirty: it is already in the changelog).
    pub fn restore(&mut self, id: String, state: CustomerState) {
        self.remove_indexed(&id);
        self.clock_ms = self.clock_ms.max(state.last_event_ms);
        self.expiry.insert((state.last_event_ms, id.clone()));
        if state.decision.next_review_ms > 0 {
            self.timers
                .insert((state.decision.next_review_ms, id.clone()));
        }
        self.customers.insert(id, state);
    }

    /// Applies a changelog tombstone.
    pub fn forget(&mut self, id: &str) {
        self.remove_indexed(id);
    }

    /// Starts installing many restored states (a whole partition read from
    /// the changelog): each record only touches the customer map, and the
    /// time indexes are rebuilt once, sorted, when the returned guard is
    /// dropped. `expected`: about how many records will come (room is made
    /// for them up front).
    pub fn bulk_restore(&mut self, expected: usize) -> BulkRestore<'_> {
        self.customers.reserve(expected);
        BulkRestore {
            clock_ms: self.clock_ms,
            store: self,
        }
    }

    /// Rebuilds the review-timer and retention indexes from the customers.
    fn reindex_all(&mut self) {
        let mut expiry = Vec::with_capacity(self.customers.len());
        let mut timers = Vec::with_capacity(self.customers.len());
        for (id, s) in &self.customers {
            expiry.push((s.last_event_ms, id.clone()));
            if s.decision.next_review_ms > 0 {
                timers.push((s.decision.next_review_ms, id.clone()));
            }
        }
        // Sorted input makes the sets' bulk build linear.
        expiry.sort_unstable();
        timers.sort_unstable();
        self.expiry = expiry.into_iter().collect();
        self.timers = timers.into_iter().collect();
    }

    fn remove_indexed(&mut self, id: &str) {
        if let Some(old) = self.customers.remove(id) {
            self.expiry.remove(&(old.last_event_ms, id.to_string()));
            if old.decision.next_review_ms > 0 {
                self.timers
                    .remove(&(old.decision.next_review_ms, id.to_string()));
            }
        }
    }

    /// One customer's state.
    pub fn get(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(id)
    }

    /// All customers (unordered).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &CustomerState)> {
        self.customers.iter()
    }

    /// Number of customers.
    pub fn len(&self) -> usize {
        self.customers.len()
    }

    /// Whether the store holds no customer.
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }

    /// Duplicates ignored so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Bytes of customer state (states and their keys; index overhead excluded).
    pub fn memory_bytes(&self) -> usize {
        self.customers
            .iter()
            .map(|(k, s)| k.capacity() + s.memory_bytes())
            .sum()
    }
}

/// Restored states going into a [`PartitionStore`] in bulk (see
/// [`PartitionStore::bulk_restore`]); the indexes are rebuilt on drop.
pub struct BulkRestore<'a> {
    store: &'a mut PartitionStore,
    clock_ms: i64,
}

impl BulkRestore<'_> {
    /// Installs a restored state, replacing an earlier record of the same
    /// customer (not marked dirty: it is already in the changelog).
    pub fn put(&mut self, id: String, state: CustomerState) {
        self.clock_ms = self.clock_ms.max(state.last_event_ms);
        self.store.customers.insert(id, state);
    }

    /// Applies a changelog tombstone.
    pub fn forget(&mut self, id: &str) {
        self.store.customers.remove(id);
    }
}

impl Drop for BulkRestore<'_> {
    fn drop(&mut self) {
        self.store.clock_ms = self.clock_ms;
        self.store.reindex_all();
    }
}
