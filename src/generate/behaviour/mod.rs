//! Customers, their archetypes and lifecycle, and the event-time-ordered
//! merge of everyone's behaviour into one stream.
//!
//! Each customer owns a random stream seeded from the world seed and its
//! index, so a customer's events do not depend on anyone else's; a heap of
//! per-customer next-event times merges them in event-time order (ties by
//! customer index). Memory is one small record per customer plus the
//! events of its current session and scheduled reviews.
//!
//! The behaviour is built so that the next 30 days are learnable from the
//! past, also from signals that window counts blur:
//! - purchases come out of funnels: views → cart adds (or wishlists) →
//!   checkout, often in a later session a few days after the cart add, so a
//!   recent cart add or wishlist foreshadows a purchase;
//! - a bad experience (a damaged or late order) is followed by a negative
//!   review and, soon after, by the *fading* archetype: shorter sessions,
//!   fewer cart adds, drift to bargain categories, decaying visits, and then
//!   churn;
//! - archetypes drift (new → regular/loyal/bounce, regular → loyal or
//!   fading, fading → churned, churned → won back), so segments change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use super::world::{
    bargain_categories, pick_product, review_text, seasonality, Product, Rng, CATEGORIES, DAY_MS,
    HOUR_MS, SEASONALITY_MAX,
};
use crate::event::{Event, EventKind, Payload};

mod archetypes;
pub use archetypes::Archetype;
use archetypes::{BOUNCERS, INITIAL_MIX};

mod session;
use session::session;

/// Settings of the synthetic world. The same settings give the same events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Customers in the world (ids `c000000`, `c000001`, …).
    pub customers: usize,
    /// Start of the history, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Days of history ([`history`] stops at `start_ms + days`).
    pub days: u32,
    /// ISO 4217 currency of every order.
    pub currency: String,
    /// Share of customers who arrive during the history as new customers
    /// (the others are already there at the start, in a mix of archetypes).
    pub arriving_share: f64,
    /// Multiplier on how often customers change archetype (0: never).
    pub drift: f64,
    /// Emit only the purchases (the same world, seen as an orders table):
    /// the sparse, purchase-only history most shops can export.
    pub purchases_only: bool,
    /// Share of every customer's sessions lost per year since the start
    /// (0: a steady base rate; 0.5: half as many sessions a year in): a
    /// world whose purchase rate drifts down, where calibration fitted on
    /// the past overshoots the future.
    pub decline: f64,
}

/// 2025-01-01T00:00:00Z.
pub fn default_start_ms() -> i64 {
    1_735_689_600_000
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            customers: 1000,
            start_ms: default_start_ms(),
            days: 90,
            currency: "EUR".into(),
            arriving_share: 0.35,
            drift: 1.0,
            purchases_only: false,
            decline: 0.0,
        }
    }
}

impl GeneratorConfig {
    /// End of the history (exclusive), ms.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }

    /// Every problem with the settings, at once.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        if self.customers == 0 {
            problems.push("customers must be at least 1".to_string());
        }
        if self.customers > 10_000_000 {
            problems.push("customers must be at most 10000000".to_string());
        }
        if self.start_ms <= 0 {
            problems.push("start_ms must be after 1970".to_string());
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "currency {:?} is not an ISO 4217 code",
                self.currency
            ));
        }
        if !(0.0..=1.0).contains(&self.arriving_share) {
            problems.push("arriving_share must be within [0, 1]".to_string());
        }
        if !(self.drift >= 0.0 && self.drift.is_finite()) {
            problems.push("drift must be >= 0".to_string());
        }
        if !(0.0..1.0).contains(&self.decline) {
            problems.push("decline must be within [0, 1)".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError(problems))
        }
    }
}

/// Every problem of a generator's settings (bad input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct SettingsError(pub Vec<String>);

impl crate::error::Classify for SettingsError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::BadInput
    }
}

/// The history of the world from `start_ms` for `days`, in non-decreasing
/// event-time order, generated lazily.
pub fn history(cfg: &GeneratorConfig) -> Generator {
    Generator::new(cfg)
}

/// A product in a cart or wishlist.
#[derive(Debug, Clone)]
struct Line {
    pub(super) product: Product,
    pub(super) price: i64,
}

