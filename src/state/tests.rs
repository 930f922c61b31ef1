use proptest::prelude::*;
use tokio::time::Instant;

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

fn state_of(events: &[Event], limits: StateLimits) -> CustomerState {
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

pub(crate) fn store_limits() -> StoreLimits {
    StoreLimits {
        state: StateLimits::default(),
        allowed_lateness_ms: 60_000,
        idle_timeout: std::time::Duration::from_secs(30),
        ttl_ms: 100 * 86_400_000,
        review_after_ms: 3_600_000,
    }
}

#[test]
fn events_behind_the_watermark_are_late() {
    let now = Instant::now();
    let mut store = PartitionStore::new(store_limits());
    assert_eq!(
        store.record(&ev("a", "1", T0, view("x", 1, 0)), now),
        RecordOutcome::Applied
    );
    // Within the allowed lateness: placed in order.
    assert_eq!(
        store.record(&ev("b", "2", T0 - 60_000, view("x", 1, 0)), now),
        RecordOutcome::Applied
    );
    assert_eq!(
        store.record(&ev("b", "3", T0 - 60_001, view("x", 1, 0)), now),
        RecordOutcome::Late {
            watermark_ms: T0 - 60_000
        }
    );
    assert_eq!(
        store.record(&ev("a", "1", T0, view("x", 1, 0)), now),
        RecordOutcome::Duplicate
    );
    assert_eq!(store.duplicates(), 1);
    let dirty: Vec<String> = store.take_dirty().into_iter().map(|(k, _)| k).collect();
    assert_eq!(dirty, ["a", "b"]);
    assert!(store.take_dirty().is_empty());
}

/// Regression (issue 13): a duplicate changed the customer's `duplicates`
/// counter without marking the customer dirty, so the increment never
/// reached the changelog unless a later event of that customer did.
#[test]
fn a_duplicate_alone_marks_the_customer_for_the_changelog() {
    let now = Instant::now();
    let mut store = PartitionStore::new(store_limits());
    store.record(&ev("a", "1", T0, view("x", 1, 0)), now);
    assert_eq!(store.take_dirty().len(), 1);
    assert_eq!(
        store.record(&ev("a", "1", T0, view("x", 1, 0)), now),
        RecordOutcome::Duplicate
    );
    let dirty = store.take_dirty();
    assert_eq!(dirty.len(), 1);
    assert_eq!(dirty[0].0, "a");
    assert_eq!(dirty[0].1.map(|s| s.duplicates), Some(1));
}

#[tokio::test(start_paused = true)]
async fn idle_partitions_advance_by_wall_clock_and_fire_inactivity_timers() {
    let limits = store_limits();
    let mut store = PartitionStore::new(limits);
    store.record(&ev("a", "1", T0, view("x", 1, 0)), Instant::now());
    store.record(
        &ev("b", "2", T0 + 1_800_000, view("x", 1, 0)),
        Instant::now(),
    );
    store.tick(Instant::now());
    assert!(store.take_due().is_empty());
    let wm0 = store.watermark_ms();
    assert_eq!(wm0, T0 + 1_800_000 - 60_000);

    // Not idle long enough yet: nothing moves.
    tokio::time::advance(std::time::Duration::from_secs(29)).await;
    store.tick(Instant::now());
    assert_eq!(store.watermark_ms(), wm0);

    // Idle: the watermark follows the wall clock (credited from the idle timeout on).
    tokio::time::advance(std::time::Duration::from_secs(31)).await;
    store.tick(Instant::now());
    assert_eq!(store.watermark_ms(), wm0 + 30_000);

    // "a" is due at T0 + 1h; the watermark reaches it after ~31 more minutes.
    tokio::time::advance(std::time::Duration::from_secs(31 * 60)).await;
    store.tick(Instant::now());
    assert_eq!(store.take_due(), ["a"]);
    assert!(store.take_due().is_empty(), "a timer fires once");
    assert_eq!(store.get("a").unwrap().decision.next_review_ms, 0);

    // A rescheduled review fires again later; new input stops the idle clock.
    store.schedule_review("a", store.watermark_ms() + 10_000);
    tokio::time::advance(std::time::Duration::from_secs(10)).await;
    store.tick(Instant::now());
    assert_eq!(store.take_due(), ["a"]);
    let t = store.watermark_ms() + 1;
    assert_eq!(
        store.record(&ev("c", "3", t, view("x", 1, 0)), Instant::now()),
        RecordOutcome::Applied
    );
    let wm = store.watermark_ms();
    tokio::time::advance(std::time::Duration::from_secs(20)).await;
    store.tick(Instant::now());
    assert_eq!(store.watermark_ms(), wm);
}

/// Issue 40: the timer and retention indexes are lazy (an event of a known
/// customer touches neither). An entry left early by later events neither
/// fires nor evicts: it is filed again at the customer's time, which then
/// fires once; an earlier review asked for fires at its own time; a
/// customer who left and came back has only their new times.
#[test]
fn lazy_time_indexes_fire_and_evict_at_the_customers_own_times() {
    const H: i64 = 3_600_000;
    const D: i64 = 86_400_000;
    let now = Instant::now();
    let mut store = PartitionStore::new(store_limits());
    let at = |store: &mut PartitionStore, id: &str, n: &str, t: i64| {
        store.record(&ev(id, n, t, view("x", 1, 0)), now)
    };
    at(&mut store, "a", "1", T0);
    at(&mut store, "a", "2", T0 + 2 * H);
    // The watermark passes a's first review time (T0 + 1h), not its next.
    at(&mut store, "z", "1", T0 + 2 * H + 30 * 60_000);
    assert!(store.take_due().is_empty(), "a is reviewed at T0 + 3h");
    assert_eq!(store.get("a").unwrap().decision.next_review_ms, T0 + 3 * H);
    at(&mut store, "z", "2", T0 + 3 * H + 60_000 + 1);
    assert_eq!(store.take_due(), ["a"]);
    assert!(store.take_due().is_empty(), "each timer fires once");
    // An earlier review than the one set fires at its own time, once.
    at(&mut store, "b", "1", T0 + 4 * H);
    store.schedule_review("b", T0 + 4 * H + 10 * 60_000);
    at(&mut store, "z", "3", T0 + 4 * H + 12 * 60_000);
    // (z's own event moved its review to T0 + 5h 12m.)
    assert_eq!(store.take_due(), ["b"]);
    store.schedule_review("b", 0);
    at(&mut store, "z", "4", T0 + 6 * H);
    assert!(
        !store.take_due().contains(&"b".to_string()),
        "a cleared timer does not fire"
    );
    // Retention: a's entry at T0 is early once a buys again at T0 + 50 days.
    at(&mut store, "a", "3", T0 + 50 * D);
    at(&mut store, "z", "5", T0 + 101 * D);
    store.take_due();
    let evicted = store.evict_expired();
    assert!(store.get("a").is_some(), "a was active 51 days ago");
    assert!(
        store.get("b").is_none() && evicted >= 1,
        "b was last seen 101 days ago"
    );
    // Erased and back: only the new times count.
    assert!(store.erase("a", T0 + 50 * D));
    at(&mut store, "a", "4", T0 + 101 * D + H);
    at(&mut store, "z", "6", T0 + 101 * D + 3 * H);
    assert!(store.take_due().contains(&"a".to_string()));
    at(&mut store, "z", "7", T0 + 190 * D);
    store.take_due();
    assert_eq!(store.evict_expired(), 0, "a was seen 89 days ago");
    assert!(store.get("a").is_some());
}

#[test]
fn inactive_customers_are_evicted_as_tombstones() {
    let now = Instant::now();
    let mut store = PartitionStore::new(store_limits());
    store.record(&ev("old", "1", T0, view("x", 1, 0)), now);
    store.record(&ev("new", "2", T0 + 99 * 86_400_000, view("x", 1, 0)), now);
    store.take_dirty();
    assert_eq!(store.evict_expired(), 0);
    store.record(&ev("new", "3", T0 + 101 * 86_400_000, view("x", 1, 0)), now);
    assert_eq!(store.evict_expired(), 1);
    assert!(store.get("old").is_none());
    let dirty = store.take_dirty();
    let tomb: Vec<_> = dirty
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(tomb, ["old"]);
    assert_eq!(store.len(), 1);
}

#[test]
fn restore_rebuilds_timers_and_watermark() {
    let now = Instant::now();
    let mut original = PartitionStore::new(store_limits());
    original.record(&ev("a", "1", T0, view("x", 1, 0)), now);
    let mut restored = PartitionStore::new(store_limits());
    for rec in changelog::drain_dirty(&mut original) {
        restored.restore(rec.key, decode(&rec.value.unwrap()).unwrap());
    }
    assert_eq!(restored.watermark_ms(), original.watermark_ms());
    assert_eq!(restored.get("a"), original.get("a"));
    restored.record(&ev("b", "2", T0 + 2 * 3_600_000, view("x", 1, 0)), now);
    assert_eq!(restored.take_due(), ["a"]);
}

#[test]
fn a_bulk_restore_equals_restoring_one_by_one() {
    let now = Instant::now();
    let mut original = PartitionStore::new(store_limits());
    let hour = 3_600_000;
    for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
        original.record(
            &ev(c, &format!("e{i}"), T0 + i as i64 * hour, view("x", 1, 0)),
            now,
        );
    }
    for c in ["a", "b", "c", "d"] {
        original.schedule_review(c, T0 + 10 * hour);
    }
    let mut records = changelog::drain_dirty(&mut original);
    // A later record of "b" replaces the first; "c" is then tombstoned.
    original.record(&ev("b", "e9", T0 + 5 * hour, buy("x", 300)), now);
    records.extend(changelog::drain_dirty(&mut original));
    records.push(changelog::ChangelogRecord {
        key: "c".into(),
        value: None,
    });
    let mut one_by_one = PartitionStore::new(store_limits());
    let mut bulk = PartitionStore::new(store_limits());
    // As the restore does it: values kept encoded until first used.
    let mut encoded = PartitionStore::new(store_limits());
    {
        let mut b = bulk.bulk_restore(records.len());
        let mut e = encoded.bulk_restore(records.len());
        for r in &records {
            match &r.value {
                Some(v) => {
                    one_by_one.restore(r.key.clone(), decode(v).unwrap());
                    b.put(r.key.clone(), decode(v).unwrap());
                    e.put_encoded(r.key.clone(), v.clone()).unwrap();
                }
                None => {
                    one_by_one.forget(&r.key);
                    b.forget(&r.key);
                    e.forget(&r.key);
                }
            }
        }
    }
    assert_eq!(bulk.len(), 3);
    assert_eq!(encoded.len(), 3);
    assert_eq!(bulk.watermark_ms(), one_by_one.watermark_ms());
    assert_eq!(encoded.watermark_ms(), one_by_one.watermark_ms());
    // A read decodes without making the customer changed.
    assert_eq!(encoded.get("a"), one_by_one.get("a"));
    assert!(!encoded.has_dirty());
    for c in ["a", "b", "c", "d"] {
        assert_eq!(bulk.get(c), one_by_one.get(c), "{c}");
    }
    // The timer and retention indexes agree too, and changes to restored
    // customers (an event, a due timer, an eviction with its exit) land
    // alike.
    for store in [&mut bulk, &mut one_by_one, &mut encoded] {
        store.record(&ev("z", "z", T0 + 11 * hour, view("x", 1, 0)), now);
        store.record(&ev("d", "d2", T0 + 11 * hour, buy("x", 10)), now);
        store.decision_mut("a").unwrap().segment = "at_risk".into();
    }
    let due = one_by_one.take_due();
    assert_eq!(due, ["a", "b"]);
    assert_eq!(bulk.take_due(), due);
    assert_eq!(encoded.take_due(), due);
    for c in ["a", "b", "d", "z"] {
        assert_eq!(encoded.get(c), one_by_one.get(c), "{c}");
    }
    let late = T0 + 101 * 86_400_000;
    for store in [&mut bulk, &mut one_by_one, &mut encoded] {
        store.record(&ev("y", "y", late, view("x", 1, 0)), now);
    }
    let evicted = one_by_one.evict_expired();
    assert_eq!(bulk.evict_expired(), evicted);
    assert_eq!(encoded.evict_expired(), evicted);
    assert_eq!(bulk.len(), one_by_one.len());
    assert_eq!(encoded.len(), one_by_one.len());
    assert_eq!(encoded.take_exits(), one_by_one.take_exits());
    assert_eq!(encoded.undecodable(), 0);
}

