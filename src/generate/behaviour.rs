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
use crate::event::{Browse, BrowseAction, Event, EventKind, LineItem, Payload, Purchase, Review};

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
        }
    }
}

impl GeneratorConfig {
    /// End of the history (exclusive), ms.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }

    /// Every problem with the settings, at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The history of the world from `start_ms` for `days`, in non-decreasing
/// event-time order, generated lazily.
pub fn history(cfg: &GeneratorConfig) -> Generator {
    Generator::new(cfg)
}

/// How a customer behaves at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Archetype {
    /// Frequent visits, high conversion, premium products.
    LoyalBigSpender,
    /// Steady visits and purchases at ordinary prices.
    RegularBuyer,
    /// Searches a lot, cheap products and bargain categories, removes from cart.
    BargainHunter,
    /// Long browsing sessions and wishlists, almost never buys.
    WindowShopper,
    /// Just arrived: exploring; becomes something else within weeks (or bounces).
    NewCustomer,
    /// Losing interest: decaying visits, short sessions, negative reviews, bargains.
    FadingCustomer,
    /// Gone (rare visits; may be won back).
    Churned,
}

impl Archetype {
    /// Every archetype.
    pub const ALL: [Archetype; 7] = [
        Archetype::LoyalBigSpender,
        Archetype::RegularBuyer,
        Archetype::BargainHunter,
        Archetype::WindowShopper,
        Archetype::NewCustomer,
        Archetype::FadingCustomer,
        Archetype::Churned,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Archetype::LoyalBigSpender => "loyal_big_spender",
            Archetype::RegularBuyer => "regular_buyer",
            Archetype::BargainHunter => "bargain_hunter",
            Archetype::WindowShopper => "window_shopper",
            Archetype::NewCustomer => "new_customer",
            Archetype::FadingCustomer => "fading_customer",
            Archetype::Churned => "churned",
        }
    }

    fn params(self) -> &'static Params {
        match self {
            Archetype::LoyalBigSpender => &LOYAL,
            Archetype::RegularBuyer => &REGULAR,
            Archetype::BargainHunter => &BARGAIN,
            Archetype::WindowShopper => &WINDOW,
            Archetype::NewCustomer => &NEW,
            Archetype::FadingCustomer => &FADING,
            Archetype::Churned => &CHURNED,
        }
    }

    /// Where a customer goes after this archetype, with weights.
    fn successors(self) -> &'static [(Archetype, f64)] {
        use Archetype::*;
        match self {
            LoyalBigSpender => &[(RegularBuyer, 0.5), (FadingCustomer, 0.5)],
            RegularBuyer => &[
                (LoyalBigSpender, 0.25),
                (FadingCustomer, 0.5),
                (BargainHunter, 0.15),
                (WindowShopper, 0.1),
            ],
            BargainHunter => &[
                (RegularBuyer, 0.3),
                (FadingCustomer, 0.5),
                (WindowShopper, 0.2),
            ],
            WindowShopper => &[(RegularBuyer, 0.2), (BargainHunter, 0.1), (Churned, 0.7)],
            NewCustomer => &[
                (RegularBuyer, 0.3),
                (LoyalBigSpender, 0.1),
                (BargainHunter, 0.1),
                (WindowShopper, 0.15),
                (Churned, 0.4),
            ],
            FadingCustomer => &[(Churned, 0.8), (RegularBuyer, 0.2)],
            Churned => &[(RegularBuyer, 0.5), (BargainHunter, 0.5)],
        }
    }
}