/// One customer: its lifecycle, its favourite categories, its cart and its
/// scheduled events.
#[derive(Debug)]
struct Customer {
    pub(super) id: String,
    pub(super) rng: Rng,
    pub(super) archetype: Archetype,
    pub(super) since_ms: i64,
    pub(super) until_ms: i64,
    pub(super) forced_next: Option<Archetype>,
    /// Favourite categories with weights.
    pub(super) affinity: [(u8, f32); 4],
    /// Personal price multiplier on top of the archetype's.
    pub(super) price_taste: f32,
    /// A new customer who looks around for a few days and leaves without
    /// buying anything.
    pub(super) bouncer: bool,
    pub(super) cart: Vec<Line>,
    pub(super) cart_since_ms: i64,
    pub(super) wishlist: Vec<Line>,
    /// Scheduled events, latest first (pop from the back).
    pub(super) pending: Vec<Event>,
    pub(super) next_session_ms: i64,
    pub(super) seq: u64,
    pub(super) sessions: u64,
    pub(super) orders: u64,
    /// The world's start and the share of sessions kept per year since
    /// (`GeneratorConfig::decline`).
    pub(super) decline: (i64, f64),
}

impl Customer {
    fn wake_ms(&self) -> i64 {
        self.next_session_ms.min(self.until_ms)
    }

    fn next_ms(&self) -> i64 {
        let pending = self.pending.last().map_or(i64::MAX, |e| e.event_time_ms);
        pending.min(self.wake_ms())
    }
}

/// What was generated so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeneratorSummary {
    /// Events by kind.
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Browse events by action.
    pub browse_by_action: BTreeMap<&'static str, u64>,
    /// Customers who produced at least one event.
    pub active_customers: usize,
    /// Customers in the world.
    pub customers: usize,
    /// Archetype changes.
    pub transitions: u64,
    /// Customers per archetype now.
    pub archetype_mix: BTreeMap<&'static str, usize>,
}

/// The world's generator: an iterator of events in non-decreasing event
/// time. See [`history`] and [`super::live::Live`].
#[derive(Debug)]
pub struct Generator {
    currency: String,
    drift: f64,
    end_ms: Option<i64>,
    bargains: Vec<usize>,
    customers: Vec<Customer>,
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    active: Vec<bool>,
    summary: GeneratorSummary,
    last_ms: i64,
    purchases_only: bool,
}

impl Generator {
    /// The world of `cfg`, ending at `cfg.end_ms()`.
    pub fn new(cfg: &GeneratorConfig) -> Self {
        Self::build(cfg, Some(cfg.end_ms()))
    }

    /// The same world without an end: for live streams that continue a
    /// history (see [`super::live::Live`]).
    pub fn unbounded(cfg: &GeneratorConfig) -> Self {
        Self::build(cfg, None)
    }

    fn build(cfg: &GeneratorConfig, end_ms: Option<i64>) -> Self {
        let customers: Vec<Customer> = (0..cfg.customers).map(|i| new_customer(cfg, i)).collect();
        let heap = customers
            .iter()
            .enumerate()
            .map(|(i, c)| Reverse((c.next_ms(), i as u32)))
            .collect();
        let mut summary = GeneratorSummary {
            customers: cfg.customers,
            ..GeneratorSummary::default()
        };
        for k in EventKind::ALL {
            summary.events_by_kind.insert(k.as_str(), 0);
        }
        Generator {
            currency: cfg.currency.clone(),
            drift: cfg.drift,
            end_ms,
            bargains: bargain_categories(),
            active: vec![false; customers.len()],
            customers,
            heap,
            summary,
            last_ms: cfg.start_ms,
            purchases_only: cfg.purchases_only,
        }
    }

