use std::collections::{BTreeMap, HashSet};

use super::world::{sentiment, DAY_MS};
use super::*;
use crate::event::{BrowseAction, Event, EventKind, Payload};

fn cfg(customers: usize, days: u32, seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed,
        customers,
        days,
        ..GeneratorConfig::default()
    }
}

#[test]
fn same_seed_same_events_other_seed_other_events() {
    let a: Vec<Event> = history(&cfg(200, 30, 7)).collect();
    let b: Vec<Event> = history(&cfg(200, 30, 7)).collect();
    let c: Vec<Event> = history(&cfg(200, 30, 8)).collect();
    assert!(a.len() > 1000, "only {} events", a.len());
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn events_are_in_time_order_within_the_window_with_unique_ids() {
    let c = cfg(300, 60, 1);
    let events: Vec<Event> = history(&c).collect();
    let mut ids = HashSet::new();
    for w in events.windows(2) {
        assert!(w[0].event_time_ms <= w[1].event_time_ms);
    }
    for e in &events {
        assert!(e.event_time_ms >= c.start_ms && e.event_time_ms < c.end_ms());
        assert!(ids.insert(e.event_id.clone()), "duplicate {}", e.event_id);
        assert!(e.customer_id.starts_with('c') && e.customer_id.len() == 7);
        if let Payload::Purchase(p) = &e.payload {
            let total: i64 = p
                .items
                .iter()
                .map(|i| i.quantity * i.unit_price_minor)
                .sum();
            assert_eq!(total, p.total_minor);
            assert_eq!(p.currency, "EUR");
        }
    }
}

#[test]
fn generated_events_pass_the_contract_validation() {
    use crate::event::encode::{encode, to_proto, WireFormat};
    use crate::event::{Decoder, Encoding, Limits};
    let decoder = Decoder::new(
        Encoding::Auto,
        Limits {
            max_past_ms: i64::MAX / 4,
            ..Limits::default()
        },
    );
    let now = GeneratorConfig::default().end_ms();
    for e in history(&cfg(50, 30, 3)) {
        for format in [WireFormat::Protobuf, WireFormat::Json] {
            let bytes = encode(&to_proto(&e), format);
            let (back, _) = decoder
                .decode(Some(e.customer_id.as_bytes()), Some(&bytes), now)
                .unwrap();
            assert_eq!(back, e);
        }
    }
}

#[test]
fn every_kind_and_action_occurs() {
    let mut g = history(&cfg(300, 60, 2));
    let kinds: HashSet<EventKind> = g.by_ref().map(|e| e.kind()).collect();
    assert_eq!(kinds.len(), 3);
    let s = g.summary();
    for a in [
        BrowseAction::View,
        BrowseAction::CartAdd,
        BrowseAction::CartRemove,
        BrowseAction::Wishlist,
        BrowseAction::Search,
    ] {
        assert!(
            s.browse_by_action.get(a.as_str()).copied().unwrap_or(0) > 10,
            "{} is rare: {:?}",
            a.as_str(),
            s.browse_by_action
        );
    }
}

#[test]
fn review_ratings_follow_the_sentiment_of_their_text() {
    let reviews: Vec<(f64, f64)> = history(&cfg(1000, 90, 4))
        .filter_map(|e| match e.payload {
            Payload::Review(r) => Some((f64::from(r.rating), f64::from(sentiment(&r.text)))),
            _ => None,
        })
        .collect();
    assert!(reviews.len() > 500, "{} reviews", reviews.len());
    let n = reviews.len() as f64;
    let (mx, my) = (
        reviews.iter().map(|r| r.0).sum::<f64>() / n,
        reviews.iter().map(|r| r.1).sum::<f64>() / n,
    );
    let cov: f64 = reviews.iter().map(|r| (r.0 - mx) * (r.1 - my)).sum();
    let vx: f64 = reviews.iter().map(|r| (r.0 - mx).powi(2)).sum();
    let vy: f64 = reviews.iter().map(|r| (r.1 - my).powi(2)).sum();
    let corr = cov / (vx * vy).sqrt();
    assert!(corr > 0.75, "rating/sentiment correlation {corr}");
    let low: Vec<f64> = reviews.iter().filter(|r| r.0 <= 2.0).map(|r| r.1).collect();
    let high: Vec<f64> = reviews.iter().filter(|r| r.0 >= 4.0).map(|r| r.1).collect();
    assert!(!low.is_empty() && !high.is_empty());
    assert!(low.iter().all(|s| *s < 0.0));
    assert!(high.iter().all(|s| *s > 0.0));
}

#[test]
fn customers_drift_between_archetypes() {
    let c = cfg(1000, 120, 5);
    let start: Vec<Archetype> = {
        let g = Generator::new(&c);
        (0..c.customers).filter_map(|i| g.archetype(i)).collect()
    };
    let mut g = history(&c);
    g.by_ref().for_each(drop);
    let changed = (0..c.customers)
        .filter(|&i| g.archetype(i) != Some(start[i]))
        .count();
    let s = g.summary();
    assert!(s.transitions as usize >= changed);
    assert!(changed > c.customers / 5, "only {changed} changed");
    let churned = s.archetype_mix["churned"];
    let churned_at_start = start.iter().filter(|a| **a == Archetype::Churned).count();
    assert!(
        churned > churned_at_start,
        "{churned} vs {churned_at_start}"
    );
    // No drift, no change.
    let still = GeneratorConfig { drift: 0.0, ..c };
    let mut g = history(&still);
    g.by_ref().for_each(drop);
    assert_eq!(g.summary().transitions, 0);
}

/// A declining world (issue 38: calibration into a drifting future): the
/// same customers buy markedly less in the last quarter of the year than
/// in the first, against a steady world of the same seed.
#[test]
fn a_declining_world_buys_less_as_time_goes_on() {
    let quarters = |c: &GeneratorConfig| {
        let (mut first, mut last) = (0usize, 0usize);
        for e in history(c) {
            if !matches!(e.payload, Payload::Purchase(_)) {
                continue;
            }
            let day = (e.event_time_ms - c.start_ms) / DAY_MS;
            first += usize::from(day < 90);
            last += usize::from(day >= 270);
        }
        last as f64 / first.max(1) as f64
    };
    let steady = cfg(1500, 360, 9);
    let declining = GeneratorConfig {
        decline: 0.5,
        ..steady.clone()
    };
    let (a, b) = (quarters(&steady), quarters(&declining));
    assert!(
        b < 0.8 * a,
        "last/first quarter purchases: steady {a:.3}, declining {b:.3}"
    );
    let bad = GeneratorConfig {
        decline: 1.0,
        ..steady
    };
    assert!(bad.validate().unwrap_err().to_string().contains("decline"));
}

/// What the trainer's labels need, per customer.
#[derive(Default)]
struct Timeline {
    /// (time, is_purchase, total)
    events: Vec<(i64, bool, i64)>,
    negative_reviews: Vec<i64>,
    cart_adds: Vec<i64>,
}

const LABELS: [&str; 5] = [
    "high_value",
    "active_buyer",
    "browser",
    "at_risk",
    "dormant",
];

/// The DESIGN.md outcome of a customer after `cut` over 30 days.
fn label(t: &Timeline, cut: i64) -> Option<&'static str> {
    let h = 30 * DAY_MS;
    let active_before = t
        .events
        .iter()
        .any(|e| e.0 <= cut && e.0 > cut - 90 * DAY_MS);
    if !active_before {
        return None;
    }
    let after: Vec<_> = t
        .events
        .iter()
        .filter(|e| e.0 > cut && e.0 <= cut + h)
        .collect();
    let spend: i64 = after.iter().filter(|e| e.1).map(|e| e.2).sum();
    let bought = after.iter().any(|e| e.1);
    let bought_before = t.events.iter().any(|e| e.0 <= cut && e.1);
    Some(if spend >= 20_000 {
        "high_value"
    } else if bought {
        "active_buyer"
    } else if !after.is_empty() {
        "browser"
    } else if bought_before {
        "at_risk"
    } else {
        "dormant"
    })
}

