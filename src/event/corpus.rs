//! Reference records: one valid event of every kind in every wire format, and
//! a corpus of bad records with the reason code each must be refused with.
//! The unit tests, the integration tests against the broker and the demo all
//! use this one corpus, so the contract is pinned in one place.

use super::encode::{confluent_header, encode, to_json, WireFormat};
use super::proto;
use super::Reason;

/// A valid browse event.
pub fn browse(customer: &str, id: &str, time_ms: i64) -> proto::Event {
    proto::Event {
        event_id: id.into(),
        customer_id: customer.into(),
        event_time_ms: time_ms,
        payload: Some(proto::event::Payload::Browse(proto::Browse {
            product_id: "sku-1001".into(),
            category: "shoes/running".into(),
            session_id: "s-77".into(),
            action: proto::BrowseAction::CartAdd as i32,
            dwell_ms: 12_500,
            price_minor: 8_999,
        })),
    }
}

/// A valid purchase event.
pub fn purchase(customer: &str, id: &str, time_ms: i64) -> proto::Event {
    proto::Event {
        event_id: id.into(),
        customer_id: customer.into(),
        event_time_ms: time_ms,
        payload: Some(proto::event::Payload::Purchase(proto::Purchase {
            order_id: format!("o-{id}"),
            items: vec![
                proto::LineItem {
                    product_id: "sku-1001".into(),
                    category: "shoes/running".into(),
                    quantity: 1,
                    unit_price_minor: 8_999,
                },
                proto::LineItem {
                    product_id: "sku-2002".into(),
                    category: "socks".into(),
                    quantity: 3,
                    unit_price_minor: 499,
                },
            ],
            total_minor: 10_496,
            currency: "EUR".into(),
        })),
    }
}

/// A valid review event.
pub fn review(customer: &str, id: &str, time_ms: i64) -> proto::Event {
    proto::Event {
        event_id: id.into(),
        customer_id: customer.into(),
        event_time_ms: time_ms,
        payload: Some(proto::event::Payload::Review(proto::Review {
            product_id: "sku-1001".into(),
            category: "shoes/running".into(),
            rating: 4,
            text: "Comfortable, runs a bit small. \"Great\" value.".into(),
        })),
    }
}

/// A record that must be refused, and how.
#[derive(Debug, Clone)]
pub struct BadRecord {
    /// Short name of the case (for test messages).
    pub name: &'static str,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// The reason code it must get.
    pub expected: Reason,
}

fn bad(name: &'static str, key: &str, value: Vec<u8>, expected: Reason) -> BadRecord {
    BadRecord {
        name,
        key: Some(key.as_bytes().to_vec()),
        value,
        expected,
    }
}

fn json_bytes(v: serde_json::Value) -> Vec<u8> {
    // A JSON value's text: writing it cannot fail.
    v.to_string().into_bytes()
}

