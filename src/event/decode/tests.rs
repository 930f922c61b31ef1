use proptest::prelude::*;

use super::*;
use crate::event::corpus::{bad_records, browse, purchase, review};
use crate::event::encode::{encode, to_json, WireFormat};
use crate::event::{BrowseAction, EventKind, Payload, Stage};

const NOW: i64 = 1_790_000_000_000;

fn decoder() -> Decoder {
    Decoder::new(Encoding::Auto, Limits::default())
}

fn decode(key: &str, value: &[u8]) -> Result<(Event, Framing), Rejection> {
    decoder().decode(Some(key.as_bytes()), Some(value), NOW)
}

#[test]
fn every_kind_decodes_identically_in_every_wire_format() {
    for make in [browse, purchase, review] {
        let raw = make("c-1", "e-1", NOW - 1000);
        let mut decoded = Vec::new();
        for format in WireFormat::ALL {
            let (event, framing) =
                decode("c-1", &encode(&raw, format)).unwrap_or_else(|r| panic!("{format:?}: {r}"));
            let confluent = !matches!(format, WireFormat::Protobuf | WireFormat::Json);
            assert_eq!(
                matches!(framing, Framing::Confluent { schema_id: 1 }),
                confluent
            );
            decoded.push(event);
        }
        assert!(decoded.windows(2).all(|w| w[0] == w[1]), "{decoded:#?}");
    }
}

#[test]
fn decoded_fields_match_the_source() {
    let (e, _) = decode(
        "c-9",
        &encode(&purchase("c-9", "p-1", NOW), WireFormat::Json),
    )
    .unwrap();
    assert_eq!(e.customer_id, "c-9");
    assert_eq!(e.event_id, "p-1");
    assert_eq!(e.event_time_ms, NOW);
    assert_eq!(e.kind(), EventKind::Purchase);
    let Payload::Purchase(p) = e.payload else {
        panic!("not a purchase")
    };
    assert_eq!(p.order_id, "o-p-1");
    assert_eq!(p.total_minor, 10_496);
    assert_eq!(p.currency, "EUR");
    assert_eq!(p.items.len(), 2);
    assert_eq!(p.items[1].quantity, 3);
    assert_eq!(p.items[1].unit_price_minor, 499);

    let (e, _) = decode(
        "c-9",
        &encode(&browse("c-9", "b-1", NOW), WireFormat::Protobuf),
    )
    .unwrap();
    let Payload::Browse(b) = e.payload else {
        panic!("not a browse")
    };
    assert_eq!(b.action, BrowseAction::CartAdd);
    assert_eq!(b.dwell_ms, 12_500);
    assert_eq!(b.price_minor, 8_999);
}

#[test]
fn json_accepts_camel_case_names_and_string_integers() {
    let json = br#"{"eventId":"e-5","customerId":"c-5","eventTimeMs":"1789999999000",
        "review":{"productId":"sku-1","rating":"5","text":"love it"}}"#;
    let (e, _) = decode("c-5", json).unwrap();
    assert_eq!(e.event_time_ms, 1_789_999_999_000);
    let Payload::Review(r) = e.payload else {
        panic!("not a review")
    };
    assert_eq!((r.rating, r.product_id.as_str()), (5, "sku-1"));
}

#[test]
fn json_accepts_protobuf_enum_names_for_actions() {
    let json = br#"{"event_id":"e","customer_id":"c","event_time_ms":1789999999000,
        "browse":{"product_id":"p","action":"BROWSE_ACTION_WISHLIST"}}"#;
    let (e, _) = decode("c", json).unwrap();
    assert!(matches!(e.payload, Payload::Browse(b) if b.action == BrowseAction::Wishlist));
}

#[test]
fn json_ignores_unknown_fields_for_forward_compatibility() {
    let mut v = to_json(&browse("c", "e", NOW));
    v["added_in_v1_5"] = serde_json::json!({"anything": [1, 2]});
    v["browse"]["new_field"] = serde_json::json!(true);
    assert!(decode("c", &serde_json::to_vec(&v).unwrap()).is_ok());
}

#[test]
fn search_needs_no_product() {
    let mut raw = browse("c", "e", NOW);
    if let Some(proto::event::Payload::Browse(b)) = &mut raw.payload {
        b.action = proto::BrowseAction::Search as i32;
        b.product_id.clear();
    }
    assert!(decode("c", &encode(&raw, WireFormat::Protobuf)).is_ok());
}

