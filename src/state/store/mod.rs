//! The customers of one input partition: their states, the partition's
//! event-time watermark, inactivity timers, retention, and the set of
//! customers changed since the last changelog flush.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::mem::size_of;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

mod monitor;
mod restore;

use super::codec::{decode, peek, CodecError, Peek};
use super::erasure::Markers;
use super::{Applied, CustomerState, StateLimits};
use crate::event::Event;
pub use restore::{BulkRestore, Restored};

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
    /// Live outcomes: prediction snapshots at cut times (see
    /// [`super::monitor`]); `None`: off.
    pub monitor: Option<super::MonitorRules>,
}

/// `[state]`'s defaults.
impl Default for StoreLimits {
    fn default() -> Self {
        crate::config::StateConfig::default().limits()
    }
}

impl crate::config::Config {
    /// The rules the partition stores apply: `[state]`'s, with live
    /// outcomes when `output.outcomes_topic` is set.
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            monitor: super::MonitorRules::of(self),
            ..self.state.limits()
        }
    }
}

impl crate::config::StateConfig {
    /// The rules the partition stores apply.
    pub fn limits(&self) -> StoreLimits {
        let ms = crate::units::millis;
        StoreLimits {
            state: StateLimits {
                max_events: self.max_events,
                text_tokens: self.text_tokens,
            },
            allowed_lateness_ms: ms(self.allowed_lateness),
            idle_timeout: self.idle_timeout,
            ttl_ms: ms(self.ttl),
            review_after_ms: ms(self.review_after),
            monitor: None,
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
    /// Stamped at or before the customer's erasure (see
    /// [`super::erasure`]): dropped, counted, never dead-lettered (its
    /// payload is the erased customer's data).
    Erased,
}

/// A customer who left without a decision: evicted (TTL) or erased. They
/// leave their segment and every raised risk flag clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The customer.
    pub customer_id: String,
    /// The segment they were in ("" if none).
    pub segment: String,
    /// Their raised risk flags, one bit per rule (`decide::risk::Rule`).
    pub risk_flags: u8,
    /// Erased (`true`) or evicted.
    pub erased: bool,
}

impl Exit {
    /// The exit of a customer who leaves with `decision` (`None` if their
    /// restored state does not decode: nothing is known to leave); `None`
    /// when they had neither a segment nor a raised flag.
    fn of(id: &str, decision: Option<&super::Decision>, erased: bool) -> Option<Exit> {
        let d = decision?;
        (!d.segment.is_empty() || d.risk_flags != 0).then(|| Exit {
            customer_id: id.to_string(),
            segment: d.segment.clone(),
            risk_flags: d.risk_flags,
            erased,
        })
    }
}

/// A customer id as the store keeps it: one allocation shared by the
/// customer map, the time indexes and the changed set, so that an event of a
/// known customer copies no id.
type Id = Arc<str>;

/// The customers of one partition.
#[derive(Debug)]
pub struct PartitionStore {
    limits: StoreLimits,
    /// Keyed with foldhash's seeded quality hasher: several times faster
    /// than the standard library's SipHash on short ids (a restore inserts
    /// every customer), and seeded per process, so ids chosen upstream
    /// cannot be made to collide.
    customers: HashMap<Id, Slot, foldhash::quality::RandomState>,
    /// Event-time clock: the latest event time seen, pushed forward by the
    /// wall clock while the partition is idle. Never goes back.
    clock_ms: i64,
    /// Wall time up to which idleness has been credited to `clock_ms`.
    idle_credited_at: Option<Instant>,
    last_input_at: Option<Instant>,
    /// (review time, customer): inactivity timers. Kept lazily, so that an
    /// event of a known customer touches no tree: every customer with a
    /// timer has an entry at or before its next review time, and an entry
    /// may be early (its time moved later since) or stale (the customer
    /// left, or its timer was cleared). [`PartitionStore::take_due`] checks
    /// each entry it reaches against the customer, and files an early one
    /// again at the customer's time.
    timers: BTreeSet<(i64, Id)>,
    /// (event time, customer), for retention: every customer has an entry at
    /// or before its latest event time, kept as lazily as `timers` (checked
    /// by [`PartitionStore::evict_expired`]).
    expiry: BTreeSet<(i64, Id)>,
    /// Changed since the last drain: a hash set (an event's insert is one
    /// hash, not a string comparison per level of a tree), sorted when
    /// drained, so the changelog's order stays deterministic.
    dirty: HashSet<Id, foldhash::quality::RandomState>,
    /// Erasure markers (see [`super::erasure`]).
    markers: Markers,
    /// Evicted or erased customers that had a segment or a flag, until
    /// [`PartitionStore::take_exits`].
    exits: Vec<Exit>,
    duplicates: u64,
    /// Live outcomes: how far cuts are closed and horizons resolved
    /// (`None` until the store first moves its watermark), the captures to
    /// score and the snapshots resolved, until the cycle takes them.
    cursor: Option<super::monitor::Cursor>,
    captures: Vec<super::Capture>,
    resolved: Vec<super::Resolved>,
    /// Restored values that passed the restore's check but did not decode
    /// when their customer was first used.
    undecodable: u64,
}

/// One customer in the store: a live state, or the changelog value it was
/// restored from, kept encoded until the customer is first used. A restore
/// then costs a copy and a [`peek`] per customer instead of a full decode
/// (the changelog's read rate, not the decoder's), and customers that stay
/// quiet after a restart are never decoded at all. Both are boxed: the map
/// moves 16-byte slots when it grows, not whole states.
#[derive(Debug)]
enum Slot {
    Live(Box<CustomerState>),
    Restored(Box<Encoded>),
}

impl Default for Slot {
    fn default() -> Self {
        Slot::Live(Box::default())
    }
}

#[derive(Debug)]
struct Encoded {
    bytes: Box<[u8]>,
    /// The times the indexes need, read at restore.
    peek: Peek,
    /// Decoded by a read-only use (a lookup), kept until the first change
    /// takes it (`None` inside: the value does not decode, as logged).
    /// Boxed: an unread value costs a pointer here, not a whole state.
    decoded: OnceLock<Option<Box<CustomerState>>>,
}

impl Slot {
    /// (latest event time, next review time): the indexes' keys.
    fn times(&self) -> (i64, i64) {
        match self {
            Slot::Restored(e) => (e.peek.last_event_ms, e.peek.next_review_ms),
            Slot::Live(s) => (s.last_event_ms, s.decision.next_review_ms),
        }
    }

