use super::*;
use crate::state::tests::{buy, ev, rate, view, T0};

fn limits() -> StateLimits {
    StateLimits {
        max_events: 4,
        text_tokens: 3,
    }
}

fn featurizer() -> Featurizer {
    Featurizer::new(FeatureSpec::for_state(limits()), limits()).unwrap()
}

fn state(events: &[crate::event::Event]) -> CustomerState {
    let mut s = CustomerState::default();
    for e in events {
        s.record(e, limits());
    }
    s
}

fn column<'a>(tensors: &'a [TensorView<'a>], name: &str) -> &'a TensorView<'a> {
    tensors.iter().find(|t| t.name == name).unwrap()
}

#[test]
fn shapes_padding_and_order() {
    let a = state(&[
        ev("a", "1", T0, view("shoes", 100, 5_000)),
        ev("a", "2", T0 + 60_000, buy("socks", 2_500)),
        ev("a", "3", T0 + 120_000, rate("shoes", 4, "great fit")),
    ]);
    let empty = CustomerState::default();
    let batch = featurizer().featurize(&[&a, &empty], T0 + 180_000).unwrap();
    assert_eq!(batch.num_rows(), 2);
    let t = tensors(&batch).unwrap();
    let names: Vec<&str> = t.iter().map(|t| t.name).collect();
    assert_eq!(names, INPUT_NAMES);
    assert_eq!(column(&t, "event_kind").shape, [2, 4]);
    assert_eq!(
        column(&t, "event_numeric").shape,
        [2, 4, EVENT_NUMERIC_DIM as i64]
    );
    assert_eq!(column(&t, "event_text").shape, [2, 4, 3]);
    assert_eq!(
        column(&t, "customer_features").shape,
        [2, CUSTOMER_DIM as i64]
    );

    let TensorData::I64(kinds) = column(&t, "event_kind").data else {
        panic!()
    };
    // Most recent first, then padding; the empty customer is all padding.
    assert_eq!(
        kinds,
        [
            i64::from(kind::REVIEW),
            i64::from(kind::PURCHASE),
            i64::from(kind::VIEW),
            0,
            0,
            0,
            0,
            0
        ]
    );
    let TensorData::F32(mask) = column(&t, "event_mask").data else {
        panic!()
    };
    assert_eq!(mask, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let TensorData::I64(text) = column(&t, "event_text").data else {
        panic!()
    };
    assert!(
        text[..3].iter().all(|t| *t > 0 && *t < 16_384),
        "review tokens bucketed"
    );
    assert!(text[3..].iter().all(|t| *t == 0));
    let TensorData::I64(cats) = column(&t, "event_category").data else {
        panic!()
    };
    assert_eq!(cats[0], cats[2], "same category, same bucket");
    assert_ne!(cats[0], cats[1]);
    let TensorData::F32(numeric) = column(&t, "event_numeric").data else {
        panic!()
    };
    assert_eq!(numeric[2], 4.0 / 5.0, "rating of the review");
    assert!(
        (numeric[EVENT_NUMERIC_DIM] - (121.0f32).ln() / Normalization::default().age_log_scale)
            .abs()
            < 1e-6,
        "age of the purchase: 120 s"
    );
    let TensorData::F32(customer) = column(&t, "customer_features").data else {
        panic!()
    };
    assert!(customer.iter().all(|v| v.is_finite()));
    assert_eq!(
        customer[CUSTOMER_DIM + WINDOW_DAYS.len() * 7],
        -1.0,
        "never purchased"
    );
}

#[test]
fn events_after_as_of_are_invisible() {
    let s = state(&[
        ev("a", "1", T0, view("shoes", 100, 0)),
        ev("a", "2", T0 + 3_600_000, buy("socks", 2_500)),
    ]);
    let f = featurizer();
    let early = f.featurize(&[&s], T0 + 1_000).unwrap();
    let t = tensors(&early).unwrap();
    let TensorData::F32(mask) = column(&t, "event_mask").data else {
        panic!()
    };
    assert_eq!(mask, [1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn tensors_borrow_the_arrow_buffers() {
    let s = state(&[ev("a", "1", T0, view("shoes", 100, 0))]);
    let batch = featurizer().featurize(&[&s, &s], T0).unwrap();
    let views = tensors(&batch).unwrap();
    for (i, view) in views.iter().enumerate() {
        let list = batch
            .column(i)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        let buffer = list.values().to_data().buffers()[0].as_ptr();
        let ptr = match view.data {
            TensorData::I64(d) => d.as_ptr().cast::<u8>(),
            TensorData::F32(d) => d.as_ptr().cast::<u8>(),
        };
        assert_eq!(ptr, buffer, "{} is a view, not a copy", view.name);
    }
}

#[test]
fn spec_round_trips_through_json_and_mismatches_are_refused() {
    let spec = FeatureSpec::for_state(limits());
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<FeatureSpec>(&json).unwrap(), spec);

    let mut bad = spec.clone();
    bad.version = 99;
    bad.max_events = 500;
    bad.tokenizer = "whitespace".into();
    bad.normalization.age_log_scale = f32::NAN;
    let err = Featurizer::new(bad, limits()).unwrap_err().to_string();
    for needle in ["version 99", "max_events 500", "tokenizer", "age_log_scale"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    // A shorter sequence than the state keeps is fine.
    let mut shorter = spec;
    shorter.max_events = 2;
    let f = Featurizer::new(shorter, limits()).unwrap();
    let s = state(&[
        ev("a", "1", T0, view("x", 1, 0)),
        ev("a", "2", T0 + 1, view("x", 1, 0)),
        ev("a", "3", T0 + 2, view("x", 1, 0)),
    ]);
    assert_eq!(f.featurize(&[&s], T0 + 10).unwrap().column(0).len(), 1);
}

/// Purchases every 10 days for 200 days (21 of them), 100.00 each, kept
/// with `limits`, and the time 30 days after the last: the first ones are
/// long out of the 90-day windows and the recent events.
fn clockwork_buyer(limits: StateLimits) -> (CustomerState, i64) {
    const DAY: i64 = 86_400_000;
    let mut s = CustomerState::default();
    for i in 0..21 {
        s.record(
            &ev("a", &format!("p{i}"), T0 + i * 10 * DAY, buy("x", 10_000)),
            limits,
        );
    }
    (s, T0 + 230 * DAY)
}

#[test]
fn lifetime_features_reach_past_the_windows_and_the_recent_events() {
    let limits = StateLimits {
        max_events: 8,
        text_tokens: 3,
    };
    let f = Featurizer::new(FeatureSpec::for_state(limits), limits).unwrap();
    let (s, as_of) = clockwork_buyer(limits);
    let batch = f.featurize(&[&s], as_of).unwrap();
    let t = tensors(&batch).unwrap();
    let TensorData::F32(c) = column(&t, "customer_features").data else {
        panic!()
    };
    let n = &f.spec().normalization;
    let lt = &c[LIFETIME_AT..CLASSICAL_AT];
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    assert!(close(lt[0], 21f32.ln_1p() / n.count_log_scale), "{lt:?}");
    assert!(close(lt[1], 210_000f32.ln_1p() / n.spend_log_scale));
    assert!(close(lt[2], 10_000f32.ln_1p() / n.amount_log_scale));
    assert!(close(lt[3], 230f32.ln_1p() / n.days_log_scale), "T");
    assert!(close(lt[4], 200f32.ln_1p() / n.days_log_scale), "t_x");
    assert!(close(lt[6], 10f32.ln_1p() / n.days_log_scale), "mean gap");
    assert!(
        close(lt[7], 0.0),
        "clockwork purchases have no gap variation"
    );
    // Issue 38: a reason shows the customer's value in its unit, decoded
    // from the encoded feature.
    let row = f.customer_features(&s, as_of);
    assert_eq!(&row[..], c, "one customer's row is the batch's");
    let names = crate::features::customer_feature_names();
    let value = |name: &str| {
        let j = names.iter().position(|n| n == name).unwrap();
        crate::features::customer_feature_value(j, row[j], n)
    };
    let near = |got: Option<(f64, &str)>, want: f64, unit: &str| {
        let (v, u) = got.unwrap();
        assert!(
            (v - want).abs() <= want.abs() * 1e-3 + 1e-3 && u == unit,
            "{v} {u}, not {want} {unit}"
        );
    };
    near(value("lifetime_purchases"), 21.0, "count");
    near(value("lifetime_spend"), 210_000.0, "minor_units");
    near(value("mean_order_value"), 10_000.0, "minor_units");
    near(value("days_since_purchase"), 30.0, "days");
    near(value("mean_purchase_gap_days"), 10.0, "days");
    near(value("purchases_90d"), 6.0, "count");
    near(value("purchase_gap_irregularity"), 0.0, "ratio");
    // Never purchased: counts 0, the rest "not defined".
    let browser = state(&[ev("b", "1", T0, view("x", 1, 0))]);
    let batch = f.featurize(&[&browser], as_of).unwrap();
    let t = tensors(&batch).unwrap();
    let TensorData::F32(c) = column(&t, "customer_features").data else {
        panic!()
    };
    assert_eq!(
        &c[LIFETIME_AT..],
        [0.0, 0.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    );
}

/// Issue 38: the classical inputs are "not defined" without parameters,
/// and with them are the BG/NBD and Gamma-Gamma predictions for the
/// customer's x, t_x, T and mean order value, in the catalogue's units.
#[test]
fn classical_inputs_are_the_fitted_models_predictions() {
    use crate::features::classical::{BgNbd, Classical, GammaGamma, Rfm};
    let limits = StateLimits::default();
    let (s, as_of) = clockwork_buyer(limits);
    let plain = featurizer();
    assert_eq!(
        plain.customer_features(&s, as_of)[CLASSICAL_AT..],
        [-1.0; CLASSICAL_DIM]
    );
    let classical = Classical {
        bgnbd: BgNbd {
            r: 0.8,
            alpha: 20.0,
            a: 0.7,
            b: 3.0,
        },
        gamma_gamma: Some(GammaGamma {
            p: 6.0,
            q: 4.0,
            gamma: 5_000.0,
        }),
        horizon_days: 90.0,
        never_rate: 0.0,
    };
    let spec = FeatureSpec {
        classical: Some(classical),
        ..plain.spec().clone()
    };
    let f = Featurizer::new(spec, limits).unwrap();
    let row = f.customer_features(&s, as_of);
    assert_eq!(
        row[..CLASSICAL_AT],
        plain.customer_features(&s, as_of)[..CLASSICAL_AT],
        "the other features do not move"
    );
    let c = Rfm {
        x: 20.0,
        t_x: 200.0,
        t: 230.0,
    };
    let m = classical.bgnbd;
    let value = 6.0 * (5_000.0 + 21.0 * 10_000.0) / (6.0 * 21.0 + 3.0);
    let want = [
        (m.p_alive(&c), "probability"),
        (m.p_purchase_within(&c, 90.0), "probability"),
        (m.expected_purchases(&c, 90.0), "count"),
        (m.expected_purchases(&c, 90.0) * value, "minor_units"),
    ];
    let n = &f.spec().normalization;
    for (k, (want, unit)) in want.into_iter().enumerate() {
        let j = CLASSICAL_AT + k;
        let (got, u) = crate::features::customer_feature_value(j, row[j], n).unwrap();
        assert_eq!(u, unit);
        assert!(
            (got - want).abs() <= want.abs() * 2e-3 + 1e-3,
            "{}: {got} against {want}",
            crate::features::customer_feature_names()[j]
        );
    }
    assert!(
        row[CLASSICAL_AT] > 0.5 && row[CLASSICAL_AT] < 1.0,
        "{row:?}"
    );
    // A spec with parameters that cannot be used is refused, with why.
    let bad = FeatureSpec {
        classical: Some(Classical {
            horizon_days: 0.0,
            never_rate: 0.0,
            ..classical
        }),
        ..plain.spec().clone()
    };
    let e = Featurizer::new(bad, limits).unwrap_err().to_string();
    assert!(e.contains("horizon_days"), "{e}");
}

#[test]
fn every_customer_feature_has_one_distinct_name() {
    let names = super::customer_feature_names();
    assert_eq!(names.len(), super::CUSTOMER_DIM);
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len());
    assert_eq!(names[2], "purchases_1d");
    assert_eq!(names[super::CLASSICAL_AT - 1], "purchase_gap_irregularity");
    assert_eq!(names[super::CUSTOMER_DIM - 1], "expected_spend");
}

#[test]
fn trimming_keeps_every_real_event_and_drops_only_padding() {
    let two = state(&[
        ev("a", "1", T0, view("shoes", 100, 5_000)),
        ev("a", "2", T0 + 60_000, rate("shoes", 4, "great fit")),
    ]);
    let one = state(&[ev("b", "1", T0, buy("socks", 2_500))]);
    let empty = CustomerState::default();
    let batch = featurizer()
        .featurize(&[&two, &one, &empty], T0 + 180_000)
        .unwrap();
    let t = tensors(&batch).unwrap();
    let cut = trim_events(&t).expect("two of four event slots are padding everywhere");
    assert_eq!(cut.len(), t.len());
    for (v, c) in t.iter().zip(&cut) {
        let Some(c) = c else {
            assert_eq!(v.name, "customer_features", "only the event inputs are cut");
            continue;
        };
        let w = c.view(v.name);
        assert_eq!(w.shape[..2], [3, 2], "{}", v.name);
        assert_eq!(w.shape[2..], v.shape[2..], "{}", v.name);
        let inner: usize = v.shape[2..].iter().product::<i64>() as usize;
        // Row r of the cut is the first two events of row r.
        let (full, kept) = (4 * inner, 2 * inner);
        match (v.data, w.data) {
            (TensorData::I64(a), TensorData::I64(b)) => {
                for r in 0..3 {
                    assert_eq!(b[r * kept..(r + 1) * kept], a[r * full..r * full + kept]);
                    assert!(a[r * full + kept..(r + 1) * full].iter().all(|x| *x == 0));
                }
            }
            (TensorData::F32(a), TensorData::F32(b)) => {
                for r in 0..3 {
                    assert_eq!(b[r * kept..(r + 1) * kept], a[r * full..r * full + kept]);
                    assert!(a[r * full + kept..(r + 1) * full].iter().all(|x| *x == 0.0));
                }
            }
            _ => panic!("{}: element type changed", v.name),
        }
    }
    // Nothing to cut when one history fills every slot; one masked event
    // is kept for a batch of empty histories.
    let full = state(&[
        ev("c", "1", T0, view("shoes", 100, 5_000)),
        ev("c", "2", T0 + 1_000, view("shoes", 100, 5_000)),
        ev("c", "3", T0 + 2_000, view("shoes", 100, 5_000)),
        ev("c", "4", T0 + 3_000, view("shoes", 100, 5_000)),
    ]);
    let batch = featurizer()
        .featurize(&[&one, &full], T0 + 180_000)
        .unwrap();
    assert_eq!(trim_events(&tensors(&batch).unwrap()), None);
    let batch = featurizer().featurize(&[&empty], T0 + 180_000).unwrap();
    let t = tensors(&batch).unwrap();
    let cut = trim_events(&t).unwrap();
    assert_eq!(cut[0].as_ref().unwrap().shape, [1, 1]);
}
