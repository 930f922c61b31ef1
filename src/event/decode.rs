//! Bytes → unvalidated `proto::Event` → validated [`Event`].
//!
//! Accepted encodings, detected per record when `encoding = "auto"`:
//! - plain protobuf `segstream.v1.Event`;
//! - JSON following `schemas/event.schema.json` (snake_case names; the
//!   lowerCamelCase names of the protobuf JSON mapping are accepted too, and
//!   64-bit integers may be JSON numbers or decimal strings);
//! - either of them in the Confluent Schema Registry wire format: magic byte
//!   `0x00`, a 4-byte big-endian schema id, then for protobuf the message-index
//!   list (both the single `0x00` and the explicit `[0x02,0x00]`/`[0x01,0x00]`
//!   encodings of index `[0]` are accepted), then the message.
//!
//! Both JSON and protobuf are first mapped onto the generated protobuf struct,
//! so there is exactly one validation path (see `validate.rs`).

use prost::Message as _;
use serde::Deserialize;

use super::proto;
use super::validate::{validate, Limits};
use super::{Event, Reason, Rejection};

/// Which encodings a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Detect protobuf or JSON per record (the default).
    #[default]
    Auto,
    /// Only protobuf (plain or Confluent-framed).
    Protobuf,
    /// Only JSON (plain or Confluent-framed).
    Json,
    /// Only the Confluent wire format (Schema Registry serializers), with a
    /// protobuf or JSON body; a plain record is refused as `bad_framing`.
    Confluent,
}

/// The decoders of the input topics: `input.encoding` for every topic, or
/// the topic's own from `input.topic_encodings`.
#[derive(Debug, Clone)]
pub struct Decoders {
    default: Decoder,
    by_topic: Vec<(String, Decoder)>,
}

impl Decoders {
    /// `encoding` for every topic but those in `overrides`.
    pub fn new(
        encoding: Encoding,
        overrides: &std::collections::BTreeMap<String, Encoding>,
        limits: Limits,
    ) -> Self {
        Decoders {
            by_topic: overrides
                .iter()
                .map(|(t, e)| (t.clone(), Decoder::new(*e, limits.clone())))
                .collect(),
            default: Decoder::new(encoding, limits),
        }
    }

    /// The decoder of records from `topic`.
    pub fn for_topic(&self, topic: &str) -> &Decoder {
        self.by_topic
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(&self.default, |(_, d)| d)
    }
}

/// How the record's value was framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The bare message.
    Plain,
    /// Confluent Schema Registry wire format with this schema id.
    Confluent {
        /// The registry's schema id (not looked up: the contract is compiled in).
        schema_id: u32,
    },
}

/// Turns record bytes into validated events. Cheap to clone; holds no state.
#[derive(Debug, Clone)]
pub struct Decoder {
    encoding: Encoding,
    limits: Limits,
}

impl Decoder {
    /// A decoder accepting `encoding` and enforcing `limits`.
    pub fn new(encoding: Encoding, limits: Limits) -> Self {
        Decoder { encoding, limits }
    }