    /// The state for reading (a restored one is decoded once and kept);
    /// `None` when a restored value does not decode.
    fn get(&self) -> Option<&CustomerState> {
        match self {
            Slot::Live(s) => Some(s),
            Slot::Restored(e) => e
                .decoded
                .get_or_init(|| decode(&e.bytes).inspect_err(undecodable).ok().map(Box::new))
                .as_deref(),
        }
    }

    /// The state to change, decoding a restored value (an error is logged
    /// where the decode runs). A value that does not decode leaves the
    /// slot live and empty, the customer starting over: `true` then.
    fn make_live(&mut self) -> (&mut CustomerState, bool) {
        let mut failed = false;
        if let Slot::Restored(e) = self {
            let decoded = match e.decoded.take() {
                Some(decoded) => decoded,
                None => decode(&e.bytes).inspect_err(undecodable).ok().map(Box::new),
            };
            failed = decoded.is_none();
            *self = Slot::Live(decoded.unwrap_or_default());
        }
        match self {
            Slot::Live(s) => (s, failed),
            Slot::Restored(_) => unreachable!("the slot was made live just above"),
        }
    }

    /// The whole state, decoding a restored value (`None`: it does not
    /// decode).
    fn into_state(mut self) -> Option<CustomerState> {
        let (state, failed) = self.make_live();
        (!failed).then(|| std::mem::take(state))
    }

