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