    /// Decodes and validates one record value. `key` is the Kafka record key;
    /// `now_ms` is the wall clock the time bounds are checked against.
    pub fn decode(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(Event, Framing), Rejection> {
        // A tombstone (no value) is refused below as an empty value.
        let value = value.unwrap_or_default();
        if value.is_empty() {
            return Err(Rejection::new(
                Reason::EmptyValue,
                "record value is empty (or a tombstone)",
            ));
        }
        if value.len() > self.limits.max_event_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "record value is {} bytes, above the limit of {} (validation.max_event_bytes)",
                    value.len(),
                    self.limits.max_event_bytes
                ),
            ));
        }
        let (framing, body) = split_framing(value)?;
        if self.encoding == Encoding::Confluent && framing == Framing::Plain {
            return Err(Rejection::new(
                Reason::BadFraming,
                "value has no Confluent wire-format header (magic byte 0 and a schema id) \
                 but the topic's encoding is \"confluent\"",
            ));
        }
        let decode_proto = |body: &[u8]| {
            let body = match framing {
                Framing::Plain => body,
                Framing::Confluent { .. } => strip_message_indexes(body)?,
            };
            let event = proto::Event::decode(body).map_err(|e| {
                Rejection::new(
                    Reason::InvalidProtobuf,
                    format!("not a valid segstream.v1.Event: {e}"),
                )
            })?;
            // A oneof decodes "last one wins": refuse two payloads as the
            // JSON decoding does, instead of silently dropping one.
            let payloads = payload_fields(body);
            if payloads > 1 {
                return Err(Rejection::new(
                    Reason::MultiplePayloads,
                    format!("{payloads} payloads (browse/purchase/review); exactly one is allowed"),
                ));
            }
            Ok(event)
        };
        let raw = match (self.encoding, shape(body)) {
            (Encoding::Protobuf, Shape::Json) => {
                return Err(Rejection::new(
                    Reason::InvalidProtobuf,
                    "value looks like JSON but input.encoding is \"protobuf\"",
                ))
            }
            (Encoding::Json, Shape::Protobuf) => {
                return Err(Rejection::new(
                    Reason::InvalidJson,
                    "value is not JSON and input.encoding is \"json\"",
                ))
            }
            (Encoding::Protobuf, _) | (Encoding::Auto | Encoding::Confluent, Shape::Protobuf) => {
                decode_proto(body)?
            }
            (Encoding::Json, _) | (Encoding::Auto | Encoding::Confluent, Shape::Json) => {
                decode_json(body)?
            }
            // A protobuf Event whose first field is event_id starts with
            // 0x0A ('\n'); if its length byte is 0x7B ('{'), it reads like
            // JSON after a newline. A valid protobuf decoding wins.
            (Encoding::Auto | Encoding::Confluent, Shape::Ambiguous) => match decode_proto(body) {
                Ok(raw) => raw,
                Err(_) => decode_json(body)?,
            },
        };
        let event = validate(raw, key, now_ms, &self.limits)?;
        Ok((event, framing))
    }
}

/// Splits off a Confluent wire-format header when the value starts with the
/// magic byte 0 (a plain protobuf Event never does: field number 0 is invalid,
/// and JSON starts with `{` or whitespace).
fn split_framing(value: &[u8]) -> Result<(Framing, &[u8]), Rejection> {
    match value.first() {
        Some(0) => {
            if value.len() < 5 {
                return Err(Rejection::new(
                    Reason::BadFraming,
                    format!(
                        "Confluent wire format needs 5 header bytes, value has {}",
                        value.len()
                    ),
                ));
            }
            let schema_id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            Ok((Framing::Confluent { schema_id }, &value[5..]))
        }
        _ => Ok((Framing::Plain, value)),
    }
}

/// What a value's first bytes say about its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// JSON: `{`, `[`, `n`(ull) or a UTF-8 byte-order mark. None of these
    /// can start a valid protobuf Event: as tag bytes they name a group
    /// (0x7B: field 15; 0x5B: field 11, the purchase, which is a message)
    /// or an invalid wire type (0x6E: 6, 0xEF: 7). (`"` and digits could:
    /// as tags of unknown fields 4, 6 and 7 a decoder skips them.)
    Json,
    /// Anything else.
    Protobuf,
    /// ASCII whitespace and then JSON: also the start of a protobuf Event
    /// whose first field is `event_id` (tag 0x0A) of length 0x7B, 0x5B, ...
    Ambiguous,
}

fn shape(body: &[u8]) -> Shape {
    let json_start = |b: u8| matches!(b, b'{' | b'[' | b'n' | 0xEF);
    match body.first() {
        Some(&b) if json_start(b) => Shape::Json,
        Some(b) if b.is_ascii_whitespace() => {
            match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(&b) if json_start(b) => Shape::Ambiguous,
                _ => Shape::Protobuf,
            }
        }
        _ => Shape::Protobuf,
    }
}

/// How many top-level payload fields (browse 10, purchase 11, review 12) a
/// protobuf Event's bytes hold (the bytes decoded as an Event already).
fn payload_fields(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    while let Some((tag, n)) = read_varint(bytes) {
        bytes = &bytes[n..];
        let (field, wire) = (tag >> 3, tag & 7);
        if (10..=12).contains(&field) {
            count += 1;
        }
        let skip = match wire {
            0 => read_varint(bytes).map(|(_, n)| n),
            1 => Some(8),
            2 => read_varint(bytes).and_then(|(len, n)| n.checked_add(usize::try_from(len).ok()?)),
            5 => Some(4),
            _ => None,
        };
        match skip {
            Some(n) if n <= bytes.len() => bytes = &bytes[n..],
            _ => break,
        }
    }
    count
}

