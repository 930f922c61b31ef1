//! Tests of live-outcome snapshots in the partition store: what is captured
//! at each cut is the trainer's replay state as of the cut, for the
//! trainer's population; what a resolution finds is the trainer's labels;
//! a restore in the middle neither loses nor repeats a snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use crate::event::{Event, Payload};
use crate::generate::behaviour::{history, GeneratorConfig};
use crate::state::changelog::{decode, encode};
use crate::state::tests::{state_of, store_limits};
use crate::state::{
    Capture, Decision, MonitorRules, PartitionStore, Predicted, Resolved, StoreLimits,
};
use crate::train::examples::{LabelRules, Outcome};
use crate::units::DAY_MS;

fn rules() -> MonitorRules {
    MonitorRules {
        every_ms: 7 * DAY_MS,
        horizon_ms: 14 * DAY_MS,
        lookback_ms: 30 * DAY_MS,
    }
}

fn limits() -> StoreLimits {
    StoreLimits {
        monitor: Some(rules()),
        ..store_limits()
    }
}

fn events(seed: u64) -> Vec<Event> {
    let gen = GeneratorConfig {
        customers: 80,
        days: 75,
        seed,
        ..GeneratorConfig::default()
    };
    let mut events: Vec<Event> = history(&gen).collect();
    events.sort_by_key(|e| e.event_time_ms);
    events
}

fn predicted() -> Predicted {
    Predicted {
        model_version: "m1".into(),
        segment: "browser".into(),
        purchase_probability: 0.25,
        churn_probability: 0.5,
        predicted_spend: 10.0,
        role: String::new(),
        // A trained champion's: one bin per customer feature, packed.
        feature_bins: vec![0x95; crate::features::CUSTOMER_DIM.div_ceil(2)],
    }
}

/// Applies `events` to `store`, scoring (with a fixed prediction) and
/// collecting every capture and resolution as the pipeline's cycle would.
fn run(
    store: &mut PartitionStore,
    events: &[Event],
    captured: &mut Vec<Capture>,
    resolved: &mut Vec<Resolved>,
) {
    let now = Instant::now();
    for (i, e) in events.iter().enumerate() {
        store.record(e, now);
        if i % 97 == 0 || i + 1 == events.len() {
            for c in store.take_captures() {
                assert!(store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted()));
                captured.push(c);
            }
            resolved.extend(store.take_resolved());
        }
    }
}

