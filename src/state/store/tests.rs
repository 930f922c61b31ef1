//! Tests of the partition store: the watermark and late events, the
//! changed set, inactivity timers and retention (lazy indexes), and
//! restores (one by one, in bulk, kept encoded).

use tokio::time::Instant;

use crate::state::changelog::{self, decode, encode, CodecError, FORMAT_VERSION};
use crate::state::tests::{buy, ev, state_of, store_limits, view, T0};
use crate::state::*;

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