/// Behaviour parameters of an archetype.
struct Params {
    /// Mean sessions per week (before seasonality).
    sessions_per_week: f64,
    /// Mean product views per session.
    views: f64,
    /// Chance that a view ends in a cart add.
    cart_add: f64,
    /// Chance that a view ends in a wishlist add.
    wishlist: f64,
    /// Chance, per cart line at the end of a session, of removing it.
    cart_remove: f64,
    /// Chance that a session starts with a search.
    search: f64,
    /// Chance of checking out a non-empty cart at the end of a session.
    checkout: f64,
    /// Price level: multiplier on the category median of products looked at.
    price_level: f64,
    /// Chance of looking at a bargain category instead of a favourite one.
    bargain: f64,
    /// Chance of reviewing an order.
    review: f64,
    /// Chance that a review is happy (4–5 stars) rather than lukewarm.
    happy: f64,
    /// Chance, per order, of a bad experience (a negative review, then fading).
    bad_experience: f64,
    /// Median time on a product page, seconds.
    dwell_s: f64,
    /// Mean units per order line.
    quantity: f64,
    /// Mean days before drifting to another archetype.
    mean_days: f64,
    /// Days over which visits decay (0: no decay).
    decay_days: f64,
}

const LOYAL: Params = Params {
    sessions_per_week: 2.5,
    views: 5.0,
    cart_add: 0.25,
    wishlist: 0.05,
    cart_remove: 0.05,
    search: 0.3,
    checkout: 0.75,
    price_level: 1.6,
    bargain: 0.03,
    review: 0.35,
    happy: 0.9,
    bad_experience: 0.02,
    dwell_s: 45.0,
    quantity: 1.3,
    mean_days: 150.0,
    decay_days: 0.0,
};

const REGULAR: Params = Params {
    sessions_per_week: 1.6,
    views: 4.0,
    cart_add: 0.12,
    wishlist: 0.06,
    cart_remove: 0.1,
    search: 0.35,
    checkout: 0.55,
    price_level: 0.8,
    bargain: 0.1,
    review: 0.3,
    happy: 0.8,
    bad_experience: 0.05,
    dwell_s: 35.0,
    quantity: 1.2,
    mean_days: 110.0,
    decay_days: 0.0,
};

const BARGAIN: Params = Params {
    sessions_per_week: 2.2,
    views: 6.0,
    cart_add: 0.15,
    wishlist: 0.08,
    cart_remove: 0.3,
    search: 0.7,
    checkout: 0.45,
    price_level: 0.45,
    bargain: 0.6,
    review: 0.3,
    happy: 0.6,
    bad_experience: 0.06,
    dwell_s: 25.0,
    quantity: 1.8,
    mean_days: 100.0,
    decay_days: 0.0,
};

const WINDOW: Params = Params {
    sessions_per_week: 1.4,
    views: 7.0,
    cart_add: 0.03,
    wishlist: 0.12,
    cart_remove: 0.5,
    search: 0.4,
    checkout: 0.05,
    price_level: 1.2,
    bargain: 0.1,
    review: 0.1,
    happy: 0.7,
    bad_experience: 0.05,
    dwell_s: 50.0,
    quantity: 1.0,
    mean_days: 45.0,
    decay_days: 0.0,
};

const NEW: Params = Params {
    sessions_per_week: 2.0,
    views: 4.0,
    cart_add: 0.08,
    wishlist: 0.08,
    cart_remove: 0.2,
    search: 0.6,
    checkout: 0.45,
    price_level: 0.9,
    bargain: 0.15,
    review: 0.25,
    happy: 0.75,
    bad_experience: 0.05,
    dwell_s: 30.0,
    quantity: 1.1,
    mean_days: 21.0,
    decay_days: 0.0,
};

const FADING: Params = Params {
    sessions_per_week: 1.0,
    views: 2.0,
    cart_add: 0.06,
    wishlist: 0.01,
    cart_remove: 0.45,
    search: 0.3,
    checkout: 0.3,
    price_level: 0.55,
    bargain: 0.55,
    review: 0.5,
    happy: 0.25,
    bad_experience: 0.3,
    dwell_s: 12.0,
    quantity: 1.0,
    mean_days: 21.0,
    decay_days: 7.0,
};