#[test]
fn captures_are_the_replay_state_as_of_the_cut_and_resolutions_the_trainers_labels() {
    let events = events(5);
    let mut store = PartitionStore::new(limits());
    let (mut captured, mut resolved) = (Vec::new(), Vec::new());
    run(&mut store, &events, &mut captured, &mut resolved);

    let m = rules();
    let lateness = store_limits().allowed_lateness_ms;
    let last = events.last().map_or(0, |e| e.event_time_ms);
    let first = events.first().map_or(0, |e| e.event_time_ms);
    let watermark = last - lateness;
    let mut by_customer: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in &events {
        by_customer
            .entry(&e.customer_id)
            .or_default()
            .push(e.clone());
    }
    // Expected captures: every calendar cut the watermark passed, every
    // customer whose latest event at or before it is in the lookback.
    let mut expected = BTreeSet::new();
    let mut t = m.cut_after(first - lateness - 1);
    while t < watermark {
        for (c, evs) in &by_customer {
            let seen = evs
                .iter()
                .filter(|e| e.event_time_ms <= t)
                .map(|e| e.event_time_ms)
                .max();
            if seen.is_some_and(|s| s > t - m.lookback_ms) {
                expected.insert((c.to_string(), t));
            }
        }
        t += m.every_ms;
    }
    let got: BTreeSet<(String, i64)> = captured
        .iter()
        .map(|c| (c.customer_id.clone(), c.cut_ms))
        .collect();
    assert_eq!(got.len(), captured.len(), "each customer once per cut");
    assert!(expected.len() > 100, "{} snapshots", expected.len());
    assert_eq!(got, expected);
    let limits = store_limits().state;
    for c in &captured {
        let before: Vec<Event> = by_customer[c.customer_id.as_str()]
            .iter()
            .filter(|e| e.event_time_ms <= c.cut_ms)
            .cloned()
            .collect();
        let mut want = state_of(&before, limits);
        let mut have = (*c.state).clone();
        // Snapshot bookkeeping aside, the state the trainer featurizes.
        for s in [&mut want, &mut have] {
            s.snapshots.clear();
            s.snapshot_through_ms = 0;
            s.decision = Decision::default();
        }
        assert_eq!(have, want, "{} at {}", c.customer_id, c.cut_ms);
    }

    // Resolutions: every snapshot whose horizon the watermark passed, with
    // the trainer's labels.
    let label_rules = LabelRules {
        horizon_ms: m.horizon_ms,
        high_value_spend_minor: crate::config::TrainConfig::default().high_value_spend_minor,
    };
    let due: BTreeSet<(String, i64)> = expected
        .iter()
        .filter(|(_, t)| t + m.horizon_ms < watermark)
        .cloned()
        .collect();
    let got: BTreeSet<(String, i64)> = resolved
        .iter()
        .map(|r| (r.customer_id.clone(), r.snapshot.cut_ms))
        .collect();
    assert_eq!(got.len(), resolved.len(), "each snapshot resolved once");
    assert_eq!(got, due);
    for r in &resolved {
        assert!(r.snapshot.scored, "{r:?}");
        let timeline: Vec<Outcome> = by_customer[r.customer_id.as_str()]
            .iter()
            .map(|e| Outcome {
                time_ms: e.event_time_ms,
                spend_minor: match &e.payload {
                    Payload::Purchase(p) => p.total_minor.max(0),
                    _ => -1,
                },
            })
            .collect();
        let want = label_rules.label(&timeline, r.snapshot.cut_ms);
        let have = label_rules.labels(
            r.realized.purchases,
            r.realized.spend_minor,
            r.realized.active,
            r.snapshot.purchased_before,
        );
        assert_eq!(have, want, "{} at {}", r.customer_id, r.snapshot.cut_ms);
    }
    // The changelog bytes snapshots add (kept until resolved).
    let with: usize = store.iter().map(|(_, s)| encode(s).len()).sum();
    let without: usize = store
        .iter()
        .map(|(_, s)| {
            let mut s = s.clone();
            s.snapshots.clear();
            s.snapshot_through_ms = 0;
            encode(&s).len()
        })
        .sum();
    let held: usize = store.iter().map(|(_, s)| s.snapshots.len()).sum();
    eprintln!(
        "snapshots: {} customers, {held} snapshots held, {:.1} changelog bytes per customer ({:.1} per snapshot) on {:.1}",
        store.len(),
        (with - without) as f64 / store.len() as f64,
        (with - without) as f64 / held.max(1) as f64,
        without as f64 / store.len() as f64
    );
    // What is left in state: the snapshots not due yet, scored.
    let left: usize = store.iter().map(|(_, s)| s.snapshots.len()).sum();
    assert_eq!(left, expected.len() - due.len());
    assert!(store
        .iter()
        .all(|(_, s)| s.snapshots.iter().all(|x| x.scored)));
}

#[test]
fn a_restore_in_the_middle_loses_and_repeats_no_snapshot() {
    let events = events(6);
    let mut whole = PartitionStore::new(limits());
    let (mut captured, mut resolved) = (Vec::new(), Vec::new());
    run(&mut whole, &events, &mut captured, &mut resolved);
    let want: BTreeSet<(String, i64)> = resolved
        .iter()
        .map(|r| (r.customer_id.clone(), r.snapshot.cut_ms))
        .collect();

    // The same events with a restart at several points: the committed
    // state goes through the changelog codec into a fresh store, and the
    // input continues from where it was committed.
    for split in [events.len() / 3, events.len() / 2, 2 * events.len() / 3] {
        let mut first = PartitionStore::new(limits());
        let (mut c1, mut r1) = (Vec::new(), Vec::new());
        run(&mut first, &events[..split], &mut c1, &mut r1);
        let mut second = PartitionStore::new(limits());
        for (id, state) in first.iter() {
            let restored = decode(&encode(state)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&restored, state, "snapshots go through the changelog");
            second.restore(id.to_string(), restored);
        }
        let (mut c2, mut r2) = (Vec::new(), Vec::new());
        run(&mut second, &events[split..], &mut c2, &mut r2);
        let all: Vec<(String, i64)> = r1
            .iter()
            .chain(&r2)
            .map(|r| (r.customer_id.clone(), r.snapshot.cut_ms))
            .collect();
        let unique: BTreeSet<(String, i64)> = all.iter().cloned().collect();
        assert_eq!(unique.len(), all.len(), "none twice (split {split})");
        assert_eq!(unique, want, "none lost (split {split})");
    }
}

