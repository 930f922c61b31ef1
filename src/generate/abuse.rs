//! Fraud and manipulation patterns, with ground truth: an overlay of extra
//! actors on a generated world, for measuring the risk rules
//! (`decide::risk`) by precision and recall.
//!
//! - bots (`bot…`): sessions of many product views a second or two apart
//!   (every third bot jitters its gaps between 1 and 5 seconds, slower and
//!   less regular: harder to tell from a fast person);
//! - brushing rings (`ring<r>-<k>`): several accounts ordering the same
//!   cheap product again and again over days, each order followed within
//!   minutes by a 5-star review of it;
//! - order rushes (`rush…`): many small orders of different products within
//!   an hour;
//! - review bursts (`burst…`): many extreme (1 or 5 star) reviews of
//!   products they never bought, across categories, within half an hour.
//!
//! Every actor also browses a little like a person does, so the rules see
//! more than the pattern.

use std::collections::{BTreeMap, BTreeSet};

use super::world::Rng;
use crate::decide::risk::Rule;
use crate::event::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Review};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// How many actors of each pattern, over which time.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// Seed.
    pub seed: u64,
    /// Start of the overlay, ms.
    pub start_ms: i64,
    /// Length, days (at least 2).
    pub days: u32,
    /// Bots.
    pub bots: usize,
    /// Brushing rings ...
    pub rings: usize,
    /// ... of this many accounts each.
    pub ring_size: usize,
    /// Order rushes.
    pub rushes: usize,
    /// Review bursts.
    pub bursts: usize,
    /// Whether each actor also has a few ordinary visits (as real abusers
    /// do); without them an actor's first visit is its pattern (a short
    /// live demonstration).
    pub ordinary_visits: bool,
}

/// The overlay: its events (sorted by time) and, per actor, the rules it
/// should raise.
#[derive(Debug, Clone, Default)]
pub struct Abuse {
    /// Events, in event-time order.
    pub events: Vec<Event>,
    /// Ground truth: actor → the rules its pattern is meant to raise.
    pub truth: BTreeMap<String, BTreeSet<Rule>>,
}

struct Actor<'a> {
    id: String,
    events: &'a mut Vec<Event>,
    n: usize,
}

impl Actor<'_> {
    fn push(&mut self, t: i64, payload: Payload) {
        self.n += 1;
        self.events.push(Event {
            event_id: format!("{}-a{}", self.id, self.n),
            customer_id: self.id.clone(),
            event_time_ms: t,
            payload,
        });
    }

    fn view(&mut self, t: i64, product: &str, category: &str, dwell_ms: i64) {
        self.push(
            t,
            Payload::Browse(Browse {
                product_id: product.into(),
                category: category.into(),
                session_id: format!("{}-s{}", self.id, t / HOUR),
                action: BrowseAction::View,
                dwell_ms,
                price_minor: 2_500,
            }),
        );
    }

    fn order(&mut self, t: i64, product: &str, category: &str, price: i64) {
        self.push(
            t,
            Payload::Purchase(Purchase {
                order_id: format!("{}-o{}", self.id, self.n),
                items: vec![LineItem {
                    product_id: product.into(),
                    category: category.into(),
                    quantity: 1,
                    unit_price_minor: price,
                }],
                total_minor: price,
                currency: "EUR".into(),
            }),
        );
    }

    fn review(&mut self, t: i64, product: &str, category: &str, rating: u8) {
        self.push(
            t,
            Payload::Review(Review {
                product_id: product.into(),
                category: category.into(),
                rating,
                text: if rating >= 4 {
                    "great product fast delivery".into()
                } else {
                    "terrible do not buy".into()
                },
            }),
        );
    }

    /// A few ordinary visits: some views with human gaps.
    fn browse_like_a_person(&mut self, rng: &mut Rng, start: i64, days: i64, visits: bool) {
        if !visits {
            return;
        }
        for _ in 0..2 + rng.below(3) {
            let mut t = start + (rng.unit() * (days * DAY) as f64) as i64;
            for _ in 0..3 + rng.below(6) {
                t += (rng.exponential(45.0) * 1000.0) as i64 + 3_000;
                let p = rng.below(400);
                self.view(
                    t,
                    &format!("sku-{p}"),
                    CATEGORIES[p % CATEGORIES.len()],
                    20_000,
                );
            }
        }
    }
}

const CATEGORIES: [&str; 6] = ["home", "books", "toys", "garden", "beauty", "sports"];