const CHURNED: Params = Params {
    sessions_per_week: 0.015,
    views: 1.5,
    cart_add: 0.02,
    wishlist: 0.0,
    cart_remove: 0.5,
    search: 0.2,
    checkout: 0.2,
    price_level: 0.7,
    bargain: 0.3,
    review: 0.2,
    happy: 0.4,
    bad_experience: 0.1,
    dwell_s: 10.0,
    quantity: 1.0,
    mean_days: 150.0,
    decay_days: 0.0,
};

/// The initial mix of customers already there at the start.
const INITIAL_MIX: [(Archetype, f64); 7] = [
    (Archetype::LoyalBigSpender, 0.12),
    (Archetype::RegularBuyer, 0.25),
    (Archetype::BargainHunter, 0.16),
    (Archetype::WindowShopper, 0.19),
    (Archetype::NewCustomer, 0.08),
    (Archetype::FadingCustomer, 0.1),
    (Archetype::Churned, 0.1),
];

/// Share of new customers who leave again within days without buying.
const BOUNCERS: f64 = 0.35;

/// A product in a cart or wishlist.
#[derive(Debug, Clone)]
struct Line {
    product: Product,
    price: i64,
}

/// One customer: its lifecycle, its favourite categories, its cart and its
/// scheduled events.
#[derive(Debug)]
struct Customer {
    id: String,
    rng: Rng,
    archetype: Archetype,
    since_ms: i64,
    until_ms: i64,
    forced_next: Option<Archetype>,
    /// Favourite categories with weights.
    affinity: [(u8, f32); 4],
    /// Personal price multiplier on top of the archetype's.
    price_taste: f32,
    /// A new customer who looks around for a few days and leaves without
    /// buying anything.
    bouncer: bool,
    cart: Vec<Line>,
    cart_since_ms: i64,
    wishlist: Vec<Line>,
    /// Scheduled events, latest first (pop from the back).
    pending: Vec<Event>,
    next_session_ms: i64,
    seq: u64,
    sessions: u64,
    orders: u64,
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
/// the archetype's rate, thinned by weekly and daily seasonality and, for
/// fading customers, by decay; an open cart brings the customer back sooner.
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

struct SessionWriter<'a> {
    c: &'a mut Customer,
    session_id: String,
    now: i64,
}

impl SessionWriter<'_> {
    fn push(&mut self, payload: Payload) {
        let c = &mut *self.c;
        c.seq += 1;
        c.pending.push(Event {
            event_id: format!("{}-{:06}", c.id, c.seq),
            customer_id: c.id.clone(),
            event_time_ms: self.now,
            payload,
        });
    }

    fn browse(
        &mut self,
        action: BrowseAction,
        product: Option<&Line>,
        category: usize,
        dwell: i64,
    ) {
        let (product_id, price) = match product {
            Some(l) => (l.product.id(), l.price),
            None => (String::new(), 0),
        };
        let session_id = self.session_id.clone();
        self.push(Payload::Browse(Browse {
            product_id,
            category: CATEGORIES[category].name.to_string(),
            session_id,
            action,
            dwell_ms: dwell,
            price_minor: price,
        }));
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms.max(1);
    }

    /// Advances by a random pause in [lo, hi) milliseconds.
    fn pause(&mut self, lo: f64, hi: f64) {
        let ms = self.c.rng.range(lo, hi) as i64;
        self.advance(ms);
    }
}

/// Writes one session starting at `at` into the customer's pending events;
/// returns when it ends.
/// How many days before an archetype change its precursors show.
const PRECURSOR_DAYS: i64 = 12;

