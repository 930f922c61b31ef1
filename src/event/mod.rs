//! Event contracts and their decoding into the one internal [`Event`].
//!
//! This module owns the input contract (`proto/segstream/v1/events.proto`,
//! `schemas/event.schema.json`), the byte-level decoding of every accepted
//! encoding (plain protobuf, JSON, and both inside the Confluent Schema
//! Registry wire format) and validation. It is pure: no Kafka, no clocks
//! (the caller passes "now"), no metrics. What it rejects it describes with a
//! [`Rejection`], whose [`Reason`] is a low-cardinality code that the ingest
//! stage puts on the dead-letter record and on metrics.

pub mod corpus;
mod decode;
pub mod encode;
pub mod files;
mod validate;

pub use decode::{Decoder, Decoders, Encoding, Framing};
pub use validate::Limits;

/// Generated protobuf types of `segstream.v1` (the wire contract).
pub mod proto {
    #![allow(missing_docs, clippy::doc_lazy_continuation)]
    include!(concat!(env!("OUT_DIR"), "/segstream.v1.rs"));
}

/// A validated customer event, identical whichever encoding it arrived in.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Producer-assigned unique id (used for de-duplication).
    pub event_id: String,
    /// The customer; equals the Kafka record key.
    pub customer_id: String,
    /// Event time, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// What happened.
    pub payload: Payload,
}

impl Event {
    /// The kind of payload, for metrics labels and feature ids.
    pub fn kind(&self) -> EventKind {
        match self.payload {
            Payload::Browse(_) => EventKind::Browse,
            Payload::Purchase(_) => EventKind::Purchase,
            Payload::Review(_) => EventKind::Review,
        }
    }
}

/// The three kinds of things a customer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Browsing (views, cart changes, wishlists, searches).
    Browse,
    /// A completed order.
    Purchase,
    /// A product review.
    Review,
}

impl EventKind {
    /// All kinds, in a stable order.
    pub const ALL: [EventKind; 3] = [EventKind::Browse, EventKind::Purchase, EventKind::Review];

    /// Stable lower-case name (metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Browse => "browse",
            EventKind::Purchase => "purchase",
            EventKind::Review => "review",
        }
    }
}

/// The payload of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// See [`Browse`].
    Browse(Browse),
    /// See [`Purchase`].
    Purchase(Purchase),
    /// See [`Review`].
    Review(Review),
}

/// A browsing action.
#[derive(Debug, Clone, PartialEq)]
pub struct Browse {
    /// Product looked at (empty for a search).
    pub product_id: String,
    /// Category of the product or search.
    pub category: String,
    /// Browsing session (may be empty).
    pub session_id: String,
    /// What the customer did.
    pub action: BrowseAction,
    /// Time on page in milliseconds (0 when unknown).
    pub dwell_ms: i64,
    /// Displayed price in minor units (0 when unknown).
    pub price_minor: i64,
}

/// What a customer did while browsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrowseAction {
    /// Looked at a product page.
    View,
    /// Put a product in the cart.
    CartAdd,
    /// Took a product out of the cart.
    CartRemove,
    /// Added a product to the wishlist.
    Wishlist,
    /// Searched.
    Search,
}

impl BrowseAction {
    /// Stable lower-case name, as used in the JSON contract.
    pub fn as_str(self) -> &'static str {
        match self {
            BrowseAction::View => "view",
            BrowseAction::CartAdd => "cart_add",
            BrowseAction::CartRemove => "cart_remove",
            BrowseAction::Wishlist => "wishlist",
            BrowseAction::Search => "search",
        }
    }
}

/// A completed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    /// Order id.
    pub order_id: String,
    /// At least one line.
    pub items: Vec<LineItem>,
    /// Order total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq)]
pub struct LineItem {
    /// Product bought.
    pub product_id: String,
    /// Its category.
    pub category: String,
    /// Units, at least 1.
    pub quantity: i64,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
}

/// A product review.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    /// Product reviewed.
    pub product_id: String,
    /// Its category.
    pub category: String,
    /// 1 to 5 stars.
    pub rating: u8,
    /// Free text. Held only until the state stage hashes it into tokens; never
    /// stored, logged or written anywhere.
    pub text: String,
}

/// The pipeline stage that refused a record (dead-letter header `segstream.dlq.stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Bytes could not be turned into an event.
    Decode,
    /// The event was decoded but breaks a contract rule.
    Validate,
    /// The event is valid but cannot be applied to the customer's state.
    State,
}

impl Stage {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Validate => "validate",
            Stage::State => "state",
        }
    }
}