#[test]
fn an_erased_customer_has_no_outcome() {
    let events = events(7);
    let mut store = PartitionStore::new(limits());
    let now = Instant::now();
    let target = events[0].customer_id.clone();
    let mut erased_at = None;
    let mut resolved = Vec::new();
    for e in &events {
        store.record(e, now);
        for c in store.take_captures() {
            if c.customer_id == target && erased_at.is_none() {
                // Erased in the cycle that captured them.
                store.erase(&target, e.event_time_ms);
                erased_at = Some(c.cut_ms);
                continue;
            }
            store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted());
        }
        resolved.extend(store.take_resolved());
    }
    let erased_at = erased_at.unwrap_or_else(|| panic!("the customer was captured"));
    assert!(!resolved.is_empty());
    // Back after the erasure, they start over: only later cuts resolve.
    assert!(resolved
        .iter()
        .all(|r| r.customer_id != target || r.snapshot.cut_ms > erased_at));
}

/// A clock that jumps past a cut's horizon closes the cut and resolves it
/// in one step: the predictions (the champion's, then a baseline's) are
/// filled into the resolved snapshots, each once.
#[test]
fn a_jump_past_the_horizon_fills_the_resolved_snapshots() {
    use crate::state::tests::{ev, view, T0};
    let m = rules();
    let mut store = PartitionStore::new(limits());
    let now = Instant::now();
    let t = m.cut_after(T0);
    store.record(&ev("a", "1", t - DAY_MS, view("x", 1, 0)), now);
    assert!(store.take_captures().is_empty());
    store.record(&ev("b", "2", t + 40 * DAY_MS, view("x", 1, 0)), now);
    let captures = store.take_captures();
    // `a` (last seen a day before t) at every cut of its 30-day lookback.
    let cuts: Vec<i64> = captures.iter().map(|c| c.cut_ms).collect();
    let week = 7 * DAY_MS;
    assert_eq!(
        cuts,
        [t, t + week, t + 2 * week, t + 3 * week, t + 4 * week]
    );
    let baseline = Predicted {
        model_version: "rfm_rules".into(),
        role: "baseline".into(),
        feature_bins: Vec::new(),
        ..predicted()
    };
    for c in &captures {
        assert!(store.fill_snapshot(&c.customer_id, c.cut_ms, &predicted()));
        assert!(store.fill_snapshot(&c.customer_id, c.cut_ms, &baseline));
    }
    let resolved = store.take_resolved();
    // Watermark t + 40 days - 1 min: the horizons (14 days) of the first
    // four cuts have passed; t + 28's has not.
    let got: Vec<(i64, &str)> = resolved
        .iter()
        .map(|r| (r.snapshot.cut_ms, r.snapshot.model_version.as_str()))
        .collect();
    let mut want = Vec::new();
    for k in 0..4 {
        want.push((t + k * week, "m1"));
        want.push((t + k * week, "rfm_rules"));
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want);
    assert!(resolved
        .iter()
        .all(|r| r.snapshot.scored && !r.realized.active));
    let held: Vec<(i64, &str)> = store
        .get("a")
        .map(|s| {
            s.snapshots
                .iter()
                .map(|x| (x.cut_ms, x.model_version.as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(held, [(t + 4 * week, "m1"), (t + 4 * week, "rfm_rules")]);
}
