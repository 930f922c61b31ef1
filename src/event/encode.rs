//! Encoders for the input contract, the mirror image of `decode.rs`: used by
//! the generator, the demo and the tests to produce records in every accepted
//! wire format.

use prost::Message as _;
use serde_json::{json, Map, Value};

use super::proto;

/// A wire format a producer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Bare protobuf.
    Protobuf,
    /// Bare JSON (snake_case names).
    Json,
    /// Confluent framing + protobuf with message index `[0]` written as the single byte `0x00`.
    ConfluentProtobuf,
    /// Confluent framing + protobuf with `[0]` written as zig-zag count 1, index 0 (`0x02 0x00`).
    ConfluentProtobufZigZag,
    /// Confluent framing + protobuf with `[0]` written as unsigned count 1, index 0 (`0x01 0x00`).
    ConfluentProtobufUnsigned,
    /// Confluent framing + JSON (JSON Schema serializer: no message indexes).
    ConfluentJson,
}

impl WireFormat {
    /// Every format.
    pub const ALL: [WireFormat; 6] = [
        WireFormat::Protobuf,
        WireFormat::Json,
        WireFormat::ConfluentProtobuf,
        WireFormat::ConfluentProtobufZigZag,
        WireFormat::ConfluentProtobufUnsigned,
        WireFormat::ConfluentJson,
    ];
}

/// Confluent wire-format header: magic byte 0 and a big-endian schema id.
pub fn confluent_header(schema_id: u32) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&schema_id.to_be_bytes());
    v
}

/// Encodes `event` in `format` (schema id 1 for the Confluent formats).
pub fn encode(event: &proto::Event, format: WireFormat) -> Vec<u8> {
    // A JSON value's text: writing it cannot fail.
    let json = || to_json(event).to_string().into_bytes();
    let framed = |indexes: &[u8], body: Vec<u8>| {
        let mut v = confluent_header(1);
        v.extend_from_slice(indexes);
        v.extend_from_slice(&body);
        v
    };
    match format {
        WireFormat::Protobuf => event.encode_to_vec(),
        WireFormat::Json => json(),
        WireFormat::ConfluentProtobuf => framed(&[0x00], event.encode_to_vec()),
        WireFormat::ConfluentProtobufZigZag => framed(&[0x02, 0x00], event.encode_to_vec()),
        WireFormat::ConfluentProtobufUnsigned => framed(&[0x01, 0x00], event.encode_to_vec()),
        WireFormat::ConfluentJson => framed(&[], json()),
    }
}

fn action_name(action: i32) -> &'static str {
    match proto::BrowseAction::try_from(action) {
        Ok(proto::BrowseAction::View) => "view",
        Ok(proto::BrowseAction::CartAdd) => "cart_add",
        Ok(proto::BrowseAction::CartRemove) => "cart_remove",
        Ok(proto::BrowseAction::Wishlist) => "wishlist",
        Ok(proto::BrowseAction::Search) => "search",
        _ => "unspecified",
    }
}

/// The JSON form of an event, as `schemas/event.schema.json` describes it.
pub fn to_json(e: &proto::Event) -> Value {
    let mut m = Map::new();
    m.insert("event_id".into(), json!(e.event_id));
    m.insert("customer_id".into(), json!(e.customer_id));
    m.insert("event_time_ms".into(), json!(e.event_time_ms));
    match &e.payload {
        Some(proto::event::Payload::Browse(b)) => {
            m.insert(
                "browse".into(),
                json!({
                    "product_id": b.product_id,
                    "category": b.category,
                    "session_id": b.session_id,
                    "action": action_name(b.action),
                    "dwell_ms": b.dwell_ms,
                    "price_minor": b.price_minor,
                }),
            );
        }
        Some(proto::event::Payload::Purchase(p)) => {
            let items: Vec<Value> = p
                .items
                .iter()
                .map(|i| {
                    json!({
                        "product_id": i.product_id,
                        "category": i.category,
                        "quantity": i.quantity,
                        "unit_price_minor": i.unit_price_minor,
                    })
                })
                .collect();
            m.insert(
                "purchase".into(),
                json!({
                    "order_id": p.order_id,
                    "items": items,
                    "total_minor": p.total_minor,
                    "currency": p.currency,
                }),
            );
        }
        Some(proto::event::Payload::Review(r)) => {
            m.insert(
                "review".into(),
                json!({
                    "product_id": r.product_id,
                    "category": r.category,
                    "rating": r.rating,
                    "text": r.text,
                }),
            );
        }
        None => {}
    }
    Value::Object(m)
}

/// The wire form of a validated event (the inverse of decoding): what the
/// generator produces and what file writers serialise.
pub fn to_proto(e: &super::Event) -> proto::Event {
    use super::{BrowseAction, Payload};
    let payload = match &e.payload {
        Payload::Browse(b) => proto::event::Payload::Browse(proto::Browse {
            product_id: b.product_id.clone(),
            category: b.category.clone(),
            session_id: b.session_id.clone(),
            action: match b.action {
                BrowseAction::View => proto::BrowseAction::View,
                BrowseAction::CartAdd => proto::BrowseAction::CartAdd,
                BrowseAction::CartRemove => proto::BrowseAction::CartRemove,
                BrowseAction::Wishlist => proto::BrowseAction::Wishlist,
                BrowseAction::Search => proto::BrowseAction::Search,
            } as i32,
            dwell_ms: b.dwell_ms,
            price_minor: b.price_minor,
        }),
        Payload::Purchase(p) => proto::event::Payload::Purchase(proto::Purchase {
            order_id: p.order_id.clone(),
            items: p
                .items
                .iter()
                .map(|i| proto::LineItem {
                    product_id: i.product_id.clone(),
                    category: i.category.clone(),
                    quantity: i.quantity,
                    unit_price_minor: i.unit_price_minor,
                })
                .collect(),
            total_minor: p.total_minor,
            currency: p.currency.clone(),
        }),
        Payload::Review(r) => proto::event::Payload::Review(proto::Review {
            product_id: r.product_id.clone(),
            category: r.category.clone(),
            rating: i32::from(r.rating),
            text: r.text.clone(),
        }),
    };
    proto::Event {
        event_id: e.event_id.clone(),
        customer_id: e.customer_id.clone(),
        event_time_ms: e.event_time_ms,
        payload: Some(payload),
    }
}
