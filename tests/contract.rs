//! The JSON Schema for producers (`schemas/event.schema.json`) and the decoder
//! agree: every valid event the decoder accepts conforms to the schema, and
//! the JSON bad records that break a structural rule are refused by both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use segstream::event::corpus::{bad_records, browse, purchase, review};
use segstream::event::encode::to_json;
use segstream::event::{Decoder, Encoding, Limits, Reason};

const NOW: i64 = 1_790_000_000_000;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/event.schema.json"),
    )
    .expect("schema file");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn valid_events_conform_to_the_schema() {
    let validator = schema();
    for event in [
        browse("c", "e1", NOW),
        purchase("c", "e2", NOW),
        review("c", "e3", NOW),
    ] {
        let json = to_json(&event);
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{json}: {errors:?}");
        let bytes = serde_json::to_vec(&json).unwrap();
        Decoder::new(Encoding::Json, Limits::default())
            .decode(Some(b"c"), Some(&bytes), NOW)
            .expect("decoder accepts it too");
    }
}

#[test]
fn structurally_bad_json_is_refused_by_schema_and_decoder() {
    let validator = schema();
    let structural = [
        Reason::JsonWrongType,
        Reason::UnknownPayload,
        Reason::MultiplePayloads,
    ];
    let mut checked = 0;
    for bad in bad_records("c", NOW, 1024) {
        if !structural.contains(&bad.expected) {
            continue;
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bad.value) else {
            continue;
        };
        assert!(
            !validator.is_valid(&json),
            "{}: schema accepted {json}",
            bad.name
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "JSON cases in the corpus");
}

#[test]
fn schema_and_decoder_agree_on_value_rules() {
    let validator = schema();
    let decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut cases = Vec::new();
    let mut v = to_json(&review("c", "r", NOW));
    v["review"]["rating"] = serde_json::json!(9);
    cases.push(("rating 9", v, Reason::InvalidRating));
    let mut v = to_json(&purchase("c", "p", NOW));
    v["purchase"]["items"][0]["unit_price_minor"] = serde_json::json!(-1);
    cases.push(("negative price", v, Reason::NegativeAmount));
    let mut v = to_json(&purchase("c", "p", NOW));
    v["purchase"]["currency"] = serde_json::json!("euro");
    cases.push(("bad currency", v, Reason::InvalidField));
    let mut v = to_json(&browse("c", "b", NOW));
    v["browse"]["action"] = serde_json::json!("teleport");
    cases.push(("unknown action", v, Reason::InvalidField));
    let mut v = to_json(&browse("c", "b", NOW));
    v.as_object_mut().unwrap().remove("customer_id");
    cases.push(("missing customer", v, Reason::MissingCustomer));
    for (name, json, reason) in cases {
        assert!(!validator.is_valid(&json), "{name}: schema accepted it");
        let bytes = serde_json::to_vec(&json).unwrap();
        let got = decoder.decode(Some(b"c"), Some(&bytes), NOW).unwrap_err();
        assert_eq!(got.reason, reason, "{name}");
    }
}

/// Issue 39: the JSON form of a live outcome (`output.format = "json"`)
/// conforms to `schemas/outcome.schema.json`, field for field.
#[test]
fn outcomes_in_json_conform_to_their_schema() {
    use segstream::config::{OutputConfig, OutputFormat};
    use segstream::event::proto::Outcome;
    use segstream::pipeline::output::for_outcome;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/outcome.schema.json"),
    )
    .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let out = OutputConfig {
        outcomes_topic: "outcomes".into(),
        format: OutputFormat::Json,
        ..OutputConfig::default()
    };
    let outcome = Outcome {
        customer_id: "c1".into(),
        cut_ms: 1_790_207_999_999,
        horizon_ms: 30 * 86_400_000,
        model_version: "m1".into(),
        segment: "active_buyer".into(),
        purchase_probability: 0.75,
        churn_probability: 0.0,
        predicted_spend: 1200.0,
        purchased: true,
        churned: false,
        spend_minor: 0,
        realized_segment: "browser".into(),
        resolved_at_ms: NOW,
        role: "champion".into(),
        feature_bins: vec![0, 9, 3],
    };
    let record = for_outcome(&out, &outcome).unwrap();
    assert_eq!(
        (record.topic.as_str(), record.key.as_str()),
        ("outcomes", "c1")
    );
    let json: serde_json::Value = serde_json::from_slice(&record.value.unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{json}: {errors:?}");
    // Every field is present, defaults included (false, 0).
    assert_eq!(json.as_object().map(|o| o.len()), Some(15), "{json}");
    let mut broken = json.clone();
    broken["realized_segment"] = "gold".into();
    assert!(!validator.is_valid(&broken));
}
