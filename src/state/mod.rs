//! Per-customer state: the recent event sequence, daily buckets for the
//! window aggregates, and decision memory; per-partition stores with the
//! event-time watermark, inactivity timers and retention; the changelog codec
//! and restore.
//!
//! Everything here except `changelog`'s Kafka side is synchronous and pure:
//! the run loop and the trainer drive the same code. This module never sees
//! raw review text beyond [`CustomerState::record`], which hashes it into
//! token ids on the spot.

pub mod changelog;
mod codec;
pub mod erasure;
pub mod monitor;
mod store;
pub mod text;
mod wire;

use std::mem::size_of;

pub use monitor::{Capture, MonitorRules, Predicted, Realized, Resolved, Snapshot};
pub use store::{BulkRestore, Exit, PartitionStore, RecordOutcome, Restored, StoreLimits};

use crate::event::{BrowseAction, Event, Payload};
use text::{category_hash, fnv1a64, tokenize};

/// Window lengths of the aggregates, in days. The state keeps daily buckets
/// for the longest one.
pub const WINDOW_DAYS: [u32; 4] = [1, 7, 30, 90];

pub(crate) use crate::units::DAY_MS;
const KEPT_DAYS: u32 = WINDOW_DAYS[WINDOW_DAYS.len() - 1];

/// Kind ids of recent events (model input `event_kind`; 0 is padding).
pub mod kind {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Product view.
    pub const VIEW: u8 = 1;
    /// Cart add.
    pub const CART_ADD: u8 = 2;
    /// Cart removal.
    pub const CART_REMOVE: u8 = 3;
    /// Wishlist add.
    pub const WISHLIST: u8 = 4;
    /// Search.
    pub const SEARCH: u8 = 5;
    /// Purchase.
    pub const PURCHASE: u8 = 6;
    /// Review.
    pub const REVIEW: u8 = 7;
    /// Size of the vocabulary (ids 0..COUNT).
    pub const COUNT: u8 = 8;
}

/// Sizes the state keeps (from `[state]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Recent events kept per customer (N).
    pub max_events: usize,
    /// Review-text token ids kept per review (T).
    pub text_tokens: usize,
}

/// `[state]`'s defaults.
impl Default for StateLimits {
    fn default() -> Self {
        StoreLimits::default().state
    }
}

/// One recent event, compactly: 24 bytes plus its review tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentEvent {
    /// Hash of `event_id` (duplicate detection and deterministic ordering of
    /// events within the same second).
    pub id_hash: u64,
    /// Event time, seconds since the epoch (unsigned 32 bits: until 2106).
    pub time_s: u32,
    /// Purchase total or displayed price, minor units (saturating).
    pub amount_minor: u32,
    /// Category hash (0: none).
    pub category: u32,
    /// Product hash (0: none; records from before it was kept): the browsed
    /// or reviewed product, or a purchase's highest-value line. For the
    /// risk rules (repeat orders, unverified reviews).
    pub product: u32,
    /// Dwell time, seconds (saturating).
    pub dwell_s: u16,
    /// Kind id (see [`kind`]).
    pub kind: u8,
    /// Rating 1–5 for reviews, else 0.
    pub rating: u8,
}

impl RecentEvent {
    fn order_key(&self) -> (u32, u64) {
        (self.time_s, self.id_hash)
    }
}

/// Activity of one day, in 32 bytes. Counters saturate (at 65535 events or
/// 2^32 - 1 minor units of spend per customer and day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayBucket {
    /// Sketch of categories seen (bit = hash % 64).
    pub category_bits: u64,
    /// Days since the epoch.
    pub day: i32,
    /// Spend in minor units.
    pub spend_minor: u32,
    /// Sum of review ratings.
    pub rating_sum: u32,
    /// Browse events (all actions).
    pub browse: u16,
    /// Cart adds.
    pub cart_adds: u16,
    /// Purchases.
    pub purchases: u16,
    /// Reviews.
    pub reviews: u16,
}

/// What segstream last decided for a customer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Current segment ("" before the first decision).
    pub segment: String,
    /// Scores per segment, in the model's segment order.
    pub scores: Vec<f32>,
    /// Model version that decided.
    pub model_version: String,
    /// Wall clock of the decision (ms).
    pub decided_at_ms: i64,
    /// Event time at which to rescore if nothing happens (ms; 0: none).
    pub next_review_ms: i64,
    /// Event time at which the current segment was entered (ms).
    pub since_ms: i64,
    /// The last scoring's purchase probability.
    pub purchase_probability: f32,
    /// The last scoring's churn probability.
    pub churn_probability: f32,
    /// The last scoring's predicted spend (minor units).
    pub predicted_spend: f32,
    /// Event time the last scoring was as of (ms).
    pub as_of_ms: i64,
    /// Raised risk flags, one bit per rule (`decide::risk::Rule`).
    pub risk_flags: u8,
}

