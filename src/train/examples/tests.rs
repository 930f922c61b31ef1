use super::*;
use crate::features::FeatureSpec;
use crate::state::tests::{buy, ev, view};

const DAY: i64 = DAY_MS;
const T0: i64 = 1_780_000_000_000 / DAY * DAY;

fn featurizer() -> (Featurizer, StateLimits) {
    let limits = StateLimits::default();
    (
        Featurizer::new(FeatureSpec::for_state(limits), limits).unwrap(),
        limits,
    )
}

fn rules() -> LabelRules {
    LabelRules {
        horizon_ms: 30 * DAY,
        high_value_spend_minor: 20_000,
    }
}

#[test]
fn labels_follow_the_taxonomy_and_only_look_ahead() {
    let r = rules();
    let tl = |v: &[(i64, i64)]| -> Vec<Outcome> {
        v.iter()
            .map(|&(d, s)| Outcome {
                time_ms: T0 + d * DAY,
                spend_minor: s,
            })
            .collect()
    };
    let t = T0 + 10 * DAY;
    let seg = |v: &[(i64, i64)]| r.label(&tl(v), t).segment;
    assert_eq!(seg(&[(11, 25_000)]), Segment::HighValue);
    assert_eq!(seg(&[(11, 5_000), (12, 5_000)]), Segment::ActiveBuyer);
    assert_eq!(seg(&[(11, 15_000), (12, 5_000)]), Segment::HighValue);
    assert_eq!(seg(&[(11, -1)]), Segment::Browser);
    assert_eq!(seg(&[(1, 5_000)]), Segment::AtRisk);
    assert_eq!(seg(&[(1, -1)]), Segment::Dormant);
    // An event exactly at t belongs to the past; one at t + H to the horizon;
    // one after t + H to neither.
    let at_t = vec![Outcome {
        time_ms: t,
        spend_minor: 90_000,
    }];
    assert_eq!(r.label(&at_t, t).segment, Segment::AtRisk);
    assert!(!r.label(&at_t, t).purchased);
    let edge = vec![Outcome {
        time_ms: t + 30 * DAY,
        spend_minor: 100,
    }];
    assert!(r.label(&edge, t).purchased);
    let late = vec![Outcome {
        time_ms: t + 30 * DAY + 1,
        spend_minor: 100,
    }];
    assert!(r.label(&late, t).churned);
}

#[test]
fn cut_times_end_a_horizon_before_the_last_event() {
    let cuts = cut_times(T0, T0 + 100 * DAY, 7 * DAY, 30 * DAY);
    assert!(!cuts.is_empty());
    assert!(cuts.iter().all(|t| (t + 1) % DAY == 0));
    assert!(*cuts.last().unwrap() <= T0 + 70 * DAY);
    assert!(cuts[0] >= T0 + 7 * DAY);
    assert!(cuts.windows(2).all(|w| w[1] - w[0] == 7 * DAY));
    // On the live monitor's calendar: every 7th day since the epoch.
    let monitor = crate::config::MonitorRules {
        every_ms: 7 * DAY,
        horizon_ms: 30 * DAY,
        lookback_ms: 90 * DAY,
    };
    assert!(
        cuts.iter().all(|t| monitor.cut_at_or_before(*t) == *t),
        "{cuts:?}"
    );
    assert_eq!(
        *cuts.last().unwrap(),
        monitor.cut_at_or_before(T0 + 70 * DAY)
    );
}

/// A customer history with an event every 2 days, purchases every 5th.
fn history(customers: usize, days: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for c in 0..customers {
        let id = format!("c{c}");
        for d in 0..days {
            if (d + c as i64) % 2 != 0 {
                continue;
            }
            let t = T0 + d * DAY + (c as i64) * 60_000;
            let p = if (d + c as i64) % 5 == 0 {
                buy("shoes", 1_000 + 100 * c as i64)
            } else {
                view("bags", 30_000, 2_000)
            };
            out.push(ev(&id, &format!("{c}-{d}"), t, p));
        }
    }
    out
}