#[test]
fn bad_corpus_gets_exact_reasons() {
    for bad in bad_records("c-1", NOW, 300 * 1024) {
        let got = decoder()
            .decode(bad.key.as_deref(), Some(&bad.value), NOW)
            .map(|_| ())
            .expect_err(bad.name);
        assert_eq!(got.reason, bad.expected, "{}: {got}", bad.name);
        assert_eq!(got.stage, bad.expected.stage(), "{}", bad.name);
        assert!(!got.message.is_empty());
    }
}

#[test]
fn review_text_never_appears_in_rejection_messages() {
    let secret = "my very private review text";
    let json = format!(
        r#"{{"event_id":"e","customer_id":"c","event_time_ms":1789999999000,
        "review":{{"product_id":"p","rating":"{secret}","text":"{secret}"}}}}"#
    );
    let r = decode("c", json.as_bytes()).unwrap_err();
    assert_eq!(r.reason, Reason::JsonWrongType);
    assert!(!r.message.contains(secret), "{}", r.message);
}

#[test]
fn missing_key_is_refused_unless_key_matching_is_off() {
    let value = encode(&browse("c", "e", NOW), WireFormat::Protobuf);
    let r = decoder().decode(None, Some(&value), NOW).unwrap_err();
    assert_eq!(r.reason, Reason::KeyMismatch);
    let lax = Decoder::new(
        Encoding::Auto,
        Limits {
            require_key_match: false,
            ..Limits::default()
        },
    );
    assert!(lax.decode(None, Some(&value), NOW).is_ok());
}

#[test]
fn forced_encodings_refuse_the_other_one() {
    let pb = encode(&browse("c", "e", NOW), WireFormat::Protobuf);
    let js = encode(&browse("c", "e", NOW), WireFormat::Json);
    let json_only = Decoder::new(Encoding::Json, Limits::default());
    let proto_only = Decoder::new(Encoding::Protobuf, Limits::default());
    assert_eq!(
        json_only
            .decode(Some(b"c"), Some(&pb), NOW)
            .unwrap_err()
            .reason,
        Reason::InvalidJson
    );
    assert!(json_only.decode(Some(b"c"), Some(&js), NOW).is_ok());
    assert_eq!(
        proto_only
            .decode(Some(b"c"), Some(&js), NOW)
            .unwrap_err()
            .reason,
        Reason::InvalidProtobuf
    );
    assert!(proto_only.decode(Some(b"c"), Some(&pb), NOW).is_ok());
}

#[test]
fn a_topic_with_its_own_encoding_refuses_the_other_while_the_rest_detect() {
    let pb = encode(&browse("c", "e", NOW), WireFormat::Protobuf);
    let js = encode(&browse("c", "e", NOW), WireFormat::Json);
    let overrides = [
        ("events.browse".to_owned(), Encoding::Protobuf),
        ("events.review".to_owned(), Encoding::Json),
    ]
    .into_iter()
    .collect();
    let decoders = Decoders::new(Encoding::Auto, &overrides, Limits::default());
    let decode = |topic: &str, value: &[u8]| {
        decoders
            .for_topic(topic)
            .decode(Some(b"c"), Some(value), NOW)
    };
    assert!(decode("events.browse", &pb).is_ok());
    assert_eq!(
        decode("events.browse", &js).unwrap_err().reason,
        Reason::InvalidProtobuf
    );
    assert!(decode("events.review", &js).is_ok());
    assert_eq!(
        decode("events.review", &pb).unwrap_err().reason,
        Reason::InvalidJson
    );
    for topic in ["events.purchase", "other"] {
        assert!(decode(topic, &pb).is_ok(), "{topic} detects protobuf");
        assert!(decode(topic, &js).is_ok(), "{topic} detects JSON");
    }
}

#[test]
fn the_confluent_encoding_takes_only_framed_records_with_either_body() {
    let confluent = Decoder::new(Encoding::Confluent, Limits::default());
    for format in WireFormat::ALL {
        let value = encode(&browse("c", "e", NOW), format);
        let framed = value.first() == Some(&0);
        let got = confluent.decode(Some(b"c"), Some(&value), NOW);
        if framed {
            assert!(got.is_ok(), "{format:?}: {got:?}");
        } else {
            assert_eq!(got.unwrap_err().reason, Reason::BadFraming, "{format:?}");
        }
    }
}