    /// The next event, or `None` at the end of the history.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let Reverse((t, i)) = self.heap.pop()?;
            if t == i64::MAX || self.end_ms.is_some_and(|end| t >= end) {
                // Every later customer is past the end too.
                self.heap.clear();
                return None;
            }
            let index = i as usize;
            let emitted = self
                .step(index)
                .filter(|e| !self.purchases_only || matches!(e.payload, Payload::Purchase(_)));
            let next = self.customers[index].next_ms();
            self.heap.push(Reverse((next, i)));
            if let Some(event) = emitted {
                self.last_ms = event.event_time_ms;
                self.count(index, &event);
                return Some(event);
            }
        }
    }

    /// Runs the world up to `t_ms` without returning its events (they are
    /// counted in the summary): a live stream starts where a history ended.
    pub fn skip_until(&mut self, t_ms: i64) {
        while let Some(Reverse((t, i))) = self.heap.peek().copied() {
            if t >= t_ms || self.end_ms.is_some_and(|end| t >= end) {
                return;
            }
            self.heap.pop();
            let index = i as usize;
            let emitted = self.step(index);
            let next = self.customers[index].next_ms();
            self.heap.push(Reverse((next, i)));
            if let Some(event) = emitted {
                self.last_ms = event.event_time_ms;
                self.count(index, &event);
            }
        }
    }

    /// Event time of the last event returned.
    pub fn last_event_ms(&self) -> i64 {
        self.last_ms
    }

    /// The current archetype of customer `index`.
    pub fn archetype(&self, index: usize) -> Option<Archetype> {
        self.customers.get(index).map(|c| c.archetype)
    }

    /// Counts so far and the current archetype mix.
    pub fn summary(&self) -> GeneratorSummary {
        let mut s = self.summary.clone();
        s.active_customers = self.active.iter().filter(|a| **a).count();
        for a in Archetype::ALL {
            s.archetype_mix.insert(a.as_str(), 0);
        }
        for c in &self.customers {
            *s.archetype_mix.entry(c.archetype.as_str()).or_default() += 1;
        }
        s
    }

    fn count(&mut self, index: usize, event: &Event) {
        self.active[index] = true;
        *self
            .summary
            .events_by_kind
            .entry(event.kind().as_str())
            .or_default() += 1;
        if let Payload::Browse(b) = &event.payload {
            *self
                .summary
                .browse_by_action
                .entry(b.action.as_str())
                .or_default() += 1;
        }
    }

    /// Advances customer `index` by one step: emits a scheduled event, or
    /// changes its archetype, or plans its next session.
    fn step(&mut self, index: usize) -> Option<Event> {
        let drift = self.drift;
        let c = &mut self.customers[index];
        let pending = c.pending.last().map_or(i64::MAX, |e| e.event_time_ms);
        if pending <= c.wake_ms() {
            return c.pending.pop();
        }
        if c.until_ms <= c.next_session_ms {
            let at = c.until_ms;
            transition(c, at, drift);
            self.summary.transitions += 1;
            c.next_session_ms = next_session(c, at);
            return None;
        }
        let at = c.next_session_ms;
        let end = session(c, at, &self.currency, &self.bargains, drift);
        c.next_session_ms = next_session(c, end + 30 * 60_000);
        c.pending.sort_by_key(|e| Reverse(e.event_time_ms));
        None
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event()
    }
}

/// Customer ids are `c` and six or more digits.
pub fn customer_id(index: usize) -> String {
    format!("c{index:06}")
}