fn features_truncated(events: &[Event], customer: &str, t: i64) -> Batch {
    let (f, limits) = featurizer();
    let mut s = CustomerState::default();
    for e in events
        .iter()
        .filter(|e| e.customer_id == customer && e.event_time_ms <= t)
    {
        s.record(e, limits);
    }
    let batch = f.featurize(&[&s], t).unwrap();
    let mut set = ExampleSet::new(f.spec().max_events, f.spec().text_tokens);
    let l = Labels {
        segment: Segment::HighValue,
        purchased: false,
        churned: false,
        spend_minor: 0,
    };
    set.push_features(&batch, &[0], t, &[l], &[1.0]).unwrap();
    set.batch(&[0], Some(f.spec().max_events))
}

#[test]
fn features_never_see_the_future() {
    let (f, limits) = featurizer();
    let events = history(6, 120);
    let (set, report) = build(
        events.clone(),
        &f,
        limits,
        rules(),
        Sampling::all(7 * DAY, 90 * DAY, 0.0),
        &mut |_| {},
    )
    .unwrap();
    assert!(report.cuts >= 10, "{report:?}");
    assert!(set.len() >= 50);
    // Every example equals the features of the history cut at t: events
    // after t (including later the same day) cannot have changed it.
    for i in (0..set.len()).step_by(7) {
        let cust = &set.customers[set.customer[i] as usize];
        let want = features_truncated(&events, cust, set.cut_ms[i]);
        let got = set.batch(&[i], Some(f.spec().max_events));
        assert_eq!(got, want, "example {i} ({cust} at {})", set.cut_ms[i]);
    }
}

#[test]
fn labels_never_see_the_past() {
    let (f, limits) = featurizer();
    let sampling = Sampling::all(7 * DAY, 90 * DAY, 0.0);
    let events = history(4, 120);
    let (base, _) = build(events.clone(), &f, limits, rules(), sampling, &mut |_| {}).unwrap();
    // Add a big purchase at exactly one cut time t*: for the examples at
    // t* it is past (features change, outcome labels must not); for
    // earlier cuts within the horizon it is future (their labels change).
    let cuts = base.cut_times();
    let t_star = cuts[cuts.len() / 2];
    let mut more = events.clone();
    more.push(ev("c1", "x", t_star, buy("watches", 500_000)));
    let (changed, _) = build(more, &f, limits, rules(), sampling, &mut |_| {}).unwrap();
    assert_eq!(base.len(), changed.len());
    let (mut features_differ, mut earlier_labels_differ) = (0, 0);
    for i in 0..base.len() {
        let (a, b) = (base.labels[i], changed.labels[i]);
        let outcome = |l: Labels| (l.purchased, l.churned, l.spend_minor);
        if base.cut_ms[i] == t_star {
            assert_eq!(outcome(a), outcome(b), "example {i} at t*");
            if base.customer_features_of(i) != changed.customer_features_of(i) {
                features_differ += 1;
            }
        } else if base.cut_ms[i] < t_star && outcome(a) != outcome(b) {
            earlier_labels_differ += 1;
        }
    }
    assert_eq!(
        features_differ, 1,
        "the purchase at t* is visible to c1's features at t*"
    );
    assert!(earlier_labels_differ > 0, "and to earlier cuts' labels");
}

/// Customers who are active every 3 days until a day of their own, then
/// silent: a mix of recent and silent candidates at every cut time.
fn fading_history(customers: usize, days: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for c in 0..customers {
        let stop = 20 + (c as i64 * 37) % days;
        for d in (c as i64 % 3..stop.min(days)).step_by(3) {
            let t = T0 + d * DAY + (c as i64) * 60_000;
            out.push(ev(
                &format!("c{c}"),
                &format!("{c}-{d}"),
                t,
                buy("shoes", 1_500),
            ));
        }
    }
    out
}