#[test]
fn time_bounds_follow_the_limits() {
    let limits = Limits::default();
    let at = |t: i64| decode("c", &encode(&browse("c", "e", t), WireFormat::Protobuf));
    assert!(at(NOW - limits.max_past_ms).is_ok());
    assert_eq!(
        at(NOW - limits.max_past_ms - 1).unwrap_err().reason,
        Reason::TimeOutOfRange
    );
    assert!(at(NOW + limits.max_future_ms).is_ok());
    assert_eq!(
        at(NOW + limits.max_future_ms + 1).unwrap_err().reason,
        Reason::TimeOutOfRange
    );
}

#[test]
fn stage_follows_reason() {
    assert_eq!(Reason::InvalidJson.stage(), Stage::Decode);
    assert_eq!(Reason::InvalidRating.stage(), Stage::Validate);
    let codes: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        codes.len(),
        Reason::ALL.len(),
        "reason codes must be unique"
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode("c", &bytes); // Any result; it must not panic.
    }

    #[test]
    fn arbitrary_confluent_bodies_never_panic(
        indexes in proptest::collection::vec(any::<u8>(), 0..12),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut v = vec![0, 0, 0, 0, 1];
        v.extend(indexes);
        v.extend(body);
        let _ = decode("c", &v); // Any result; it must not panic.
    }

    #[test]
    fn valid_events_round_trip(
        customer in "[a-z0-9-]{1,40}",
        id in "[a-z0-9-]{1,40}",
        age_ms in 0i64..86_400_000 * 365,
        rating in 1i32..=5,
        text in ".{0,200}",
        format in proptest::sample::select(WireFormat::ALL.to_vec()),
    ) {
        let mut raw = review(&customer, &id, NOW - age_ms);
        if let Some(proto::event::Payload::Review(r)) = &mut raw.payload {
            r.rating = rating;
            r.text = text.clone();
        }
        let (e, _) = decode(&customer, &encode(&raw, format)).map_err(|r| TestCaseError::fail(r.to_string()))?;
        prop_assert_eq!(e.customer_id, customer);
        prop_assert_eq!(e.event_id, id);
        prop_assert_eq!(e.event_time_ms, NOW - age_ms);
        let Payload::Review(r) = e.payload else { return Err(TestCaseError::fail("kind")) };
        prop_assert_eq!(i32::from(r.rating), rating);
        prop_assert_eq!(r.text, text);
    }
}

/// Regression (issue 16): a protobuf Event starts with 0x0A ('\n', the tag
/// of `event_id`); an `event_id` of exactly 123 bytes makes the next byte
/// 0x7B ('{'), and a GUID in braces starts with '{'. Both were taken for
/// JSON and dead-lettered as `invalid_json`.
#[test]
fn protobuf_events_that_read_like_json_after_a_newline_decode_as_protobuf() {
    let long_id = "x".repeat(123);
    for id in [
        long_id.as_str(),
        "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
        "[1]",
        "null",
    ] {
        let raw = browse("c-1", id, NOW - 1000);
        for format in [WireFormat::Protobuf, WireFormat::ConfluentProtobuf] {
            let bytes = encode(&raw, format);
            let (e, _) = decode("c-1", &bytes).unwrap_or_else(|r| panic!("{id:?} {format:?}: {r}"));
            assert_eq!(e.event_id, id);
        }
    }
    // JSON after a newline is still JSON.
    let json = encode(&browse("c-1", "e-1", NOW - 1000), WireFormat::Json);
    let mut padded = b"\n  ".to_vec();
    padded.extend_from_slice(&json);
    assert_eq!(decode("c-1", &padded).unwrap().0.event_id, "e-1");
}