#[test]
fn a_bulk_restore_of_many_runs_orders_its_indexes_like_one_by_one() {
    // More records than one sorted run, in no time order (the changelog's
    // records come in id order; review times are random), some customers
    // written twice and some tombstoned: the indexes built from the runs
    // must equal those built one record at a time.
    let now = Instant::now();
    let hour = 3_600_000;
    let mut rng = crate::rng::Rng::new(7);
    let mut source = PartitionStore::new(store_limits());
    let mut records = Vec::new();
    for round in 0..2 {
        for i in 0..6_000 {
            if round == 1 && i % 3 != 0 {
                continue;
            }
            let c = format!("c{i}");
            let t = T0 + (round * 6_000 + i) * 60_000;
            source.record(&ev(&c, &format!("e{round}-{i}"), t, view("x", 1, 0)), now);
            if i % 2 == 0 {
                source.schedule_review(&c, t + (rng.unit() * 50.0) as i64 * hour);
            }
        }
        records.extend(changelog::drain_dirty(&mut source));
    }
    for i in (0..6_000).step_by(7) {
        records.push(changelog::ChangelogRecord {
            key: format!("c{i}"),
            value: None,
        });
    }
    let mut one_by_one = PartitionStore::new(store_limits());
    let mut encoded = PartitionStore::new(store_limits());
    {
        let mut e = encoded.bulk_restore(records.len());
        for r in &records {
            match &r.value {
                Some(v) => {
                    one_by_one.restore(r.key.clone(), decode(v).unwrap());
                    e.put_encoded(r.key.clone(), v.clone()).unwrap();
                }
                None => {
                    one_by_one.forget(&r.key);
                    e.forget(&r.key);
                }
            }
        }
    }
    assert_eq!(encoded.len(), one_by_one.len());
    assert_eq!(encoded.watermark_ms(), one_by_one.watermark_ms());
    // Far enough ahead that every timer is due and every customer expires.
    let late = T0 + 700 * 86_400_000;
    for store in [&mut one_by_one, &mut encoded] {
        store.record(&ev("y", "y", late, view("x", 1, 0)), now);
    }
    let due = one_by_one.take_due();
    assert!(due.len() > 1_000);
    assert_eq!(encoded.take_due(), due);
    assert_eq!(encoded.evict_expired(), one_by_one.evict_expired());
    assert_eq!(encoded.take_exits(), one_by_one.take_exits());
}