    fn memory_bytes(&self) -> usize {
        size_of::<Slot>()
            + match self {
                Slot::Live(s) => s.memory_bytes(),
                Slot::Restored(e) => {
                    size_of::<Encoded>()
                        + e.bytes.len()
                        + e.decoded
                            .get()
                            .and_then(|d| d.as_deref())
                            .map_or(0, CustomerState::memory_bytes)
                }
            }
    }
}

/// Logs a restored value that passed the restore's check and failed its
/// full decode (the customer starts over, as if the restore had skipped it).
fn undecodable(error: &CodecError) {
    tracing::error!(
        %error,
        "A restored customer state could not be decoded when first used; \
         that customer's state restarts empty."
    );
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
            customers: HashMap::default(),
            clock_ms: i64::MIN,
            idle_credited_at: None,
            last_input_at: None,
            timers: BTreeSet::new(),
            expiry: BTreeSet::new(),
            dirty: HashSet::default(),
            markers: Markers::default(),
            exits: Vec::new(),
            duplicates: 0,
            cursor: None,
            captures: Vec::new(),
            resolved: Vec::new(),
            undecodable: 0,
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
        self.live(id)?;
        let key = self.key(id);
        self.dirty.insert(key);
        self.live(id).map(|s| &mut s.decision)
    }

    /// The store's own id for a customer (a new one for a new customer).
    fn key(&self, id: &str) -> Id {
        self.customers
            .get_key_value(id)
            .map_or_else(|| Id::from(id), |(key, _)| Id::clone(key))
    }

    /// A customer's state to change; a restored one is decoded now. A
    /// restored value that does not decode is dropped (the customer starts
    /// over, as if the restore had skipped it): `None`.
    fn live(&mut self, id: &str) -> Option<&mut CustomerState> {
        if let Slot::Restored(_) = self.customers.get(id)? {
            let slot = self.customers.get_mut(id)?;
            if slot.make_live().1 {
                self.undecodable += 1;
                // Its index entries go stale, and are dropped when reached.
                self.customers.remove(id);
                return None;
            }
        }
        match self.customers.get_mut(id)? {
            Slot::Live(s) => Some(s),
            Slot::Restored(_) => None,
        }
    }

    /// The watermark: events before it are late; timers at or before it fire.
    pub fn watermark_ms(&self) -> i64 {
        self.clock_ms
            .saturating_sub(self.limits.allowed_lateness_ms)
    }

    /// Applies an event received at wall time `now` (offline, or from a
    /// record without a timestamp).
    pub fn record(&mut self, event: &Event, now: Instant) -> RecordOutcome {
        self.record_at(event, None, now)
    }

    /// Applies an event read from a record stamped `record_time_ms` (the
    /// Kafka timestamp, which an erasure marker also covers) at wall time
    /// `now`.
    pub fn record_at(
        &mut self,
        event: &Event,
        record_time_ms: Option<i64>,
        now: Instant,
    ) -> RecordOutcome {
        if self
            .markers
            .cover(&event.customer_id, event.event_time_ms, record_time_ms)
        {
            return RecordOutcome::Erased;
        }
        let watermark_ms = self.watermark_ms();
        if event.event_time_ms < watermark_ms {
            return RecordOutcome::Late { watermark_ms };
        }
        self.last_input_at = Some(now);
        self.idle_credited_at = None;
        if let Some(rules) = self.limits.monitor {
            self.monitor_before(rules, event);
        }
        let key = self.key(&event.customer_id);
        let mut new = false;
        let slot = self.customers.entry(Id::clone(&key)).or_insert_with(|| {
            new = true;
            Slot::default()
        });
        let before = slot.times();
        let (state, failed) = slot.make_live();
        if failed {
            // Left live and empty: the customer starts over.
            self.undecodable += 1;
        }
        if state.record(event, self.limits.state) == Applied::Duplicate {
            self.duplicates += 1;
            // The customer's `duplicates` counter changed: it must reach the
            // changelog in the cycle that commits this record's offset, or
            // the increment is lost at the next restore.
            self.dirty.insert(key);
            return RecordOutcome::Duplicate;
        }
        let after_last = state.last_event_ms;
        let next_review = after_last.saturating_add(self.limits.review_after_ms);
        state.decision.next_review_ms = before.1.max(next_review);
        let after = (after_last, state.decision.next_review_ms);
        // Times only move later here: a known customer's entries stay
        // valid (at or before its times), so only a new one, or a timer
        // that was cleared, is filed.
        if new {
            self.expiry.insert((after.0, Id::clone(&key)));
        }
        if after.1 > 0 && (new || before.1 == 0) {
            self.timers.insert((after.1, Id::clone(&key)));
        }
        self.dirty.insert(key);
        self.clock_ms = self.clock_ms.max(event.event_time_ms);
        RecordOutcome::Applied
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
        let clock = self.clock_ms.saturating_add(crate::units::millis(credit));
        if let Some(rules) = self.limits.monitor {
            self.monitor_advance(rules, clock);
        }
        self.clock_ms = clock;
        self.idle_credited_at = Some(now);
    }