proptest! {
    /// Whatever its ids, a valid protobuf Event is never taken for JSON.
    #[test]
    fn valid_protobuf_is_never_taken_for_json(
        id in proptest::collection::vec(any::<char>(), 1..300),
        customer in "[a-z0-9{}\\[\\] \n]{1,40}",
        kind in 0usize..3,
    ) {
        let id: String = id.into_iter().collect();
        let make = [browse, purchase, review][kind];
        let raw = make(&customer, &id, NOW - 1000);
        let bytes = encode(&raw, WireFormat::Protobuf);
        match decode(&customer, &bytes) {
            Ok((e, Framing::Plain)) => prop_assert_eq!(e.event_id, id),
            Ok(other) => prop_assert!(false, "{:?}", other),
            // Validation may refuse an id or customer; never as JSON.
            Err(r) => prop_assert!(
                !matches!(r.reason, Reason::InvalidJson | Reason::JsonWrongType),
                "{:?}: {}", r.reason, r.message
            ),
        }
    }
}

/// Regression (issue 16): two payloads on the protobuf wire were accepted
/// (the oneof keeps the last); they are refused as `multiple_payloads`, as
/// in JSON.
#[test]
fn two_protobuf_payloads_are_refused() {
    use prost::Message as _;
    let a = browse("c-1", "e-1", NOW - 1000);
    let b = purchase("c-1", "e-1", NOW - 1000);
    let mut bytes = a.encode_to_vec();
    // Append the purchase payload's field (tag 11) from the second event.
    let mut only_payload = b.clone();
    only_payload.event_id.clear();
    only_payload.customer_id.clear();
    only_payload.event_time_ms = 0;
    bytes.extend_from_slice(&only_payload.encode_to_vec());
    let err = decode("c-1", &bytes).unwrap_err();
    assert_eq!(err.reason, Reason::MultiplePayloads, "{}", err.message);
    // One payload is fine.
    assert!(decode("c-1", &a.encode_to_vec()).is_ok());
}

/// Regression (issue 16): JSON producers got protobuf-flavoured errors for
/// a byte-order mark, a top-level array or `null`.
#[test]
fn json_shapes_get_json_answers() {
    let json = encode(&browse("c-1", "e-1", NOW - 1000), WireFormat::Json);
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&json);
    assert_eq!(decode("c-1", &bom).unwrap().0.event_id, "e-1");
    for (value, what) in [
        (&b"[1, 2]"[..], "an array"),
        (b"null", "null"),
        (b" \n[]", "an array"),
    ] {
        let err = decode("c-1", value).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidJson, "{value:?}");
        assert!(err.message.contains(what), "{}", err.message);
    }
}

#[test]
fn json_producers_get_json_errors_and_ids_refuse_controls() {
    let body = |customer: &str, time: &str| {
        format!(
            r#"{{"event_id": "e-1", "customer_id": {customer}, "event_time_ms": {time},
               "browse": {{"product_id": "p", "category": "c", "action": "VIEW"}}}}"#
        )
    };
    // A repeated key: ambiguous JSON, not a wrong type.
    let dup = r#"{"event_id": "e-1", "event_id": "e-2", "customer_id": "c-1", "event_time_ms": 1}"#;
    let r = decode("c-1", dup.as_bytes()).unwrap_err();
    assert_eq!(r.reason, Reason::InvalidJson, "{r}");
    assert!(r.message.contains("duplicate field"), "{r}");
    // Float specials in an integer field are named as such.
    for special in ["NaN", "Infinity", "-Infinity"] {
        let r = decode("c-1", body("\"c-1\"", &format!("\"{special}\"")).as_bytes()).unwrap_err();
        assert_eq!(r.reason, Reason::JsonWrongType, "{r}");
        assert!(
            r.message.contains(&format!("{special} is not an integer")),
            "{r}"
        );
    }
    // Control and bidirectional-formatting characters in an id.
    for id in ["c\\u0000x", "c\\nx", "c\\u202ex"] {
        let r = decode(
            "ignored",
            body(&format!("\"{id}\""), &NOW.to_string()).as_bytes(),
        );
        let r = r.unwrap_err();
        assert!(
            matches!(r.reason, Reason::InvalidField | Reason::KeyMismatch),
            "{id}: {r}"
        );
    }
    let r = decoder()
        .decode(
            None,
            Some(body("\"c\\u202ex\"", &NOW.to_string()).as_bytes()),
            NOW,
        )
        .unwrap_err();
    assert_eq!(r.reason, Reason::InvalidField, "{r}");
    assert!(r.message.contains("U+202E"), "{r}");
}