fn timelines(c: &GeneratorConfig) -> BTreeMap<String, Timeline> {
    let mut out: BTreeMap<String, Timeline> = BTreeMap::new();
    for e in history(c) {
        let t = out.entry(e.customer_id.clone()).or_default();
        match &e.payload {
            Payload::Purchase(p) => t.events.push((e.event_time_ms, true, p.total_minor)),
            Payload::Review(r) => {
                if r.rating <= 2 {
                    t.negative_reviews.push(e.event_time_ms);
                }
                t.events.push((e.event_time_ms, false, 0));
            }
            Payload::Browse(b) => {
                if b.action == BrowseAction::CartAdd {
                    t.cart_adds.push(e.event_time_ms);
                }
                t.events.push((e.event_time_ms, false, 0));
            }
        }
    }
    out
}

#[test]
fn all_five_labels_are_frequent_and_the_future_follows_the_recent_past() {
    let c = cfg(3000, 180, 11);
    let people = timelines(&c);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0usize;
    // (signal present, outcome) tallies for two sequence-level signals.
    let mut neg = [[0usize; 2]; 2];
    let mut cart = [[0usize; 2]; 2];
    for day in [60, 90, 120, 150] {
        let cut = c.start_ms + day * DAY_MS;
        for t in people.values() {
            let Some(l) = label(t, cut) else { continue };
            *counts.entry(l).or_default() += 1;
            total += 1;
            let churn = matches!(l, "at_risk" | "dormant");
            let buys = matches!(l, "high_value" | "active_buyer");
            let recent_neg = t
                .negative_reviews
                .iter()
                .any(|x| *x <= cut && *x > cut - 14 * DAY_MS);
            let recent_cart = t
                .cart_adds
                .iter()
                .any(|x| *x <= cut && *x > cut - 3 * DAY_MS);
            let recently_active = t
                .events
                .iter()
                .any(|e| e.0 <= cut && e.0 > cut - 14 * DAY_MS);
            if recently_active {
                neg[usize::from(recent_neg)][usize::from(churn)] += 1;
            }
            cart[usize::from(recent_cart)][usize::from(buys)] += 1;
        }
    }
    let share = |l: &str| counts.get(l).copied().unwrap_or(0) as f64 / total as f64;
    let shares: Vec<String> = LABELS
        .iter()
        .map(|l| format!("{l} {:.3}", share(l)))
        .collect();
    eprintln!("label shares over {total} examples: {}", shares.join(", "));
    let rate = |t: [usize; 2]| t[1] as f64 / (t[0] + t[1]).max(1) as f64;
    eprintln!(
        "churn of the recently active after a negative review {:.3} vs {:.3}; purchase after a recent cart add {:.3} vs {:.3}",
        rate(neg[1]),
        rate(neg[0]),
        rate(cart[1]),
        rate(cart[0])
    );
    for l in LABELS {
        assert!(
            (0.08..=0.35).contains(&share(l)),
            "{l} share {:.3} outside [0.08, 0.35]: {shares:?}",
            share(l)
        );
    }
    assert!(rate(neg[1]) > 1.5 * rate(neg[0]));
    assert!(rate(cart[1]) > 1.5 * rate(cart[0]));
}