/// The overlay of `cfg`.
pub fn abuse(cfg: &AbuseConfig) -> Abuse {
    let mut rng = Rng::new(cfg.seed ^ 0xab05e);
    let mut out = Abuse::default();
    let days = i64::from(cfg.days.max(2));
    let span = (days - 1) * DAY;
    let mut truth = |id: &str, rules: &[Rule]| {
        out.truth
            .insert(id.to_string(), rules.iter().copied().collect());
    };
    let mut events = Vec::new();
    for b in 0..cfg.bots {
        let mut a = Actor {
            id: format!("bot{b:04}"),
            events: &mut events,
            n: 0,
        };
        a.browse_like_a_person(&mut rng, cfg.start_ms, days - 1, cfg.ordinary_visits);
        for _ in 0..1 + rng.below(3) {
            let mut t = cfg.start_ms + (rng.unit() * span as f64) as i64;
            let step = 1_000 + 1_000 * rng.below(2) as i64;
            let jitter = b % 3 == 2;
            for _ in 0..40 + rng.below(80) {
                t += if jitter {
                    1_000 + (rng.unit() * 4_000.0) as i64
                } else {
                    step
                };
                let p = rng.below(5000);
                a.view(t, &format!("sku-{p}"), CATEGORIES[p % 6], 500);
            }
        }
        truth(&a.id, &[Rule::BotBrowsing]);
    }
    for r in 0..cfg.rings {
        let product = format!("brush-sku-{r}");
        let price = 99 + 50 * rng.below(5) as i64;
        let start = cfg.start_ms + (rng.unit() * (span / 2) as f64) as i64;
        for k in 0..cfg.ring_size.max(1) {
            let mut a = Actor {
                id: format!("ring{r:03}-{k}"),
                events: &mut events,
                n: 0,
            };
            a.browse_like_a_person(&mut rng, cfg.start_ms, days - 1, cfg.ordinary_visits);
            let mut t = start + (rng.unit() * 6.0 * HOUR as f64) as i64;
            for _ in 0..3 + rng.below(3) {
                a.view(t - 2 * MINUTE, &product, "gadgets", 8_000);
                a.order(t, &product, "gadgets", price);
                a.review(
                    t + MINUTE + (rng.unit() * 8.0 * MINUTE as f64) as i64,
                    &product,
                    "gadgets",
                    5,
                );
                t += DAY / 2 + (rng.unit() * DAY as f64) as i64;
            }
            truth(&a.id, &[Rule::Brushing]);
        }
    }
    for n in 0..cfg.rushes {
        let mut a = Actor {
            id: format!("rush{n:04}"),
            events: &mut events,
            n: 0,
        };
        a.browse_like_a_person(&mut rng, cfg.start_ms, days - 1, cfg.ordinary_visits);
        let mut t = cfg.start_ms + (rng.unit() * span as f64) as i64;
        for _ in 0..6 + rng.below(5) {
            let p = rng.below(3000);
            a.order(
                t,
                &format!("gift-{p}"),
                CATEGORIES[p % 6],
                300 + 100 * rng.below(10) as i64,
            );
            t += 2 * MINUTE + (rng.unit() * 6.0 * MINUTE as f64) as i64;
        }
        truth(&a.id, &[Rule::OrderVelocity]);
    }
    for n in 0..cfg.bursts {
        let mut a = Actor {
            id: format!("burst{n:04}"),
            events: &mut events,
            n: 0,
        };
        a.browse_like_a_person(&mut rng, cfg.start_ms, days - 1, cfg.ordinary_visits);
        let mut t = cfg.start_ms + (rng.unit() * span as f64) as i64;
        for i in 0..7 + rng.below(6) {
            let p = rng.below(9000);
            let rating = if rng.chance(0.5) { 5 } else { 1 };
            a.review(t, &format!("sku-{p}"), CATEGORIES[i % 6], rating);
            t += MINUTE + (rng.unit() * 3.0 * MINUTE as f64) as i64;
        }
        truth(&a.id, &[Rule::ReviewBurst, Rule::UnverifiedReviews]);
    }
    events.sort_by_key(|e| e.event_time_ms);
    out.events = events;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_has_events_and_truth_and_the_overlay_is_seeded() {
        let cfg = AbuseConfig {
            seed: 3,
            start_ms: 1_735_689_600_000,
            days: 10,
            bots: 2,
            rings: 1,
            ring_size: 3,
            rushes: 2,
            bursts: 2,
            ordinary_visits: true,
        };
        let a = abuse(&cfg);
        assert_eq!(a.truth.len(), 2 + 3 + 2 + 2);
        for id in a.truth.keys() {
            assert!(a.events.iter().any(|e| &e.customer_id == id), "{id}");
        }
        assert!(a
            .events
            .windows(2)
            .all(|w| w[0].event_time_ms <= w[1].event_time_ms));
        let b = abuse(&cfg);
        assert_eq!(a.events.len(), b.events.len());
        assert_eq!(a.events[5], b.events[5]);
    }
}
