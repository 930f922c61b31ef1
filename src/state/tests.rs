use proptest::prelude::*;

use super::changelog::{decode, encode, CodecError, FORMAT_VERSION};
use super::*;
use crate::event::{Browse, LineItem, Purchase, Review};

pub(crate) const T0: i64 = 1_790_000_000_000;

pub(crate) fn ev(customer: &str, id: &str, time_ms: i64, payload: Payload) -> Event {
    Event {
        event_id: id.into(),
        customer_id: customer.into(),
        event_time_ms: time_ms,
        payload,
    }
}

pub(crate) fn view(category: &str, price: i64, dwell_ms: i64) -> Payload {
    Payload::Browse(Browse {
        product_id: "p".into(),
        category: category.into(),
        session_id: String::new(),
        action: BrowseAction::View,
        dwell_ms,
        price_minor: price,
    })
}

pub(crate) fn cart_add(category: &str) -> Payload {
    Payload::Browse(Browse {
        product_id: "p".into(),
        category: category.into(),
        session_id: String::new(),
        action: BrowseAction::CartAdd,
        dwell_ms: 0,
        price_minor: 100,
    })
}

pub(crate) fn buy(category: &str, total: i64) -> Payload {
    Payload::Purchase(Purchase {
        order_id: "o".into(),
        items: vec![LineItem {
            product_id: "p".into(),
            category: category.into(),
            quantity: 1,
            unit_price_minor: total,
        }],
        total_minor: total,
        currency: "EUR".into(),
    })
}

pub(crate) fn rate(category: &str, rating: u8, text: &str) -> Payload {
    Payload::Review(Review {
        product_id: "p".into(),
        category: category.into(),
        rating,
        text: text.into(),
    })
}

/// Random events of one customer spread over `span_ms` after T0.
pub(crate) fn events(
    customer: &'static str,
    span_ms: i64,
    max: usize,
) -> impl Strategy<Value = Vec<Event>> {
    let one = (
        0..span_ms,
        0u8..4,
        0usize..5,
        0i64..50_000,
        1u8..=5,
        0i64..600_000,
    );
    proptest::collection::vec(one, 1..max).prop_map(move |raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (dt, k, cat, amount, rating, dwell))| {
                let category = ["", "shoes", "socks", "hats", "bags"][cat];
                let payload = match k {
                    0 => view(category, amount, dwell),
                    1 => cart_add(category),
                    2 => buy(category, amount),
                    _ => rate(category, rating, "good fit, would buy again"),
                };
                ev(customer, &format!("e{i}"), T0 + dt, payload)
            })
            .collect()
    })
}

/// Store limits of the store tests (here and in `store`, `erasure`).
pub(crate) fn store_limits() -> StoreLimits {
    StoreLimits {
        state: StateLimits::default(),
        allowed_lateness_ms: 60_000,
        idle_timeout: std::time::Duration::from_secs(30),
        ttl_ms: 100 * 86_400_000,
        review_after_ms: 3_600_000,
        monitor: None,
    }
}

pub(crate) fn state_of(events: &[Event], limits: StateLimits) -> CustomerState {
    let mut s = CustomerState::default();
    for e in events {
        s.record(e, limits);
    }
    s
}

#[test]
fn keeps_the_last_n_events_in_time_order_with_their_tokens() {
    let limits = StateLimits {
        max_events: 3,
        text_tokens: 4,
    };
    let mut s = CustomerState::default();
    s.record(&ev("c", "a", T0 + 5_000, view("x", 1, 0)), limits);
    s.record(&ev("c", "b", T0 + 1_000, rate("x", 5, "so good")), limits);
    s.record(
        &ev("c", "c", T0 + 9_000, rate("x", 2, "too small sadly")),
        limits,
    );
    s.record(&ev("c", "d", T0 + 7_000, buy("x", 500)), limits);
    let times: Vec<i64> = s
        .recent()
        .iter()
        .map(|e| i64::from(e.time_s) * 1000)
        .collect();
    assert_eq!(times, [T0 + 5_000, T0 + 7_000, T0 + 9_000]);
    let counts: Vec<usize> = s.recent_tokens().map(<[u16]>::len).collect();
    assert_eq!(counts, [0, 0, 4], "the oldest review's tokens left with it");
    assert_eq!(
        s.recent_tokens().last().unwrap(),
        &text::tokenize("too small sadly", 4)[..]
    );
    // Aggregates still count the evicted event.
    assert_eq!(s.aggregates(T0 + 10_000).windows[0].reviews, 2);
    assert_eq!(s.last_purchase_ms, T0 + 7_000);
    assert_eq!(s.first_seen_ms, T0 + 1_000);
}