fn session(c: &mut Customer, at: i64, currency: &str, bargains: &[usize], drift: f64) -> i64 {
    c.sessions += 1;
    // Changes announce themselves: within PRECURSOR_DAYS of the next
    // archetype change (drawn now, so the session can show it), a customer
    // about to lapse compares prices elsewhere (searches) and empties the
    // cart, and one about to start buying more collects expensive items on
    // the wishlist. These are patterns of actions and their order, which
    // the window aggregates do not count (they count browsing, cart adds,
    // purchases, reviews) but an encoder over the event sequence can see.
    let soon = c.until_ms.saturating_sub(at) < PRECURSOR_DAYS * DAY_MS;
    if soon && c.forced_next.is_none() && drift > 0.0 {
        let succ = c.archetype.successors();
        let weights: Vec<f64> = succ.iter().map(|(_, w)| *w).collect();
        c.forced_next = Some(succ[c.rng.weighted(&weights)].0);
    }
    let lapsing = soon
        && matches!(
            c.forced_next,
            Some(Archetype::Churned | Archetype::FadingCustomer)
        );
    let upgrading =
        soon && matches!(
            c.forced_next,
            Some(Archetype::LoyalBigSpender | Archetype::RegularBuyer)
        ) && !matches!(
            c.archetype,
            Archetype::LoyalBigSpender | Archetype::RegularBuyer
        );
    let p = c.archetype.params();
    let session_id = format!("{}-s{}", c.id, c.sessions);
    if !c.cart.is_empty() && at - c.cart_since_ms > 12 * DAY_MS {
        // Abandoned long ago: the cart has expired.
        c.cart.clear();
    }
    let price_level = p.price_level * f64::from(c.price_taste);
    let mut w = SessionWriter {
        c,
        session_id,
        now: at,
    };
    let dwell = |w: &mut SessionWriter<'_>| {
        let s = w.c.rng.log_normal(p.dwell_s, 0.6).clamp(2.0, 900.0);
        (s * 1000.0) as i64
    };
    let mut category = pick_category(w.c, bargains);
    if lapsing {
        for _ in 0..2 {
            let d = w.c.rng.range(2_000.0, 8_000.0) as i64;
            w.browse(BrowseAction::Search, None, category, d);
            w.advance(d);
        }
        while let Some(line) = w.c.cart.pop() {
            w.browse(
                BrowseAction::CartRemove,
                Some(&line),
                line.product.category,
                0,
            );
            w.pause(1_000.0, 4_000.0);
        }
    }
    if upgrading {
        for _ in 0..2 {
            let product = pick_product(&mut w.c.rng, category, price_level * 3.0);
            let line = Line {
                price: product.price_minor(),
                product,
            };
            let d = dwell(&mut w);
            w.browse(BrowseAction::View, Some(&line), category, d);
            w.advance(d);
            w.browse(BrowseAction::Wishlist, Some(&line), category, 0);
            w.pause(1_000.0, 5_000.0);
            if w.c.wishlist.len() < 8 {
                w.c.wishlist.push(line);
            }
        }
    }
    if w.c.rng.chance(p.search) {
        let d = w.c.rng.range(3_000.0, 20_000.0) as i64;
        w.browse(BrowseAction::Search, None, category, d);
        w.advance(d);
    }
    // A returning customer with a cart or a wishlist looks at it again.
    let returning = !w.c.cart.is_empty();
    if !returning && !w.c.wishlist.is_empty() && w.c.rng.chance(0.35) {
        let i = w.c.rng.below(w.c.wishlist.len());
        let line = w.c.wishlist.swap_remove(i);
        let d = dwell(&mut w);
        w.browse(BrowseAction::View, Some(&line), line.product.category, d);
        w.advance(d);
        if !w.c.bouncer && w.c.rng.chance(0.6) {
            w.browse(BrowseAction::CartAdd, Some(&line), line.product.category, 0);
            w.advance(2_000);
            w.c.cart_since_ms = w.now;
            w.c.cart.push(line);
        }
    }
    let views = w.c.rng.count(p.views);
    for _ in 0..views {
        if w.c.rng.chance(0.25) {
            category = pick_category(w.c, bargains);
        }
        let product = pick_product(&mut w.c.rng, category, price_level);
        let line = Line {
            price: product.price_minor(),
            product,
        };
        let d = dwell(&mut w);
        w.browse(BrowseAction::View, Some(&line), category, d);
        w.advance(d);
        w.pause(1_000.0, 8_000.0);
        let u = w.c.rng.unit();
        if u < p.cart_add && !w.c.bouncer {
            w.browse(BrowseAction::CartAdd, Some(&line), category, 0);
            w.pause(1_000.0, 5_000.0);
            if w.c.cart.is_empty() {
                w.c.cart_since_ms = w.now;
            }
            w.c.cart.push(line);
        } else if u < p.cart_add + p.wishlist {
            w.browse(BrowseAction::Wishlist, Some(&line), category, 0);
            w.pause(1_000.0, 5_000.0);
            if w.c.wishlist.len() < 8 {
                w.c.wishlist.push(line);
            }
        }
    }
    if w.c.cart.is_empty() {
        return w.now;
    }
    // Second thoughts.
    let mut i = 0;
    while i < w.c.cart.len() {
        if w.c.rng.chance(p.cart_remove * 0.5) {
            let line = w.c.cart.remove(i);
            w.browse(
                BrowseAction::CartRemove,
                Some(&line),
                line.product.category,
                0,
            );
            w.pause(1_000.0, 4_000.0);
        } else {
            i += 1;
        }
    }
    // Checkout: more likely when the customer came back for the cart.
    let checkout = if returning {
        (p.checkout + 0.25).min(0.95)
    } else {
        p.checkout
    };
    if !w.c.cart.is_empty() && w.c.rng.chance(checkout) {
        w.pause(20_000.0, 120_000.0);
        checkout_order(&mut w, currency, drift);
    }
    w.now
}