/// Reads a protobuf varint, returning the value and the bytes consumed.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Removes the Confluent protobuf message-index list and checks that it names
/// the first message of `events.proto` (`Event`, index path `[0]`).
///
/// The list is a count followed by that many indexes. Confluent's serializers
/// write zig-zag varints, and write `[0]` as the single byte `0x00`; some
/// clients write the count unsigned (`[0x01, 0x00]`). An odd raw count is
/// negative in zig-zag, so it is read as unsigned; an even one as zig-zag.
fn strip_message_indexes(body: &[u8]) -> Result<&[u8], Rejection> {
    let bad = |what: &str| Rejection::new(Reason::BadFraming, what.to_string());
    let (raw_count, mut used) =
        read_varint(body).ok_or_else(|| bad("truncated Confluent message-index list"))?;
    if raw_count == 0 {
        return Ok(&body[used..]);
    }
    let count = if raw_count % 2 == 1 {
        raw_count
    } else {
        raw_count / 2
    };
    if count > 16 {
        return Err(bad("Confluent message-index list is implausibly long"));
    }
    let mut path = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (raw, n) = read_varint(&body[used..])
            .ok_or_else(|| bad("truncated Confluent message-index list"))?;
        used += n;
        // Zig-zag and unsigned agree on 0; anything else is not `Event`
        // (shown zig-zag decoded where that is non-negative, as Confluent writes it).
        path.push(if raw % 2 == 0 { raw / 2 } else { raw });
    }
    if path != [0] {
        return Err(Rejection::new(
            Reason::UnsupportedMessageType,
            format!(
                "Confluent message indexes {path:?} do not name segstream.v1.Event (index [0])"
            ),
        ));
    }
    Ok(&body[used..])
}

fn decode_json(body: &[u8]) -> Result<proto::Event, Rejection> {
    // A UTF-8 byte-order mark (some Windows tools write one) is not JSON
    // but says nothing wrong about the event: skip it.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        first => {
            let what = match first {
                Some(b'[') => "an array",
                Some(b'n') => "null",
                Some(b'"') => "a string",
                None => "empty",
                _ => "not an object",
            };
            return Err(Rejection::new(
                Reason::InvalidJson,
                format!("a JSON event must be an object, this value is {what}"),
            ));
        }
    }
    let json: JsonEvent = serde_json::from_slice(body).map_err(|e| {
        let message = scrub_serde_message(&e);
        // A repeated key makes the object ambiguous (RFC 8259 leaves which
        // one counts undefined): a JSON syntax problem, not a wrong type.
        let reason = if message.starts_with("duplicate field") {
            Reason::InvalidJson
        } else if e.classify() == serde_json::error::Category::Data {
            Reason::JsonWrongType
        } else {
            Reason::InvalidJson
        };
        Rejection::new(reason, format!("JSON event: {message}"))
    })?;
    json.into_proto()
}

/// serde_json quotes offending string values in its messages; those may be
/// review text, which must never leave the process outside the original bytes.
fn scrub_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for c in msg.chars() {
        if c == '"' {
            if in_quote {
                out.push_str("\"…\"");
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out
}

/// A 64-bit integer as a JSON number or, as protobuf's JSON mapping writes
/// int64, a decimal string.
#[derive(Debug, Clone, Copy, Default)]
struct JsonInt(i64);

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(i64),
            Str(String),
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an integer (a JSON number or a decimal string)")
        })? {
            Repr::Int(v) => Ok(JsonInt(v)),
            Repr::Str(s) => s.trim().parse().map(JsonInt).map_err(|_| {
                let t = s.trim();
                if ["NaN", "Infinity", "-Infinity"].contains(&t) {
                    // The protobuf JSON mapping's spelling of float
                    // specials: say that this field is an integer.
                    serde::de::Error::custom(format!(
                        "{t} is not an integer: times are whole milliseconds and amounts whole minor units"
                    ))
                } else {
                    serde::de::Error::custom(
                        "expected an integer (a JSON number or a decimal string)",
                    )
                }
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JsonEvent {
    #[serde(default, alias = "eventId")]
    event_id: Option<String>,
    #[serde(default, alias = "customerId")]
    customer_id: Option<String>,
    #[serde(default, alias = "eventTimeMs")]
    event_time_ms: Option<JsonInt>,
    #[serde(default)]
    browse: Option<JsonBrowse>,
    #[serde(default)]
    purchase: Option<JsonPurchase>,
    #[serde(default)]
    review: Option<JsonReview>,
}

#[derive(Debug, Deserialize)]
struct JsonBrowse {
    #[serde(default, alias = "productId")]
    product_id: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default, alias = "sessionId")]
    session_id: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default, alias = "dwellMs")]
    dwell_ms: Option<JsonInt>,
    #[serde(default, alias = "priceMinor")]
    price_minor: Option<JsonInt>,
}