/// Bad records for `customer`, relative to `now_ms`. `huge_bytes` is the size
/// of the oversized value (the integration test uses 10 MB).
pub fn bad_records(customer: &str, now_ms: i64, huge_bytes: usize) -> Vec<BadRecord> {
    let c = customer;
    let ok = |id: &str| browse(c, id, now_ms - 60_000);
    let mut truncated = encode(&purchase(c, "trunc", now_ms), WireFormat::Protobuf);
    truncated.truncate(truncated.len() / 2);
    let mut wrong_types = to_json(&ok("types"));
    wrong_types["event_time_ms"] = serde_json::json!({"when": "yesterday"});
    let mut rating9 = review(c, "r9", now_ms);
    if let Some(proto::event::Payload::Review(r)) = &mut rating9.payload {
        r.rating = 9;
    }
    let mut negative_price = purchase(c, "neg", now_ms);
    if let Some(proto::event::Payload::Purchase(p)) = &mut negative_price.payload {
        p.items[0].unit_price_minor = -100;
    }
    let mut unknown_payload = to_json(&ok("unk"));
    if let Some(m) = unknown_payload.as_object_mut() {
        m.remove("browse");
        m.insert("refund".into(), serde_json::json!({"order_id": "o-1"}));
    }
    let mut unknown_payload_proto = ok("unkp").encode_to_vec_without_payload();
    // Field 20 (length-delimited): a payload type from a future version.
    unknown_payload_proto.extend_from_slice(&[0xa2, 0x01, 0x02, 0x08, 0x01]);
    let mut wrong_message = confluent_header(7);
    wrong_message.extend_from_slice(&[0x02, 0x02]); // zig-zag [1]: the second message
    wrong_message.extend_from_slice(&encode(&ok("idx"), WireFormat::Protobuf));
    let mut long_category = ok("long");
    if let Some(proto::event::Payload::Browse(b)) = &mut long_category.payload {
        b.category = "x".repeat(1000);
    }
    let mut bad_action = ok("act");
    if let Some(proto::event::Payload::Browse(b)) = &mut bad_action.payload {
        b.action = 42;
    }
    let mut unknown_currency = purchase(c, "zzz", now_ms);
    if let Some(proto::event::Payload::Purchase(p)) = &mut unknown_currency.payload {
        p.currency = "ZZZ".into();
    }
    let mut both_payloads = to_json(&ok("both"));
    both_payloads["review"] = to_json(&review(c, "x", now_ms))["review"].clone();
    let pb = |e: &proto::Event| encode(e, WireFormat::Protobuf);

    vec![
        bad("empty value", c, Vec::new(), Reason::EmptyValue),
        bad("huge value", c, vec![b'{'; huge_bytes], Reason::TooLarge),
        bad("truncated protobuf", c, truncated, Reason::InvalidProtobuf),
        bad(
            "garbage bytes",
            c,
            vec![0xff, 0xfe, 0x01, 0x02, 0x03],
            Reason::InvalidProtobuf,
        ),
        bad(
            "broken JSON",
            c,
            b"{\"event_id\": \"j1\", ".to_vec(),
            Reason::InvalidJson,
        ),
        bad(
            "JSON with wrong types",
            c,
            json_bytes(wrong_types),
            Reason::JsonWrongType,
        ),
        bad(
            "missing customer",
            c,
            pb(&browse("", "nocust", now_ms)),
            Reason::MissingCustomer,
        ),
        bad(
            "missing event id",
            c,
            pb(&browse(c, "", now_ms)),
            Reason::MissingEventId,
        ),
        bad(
            "key is another customer",
            "someone-else",
            pb(&ok("key")),
            Reason::KeyMismatch,
        ),
        bad("rating 9", c, pb(&rating9), Reason::InvalidRating),
        bad(
            "negative price",
            c,
            pb(&negative_price),
            Reason::NegativeAmount,
        ),
        bad(
            "time zero",
            c,
            pb(&browse(c, "t0", 0)),
            Reason::TimeOutOfRange,
        ),
        bad(
            "time in year 2400",
            c,
            pb(&browse(c, "t2400", 13_569_465_600_000)),
            Reason::TimeOutOfRange,
        ),
        bad(
            "time in 1970",
            c,
            pb(&browse(c, "t1970", 86_400_000)),
            Reason::TimeOutOfRange,
        ),
        bad(
            "unknown payload (JSON)",
            c,
            json_bytes(unknown_payload),
            Reason::UnknownPayload,
        ),
        bad(
            "unknown payload (protobuf)",
            c,
            unknown_payload_proto,
            Reason::UnknownPayload,
        ),
        bad(
            "two payloads (JSON)",
            c,
            json_bytes(both_payloads),
            Reason::MultiplePayloads,
        ),
        bad(
            "Confluent header cut short",
            c,
            vec![0, 0, 0],
            Reason::BadFraming,
        ),
        bad(
            "Confluent index of another message",
            c,
            wrong_message,
            Reason::UnsupportedMessageType,
        ),
        bad(
            "category too long",
            c,
            pb(&long_category),
            Reason::StringTooLong,
        ),
        bad(
            "currency that is not ISO 4217",
            c,
            encode(&unknown_currency, WireFormat::Protobuf),
            Reason::InvalidField,
        ),
        bad(
            "unknown browse action",
            c,
            pb(&bad_action),
            Reason::InvalidField,
        ),
    ]
}

trait WithoutPayload {
    fn encode_to_vec_without_payload(&self) -> Vec<u8>;
}

impl WithoutPayload for proto::Event {
    fn encode_to_vec_without_payload(&self) -> Vec<u8> {
        use prost::Message as _;
        proto::Event {
            payload: None,
            ..self.clone()
        }
        .encode_to_vec()
    }
}