    /// Customers whose review time the watermark has passed (trigger
    /// INACTIVITY), in time order. Their timer is cleared; the decision stage
    /// sets the next one with [`PartitionStore::schedule_review`].
    pub fn take_due(&mut self) -> Vec<String> {
        let watermark = self.watermark_ms();
        let mut due = Vec::new();
        let mut later = Vec::new();
        while let Some((at, _)) = self.timers.first() {
            if *at > watermark {
                break;
            }
            let Some((_, id)) = self.timers.pop_first() else {
                break;
            };
            // A stale entry (customer gone, timer cleared or already fired)
            // is dropped; an early one is filed again at the customer's time.
            let Some(next) = self.customers.get(&id).map(|s| s.times().1) else {
                continue;
            };
            if next == 0 {
                continue;
            }
            if next > watermark {
                later.push((next, id));
                continue;
            }
            if let Some(s) = self.live(&id) {
                s.decision.next_review_ms = 0;
                self.dirty.insert(Id::clone(&id));
            }
            due.push((next, id));
        }
        self.timers.extend(later);
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    /// Sets a customer's next review time (event time, ms; 0 clears it).
    pub fn schedule_review(&mut self, id: &str, at_ms: i64) {
        let Some(s) = self.live(id) else {
            return;
        };
        let before = s.decision.next_review_ms;
        s.decision.next_review_ms = at_ms;
        let key = self.key(id);
        // An entry at or before `before` covers a later time; an earlier
        // one needs its own (the older entry goes stale).
        if at_ms > 0 && (before == 0 || at_ms < before) {
            self.timers.insert((at_ms, Id::clone(&key)));
        }
        self.dirty.insert(key);
    }

    /// Evicts customers whose latest event is older than the TTL before the
    /// watermark; they are reported by [`PartitionStore::take_dirty`] as
    /// tombstones.
    pub fn evict_expired(&mut self) -> usize {
        let horizon = self.watermark_ms().saturating_sub(self.limits.ttl_ms);
        let mut evicted = 0;
        let mut later = Vec::new();
        while let Some((last, _)) = self.expiry.first() {
            if *last >= horizon {
                break;
            }
            let Some((_, id)) = self.expiry.pop_first() else {
                break;
            };
            // Stale (gone) or early (active since): dropped, or filed again.
            let Some(last) = self.customers.get(&id).map(|s| s.times().0) else {
                continue;
            };
            if last >= horizon {
                later.push((last, id));
                continue;
            }
            // Its timer entry goes stale, and is dropped when reached.
            if let Some(slot) = self.customers.remove(&id) {
                // A restored customer is decoded for their segment and
                // flags; one whose value does not decode leaves without an
                // exit record.
                let state = slot.into_state();
                if state.is_none() {
                    self.undecodable += 1;
                }
                let decision = state.as_ref().map(|s| &s.decision);
                self.exits.extend(Exit::of(&id, decision, false));
            }
            self.dirty.insert(id);
            evicted += 1;
        }
        self.expiry.extend(later);
        evicted
    }

    /// Customers evicted or erased since the last call who had a segment or
    /// a raised flag: they leave it (an EXITED record, a tombstone in the
    /// current topic) and their flags clear.
    pub fn take_exits(&mut self) -> Vec<Exit> {
        std::mem::take(&mut self.exits)
    }

    /// Erases a customer as of `through_ms`: their state goes (a changelog
    /// tombstone at the next drain), they leave their segment and their
    /// flags clear, and a marker drops every event of theirs stamped at or
    /// before `through_ms` that is read later (see [`super::erasure`]).
    /// Returns whether there was state.
    pub fn erase(&mut self, id: &str, through_ms: i64) -> bool {
        let key = self.key(id);
        self.markers.erase(Id::clone(&key), through_ms);
        let Some(slot) = self.customers.get(id) else {
            return false;
        };
        // A restored value that does not decode has nothing to leave.
        let exit = Exit::of(id, slot.get().map(|s| &s.decision), true);
        // Forgotten: no prediction of theirs is scored or published.
        self.captures.retain(|c| c.customer_id != id);
        self.resolved.retain(|r| r.customer_id != id);
        self.exits.extend(exit);
        // Its index entries go stale (see `timers`).
        self.customers.remove(id);
        self.dirty.insert(key);
        true
    }

    /// The time up to which `id` is erased, if a marker is kept.
    pub fn erased_through(&self, id: &str) -> Option<i64> {
        self.markers.through(id)
    }

    /// Erasure markers kept.
    pub fn erasure_markers(&self) -> usize {
        self.markers.len()
    }

    /// Ends the markers of erasures up to before `oldest_ms`: no input
    /// record that old can still arrive (the input topics' retention). Their
    /// changelog tombstones go out with the next drain. Returns how many.
    pub fn expire_markers(&mut self, oldest_ms: i64) -> usize {
        self.markers.expire(oldest_ms)
    }

    /// Markers set or ended since the last call (`None`: ended), for the
    /// changelog.
    pub fn take_dirty_markers(&mut self) -> Vec<(String, Option<i64>)> {
        self.markers.take_dirty()
    }

    /// Whether customers or markers changed since they were last taken
    /// for the changelog.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.markers.has_dirty()
    }