/// Everything segstream knows about one customer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomerState {
    /// First event time seen (ms).
    pub first_seen_ms: i64,
    /// Latest event time seen (ms).
    pub last_event_ms: i64,
    /// Latest purchase time (ms; 0: never).
    pub last_purchase_ms: i64,
    /// The last N events, oldest first, ordered by (time, id hash).
    recent: Vec<RecentEvent>,
    /// Token count per recent event (parallel to `recent`).
    token_counts: Vec<u8>,
    /// Token ids of the recent events, concatenated in event order.
    tokens: Vec<u16>,
    /// Daily buckets of the last `KEPT_DAYS` days of activity, oldest first.
    days: Vec<DayBucket>,
    /// Decision memory.
    pub decision: Decision,
    /// Events ignored as duplicates.
    pub duplicates: u64,
    /// Every purchase ever applied, beyond the recent window and the kept
    /// days: the sufficient statistics of BTYD models.
    pub lifetime: Lifetime,
    /// Predictions as of cut times, until their horizon passes (live
    /// outcomes, see [`monitor`]), oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The latest cut the customer was captured at (ms; 0: none).
    pub snapshot_through_ms: i64,
}

/// Lifetime purchase statistics: count x, spend, first and last purchase
/// (t_x is last − first, T is as-of − first): the sufficient statistics of
/// BTYD models, over every purchase ever applied, beyond the recent window
/// and the kept days. Order-independent (counts, sums, min and max).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Purchases (the first one included).
    pub purchases: u32,
    /// Spend over all purchases, minor units (saturating).
    pub spend_minor: u64,
    /// First purchase time (ms; 0: never).
    pub first_purchase_ms: i64,
    /// Every product purchased (every line of every order), beyond the
    /// recent window: whether a reviewer bought what they review.
    pub products: ProductSketch,
}

/// A set of product hashes as a 256-bit Bloom filter (two bits per
/// product): no false negatives; with the 20 distinct products of a
/// frequent buyer, about one unbought product in 40 reads as bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProductSketch(pub [u64; 4]);

impl ProductSketch {
    fn bits(hash: u32) -> [usize; 2] {
        // Two bit positions from two halves of a mixed hash.
        let h = hash.wrapping_mul(0x9e37_79b1);
        [(h >> 24) as usize, ((h >> 8) & 0xff) as usize]
    }

    /// Adds a product (hash 0, no product, is never added).
    pub fn insert(&mut self, hash: u32) {
        if hash == 0 {
            return;
        }
        for b in Self::bits(hash) {
            self.0[b / 64] |= 1 << (b % 64);
        }
    }

    /// Whether the product may have been added (never false for one that was).
    pub fn contains(&self, hash: u32) -> bool {
        hash != 0
            && Self::bits(hash)
                .iter()
                .all(|b| self.0[b / 64] & (1 << (b % 64)) != 0)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

impl Lifetime {
    /// Mean gap between consecutive purchases in days (None below two).
    pub fn mean_gap_days(&self, last_purchase_ms: i64) -> Option<f64> {
        (self.purchases >= 2).then(|| {
            (last_purchase_ms - self.first_purchase_ms).max(0) as f64
                / DAY_MS as f64
                / f64::from(self.purchases - 1)
        })
    }
}

/// Window aggregates as of a point in time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowAggregates {
    /// Per window of [`WINDOW_DAYS`].
    pub windows: [Window; WINDOW_DAYS.len()],
    /// Days since the last purchase (None: never purchased).
    pub days_since_purchase: Option<f64>,
    /// Days since the latest event.
    pub days_since_event: f64,
    /// Days since the first event.
    pub tenure_days: f64,
}

/// Aggregates of one window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    /// Browse events.
    pub browse: u64,
    /// Cart adds.
    pub cart_adds: u64,
    /// Purchases.
    pub purchases: u64,
    /// Reviews.
    pub reviews: u64,
    /// Spend, minor units.
    pub spend_minor: u64,
    /// Distinct category buckets (of 64) seen.
    pub distinct_categories: u32,
    /// Mean rating of reviews (None: no review).
    pub mean_rating: Option<f64>,
}

/// The day number of an event time.
pub fn day_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