#[test]
fn live_continues_the_world_with_wall_clock_times() {
    let c = cfg(200, 20, 9);
    let history_ids: HashSet<String> = history(&c).map(|e| e.event_id).collect();
    let mut live = Live::after_history(&c);
    let now = 1_800_000_000_000;
    let events: Vec<Event> = (0..2000)
        .filter_map(|i| live.next_event(now + i / 10))
        .collect();
    assert_eq!(events.len(), 2000);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.event_time_ms, now + i as i64 / 10);
        assert!(!history_ids.contains(&e.event_id), "{} repeats", e.event_id);
    }
    assert!(live.summary().events_by_kind.values().sum::<u64>() > history_ids.len() as u64);
}

#[test]
fn pacer_holds_a_rate_and_unpaced_never_waits() {
    let mut p = Pacer::new(None);
    assert!(p.sent_one().is_zero());
    let mut p = Pacer::new(Some(10.0));
    let waits: Vec<_> = (0..3).map(|_| p.sent_one()).collect();
    assert!(waits[2] > waits[0]);
    assert!(waits[2].as_secs_f64() <= 0.3 + 1e-9);
}

/// The precursor of a lapse (two searches seconds apart, the cart emptied)
/// shows in the days before customers go quiet far more often than before
/// ordinary activity: a signal only the event sequence carries.
#[test]
fn lapses_are_announced_by_a_pattern_of_actions() {
    let c = cfg(2000, 150, 5);
    let mut by_customer: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in history(&c) {
        by_customer
            .entry(e.customer_id.clone())
            .or_default()
            .push(e);
    }
    let is_search =
        |e: &Event| matches!(&e.payload, Payload::Browse(b) if b.action == BrowseAction::Search);
    let (mut lapse, mut lapse_hits, mut active, mut active_hits) = (0u32, 0u32, 0u32, 0u32);
    for events in by_customer.values() {
        // Times of "two searches within 10 s" patterns.
        let pattern: Vec<i64> = events
            .windows(2)
            .filter(|w| is_search(&w[0]) && is_search(&w[1]))
            .filter(|w| w[1].event_time_ms - w[0].event_time_ms <= 10_000)
            .map(|w| w[1].event_time_ms)
            .collect();
        let seen_before = |t: i64| pattern.iter().any(|&p| p <= t && p > t - 12 * DAY_MS);
        for w in events.windows(2) {
            let (t, next) = (w[0].event_time_ms, w[1].event_time_ms);
            if t < c.start_ms + 20 * DAY_MS {
                continue;
            }
            if next - t >= 30 * DAY_MS {
                lapse += 1;
                lapse_hits += u32::from(seen_before(t));
            } else if next - t <= DAY_MS && w[1].event_id.ends_with('0') {
                // A sample of ordinary moments.
                active += 1;
                active_hits += u32::from(seen_before(t));
            }
        }
    }
    assert!(
        lapse >= 100 && active >= 1000,
        "{lapse} lapses, {active} ordinary"
    );
    let (p_lapse, p_active) = (
        f64::from(lapse_hits) / f64::from(lapse),
        f64::from(active_hits) / f64::from(active),
    );
    assert!(
        p_lapse > 2.0 * p_active && p_lapse > 0.2,
        "precursor before {p_lapse:.3} of lapses and {p_active:.3} of ordinary moments"
    );
}