    /// Customers changed (or evicted: `None`) since the last call, for the
    /// changelog.
    pub fn take_dirty(&mut self) -> Vec<(String, Option<&CustomerState>)> {
        let mut dirty: Vec<Id> = std::mem::take(&mut self.dirty).into_iter().collect();
        dirty.sort_unstable();
        dirty
            .into_iter()
            .map(|id| {
                // Changed customers are live: `get` does not decode here.
                let s = self.customers.get(&id).and_then(Slot::get);
                (id.to_string(), s)
            })
            .collect()
    }

    /// Installs a restored state (not marked dirty: it is already in the changelog).
    pub fn restore(&mut self, id: impl Into<Arc<str>>, state: CustomerState) {
        let id: Id = id.into();
        self.clock_ms = self.clock_ms.max(state.last_event_ms);
        self.expiry.insert((state.last_event_ms, Id::clone(&id)));
        if state.decision.next_review_ms > 0 {
            self.timers
                .insert((state.decision.next_review_ms, Id::clone(&id)));
        }
        self.customers.insert(id, Slot::Live(Box::new(state)));
    }

    /// Applies a changelog tombstone.
    pub fn forget(&mut self, id: &str) {
        // Its index entries go stale (see `timers`).
        self.customers.remove(id);
    }

    /// One customer's state (a restored one is decoded at its first read).
    pub fn get(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(id).and_then(Slot::get)
    }

    /// Whether the store holds the customer (without decoding it).
    pub fn contains(&self, id: &str) -> bool {
        self.customers.contains_key(id)
    }

    /// Every customer's id (unordered; nothing is decoded).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.customers.keys().map(|id| &**id)
    }

    /// All customers (unordered; restored ones are decoded as they come).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CustomerState)> {
        self.customers
            .iter()
            .filter_map(|(id, s)| s.get().map(|s| (&**id, s)))
    }

    /// Restored values that did not decode when first used (each such
    /// customer started over).
    pub fn undecodable(&self) -> u64 {
        self.undecodable
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

    /// Bytes of customer state and erasure markers (states and their
    /// keys; index overhead excluded).
    pub fn memory_bytes(&self) -> usize {
        // An id: its text and the shared allocation's two counts.
        let id = |k: &Id| k.len() + 2 * size_of::<usize>();
        let states: usize = self
            .customers
            .iter()
            .map(|(k, s)| id(k) + s.memory_bytes())
            .sum();
        states + self.markers.memory_bytes()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod monitor_tests;