#[test]
fn duplicate_event_ids_are_ignored_and_counted() {
    let limits = StateLimits::default();
    let mut s = CustomerState::default();
    assert_eq!(
        s.record(&ev("c", "a", T0, buy("x", 100)), limits),
        Applied::Changed
    );
    let before = s.clone();
    assert_eq!(
        s.record(&ev("c", "a", T0 + 5, buy("x", 100)), limits),
        Applied::Duplicate
    );
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.aggregates(T0).windows[0].purchases, 1);
    assert_eq!(s.recent(), before.recent());
}

#[test]
fn state_never_holds_review_text() {
    let secret = "unmistakable-private-words";
    let s = state_of(
        &[ev("c", "r", T0, rate("x", 4, secret))],
        StateLimits::default(),
    );
    let bytes = encode(&s);
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(!format!("{s:?}").contains(secret));
}

#[test]
fn old_day_buckets_are_pruned() {
    let limits = StateLimits::default();
    let s = state_of(
        &[
            ev("c", "a", T0, buy("x", 100)),
            ev("c", "b", T0 + 200 * 86_400_000, view("x", 1, 0)),
        ],
        limits,
    );
    assert_eq!(s.days().len(), 1);
    assert_eq!(s.aggregates(T0 + 200 * 86_400_000).windows[3].purchases, 0);
    // ...but the last purchase is still known.
    assert_eq!(s.last_purchase_ms, T0);
}

#[test]
fn codec_refuses_unknown_versions_and_inconsistent_columns() {
    use prost::Message as _;
    let s = state_of(
        &[ev("c", "a", T0, rate("x", 4, "nice"))],
        StateLimits::default(),
    );
    let mut record = crate::event::proto::CustomerStateRecord::decode(&encode(&s)[..]).unwrap();
    record.format_version = FORMAT_VERSION + 1;
    assert_eq!(
        decode(&record.encode_to_vec()),
        Err(CodecError::Version(FORMAT_VERSION + 1))
    );
    record.format_version = FORMAT_VERSION;
    record.recent.as_mut().unwrap().kind.push(3);
    assert!(matches!(
        decode(&record.encode_to_vec()),
        Err(CodecError::Inconsistent(_))
    ));
    assert!(matches!(
        decode(&[0xff, 0xff]),
        Err(CodecError::Protobuf(_))
    ));
}

fn naive_window(events: &[Event], as_of_ms: i64, days: u32) -> Window {
    let today = day_of(as_of_ms);
    let first = today - i64::from(days) + 1;
    let mut w = Window::default();
    let mut bits = 0u64;
    let mut rating_sum = 0u64;
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if !seen.insert(e.event_id.clone()) {
            continue;
        }
        let d = day_of(e.event_time_ms);
        if d < first || d > today {
            continue;
        }
        let bit = |c: &str| {
            let h = text::category_hash(c);
            if h == 0 {
                0
            } else {
                1u64 << (h % 64)
            }
        };
        match &e.payload {
            Payload::Browse(b) => {
                w.browse += 1;
                w.cart_adds += u64::from(b.action == BrowseAction::CartAdd);
                bits |= bit(&b.category);
            }
            Payload::Purchase(p) => {
                w.purchases += 1;
                w.spend_minor += p.total_minor as u64;
                for i in &p.items {
                    bits |= bit(&i.category);
                }
            }
            Payload::Review(r) => {
                w.reviews += 1;
                rating_sum += u64::from(r.rating);
                bits |= bit(&r.category);
            }
        }
    }
    w.distinct_categories = bits.count_ones();
    w.mean_rating = (w.reviews > 0).then(|| rating_sum as f64 / w.reviews as f64);
    w
}