#[derive(Debug, Deserialize)]
struct JsonLineItem {
    #[serde(default, alias = "productId")]
    product_id: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    quantity: Option<JsonInt>,
    #[serde(default, alias = "unitPriceMinor")]
    unit_price_minor: Option<JsonInt>,
}

#[derive(Debug, Deserialize)]
struct JsonPurchase {
    #[serde(default, alias = "orderId")]
    order_id: Option<String>,
    #[serde(default)]
    items: Option<Vec<JsonLineItem>>,
    #[serde(default, alias = "totalMinor")]
    total_minor: Option<JsonInt>,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonReview {
    #[serde(default, alias = "productId")]
    product_id: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    rating: Option<JsonInt>,
    #[serde(default)]
    text: Option<String>,
}

/// Maps a JSON action name (`view`, or the protobuf enum name
/// `BROWSE_ACTION_VIEW`) to the protobuf enum value; -1 when unknown, which
/// validation rejects like any unknown enum value.
fn action_from_json(name: Option<&str>) -> i32 {
    let Some(name) = name else { return 0 };
    let short = name
        .strip_prefix("BROWSE_ACTION_")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| name.to_string());
    match short.as_str() {
        "view" => proto::BrowseAction::View as i32,
        "cart_add" => proto::BrowseAction::CartAdd as i32,
        "cart_remove" => proto::BrowseAction::CartRemove as i32,
        "wishlist" => proto::BrowseAction::Wishlist as i32,
        "search" => proto::BrowseAction::Search as i32,
        "unspecified" => 0,
        _ => -1,
    }
}

impl JsonEvent {
    fn into_proto(self) -> Result<proto::Event, Rejection> {
        let set = [
            self.browse.is_some(),
            self.purchase.is_some(),
            self.review.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err(Rejection::new(
                Reason::MultiplePayloads,
                "exactly one of browse, purchase, review may be set",
            ));
        }
        // Absent JSON fields become protobuf's defaults, exactly as absent
        // protobuf fields do; `validate` then refuses a missing required
        // field with its reason code (nothing absent is accepted silently).
        let int = |v: Option<JsonInt>| v.unwrap_or_default().0;
        let payload = if let Some(b) = self.browse {
            Some(proto::event::Payload::Browse(proto::Browse {
                product_id: b.product_id.unwrap_or_default(),
                category: b.category.unwrap_or_default(),
                session_id: b.session_id.unwrap_or_default(),
                action: action_from_json(b.action.as_deref()),
                dwell_ms: int(b.dwell_ms),
                price_minor: int(b.price_minor),
            }))
        } else if let Some(p) = self.purchase {
            Some(proto::event::Payload::Purchase(proto::Purchase {
                order_id: p.order_id.unwrap_or_default(),
                items: p
                    .items
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| proto::LineItem {
                        product_id: i.product_id.unwrap_or_default(),
                        category: i.category.unwrap_or_default(),
                        quantity: int(i.quantity),
                        unit_price_minor: int(i.unit_price_minor),
                    })
                    .collect(),
                total_minor: int(p.total_minor),
                currency: p.currency.unwrap_or_default(),
            }))
        } else if let Some(r) = self.review {
            let rating = int(r.rating);
            Some(proto::event::Payload::Review(proto::Review {
                product_id: r.product_id.unwrap_or_default(),
                category: r.category.unwrap_or_default(),
                // Out-of-range values become an invalid rating, not a wrap-around.
                rating: i32::try_from(rating).unwrap_or(i32::MAX),
                text: r.text.unwrap_or_default(),
            }))
        } else {
            None
        };
        Ok(proto::Event {
            event_id: self.event_id.unwrap_or_default(),
            customer_id: self.customer_id.unwrap_or_default(),
            event_time_ms: int(self.event_time_ms),
            payload,
        })
    }
}

#[cfg(test)]
mod tests;