#[test]
fn a_restored_value_that_does_not_decode_starts_the_customer_over() {
    use prost::Message as _;
    let now = Instant::now();
    let good = state_of(&[ev("c", "a", T0, buy("x", 500))], StateLimits::default());
    let mut record = crate::event::proto::CustomerStateRecord::decode(&encode(&good)[..]).unwrap();
    // The outer framing and the indexed times are fine; a column is not.
    record.recent.as_mut().unwrap().kind.push(3);
    let corrupt = record.encode_to_vec();
    record.format_version = FORMAT_VERSION + 1;
    let future = record.encode_to_vec();
    let mut store = PartitionStore::new(store_limits());
    {
        let mut b = store.bulk_restore(3);
        b.put_encoded("c", corrupt.clone()).unwrap();
        b.put_encoded("d", corrupt).unwrap();
        // A layout this build does not know is refused at restore.
        assert_eq!(
            b.put_encoded("f", future),
            Err(CodecError::Version(FORMAT_VERSION + 1))
        );
    }
    assert!(store.contains("c"));
    assert_eq!(store.get("c"), None);
    assert!(store.decision_mut("c").is_none());
    assert!(!store.contains("c"));
    assert_eq!(store.undecodable(), 1);
    // The next event starts the customer over, whether the undecodable
    // value was dropped already ("c") or is met by the event ("d").
    for c in ["c", "d"] {
        store.record(&ev(c, "b", T0 + 1, buy("x", 700)), now);
        let fresh = store.get(c).unwrap();
        assert_eq!(fresh.lifetime.purchases, 1, "{c}");
        assert_eq!(fresh.first_seen_ms, T0 + 1, "{c}");
    }
    assert_eq!(store.undecodable(), 2);
    assert_eq!(store.take_dirty().len(), 2);
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

/// Issue 36: an evicted customer leaves with their raised flags, which the
/// exit carries so that a clear is published.
#[test]
fn an_eviction_carries_the_raised_flags() {
    let now = Instant::now();
    let mut store = PartitionStore::new(store_limits());
    store.record(&ev("old", "1", T0, view("x", 1, 0)), now);
    store.decision_mut("old").unwrap().risk_flags = 0b10;
    store.record(&ev("new", "2", T0 + 101 * 86_400_000, view("x", 1, 0)), now);
    assert_eq!(store.evict_expired(), 1);
    let exits = store.take_exits();
    assert_eq!(exits.len(), 1, "flags alone make an exit");
    assert_eq!(
        (
            exits[0].segment.as_str(),
            exits[0].risk_flags,
            exits[0].erased
        ),
        ("", 0b10, false)
    );
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