fn checkout_order(w: &mut SessionWriter<'_>, currency: &str, drift: f64) {
    let p = w.c.archetype.params();
    let lines = std::mem::take(&mut w.c.cart);
    let mut items: Vec<LineItem> = Vec::with_capacity(lines.len());
    for l in &lines {
        let quantity = w.c.rng.count(p.quantity) as i64;
        items.push(LineItem {
            product_id: l.product.id(),
            category: l.product.category_name().to_string(),
            quantity,
            unit_price_minor: l.price,
        });
    }
    let total_minor = items.iter().map(|i| i.quantity * i.unit_price_minor).sum();
    w.c.orders += 1;
    let order_id = format!("o-{}-{}", w.c.id, w.c.orders);
    w.push(Payload::Purchase(Purchase {
        order_id,
        items,
        total_minor,
        currency: currency.to_string(),
    }));
    let purchase_ms = w.now;
    let c = &mut *w.c;
    let bad = c.rng.chance(p.bad_experience);
    if !(bad || c.rng.chance(p.review)) {
        return;
    }
    let Some(line) = lines.get(c.rng.below(lines.len())) else {
        return;
    };
    let rating: u8 = if bad {
        1 + c.rng.below(2) as u8
    } else if c.rng.chance(p.happy) {
        4 + c.rng.below(2) as u8
    } else {
        2 + c.rng.below(2) as u8
    };
    let text = review_text(&mut c.rng, rating);
    let review_ms = purchase_ms
        + (c.rng.range(2.0, 9.0) * DAY_MS as f64) as i64
        + c.rng.below(12) as i64 * HOUR_MS;
    c.seq += 1;
    c.pending.push(Event {
        event_id: format!("{}-{:06}", c.id, c.seq),
        customer_id: c.id.clone(),
        event_time_ms: review_ms,
        payload: Payload::Review(Review {
            product_id: line.product.id(),
            category: line.product.category_name().to_string(),
            rating,
            text,
        }),
    });
    // A bad experience usually sends an engaged customer into fading soon
    // after the angry review.
    let engaged = !matches!(c.archetype, Archetype::FadingCustomer | Archetype::Churned);
    if bad && engaged && drift > 0.0 && c.rng.chance(0.7) {
        let at = review_ms + (c.rng.range(0.5, 4.0) * DAY_MS as f64) as i64;
        if at < c.until_ms {
            c.until_ms = at;
            c.forced_next = Some(Archetype::FadingCustomer);
        }
    }
}