fn sat_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Whether the event was applied or ignored as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed.
    Changed,
    /// Same `event_id` as an event in the recent window: ignored.
    Duplicate,
}

impl CustomerState {
    /// Applies one event. Order-independent: any arrival order of the same
    /// events gives the same state.
    pub fn record(&mut self, event: &Event, limits: StateLimits) -> Applied {
        let id_hash = fnv1a64(event.event_id.as_bytes());
        if self.recent.iter().any(|r| r.id_hash == id_hash) {
            self.duplicates += 1;
            return Applied::Duplicate;
        }
        let t = event.event_time_ms;
        let day = day_of(t);
        let mut recent = RecentEvent {
            id_hash,
            amount_minor: 0,
            time_s: sat_u32(t.div_euclid(1000)),
            category: 0,
            product: 0,
            dwell_s: 0,
            kind: kind::PAD,
            rating: 0,
        };
        let mut bucket = DayBucket {
            day: i32::try_from(day).unwrap_or(i32::MAX),
            ..DayBucket::default()
        };
        let mut tokens = Vec::new();
        match &event.payload {
            Payload::Browse(b) => {
                recent.kind = match b.action {
                    BrowseAction::View => kind::VIEW,
                    BrowseAction::CartAdd => kind::CART_ADD,
                    BrowseAction::CartRemove => kind::CART_REMOVE,
                    BrowseAction::Wishlist => kind::WISHLIST,
                    BrowseAction::Search => kind::SEARCH,
                };
                recent.category = category_hash(&b.category);
                recent.product = category_hash(&b.product_id);
                recent.amount_minor = sat_u32(b.price_minor);
                recent.dwell_s = u16::try_from(b.dwell_ms.max(0) / 1000).unwrap_or(u16::MAX);
                bucket.browse = 1;
                bucket.cart_adds = u16::from(b.action == BrowseAction::CartAdd);
                bucket.category_bits = category_bit(recent.category);
            }
            Payload::Purchase(p) => {
                recent.kind = kind::PURCHASE;
                recent.amount_minor = sat_u32(p.total_minor);
                // The category of the line with the highest value stands for the order.
                let top = p
                    .items
                    .iter()
                    .max_by_key(|i| i.quantity.saturating_mul(i.unit_price_minor));
                recent.category = top.map(|i| category_hash(&i.category)).unwrap_or(0);
                recent.product = top.map(|i| category_hash(&i.product_id)).unwrap_or(0);
                bucket.purchases = 1;
                bucket.spend_minor = recent.amount_minor;
                bucket.category_bits = p
                    .items
                    .iter()
                    .fold(0, |bits, i| bits | category_bit(category_hash(&i.category)));
                self.add_lifetime_purchase(t, recent.amount_minor);
                for i in &p.items {
                    self.lifetime.products.insert(category_hash(&i.product_id));
                }
                self.last_purchase_ms = self.last_purchase_ms.max(t);
            }
            Payload::Review(r) => {
                recent.kind = kind::REVIEW;
                recent.rating = r.rating;
                recent.category = category_hash(&r.category);
                recent.product = category_hash(&r.product_id);
                tokens = tokenize(&r.text, limits.text_tokens);
                bucket.reviews = 1;
                bucket.rating_sum = u32::from(r.rating);
                bucket.category_bits = category_bit(recent.category);
            }
        }
        self.first_seen_ms = if self.first_seen_ms == 0 {
            t
        } else {
            self.first_seen_ms.min(t)
        };
        self.last_event_ms = self.last_event_ms.max(t);
        self.insert_recent(recent, &tokens, limits.max_events);
        self.add_to_day(bucket);
        Applied::Changed
    }

    /// Adds a purchase at `t` to the lifetime statistics.
    fn add_lifetime_purchase(&mut self, t: i64, amount_minor: u32) {
        let lt = &mut self.lifetime;
        lt.first_purchase_ms = if lt.purchases == 0 {
            t
        } else {
            lt.first_purchase_ms.min(t)
        };
        lt.purchases = lt.purchases.saturating_add(1);
        lt.spend_minor = lt.spend_minor.saturating_add(u64::from(amount_minor));
    }