/// What the pipeline's risk rules raise, per customer, on a world's
/// history followed by `seconds` of its live stream pulled at `rate`
/// events/s (paced like people, or stamped with the wall clock as pulled),
/// with `overlay` merged in: each event applied to its customer's state and
/// the rules evaluated as of it, as the run loop does. Also returns how
/// many live events were sent.
fn live_flags(
    c: &GeneratorConfig,
    people: bool,
    seconds: i64,
    rate: i64,
    overlay: Vec<Event>,
) -> (BTreeMap<String, Vec<&'static str>>, usize) {
    use crate::decide::risk;
    use crate::state::{CustomerState, StateLimits};
    let cfg = crate::config::RiskConfig::default();
    let mut states: std::collections::HashMap<String, (CustomerState, u8)> =
        std::collections::HashMap::new();
    let mut flagged: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut apply = |e: &Event| {
        let (s, flags) = states.entry(e.customer_id.clone()).or_default();
        s.record(e, StateLimits::default());
        let findings = risk::evaluate(&cfg, s.recent(), &s.lifetime.products, e.event_time_ms);
        let (next, raised) = risk::apply_only(&cfg, *flags, findings, true, false);
        *flags = next;
        for t in raised {
            flagged
                .entry(e.customer_id.clone())
                .or_default()
                .push(t.finding.rule.as_str());
        }
    };
    for e in history(c) {
        apply(&e);
    }
    let mut live = Live::with_overlay(c, overlay);
    let start = c.end_ms();
    let (mut pulled, mut sent) = (0, 0);
    for step in 0..seconds * 100 {
        let now = start + step * 10;
        let want = (step * 10 * rate / 1000) as usize;
        while pulled < want {
            pulled += 1;
            if people {
                live.pull(now);
            } else if let Some(e) = live.next_event(now) {
                apply(&e);
                sent += 1;
            }
        }
        while let Some(e) = live.pop_due(now) {
            apply(&e);
            sent += 1;
        }
    }
    (flagged, sent)
}

/// Issue 36: a live stream stamped with the wall clock as the world is
/// pulled makes ordinary customers look like bots (the demo flagged a third
/// of them); paced like people, none of them is flagged, while injected
/// bots are, by the pattern they were written with.
#[test]
fn live_customers_paced_like_people_raise_no_flags_and_bots_do() {
    let c = cfg(300, 60, 7);
    let bots = abuse::abuse(&abuse::AbuseConfig {
        seed: 3,
        start_ms: c.end_ms(),
        days: 2,
        bots: 2,
        rings: 0,
        ring_size: 0,
        rushes: 0,
        bursts: 0,
        ordinary_visits: false,
    });
    let (wall, wall_sent) = live_flags(&c, false, 120, 150, Vec::new());
    let ordinary_wall = wall.keys().filter(|k| k.starts_with('c')).count();
    assert!(
        ordinary_wall > 10,
        "stamped as pulled, ordinary customers look like bots: {ordinary_wall} flagged of 300 ({wall_sent} events)"
    );
    let (people, sent) = live_flags(&c, true, 120, 150, bots.events.clone());
    let ordinary: Vec<_> = people.iter().filter(|(k, _)| k.starts_with('c')).collect();
    assert!(
        ordinary.is_empty(),
        "ordinary customers flagged: {ordinary:?}"
    );
    for (bot, rules) in &bots.truth {
        let rules: Vec<&str> = rules.iter().map(|r| r.as_str()).collect();
        assert_eq!(people.get(bot), Some(&rules), "{bot}");
    }
    // People act at their own pace: fewer events than pulled, but the
    // stream goes on.
    assert!(sent > 300 && sent < 150 * 120, "{sent} events sent");
    eprintln!("paced like people: {sent} events in 120 s; as pulled: {wall_sent}, {ordinary_wall} ordinary customers flagged");
}