/// Why a record was refused: a small, fixed set of codes (metric label and
/// dead-letter header `segstream.dlq.reason`). Codes are part of the contract:
/// add new ones, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The value was empty (or a tombstone).
    EmptyValue,
    /// The value exceeds `validation.max_event_bytes`.
    TooLarge,
    /// A Confluent wire-format header or message-index list was malformed.
    BadFraming,
    /// The Confluent message index names a message other than `Event`.
    UnsupportedMessageType,
    /// The bytes are not a valid protobuf `Event`.
    InvalidProtobuf,
    /// The bytes are not syntactically valid JSON.
    InvalidJson,
    /// JSON that parses but has a field of the wrong type.
    JsonWrongType,
    /// `event_id` is missing or empty.
    MissingEventId,
    /// `customer_id` is missing or empty.
    MissingCustomer,
    /// The Kafka record key is not the event's `customer_id`.
    KeyMismatch,
    /// `event_time_ms` is missing or outside the configured bounds around now.
    TimeOutOfRange,
    /// No known payload (none, or one this version does not know).
    UnknownPayload,
    /// More than one payload was set (JSON only; protobuf's oneof keeps the last).
    MultiplePayloads,
    /// A rating outside 1..=5.
    InvalidRating,
    /// A negative price, total, dwell time, or a quantity below 1.
    NegativeAmount,
    /// A string longer than its configured bound.
    StringTooLong,
    /// Any other field that breaks the contract (unknown action, bad currency, ...).
    InvalidField,
    /// Older than its partition's watermark (beyond `state.allowed_lateness`).
    Late,
    /// The record is not in the partition its `customer_id` hashes to under
    /// `input.partitioner` (a producer with another partitioner, or no key):
    /// accepting it would split the customer's state.
    WrongPartition,
}

impl Reason {
    /// Every code, for documentation and for pre-registering metric series.
    pub const ALL: [Reason; 19] = [
        Reason::EmptyValue,
        Reason::TooLarge,
        Reason::BadFraming,
        Reason::UnsupportedMessageType,
        Reason::InvalidProtobuf,
        Reason::InvalidJson,
        Reason::JsonWrongType,
        Reason::MissingEventId,
        Reason::MissingCustomer,
        Reason::KeyMismatch,
        Reason::TimeOutOfRange,
        Reason::UnknownPayload,
        Reason::MultiplePayloads,
        Reason::InvalidRating,
        Reason::NegativeAmount,
        Reason::StringTooLong,
        Reason::InvalidField,
        Reason::Late,
        Reason::WrongPartition,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyValue => "empty_value",
            Reason::TooLarge => "too_large",
            Reason::BadFraming => "bad_framing",
            Reason::UnsupportedMessageType => "unsupported_message_type",
            Reason::InvalidProtobuf => "invalid_protobuf",
            Reason::InvalidJson => "invalid_json",
            Reason::JsonWrongType => "json_wrong_type",
            Reason::MissingEventId => "missing_event_id",
            Reason::MissingCustomer => "missing_customer",
            Reason::KeyMismatch => "key_mismatch",
            Reason::TimeOutOfRange => "time_out_of_range",
            Reason::UnknownPayload => "unknown_payload",
            Reason::MultiplePayloads => "multiple_payloads",
            Reason::InvalidRating => "invalid_rating",
            Reason::NegativeAmount => "negative_amount",
            Reason::StringTooLong => "string_too_long",
            Reason::InvalidField => "invalid_field",
            Reason::Late => "late",
            Reason::WrongPartition => "wrong_partition",
        }
    }

    /// The stage that produces this code.
    pub fn stage(self) -> Stage {
        match self {
            Reason::EmptyValue
            | Reason::TooLarge
            | Reason::BadFraming
            | Reason::UnsupportedMessageType
            | Reason::InvalidProtobuf
            | Reason::InvalidJson
            | Reason::JsonWrongType => Stage::Decode,
            Reason::Late => Stage::State,
            _ => Stage::Validate,
        }
    }
}

/// A refused record: the code plus a human-readable message for the
/// dead-letter header. The message never contains review text or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", reason.as_str(), stage.as_str())]
pub struct Rejection {
    /// Stage that refused it.
    pub stage: Stage,
    /// Low-cardinality code.
    pub reason: Reason,
    /// What exactly was wrong.
    pub message: String,
}

impl Rejection {
    /// A rejection whose stage follows from its reason.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            stage: reason.stage(),
            reason,
            message: message.into(),
        }
    }
}