#[test]
fn sampling_keeps_the_budget_and_its_weights_keep_the_totals() {
    let (f, limits) = featurizer();
    let events = fading_history(300, 240);
    let all = Sampling::all(7 * DAY, 90 * DAY, 0.2);
    let (full, full_report) = build(events.clone(), &f, limits, rules(), all, &mut |_| {}).unwrap();
    let (full_train, full_val) = split_by_time(&full, full_report.validation_from_ms, 30 * DAY);
    assert!(full.weight.iter().all(|&w| w == 1.0));
    let sampling = Sampling {
        max_examples: full_train.len() / 4,
        max_validation: full_val.len() / 2,
        silent_after_ms: 30 * DAY,
        silent_rate: 0.25,
        seed: 5,
        ..all
    };
    let (set, report) = build(events.clone(), &f, limits, rules(), sampling, &mut |_| {}).unwrap();
    assert_eq!(report.candidates, full.len() as u64);
    assert_eq!(report.sampled, set.len() as u64);
    assert_eq!(report.validation_from_ms, full_report.validation_from_ms);
    let (train, val) = split_by_time(&set, report.validation_from_ms, 30 * DAY);
    // The budgets hold (in expectation; a few percent of slack).
    let near = |got: usize, want: usize| (got as f64 - want as f64).abs() <= 0.12 * want as f64;
    assert!(
        near(train.len(), sampling.max_examples),
        "{} vs {}",
        train.len(),
        sampling.max_examples
    );
    assert!(
        near(val.len(), sampling.max_validation),
        "{} vs {}",
        val.len(),
        sampling.max_validation
    );
    // Validation is uniform and unweighted; training weights are 1 / keep
    // rate, silent customers' four times the others', and they restore
    // the full set's size and its purchase rate.
    assert!(val.weight.iter().all(|&w| w == 1.0));
    let mut distinct: Vec<f32> = train.weight.clone();
    distinct.sort_by(f32::total_cmp);
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "{distinct:?}");
    assert!(
        (distinct[1] / distinct[0] - 4.0).abs() < 1e-3,
        "{distinct:?}"
    );
    let total: f64 = train.weight.iter().map(|&w| f64::from(w)).sum();
    assert!(
        near(total as usize, full_train.len()),
        "{total} vs {}",
        full_train.len()
    );
    let rate = |s: &ExampleSet, weighted: bool| {
        let w = |i: usize| {
            if weighted {
                f64::from(s.weight[i])
            } else {
                1.0
            }
        };
        let bought: f64 = (0..s.len()).filter(|&i| s.labels[i].purchased).map(w).sum();
        bought / (0..s.len()).map(w).sum::<f64>()
    };
    let (truth, weighted, naive) = (
        rate(&full_train, false),
        rate(&train, true),
        rate(&train, false),
    );
    assert!(
        (weighted - truth).abs() < 0.03,
        "weighted {weighted} vs full {truth}"
    );
    assert!(
        naive > truth + 0.03,
        "the sample over-represents recent buyers: {naive} vs {truth}"
    );
    // Reproducible, whatever order the events come in.
    let mut shuffled = events;
    shuffled.reverse();
    let (again, _) = build(shuffled, &f, limits, rules(), sampling, &mut |_| {}).unwrap();
    assert_eq!(again.cut_ms, set.cut_ms);
    assert_eq!(again.customer, set.customer);
    assert_eq!(again.weight, set.weight);
}

#[test]
fn the_split_is_by_time_with_a_horizon_gap() {
    let (f, limits) = featurizer();
    let (set, report) = build(
        history(5, 200),
        &f,
        limits,
        rules(),
        Sampling::all(7 * DAY, 90 * DAY, 0.2),
        &mut |_| {},
    )
    .unwrap();
    let (set_report_cuts, from) = (report.cuts, report.validation_from_ms);
    let (train, val) = split_by_time(&set, from, 30 * DAY);
    assert!(!train.is_empty() && !val.is_empty());
    let last_train = train.cut_ms.iter().max().unwrap();
    let first_val = val.cut_ms.iter().min().unwrap();
    assert!(last_train + 30 * DAY < *first_val);
    assert_eq!(Some(*first_val), from);
    // The gap's cut times are never built.
    assert_eq!(train.len() + val.len(), set.len());
    assert!(
        set.cut_times().len() < set_report_cuts,
        "the gap drops some cuts"
    );
}