fn new_customer(cfg: &GeneratorConfig, index: usize) -> Customer {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(0x1000_0000_01b3) ^ (index as u64 + 1));
    let span = (cfg.end_ms() - cfg.start_ms).max(DAY_MS);
    let (archetype, arrive_ms) = if rng.chance(cfg.arriving_share) {
        (
            Archetype::NewCustomer,
            cfg.start_ms + (rng.unit() * span as f64) as i64,
        )
    } else {
        let weights: Vec<f64> = INITIAL_MIX.iter().map(|(_, w)| *w).collect();
        (INITIAL_MIX[rng.weighted(&weights)].0, cfg.start_ms)
    };
    let mut affinity = [(0u8, 0f32); 4];
    let weights = [0.45f32, 0.27, 0.17, 0.11];
    let mut used = Vec::with_capacity(4);
    for (slot, w) in affinity.iter_mut().zip(weights) {
        let mut cat = rng.below(CATEGORIES.len());
        while used.contains(&cat) {
            cat = rng.below(CATEGORIES.len());
        }
        used.push(cat);
        *slot = (cat as u8, w);
    }
    let price_taste = rng.log_normal(1.0, 0.3) as f32;
    let mut c = Customer {
        id: customer_id(index),
        rng,
        archetype,
        since_ms: arrive_ms,
        until_ms: i64::MAX,
        forced_next: None,
        affinity,
        price_taste,
        bouncer: false,
        cart: Vec::new(),
        cart_since_ms: 0,
        wishlist: Vec::new(),
        pending: Vec::new(),
        next_session_ms: i64::MAX,
        seq: 0,
        sessions: 0,
        orders: 0,
        decline: (cfg.start_ms, 1.0 - cfg.decline),
    };
    // Customers already there are somewhere in their current stage.
    let stay = stay_ms(&mut c, cfg.drift);
    c.until_ms = if arrive_ms == cfg.start_ms {
        arrive_ms.saturating_add((c.rng.unit() * stay as f64) as i64)
    } else {
        arrive_ms.saturating_add(stay)
    };
    if archetype == Archetype::NewCustomer && cfg.drift > 0.0 && c.rng.chance(BOUNCERS) {
        c.bouncer = true;
        c.forced_next = Some(Archetype::Churned);
        let days = c.rng.range(1.0, 12.0);
        c.until_ms = arrive_ms.saturating_add((days * DAY_MS as f64) as i64);
    }
    if arrive_ms == cfg.start_ms && archetype == Archetype::FadingCustomer {
        // Fading is already under way: pretend it began up to two weeks ago.
        c.since_ms = arrive_ms - (c.rng.unit() * 14.0 * DAY_MS as f64) as i64;
    }
    c.next_session_ms = next_session(&mut c, arrive_ms);
    c
}

fn stay_ms(c: &mut Customer, drift: f64) -> i64 {
    if drift <= 0.0 {
        return i64::MAX / 4;
    }
    let days = c.rng.exponential(c.archetype.params().mean_days / drift);
    (days * DAY_MS as f64).min(1e15) as i64
}

fn transition(c: &mut Customer, at: i64, drift: f64) {
    let next = match c.forced_next.take() {
        Some(a) => a,
        None => {
            let succ = c.archetype.successors();
            let weights: Vec<f64> = succ.iter().map(|(_, w)| *w).collect();
            succ[c.rng.weighted(&weights)].0
        }
    };
    c.archetype = next;
    c.bouncer = false;
    c.since_ms = at;
    c.until_ms = at.saturating_add(stay_ms(c, drift));
    if next == Archetype::Churned {
        c.cart.clear();
        c.wishlist.clear();
    }
}

/// The start of the next session at or after `from`: a Poisson process at
/// the archetype's rate, thinned by weekly and daily seasonality, the
/// world's decline and, for fading customers, by decay; an open cart brings
/// the customer back sooner.
fn next_session(c: &mut Customer, from: i64) -> i64 {
    let p = c.archetype.params();
    let mut rate_per_day = p.sessions_per_week / 7.0;
    if !c.cart.is_empty() {
        rate_per_day = rate_per_day.max(0.1) * 2.5;
    }
    let max_rate = rate_per_day * SEASONALITY_MAX;
    let mean_gap_ms = DAY_MS as f64 / max_rate.max(1e-6);
    let mut t = from;
    for _ in 0..2000 {
        t = t.saturating_add(c.rng.exponential(mean_gap_ms) as i64 + 1);
        if t >= c.until_ms {
            return t;
        }
        let mut accept = seasonality(t) / SEASONALITY_MAX;
        if p.decay_days > 0.0 {
            let age_days = (t - c.since_ms) as f64 / DAY_MS as f64;
            accept *= (-age_days / p.decay_days).exp();
        }
        let (origin, kept_per_year) = c.decline;
        if kept_per_year < 1.0 {
            let years = (t - origin).max(0) as f64 / (365.0 * DAY_MS as f64);
            accept *= kept_per_year.powf(years);
        }
        if c.rng.chance(accept) {
            return t;
        }
    }
    t
}

fn pick_category(c: &mut Customer, bargains: &[usize]) -> usize {
    let p = c.archetype.params();
    if c.rng.chance(p.bargain) && !bargains.is_empty() {
        return bargains[c.rng.below(bargains.len())];
    }
    if c.rng.chance(0.06) {
        return c.rng.below(CATEGORIES.len());
    }
    let weights: Vec<f64> = c.affinity.iter().map(|(_, w)| f64::from(*w)).collect();
    usize::from(c.affinity[c.rng.weighted(&weights)].0)
}