    fn insert_recent(&mut self, event: RecentEvent, tokens: &[u16], max_events: usize) {
        let at = self
            .recent
            .partition_point(|r| r.order_key() < event.order_key());
        let token_at: usize = self.token_counts[..at]
            .iter()
            .map(|c| usize::from(*c))
            .sum();
        self.recent.insert(at, event);
        let count = u8::try_from(tokens.len()).unwrap_or(u8::MAX);
        self.token_counts.insert(at, count);
        self.tokens.splice(
            token_at..token_at,
            tokens[..usize::from(count)].iter().copied(),
        );
        while self.recent.len() > max_events {
            self.recent.remove(0);
            let dropped = usize::from(self.token_counts.remove(0));
            self.tokens.drain(..dropped);
        }
    }

    fn add_to_day(&mut self, b: DayBucket) {
        let at = self.days.partition_point(|d| d.day < b.day);
        match self.days.get_mut(at) {
            Some(d) if d.day == b.day => {
                d.browse = d.browse.saturating_add(b.browse);
                d.cart_adds = d.cart_adds.saturating_add(b.cart_adds);
                d.purchases = d.purchases.saturating_add(b.purchases);
                d.reviews = d.reviews.saturating_add(b.reviews);
                d.spend_minor = d.spend_minor.saturating_add(b.spend_minor);
                d.rating_sum = d.rating_sum.saturating_add(b.rating_sum);
                d.category_bits |= b.category_bits;
            }
            _ => self.days.insert(at, b),
        }
        // Keep only what the longest window can still see from the latest event.
        let horizon = day_of(self.last_event_ms) - i64::from(KEPT_DAYS) + 1;
        let stale = self.days.partition_point(|d| i64::from(d.day) < horizon);
        self.days.drain(..stale);
    }

    /// The recent events, oldest first.
    pub fn recent(&self) -> &[RecentEvent] {
        &self.recent
    }

    /// Token ids of each recent event, parallel to [`CustomerState::recent`].
    pub fn recent_tokens(&self) -> impl Iterator<Item = &[u16]> {
        let mut start = 0;
        self.token_counts.iter().map(move |c| {
            let end = start + usize::from(*c);
            let s = &self.tokens[start..end];
            start = end;
            s
        })
    }

    /// The daily buckets kept, oldest first.
    pub fn days(&self) -> &[DayBucket] {
        &self.days
    }

    /// Window aggregates as of `as_of_ms`: only activity at or before it counts.
    pub fn aggregates(&self, as_of_ms: i64) -> WindowAggregates {
        let today = day_of(as_of_ms);
        let mut out = WindowAggregates::default();
        for (w, len) in out.windows.iter_mut().zip(WINDOW_DAYS) {
            let first = today - i64::from(len) + 1;
            let mut bits = 0u64;
            let mut rating_sum = 0u64;
            for d in self
                .days
                .iter()
                .filter(|d| i64::from(d.day) >= first && i64::from(d.day) <= today)
            {
                w.browse += u64::from(d.browse);
                w.cart_adds += u64::from(d.cart_adds);
                w.purchases += u64::from(d.purchases);
                w.reviews += u64::from(d.reviews);
                w.spend_minor += u64::from(d.spend_minor);
                rating_sum += u64::from(d.rating_sum);
                bits |= d.category_bits;
            }
            w.distinct_categories = bits.count_ones();
            w.mean_rating = (w.reviews > 0).then(|| rating_sum as f64 / w.reviews as f64);
        }
        let days = |ms: i64| (as_of_ms - ms).max(0) as f64 / DAY_MS as f64;
        out.days_since_purchase = (self.last_purchase_ms > 0).then(|| days(self.last_purchase_ms));
        out.days_since_event = days(self.last_event_ms);
        out.tenure_days = days(self.first_seen_ms);
        out
    }

    /// Heap and inline bytes this state occupies (the memory budget).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.recent.capacity() * size_of::<RecentEvent>()
            + self.token_counts.capacity()
            + self.tokens.capacity() * size_of::<u16>()
            + self.days.capacity() * size_of::<DayBucket>()
            + self.decision.segment.capacity()
            + self.decision.model_version.capacity()
            + self.decision.scores.capacity() * size_of::<f32>()
            + self
                .snapshots
                .iter()
                .map(|s| size_of::<Snapshot>() + s.model_version.capacity() + s.segment.capacity())
                .sum::<usize>()
    }

    /// Releases spare capacity (after restore or eviction sweeps).
    pub fn shrink(&mut self) {
        self.recent.shrink_to_fit();
        self.token_counts.shrink_to_fit();
        self.tokens.shrink_to_fit();
        self.days.shrink_to_fit();
    }
}

fn category_bit(hash: u32) -> u64 {
    if hash == 0 {
        0
    } else {
        1u64 << (hash % 64)
    }
}

#[cfg(test)]
pub(crate) mod tests;