proptest! {
    #[test]
    fn any_arrival_order_gives_the_same_state(
        evs in events("c", 3_600_000, 120),
        seed in any::<u64>(),
    ) {
        let limits = StateLimits { max_events: 16, text_tokens: 8 };
        let ordered = state_of(&evs, limits);
        let mut shuffled = evs.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let other = state_of(&shuffled, limits);
        prop_assert_eq!(&ordered, &other);
        let f = crate::features::Featurizer::new(
            crate::features::FeatureSpec::for_state(limits), limits).unwrap();
        let as_of = T0 + 3_600_000;
        prop_assert_eq!(f.featurize(&[&ordered], as_of).unwrap(), f.featurize(&[&other], as_of).unwrap());
    }

    #[test]
    fn window_aggregates_equal_a_naive_recount(
        evs in events("c", 120 * 86_400_000, 200),
        after_ms in 0i64..40 * 86_400_000,
    ) {
        let s = state_of(&evs, StateLimits::default());
        let as_of = evs.iter().map(|e| e.event_time_ms).max().unwrap() + after_ms;
        let agg = s.aggregates(as_of);
        for (w, days) in agg.windows.iter().zip(WINDOW_DAYS) {
            let naive = naive_window(&evs, as_of, days);
            prop_assert_eq!(w, &naive, "window of {} days", days);
        }
        let last = evs.iter().map(|e| e.event_time_ms).max().unwrap();
        prop_assert!((agg.days_since_event - (as_of - last) as f64 / 86_400_000.0).abs() < 1e-9);
    }

    #[test]
    fn codec_round_trips(evs in events("c", 100 * 86_400_000, 150), review_ms in 0i64..i64::MAX / 2) {
        let mut s = state_of(&evs, StateLimits::default());
        s.decision = Decision {
            segment: "at_risk".into(),
            scores: vec![0.1, 0.7, 0.2],
            model_version: "2026-11-28T10-00-00Z".into(),
            decided_at_ms: T0,
            next_review_ms: review_ms,
            since_ms: T0 - 5,
            purchase_probability: 0.25,
            churn_probability: 0.5,
            predicted_spend: 1234.5,
            as_of_ms: T0 - 1,
            risk_flags: 0b101,
        };
        let bytes = encode(&s);
        // Byte for byte what prost writes for the same record.
        prop_assert_eq!(&bytes, &super::codec::encode_with_prost(&s));
        prop_assert_eq!(
            super::codec::peek(&bytes),
            Ok(super::codec::Peek { last_event_ms: s.last_event_ms, next_review_ms: review_ms })
        );
        prop_assert_eq!(decode(&bytes).unwrap(), s);
    }

    #[test]
    fn codec_writes_what_prost_writes_for_any_decision(
        evs in events("c", 100 * 86_400_000, 20),
        times in proptest::collection::vec(prop_oneof![Just(0i64), Just(-1i64), any::<i64>()], 4),
        floats in proptest::collection::vec(prop_oneof![Just(0f32), Just(-0f32), any::<f32>()], 3),
        scores in proptest::collection::vec(any::<f32>(), 0..6),
        segment in prop_oneof![Just(String::new()), "[a-z_]{1,12}"],
        flags in any::<u8>(),
        duplicates in any::<u64>(),
    ) {
        // Empty histories, zero and negative times, -0.0 and NaN: every
        // proto3 default rule prost applies.
        let mut s = if evs.len() % 3 == 0 { CustomerState::default() } else { state_of(&evs, StateLimits::default()) };
        s.duplicates = duplicates;
        s.first_seen_ms = times[3];
        s.decision = Decision {
            segment: segment.clone(),
            scores,
            model_version: segment,
            decided_at_ms: times[0],
            next_review_ms: times[1],
            since_ms: times[2],
            purchase_probability: floats[0],
            churn_probability: floats[1],
            predicted_spend: floats[2],
            as_of_ms: times[3],
            risk_flags: flags,
        };
        prop_assert_eq!(encode(&s), super::codec::encode_with_prost(&s));
    }

    #[test]
    fn codec_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes); // Any result; it must not panic.
    }
}

