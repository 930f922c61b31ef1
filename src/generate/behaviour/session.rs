//! One browsing session of a customer: views, carts, searches, and the
//! orders and reviews that follow.

use super::archetypes::Archetype;
use super::{pick_product, review_text, CATEGORIES, DAY_MS, HOUR_MS};
use crate::event::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Review};
use crate::generate::behaviour::{pick_category, Customer, Line};

pub(super) struct SessionWriter<'a> {
    pub(super) c: &'a mut Customer,
    pub(super) session_id: String,
    pub(super) now: i64,
}

impl SessionWriter<'_> {
    pub(super) fn push(&mut self, payload: Payload) {
        let c = &mut *self.c;
        c.seq += 1;
        c.pending.push(Event {
            event_id: format!("{}-{:06}", c.id, c.seq),
            customer_id: c.id.clone(),
            event_time_ms: self.now,
            payload,
        });
    }

    pub(super) fn browse(
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

    pub(super) fn advance(&mut self, ms: i64) {
        self.now += ms.max(1);
    }

    /// Advances by a random pause in [lo, hi) milliseconds.
    pub(super) fn pause(&mut self, lo: f64, hi: f64) {
        let ms = self.c.rng.range(lo, hi) as i64;
        self.advance(ms);
    }
}

/// Writes one session starting at `at` into the customer's pending events;
/// returns when it ends.
/// How many days before an archetype change its precursors show.
pub(super) const PRECURSOR_DAYS: i64 = 12;

pub(super) fn session(
    c: &mut Customer,
    at: i64,
    currency: &str,
    bargains: &[usize],
    drift: f64,
) -> i64 {
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

pub(super) fn checkout_order(w: &mut SessionWriter<'_>, currency: &str, drift: f64) {
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