#[test]
fn lifetime_purchases_count_every_purchase_in_any_order() {
    let limits = StateLimits {
        max_events: 2,
        text_tokens: 3,
    };
    let day = 86_400_000;
    let evs: Vec<Event> = (0..5)
        .map(|i| ev("a", &format!("p{i}"), T0 + i * 200 * day, buy("x", 100 + i)))
        .chain([ev("a", "v", T0 + 3 * day, view("x", 1, 0))])
        .collect();
    let s = state_of(&evs, limits);
    assert_eq!(s.lifetime.purchases, 5);
    assert_eq!(s.lifetime.spend_minor, 510);
    assert_eq!(s.lifetime.first_purchase_ms, T0);
    assert_eq!(s.lifetime.mean_gap_days(s.last_purchase_ms), Some(200.0));
    let mut reversed = evs.clone();
    reversed.reverse();
    assert_eq!(state_of(&reversed, limits).lifetime, s.lifetime);
}

/// Records of format 1 (before the lifetime statistics) are still read; the
/// statistics are rebuilt from what the days and recent events show.
#[test]
fn format_1_records_are_read_with_lifetime_rebuilt() {
    use prost::Message as _;
    let s = state_of(
        &[
            ev("a", "1", T0, buy("x", 300)),
            ev("a", "2", T0 + 86_400_000, buy("x", 200)),
        ],
        StateLimits::default(),
    );
    let mut record = crate::event::proto::CustomerStateRecord::decode(&encode(&s)[..]).unwrap();
    record.format_version = 1;
    record.lifetime_purchases = 0;
    record.lifetime_spend_minor = 0;
    record.first_purchase_ms = 0;
    let old = decode(&record.encode_to_vec()).unwrap();
    assert_eq!(old.lifetime.purchases, 2);
    assert_eq!(old.lifetime.spend_minor, 500);
    assert_eq!(old.lifetime.first_purchase_ms, T0);
}

/// Every line of every purchase goes into the lifetime product sketch,
/// which keeps them past the recent window; it has no false negatives and
/// few false positives at a frequent buyer's size.
#[test]
fn the_product_sketch_keeps_every_purchased_line() {
    use crate::event::{LineItem, Purchase};
    let order = Payload::Purchase(Purchase {
        order_id: "o".into(),
        items: ["top", "second", "third"]
            .iter()
            .enumerate()
            .map(|(i, p)| LineItem {
                product_id: (*p).into(),
                category: "c".into(),
                quantity: 1,
                unit_price_minor: 1_000 - i as i64 * 100,
            })
            .collect(),
        total_minor: 2_700,
        currency: "EUR".into(),
    });
    let mut s = CustomerState::default();
    s.record(&ev("c", "o1", T0, order), StateLimits::default());
    for p in ["top", "second", "third"] {
        assert!(s.lifetime.products.contains(text::category_hash(p)), "{p}");
    }
    assert!(!s.lifetime.products.contains(text::category_hash("never")));
    assert!(!s.lifetime.products.contains(0));
    // A round trip through the changelog keeps it.
    assert_eq!(
        decode(&encode(&s)).unwrap().lifetime.products,
        s.lifetime.products
    );
    // 20 products in: no false negative, few false positives.
    let mut sketch = ProductSketch::default();
    for i in 0..20u32 {
        sketch.insert(text::category_hash(&format!("sku-{i}")));
    }
    assert!((0..20u32).all(|i| sketch.contains(text::category_hash(&format!("sku-{i}")))));
    let false_hits = (1_000..11_000u32)
        .filter(|i| sketch.contains(text::category_hash(&format!("sku-{i}"))))
        .count();
    assert!(
        false_hits < 500,
        "{false_hits} of 10000 unbought products read as bought"
    );
}
